#include "worker/model/config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

// Meta-Llama-3.1-8B-Instruct's config.json.
constexpr char kLlama31[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.42.3",
  "use_cache": true,
  "vocab_size": 128256
})";

// Mistral-7B-Instruct-v0.2's config.json.
constexpr char kMistral[] = R"({
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0",
  "use_cache": true,
  "vocab_size": 32000
})";

// Mixtral-8x7B-Instruct-v0.1's config.json.
constexpr char kMixtral[] = R"({
  "architectures": ["MixtralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mixtral",
  "num_attention_heads": 32,
  "num_experts_per_tok": 2,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "num_local_experts": 8,
  "output_router_logits": false,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "router_aux_loss_coef": 0.02,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

absl::StatusOr<ModelConfig> ParseValid(const json& doc) {
  absl::StatusOr<ModelConfig> config = ParseHfConfig(doc, "test/config.json");
  if (!config.ok()) return config;
  absl::Status valid = ValidateConfig(*config, "test/config.json");
  if (!valid.ok()) return valid;
  return config;
}

TEST(ConfigTest, SmolLM2ReferenceFile) {
  const std::string path = SourceDir() + "/worker/model/testdata/SmolLM2-135M-Instruct.config.json";
  absl::StatusOr<ModelConfig> c = LoadHfConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 49152);
  EXPECT_EQ(c->hidden_size, 576);
  EXPECT_EQ(c->intermediate_size, 1536);
  EXPECT_EQ(c->num_hidden_layers, 30);
  EXPECT_EQ(c->num_attention_heads, 9);
  EXPECT_EQ(c->num_key_value_heads, 3);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 100000.0);
  EXPECT_EQ(c->rope_scaling.type, "");
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->sliding_window, 0);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->mlp_bias);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));

  auto shapes = ExpectedTensorShapes(*c);
  EXPECT_EQ(shapes.size(), 1u + 30 * 9 + 1);
  EXPECT_EQ(shapes.count("lm_head.weight"), 0u);
  EXPECT_THAT(shapes.at("model.embed_tokens.weight"), ElementsAre(49152, 576));
  EXPECT_THAT(shapes.at("model.layers.29.self_attn.q_proj.weight"), ElementsAre(576, 576));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.k_proj.weight"), ElementsAre(192, 576));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.v_proj.weight"), ElementsAre(192, 576));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.o_proj.weight"), ElementsAre(576, 576));
  EXPECT_THAT(shapes.at("model.layers.3.mlp.gate_proj.weight"), ElementsAre(1536, 576));
  EXPECT_THAT(shapes.at("model.layers.3.mlp.up_proj.weight"), ElementsAre(1536, 576));
  EXPECT_THAT(shapes.at("model.layers.3.mlp.down_proj.weight"), ElementsAre(576, 1536));
  EXPECT_THAT(shapes.at("model.layers.3.input_layernorm.weight"), ElementsAre(576));
  EXPECT_THAT(shapes.at("model.layers.3.post_attention_layernorm.weight"), ElementsAre(576));
  EXPECT_THAT(shapes.at("model.norm.weight"), ElementsAre(576));
}

TEST(ConfigTest, Llama31WithLlama3RopeScaling) {
  absl::StatusOr<ModelConfig> c = ParseValid(json::parse(kLlama31));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_FALSE(c->tie_word_embeddings);
  auto shapes = ExpectedTensorShapes(*c);
  EXPECT_EQ(shapes.size(), 1u + 32 * 9 + 1 + 1);
  EXPECT_THAT(shapes.at("lm_head.weight"), ElementsAre(128256, 4096));
  EXPECT_THAT(shapes.at("model.layers.31.self_attn.k_proj.weight"), ElementsAre(1024, 4096));
  EXPECT_THAT(shapes.at("model.layers.31.mlp.down_proj.weight"), ElementsAre(4096, 14336));
}

TEST(ConfigTest, Mistral) {
  absl::StatusOr<ModelConfig> c = ParseValid(json::parse(kMistral));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMistral);
  EXPECT_EQ(ArchitectureName(c->architecture), "mistral");
  EXPECT_EQ(c->sliding_window, 0);  // null
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_local_experts, 0);

  json v01 = json::parse(kMistral);  // Mistral-7B-v0.1 has a 4096-token window.
  v01["sliding_window"] = 4096;
  v01["rope_theta"] = 10000.0;
  c = ParseValid(v01);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
  v01.erase("sliding_window");  // transformers' MistralConfig default
  c = ParseValid(v01);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);

  // A Llama config's sliding_window is ignored (the architecture has none).
  json llama = json::parse(kLlama31);
  llama["sliding_window"] = 4096;
  c = ParseValid(llama);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 0);
}

