#include "worker/weights/model_weights.h"

#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/dtype.h"
#include "worker/weights/quant_formats.h"
#include "worker/weights/quantized_linear.h"

namespace shardserve {
namespace {

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// "12" -> 12; rejects signs, leading zeros and empty strings so each layer has one spelling.
std::optional<int64_t> ParseIndex(absl::string_view s) {
  if (s.empty() || s.size() > 9 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  int64_t v = 0;
  if (!absl::SimpleAtoi(s, &v)) return std::nullopt;
  return v;
}

// Splits "blk.N.<rest>" into N and <rest>.
bool SplitBlock(absl::string_view name, int64_t* layer, absl::string_view* rest) {
  if (!absl::ConsumePrefix(&name, "blk.")) return false;
  const size_t dot = name.find('.');
  if (dot == absl::string_view::npos) return false;
  std::optional<int64_t> n = ParseIndex(name.substr(0, dot));
  if (!n) return false;
  *layer = *n;
  *rest = name.substr(dot + 1);
  return true;
}

// Stacked Mixtral experts: "ffn_gate_exps" -> "w1", "ffn_down_exps" -> "w2", "ffn_up_exps" ->
// "w3"; nullptr otherwise.
const char* StackedExpertWeight(absl::string_view base) {
  if (base == "ffn_gate_exps") return "w1";
  if (base == "ffn_down_exps") return "w2";
  if (base == "ffn_up_exps") return "w3";
  return nullptr;
}

}  // namespace

std::string HfNameForGgufTensor(absl::string_view gguf_name) {
  absl::string_view base = gguf_name;
  absl::string_view suffix;
  if (absl::ConsumeSuffix(&base, ".weight")) {
    suffix = ".weight";
  } else if (absl::ConsumeSuffix(&base, ".bias")) {
    suffix = ".bias";
  } else {
    return "";
  }
  if (base == "token_embd") return absl::StrCat("model.embed_tokens", suffix);
  if (base == "output_norm") return absl::StrCat("model.norm", suffix);
  if (base == "output") return absl::StrCat("lm_head", suffix);
  if (base == "rope_freqs") return absl::StrCat("rope_freqs", suffix);
  int64_t layer;
  absl::string_view rest;
  if (!SplitBlock(base, &layer, &rest)) return "";
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  static constexpr struct {
    const char* gguf;
    const char* hf;
  } kLayerNames[] = {
      {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},    {"ffn_gate_inp", "block_sparse_moe.gate"},
  };
  for (const auto& n : kLayerNames) {
    if (rest == n.gguf) return absl::StrCat(prefix, n.hf, suffix);
  }
  // Older Mixtral files: one tensor per expert, "ffn_gate.E".
  static constexpr struct {
    const char* gguf;
    const char* hf;
  } kExpertNames[] = {{"ffn_gate.", "w1"}, {"ffn_down.", "w2"}, {"ffn_up.", "w3"}};
  for (const auto& n : kExpertNames) {
    absl::string_view expert = rest;
    if (absl::ConsumePrefix(&expert, n.gguf)) {
      std::optional<int64_t> e = ParseIndex(expert);
      if (!e) return "";
      return absl::StrCat(prefix, "block_sparse_moe.experts.", *e, ".", n.hf, suffix);
    }
  }
  return "";
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Open(const std::string& path) {
  std::error_code ec;
  const bool is_dir = std::filesystem::is_directory(path, ec);
  if (!is_dir) {
    ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
    return FromGguf(std::move(file));
  }
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->path_ = path;
  w->format_ = WeightFormat::kSafetensors;
  const std::string config_path = (std::filesystem::path(path) / "config.json").string();
  ASSIGN_OR_RETURN(w->config_, LoadHfConfig(config_path));
  ASSIGN_OR_RETURN(std::optional<ArtifactInfo> artifact, ReadArtifactInfo(path, config_path));
  ASSIGN_OR_RETURN(w->checkpoint_, SafetensorsCheckpoint::Open(path));

  // Stored tensors by name; a quantized layer's tensors become one logical tensor.
  std::map<std::string, TensorView, std::less<>> stored;
  for (const std::string& name : w->checkpoint_->TensorNames()) {
    ASSIGN_OR_RETURN(TensorView view, w->checkpoint_->Get(name));
    stored.emplace(name, std::move(view));
  }
  std::set<std::string, std::less<>> consumed;
  if (artifact.has_value()) {
    w->quantization_ = std::string(quant::SchemeName(artifact->scheme));
    const absl::string_view marker = QuantizedLinearMarkerSuffix(artifact->scheme);
    const StoredTensorLookup lookup = [&stored](absl::string_view name) -> const TensorView* {
      auto it = stored.find(name);
      return it == stored.end() ? nullptr : &it->second;
    };
    for (const auto& [name, view] : stored) {
      absl::string_view prefix = name;
      if (!absl::ConsumeSuffix(&prefix, marker)) continue;
      ASSIGN_OR_RETURN(
          QuantizedLinear linear,
          AssembleQuantizedLinear(artifact->scheme, prefix, lookup, artifact->group_size, path));
      consumed.insert(linear.parts.begin(), linear.parts.end());
      std::string hf_name = linear.view.name;
      if (hf_name == "lm_head.weight" && w->config_.tie_word_embeddings) continue;
      RETURN_IF_ERROR(
          w->Add(hf_name, std::move(linear.view), absl::StrJoin(linear.parts, " + "), 0));
    }
  }
  for (const auto& [name, view] : stored) {
    if (consumed.count(name) > 0) continue;
    // Non-persistent rotary buffers that some exports still carry.
    if (absl::EndsWith(name, ".rotary_emb.inv_freq")) continue;
    // transformers ignores a stored lm_head when the embeddings are tied.
    if (name == "lm_head.weight" && w->config_.tie_word_embeddings) continue;
    RETURN_IF_ERROR(w->Add(name, view, name, 0));
  }
  RETURN_IF_ERROR(w->Validate());
  return w;
}

absl::StatusOr<std::optional<ModelWeights::ArtifactInfo>> ModelWeights::ReadArtifactInfo(
    const std::string& dir, const std::string& config_path) {
  ASSIGN_OR_RETURN(nlohmann::json config, ParseJsonFile(config_path));
  const std::string manifest_path =
      (std::filesystem::path(dir) / std::string(quant::kManifestFileName)).string();
  std::error_code ec;
  const bool has_manifest = std::filesystem::exists(manifest_path, ec);
  const bool quantized = config.is_object() && config.contains("quantization_config");
  if (!quantized && !has_manifest) return std::nullopt;
  if (!quantized) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": has a manifest.json but config.json has no quantization_config"));
  }
  if (!has_manifest) {
    return absl::NotFoundError(
        absl::StrCat(dir,
                     ": config.json has a quantization_config but there is no manifest.json: not a "
                     "complete hub_sync artifact (an artifact without its manifest does not exist; "
                     "quantize it again with `shardserve pull --quantize`)"));
  }
  ASSIGN_OR_RETURN(nlohmann::json manifest, ParseJsonFile(manifest_path));
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": ", why));
  };
  if (!manifest.is_object()) return bad("not a JSON object");
  const nlohmann::json& qc = config["quantization_config"];
  if (!qc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(config_path, ": \"quantization_config\" is not an object"));
  }
  ArtifactInfo info;
  try {
    const std::string format = manifest.value("format", std::string());
    if (format != quant::kManifestFormat) {
      return bad(absl::StrCat("\"format\" is '", format, "', expected '",
                              AbslView(quant::kManifestFormat), "'"));
    }
    const int version = manifest.value("format_version", 0);
    if (version != quant::kManifestFormatVersion) {
      return absl::UnimplementedError(absl::StrCat(manifest_path, ": format_version ", version,
                                                   " is not supported (this "
                                                   "worker reads version ",
                                                   quant::kManifestFormatVersion, ")"));
    }
    const std::string scheme = manifest.value("scheme", std::string());
    std::optional<quant::QuantScheme> parsed = quant::ParseScheme(scheme);
    if (!parsed.has_value()) {
      return absl::UnimplementedError(absl::StrCat(manifest_path, ": scheme '", scheme,
                                                   "' is not supported (int8, int4, nf4)"));
    }
    info.scheme = *parsed;
    // The quant_method transformers would dispatch on must agree with the manifest.
    const std::string method = qc.value("quant_method", std::string());
    const char* expected = info.scheme == quant::QuantScheme::kInt8   ? "compressed-tensors"
                           : info.scheme == quant::QuantScheme::kInt4 ? "awq"
                                                                      : "bitsandbytes";
    if (method != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat(config_path, ": quantization_config.quant_method is '", method,
                       "' but manifest.json's "
                       "scheme ",
                       scheme, " needs '", expected, "'"));
    }
    if (info.scheme == quant::QuantScheme::kInt4) {
      const nlohmann::json& g = qc["group_size"];
      if (!g.is_number_integer() || g.get<int64_t>() <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            config_path, ": quantization_config.group_size must be a positive integer for int4"));
      }
      info.group_size = g.get<int64_t>();
    }
  } catch (const nlohmann::json::exception& e) {
    return bad(absl::StrCat("malformed: ", e.what()));
  }
  return info;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::FromGguf(
    std::unique_ptr<GgufFile> file) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  w->path_ = file->path();
  w->format_ = WeightFormat::kGguf;
  ASSIGN_OR_RETURN(w->config_, ModelConfigFromGguf(*file));
  w->gguf_ = std::move(file);
  for (const TensorView& tensor : w->gguf_->tensors()) {
    RETURN_IF_ERROR(w->AddGgufTensor(tensor));
  }
  RETURN_IF_ERROR(w->Validate());
  return w;
}

