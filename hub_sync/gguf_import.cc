#include "hub_sync/gguf_import.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "utf8proc.h"
#include "worker/weights/dtype.h"
#include "worker/weights/gguf.h"
#include "worker/weights/model_weights.h"
#include "worker/weights/safetensors_writer.h"

namespace shardserve::hub {
namespace {

namespace fs = std::filesystem;

// Insertion-ordered JSON: the reference writes keys in a fixed order (sorted where it sorts), and
// byte-identical output needs the same order.
using Json = nlohmann::ordered_json;

static_assert(std::endian::native == std::endian::little,
              "safetensors and GGUF are little-endian; this writer copies host floats");

// llama.cpp's token types that the reference accepts.
constexpr int64_t kTokenNormal = 1;
constexpr int64_t kTokenControl = 3;

absl::Status Invalid(absl::string_view path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}
absl::Status Unsupported(absl::string_view path, absl::string_view message) {
  return absl::UnimplementedError(absl::StrCat(path, ": ", message));
}
absl::Status ErrnoError(absl::string_view what, absl::string_view path, int err) {
  const std::string message = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(message) : absl::InternalError(message);
}

std::string Quoted(absl::string_view s) { return absl::StrCat("'", s, "'"); }

bool ValidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    if (n <= 0) return false;
    p += n;
    left -= n;
  }
  return true;
}

// --- GGUF metadata, read and checked as the reference's read_hparams / read_tokenizer -----------

struct HParams {
  int64_t n_layer = 0;
  int64_t n_ctx = 0;
  int64_t n_embd = 0;
  int64_t n_ff = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  double rope_theta = 10000.0;
  double rms_eps = 0;
  std::optional<double> linear_rope_factor;  // rope_scaling null when absent
  int64_t vocab_size = 0;
};

struct TokenizerMeta {
  std::vector<std::string> tokens;
  std::vector<std::string> merges;
  std::vector<int64_t> types;
  std::optional<std::string> chat_template;
  bool add_bos = false;
  std::optional<bool> add_eos;
  std::optional<int64_t> bos, eos, unknown, padding;
};

absl::StatusOr<std::optional<int64_t>> OptionalInt(const GgufFile& file, absl::string_view key) {
  if (file.FindValue(key) == nullptr) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(int64_t v, file.GetInt(key));
  return std::optional<int64_t>(v);
}

// A float metadata value as the reference reads it: rounded to float32, then widened by its
// shortest round-trip decimal (1e-5f -> 1e-05, not 9.999999747378752e-06).
absl::StatusOr<double> Float32Value(const GgufFile& file, absl::string_view key) {
  ASSIGN_OR_RETURN(double value, file.GetFloat(key));
  const float f = static_cast<float>(value);
  if (!std::isfinite(f)) {
    return Invalid(file.path(), absl::StrCat("metadata key ", Quoted(key), " is ", value,
                                             ", not a finite float32"));
  }
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), f);
  double widened = f;
  if (r.ec == std::errc()) std::from_chars(buf, r.ptr, widened);
  return widened;
}

