#include "worker/weights/dtype.h"

#include <array>
#include <limits>

namespace shardserve {
namespace {

constexpr std::array<DTypeInfo, 30> kInfos = {{
    {DType::kBool, "BOOL", 1, 1},
    {DType::kU8, "U8", 1, 1},
    {DType::kI8, "I8", 1, 1},
    {DType::kU16, "U16", 1, 2},
    {DType::kI16, "I16", 1, 2},
    {DType::kU32, "U32", 1, 4},
    {DType::kI32, "I32", 1, 4},
    {DType::kU64, "U64", 1, 8},
    {DType::kI64, "I64", 1, 8},
    {DType::kF16, "F16", 1, 2},
    {DType::kBF16, "BF16", 1, 2},
    {DType::kF32, "F32", 1, 4},
    {DType::kF64, "F64", 1, 8},
    {DType::kF8E4M3, "F8_E4M3", 1, 1},
    {DType::kF8E5M2, "F8_E5M2", 1, 1},
    {DType::kQ4_0, "Q4_0", 32, 18},
    {DType::kQ4_1, "Q4_1", 32, 20},
    {DType::kQ5_0, "Q5_0", 32, 22},
    {DType::kQ5_1, "Q5_1", 32, 24},
    {DType::kQ8_0, "Q8_0", 32, 34},
    {DType::kQ8_1, "Q8_1", 32, 36},
    {DType::kQ2_K, "Q2_K", 256, 84},
    {DType::kQ3_K, "Q3_K", 256, 110},
    {DType::kQ4_K, "Q4_K", 256, 144},
    {DType::kQ5_K, "Q5_K", 256, 176},
    {DType::kQ6_K, "Q6_K", 256, 210},
    {DType::kQ8_K, "Q8_K", 256, 292},
    {DType::kInt8Channel, "INT8", 1, 1},
    {DType::kAwqInt4, "INT4_AWQ", 2, 1},
    {DType::kNf4, "NF4", 2, 1},
}};

}  // namespace

const DTypeInfo& GetDTypeInfo(DType dtype) { return kInfos[static_cast<size_t>(dtype)]; }

bool IsQuantizedLinear(DType dtype) {
  return dtype == DType::kInt8Channel || dtype == DType::kAwqInt4 || dtype == DType::kNf4;
}

std::optional<DType> DTypeFromSafetensorsName(std::string_view name) {
  for (const DTypeInfo& info : kInfos) {
    if (info.block_elems == 1 && !IsQuantizedLinear(info.dtype) && info.name == name) {
      return info.dtype;
    }
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromGgmlType(uint32_t ggml_type) {
  switch (ggml_type) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kQ4_0;
    case 3:
      return DType::kQ4_1;
    case 6:
      return DType::kQ5_0;
    case 7:
      return DType::kQ5_1;
    case 8:
      return DType::kQ8_0;
    case 9:
      return DType::kQ8_1;
    case 10:
      return DType::kQ2_K;
    case 11:
      return DType::kQ3_K;
    case 12:
      return DType::kQ4_K;
    case 13:
      return DType::kQ5_K;
    case 14:
      return DType::kQ6_K;
    case 15:
      return DType::kQ8_K;
    case 24:
      return DType::kI8;
    case 25:
      return DType::kI16;
    case 26:
      return DType::kI32;
    case 27:
      return DType::kI64;
    case 28:
      return DType::kF64;
    case 30:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

std::optional<size_t> BytesForElements(DType dtype, uint64_t elems) {
  const DTypeInfo& info = GetDTypeInfo(dtype);
  if (elems % info.block_elems != 0) return std::nullopt;
  uint64_t blocks = elems / info.block_elems;
  if (blocks > std::numeric_limits<uint64_t>::max() / info.block_bytes) return std::nullopt;
  return static_cast<size_t>(blocks * info.block_bytes);
}

}  // namespace shardserve