TEST(ConfigTest, Mixtral) {
  absl::StatusOr<ModelConfig> c = ParseValid(json::parse(kMixtral));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMixtral);
  EXPECT_EQ(c->num_local_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);
  EXPECT_EQ(c->sliding_window, 0);
  auto shapes = ExpectedTensorShapes(*c);
  EXPECT_EQ(shapes.size(), 1u + 32 * (2 + 4 + 1 + 8 * 3) + 1 + 1);
  EXPECT_THAT(shapes.at("model.layers.0.block_sparse_moe.gate.weight"), ElementsAre(8, 4096));
  EXPECT_THAT(shapes.at("model.layers.31.block_sparse_moe.experts.7.w1.weight"),
              ElementsAre(14336, 4096));
  EXPECT_THAT(shapes.at("model.layers.31.block_sparse_moe.experts.7.w2.weight"),
              ElementsAre(4096, 14336));
  EXPECT_THAT(shapes.at("model.layers.31.block_sparse_moe.experts.7.w3.weight"),
              ElementsAre(14336, 4096));
  EXPECT_EQ(shapes.count("model.layers.0.mlp.gate_proj.weight"), 0u);

  // Mixtral defaults when fields are absent: rope_theta 1e6, rms_norm_eps 1e-5.
  json bare = json::parse(kMixtral);
  bare.erase("rope_theta");
  bare.erase("rms_norm_eps");
  c = ParseValid(bare);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
}

TEST(ConfigTest, DefaultsAndOptionalForms) {
  json doc = json::parse(kLlama31);
  doc.erase("num_key_value_heads");
  doc.erase("rope_scaling");
  doc.erase("tie_word_embeddings");
  doc.erase("attention_bias");
  doc.erase("eos_token_id");
  doc.erase("bos_token_id");
  doc.erase("torch_dtype");
  doc.erase("rope_theta");
  doc.erase("rms_norm_eps");
  absl::StatusOr<ModelConfig> c = ParseValid(doc);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_EQ(c->rope_scaling.type, "");
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->torch_dtype, "");
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);

  doc["num_key_value_heads"] = nullptr;
  doc["head_dim"] = nullptr;
  doc["eos_token_id"] = 7;
  doc["rope_scaling"] = {{"type", "linear"}, {"factor", 2}};
  c = ParseValid(doc);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(7));
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);

  doc["rope_scaling"] = {{"rope_type", "default"}};
  c = ParseValid(doc);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, "");

  // No model_type: the architectures class decides.
  json mixtral = json::parse(kMixtral);
  mixtral.erase("model_type");
  c = ParseValid(mixtral);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMixtral);
  EXPECT_EQ(c->model_type, "mixtral");
}

TEST(ConfigTest, TransformersFiveRopeParameters) {
  json doc = json::parse(kLlama31);
  json rope = doc["rope_scaling"];
  rope["rope_theta"] = 500000.0;
  doc.erase("rope_scaling");
  doc.erase("rope_theta");
  doc.erase("torch_dtype");
  doc["rope_parameters"] = rope;
  doc["dtype"] = "bfloat16";
  absl::StatusOr<ModelConfig> c = ParseValid(doc);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ConfigTest, ExplicitHeadDimAndBiases) {
  // Mistral-Nemo style: head_dim * heads != hidden_size.
  json doc = json::parse(kMistral);
  doc["hidden_size"] = 5120;
  doc["head_dim"] = 128;
  doc["attention_bias"] = true;
  doc["mlp_bias"] = true;
  absl::StatusOr<ModelConfig> c = ParseValid(doc);
  ASSERT_TRUE(c.ok()) << c.status();
  auto shapes = ExpectedTensorShapes(*c);
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.q_proj.weight"), ElementsAre(4096, 5120));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.o_proj.weight"), ElementsAre(5120, 4096));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.q_proj.bias"), ElementsAre(4096));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.k_proj.bias"), ElementsAre(1024));
  EXPECT_THAT(shapes.at("model.layers.0.self_attn.o_proj.bias"), ElementsAre(5120));
  EXPECT_THAT(shapes.at("model.layers.0.mlp.down_proj.bias"), ElementsAre(5120));
  EXPECT_THAT(shapes.at("model.layers.0.mlp.up_proj.bias"), ElementsAre(14336));
}

struct BadCase {
  std::string label;
  json doc;
  std::string message;
};

// Each case changes one field of `base` (null value: erase the field).
json With(const char* base, const std::string& field, const json& value) {
  json doc = json::parse(base);
  if (value.is_null()) {
    doc.erase(field);
  } else {
    doc[field] = value;
  }
  return doc;
}

