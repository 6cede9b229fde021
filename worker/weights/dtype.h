// Element types of weight tensors: the safetensors dtypes, the GGML block-quantized types, and the
// quantized linear weights of hub_sync's artifacts. A block type packs `block_elems` consecutive
// values of a row into `block_bytes` bytes; plain types have block_elems == 1.
//
// The artifact types (kInt8Channel, kAwqInt4, kNf4) are logical: one linear weight [out, in]
// whose codes are one stored tensor and whose scales, zero points or absmax values are others
// (TensorView::quant holds them; see tensor.h). Their block_elems / block_bytes give the size of
// the codes alone (1 byte per value, 2 values per byte, 2 values per byte).
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
  // hub_sync artifacts (worker/weights/quant_formats.h has the on-disk layouts).
  kInt8Channel,  // int8 codes [out, in], an f32 scale per output row
  kAwqInt4,      // AutoAWQ GEMM packing: 4-bit codes, f16 scale and 4-bit zero per group of inputs
  kNf4,          // bitsandbytes NF4: 4-bit codes into a 16-value map, absmax per block of values
};

// True for kInt8Channel, kAwqInt4 and kNf4: values need TensorView::quant besides `data`.
bool IsQuantizedLinear(DType dtype);

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
