// Reader for GGUF files (llama.cpp's single-file model format, versions 2 and 3, little-endian):
// the metadata key/value store and zero-copy views of the tensors, plus the mapping of llama
// metadata to a ModelConfig.
//
// Everything in the header and tensor table is validated on open, so a GgufFile that exists is
// consistent: every tensor lies inside the file, aligned, without overlapping another, with a
// known GGML type and a valid shape. Malformed input gives an INVALID_ARGUMENT status naming the
// file, the key or tensor, and the problem; nothing reads outside the bytes.
//
// Thread-safety: immutable after construction; any number of threads may read it.
#ifndef SHARDSERVE_WORKER_WEIGHTS_GGUF_H_
#define SHARDSERVE_WORKER_WEIGHTS_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mapped_file.h"
#include "worker/model/config.h"
#include "worker/weights/tensor.h"

namespace shardserve {

// GGUF metadata value types, with their on-disk ids.
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// "u32", "string", "array", ...
absl::string_view GgufTypeName(GgufType type);

// One metadata value: a scalar, a string, or an array (of scalars, strings or arrays). The
// accessors convert between compatible types and fail with an INVALID_ARGUMENT status saying
// what was expected and what was found (without the key; GgufFile's getters add key and file).
class GgufValue {
 public:
  GgufValue() = default;

  GgufType type() const { return type_; }
  bool IsArray() const { return type_ == GgufType::kArray; }
  // For arrays: the element type (kArray for an array of arrays) and the element count.
  GgufType array_type() const { return array_type_; }
  size_t ArraySize() const { return array_size_; }

  // Scalars. AsUint/AsInt accept any integer type whose value fits; AsFloat accepts f32, f64
  // and integers (converted exactly where possible).
  absl::StatusOr<uint64_t> AsUint() const;
  absl::StatusOr<int64_t> AsInt() const;
  absl::StatusOr<double> AsFloat() const;
  absl::StatusOr<bool> AsBool() const;
  absl::StatusOr<std::string> AsString() const;

  // Arrays. AsIntArray accepts arrays of any integer type (and bool) whose values fit in int64;
  // AsFloatArray arrays of f32, f64 or integers.
  absl::StatusOr<std::vector<std::string>> AsStringArray() const;
  absl::StatusOr<std::vector<int64_t>> AsIntArray() const;
  absl::StatusOr<std::vector<double>> AsFloatArray() const;
  // Elements of an array of arrays (empty for other values).
  const std::vector<GgufValue>& nested() const { return nested_; }

  // A short human-readable rendering ("u32 30", "string \"llama\"", "array<string>[49152]").
  std::string DebugString() const;

 private:
  friend class GgufParser;

  GgufType type_ = GgufType::kU8;
  // Scalars: unsigned types and bool in uint_, signed types in int_, floats in float_.
  uint64_t uint_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::string string_;
  // Arrays.
  GgufType array_type_ = GgufType::kU8;
  size_t array_size_ = 0;
  std::vector<uint8_t> raw_;          // scalar elements, as stored (little-endian)
  std::vector<std::string> strings_;  // string elements
  std::vector<GgufValue> nested_;     // array elements
};

class GgufFile {
 public:
  // Maps and validates the file at `path`. Errors name the path.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses bytes owned by the caller, which must outlive the returned object (tests, fuzzing).
  // `what` names the bytes in errors.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::span<const uint8_t> bytes,
                                                             absl::string_view what);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  // The path (or `what` for FromBytes).
  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  // general.alignment, or 32 when absent.
  uint64_t alignment() const { return alignment_; }
  // Offset of the tensor data section from the start of the file.
  uint64_t data_offset() const { return data_offset_; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  // nullptr when `key` is absent.
  const GgufValue* FindValue(absl::string_view key) const;

  // Typed getters: NOT_FOUND when the key is absent, INVALID_ARGUMENT when the value has another
  // type or does not fit; both name the key and the file. GetUint/GetInt accept every integer
  // type; GetFloat also accepts integers.
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  absl::StatusOr<uint64_t> GetUint(absl::string_view key) const;
  absl::StatusOr<int64_t> GetInt(absl::string_view key) const;
  absl::StatusOr<double> GetFloat(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(absl::string_view key) const;

  // Tensors in file order. Shapes are in PyTorch order (GGUF's dims reversed: a Linear weight is
  // {out, in}); views are contiguous (row_stride == RowBytes()) and valid while this object
  // lives.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  // nullptr when there is no tensor `name`.
  const TensorView* Find(absl::string_view name) const;
  // As Find, but NOT_FOUND naming the tensor and the file.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;

 private:
  friend class GgufParser;
  GgufFile() = default;

  absl::Status Parse(std::span<const uint8_t> bytes);
  absl::StatusOr<const GgufValue*> Lookup(absl::string_view key) const;

  std::string path_;
  MappedFile mapping_;  // empty for FromBytes
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<TensorView> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

// The ModelConfig of a llama-architecture GGUF (llama.cpp also writes Mistral as "llama"; a
// "llama" file with `llama.expert_count` > 0 is Mixtral). Reads {arch}.context_length,
// embedding_length, block_count, feed_forward_length, attention.head_count, head_count_kv,
// attention.key_length / rope.dimension_count (head_dim), rope.freq_base,
// attention.layer_norm_rms_epsilon, vocab_size (else the length of tokenizer.ggml.tokens),
// rope.scaling.*, expert_count / expert_used_count, tokenizer.ggml.bos/eos/eot_token_id.
// tie_word_embeddings is true when there is no `output.weight` tensor. f32 values are widened by
// their shortest decimal form (1e-5f becomes 1e-05, as config.json has it). The result passes
// ValidateConfig; errors name the file and key.
absl::StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& file);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_GGUF_H_
