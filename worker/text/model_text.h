// The text side of a model — tokenizer, chat template and special tokens — loaded from the same
// path as its weights: an HF model directory (tokenizer.json, tokenizer_config.json,
// chat_template.jinja, generation_config.json) or a GGUF file (tokenizer.ggml.* metadata and
// tokenizer.chat_template).
#ifndef SHARDSERVE_WORKER_TEXT_MODEL_TEXT_H_
#define SHARDSERVE_WORKER_TEXT_MODEL_TEXT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/text/chat_template.h"
#include "worker/text/tokenizer.h"

namespace shardserve {

class GgufFile;

struct ModelText {
  std::unique_ptr<Tokenizer> tokenizer;
  // The model's chat template; nullopt when the model ships none.
  std::optional<ChatTemplate> chat_template;
  // Special token strings handed to the template as bos_token / eos_token (nullopt: the template
  // sees them undefined, as transformers does for a None token).
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  // Ids that end generation: generation_config.json's eos_token_id(s), else config.json's, else
  // the tokenizer's EOS (GGUF: tokenizer.ggml.eos_token_id and eot_token_id). Sorted, unique.
  std::vector<int32_t> eos_ids;

  // Renders `messages` (a JSON array of {"role", "content", ...}) with the chat template, as
  // transformers.apply_chat_template(tokenize=False) does. `tools` may be null.
  // FAILED_PRECONDITION when the model has no chat template.
  absl::StatusOr<std::string> RenderChat(const nlohmann::ordered_json& messages,
                                         bool add_generation_prompt,
                                         const nlohmann::ordered_json& tools = nullptr) const;
};

// Loads from a GGUF file or an HF model directory. Errors name the file and the field.
absl::StatusOr<ModelText> LoadModelText(const std::string& path);
// From an already open GGUF file (its `path()` names it in errors).
absl::StatusOr<ModelText> LoadModelTextFromGguf(const GgufFile& gguf);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_TEXT_MODEL_TEXT_H_
