// Conversion of stored weights to float32: plain float types (F32, F16, BF16, F8_E4M3, F8_E5M2),
// the GGML block-quantized types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, and
// the quantized linear weights of hub_sync's artifacts (kInt8Channel, kAwqInt4, kNf4).
//
// Results are bit-identical to the `gguf` Python package (gguf.quants.dequantize) and to ggml's
// reference dequantize_row_* functions: each value is computed with the same float32 operations
// in the same order, and this file is compiled without floating-point contraction (no FMA). The
// artifact types give exactly quant_formats.h's Dequantize* values.
// Thread-safe: every function is pure.
#ifndef SHARDSERVE_WORKER_WEIGHTS_DEQUANTIZE_H_
#define SHARDSERVE_WORKER_WEIGHTS_DEQUANTIZE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/weights/dtype.h"
#include "worker/weights/tensor.h"

namespace shardserve {

// IEEE half -> float (exact; subnormals, infinities and NaN payloads preserved).
float F16ToF32(uint16_t h);
// bfloat16 -> float (exact).
float BF16ToF32(uint16_t b);
// float -> bfloat16, round to nearest even; NaN becomes a quiet NaN keeping the sign and the top
// mantissa bits (as ggml_compute_fp32_to_bf16 and gguf.quants.BF16 do).
uint16_t F32ToBF16(float f);
// OCP FP8: E4M3 "FN" (bias 7, max 448, S.1111.111 is NaN, no infinity) and E5M2 (bias 15,
// IEEE-like with infinities).
float F8E4M3ToF32(uint8_t v);
float F8E5M2ToF32(uint8_t v);

// True when DequantizeToF32 supports `dtype` (DequantizeRow too, except for the quantized linear
// types, which need their QuantParts: DequantizeQuantizedRow).
bool CanDequantize(DType dtype);

// Converts `n` consecutive values stored at `src` to float32 at `dst`. `n` must be a multiple of
// the type's block size (INVALID_ARGUMENT otherwise); `src` must hold BytesForElements(dtype, n)
// bytes and needs no alignment. Unsupported types, and the quantized linear types, are
// UNIMPLEMENTED naming the type.
absl::Status DequantizeRow(DType dtype, const uint8_t* src, int64_t n, float* dst);

// Quantized linear weights (IsQuantizedLinear(dtype); layouts in tensor.h's QuantParts): row
// `row` of the window (0 <= row < its rows) as `cols` floats, columns [0, cols) of the window
// (cols <= its width). `data` and `q` as a TensorView holds them, already checked with
// CheckQuantParts; nothing is checked here.
void DequantizeQuantizedRow(DType dtype, const uint8_t* data, const QuantParts& q, int64_t row,
                            int64_t cols, float* dst);
// The absmax of NF4 block `block` of the whole weight: F32 as stored, or double-quantized
// nested_code[u8] * nested_absmax[block / nested_group] + nested_offset (two float32 roundings).
float Nf4Absmax(const QuantParts& q, int64_t block);

// Checks what the kernels rely on in a quantized linear view: 2-D, the window inside
// [full_rows, full_cols], the pointers its scheme needs set, kAwqInt4 full_rows % 8 == 0 and
// group > 0 dividing full_cols, kNf4 group > 0 (and nested_group > 0 when double-quantized).
// INVALID_ARGUMENT naming the tensor. The sizes of the companion tensors are the loader's to check.
absl::Status CheckQuantParts(const TensorView& view);

// The whole tensor as float32 in row-major order of `view.shape`, following `view.row_stride`
// for strided (column-sliced) views and the window of quantized linear views. Errors name the
// tensor.
absl::StatusOr<std::vector<float>> DequantizeToF32(const TensorView& view);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_DEQUANTIZE_H_