absl::StatusOr<HParams> ReadHParams(const GgufFile& file) {
  const std::string& path = file.path();
  ASSIGN_OR_RETURN(std::string arch, file.GetString("general.architecture"));
  if (arch != "llama") {
    return Unsupported(path, absl::StrCat("general.architecture is ", Quoted(arch),
                                          "; only 'llama' is supported"));
  }
  HParams p;
  ASSIGN_OR_RETURN(p.n_layer, file.GetInt("llama.block_count"));
  ASSIGN_OR_RETURN(p.n_ctx, file.GetInt("llama.context_length"));
  ASSIGN_OR_RETURN(p.n_embd, file.GetInt("llama.embedding_length"));
  ASSIGN_OR_RETURN(p.n_ff, file.GetInt("llama.feed_forward_length"));
  ASSIGN_OR_RETURN(p.n_head, file.GetInt("llama.attention.head_count"));
  for (const auto& [key, value] :
       {std::pair{"llama.block_count", p.n_layer}, std::pair{"llama.context_length", p.n_ctx},
        std::pair{"llama.embedding_length", p.n_embd},
        std::pair{"llama.feed_forward_length", p.n_ff},
        std::pair{"llama.attention.head_count", p.n_head}}) {
    if (value <= 0) {
      return Invalid(
          path, absl::StrCat("metadata key ", Quoted(key), " is ", value, "; it must be positive"));
    }
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> kv, OptionalInt(file, "llama.attention.head_count_kv"));
  p.n_head_kv = kv.value_or(p.n_head);
  ASSIGN_OR_RETURN(std::optional<int64_t> key_length,
                   OptionalInt(file, "llama.attention.key_length"));
  p.head_dim = key_length.value_or(p.n_embd / p.n_head);
  ASSIGN_OR_RETURN(std::optional<int64_t> value_length,
                   OptionalInt(file, "llama.attention.value_length"));
  ASSIGN_OR_RETURN(std::optional<int64_t> rope_dim,
                   OptionalInt(file, "llama.rope.dimension_count"));
  if (value_length.value_or(p.head_dim) != p.head_dim ||
      rope_dim.value_or(p.head_dim) != p.head_dim) {
    return Unsupported(
        path, absl::StrCat("key_length ", p.head_dim, ", value_length ",
                           value_length.value_or(p.head_dim), " and rope.dimension_count ",
                           rope_dim.value_or(p.head_dim),
                           " differ; partial rotary / asymmetric heads are not supported"));
  }
  if (p.n_head_kv <= 0 || p.head_dim <= 0) {
    return Invalid(path, absl::StrCat("head_count_kv ", p.n_head_kv, " and head size ", p.head_dim,
                                      " must be positive"));
  }
  if (file.FindValue("llama.rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(p.rope_theta, Float32Value(file, "llama.rope.freq_base"));
  }
  ASSIGN_OR_RETURN(p.rms_eps, Float32Value(file, "llama.attention.layer_norm_rms_epsilon"));

  std::string scaling = "none";
  if (file.FindValue("llama.rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(scaling, file.GetString("llama.rope.scaling.type"));
  }
  if (scaling == "linear") {
    ASSIGN_OR_RETURN(p.linear_rope_factor, Float32Value(file, "llama.rope.scaling.factor"));
  } else if (scaling != "none") {
    return Unsupported(path, absl::StrCat("llama.rope.scaling.type ", Quoted(scaling),
                                          " is not supported (only 'none' and 'linear')"));
  }
  ASSIGN_OR_RETURN(std::optional<int64_t> experts, OptionalInt(file, "llama.expert_count"));
  if (experts.value_or(0) != 0) {
    return Unsupported(path, "mixture-of-experts GGUFs (llama.expert_count > 0) are not supported");
  }
  return p;
}

absl::StatusOr<TokenizerMeta> ReadTokenizer(const GgufFile& file) {
  const std::string& path = file.path();
  ASSIGN_OR_RETURN(std::string model, file.GetString("tokenizer.ggml.model"));
  std::string pre = "default";
  if (file.FindValue("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
  }
  if (model != "gpt2") {
    return Unsupported(path, absl::StrCat("tokenizer.ggml.model is ", Quoted(model),
                                          "; only 'gpt2' (byte-level BPE) is supported"));
  }
  if (pre != "smollm") {
    return Unsupported(
        path, absl::StrCat("tokenizer.ggml.pre is ", Quoted(pre),
                           "; only 'smollm' is supported (each pre-tokenizer needs its own "
                           "regex set, checked against the model's tokenizer.json)"));
  }
  TokenizerMeta tok;
  ASSIGN_OR_RETURN(tok.tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  ASSIGN_OR_RETURN(tok.merges, file.GetStringArray("tokenizer.ggml.merges"));
  ASSIGN_OR_RETURN(tok.types, file.GetIntArray("tokenizer.ggml.token_type"));
  if (file.FindValue("tokenizer.chat_template") != nullptr) {
    ASSIGN_OR_RETURN(tok.chat_template, file.GetString("tokenizer.chat_template"));
    if (!ValidUtf8(*tok.chat_template)) {
      return Invalid(path, "tokenizer.chat_template is not valid UTF-8");
    }
  }
  if (file.FindValue("tokenizer.ggml.add_bos_token") != nullptr) {
    ASSIGN_OR_RETURN(tok.add_bos, file.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (file.FindValue("tokenizer.ggml.add_eos_token") != nullptr) {
    ASSIGN_OR_RETURN(tok.add_eos, file.GetBool("tokenizer.ggml.add_eos_token"));
  }
  ASSIGN_OR_RETURN(tok.bos, OptionalInt(file, "tokenizer.ggml.bos_token_id"));
  ASSIGN_OR_RETURN(tok.eos, OptionalInt(file, "tokenizer.ggml.eos_token_id"));
  ASSIGN_OR_RETURN(tok.unknown, OptionalInt(file, "tokenizer.ggml.unknown_token_id"));
  ASSIGN_OR_RETURN(tok.padding, OptionalInt(file, "tokenizer.ggml.padding_token_id"));

  if (tok.types.size() != tok.tokens.size()) {
    return Invalid(path, absl::StrCat("tokenizer.ggml.token_type has ", tok.types.size(),
                                      " entries and tokenizer.ggml.tokens ", tok.tokens.size()));
  }
  absl::flat_hash_set<absl::string_view> seen;
  seen.reserve(tok.tokens.size());
  for (size_t i = 0; i < tok.tokens.size(); ++i) {
    if (!ValidUtf8(tok.tokens[i])) {
      return Invalid(path, absl::StrCat("tokenizer.ggml.tokens[", i, "] is not valid UTF-8"));
    }
    if (!seen.insert(tok.tokens[i]).second) {
      return Invalid(path, absl::StrCat("tokenizer.ggml.tokens has duplicate strings (",
                                        Quoted(tok.tokens[i]), " again at ", i, ")"));
    }
    if (tok.types[i] != kTokenNormal && tok.types[i] != kTokenControl) {
      return Unsupported(
          path, absl::StrCat("token ", i, " ", Quoted(tok.tokens[i]), " has token_type ",
                             tok.types[i], "; only 1 (normal) and 3 (control) are supported"));
    }
  }
  for (size_t i = 0; i < tok.merges.size(); ++i) {
    if (!ValidUtf8(tok.merges[i])) {
      return Invalid(path, absl::StrCat("tokenizer.ggml.merges[", i, "] is not valid UTF-8"));
    }
  }
  const int64_t n = static_cast<int64_t>(tok.tokens.size());
  for (const auto& [key, id] :
       {std::pair{"bos", tok.bos}, std::pair{"eos", tok.eos}, std::pair{"unknown", tok.unknown},
        std::pair{"padding", tok.padding}}) {
    if (id && (*id < 0 || *id >= n)) {
      return Invalid(path, absl::StrCat("tokenizer.ggml.", key, "_token_id ", *id,
                                        " is out of range (", n, " tokens)"));
    }
  }
  return tok;
}

// --- tensors -----------------------------------------------------------------------------------

std::map<std::string, std::vector<int64_t>> ExpectedShapes(const HParams& p, bool tied) {
  const int64_t h = p.n_embd, q = p.n_head * p.head_dim, kv = p.n_head_kv * p.head_dim;
  const int64_t ff = p.n_ff;
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {p.vocab_size, h}}, {"model.norm.weight", {h}}};
  if (!tied) shapes["lm_head.weight"] = {p.vocab_size, h};
  for (int64_t i = 0; i < p.n_layer; ++i) {
    const std::string l = absl::StrCat("model.layers.", i, ".");
    shapes[l + "input_layernorm.weight"] = {h};
    shapes[l + "post_attention_layernorm.weight"] = {h};
    shapes[l + "self_attn.q_proj.weight"] = {q, h};
    shapes[l + "self_attn.k_proj.weight"] = {kv, h};
    shapes[l + "self_attn.v_proj.weight"] = {kv, h};
    shapes[l + "self_attn.o_proj.weight"] = {h, q};
    shapes[l + "mlp.gate_proj.weight"] = {ff, h};
    shapes[l + "mlp.up_proj.weight"] = {ff, h};
    shapes[l + "mlp.down_proj.weight"] = {h, ff};
  }
  return shapes;
}

std::string FirstFive(const std::vector<std::string>& names) {
  std::vector<std::string> quoted;
  for (size_t i = 0; i < names.size() && i < 5; ++i) quoted.push_back(Quoted(names[i]));
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), names.size() > 5 ? ", ...]" : "]");
}

// Maps the GGUF's tensors to HF names and checks them against the shapes the hyper-parameters
// imply. Returns the HF names (sorted) and whether the embeddings are tied.
absl::StatusOr<std::vector<std::string>> CheckTensors(const GgufFile& file, const HParams& p,
                                                      bool* tied) {
  const std::string& path = file.path();
  std::map<std::string, std::vector<int64_t>> found;
  for (const TensorView& t : file.tensors()) {
    if (t.name == "rope_freqs.weight") {
      // Llama-3 RoPE frequency factors: HF derives them from rope_scaling "llama3", which this
      // importer does not write; dropping them would change the model.
      return Unsupported(path,
                         "tensor 'rope_freqs.weight' (Llama-3 RoPE frequency factors) is "
                         "not supported");
    }
    const std::string hf = HfNameForGgufTensor(t.name);
    if (hf.empty()) return Invalid(path, absl::StrCat("unexpected GGUF tensor ", Quoted(t.name)));
    if (hf.ends_with("self_attn.q_proj.bias") || hf.ends_with("self_attn.k_proj.bias")) {
      return Unsupported(path, absl::StrCat("GGUF tensor ", Quoted(t.name),
                                            ": Q/K biases are not "
                                            "supported"));
    }
    if (!found.emplace(hf, t.shape).second) {
      return Invalid(
          path, absl::StrCat("GGUF tensor ", Quoted(t.name), " maps to ", Quoted(hf), " twice"));
    }
  }
  *tied = found.count("lm_head.weight") == 0;
  const std::map<std::string, std::vector<int64_t>> expected = ExpectedShapes(p, *tied);
  std::vector<std::string> missing, extra;
  for (const auto& [name, shape] : expected) {
    if (!found.contains(name)) missing.push_back(name);
  }
  for (const auto& [name, shape] : found) {
    if (!expected.contains(name)) extra.push_back(name);
  }
  if (!missing.empty() || !extra.empty()) {
    return Invalid(path, absl::StrCat("tensor set mismatch: missing ", FirstFive(missing),
                                      ", unexpected ", FirstFive(extra)));
  }
  std::vector<std::string> names;
  for (const auto& [name, shape] : expected) {
    if (found[name] != shape) {
      return Invalid(path,
                     absl::StrCat("tensor ", Quoted(name), " has shape ", ShapeString(found[name]),
                                  ", expected ", ShapeString(shape)));
    }
    names.push_back(name);
  }
  return names;
}

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
uint16_t F32ToBf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x0040);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

absl::Status WriteWeights(const ModelWeights& weights, const std::vector<std::string>& names,
                          bool bf16, const std::string& path) {
  std::vector<TensorSpec> specs;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(TensorView view, weights.View(name));
    specs.push_back({name, bf16 ? DType::kBF16 : DType::kF32, view.shape});
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, specs, {{"format", "pt"}}));
  std::vector<uint16_t> half;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(std::vector<float> values, weights.DequantizeF32(name));
    std::span<const uint8_t> bytes;
    if (bf16) {
      half.resize(values.size());
      std::transform(values.begin(), values.end(), half.begin(), F32ToBf16);
      bytes = {reinterpret_cast<const uint8_t*>(half.data()), half.size() * sizeof(uint16_t)};
    } else {
      bytes = {reinterpret_cast<const uint8_t*>(values.data()), values.size() * sizeof(float)};
    }
    RETURN_IF_ERROR(writer->Write(name, bytes));
  }
  return writer->Finish();
}