absl::Status ModelWeights::AddGgufTensor(const TensorView& tensor) {
  absl::string_view name = tensor.name;
  int64_t layer;
  absl::string_view rest;
  absl::string_view base = name;
  if (absl::ConsumeSuffix(&base, ".weight") && SplitBlock(base, &layer, &rest)) {
    if (const char* w = StackedExpertWeight(rest); w != nullptr) {
      // [experts, rows, cols]: one zero-copy 2-D view per expert.
      if (tensor.shape.size() != 3) {
        return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", name, "' has shape ",
                                                       ShapeString(tensor.shape),
                                                       ", expected 3-D [experts, rows, columns]"));
      }
      const int64_t experts = tensor.shape[0], rows = tensor.shape[1], cols = tensor.shape[2];
      const std::optional<size_t> row_bytes =
          BytesForElements(tensor.dtype, static_cast<uint64_t>(cols));
      if (!row_bytes) {
        return absl::InvalidArgumentError(
            absl::StrCat(path_, ": tensor '", name, "': rows are not whole blocks"));
      }
      const size_t expert_bytes = *row_bytes * static_cast<size_t>(rows);
      for (int64_t e = 0; e < experts; ++e) {
        TensorView view;
        view.dtype = tensor.dtype;
        view.shape = {rows, cols};
        view.data = tensor.data + static_cast<size_t>(e) * expert_bytes;
        view.row_stride = *row_bytes;
        RETURN_IF_ERROR(Add(absl::StrCat("model.layers.", layer, ".block_sparse_moe.experts.", e,
                                         ".", w, ".weight"),
                            std::move(view), absl::StrCat(name, "[", e, "]"), 0));
      }
      return absl::OkStatus();
    }
  }
  std::string hf = HfNameForGgufTensor(name);
  if (hf.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": tensor '", name, "' has no Hugging Face equivalent (not a llama tensor name)"));
  }
  int64_t qk_heads = 0;
  if (absl::EndsWith(hf, ".self_attn.q_proj.weight") ||
      absl::EndsWith(hf, ".self_attn.q_proj.bias")) {
    qk_heads = config_.num_attention_heads;
  } else if (absl::EndsWith(hf, ".self_attn.k_proj.weight") ||
             absl::EndsWith(hf, ".self_attn.k_proj.bias")) {
    qk_heads = config_.num_key_value_heads;
  }
  return Add(std::move(hf), tensor, std::string(name), qk_heads);
}

