#include "worker/text/model_text.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "worker/weights/gguf.h"

namespace shardserve {
namespace {

namespace fs = std::filesystem;

// tokenizer_config.json writes special tokens either as a string or as an AddedToken object
// {"content": "...", ...}; null means absent.
absl::StatusOr<std::optional<std::string>> SpecialTokenString(const nlohmann::json& config,
                                                              const std::string& key,
                                                              const std::string& what) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": field '", key, "' must be a string or {\"content\": string}"));
}

// "chat_template" is a string, or a list of {"name", "template"} of which "default" is used.
absl::StatusOr<std::optional<std::string>> ChatTemplateSource(const nlohmann::json& config,
                                                              const std::string& what) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field 'chat_template' is a list without a \"default\" template"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": field 'chat_template' must be a string or a list"));
}

// eos_token_id as an int or a list of ints; absent or null gives an empty list.
absl::StatusOr<std::vector<int32_t>> EosIds(const nlohmann::json& config, const std::string& what) {
  std::vector<int32_t> ids;
  auto it = config.find("eos_token_id");
  if (it == config.end() || it->is_null()) return ids;
  auto add = [&](const nlohmann::json& v) -> absl::Status {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat(what,
                       ": field 'eos_token_id' must be a non-negative integer or a list "
                       "of them"));
    }
    ids.push_back(v.get<int32_t>());
    return absl::OkStatus();
  };
  if (it->is_array()) {
    for (const auto& v : *it) RETURN_IF_ERROR(add(v));
  } else {
    RETURN_IF_ERROR(add(*it));
  }
  return ids;
}

absl::StatusOr<nlohmann::json> OptionalJsonFile(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return nlohmann::json::object();
  ASSIGN_OR_RETURN(nlohmann::json json, ParseJsonFile(path.string()));
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": expected a JSON object"));
  }
  return json;
}

void SortUnique(std::vector<int32_t>* ids) {
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
}

absl::StatusOr<ModelText> LoadFromDirectory(const fs::path& dir) {
  ModelText text;
  ASSIGN_OR_RETURN(text.tokenizer, Tokenizer::FromFile((dir / "tokenizer.json").string()));

  const std::string config_path = (dir / "tokenizer_config.json").string();
  ASSIGN_OR_RETURN(nlohmann::json config, OptionalJsonFile(config_path));
  ASSIGN_OR_RETURN(text.bos_token, SpecialTokenString(config, "bos_token", config_path));
  ASSIGN_OR_RETURN(text.eos_token, SpecialTokenString(config, "eos_token", config_path));

  // transformers >= 4.43 may save the template as its own file, which then takes precedence.
  std::optional<std::string> source;
  std::string source_name = config_path;
  const fs::path jinja_path = dir / "chat_template.jinja";
  std::error_code ec;
  if (fs::exists(jinja_path, ec)) {
    ASSIGN_OR_RETURN(source, ReadFileToString(jinja_path.string()));
    source_name = jinja_path.string();
  } else {
    ASSIGN_OR_RETURN(source, ChatTemplateSource(config, config_path));
  }
  if (source.has_value()) {
    ASSIGN_OR_RETURN(ChatTemplate tmpl, ChatTemplate::Parse(*source, source_name));
    text.chat_template.emplace(std::move(tmpl));
  }

  const std::string generation_path = (dir / "generation_config.json").string();
  ASSIGN_OR_RETURN(nlohmann::json generation, OptionalJsonFile(generation_path));
  ASSIGN_OR_RETURN(text.eos_ids, EosIds(generation, generation_path));
  if (text.eos_ids.empty()) {
    const std::string model_config_path = (dir / "config.json").string();
    ASSIGN_OR_RETURN(nlohmann::json model_config, OptionalJsonFile(model_config_path));
    ASSIGN_OR_RETURN(text.eos_ids, EosIds(model_config, model_config_path));
  }
  if (text.eos_ids.empty() && text.eos_token.has_value()) {
    if (std::optional<int32_t> id = text.tokenizer->TokenToId(*text.eos_token)) {
      text.eos_ids.push_back(*id);
    }
  }
  if (text.eos_ids.empty() && text.tokenizer->eos_id() >= 0) {
    text.eos_ids.push_back(text.tokenizer->eos_id());
  }
  SortUnique(&text.eos_ids);
  return text;
}

// An optional GGUF value: NOT_FOUND becomes `fallback`, other errors pass through.
template <typename T>
absl::StatusOr<T> Optional(absl::StatusOr<T> value, T fallback) {
  if (value.status().code() == absl::StatusCode::kNotFound) return fallback;
  return value;
}

}  // namespace