// --- JSON documents, as the reference builds them ----------------------------------------------

// The object with its top-level keys sorted (the reference's dict(sorted(...))).
Json SortedKeys(Json object) {
  std::vector<std::pair<std::string, Json>> items;
  for (auto& [key, value] : object.items()) items.emplace_back(key, std::move(value));
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  Json sorted = Json::object();
  for (auto& [key, value] : items) sorted[key] = std::move(value);
  return sorted;
}

// An object with many keys known to be distinct, in insertion order. ordered_json's own insert
// searches linearly for the key (quadratic for a 49k-token vocabulary); its object type is a
// std::vector of pairs, which is appended to directly.
Json DistinctKeyObject(std::vector<std::pair<std::string, Json>> items) {
  Json object = Json::object();
  auto& storage = object.get_ref<Json::object_t&>();
  storage.reserve(items.size());
  for (auto& [key, value] : items)
    storage.Container::emplace_back(std::move(key), std::move(value));
  return object;
}

Json TokenEntry(const std::string& content) {
  return Json{{"content", content},
              {"lstrip", false},
              {"normalized", false},
              {"rstrip", false},
              {"single_word", false}};
}

Json TokenizerJson(const TokenizerMeta& tok) {
  Json added = Json::array();
  std::vector<std::pair<std::string, Json>> vocab;
  vocab.reserve(tok.tokens.size());
  for (size_t i = 0; i < tok.tokens.size(); ++i) {
    if (tok.types[i] == kTokenControl) {
      added.push_back(Json{{"id", i},
                           {"content", tok.tokens[i]},
                           {"single_word", false},
                           {"lstrip", false},
                           {"rstrip", false},
                           {"normalized", false},
                           {"special", true}});
    }
    vocab.emplace_back(tok.tokens[i], Json(i));
  }
  Json merges = Json::array();
  merges.get_ref<Json::array_t&>().assign(tok.merges.begin(), tok.merges.end());
  Json model = Json::object();
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  model["vocab"] = DistinctKeyObject(std::move(vocab));
  model["merges"] = std::move(merges);

  Json doc = Json::object();
  doc["version"] = "1.0";
  doc["truncation"] = nullptr;
  doc["padding"] = nullptr;
  doc["added_tokens"] = std::move(added);
  doc["normalizer"] = nullptr;
  doc["pre_tokenizer"] =
      Json{{"type", "Sequence"},
           {"pretokenizers", Json::array({Json{{"type", "Digits"}, {"individual_digits", true}},
                                          Json{{"type", "ByteLevel"},
                                               {"add_prefix_space", false},
                                               {"trim_offsets", true},
                                               {"use_regex", true}}})}};
  doc["post_processor"] = nullptr;
  doc["decoder"] = Json{{"type", "ByteLevel"},
                        {"add_prefix_space", true},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  doc["model"] = std::move(model);
  return doc;
}

// The special tokens as (tokenizer_config key, id), in the reference's order.
std::vector<std::pair<std::string, int64_t>> SpecialTokens(const TokenizerMeta& tok) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& [name, id] :
       {std::pair{"bos_token", tok.bos}, std::pair{"eos_token", tok.eos},
        std::pair{"pad_token", tok.padding}, std::pair{"unk_token", tok.unknown}}) {
    if (id) out.emplace_back(name, *id);
  }
  return out;
}

