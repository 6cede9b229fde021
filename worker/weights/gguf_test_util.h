// Test-only: builds GGUF bytes in memory, well-formed or deliberately broken (header counts,
// tensor offsets and raw metadata bytes can all be overridden). Used by gguf_test and
// model_weights_test; not linked into any library.
#ifndef SHARDSERVE_WORKER_WEIGHTS_GGUF_TEST_UTIL_H_
#define SHARDSERVE_WORKER_WEIGHTS_GGUF_TEST_UTIL_H_

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "worker/weights/gguf.h"

namespace shardserve::testing {

inline void PutLE(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline void PutString(std::vector<uint8_t>& out, const std::string& s) {
  PutLE(out, s.size(), 8);
  out.insert(out.end(), s.begin(), s.end());
}
inline std::vector<uint8_t> F32Bytes(const std::vector<float>& values) {
  std::vector<uint8_t> out(values.size() * 4);
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

class GgufBuilder {
 public:
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count;  // override the header counts
  std::optional<uint64_t> kv_count;
  uint64_t alignment = 32;  // used for layout; add "general.alignment" yourself to declare it

  // A key with raw value bytes (after the type id).
  void Kv(const std::string& key, uint32_t type, std::vector<uint8_t> value) {
    PutString(kv_, key);
    PutLE(kv_, type, 4);
    kv_.insert(kv_.end(), value.begin(), value.end());
    ++n_kv_;
  }
  void U32(const std::string& key, uint32_t v) {
    std::vector<uint8_t> b;
    PutLE(b, v, 4);
    Kv(key, static_cast<uint32_t>(GgufType::kU32), b);
  }
  void I32(const std::string& key, int32_t v) {
    std::vector<uint8_t> b;
    PutLE(b, static_cast<uint32_t>(v), 4);
    Kv(key, static_cast<uint32_t>(GgufType::kI32), b);
  }
  void U64(const std::string& key, uint64_t v) {
    std::vector<uint8_t> b;
    PutLE(b, v, 8);
    Kv(key, static_cast<uint32_t>(GgufType::kU64), b);
  }
  void F32(const std::string& key, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    std::vector<uint8_t> b;
    PutLE(b, bits, 4);
    Kv(key, static_cast<uint32_t>(GgufType::kF32), b);
  }
  void String(const std::string& key, const std::string& v) {
    std::vector<uint8_t> b;
    PutString(b, v);
    Kv(key, static_cast<uint32_t>(GgufType::kString), b);
  }
  void StringArray(const std::string& key, const std::vector<std::string>& v) {
    std::vector<uint8_t> b;
    PutLE(b, static_cast<uint32_t>(GgufType::kString), 4);
    PutLE(b, v.size(), 8);
    for (const std::string& s : v) PutString(b, s);
    Kv(key, static_cast<uint32_t>(GgufType::kArray), b);
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    std::vector<uint8_t> b;
    PutLE(b, static_cast<uint32_t>(GgufType::kI32), 4);
    PutLE(b, v.size(), 8);
    for (int32_t x : v) PutLE(b, static_cast<uint32_t>(x), 4);
    Kv(key, static_cast<uint32_t>(GgufType::kArray), b);
  }

  // `dims` in GGUF order (innermost first). `offset` defaults to the next aligned position.
  void Tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t ggml_type,
              std::vector<uint8_t> data, std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, std::move(dims), ggml_type, std::move(data), offset});
  }
  // An F32 tensor with PyTorch-order `shape` (reversed into GGUF dims here).
  void F32Tensor(const std::string& name, const std::vector<int64_t>& shape,
                 const std::vector<float>& values) {
    std::vector<uint64_t> dims(shape.rbegin(), shape.rend());
    Tensor(name, dims, 0, F32Bytes(values));
  }

  std::vector<uint8_t> Build() const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    PutLE(out, version, 4);
    PutLE(out, tensor_count.value_or(tensors_.size()), 8);
    PutLE(out, kv_count.value_or(n_kv_), 8);
    out.insert(out.end(), kv_.begin(), kv_.end());
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const TensorSpec& t : tensors_) {
      PutString(out, t.name);
      PutLE(out, t.dims.size(), 4);
      for (uint64_t d : t.dims) PutLE(out, d, 8);
      PutLE(out, t.type, 4);
      const uint64_t offset = t.offset.value_or(next);
      PutLE(out, offset, 8);
      offsets.push_back(offset);
      next = Align(offset + t.data.size());
    }
    out.resize(Align(out.size()), 0);
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      // Absurd offsets: leave the data out.
      if (offsets[i] > (uint64_t{1} << 30) || tensors_[i].data.empty()) continue;
      const size_t at = data_start + offsets[i];
      if (out.size() < at + tensors_[i].data.size()) out.resize(at + tensors_[i].data.size(), 0);
      std::memcpy(out.data() + at, tensors_[i].data.data(), tensors_[i].data.size());
    }
    return out;
  }

 private:
  struct TensorSpec {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;
  };
  uint64_t Align(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }

  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  std::vector<TensorSpec> tensors_;
};

// Writes `bytes` to a file under $TEST_TMPDIR (else /tmp) named after `name` and this process,
// and returns its path.
inline std::string WriteTempFile(const std::string& name, const std::vector<uint8_t>& bytes) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir != nullptr ? dir : "/tmp") + "/shardserve_" +
                     std::to_string(::getpid()) + "_" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f != nullptr) {
    if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
  return path;
}

// `relative` under the source tree ($SHARDSERVE_SOURCE_DIR, set by ctest; else the cwd).
inline std::string SourcePath(const std::string& relative) {
  const char* root = std::getenv("SHARDSERVE_SOURCE_DIR");
  return std::string(root != nullptr ? root : ".") + "/" + relative;
}

// Where the real models live: $SHARDSERVE_MODELS_DIR, else $SHARDSERVE_SOURCE_DIR/models.
inline std::string ModelsDir() {
  const char* dir = std::getenv("SHARDSERVE_MODELS_DIR");
  return dir != nullptr ? std::string(dir) : SourcePath("models");
}

inline constexpr char kRunSetup[] =
    " is missing: run scripts/setup.sh (it fetches the model and converts it to HF format)";

}  // namespace shardserve::testing

#endif  // SHARDSERVE_WORKER_WEIGHTS_GGUF_TEST_UTIL_H_