TEST(ConfigTest, ParseErrorsNameFileAndField) {
  json rope_missing = json::parse(kLlama31);
  rope_missing["rope_scaling"].erase("low_freq_factor");
  json rope_no_type = json::parse(kLlama31);
  rope_no_type["rope_scaling"].erase("rope_type");
  json rope_factor = json::parse(kLlama31);
  rope_factor["rope_scaling"]["factor"] = "8";
  json no_type = json::parse(kLlama31);
  no_type.erase("model_type");
  no_type.erase("architectures");
  const std::vector<BadCase> cases = {
      {"not object", json::array({1}), "test/config.json: config is a JSON array, not an object"},
      {"hidden string", With(kLlama31, "hidden_size", "4096"),
       "test/config.json: field 'hidden_size': expected an integer, got string \"4096\""},
      {"hidden float", With(kLlama31, "hidden_size", 4096.5),
       "field 'hidden_size': expected an integer, got number 4096.5"},
      {"layers huge", With(kLlama31, "num_hidden_layers", json(18446744073709551615ULL)),
       "field 'num_hidden_layers': integer number 18446744073709551615 is out of range"},
      {"missing layers", With(kLlama31, "num_hidden_layers", nullptr),
       "test/config.json: missing required field 'num_hidden_layers'"},
      {"missing vocab", With(kLlama31, "vocab_size", nullptr),
       "missing required field 'vocab_size'"},
      {"missing max pos", With(kLlama31, "max_position_embeddings", nullptr),
       "missing required field 'max_position_embeddings'"},
      {"kv heads bool", With(kLlama31, "num_key_value_heads", true),
       "field 'num_key_value_heads': expected an integer, got boolean true"},
      {"eps string", With(kLlama31, "rms_norm_eps", "1e-5"),
       "field 'rms_norm_eps': expected a number, got string"},
      {"theta array", With(kLlama31, "rope_theta", json::array({1})),
       "field 'rope_theta': expected a number, got array"},
      {"tie string", With(kLlama31, "tie_word_embeddings", "true"),
       "field 'tie_word_embeddings': expected true or false, got string \"true\""},
      {"attention_bias int", With(kLlama31, "attention_bias", 0),
       "field 'attention_bias': expected true or false"},
      {"mlp_bias string", With(kLlama31, "mlp_bias", "no"), "field 'mlp_bias': expected true"},
      {"rope scaling number", With(kLlama31, "rope_scaling", 8),
       "field 'rope_scaling': expected an object or null, got number 8"},
      {"rope llama3 missing", rope_missing,
       "missing required field 'rope_scaling.low_freq_factor'"},
      {"rope no type", rope_no_type, "missing required field 'rope_scaling.rope_type'"},
      {"rope factor string", rope_factor,
       "field 'rope_scaling.factor': expected a number, got string"},
      {"rope yarn", With(kLlama31, "rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}),
       "field 'rope_scaling.rope_type': unsupported RoPE scaling 'yarn'"},
      {"eos string", With(kLlama31, "eos_token_id", "2"),
       "field 'eos_token_id': expected an integer, got string"},
      {"eos list", With(kLlama31, "eos_token_id", json::array({1, "2"})),
       "field 'eos_token_id': expected an integer or a list of integers, got element string"},
      {"bos float", With(kLlama31, "bos_token_id", 1.5),
       "field 'bos_token_id': expected an integer"},
      {"sliding string", With(kMistral, "sliding_window", "4096"),
       "field 'sliding_window': expected an integer"},
      {"model type", With(kLlama31, "model_type", "qwen2"),
       "field 'model_type': unsupported model type 'qwen2'"},
      {"model type int", With(kLlama31, "model_type", 1),
       "field 'model_type': expected a string, got number 1"},
      {"architectures class",
       With(kLlama31, "architectures", json::array({"LlamaForSequenceClassification"})),
       "field 'architectures': unsupported architecture 'LlamaForSequenceClassification'"},
      {"architectures type", With(kLlama31, "architectures", "LlamaForCausalLM"),
       "field 'architectures': expected an array of strings"},
      {"no type", no_type, "missing required field 'model_type' (and no 'architectures')"},
      {"mixtral experts", With(kMixtral, "num_local_experts", nullptr),
       "missing required field 'num_local_experts'"},
      {"mixtral per tok", With(kMixtral, "num_experts_per_tok", "2"),
       "field 'num_experts_per_tok': expected an integer"},
      {"indivisible", With(kLlama31, "hidden_size", 4001),
       "field 'hidden_size': 4001 is not divisible by num_attention_heads 32"},
      {"activation", With(kLlama31, "hidden_act", "gelu"),
       "field 'hidden_act': unsupported activation 'gelu'"},
      {"torch_dtype", With(kLlama31, "torch_dtype", 16), "field 'torch_dtype': expected a string"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<ModelConfig> config = ParseHfConfig(c.doc, "test/config.json");
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr("test/config.json: "));
    EXPECT_THAT(config.status().message(), HasSubstr(c.message));
  }
}

TEST(ConfigTest, ValidateErrorsNameField) {
  json bad_rope = json::parse(kLlama31);
  bad_rope["rope_scaling"]["high_freq_factor"] = 1.0;
  json zero_factor = json::parse(kLlama31);
  zero_factor["rope_scaling"]["factor"] = 0;
  const std::vector<BadCase> cases = {
      {"kv heads", With(kLlama31, "num_key_value_heads", 5),
       "field 'num_key_value_heads': 5 does not divide num_attention_heads 32"},
      {"kv above heads", With(kLlama31, "num_key_value_heads", 64),
       "field 'num_key_value_heads': 64 is not in [1, 32]"},
      {"zero heads", With(kLlama31, "num_attention_heads", 0),
       "field 'num_attention_heads': 0 is not in [1, 1024]"},
      {"negative vocab", With(kLlama31, "vocab_size", -1), "field 'vocab_size': -1 is not in"},
      {"zero layers", With(kLlama31, "num_hidden_layers", 0), "field 'num_hidden_layers': 0"},
      {"huge layers", With(kLlama31, "num_hidden_layers", 1000000),
       "field 'num_hidden_layers': 1000000 is not in [1, 1024]"},
      {"zero intermediate", With(kLlama31, "intermediate_size", 0), "field 'intermediate_size': 0"},
      {"odd head dim", With(kLlama31, "head_dim", 127), "field 'head_dim': 127 is odd"},
      {"zero max pos", With(kLlama31, "max_position_embeddings", 0),
       "field 'max_position_embeddings': 0"},
      {"eps", With(kLlama31, "rms_norm_eps", 0), "field 'rms_norm_eps': 0 is not a positive"},
      {"theta", With(kLlama31, "rope_theta", -1.0), "field 'rope_theta': -1"},
      {"rope freq", bad_rope,
       "field 'rope_scaling.high_freq_factor': 1 must exceed low_freq_factor 1"},
      {"rope factor", zero_factor, "field 'rope_scaling.factor': 0 is not a positive"},
      {"experts per tok", With(kMixtral, "num_experts_per_tok", 9),
       "field 'num_experts_per_tok': 9 is not in [1, 8]"},
      {"zero experts", With(kMixtral, "num_local_experts", 0),
       "field 'num_local_experts': 0 is not in [1, 1024]"},
      {"sliding", With(kMistral, "sliding_window", -1), "field 'sliding_window': -1 is negative"},
      {"eos range", With(kLlama31, "eos_token_id", json::array({128001, 128256})),
       "field 'eos_token_id': 128256 is outside the vocabulary [0, 128256)"},
      {"bos range", With(kLlama31, "bos_token_id", -2), "field 'bos_token_id': -2 is outside"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.label);
    absl::StatusOr<ModelConfig> config = ParseHfConfig(c.doc, "test/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    absl::Status status = ValidateConfig(*config, "test/config.json");
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("test/config.json: "));
    EXPECT_THAT(status.message(), HasSubstr(c.message));
  }

  // A dense model must not carry experts (e.g. a GGUF reader's mistake).
  absl::StatusOr<ModelConfig> dense = ParseHfConfig(json::parse(kMistral), "x");
  ASSERT_TRUE(dense.ok());
  dense->num_local_experts = 8;
  absl::Status status = ValidateConfig(*dense, "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("a dense mistral model has no experts"));
}

TEST(ConfigTest, LoadErrorsNameFile) {
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "config_test";
  std::filesystem::create_directories(dir);
  const std::string missing = (dir / "absent.json").string();
  absl::StatusOr<ModelConfig> c = LoadHfConfig(missing);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(missing));

  const std::string broken = (dir / "broken.json").string();
  std::ofstream(broken) << "{\"model_type\": ";
  c = LoadHfConfig(broken);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(broken + ": invalid JSON"));

  // LoadHfConfig also validates.
  const std::string invalid = (dir / "invalid.json").string();
  std::ofstream(invalid) << With(kLlama31, "num_key_value_heads", 5).dump();
  c = LoadHfConfig(invalid);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr(invalid + ": field 'num_key_value_heads'"));
}

}  // namespace
}  // namespace shardserve