absl::StatusOr<std::string> ModelText::RenderChat(const nlohmann::ordered_json& messages,
                                                  bool add_generation_prompt,
                                                  const nlohmann::ordered_json& tools) const {
  if (!chat_template.has_value()) {
    return absl::FailedPreconditionError("the model has no chat template");
  }
  nlohmann::ordered_json context = {{"messages", messages},
                                    {"add_generation_prompt", add_generation_prompt}};
  if (bos_token.has_value()) context["bos_token"] = *bos_token;
  if (eos_token.has_value()) context["eos_token"] = *eos_token;
  if (!tools.is_null()) context["tools"] = tools;
  return chat_template->Render(context);
}

absl::StatusOr<ModelText> LoadModelTextFromGguf(const GgufFile& gguf) {
  GgufVocab vocab;
  ASSIGN_OR_RETURN(vocab.model, gguf.GetString("tokenizer.ggml.model"));
  ASSIGN_OR_RETURN(vocab.pre, Optional(gguf.GetString("tokenizer.ggml.pre"), std::string()));
  ASSIGN_OR_RETURN(vocab.tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
  ASSIGN_OR_RETURN(std::vector<double> scores,
                   Optional(gguf.GetFloatArray("tokenizer.ggml.scores"), {}));
  vocab.scores.assign(scores.begin(), scores.end());
  ASSIGN_OR_RETURN(std::vector<int64_t> types,
                   Optional(gguf.GetIntArray("tokenizer.ggml.token_type"), {}));
  vocab.token_types.assign(types.begin(), types.end());
  ASSIGN_OR_RETURN(vocab.merges, Optional(gguf.GetStringArray("tokenizer.ggml.merges"), {}));
  ASSIGN_OR_RETURN(vocab.bos_id, Optional(gguf.GetInt("tokenizer.ggml.bos_token_id"), -1L));
  ASSIGN_OR_RETURN(vocab.eos_id, Optional(gguf.GetInt("tokenizer.ggml.eos_token_id"), -1L));
  ASSIGN_OR_RETURN(vocab.unk_id, Optional(gguf.GetInt("tokenizer.ggml.unknown_token_id"), -1L));
  ASSIGN_OR_RETURN(vocab.pad_id, Optional(gguf.GetInt("tokenizer.ggml.padding_token_id"), -1L));
  // llama.cpp's defaults when the keys are absent: SentencePiece vocabularies add BOS and a
  // space prefix, byte-level ones neither.
  const bool spm = vocab.model == "llama";
  ASSIGN_OR_RETURN(vocab.add_bos, Optional(gguf.GetBool("tokenizer.ggml.add_bos_token"), spm));
  ASSIGN_OR_RETURN(vocab.add_eos, Optional(gguf.GetBool("tokenizer.ggml.add_eos_token"), false));
  ASSIGN_OR_RETURN(vocab.add_space_prefix,
                   Optional(gguf.GetBool("tokenizer.ggml.add_space_prefix"), spm));

  ModelText text;
  ASSIGN_OR_RETURN(text.tokenizer, Tokenizer::FromGgufVocab(vocab));
  auto token_string = [&](int64_t id) -> std::optional<std::string> {
    if (id < 0 || id >= static_cast<int64_t>(vocab.tokens.size())) return std::nullopt;
    return vocab.tokens[id];
  };
  text.bos_token = token_string(vocab.bos_id);
  text.eos_token = token_string(vocab.eos_id);
  if (vocab.eos_id >= 0) text.eos_ids.push_back(static_cast<int32_t>(vocab.eos_id));
  ASSIGN_OR_RETURN(int64_t eot, Optional(gguf.GetInt("tokenizer.ggml.eot_token_id"), -1L));
  if (eot >= 0) text.eos_ids.push_back(static_cast<int32_t>(eot));
  SortUnique(&text.eos_ids);

  ASSIGN_OR_RETURN(std::string source,
                   Optional(gguf.GetString("tokenizer.chat_template"), std::string()));
  if (!source.empty()) {
    ASSIGN_OR_RETURN(
        ChatTemplate tmpl,
        ChatTemplate::Parse(source, absl::StrCat(gguf.path(), " tokenizer.chat_template")));
    text.chat_template.emplace(std::move(tmpl));
  }
  return text;
}

absl::StatusOr<ModelText> LoadModelText(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return LoadFromDirectory(path);
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
  return LoadModelTextFromGguf(*gguf);
}

}  // namespace shardserve
