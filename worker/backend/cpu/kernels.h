// The CPU backend's inner loops, one table per instruction set. The backend picks a table once
// (CreateCpuBackend) and its drivers (matmul.cc, attention.cc, cpu_backend.cc) split the work
// across threads and call these functions on their share.
//
// Every table computes bit-identical results: each output value is defined by one sequence of
// IEEE float operations (stated below), which the scalar table spells out literally and the
// SIMD tables reproduce lane by lane. Tests compare the tables exactly. All functions are pure,
// thread-safe, and take unaligned pointers.
//
// Two fixed accumulation orders:
//  * "Q8 order" (ActivationMode::kQ8, llama.cpp's ggml-cpu x86 vec_dot_q4_0/q4_1/q8_0): per
//    32-value block b, eight int32 partial dot products p[j] over values 4j..4j+3 (exact
//    integers), then acc[j] = fma(dw_b * dx_b, float(p[j]), acc[j]) with dw, dx the fp16 scales
//    as float; Q4_1 also summs = fma(mw_b, sx_b, summs). Result ((a0+a4)+(a2+a6)) +
//    ((a1+a5)+(a3+a7)) [+ summs].
//  * "F32 order" (f32 activations): 16 lanes, lane j accumulates fma(w[i], x[i], acc[j]) for
//    i ≡ j (mod 16) in increasing i (a zero-padded final chunk when the length is not a
//    multiple of 16), reduced as s8[j] = a[j] + a[j+8], s4[j] = s8[j] + s8[j+4], s2[j] = s4[j] +
//    s4[j+2], result s2[0] + s2[1]. Weight values are exactly DequantizeRow's (for the artifact
//    types kInt8Channel, kAwqInt4, kNf4: DequantizeQuantizedRow's, i.e. quant_formats.h's
//    Dequantize* values), so a quantized matrix gives bit for bit what the same matrix
//    dequantized to F32 gives. The artifact types always take f32 activations (both modes).
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "worker/weights/dtype.h"
#include "worker/weights/tensor.h"

namespace shardserve::cpu {

// 32 activations quantized as llama.cpp's x86 quantize_row_q8_0 / quantize_row_q8_1 do:
// amax = max|x|, d = amax / 127, id = amax != 0 ? 127 / amax : 0, qs = round-half-even(x * id),
// scale = fp16(d), sum = fp16(d * Σqs) (block_q8_1's s). One 64-byte line per block.
struct alignas(64) Q8Block {
  int8_t qs[32];
  int16_t qsum4[8];  // qs[4j] + ... + qs[4j+3]: lets Q4_0 / Q8_0 use unsigned-by-signed dots.
  float d;           // fp16(amax / 127), as float
  float s;           // fp16(amax / 127 * Σqs), as float
  uint8_t pad[8];
};
static_assert(sizeof(Q8Block) == 64, "Q8Block is one cache line");

// A weight matrix as the kernels see it: `rows` rows of `cols` values of `dtype`, row r at
// data + r * row_stride (any alignment). Quantized linear types (IsQuantizedLinear) are the
// window `quant` describes instead (row_stride unused; checked with CheckQuantParts).
struct WeightView {
  const uint8_t* data = nullptr;
  size_t row_stride = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  DType dtype = DType::kF32;
  QuantParts quant;
};

// y[t * ldy + r] for rows r in [r0, r1) and tokens t in [0, n).
struct GemmOut {
  float* y = nullptr;
  int64_t ldy = 0;
};

// Rows of floats gemm_f32's scratch holds: an artifact weight's rows decoded once per call and
// reused by every token (prefill), one AWQ word (8 outputs) at a time.
inline constexpr int64_t kGemmScratchRows = 8;

struct CpuKernels {
  const char* name;

  // Quantizes one row of `cols` (multiple of 32) floats into cols / 32 blocks.
  void (*quantize_q8)(const float* x, int64_t cols, Q8Block* out);

  // ActivationMode::kQ8 for Q4_0, Q4_1, Q8_0 weights (Q8 order): x is n rows of cols / 32
  // blocks, row t at xq + t * x_stride.
  void (*gemm_q8)(const WeightView& w, int64_t r0, int64_t r1, const Q8Block* xq, int64_t x_stride,
                  int n, GemmOut out);

  // f32 activations (F32 order) for F32, F16, BF16, Q4_0, Q4_1, Q8_0, kInt8Channel, kAwqInt4
  // and kNf4 weights (the last three decoded in registers when their window is whole 16-value
  // chunks, see kernels_x86.h); any other type DequantizeRow supports, or an artifact window that
  // is not, is dequantized one row at a time into `scratch`. Same result either way. `scratch`
  // holds kGemmScratchRows · cols floats (cols suffice for the other types).
  // x is n rows, row t at x + t * ldx.
  void (*gemm_f32)(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
                   GemmOut out, float* scratch);

  // F32 order dot products (attention scores).
  float (*dot_f32)(const float* a, const float* b, int64_t n);
  float (*dot_f16)(const float* a, const uint16_t* b, int64_t n);  // b is IEEE half
  // y[i] = fma(a, x[i], y[i]) (attention's V accumulation).
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);
  void (*axpy_f16)(float a, const uint16_t* x, float* y, int64_t n);
  // Round to nearest even: f32 -> f16 bits, and f32 -> f16 -> f32.
  void (*to_f16)(const float* x, uint16_t* y, int64_t n);
  void (*round_f16)(const float* x, float* y, int64_t n);
};

const CpuKernels& ScalarKernels();
// Only when built for x86-64 (SHARDSERVE_CPU_X86); call only when the CPU has the ISA.
const CpuKernels& Avx2Kernels();    // AVX2 + FMA + F16C
const CpuKernels& Avx512Kernels();  // + AVX-512 F/BW/VL/VNNI

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_H_