Json TokenizerConfigJson(const TokenizerMeta& tok, int64_t n_ctx) {
  std::vector<std::pair<std::string, Json>> decoder;
  for (size_t i = 0; i < tok.tokens.size(); ++i) {
    if (tok.types[i] != kTokenControl) continue;
    Json entry = TokenEntry(tok.tokens[i]);
    entry["special"] = true;
    decoder.emplace_back(absl::StrCat(i), std::move(entry));
  }
  Json config = Json::object();
  config["add_bos_token"] = tok.add_bos;
  config["add_prefix_space"] = false;
  config["added_tokens_decoder"] = DistinctKeyObject(std::move(decoder));
  config["clean_up_tokenization_spaces"] = false;
  config["model_max_length"] = n_ctx;
  config["tokenizer_class"] = "GPT2Tokenizer";
  config["vocab_size"] = tok.tokens.size();
  if (tok.add_eos) config["add_eos_token"] = *tok.add_eos;
  if (tok.chat_template) config["chat_template"] = *tok.chat_template;
  for (const auto& [name, id] : SpecialTokens(tok)) config[name] = tok.tokens[id];
  return SortedKeys(std::move(config));
}

Json SpecialTokensMapJson(const TokenizerMeta& tok) {
  Json map = Json::object();
  for (const auto& [name, id] : SpecialTokens(tok)) map[name] = TokenEntry(tok.tokens[id]);
  return map;
}

