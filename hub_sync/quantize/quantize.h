// Quantizing a mirrored HF snapshot into a worker-readable artifact, tensor by tensor.
//
// QuantizeSnapshot reads an HF snapshot (config.json + model.safetensors, or
// model.safetensors.index.json + shards; F32 / F16 / BF16 tensors) through mmap'd views and writes
// the artifact directory for one scheme (the formats and tensor names are in
// worker/weights/quant_formats.h):
//   model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json when the
//     output exceeds QuantizeOptions::max_shard_bytes;
//   config.json: the source's, with "quantization_config" and "torch_dtype": "bfloat16";
//   tokenizer.json, tokenizer_config.json, generation_config.json, special_tokens_map.json
//     (copied when present);
//   manifest.json, LAST: {"format": "shardserve-quantized", "format_version": 1, "scheme",
//     "tool": "shardserve hub_sync", "tool_version": "0.1.0", "source": {"repo"?, "commit"?,
//     "files": {name: sha256}}, "group_size" (int4) | "block_size" + "double_quant" (nf4),
//     "kept_bf16": [tensor names], "tensors": {name: {"dtype", "shape", "sha256"}},
//     "files": {output file: sha256}}.
// An artifact without manifest.json does not exist to readers.
//
// Which tensors are quantized: 2-D tensors for which quant::IsQuantizableLinearName holds, plus
// model.embed_tokens.weight / lm_head.weight when the keep_* options are false. Everything else is
// written as BF16 under its own name (F32 / F16 sources rounded to nearest even).
//
// Memory is bounded by the largest tensor (its float32 copy and its packed output), never the
// model. The output is deterministic: the same source and options give byte-identical files.
//
// Atomicity: everything is written into a temporary sibling directory (dest + ".tmp-<pid>-<rand>")
// that is renamed to dest only once complete (a previous dest is moved aside and deleted). On any
// error or cancellation the temporary directory is removed and dest is untouched; a process killed
// midway leaves only a ".tmp-" sibling, never dest. The caller must hold the artifact lock
// (HubCache::LockArtifact) so that one process builds a given dest at a time; under that lock
// stale "<dest>.tmp-*" siblings from killed runs are deleted at the start.
//
// Idempotent: when dest already holds a manifest for the same scheme, parameters, kept set, tool
// version and source file hashes, nothing is rewritten (QuantizeResult::reused).
#ifndef SHARDSERVE_HUB_SYNC_QUANTIZE_QUANTIZE_H_
#define SHARDSERVE_HUB_SYNC_QUANTIZE_QUANTIZE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/weights/quant_formats.h"

namespace shardserve::hub {

inline constexpr absl::string_view kQuantizeToolName = "shardserve hub_sync";
inline constexpr absl::string_view kQuantizeToolVersion = "0.1.0";

struct QuantizeOptions {
  quant::QuantScheme scheme = quant::QuantScheme::kInt4;
  bool keep_embeddings_bf16 = true;  // model.embed_tokens.weight
  bool keep_lm_head_bf16 = true;     // lm_head.weight
  bool keep_norms_bf16 = true;       // norms are 1-D and always kept; false is the same
  bool nf4_double_quant = false;
  // Recorded in manifest "source" when non-empty.
  std::string source_repo;    // "org/name"
  std::string source_commit;  // 40 hex
  // Output files are split into shards of at most this many bytes (a single tensor larger than
  // this gets a shard of its own).
  uint64_t max_shard_bytes = uint64_t{4} << 30;
  // When set and it becomes true, QuantizeSnapshot stops before the next tensor and returns
  // CANCELLED (nothing left behind).
  const std::atomic<bool>* cancel = nullptr;
};

// Called after each output tensor (and once at start with an empty name and 0): bytes of source
// tensors processed so far and in total. Runs on the calling thread.
using QuantizeProgressFn =
    std::function<void(absl::string_view tensor, uint64_t bytes_done, uint64_t bytes_total)>;

struct QuantizeResult {
  bool reused = false;          // dest already held this artifact
  uint64_t source_bytes = 0;    // bytes of source tensors
  uint64_t artifact_bytes = 0;  // bytes of all files written under dest
  int64_t group_size = 0;       // int4: the G chosen; nf4: the block size; int8: 0
  int quantized_tensors = 0;    // linear weights quantized
  int kept_tensors = 0;         // tensors written as BF16
};

// Errors: NOT_FOUND (source_dir without config.json or weights), INVALID_ARGUMENT naming the file
// and tensor (a non-float source tensor, a shape the scheme cannot take, non-finite weights,
// malformed config/safetensors), CANCELLED, INTERNAL naming the path on I/O errors.
absl::StatusOr<QuantizeResult> QuantizeSnapshot(const std::string& source_dir,
                                                const std::string& dest_dir,
                                                const QuantizeOptions& options,
                                                const QuantizeProgressFn& progress = nullptr);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_QUANTIZE_QUANTIZE_H_