absl::Status ModelWeights::Add(std::string hf_name, TensorView view, std::string source,
                               int64_t qk_heads) {
  if (auto it = tensors_.find(hf_name); it != tensors_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensors '", it->second.source,
                                                   "' and '", source, "' both map to '", hf_name,
                                                   "'"));
  }
  view.name = hf_name;
  Entry entry{std::move(view), std::move(source), qk_heads};
  tensors_.emplace(std::move(hf_name), std::move(entry));
  return absl::OkStatus();
}

absl::Status ModelWeights::Validate() const {
  const std::map<std::string, std::vector<int64_t>> expected = ExpectedTensorShapes(config_);
  auto describe = [](const Entry& e) {
    return e.source == e.view.name
               ? absl::StrCat("tensor '", e.view.name, "'")
               : absl::StrCat("tensor '", e.view.name, "' (stored as '", e.source, "')");
  };
  for (const auto& [name, shape] : expected) {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat(path_, ": missing tensor '", name,
                                              "' (expected shape ", ShapeString(shape), ")"));
    }
    if (it->second.view.shape != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": ", describe(it->second), " has shape ",
                       ShapeString(it->second.view.shape), ", expected ", ShapeString(shape)));
    }
  }
  for (const auto& [name, entry] : tensors_) {
    if (expected.count(name) == 0 &&
        !(format_ == WeightFormat::kGguf && name == "rope_freqs.weight")) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": unexpected ", describe(entry), " with shape ", ShapeString(entry.view.shape),
          " (not part of a ", config_.model_type, " model with this config)"));
    }
    if (!CanDequantize(entry.view.dtype)) {
      return absl::UnimplementedError(absl::StrCat(path_, ": ", describe(entry), " has type ",
                                                   AbslView(DTypeName(entry.view.dtype)),
                                                   ", which cannot be converted to float"));
    }
  }
  return absl::OkStatus();
}

