// The model hyper-parameters the engine needs, read from an HF `config.json` or from GGUF
// metadata (worker/weights/gguf.h). Llama, Mistral and Mixtral share one struct; fields that an
// architecture does not use keep their defaults.
#ifndef SHARDSERVE_WORKER_MODEL_CONFIG_H_
#define SHARDSERVE_WORKER_MODEL_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace shardserve {

enum class Architecture { kLlama, kMistral, kMixtral };
std::string_view ArchitectureName(Architecture arch);

// HF `rope_scaling`. type "" means none. Llama-3 ("llama3") uses factor, low/high_freq_factor and
// original_max_position_embeddings; "linear" and "dynamic" use factor.
struct RopeScaling {
  std::string type;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // "llama", "mistral", "mixtral" as in config.json.
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // = num_attention_heads when absent.
  int64_t head_dim = 0;             // = hidden_size / num_attention_heads when absent.
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int64_t sliding_window = 0;  // 0: full attention.
  bool attention_bias = false;
  bool mlp_bias = false;
  // Mixtral (0 for dense models).
  int64_t num_local_experts = 0;
  int64_t num_experts_per_tok = 0;
  std::string torch_dtype;  // "bfloat16", ... ("" when absent).
  // Token ids from config.json (generation_config.json may add more EOS ids; -1 when absent).
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
};

// Parses a config.json document; `what` names it in errors ("…/config.json: field
// 'num_attention_heads': …"). Unknown architectures are NOT_FOUND-free INVALID_ARGUMENT errors
// naming `model_type` / `architectures`.
// Missing optional fields take transformers' defaults for the architecture (Mistral's
// sliding_window 4096 when absent, null -> 0; Mixtral rope_theta 1e6, rms_norm_eps 1e-5).
// rope_scaling type "default" means none; "yarn" etc. are rejected. transformers 5's
// "rope_parameters" / "dtype" are read when "rope_scaling" / "torch_dtype" are absent.
absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& json, absl::string_view what);
// Reads `path`, parses it with ParseHfConfig and checks it with ValidateConfig.
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path);

// Checks internal consistency (positive sizes, heads divide hidden size, KV heads divide heads,
// experts_per_tok <= experts, ...). Errors name `what` and the field.
absl::Status ValidateConfig(const ModelConfig& config, absl::string_view what);

// The HF tensor names and shapes ({out, in} for Linear weights) a checkpoint of this config must
// hold, e.g. "model.layers.0.self_attn.q_proj.weight" -> {hidden, hidden}. lm_head.weight is
// absent when tie_word_embeddings.
std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ModelConfig& config);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_MODEL_CONFIG_H_
