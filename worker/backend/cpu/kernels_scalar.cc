// The reference kernel table: plain C++, one value at a time, spelling out the operation
// sequences kernels.h defines. The SIMD tables must match it bit for bit. Compiled with
// -ffp-contract=off: every fused multiply-add here is an explicit std::fma.
#include <algorithm>
#include <cmath>
#include <vector>

#include "worker/backend/cpu/fp16.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/weights/dequantize.h"

namespace shardserve::cpu {
namespace {

constexpr int kQK = 32;

void QuantizeQ8(const float* x, int64_t cols, Q8Block* out) {
  for (int64_t b = 0; b < cols / kQK; ++b) {
    const float* xb = x + b * kQK;
    Q8Block& q = out[b];
    float amax = 0.0f;
    for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < kQK; ++i) {
      const float r = std::nearbyint(xb[i] * id);  // half to even (default rounding mode)
      // cvtps2dq gives INT_MIN for NaN / out of range, which the int8 pack saturates to -128.
      const int v = (r >= -2147483648.0f && r < 2147483648.0f)
                        ? std::clamp(static_cast<int>(r), -128, 127)
                        : -128;
      q.qs[i] = static_cast<int8_t>(v);
      sum += v;
    }
    for (int j = 0; j < 8; ++j) {
      q.qsum4[j] =
          static_cast<int16_t>(q.qs[4 * j] + q.qs[4 * j + 1] + q.qs[4 * j + 2] + q.qs[4 * j + 3]);
    }
    q.d = RoundToF16(d);
    q.s = RoundToF16(d * static_cast<float>(sum));
    std::fill(std::begin(q.pad), std::end(q.pad), 0);
  }
}

// One block of weights as the integers the Q8 dot multiplies, plus its fp16 scale / min.
struct IntBlock {
  int8_t v[kQK];
  float d;
  float m;
};

void DecodeIntBlock(DType dtype, const uint8_t* blk, IntBlock* out) {
  switch (dtype) {
    case DType::kQ4_0:  // f16 d; u8 qs[16]: value j = low nibble, j + 16 = high nibble; - 8
      out->d = LoadF16(blk);
      out->m = 0.0f;
      for (int j = 0; j < 16; ++j) {
        out->v[j] = static_cast<int8_t>((blk[2 + j] & 0x0F) - 8);
        out->v[j + 16] = static_cast<int8_t>((blk[2 + j] >> 4) - 8);
      }
      break;
    case DType::kQ4_1:  // f16 d; f16 m; u8 qs[16]
      out->d = LoadF16(blk);
      out->m = LoadF16(blk + 2);
      for (int j = 0; j < 16; ++j) {
        out->v[j] = static_cast<int8_t>(blk[4 + j] & 0x0F);
        out->v[j + 16] = static_cast<int8_t>(blk[4 + j] >> 4);
      }
      break;
    default:  // kQ8_0: f16 d; i8 qs[32]
      out->d = LoadF16(blk);
      out->m = 0.0f;
      for (int j = 0; j < kQK; ++j) out->v[j] = static_cast<int8_t>(blk[2 + j]);
      break;
  }
}

size_t BlockBytes(DType dtype) { return GetDTypeInfo(dtype).block_bytes; }

void GemmQ8(const WeightView& w, int64_t r0, int64_t r1, const Q8Block* xq, int64_t x_stride, int n,
            GemmOut out) {
  const int64_t nb = w.cols / kQK;
  const size_t bb = BlockBytes(w.dtype);
  std::vector<IntBlock> row(nb);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w.data + r * w.row_stride;
    for (int64_t b = 0; b < nb; ++b) DecodeIntBlock(w.dtype, wr + b * bb, &row[b]);
    for (int t = 0; t < n; ++t) {
      const Q8Block* x = xq + t * x_stride;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      float summs = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const float d = row[b].d * x[b].d;
        for (int j = 0; j < 8; ++j) {
          int p = 0;
          for (int k = 4 * j; k < 4 * j + 4; ++k) p += row[b].v[k] * x[b].qs[k];
          acc[j] = std::fma(d, static_cast<float>(p), acc[j]);
        }
        if (w.dtype == DType::kQ4_1) summs = std::fma(row[b].m, x[b].s, summs);
      }
      float sum = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      if (w.dtype == DType::kQ4_1) sum = sum + summs;
      out.y[t * out.ldy + r] = sum;
    }
  }
}

// F32 order (kernels.h).
template <typename LoadB>
float DotF32Order(const float* a, LoadB b, int64_t n) {
  float acc[16] = {};
  const int64_t padded = (n + 15) / 16 * 16;
  for (int64_t i = 0; i < padded; ++i) {
    const float av = i < n ? a[i] : 0.0f;
    const float bv = i < n ? b(i) : 0.0f;
    acc[i % 16] = std::fma(bv, av, acc[i % 16]);
  }
  float s8[8], s4[4], s2[2];
  for (int j = 0; j < 8; ++j) s8[j] = acc[j] + acc[j + 8];
  for (int j = 0; j < 4; ++j) s4[j] = s8[j] + s8[j + 4];
  for (int j = 0; j < 2; ++j) s2[j] = s4[j] + s4[j + 2];
  return s2[0] + s2[1];
}

float DotF32(const float* a, const float* b, int64_t n) {
  return DotF32Order(
      a, [b](int64_t i) { return b[i]; }, n);
}

float DotF16(const float* a, const uint16_t* b, int64_t n) {
  return DotF32Order(
      a, [b](int64_t i) { return F16ToF32(b[i]); }, n);
}

void GemmF32(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
             GemmOut out, float* scratch) {
  const bool quantized = IsQuantizedLinear(w.dtype);
  for (int64_t r = r0; r < r1; ++r) {
    // Shapes and types were checked when the matrix was prepared.
    if (quantized) {
      DequantizeQuantizedRow(w.dtype, w.data, w.quant, r, w.cols, scratch);
    } else {
      (void)DequantizeRow(w.dtype, w.data + r * w.row_stride, w.cols, scratch);
    }
    for (int t = 0; t < n; ++t) out.y[t * out.ldy + r] = DotF32(scratch, x + t * ldx, w.cols);
  }
}

void AxpyF32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

void AxpyF16(float a, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::fma(a, F16ToF32(x[i]), y[i]);
}

void ToF16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = F32ToF16Bits(x[i]);
}

void RoundF16(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = RoundToF16(x[i]);
}

}  // namespace

const CpuKernels& ScalarKernels() {
  static const CpuKernels kKernels = {
      .name = "scalar",
      .quantize_q8 = QuantizeQ8,
      .gemm_q8 = GemmQ8,
      .gemm_f32 = GemmF32,
      .dot_f32 = DotF32,
      .dot_f16 = DotF16,
      .axpy_f32 = AxpyF32,
      .axpy_f16 = AxpyF16,
      .to_f16 = ToF16,
      .round_f16 = RoundF16,
  };
  return kKernels;
}

}  // namespace shardserve::cpu