// bos / eos / pad ids as (key, id), in the reference's order.
std::vector<std::pair<std::string, int64_t>> SpecialIds(const TokenizerMeta& tok) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& [name, id] :
       {std::pair{"bos_token_id", tok.bos}, std::pair{"eos_token_id", tok.eos},
        std::pair{"pad_token_id", tok.padding}}) {
    if (id) out.emplace_back(name, *id);
  }
  return out;
}

Json ConfigJson(const HParams& p, const TokenizerMeta& tok, bool tied, bool bf16) {
  Json config = Json::object();
  config["architectures"] = Json::array({"LlamaForCausalLM"});
  config["attention_bias"] = false;
  config["attention_dropout"] = 0.0;
  config["hidden_act"] = "silu";
  config["hidden_size"] = p.n_embd;
  config["intermediate_size"] = p.n_ff;
  config["max_position_embeddings"] = p.n_ctx;
  config["mlp_bias"] = false;
  config["model_type"] = "llama";
  config["num_attention_heads"] = p.n_head;
  config["num_hidden_layers"] = p.n_layer;
  config["num_key_value_heads"] = p.n_head_kv;
  config["rms_norm_eps"] = p.rms_eps;
  config["rope_scaling"] = p.linear_rope_factor
                               ? Json{{"type", "linear"}, {"factor", *p.linear_rope_factor}}
                               : Json(nullptr);
  config["rope_theta"] = p.rope_theta;
  config["tie_word_embeddings"] = tied;
  config["torch_dtype"] = bf16 ? "bfloat16" : "float32";
  config["use_cache"] = true;
  config["vocab_size"] = p.vocab_size;
  if (p.head_dim != p.n_embd / p.n_head) config["head_dim"] = p.head_dim;
  for (const auto& [name, id] : SpecialIds(tok)) config[name] = id;
  return SortedKeys(std::move(config));
}

