// Element types of weight tensors: the safetensors dtypes and the GGML block-quantized types.
// A block type packs `block_elems` consecutive values of a row into `block_bytes` bytes; plain
// types have block_elems == 1.
#ifndef SHARDSERVE_WORKER_WEIGHTS_DTYPE_H_
#define SHARDSERVE_WORKER_WEIGHTS_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace shardserve {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kU64,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8E4M3,
  kF8E5M2,
  // GGML block types (GGUF).
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ8_0,
  kQ8_1,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ8_K,
};

struct DTypeInfo {
  DType dtype;
  std::string_view name;  // safetensors spelling ("BF16") or GGML's ("Q4_1").
  size_t block_elems;     // values per block (1 for plain types).
  size_t block_bytes;     // bytes per block (the element size for plain types).
};

const DTypeInfo& GetDTypeInfo(DType dtype);
inline std::string_view DTypeName(DType dtype) { return GetDTypeInfo(dtype).name; }

// "F32", "BF16", "F8_E4M3", ... as written in safetensors headers. nullopt if unknown.
std::optional<DType> DTypeFromSafetensorsName(std::string_view name);
// GGML type id as stored in GGUF tensor infos (F32 = 0, F16 = 1, Q4_0 = 2, ..., BF16 = 30).
std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type);

// Bytes that `elems` values of `dtype` take, or nullopt when `elems` is not a whole number of
// blocks (or the product overflows).
std::optional<size_t> BytesForElements(DType dtype, uint64_t elems);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_DTYPE_H_
