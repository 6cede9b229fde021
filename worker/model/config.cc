#include "worker/model/config.h"

#include <cmath>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/status_macros.h"

namespace shardserve {
namespace {

using nlohmann::json;

// Upper bounds on sizes, far above any released model, so that products of sizes (parameter
// counts, byte sizes) cannot overflow int64 and a hostile config cannot ask for a huge tensor
// list.
constexpr int64_t kMaxVocab = int64_t{1} << 24;
constexpr int64_t kMaxHidden = int64_t{1} << 17;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 1024;
constexpr int64_t kMaxPositions = int64_t{1} << 27;
constexpr int64_t kMaxExperts = 1024;

// Typed access to the fields of one JSON object; errors name the document and the field.
class Fields {
 public:
  Fields(const json& object, absl::string_view what, std::string prefix = "")
      : object_(object), what_(what), prefix_(std::move(prefix)) {}

  absl::Status Error(absl::string_view field, absl::string_view problem) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": field '", prefix_, field, "': ", problem));
  }

  // The value, or nullptr when absent or JSON null.
  const json* Find(absl::string_view field) const {
    auto it = object_.find(std::string(field));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(absl::string_view field) const {
    return object_.find(std::string(field)) != object_.end();
  }

  absl::StatusOr<std::optional<int64_t>> OptionalInt(absl::string_view field) const {
    const json* v = Find(field);
    if (v == nullptr) return std::nullopt;
    if (v->is_number_unsigned()) {
      if (v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return Error(field, absl::StrCat("integer ", Describe(*v), " is out of range"));
      }
      return static_cast<int64_t>(v->get<uint64_t>());
    }
    if (v->is_number_integer()) return v->get<int64_t>();
    return Error(field, absl::StrCat("expected an integer, got ", Describe(*v)));
  }
  absl::StatusOr<int64_t> Int(absl::string_view field) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> v, OptionalInt(field));
    if (!v) return Missing(field);
    return *v;
  }
  absl::StatusOr<int64_t> Int(absl::string_view field, int64_t fallback) const {
    ASSIGN_OR_RETURN(std::optional<int64_t> v, OptionalInt(field));
    return v.value_or(fallback);
  }

  absl::StatusOr<std::optional<double>> OptionalDouble(absl::string_view field) const {
    const json* v = Find(field);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) return Error(field, absl::StrCat("expected a number, got ", Describe(*v)));
    return v->get<double>();
  }
  absl::StatusOr<double> Double(absl::string_view field) const {
    ASSIGN_OR_RETURN(std::optional<double> v, OptionalDouble(field));
    if (!v) return Missing(field);
    return *v;
  }
  absl::StatusOr<double> Double(absl::string_view field, double fallback) const {
    ASSIGN_OR_RETURN(std::optional<double> v, OptionalDouble(field));
    return v.value_or(fallback);
  }

  absl::StatusOr<bool> Bool(absl::string_view field, bool fallback) const {
    const json* v = Find(field);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) {
      return Error(field, absl::StrCat("expected true or false, got ", Describe(*v)));
    }
    return v->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> OptionalString(absl::string_view field) const {
    const json* v = Find(field);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) return Error(field, absl::StrCat("expected a string, got ", Describe(*v)));
    return v->get<std::string>();
  }

  absl::Status Missing(absl::string_view field) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": missing required field '", prefix_, field, "'"));
  }

  // A short rendering of a value for messages.
  static std::string Describe(const json& v) {
    std::string text = DumpJson(v);
    if (text.size() > 40) text = text.substr(0, 40) + "...";
    return absl::StrCat(v.type_name(), " ", text);
  }

 private:
  const json& object_;
  absl::string_view what_;
  std::string prefix_;
};

std::optional<Architecture> ArchitectureFromModelType(absl::string_view model_type) {
  if (model_type == "llama") return Architecture::kLlama;
  if (model_type == "mistral") return Architecture::kMistral;
  if (model_type == "mixtral") return Architecture::kMixtral;
  return std::nullopt;
}

std::optional<Architecture> ArchitectureFromClass(absl::string_view name) {
  if (name == "LlamaForCausalLM") return Architecture::kLlama;
  if (name == "MistralForCausalLM") return Architecture::kMistral;
  if (name == "MixtralForCausalLM") return Architecture::kMixtral;
  return std::nullopt;
}

