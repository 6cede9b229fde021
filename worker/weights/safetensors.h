// Reading safetensors checkpoints: one mmap'd `.safetensors` file, or a sharded checkpoint with
// `model.safetensors.index.json`. Tensors are zero-copy TensorViews into the mappings.
//
// Every header is validated before any view is handed out (see SafetensorsFile::FromBytes);
// malformed input is an INVALID_ARGUMENT status naming the file, the tensor and the problem,
// never a crash or a read past the mapping. Views are NOT aligned to their element size in
// general (a header of N bytes puts the data at offset 8 + N): read elements with memcpy or
// check alignment before casting.
//
// Objects are immutable after Open and may be read from any thread.
#ifndef SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_H_
#define SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mapped_file.h"
#include "worker/weights/tensor.h"

namespace shardserve {

// Headers longer than this are refused (the reference reader's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// One .safetensors file, mmap'd; views point into the mapping and live as long as this object.
class SafetensorsFile {
 public:
  // Maps and validates the file at `path`. Errors: NOT_FOUND / PERMISSION_DENIED from opening,
  // INVALID_ARGUMENT for any malformed header or layout.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  // Parses bytes already in memory (tests, fuzzing); they must outlive the object. `what` names
  // it in errors.
  //
  // Checks, each an INVALID_ARGUMENT naming `what` (and the tensor where there is one): at least
  // 8 bytes; header length N <= kMaxSafetensorsHeaderBytes and 8 + N <= size; the header is
  // UTF-8, a JSON object with no duplicate keys; "__metadata__" is null or an object of strings;
  // every other entry is an object with "dtype" (a known safetensors dtype string), "shape" (an
  // array of non-negative integers whose product does not overflow) and "data_offsets" (two
  // non-negative integers, begin <= end <= buffer size, end - begin == numel * element size);
  // the tensors tile the data buffer exactly: sorted by offset they start at 0, touch without
  // gaps or overlaps and end at the end of the file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(std::span<const uint8_t> bytes,
                                                                    absl::string_view what);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The path given to Open, or `what` given to FromBytes.
  const std::string& path() const { return path_; }
  // All tensors, sorted by data offset (ties, i.e. empty tensors, by name). Contiguous views.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorView* Find(absl::string_view name) const;
  // The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  std::optional<MappedFile> mapping_;  // Set by Open; FromBytes borrows the caller's bytes.
  std::vector<TensorView> tensors_;
  absl::flat_hash_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: a directory with model.safetensors, or with model.safetensors.index.json +
// shards, or a path to one .safetensors file or to an index json. A directory holding both a
// model.safetensors and an index uses model.safetensors (as transformers does).
//
// Index rules: the index must be a JSON object with a "weight_map" object of tensor name ->
// shard file name (a relative path without ".." components, resolved against the index's
// directory). Every shard listed is opened and validated; a missing shard is the open error
// (NOT_FOUND) naming the index, the shard and a tensor mapped to it; a tensor listed for a shard
// that lacks it is INVALID_ARGUMENT. The index is authoritative: tensors present in a shard but
// not listed in the weight_map are ignored (not returned by TensorNames or Get).
class SafetensorsCheckpoint {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& path);

  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  // The path given to Open.
  const std::string& path() const { return path_; }
  // Sorted.
  std::vector<std::string> TensorNames() const;
  // NOT_FOUND naming the tensor and the checkpoint when absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;
  // The opened files (one, or the shards sorted by file name).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  SafetensorsCheckpoint() = default;

  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*, std::less<>> tensors_;  // into files_
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_H_
