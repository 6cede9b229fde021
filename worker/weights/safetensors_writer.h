// Writing one .safetensors file tensor by tensor, with at most one tensor's bytes in memory.
//
// The file appears under its final name only when complete: Create writes to a temporary sibling
// (final_path + ".tmp-<pid>-<random>"), Finish fsyncs it, renames it into place and fsyncs the
// directory; a writer destroyed without a successful Finish deletes the temporary file. A reader
// never sees a half-written file under the final name.
//
// Layout (see /work/shared/reference/weight-formats.md): u64 little-endian header length N, the
// header JSON padded with spaces to a multiple of 8, then the tensors' bytes back to back in the
// order of the specs (data_offsets follow that order). "__metadata__" is written when the
// metadata map is non-empty (HF writers use {"format": "pt"}). The output is deterministic: the
// same specs, metadata and bytes give the same file.
//
// Not thread-safe; one writer per file.
#ifndef SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_WRITER_H_
#define SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/weights/dtype.h"

namespace shardserve {

// One tensor of a file to write: name, a plain safetensors dtype (not a GGML block type) and its
// shape, outermost dimension first.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  friend bool operator==(const TensorSpec&, const TensorSpec&) = default;
};

// numel * element size of `spec`; INVALID_ARGUMENT (naming the tensor) for a negative dimension,
// a GGML block dtype or an overflow.
absl::StatusOr<uint64_t> TensorSpecBytes(const TensorSpec& spec);

class SafetensorsWriter {
 public:
  // Validates the specs, creates the temporary file and writes the header. INVALID_ARGUMENT for
  // an empty or duplicate name, a name "__metadata__", a bad dtype/shape (TensorSpecBytes) or a
  // header over kMaxSafetensorsHeaderBytes; the open error (naming the path) otherwise. The parent
  // directory of `final_path` must exist.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& final_path, std::vector<TensorSpec> specs,
      const std::map<std::string, std::string>& metadata);

  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  // Deletes the temporary file unless Finish succeeded.
  ~SafetensorsWriter();

  // Appends the bytes of the next tensor. `name` must be the next spec's name and `bytes` exactly
  // its TensorSpecBytes (little-endian, row-major); INVALID_ARGUMENT naming the tensor otherwise
  // (the writer stays usable). I/O errors are INTERNAL naming the path; after one, only the
  // destructor is useful.
  absl::Status Write(absl::string_view name, std::span<const uint8_t> bytes);

  // After every tensor was written: fsync, rename to the final path (replacing an existing file),
  // fsync the directory. FAILED_PRECONDITION naming the first unwritten tensor when called early.
  absl::Status Finish();

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }
  // Total size of the finished file: 8 + padded header + data bytes.
  uint64_t file_size() const { return file_size_; }
  // The header length N as written (a multiple of 8).
  uint64_t header_bytes() const { return header_bytes_; }

 private:
  SafetensorsWriter() = default;
  absl::Status WriteAll(const uint8_t* data, size_t size);

  std::string final_path_;
  std::string temp_path_;
  std::vector<TensorSpec> specs_;
  std::vector<uint64_t> sizes_;  // bytes of each spec
  size_t next_ = 0;              // index of the next spec to write
  int fd_ = -1;
  bool failed_ = false;
  bool finished_ = false;
  uint64_t file_size_ = 0;
  uint64_t header_bytes_ = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_SAFETENSORS_WRITER_H_
