// One model's weights, addressed by Hugging Face tensor names whatever the source: a GGUF file
// (llama.cpp) or an HF directory (config.json + safetensors, single file or sharded).
//
// Open validates the checkpoint against its config: every tensor ExpectedTensorShapes(config)
// lists must exist with exactly that shape, and no other tensor may be present (HF's rotary
// `inv_freq` buffers, and an `lm_head.weight` next to tied embeddings, are ignored). Every tensor
// must have a type DequantizeRow supports.
//
// GGUF specifics:
//   - Names map as llama.cpp's converter writes them: token_embd -> model.embed_tokens,
//     blk.N.attn_{q,k,v,output} -> model.layers.N.self_attn.{q,k,v,o}_proj, blk.N.ffn_{gate,up,
//     down} -> mlp.{gate,up,down}_proj, attn_norm -> input_layernorm, ffn_norm ->
//     post_attention_layernorm, output_norm -> model.norm, output -> lm_head. Mixtral:
//     blk.N.ffn_gate_inp -> block_sparse_moe.gate, and the stacked blk.N.ffn_{gate,down,up}_exps
//     (or the older per-expert blk.N.ffn_{gate,down,up}.E) -> block_sparse_moe.experts.E.{w1,w2,
//     w3}; a stacked tensor is exposed as one zero-copy view per expert.
//   - llama.cpp permutes the rows of Q and K (per head, pairs (i, i + d/2) become adjacent rows
//     (2i, 2i + 1)). View() returns them as stored and QkRowsInterleaved() is true, so the engine
//     can apply RoPE to adjacent pairs instead of copying; DequantizeF32() undoes the permutation
//     and returns exact HF layout.
//   - `rope_freqs.weight` (Llama-3.1 RoPE frequency factors, no HF equivalent) is exposed under
//     that name when present.
//
// hub_sync artifacts (an HF directory whose config.json has a "quantization_config" and whose
// manifest.json says "format": "shardserve-quantized"; layouts in quant_formats.h): each
// quantized linear layer's stored tensors (int8 P.weight + P.weight_scale; int4 P.qweight,
// P.qzeros, P.scales; nf4 P.weight + P.weight.absmax + ...) are exposed as the one tensor
// "P.weight" [out, in] of dtype kInt8Channel / kAwqInt4 / kNf4 whose TensorView::quant points at
// the companions (zero-copy); everything else as stored. quantization() names the scheme. A
// directory with a quantization_config but no manifest.json is refused (NOT_FOUND: an artifact
// without its manifest is unfinished), as is a manifest for another format or scheme.
//
// Views are zero-copy and valid while this object lives. Immutable after Open; thread-safe.
#ifndef SHARDSERVE_WORKER_WEIGHTS_MODEL_WEIGHTS_H_
#define SHARDSERVE_WORKER_WEIGHTS_MODEL_WEIGHTS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/model/config.h"
#include "worker/weights/gguf.h"
#include "worker/weights/quant_formats.h"
#include "worker/weights/safetensors.h"
#include "worker/weights/tensor.h"

namespace shardserve {

enum class WeightFormat { kGguf, kSafetensors };

class ModelWeights {
 public:
  // `path` is a .gguf file, an HF model directory (config.json + model.safetensors or
  // model.safetensors.index.json + shards) or a hub_sync artifact directory. Errors name the
  // path, the tensor and the problem: NOT_FOUND for a missing file or tensor (or an artifact's
  // manifest.json), INVALID_ARGUMENT for a wrong shape, an unexpected or unmappable tensor, an
  // invalid config or a quantized layer whose tensors do not fit its scheme; UNIMPLEMENTED for a
  // tensor type that cannot be dequantized or an artifact scheme / format version this worker
  // does not read.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Open(const std::string& path);
  // From an already parsed GGUF (e.g. GgufFile::FromBytes); takes ownership.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> FromGguf(std::unique_ptr<GgufFile> file);

  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const std::string& path() const { return path_; }
  const ModelConfig& config() const { return config_; }
  WeightFormat format() const { return format_; }
  // True for GGUF: Q/K rows are stored in llama.cpp's interleaved (adjacent-pair) RoPE order.
  bool QkRowsInterleaved() const { return format_ == WeightFormat::kGguf; }
  // The GGUF file (metadata such as the tokenizer), or nullptr for safetensors.
  const GgufFile* gguf() const { return gguf_.get(); }
  // A hub_sync artifact's scheme ("int8", "int4", "nf4"), or "" for any other checkpoint.
  const std::string& quantization() const { return quantization_; }

  // HF tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  bool Has(absl::string_view name) const;
  // The tensor as stored (GGUF Q/K rows permuted, see above); view.name is the HF name.
  // NOT_FOUND naming the tensor and the path.
  absl::StatusOr<TensorView> View(absl::string_view name) const;
  // The tensor converted to float32 in HF layout (GGUF Q/K permutation undone).
  absl::StatusOr<std::vector<float>> DequantizeF32(absl::string_view name) const;

 private:
  struct Entry {
    TensorView view;       // view.name is the HF name
    std::string source;    // the name in the file (GGUF name, or the HF name)
    int64_t qk_heads = 0;  // > 0: rows are GGUF-permuted in this many heads
  };

  struct ArtifactInfo {
    quant::QuantScheme scheme = quant::QuantScheme::kInt8;
    int64_t group_size = 0;  // int4: config.json's quantization_config.group_size
  };

  ModelWeights() = default;
  // nullopt for a plain HF directory (no quantization_config and no manifest.json).
  static absl::StatusOr<std::optional<ArtifactInfo>> ReadArtifactInfo(
      const std::string& dir, const std::string& config_path);
  absl::Status AddGgufTensor(const TensorView& tensor);
  absl::Status Add(std::string hf_name, TensorView view, std::string source, int64_t qk_heads);
  absl::Status Validate() const;
  absl::StatusOr<const Entry*> Lookup(absl::string_view name) const;

  std::string path_;
  ModelConfig config_;
  WeightFormat format_ = WeightFormat::kSafetensors;
  std::string quantization_;
  std::unique_ptr<GgufFile> gguf_;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint_;
  std::map<std::string, Entry, std::less<>> tensors_;
};

// The HF name of a GGUF tensor that is not a stacked expert tensor ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"), or "" when there is none.
std::string HfNameForGgufTensor(absl::string_view gguf_name);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_MODEL_WEIGHTS_H_
