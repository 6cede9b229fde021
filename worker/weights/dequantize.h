// Conversion of stored weights to float32: plain float types (F32, F16, BF16, F8_E4M3, F8_E5M2)
// and the GGML block-quantized types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//
// Results are bit-identical to the `gguf` Python package (gguf.quants.dequantize) and to ggml's
// reference dequantize_row_* functions: each value is computed with the same float32 operations
// in the same order, and this file is compiled without floating-point contraction (no FMA).
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

// True when DequantizeRow supports `dtype`.
bool CanDequantize(DType dtype);

// Converts `n` consecutive values stored at `src` to float32 at `dst`. `n` must be a multiple of
// the type's block size (INVALID_ARGUMENT otherwise); `src` must hold BytesForElements(dtype, n)
// bytes and needs no alignment. Unsupported types are UNIMPLEMENTED naming the type.
absl::Status DequantizeRow(DType dtype, const uint8_t* src, int64_t n, float* dst);

// The whole tensor as float32 in row-major order of `view.shape`, following `view.row_stride`
// for strided (column-sliced) views. Errors name the tensor.
absl::StatusOr<std::vector<float>> DequantizeToF32(const TensorView& view);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_DEQUANTIZE_H_