std::vector<std::string> ModelWeights::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) names.push_back(name);
  return names;
}

bool ModelWeights::Has(absl::string_view name) const {
  return tensors_.find(name) != tensors_.end();
}

absl::StatusOr<const ModelWeights::Entry*> ModelWeights::Lookup(absl::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor '", name, "'"));
  }
  return &it->second;
}

absl::StatusOr<TensorView> ModelWeights::View(absl::string_view name) const {
  ASSIGN_OR_RETURN(const Entry* entry, Lookup(name));
  return entry->view;
}

absl::StatusOr<std::vector<float>> ModelWeights::DequantizeF32(absl::string_view name) const {
  ASSIGN_OR_RETURN(const Entry* entry, Lookup(name));
  absl::StatusOr<std::vector<float>> values = DequantizeToF32(entry->view);
  if (!values.ok()) {
    return absl::Status(values.status().code(),
                        absl::StrCat(path_, ": ", values.status().message()));
  }
  if (entry->qk_heads <= 0) return values;

  // Undo llama.cpp's permutation: GGUF row h*d + 2*i + j holds HF row h*d + j*(d/2) + i.
  const int64_t rows = entry->view.shape.empty() ? 1 : entry->view.shape[0];
  const int64_t heads = entry->qk_heads;
  if (rows % heads != 0 || (rows / heads) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor '", name, "': ", rows,
                                                   " rows do not split into ", heads,
                                                   " heads of even size"));
  }
  const int64_t head_dim = rows / heads;
  const int64_t half = head_dim / 2;
  const size_t cols = values->size() / static_cast<size_t>(rows);
  std::vector<float> hf(values->size());
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t src = h * head_dim + 2 * i + j;
        const int64_t dst = h * head_dim + j * half + i;
        std::memcpy(&hf[static_cast<size_t>(dst) * cols],
                    &(*values)[static_cast<size_t>(src) * cols], cols * sizeof(float));
      }
    }
  }
  return hf;
}

}  // namespace shardserve