Json GenerationConfigJson(const TokenizerMeta& tok) {
  Json config = Json::object();
  config["_from_model_config"] = true;
  for (const auto& [name, id] : SpecialIds(tok)) config[name] = id;
  return config;
}

// Python's json.dump(value, indent=2, ensure_ascii=False): the same separators, escapes and
// shortest round-trip floats as nlohmann's dump(2). Strings were checked to be UTF-8 already.
std::string DumpIndented(const Json& value) {
  return value.dump(2, ' ', false, Json::error_handler_t::replace);
}

// --- files ------------------------------------------------------------------------------------

absl::Status WriteFileSynced(const std::string& path, absl::string_view content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", path, errno);
  absl::Cleanup close_fd = [fd] { ::close(fd); };
  while (!content.empty()) {
    const ssize_t n = ::write(fd, content.data(), content.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    content.remove_prefix(static_cast<size_t>(n));
  }
  if (::fsync(fd) != 0) return ErrnoError("cannot fsync", path, errno);
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", path, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync directory", path, err);
  return absl::OkStatus();
}

// OK when `dir` does not exist or is an empty directory.
absl::Status CheckOutputFree(const std::string& dir) {
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return absl::InternalError(absl::StrCat("cannot stat ", dir, ": ", ec.message()));
  }
  if (!fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st)) {
    return absl::FailedPreconditionError(
        absl::StrCat("output ", dir, " exists and is not a directory"));
  }
  const bool empty = fs::is_empty(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  if (!empty) {
    return absl::FailedPreconditionError(
        absl::StrCat("output directory ", dir, " is not empty; import into a new directory"));
  }
  return absl::OkStatus();
}

absl::Status WriteRepository(const ModelWeights& weights, const std::vector<std::string>& names,
                             const HParams& hp, const TokenizerMeta& tok, bool tied, bool bf16,
                             const std::string& dir) {
  RETURN_IF_ERROR(WriteWeights(weights, names, bf16, dir + "/model.safetensors"));
  RETURN_IF_ERROR(
      WriteFileSynced(dir + "/config.json", DumpIndented(ConfigJson(hp, tok, tied, bf16)) + "\n"));
  RETURN_IF_ERROR(WriteFileSynced(dir + "/generation_config.json",
                                  DumpIndented(GenerationConfigJson(tok)) + "\n"));
  // tokenizer.json as `tokenizers` itself writes it: indent 2, raw UTF-8, no final newline.
  RETURN_IF_ERROR(WriteFileSynced(dir + "/tokenizer.json", DumpIndented(TokenizerJson(tok))));
  RETURN_IF_ERROR(WriteFileSynced(dir + "/tokenizer_config.json",
                                  DumpIndented(TokenizerConfigJson(tok, hp.n_ctx)) + "\n"));
  RETURN_IF_ERROR(WriteFileSynced(dir + "/special_tokens_map.json",
                                  DumpIndented(SpecialTokensMapJson(tok)) + "\n"));
  return SyncDirectory(dir);
}

}  // namespace

