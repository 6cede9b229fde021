// Test helpers (header-only): a tiny random Llama, its hub_sync-style artifacts written with
// quant_formats' quantizers and the streaming safetensors writer (what QuantizeSnapshot writes:
// quantized linears, everything else BF16, config.json with quantization_config, manifest.json
// last), the same model dequantized with quant_formats' Dequantize* as an F32 HF directory, and
// quantized linear views over in-memory tensors.
#ifndef SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_TEST_UTIL_H_
#define SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_TEST_UTIL_H_

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/weights/dequantize.h"
#include "worker/weights/quant_formats.h"
#include "worker/weights/quantized_linear.h"
#include "worker/weights/safetensors_writer.h"

namespace shardserve::testing {

struct FloatTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
};
using FloatModel = std::map<std::string, FloatTensor>;

// hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 KV heads, vocab 96, an untied LM head
// (with tied random embeddings greedy decoding just repeats the last token).
inline nlohmann::json TinyLlamaConfig() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"vocab_size", 96},
          {"hidden_size", 64},
          {"intermediate_size", 128},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"max_position_embeddings", 256},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "float32"}};
}

// Random weights for TinyLlamaConfig(): linears ~ N(0, 0.08), embeddings and LM head ~ N(0, 1),
// norms ~ 1.
inline FloatModel RandomTinyLlama(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  FloatModel m;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float mean) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    FloatTensor t{std::move(shape), std::vector<float>(static_cast<size_t>(n))};
    for (float& v : t.values) v = mean + scale * normal(rng);
    m[name] = std::move(t);
  };
  add("model.embed_tokens.weight", {96, 64}, 1.0f, 0.0f);
  add("model.norm.weight", {64}, 0.1f, 1.0f);
  add("lm_head.weight", {96, 64}, 1.0f, 0.0f);
  for (int l = 0; l < 2; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {64}, 0.1f, 1.0f);
    add(p + "post_attention_layernorm.weight", {64}, 0.1f, 1.0f);
    add(p + "self_attn.q_proj.weight", {64, 64}, 0.08f, 0.0f);
    add(p + "self_attn.k_proj.weight", {32, 64}, 0.08f, 0.0f);
    add(p + "self_attn.v_proj.weight", {32, 64}, 0.08f, 0.0f);
    add(p + "self_attn.o_proj.weight", {64, 64}, 0.08f, 0.0f);
    add(p + "mlp.gate_proj.weight", {128, 64}, 0.08f, 0.0f);
    add(p + "mlp.up_proj.weight", {128, 64}, 0.08f, 0.0f);
    add(p + "mlp.down_proj.weight", {64, 128}, 0.08f, 0.0f);
  }
  return m;
}

// quant_formats' reference dequantization of one quantized linear [out, in].
inline absl::StatusOr<std::vector<float>> ReferenceDequantize(quant::QuantScheme scheme,
                                                              const quant::QuantizedTensors& q,
                                                              int64_t out, int64_t in,
                                                              const quant::QuantParams& params) {
  auto bytes = [&](std::string_view suffix) -> std::span<const uint8_t> {
    for (size_t i = 0; i < q.specs.size(); ++i) {
      if (q.specs[i].name.ends_with(suffix)) return q.data[i];
    }
    return {};
  };
  std::vector<float> w(static_cast<size_t>(out * in));
  switch (scheme) {
    case quant::QuantScheme::kInt8:
      RETURN_IF_ERROR(quant::DequantizeInt8(bytes(quant::kInt8WeightSuffix),
                                            bytes(quant::kInt8ScaleSuffix), out, in, w));
      break;
    case quant::QuantScheme::kInt4:
      RETURN_IF_ERROR(
          quant::DequantizeInt4Awq(bytes(quant::kAwqQweightSuffix), bytes(quant::kAwqQzerosSuffix),
                                   bytes(quant::kAwqScalesSuffix), out, in, params.group_size, w));
      break;
    case quant::QuantScheme::kNf4: {
      const int64_t blocks = quant::Nf4Blocks(out * in);
      std::vector<float> absmax(static_cast<size_t>(blocks));
      if (params.double_quant) {
        std::span<const uint8_t> state = bytes(quant::kNf4QuantStateSuffix);
        ASSIGN_OR_RETURN(quant::Nf4QuantState st, quant::ParseNf4QuantState(state));
        RETURN_IF_ERROR(quant::ResolveNf4Absmax(
            bytes(quant::kNf4AbsmaxSuffix), bytes(quant::kNf4NestedAbsmaxSuffix),
            bytes(quant::kNf4NestedQuantMapSuffix), st.nested_offset, absmax));
      } else {
        ASSIGN_OR_RETURN(absmax, quant::ReadF32Array(bytes(quant::kNf4AbsmaxSuffix),
                                                     static_cast<size_t>(blocks)));
      }
      ASSIGN_OR_RETURN(std::vector<float> map,
                       quant::ReadF32Array(bytes(quant::kNf4QuantMapSuffix), 16));
      RETURN_IF_ERROR(
          quant::DequantizeNf4(bytes(quant::kNf4WeightSuffix), absmax, map, out * in, w));
      break;
    }
  }
  return w;
}

