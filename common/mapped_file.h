// A read-only memory mapping of a whole file (RAII, move-only). Weights are read through these
// mappings: nothing copies a model through the heap.
#ifndef SHARDSERVE_COMMON_MAPPED_FILE_H_
#define SHARDSERVE_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace shardserve {

class MappedFile {
 public:
  // Maps `path` read-only. An empty file maps to an empty span. Errors name the path.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  const uint8_t* data() const { return data_; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  void Reset();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string. Errors name the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_MAPPED_FILE_H_