absl::Status ImportGguf(const std::string& gguf_path, const std::string& out_dir,
                        const GgufImportOptions& options) {
  if (options.dtype != "bf16" && options.dtype != "f32") {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype ", Quoted(options.dtype), " is not supported (bf16 or f32)"));
  }
  const bool bf16 = options.dtype == "bf16";
  if (out_dir.empty()) return absl::InvalidArgumentError("output directory is empty");
  RETURN_IF_ERROR(CheckOutputFree(out_dir));

  // Everything is read and checked before anything is written.
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
  ASSIGN_OR_RETURN(HParams hp, ReadHParams(*file));
  ASSIGN_OR_RETURN(TokenizerMeta tok, ReadTokenizer(*file));
  hp.vocab_size = static_cast<int64_t>(tok.tokens.size());
  ASSIGN_OR_RETURN(std::optional<int64_t> vocab, OptionalInt(*file, "llama.vocab_size"));
  if (vocab && *vocab != hp.vocab_size) {
    return Invalid(gguf_path,
                   absl::StrCat("llama.vocab_size ", *vocab, " != ", hp.vocab_size, " tokens"));
  }
  bool tied = false;
  ASSIGN_OR_RETURN(std::vector<std::string> names, CheckTensors(*file, hp, &tied));
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> weights, ModelWeights::FromGguf(std::move(file)));

  // Written in a temporary sibling, renamed into place last.
  const fs::path out = fs::absolute(fs::path(out_dir)).lexically_normal();
  const fs::path target = out.has_filename() ? out : out.parent_path();
  const std::string parent = target.parent_path().string();
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", parent, ": ", ec.message()));
  std::string tmp = absl::StrCat(parent, "/.", target.filename().string(), ".tmp-XXXXXX");
  if (::mkdtemp(tmp.data()) == nullptr) return ErrnoError("cannot create", tmp, errno);
  absl::Cleanup remove_tmp = [&tmp] {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
  };
  RETURN_IF_ERROR(WriteRepository(*weights, names, hp, tok, tied, bf16, tmp));
  if (::chmod(tmp.c_str(), 0755) != 0) return ErrnoError("cannot chmod", tmp, errno);
  // Replaces `out_dir` only when it is (still) an empty directory.
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    const int err = errno;
    if (err == ENOTEMPTY || err == EEXIST || err == ENOTDIR) {
      return absl::FailedPreconditionError(absl::StrCat(
          "output ", target.string(), " appeared while importing: ", std::strerror(err)));
    }
    return ErrnoError(absl::StrCat("cannot rename ", tmp, " to"), target.string(), err);
  }
  std::move(remove_tmp).Cancel();
  return SyncDirectory(parent);
}

absl::StatusOr<std::vector<RepoFile>> ListImportedFiles(const std::string& out_dir) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(out_dir, ec))) {
    return absl::NotFoundError(
        absl::StrCat("imported repository ", out_dir, " does not exist or is not a directory"));
  }
  std::vector<RepoFile> files;
  fs::recursive_directory_iterator it(out_dir, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const fs::file_status st = it->symlink_status(ec);
    if (ec) break;
    if (fs::is_directory(st)) continue;
    const std::string full = it->path().string();
    if (!fs::is_regular_file(st)) {
      return absl::FailedPreconditionError(
          absl::StrCat(full, " is not a regular file (a repository holds only files)"));
    }
    RepoFile file;
    file.path = it->path().lexically_relative(out_dir).generic_string();
    RETURN_IF_ERROR(ValidateRepoPath(file.path));
    file.size = it->file_size(ec);
    if (ec) break;
    file.lfs = file.path.ends_with(".safetensors");
    ASSIGN_OR_RETURN(file.etag, HashFileHex(full, file.lfs));
    files.push_back(std::move(file));
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", out_dir, ": ", ec.message()));
  std::sort(files.begin(), files.end(),
            [](const RepoFile& a, const RepoFile& b) { return a.path < b.path; });
  return files;
}

std::string SyntheticCommit(const std::vector<RepoFile>& files) {
  std::vector<const RepoFile*> sorted;
  for (const RepoFile& f : files) sorted.push_back(&f);
  std::sort(sorted.begin(), sorted.end(),
            [](const RepoFile* a, const RepoFile* b) { return a->path < b->path; });
  std::string listing;
  for (const RepoFile* f : sorted)
    absl::StrAppend(&listing, f->path, std::string(1, '\0'), f->etag, "\n");
  return GitBlobSha1Hex(listing);
}

}  // namespace shardserve::hub