// Plain TensorViews of in-memory stored tensors (the specs and bytes of QuantizedTensors).
class StoredViews {
 public:
  StoredViews(const std::vector<TensorSpec>& specs, const std::vector<std::vector<uint8_t>>& data) {
    for (size_t i = 0; i < specs.size(); ++i) {
      TensorView v;
      v.name = specs[i].name;
      v.dtype = specs[i].dtype;
      v.shape = specs[i].shape;
      v.data = data[i].data();
      v.row_stride = v.RowBytes();
      views_[v.name] = v;
    }
  }
  StoredTensorLookup Lookup() const {
    return [this](absl::string_view name) -> const TensorView* {
      auto it = views_.find(std::string(name));
      return it == views_.end() ? nullptr : &it->second;
    };
  }

 private:
  std::map<std::string, TensorView> views_;
};

struct StoredTensor {
  TensorSpec spec;
  std::vector<uint8_t> bytes;
};

inline std::vector<uint8_t> Bf16Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(2 * v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t b = F32ToBF16(v[i]);
    out[2 * i] = static_cast<uint8_t>(b & 0xFF);
    out[2 * i + 1] = static_cast<uint8_t>(b >> 8);
  }
  return out;
}

inline std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(4 * v.size());
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// The tensors of `model`'s artifact for `scheme` (quantizable linears quantized, the rest BF16)
// and, in `dequantized`, the values a reader must see: Dequantize* of the linears, the BF16
// values of the rest.
inline absl::Status BuildArtifactTensors(const FloatModel& model, quant::QuantScheme scheme,
                                         const quant::QuantParams& params,
                                         std::vector<StoredTensor>* stored,
                                         FloatModel* dequantized) {
  for (const auto& [name, t] : model) {
    if (t.shape.size() == 2 && quant::IsQuantizableLinearName(name)) {
      const std::string prefix = *quant::LinearPrefix(name);
      ASSIGN_OR_RETURN(
          quant::QuantizedTensors q,
          quant::QuantizeLinear(scheme, prefix, t.values, t.shape[0], t.shape[1], params));
      ASSIGN_OR_RETURN(std::vector<float> w,
                       ReferenceDequantize(scheme, q, t.shape[0], t.shape[1], params));
      (*dequantized)[name] = FloatTensor{t.shape, std::move(w)};
      for (size_t i = 0; i < q.specs.size(); ++i) {
        stored->push_back(StoredTensor{q.specs[i], std::move(q.data[i])});
      }
    } else {
      std::vector<float> rounded(t.values.size());
      for (size_t i = 0; i < rounded.size(); ++i) rounded[i] = BF16ToF32(F32ToBF16(t.values[i]));
      (*dequantized)[name] = FloatTensor{t.shape, rounded};
      stored->push_back(StoredTensor{TensorSpec{name, DType::kBF16, t.shape}, Bf16Bytes(t.values)});
    }
  }
  return absl::OkStatus();
}

inline absl::Status WriteSafetensors(const std::string& path,
                                     const std::vector<StoredTensor>& tensors) {
  std::vector<TensorSpec> specs;
  for (const StoredTensor& t : tensors) specs.push_back(t.spec);
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                   SafetensorsWriter::Create(path, specs, {{"format", "pt"}}));
  for (const StoredTensor& t : tensors) RETURN_IF_ERROR(writer->Write(t.spec.name, t.bytes));
  return writer->Finish();
}

inline absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// An F32 HF directory holding `model`.
inline absl::Status WriteF32Model(const std::string& dir, const nlohmann::json& config,
                                  const FloatModel& model) {
  std::filesystem::create_directories(dir);
  std::vector<StoredTensor> tensors;
  for (const auto& [name, t] : model) {
    tensors.push_back(StoredTensor{TensorSpec{name, DType::kF32, t.shape}, F32Bytes(t.values)});
  }
  RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors));
  return WriteText(dir + "/config.json", config.dump(2));
}

// An artifact directory: model.safetensors, config.json with quantization_config, and (unless
// `manifest` is null) manifest.json, written last.
inline absl::Status WriteArtifact(const std::string& dir, nlohmann::json config,
                                  quant::QuantScheme scheme, const quant::QuantParams& params,
                                  const std::vector<StoredTensor>& tensors,
                                  const nlohmann::json& manifest) {
  std::filesystem::create_directories(dir);
  RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", tensors));
  config["quantization_config"] = quant::QuantizationConfig(scheme, params, {"lm_head"});
  config["torch_dtype"] = "bfloat16";
  RETURN_IF_ERROR(WriteText(dir + "/config.json", config.dump(2)));
  if (manifest.is_null()) return absl::OkStatus();
  return WriteText(dir + "/manifest.json", manifest.dump(2));
}

// The manifest fields a reader checks.
inline nlohmann::json MinimalManifest(quant::QuantScheme scheme, const quant::QuantParams& params) {
  nlohmann::json m = {{"format", std::string(quant::kManifestFormat)},
                      {"format_version", quant::kManifestFormatVersion},
                      {"scheme", std::string(quant::SchemeName(scheme))}};
  if (scheme == quant::QuantScheme::kInt4) m["group_size"] = params.group_size;
  return m;
}

// A fresh directory under $TEST_TMPDIR (else /tmp), named after `name` and this process.
inline std::string FreshTempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  const std::string dir = std::string(base != nullptr ? base : "/tmp") + "/shardserve_" +
                          std::to_string(::getpid()) + "_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace shardserve::testing

#endif  // SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_TEST_UTIL_H_