// `object` is config.json's "rope_scaling" (or transformers 5's "rope_parameters"), named
// `field` in errors.
absl::StatusOr<RopeScaling> ParseRopeScaling(const json& object, absl::string_view field,
                                             absl::string_view what) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": field '", field, "': expected an object or null, got ", Fields::Describe(object)));
  }
  Fields f(object, what, absl::StrCat(field, "."));
  RopeScaling rope;
  ASSIGN_OR_RETURN(std::optional<std::string> type, f.OptionalString("rope_type"));
  const char* type_field = "rope_type";
  if (!type) {
    ASSIGN_OR_RETURN(type, f.OptionalString("type"));
    type_field = "type";
  }
  if (!type) return f.Missing("rope_type");
  if (*type == "default") return rope;  // No scaling.
  if (*type != "llama3" && *type != "linear" && *type != "dynamic") {
    return f.Error(type_field, absl::StrCat("unsupported RoPE scaling '", *type,
                                            "' (supported: llama3, linear, dynamic, default)"));
  }
  rope.type = *type;
  ASSIGN_OR_RETURN(rope.factor, f.Double("factor"));
  if (rope.type == "llama3") {
    ASSIGN_OR_RETURN(rope.low_freq_factor, f.Double("low_freq_factor"));
    ASSIGN_OR_RETURN(rope.high_freq_factor, f.Double("high_freq_factor"));
    ASSIGN_OR_RETURN(rope.original_max_position_embeddings,
                     f.Int("original_max_position_embeddings"));
  } else {
    ASSIGN_OR_RETURN(rope.original_max_position_embeddings,
                     f.Int("original_max_position_embeddings", 0));
  }
  return rope;
}

absl::Status PositiveAtMost(int64_t value, int64_t max, absl::string_view field,
                            absl::string_view what) {
  if (value <= 0 || value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field '", field, "': ", value, " is not in [1, ", max, "]"));
  }
  return absl::OkStatus();
}

absl::Status PositiveFinite(double value, absl::string_view field, absl::string_view what) {
  if (!(value > 0) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field '", field, "': ", value, " is not a positive finite number"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kLlama:
      return "llama";
    case Architecture::kMistral:
      return "mistral";
    case Architecture::kMixtral:
      return "mixtral";
  }
  return "unknown";
}

absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& doc, absl::string_view what) {
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": config is a JSON ", doc.type_name(), ", not an object"));
  }
  Fields f(doc, what);
  ModelConfig c;

  // Architecture: model_type decides; architectures, when present, must name a supported
  // *ForCausalLM class (a ...ForSequenceClassification checkpoint has no lm_head).
  ASSIGN_OR_RETURN(std::optional<std::string> model_type, f.OptionalString("model_type"));
  std::optional<Architecture> from_class;
  if (const json* archs = f.Find("architectures")) {
    if (!archs->is_array()) {
      return f.Error("architectures",
                     absl::StrCat("expected an array of strings, got ", Fields::Describe(*archs)));
    }
    for (const auto& a : *archs) {
      if (!a.is_string()) {
        return f.Error("architectures", absl::StrCat("expected an array of strings, got element ",
                                                     Fields::Describe(a)));
      }
    }
    if (!archs->empty()) {
      const std::string& name = (*archs)[0].get_ref<const std::string&>();
      from_class = ArchitectureFromClass(name);
      if (!from_class) {
        return f.Error("architectures",
                       absl::StrCat("unsupported architecture '", name,
                                    "' (supported: LlamaForCausalLM, MistralForCausalLM, "
                                    "MixtralForCausalLM)"));
      }
    }
  }
  if (model_type) {
    std::optional<Architecture> arch = ArchitectureFromModelType(*model_type);
    if (!arch) {
      return f.Error("model_type", absl::StrCat("unsupported model type '", *model_type,
                                                "' (supported: llama, mistral, mixtral)"));
    }
    c.architecture = *arch;
    c.model_type = *model_type;
  } else if (from_class) {
    c.architecture = *from_class;
    c.model_type = std::string(ArchitectureName(*from_class));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": missing required field 'model_type' (and no 'architectures')"));
  }
  const bool mixtral = c.architecture == Architecture::kMixtral;

  ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, f.Int("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, f.Int("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_hidden_layers, f.Int("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_attention_heads, f.Int("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_key_value_heads, f.Int("num_key_value_heads", c.num_attention_heads));
  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, f.OptionalInt("head_dim"));
  if (head_dim) {
    c.head_dim = *head_dim;
  } else if (c.num_attention_heads > 0) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return f.Error("hidden_size",
                     absl::StrCat(c.hidden_size, " is not divisible by num_attention_heads ",
                                  c.num_attention_heads, " (and no head_dim is given)"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  ASSIGN_OR_RETURN(c.max_position_embeddings, f.Int("max_position_embeddings"));

  // Defaults below are transformers' for each architecture.
  ASSIGN_OR_RETURN(c.rms_norm_eps, f.Double("rms_norm_eps", mixtral ? 1e-5 : 1e-6));
  const json* rope_parameters = f.Find("rope_parameters");  // transformers >= 5
  double default_theta = mixtral ? 1e6 : 10000.0;
  if (rope_parameters != nullptr && rope_parameters->is_object() && !f.Find("rope_theta")) {
    ASSIGN_OR_RETURN(
        default_theta,
        Fields(*rope_parameters, what, "rope_parameters.").Double("rope_theta", default_theta));
  }
  ASSIGN_OR_RETURN(c.rope_theta, f.Double("rope_theta", default_theta));
  if (const json* rope = f.Find("rope_scaling")) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*rope, "rope_scaling", what));
  } else if (rope_parameters != nullptr) {
    ASSIGN_OR_RETURN(c.rope_scaling, ParseRopeScaling(*rope_parameters, "rope_parameters", what));
  }

  ASSIGN_OR_RETURN(c.tie_word_embeddings, f.Bool("tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c.attention_bias, f.Bool("attention_bias", false));
  ASSIGN_OR_RETURN(c.mlp_bias, f.Bool("mlp_bias", false));

  if (c.architecture != Architecture::kLlama) {
    // Mistral's default is 4096 (v0.1); null (v0.2+, Mixtral) means full attention.
    if (f.Has("sliding_window")) {
      ASSIGN_OR_RETURN(c.sliding_window, f.Int("sliding_window", 0));
    } else {
      c.sliding_window = c.architecture == Architecture::kMistral ? 4096 : 0;
    }
  }
  if (mixtral) {
    ASSIGN_OR_RETURN(c.num_local_experts, f.Int("num_local_experts"));
    ASSIGN_OR_RETURN(c.num_experts_per_tok, f.Int("num_experts_per_tok"));
  }

  ASSIGN_OR_RETURN(std::optional<std::string> hidden_act, f.OptionalString("hidden_act"));
  if (hidden_act && *hidden_act != "silu" && *hidden_act != "swish") {
    return f.Error("hidden_act",
                   absl::StrCat("unsupported activation '", *hidden_act, "' (supported: silu)"));
  }
  ASSIGN_OR_RETURN(std::optional<std::string> torch_dtype, f.OptionalString("torch_dtype"));
  if (!torch_dtype) {
    ASSIGN_OR_RETURN(torch_dtype, f.OptionalString("dtype"));  // transformers >= 5
  }
  c.torch_dtype = torch_dtype.value_or("");

  ASSIGN_OR_RETURN(c.bos_token_id, f.Int("bos_token_id", -1));
  if (const json* eos = f.Find("eos_token_id")) {
    if (eos->is_array()) {
      for (const json& id : *eos) {
        if (!id.is_number_integer()) {
          return f.Error("eos_token_id", absl::StrCat("expected an integer or a list of "
                                                      "integers, got element ",
                                                      Fields::Describe(id)));
        }
        if (id.is_number_unsigned() && id.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
          return f.Error("eos_token_id", absl::StrCat(Fields::Describe(id), " is out of range"));
        }
        c.eos_token_ids.push_back(id.get<int64_t>());
      }
    } else {
      ASSIGN_OR_RETURN(int64_t id, f.Int("eos_token_id"));
      c.eos_token_ids.push_back(id);
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path) {
  ASSIGN_OR_RETURN(nlohmann::json doc, ParseJsonFile(path));
  ASSIGN_OR_RETURN(ModelConfig config, ParseHfConfig(doc, path));
  RETURN_IF_ERROR(ValidateConfig(config, path));
  return config;
}

absl::Status ValidateConfig(const ModelConfig& c, absl::string_view what) {
  RETURN_IF_ERROR(PositiveAtMost(c.vocab_size, kMaxVocab, "vocab_size", what));
  RETURN_IF_ERROR(PositiveAtMost(c.hidden_size, kMaxHidden, "hidden_size", what));
  RETURN_IF_ERROR(PositiveAtMost(c.intermediate_size, kMaxIntermediate, "intermediate_size", what));
  RETURN_IF_ERROR(PositiveAtMost(c.num_hidden_layers, kMaxLayers, "num_hidden_layers", what));
  RETURN_IF_ERROR(PositiveAtMost(c.num_attention_heads, kMaxHeads, "num_attention_heads", what));
  RETURN_IF_ERROR(
      PositiveAtMost(c.num_key_value_heads, c.num_attention_heads, "num_key_value_heads", what));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field 'num_key_value_heads': ", c.num_key_value_heads,
                     " does not divide num_attention_heads ", c.num_attention_heads));
  }
  RETURN_IF_ERROR(PositiveAtMost(c.head_dim, kMaxHeadDim, "head_dim", what));
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field 'head_dim': ", c.head_dim, " is odd (RoPE rotates pairs)"));
  }
  RETURN_IF_ERROR(
      PositiveAtMost(c.max_position_embeddings, kMaxPositions, "max_position_embeddings", what));
  RETURN_IF_ERROR(PositiveFinite(c.rms_norm_eps, "rms_norm_eps", what));
  RETURN_IF_ERROR(PositiveFinite(c.rope_theta, "rope_theta", what));

  const RopeScaling& rope = c.rope_scaling;
  if (!rope.type.empty()) {
    if (rope.type != "llama3" && rope.type != "linear" && rope.type != "dynamic") {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": field 'rope_scaling.rope_type': unsupported RoPE scaling '", rope.type, "'"));
    }
    RETURN_IF_ERROR(PositiveFinite(rope.factor, "rope_scaling.factor", what));
    if (rope.type == "llama3") {
      RETURN_IF_ERROR(PositiveFinite(rope.low_freq_factor, "rope_scaling.low_freq_factor", what));
      RETURN_IF_ERROR(PositiveFinite(rope.high_freq_factor, "rope_scaling.high_freq_factor", what));
      if (!(rope.high_freq_factor > rope.low_freq_factor)) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": field 'rope_scaling.high_freq_factor': ", rope.high_freq_factor,
                         " must exceed low_freq_factor ", rope.low_freq_factor));
      }
      RETURN_IF_ERROR(PositiveAtMost(rope.original_max_position_embeddings, kMaxPositions,
                                     "rope_scaling.original_max_position_embeddings", what));
    }
  }
  if (c.sliding_window < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field 'sliding_window': ", c.sliding_window, " is negative"));
  }

  if (c.architecture == Architecture::kMixtral) {
    RETURN_IF_ERROR(PositiveAtMost(c.num_local_experts, kMaxExperts, "num_local_experts", what));
    RETURN_IF_ERROR(
        PositiveAtMost(c.num_experts_per_tok, c.num_local_experts, "num_experts_per_tok", what));
  } else if (c.num_local_experts != 0 || c.num_experts_per_tok != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": field 'num_local_experts': a dense ",
                     absl::string_view(ArchitectureName(c.architecture).data(),
                                       ArchitectureName(c.architecture).size()),
                     " model has no experts (got ", c.num_local_experts, ")"));
  }

  if (c.bos_token_id < -1 || c.bos_token_id >= c.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": field 'bos_token_id': ", c.bos_token_id,
                                                   " is outside the vocabulary [0, ", c.vocab_size,
                                                   ")"));
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": field 'eos_token_id': ", id,
                                                     " is outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> shapes;
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = c.num_attention_heads * c.head_dim;
  const int64_t kv_dim = c.num_key_value_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;

  shapes["model.embed_tokens.weight"] = {c.vocab_size, hidden};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string layer = absl::StrCat("model.layers.", i, ".");
    shapes[layer + "input_layernorm.weight"] = {hidden};
    shapes[layer + "post_attention_layernorm.weight"] = {hidden};
    shapes[layer + "self_attn.q_proj.weight"] = {q_dim, hidden};
    shapes[layer + "self_attn.k_proj.weight"] = {kv_dim, hidden};
    shapes[layer + "self_attn.v_proj.weight"] = {kv_dim, hidden};
    shapes[layer + "self_attn.o_proj.weight"] = {hidden, q_dim};
    if (c.attention_bias) {
      shapes[layer + "self_attn.q_proj.bias"] = {q_dim};
      shapes[layer + "self_attn.k_proj.bias"] = {kv_dim};
      shapes[layer + "self_attn.v_proj.bias"] = {kv_dim};
      shapes[layer + "self_attn.o_proj.bias"] = {hidden};
    }
    if (c.architecture == Architecture::kMixtral) {
      const std::string moe = layer + "block_sparse_moe.";
      shapes[moe + "gate.weight"] = {c.num_local_experts, hidden};
      for (int64_t e = 0; e < c.num_local_experts; ++e) {
        const std::string expert = absl::StrCat(moe, "experts.", e, ".");
        shapes[expert + "w1.weight"] = {inter, hidden};  // gate
        shapes[expert + "w2.weight"] = {hidden, inter};  // down
        shapes[expert + "w3.weight"] = {inter, hidden};  // up
      }
    } else {
      shapes[layer + "mlp.gate_proj.weight"] = {inter, hidden};
      shapes[layer + "mlp.up_proj.weight"] = {inter, hidden};
      shapes[layer + "mlp.down_proj.weight"] = {hidden, inter};
      if (c.mlp_bias) {
        shapes[layer + "mlp.gate_proj.bias"] = {inter};
        shapes[layer + "mlp.up_proj.bias"] = {inter};
        shapes[layer + "mlp.down_proj.bias"] = {hidden};
      }
    }
  }
  shapes["model.norm.weight"] = {hidden};
  if (!c.tie_word_embeddings) shapes["lm_head.weight"] = {c.vocab_size, hidden};
  return shapes;
}

}  // namespace shardserve
