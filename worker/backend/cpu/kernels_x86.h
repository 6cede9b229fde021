// SIMD kernel bodies shared by kernels_avx2.cc (-mavx2 -mfma -mf16c) and kernels_avx512.cc
// (+ -mavx512f -mavx512bw -mavx512vl -mavx512vnni). Include only from those two files: every
// definition has internal linkage, so each includer gets its own copy built for its ISA and
// nothing leaks into code that runs on a CPU without it. Bit-exactness rules: kernels.h.
//
// Roofline (per call, n tokens, R = r1 - r0 rows, K = cols):
//   gemm_q8:  reads R·K·{0.5625, 0.625, 1.0625} weight bytes (Q4_0, Q4_1, Q8_0) once per
//             row tile, n·K/32·64 activation bytes per row tile (from L1/L2), writes 4·n·R;
//             2·n·R·K integer ops. Decode (n = 1) is bound by the weight bytes.
//   gemm_f32: reads the weight bytes once per row tile, n·K·4 activation bytes per row tile,
//             2·n·R·K flops.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_X86_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_X86_H_

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_* helpers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "worker/backend/cpu/kernels.h"
#include "worker/weights/dequantize.h"

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels_x86.h needs -mavx2 -mfma -mf16c"
#endif

namespace shardserve::cpu {
namespace {

constexpr int kQK = 32;

inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

// ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)): ggml's hsum_float_8.
inline float Hsum8(__m256 a) {
  __m128 r = _mm_add_ps(_mm256_extractf128_ps(a, 1), _mm256_castps256_ps128(a));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
}

inline int Hsum8i(__m256i a) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
  s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// ---------------------------------------------------------------------------------------------
// Activation quantization (llama.cpp's x86 quantize_row_q8_0 / q8_1). Per block: 128 bytes in,
// 64 bytes out.

void QuantizeQ8(const float* x, int64_t cols, Q8Block* out) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i ones8 = _mm256_set1_epi8(1);
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < cols / kQK; ++b, x += kQK) {
    __m256 v0 = _mm256_loadu_ps(x);
    __m256 v1 = _mm256_loadu_ps(x + 8);
    __m256 v2 = _mm256_loadu_ps(x + 16);
    __m256 v3 = _mm256_loadu_ps(x + 24);
    __m256 max_abs = _mm256_andnot_ps(sign_bit, v0);
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v1));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v2));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v3));
    __m128 max4 = _mm_max_ps(_mm256_extractf128_ps(max_abs, 1), _mm256_castps256_ps128(max_abs));
    max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
    const float amax = _mm_cvtss_f32(max4);
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m256 mul = _mm256_set1_ps(id);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, mul), kRound));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, mul), kRound));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, mul), kRound));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, mul), kRound));
    const int sum = Hsum8i(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    i0 = _mm256_packs_epi32(i0, i1);
    i2 = _mm256_packs_epi32(i2, i3);
    const __m256i q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i0, i2), perm);
    Q8Block& o = out[b];
    _mm256_store_si256(reinterpret_cast<__m256i*>(o.qs), q);
    // Sums of 4: pairs (maddubs with ones), then pairs of pairs (madd), packed to int16.
    const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q), ones16);
    const __m256i s4p = _mm256_permute4x64_epi64(_mm256_packs_epi32(s4, s4), 0x08);
    _mm_store_si128(reinterpret_cast<__m128i*>(o.qsum4), _mm256_castsi256_si128(s4p));
    o.d = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
    o.s = _cvtsh_ss(_cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT));
    std::memset(o.pad, 0, sizeof(o.pad));
  }
}

// ---------------------------------------------------------------------------------------------
// Q8-order matmul. Tile: R weight rows x T tokens; per block the R weight vectors are decoded
// once and reused by T tokens (acc: R·T ymm). Integer dot per (row, token, block): 8 int32 lanes
// of 4 products each (VNNI vpdpbusd where available, else vpmaddubsw + vpmaddwd).

template <DType kType>
constexpr size_t kBlockBytes = kType == DType::kQ4_0   ? 18
                               : kType == DType::kQ4_1 ? 20
                                                       : 34;

inline __m256i Nibbles32(const uint8_t* p) {
  const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

// The weight operand of the integer dot as held across tokens.
template <DType kType>
inline __m256i LoadWeightInts(const uint8_t* blk) {
  if constexpr (kType == DType::kQ4_0) {
    return Nibbles32(blk + 2);  // 0..15; the -8 is applied through qsum4
  } else if constexpr (kType == DType::kQ4_1) {
    return Nibbles32(blk + 4);
  } else {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
#if defined(__AVX512VNNI__)
    return _mm256_xor_si256(q, _mm256_set1_epi8(static_cast<char>(0x80)));  // q + 128, unsigned
#else
    return q;
#endif
  }
}

// Per-token correction of the unsigned weight operand: -8·qsum4 (Q4_0), -128·qsum4 (Q8_0 with
// VNNI), 0 otherwise.
template <DType kType>
inline __m256i TokenBias(const Q8Block& a) {
  const __m256i s =
      _mm256_cvtepi16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(a.qsum4)));
  if constexpr (kType == DType::kQ4_0) {
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 3));
  } else {
    return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s, 7));
  }
}

template <DType kType>
inline __m256i IntDot(__m256i wq, __m256i xq, __m256i bias) {
#if defined(__AVX512VNNI__)
  if constexpr (kType == DType::kQ4_1) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq, xq);
  } else {
    return _mm256_dpbusd_epi32(bias, wq, xq);
  }
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (kType == DType::kQ4_1) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones);
  } else if constexpr (kType == DType::kQ4_0) {
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones), bias);
  } else {  // ggml's sign trick: |w| (unsigned) times sign(w)·x
    const __m256i aw = _mm256_sign_epi8(wq, wq);
    const __m256i sx = _mm256_sign_epi8(xq, wq);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), ones);
  }
#endif
}

template <DType kType, int R, int T>
void TileQ8(const WeightView& w, int64_t r, const Q8Block* xq, int64_t x_stride, int t0,
            GemmOut out) {
  constexpr size_t kBytes = kBlockBytes<kType>;
  constexpr bool kHasMin = kType == DType::kQ4_1;
  const int64_t nb = w.cols / kQK;
  const uint8_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = w.data + (r + i) * w.row_stride;
  const Q8Block* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = xq + (t0 + t) * x_stride;
  __m256 acc[R][T];
  float summs[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[i][t] = _mm256_setzero_ps();
      summs[i][t] = 0.0f;
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wq[R];
    float dw[R];
    float mw[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const uint8_t* blk = rows[i] + b * kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk + 8 * kBytes), _MM_HINT_T0);
      dw[i] = HalfAt(blk);
      if constexpr (kHasMin) mw[i] = HalfAt(blk + 2);
      wq[i] = LoadWeightInts<kType>(blk);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const Q8Block& a = xs[t][b];
      const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.qs));
      __m256i bias = _mm256_setzero_si256();
      if constexpr (kType == DType::kQ4_0) bias = TokenBias<kType>(a);
#if defined(__AVX512VNNI__)
      if constexpr (kType == DType::kQ8_0) bias = TokenBias<kType>(a);
#endif
      const float dx = a.d;
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const __m256i p = IntDot<kType>(wq[i], xv, bias);
        const __m256 d = _mm256_set1_ps(dw[i] * dx);
        acc[i][t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[i][t]);
        if constexpr (kHasMin) summs[i][t] = std::fma(mw[i], a.s, summs[i][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      float s = Hsum8(acc[i][t]);
      if constexpr (kHasMin) s = s + summs[i][t];
      out.y[(t0 + t) * out.ldy + r + i] = s;
    }
  }
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__)
// Q4_1 with two rows per zmm: lanes 0-7 hold row r's eight partial sums, lanes 8-15 row r+1's,
// so one vpdpbusd / cvt / fma serves two rows. Per-lane arithmetic is TileQ8's exactly. The
// fp16 d and m of both rows convert in one vcvtph2ps ([d0, m0, d1, m1]); lanes 1 and 3 of
// `summs` carry fma(m, s, summs) for the two rows (lanes 0 and 2 are ignored).
template <int P, int T>
void TilePairQ4_1(const WeightView& w, int64_t r, const Q8Block* xq, int64_t x_stride, int t0,
                  GemmOut out) {
  constexpr size_t kBytes = 20;
  const int64_t nb = w.cols / kQK;
  const uint8_t* rows[2 * P];
  for (int i = 0; i < 2 * P; ++i) rows[i] = w.data + (r + i) * w.row_stride;
  const Q8Block* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = xq + (t0 + t) * x_stride;
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  __m512 acc[P][T];
  __m128 summs[P][T];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[p][t] = _mm512_setzero_ps();
      summs[p][t] = _mm_setzero_ps();
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m512i wq[P];
    __m128 dm[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const uint8_t* b0 = rows[2 * p] + b * kBytes;
      const uint8_t* b1 = rows[2 * p + 1] + b * kBytes;
      _mm_prefetch(reinterpret_cast<const char*>(b0 + 8 * kBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b1 + 8 * kBytes), _MM_HINT_T0);
      uint32_t h0, h1;
      std::memcpy(&h0, b0, 4);
      std::memcpy(&h1, b1, 4);
      dm[p] = _mm_cvtph_ps(_mm_setr_epi32(static_cast<int>(h0), static_cast<int>(h1), 0, 0));
      const __m256i both = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 4))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1 + 4)), 1);
      const __m512i z = _mm512_castsi256_si512(both);
      __m512i q = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(1, 1, 0, 0));  // [r0, r0, r1, r1]
      q = _mm512_mask_srli_epi16(q, 0xFF00FF00u, q, 4);                 // high nibbles in 1, 3
      wq[p] = _mm512_and_si512(q, lo4);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const Q8Block& a = xs[t][b];
      const __m512i xv =
          _mm512_broadcast_i64x4(_mm256_load_si256(reinterpret_cast<const __m256i*>(a.qs)));
      const __m128 dx = _mm_set1_ps(a.d);
      const __m128 sx = _mm_set1_ps(a.s);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const __m512 scale =
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(dm[p], dx)));
        const __m512i pi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[p], xv);
        acc[p][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(pi), acc[p][t]);
        summs[p][t] = _mm_fmadd_ps(dm[p], sx, summs[p][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m256 lo = _mm512_castps512_ps256(acc[p][t]);
      const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[p][t]), 1));
      alignas(16) float sm[4];
      _mm_store_ps(sm, summs[p][t]);
      float* y = out.y + (t0 + t) * out.ldy + r + 2 * p;
      y[0] = Hsum8(lo) + sm[1];
      y[1] = Hsum8(hi) + sm[3];
    }
  }
}

constexpr int kPairs = 2;
#endif

#if defined(__AVX512F__)
constexpr int kQ8Rows = 4;
constexpr int kQ8Tokens = 4;
#else
constexpr int kQ8Rows = 4;
constexpr int kQ8Tokens = 2;
#endif

template <DType kType, int R>
void RowsQ8(const WeightView& w, int64_t r, const Q8Block* xq, int64_t x_stride, int n,
            GemmOut out) {
  int t = 0;
  for (; t + kQ8Tokens <= n; t += kQ8Tokens)
    TileQ8<kType, R, kQ8Tokens>(w, r, xq, x_stride, t, out);
  for (; t < n; ++t) TileQ8<kType, R, 1>(w, r, xq, x_stride, t, out);
}

template <DType kType>
void GemmQ8Typed(const WeightView& w, int64_t r0, int64_t r1, const Q8Block* xq, int64_t x_stride,
                 int n, GemmOut out) {
  int64_t r = r0;
#if defined(__AVX512F__) && defined(__AVX512VNNI__)
  if constexpr (kType == DType::kQ4_1) {
    for (; r + 2 * kPairs <= r1; r += 2 * kPairs) {
      int t = 0;
      for (; t + kQ8Tokens <= n; t += kQ8Tokens) {
        TilePairQ4_1<kPairs, kQ8Tokens>(w, r, xq, x_stride, t, out);
      }
      for (; t < n; ++t) TilePairQ4_1<kPairs, 1>(w, r, xq, x_stride, t, out);
    }
  }
#endif
  for (; r + kQ8Rows <= r1; r += kQ8Rows) RowsQ8<kType, kQ8Rows>(w, r, xq, x_stride, n, out);
  for (; r < r1; ++r) RowsQ8<kType, 1>(w, r, xq, x_stride, n, out);
}

void GemmQ8(const WeightView& w, int64_t r0, int64_t r1, const Q8Block* xq, int64_t x_stride, int n,
            GemmOut out) {
  switch (w.dtype) {
    case DType::kQ4_0:
      return GemmQ8Typed<DType::kQ4_0>(w, r0, r1, xq, x_stride, n, out);
    case DType::kQ4_1:
      return GemmQ8Typed<DType::kQ4_1>(w, r0, r1, xq, x_stride, n, out);
    default:
      return GemmQ8Typed<DType::kQ8_0>(w, r0, r1, xq, x_stride, n, out);
  }
}

// ---------------------------------------------------------------------------------------------
// F32 order. V16 holds 16 float lanes: one zmm with AVX-512, two ymm otherwise.

#if defined(__AVX512F__)
struct V16 {
  __m512 v;
};
inline V16 Zero16() { return {_mm512_setzero_ps()}; }
inline V16 Load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V16 Fma16(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline void Store16(float* p, V16 a) { _mm512_storeu_ps(p, a.v); }
inline V16 Half16(const void* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)))};
}
inline V16 Bf16x16(const void* p) {
  const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(u, 16))};
}
// 16 bytes as unsigned / signed integers, converted to float.
inline V16 U8x16(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))}; }
inline V16 I8x16(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))}; }
inline V16 Mul16(V16 a, float s) { return {_mm512_mul_ps(a.v, _mm512_set1_ps(s))}; }
inline V16 Add16(V16 a, float s) { return {_mm512_add_ps(a.v, _mm512_set1_ps(s))}; }
inline V16 Sub16(V16 a, float s) { return {_mm512_sub_ps(a.v, _mm512_set1_ps(s))}; }
inline float Reduce16(V16 a) {
  const __m256 s8 =
      _mm256_add_ps(_mm512_castps512_ps256(a.v),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
#else
struct V16 {
  __m256 lo, hi;
};
inline V16 Zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 Load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline V16 Fma16(V16 a, V16 b, V16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline void Store16(float* p, V16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline V16 Half16(const void* p) {
  const __m128i* q = static_cast<const __m128i*>(p);
  return {_mm256_cvtph_ps(_mm_loadu_si128(q)), _mm256_cvtph_ps(_mm_loadu_si128(q + 1))};
}
inline V16 Bf16x16(const void* p) {
  const __m128i* q = static_cast<const __m128i*>(p);
  const __m256i lo = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q)), 16);
  const __m256i hi = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(q + 1)), 16);
  return {_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi)};
}
inline V16 U8x16(__m128i b) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)),
          _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)))};
}
inline V16 I8x16(__m128i b) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
          _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
inline V16 Mul16(V16 a, float s) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_mul_ps(a.lo, v), _mm256_mul_ps(a.hi, v)};
}
inline V16 Add16(V16 a, float s) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_add_ps(a.lo, v), _mm256_add_ps(a.hi, v)};
}
inline V16 Sub16(V16 a, float s) {
  const __m256 v = _mm256_set1_ps(s);
  return {_mm256_sub_ps(a.lo, v), _mm256_sub_ps(a.hi, v)};
}
inline float Reduce16(V16 a) {
  const __m256 s8 = _mm256_add_ps(a.lo, a.hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
}
#endif

// 16 weight values starting at element `i` (a multiple of 16) of a row, exactly DequantizeRow's.
template <DType kType>
inline V16 LoadW16(const uint8_t* row, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return Load16(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (kType == DType::kF16) {
    return Half16(row + 2 * i);
  } else if constexpr (kType == DType::kBF16) {
    return Bf16x16(row + 2 * i);
  } else {
    const uint8_t* blk = row + (i / kQK) * kBlockBytes<kType>;
    const bool high = (i % kQK) != 0;
    const float d = HalfAt(blk);
    if constexpr (kType == DType::kQ8_0) {
      const __m128i q =
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2 + (high ? 16 : 0)));
      return Mul16(I8x16(q), d);  // q * d
    } else {
      const uint8_t* qs = blk + (kType == DType::kQ4_1 ? 4 : 2);
      __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
      if (high) q = _mm_srli_epi16(q, 4);
      q = _mm_and_si128(q, _mm_set1_epi8(0x0F));
      if constexpr (kType == DType::kQ4_1) {
        return Add16(Mul16(U8x16(q), d), HalfAt(blk + 2));  // q * d + m, two roundings
      } else {
        return Mul16(Sub16(U8x16(q), 8.0f), d);  // (q - 8) * d (q - 8 is exact)
      }
    }
  }
}

template <DType kType, int R, int T>
void TileF32(const uint8_t* const* rows, int64_t cols, const float* x, int64_t ldx, int t0,
             GemmOut out, int64_t r) {
  V16 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = Zero16();
  }
  const int64_t full = cols / 16 * 16;
  for (int64_t c = 0; c < full; c += 16) {
    V16 wv[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wv[i] = LoadW16<kType>(rows[i], c);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const V16 xv = Load16(x + (t0 + t) * ldx + c);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i][t] = Fma16(wv[i], xv, acc[i][t]);
    }
  }
  if (full < cols) {  // plain types only: zero-padded final chunk
    alignas(64) float xt[16];
    alignas(64) float wt[16];
    const int64_t rem = cols - full;
    for (int i = 0; i < R; ++i) {
      for (int64_t k = 0; k < 16; ++k) {
        float v = 0.0f;
        if (k < rem) {
          const int64_t e = full + k;
          if constexpr (kType == DType::kF32) {
            std::memcpy(&v, rows[i] + 4 * e, 4);
          } else if constexpr (kType == DType::kF16) {
            v = HalfAt(rows[i] + 2 * e);
          } else {
            uint16_t h;
            std::memcpy(&h, rows[i] + 2 * e, 2);
            v = BF16ToF32(h);
          }
        }
        wt[k] = v;
      }
      const V16 wv = Load16(wt);
      for (int t = 0; t < T; ++t) {
        for (int64_t k = 0; k < 16; ++k) xt[k] = k < rem ? x[(t0 + t) * ldx + full + k] : 0.0f;
        acc[i][t] = Fma16(wv, Load16(xt), acc[i][t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) out.y[(t0 + t) * out.ldy + r + i] = Reduce16(acc[i][t]);
  }
}

#if defined(__AVX512F__)
constexpr int kF32Rows = 4;
constexpr int kF32Tokens = 4;
#else
constexpr int kF32Rows = 2;
constexpr int kF32Tokens = 2;
#endif

template <DType kType, int R>
void RowsF32(const uint8_t* const* rows, int64_t cols, const float* x, int64_t ldx, int n,
             GemmOut out, int64_t r) {
  int t = 0;
  for (; t + kF32Tokens <= n; t += kF32Tokens) {
    TileF32<kType, R, kF32Tokens>(rows, cols, x, ldx, t, out, r);
  }
  for (; t < n; ++t) TileF32<kType, R, 1>(rows, cols, x, ldx, t, out, r);
}

template <DType kType>
void GemmF32Typed(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
                  GemmOut out) {
  int64_t r = r0;
  const uint8_t* rows[kF32Rows];
  for (; r + kF32Rows <= r1; r += kF32Rows) {
    for (int i = 0; i < kF32Rows; ++i) rows[i] = w.data + (r + i) * w.row_stride;
    RowsF32<kType, kF32Rows>(rows, w.cols, x, ldx, n, out, r);
  }
  for (; r < r1; ++r) {
    rows[0] = w.data + r * w.row_stride;
    RowsF32<kType, 1>(rows, w.cols, x, ldx, n, out, r);
  }
}

// ---------------------------------------------------------------------------------------------
// hub_sync's artifact types (kInt8Channel, kAwqInt4, kNf4) in F32 order. Each 16-value chunk of a
// row is decoded in registers to exactly DequantizeQuantizedRow's values (the same float32
// operations: a convert, one multiply) and then goes through the F32-order fma, so the result is
// bit for bit that of the dequantized F32 matrix. The fast paths need the window to be whole
// 16-value chunks that never straddle a group / absmax block (QuantChunked); GemmF32 sends any
// other window through DequantizeQuantizedRow + the F32 tile, which computes the same values.
//
// Roofline at decode (n = 1) on SmolLM2-135M's shapes (in 576 except down_proj's 1536; group 64
// for int4, block 64 for nf4): each call does 2·out·in flops and reads its weight once, and x
// (4·in bytes) and y (4·out bytes) from L1. Bytes of the weight per call:
//   int8:  out·in (codes) + 4·out (scales)           q/o 334 KB, k/v 111 KB, gate/up/down 891 KB:
//          2.0 flops/byte; 3.56 MB per layer.
//   int4:  out·in/2 + out·in/G/2 (zeros) + 2·out·in/G (scales): 0.539 bytes per weight at G = 64,
//          q/o 179 KB, k/v 60 KB, gate/up/down 477 KB: 3.7 flops/byte; 1.91 MB per layer.
//   nf4:   out·in/2 + 4·out·in/64 (f32 absmax) = 0.5625 bytes per weight, 3.6 flops/byte, 1.99 MB
//          per layer; double-quantized 0.516 bytes (1-byte absmax codes + f32 per 256 blocks).
//   (bf16 for comparison: 2 bytes per weight, 1 flop/byte, 7.08 MB per layer.) Every scheme is
//   below this machine's flops/byte balance at n = 1, so decode is bound by weight bytes when
//   the decode of a chunk costs less than its load: per 16 values, int8 is 4 vector ops
//   (sign-extend, convert, multiply, fma), nf4 9 (nibble split and interleave, widen, one
//   vpermps with AVX-512 or two and a blend with AVX2, multiply, fma), int4 ~6 per output plus
//   a 16-word gather shared by the 8 outputs of a word.

inline bool QuantChunked(const WeightView& w) {
  const QuantParts& q = w.quant;
  if (w.cols % 16 != 0 || q.col0 % 16 != 0) return false;
  if (w.dtype == DType::kAwqInt4) return q.group % 16 == 0;
  if (w.dtype == DType::kNf4) return q.full_cols % 16 == 0 && q.group % 16 == 0;
  return true;
}

inline uint32_t U32At(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline float F32At(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// 16 lanes of int32.
#if defined(__AVX512F__)
struct I16 {
  __m512i v;
};
// Words at base + j·stride for j in [0, 16).
inline I16 Gather16(const uint8_t* base, int stride) {
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(stride));
  return {_mm512_i32gather_epi32(idx, base, 1)};
}
// float(((v >> shift) & 15) - zero), exact.
inline V16 NibbleMinus16(I16 v, int shift, int zero) {
  const __m512i q =
      _mm512_and_si512(_mm512_srl_epi32(v.v, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(15));
  return {_mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(zero)))};
}
struct Nf4Table {
  __m512 t;
  explicit Nf4Table(const float* code) : t(_mm512_loadu_ps(code)) {}
};
// The codes of 16 consecutive values whose nibbles are the 8 bytes at p (high nibble first).
// vpermps reads only bits 0-3 of each index, so lane 2i / 2i + 1 just needs byte i shifted right
// by 4 / 0: spread the two dwords over the lanes (vpermd), one variable shift, one lookup.
inline V16 Nf4Codes16(const uint8_t* p, const Nf4Table& table) {
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i shifts =
      _mm512_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24, 4, 0, 12, 8, 20, 16, 28, 24);
  const __m512i v = _mm512_permutexvar_epi32(
      spread, _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  return {_mm512_permutexvar_ps(_mm512_srlv_epi32(v, shifts), table.t)};
}
#else
struct I16 {
  __m256i lo, hi;
};
inline I16 Gather16(const uint8_t* base, int stride) {
  const __m256i idx =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
  const int* b = reinterpret_cast<const int*>(base);
  const int* b8 = reinterpret_cast<const int*>(base + 8 * static_cast<int64_t>(stride));
  return {_mm256_i32gather_epi32(b, idx, 1), _mm256_i32gather_epi32(b8, idx, 1)};
}
inline V16 NibbleMinus16(I16 v, int shift, int zero) {
  const __m128i s = _mm_cvtsi32_si128(shift);
  const __m256i m = _mm256_set1_epi32(15);
  const __m256i z = _mm256_set1_epi32(zero);
  const __m256i lo = _mm256_sub_epi32(_mm256_and_si256(_mm256_srl_epi32(v.lo, s), m), z);
  const __m256i hi = _mm256_sub_epi32(_mm256_and_si256(_mm256_srl_epi32(v.hi, s), m), z);
  return {_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi)};
}
struct Nf4Table {
  __m256 lo, hi;
  explicit Nf4Table(const float* code) : lo(_mm256_loadu_ps(code)), hi(_mm256_loadu_ps(code + 8)) {}
};
// Index bits 0-2 pick within a table half (vpermps ignores the rest), bit 3 picks the half.
inline __m256 Nf4Lookup8(__m256i idx, const Nf4Table& table) {
  const __m256 a = _mm256_permutevar8x32_ps(table.lo, idx);
  const __m256 b = _mm256_permutevar8x32_ps(table.hi, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3
}
// As the AVX-512 version: each of the 4 bytes of a dword, broadcast, shifted to its two lanes.
inline V16 Nf4Codes16(const uint8_t* p, const Nf4Table& table) {
  const __m256i shifts = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);
  const __m256i lo = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(U32At(p))), shifts);
  const __m256i hi = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(U32At(p + 4))), shifts);
  return {Nf4Lookup8(lo, table), Nf4Lookup8(hi, table)};
}
#endif

// One row of an int8 window: value = float(code) * scale.
struct Int8Row {
  const uint8_t* codes;  // window column 0
  float scale;
  V16 Load(int64_t c) const {
    return Mul16(I8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + c))), scale);
  }
};

// One row of an nf4 window: value = code[nibble] * absmax[block]. Load(c) must be called with
// c = 0, 16, 32, ... in order (the block is tracked, never divided for: an integer division per
// chunk would cost as much as the chunk's arithmetic).
struct Nf4Row {
  Nf4Row(const uint8_t* data, const QuantParts* q, const Nf4Table* table, int64_t e0)
      : data(data), q(q), table(table), e0(e0) {}
  Nf4Row() = default;

  const uint8_t* data = nullptr;  // the whole weight's packed codes
  const QuantParts* q = nullptr;
  const Nf4Table* table = nullptr;
  int64_t e0 = 0;  // element index of window column 0 (a multiple of 16)
  mutable int64_t block = -1;
  mutable int64_t block_end = 0;   // first element of the next block
  mutable int64_t nested = 0;      // block / nested_group
  mutable int64_t nested_end = 0;  // first block of the next nested block
  mutable float absmax = 0.0f;

  V16 Load(int64_t c) const {
    const int64_t e = e0 + c;
    if (e >= block_end || block < 0) {
      if (block < 0) {
        block = e / q->group;
        if (q->nested_code != nullptr) {
          nested = block / q->nested_group;
          nested_end = (nested + 1) * q->nested_group;
        }
      } else {
        ++block;
        if (q->nested_code != nullptr && block >= nested_end) {
          ++nested;
          nested_end += q->nested_group;
        }
      }
      block_end = (block + 1) * q->group;
      if (q->nested_code == nullptr) {
        absmax = F32At(q->absmax + 4 * block);
      } else {  // as Nf4Absmax: two roundings
        const float code = F32At(q->nested_code + 4 * static_cast<int64_t>(q->absmax[block]));
        absmax = code * F32At(q->nested_absmax + 4 * nested) + q->nested_offset;
      }
    }
    return Mul16(Nf4Codes16(data + e / 2, *table), absmax);
  }
};

// R decoded rows x T tokens, F32 order; cols a multiple of 16.
template <class Row, int R, int T>
void TileDecoded(const Row* rows, int64_t cols, const float* x, int64_t ldx, int t0, GemmOut out,
                 int64_t r) {
  V16 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = Zero16();
  }
  for (int64_t c = 0; c < cols; c += 16) {
    V16 wv[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wv[i] = rows[i].Load(c);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      const V16 xv = Load16(x + (t0 + t) * ldx + c);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) acc[i][t] = Fma16(wv[i], xv, acc[i][t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) out.y[(t0 + t) * out.ldy + r + i] = Reduce16(acc[i][t]);
  }
}

template <class Row, int R>
void RowsDecoded(const Row* rows, int64_t cols, const float* x, int64_t ldx, int n, GemmOut out,
                 int64_t r) {
  int t = 0;
  for (; t + kF32Tokens <= n; t += kF32Tokens) {
    // Decoders carry per-row state (nf4's current block): each token tile starts from a copy.
    Row copy[R];
    for (int i = 0; i < R; ++i) copy[i] = rows[i];
    TileDecoded<Row, R, kF32Tokens>(copy, cols, x, ldx, t, out, r);
  }
  for (; t < n; ++t) {
    Row copy[R];
    for (int i = 0; i < R; ++i) copy[i] = rows[i];
    TileDecoded<Row, R, 1>(copy, cols, x, ldx, t, out, r);
  }
}

// Up to this many tokens (decode) the artifact kernels decode each chunk in registers for every
// token tile. Beyond it (prefill) a call decodes kGemmScratchRows rows at a time into scratch
// once and runs the plain F32 tiles over all its tokens: the same values in the same order, with
// the decoding paid once per row instead of once per token tile.
constexpr int kFusedMaxTokens = 2;

// The F32 tiles over `count` decoded rows (row i at decoded + i·cols) for output rows r, r + 1, ...
void TilesOverDecoded(const float* decoded, int count, int64_t cols, const float* x, int64_t ldx,
                      int n, GemmOut out, int64_t r) {
  const uint8_t* rows[kF32Rows];
  int i = 0;
  for (; i + kF32Rows <= count; i += kF32Rows) {
    for (int j = 0; j < kF32Rows; ++j) {
      rows[j] = reinterpret_cast<const uint8_t*>(decoded + (i + j) * cols);
    }
    RowsF32<DType::kF32, kF32Rows>(rows, cols, x, ldx, n, out, r + i);
  }
  for (; i < count; ++i) {
    rows[0] = reinterpret_cast<const uint8_t*>(decoded + i * cols);
    RowsF32<DType::kF32, 1>(rows, cols, x, ldx, n, out, r + i);
  }
}

// Rows [r0, r1) through scratch: `make(r)` gives row r's decoder.
template <class Row, class Make>
void GemmViaScratch(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
                    GemmOut out, float* scratch, Make make) {
  for (int64_t r = r0; r < r1; r += kGemmScratchRows) {
    const int count = static_cast<int>(std::min<int64_t>(kGemmScratchRows, r1 - r));
    for (int i = 0; i < count; ++i) {
      const Row row = make(r + i);
      float* dst = scratch + i * w.cols;
      for (int64_t c = 0; c < w.cols; c += 16) Store16(dst + c, row.Load(c));
    }
    TilesOverDecoded(scratch, count, w.cols, x, ldx, n, out, r);
  }
}

// int8 per channel. Decode: kF32Rows rows x 1 token per tile, 16 codes per chunk sign-extended,
// converted and scaled (4 vector ops). SmolLM2 q_proj [576, 576] at n = 1: 663,552 flops, reads
// 331,776 code bytes + 2,304 scale bytes (2.0 flops/byte); gate/up [1536, 576] and down
// [576, 1536]: 1,769,472 flops, 890,880 bytes.
void GemmInt8(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
              GemmOut out, float* scratch) {
  const QuantParts& q = w.quant;
  auto row = [&](int64_t r) {
    const int64_t g = q.row0 + r;
    return Int8Row{w.data + g * q.full_cols + q.col0, F32At(q.scales + 4 * g)};
  };
  if (n > kFusedMaxTokens) {
    return GemmViaScratch<Int8Row>(w, r0, r1, x, ldx, n, out, scratch, row);
  }
  int64_t r = r0;
  Int8Row rows[kF32Rows];
  for (; r + kF32Rows <= r1; r += kF32Rows) {
    for (int i = 0; i < kF32Rows; ++i) rows[i] = row(r + i);
    RowsDecoded<Int8Row, kF32Rows>(rows, w.cols, x, ldx, n, out, r);
  }
  for (; r < r1; ++r) {
    rows[0] = row(r);
    RowsDecoded<Int8Row, 1>(rows, w.cols, x, ldx, n, out, r);
  }
}

// nf4. Decode: kF32Rows rows x 1 token per tile, 16 codes per chunk from 8 bytes (vpermd +
// vpsrlvd + one vpermps lookup with AVX-512; two and a blend with AVX2), times the block's
// absmax. SmolLM2 q_proj at n = 1: 663,552 flops, reads 165,888 code bytes + 20,736 absmax bytes
// (5,184 + 84 with double quantization): 3.6 flops/byte; gate/up/down: 1,769,472 flops, 497,664
// bytes.
void GemmNf4(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
             GemmOut out, float* scratch) {
  const QuantParts& q = w.quant;
  float code[16];
  std::memcpy(code, q.code, sizeof(code));
  const Nf4Table table(code);
  auto row = [&](int64_t r) {
    return Nf4Row{w.data, &q, &table, (q.row0 + r) * q.full_cols + q.col0};
  };
  if (n > kFusedMaxTokens) {
    return GemmViaScratch<Nf4Row>(w, r0, r1, x, ldx, n, out, scratch, row);
  }
  int64_t r = r0;
  Nf4Row rows[kF32Rows];
  for (; r + kF32Rows <= r1; r += kF32Rows) {
    for (int i = 0; i < kF32Rows; ++i) rows[i] = row(r + i);
    RowsDecoded<Nf4Row, kF32Rows>(rows, w.cols, x, ldx, n, out, r);
  }
  for (; r < r1; ++r) {
    rows[0] = row(r);
    RowsDecoded<Nf4Row, 1>(rows, w.cols, x, ldx, n, out, r);
  }
}

// int4 AWQ, SmolLM2 q_proj at n = 1 (G = 64): 663,552 flops, reads 165,888 qweight bytes +
// 2,592 qzeros + 10,368 scales bytes (3.7 flops/byte); gate/up [1536, 576]: 1,769,472 flops,
// 476,928 bytes; down [576, 1536]: 1,769,472 flops, 476,928 bytes. The weight is stored
// transposed ([in, out / 8]), so a row of W (an output) is a column of qweight: TileAwq gathers
// it (the AVX2 decode path and the ragged rows), AwqDecode16 (AVX-512 decode) reads rows of
// qweight and keeps the F32-order lanes transposed instead.
//
// AWQ: window rows r .. r + R - 1, which are global outputs o .. o + R - 1 of one int32 word
// column (o % R == 0, R divides 8), x T tokens. The 16 words of a chunk (inputs k .. k + 15,
// stride out/2 bytes apart) are gathered once for the R outputs; each output shifts out its
// nibble, subtracts its group's zero point and scales: float(q - z) * s, as the reference.
template <int R, int T>
void TileAwq(const WeightView& w, int64_t r, const float* x, int64_t ldx, int t0, GemmOut out) {
  const QuantParts& q = w.quant;
  const int64_t o = q.row0 + r;
  const int64_t words = q.full_rows / 8;
  const int stride = static_cast<int>(4 * words);
  const uint8_t* column = w.data + 4 * (o / 8);
  int shift[R];
  int zero[R];
  float scale[R];
  for (int i = 0; i < R; ++i) shift[i] = 4 * kAwqNibble[(o + i) % 8];
  V16 acc[R][T];
#pragma GCC unroll 8
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[i][t] = Zero16();
  }
  // The group is tracked, not divided for (chunks never straddle groups).
  int64_t group = q.col0 / q.group - 1;
  int64_t group_end = q.col0;
  for (int64_t c = 0; c < w.cols; c += 16) {
    const int64_t k = q.col0 + c;
    if (k >= group_end) {
      ++group;
      group_end = (group + 1) * q.group;
      const uint32_t zw = U32At(q.zeros + 4 * (group * words + o / 8));
      for (int i = 0; i < R; ++i) {
        zero[i] = static_cast<int>((zw >> shift[i]) & 15u);
        scale[i] = HalfAt(q.scales + 2 * (group * q.full_rows + o + i));
      }
    }
    const I16 wd = Gather16(column + k * stride, stride);
    V16 xv[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xv[t] = Load16(x + (t0 + t) * ldx + c);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const V16 wv = Mul16(NibbleMinus16(wd, shift[i], zero[i]), scale[i]);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) acc[i][t] = Fma16(wv, xv[t], acc[i][t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) out.y[(t0 + t) * out.ldy + r + i] = Reduce16(acc[i][t]);
  }
}

// AWQ rows r .. r + R - 1 (as TileAwq) decoded into dst (R rows of w.cols floats).
template <int R>
void DecodeAwq(const WeightView& w, int64_t r, float* dst) {
  const QuantParts& q = w.quant;
  const int64_t o = q.row0 + r;
  const int64_t words = q.full_rows / 8;
  const int stride = static_cast<int>(4 * words);
  const uint8_t* column = w.data + 4 * (o / 8);
  int shift[R];
  int zero[R];
  float scale[R];
  for (int i = 0; i < R; ++i) shift[i] = 4 * kAwqNibble[(o + i) % 8];
  // The group is tracked, not divided for (chunks never straddle groups).
  int64_t group = q.col0 / q.group - 1;
  int64_t group_end = q.col0;
  for (int64_t c = 0; c < w.cols; c += 16) {
    const int64_t k = q.col0 + c;
    if (k >= group_end) {
      ++group;
      group_end = (group + 1) * q.group;
      const uint32_t zw = U32At(q.zeros + 4 * (group * words + o / 8));
      for (int i = 0; i < R; ++i) {
        zero[i] = static_cast<int>((zw >> shift[i]) & 15u);
        scale[i] = HalfAt(q.scales + 2 * (group * q.full_rows + o + i));
      }
    }
    const I16 wd = Gather16(column + k * stride, stride);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      Store16(dst + i * w.cols + c, Mul16(NibbleMinus16(wd, shift[i], zero[i]), scale[i]));
    }
  }
}

// Tiles: kAwqRows outputs (the gather serves them all) x kAwqTokens tokens, split in two when
// the R·T accumulators would not fit in registers (kAwqMaxAcc V16 values).
#if defined(__AVX512F__)
constexpr int kAwqRows = 8;
constexpr int kAwqTokens = 2;
constexpr int kAwqMaxAcc = 16;
#else
constexpr int kAwqRows = 4;
constexpr int kAwqTokens = 2;
constexpr int kAwqMaxAcc = 4;
#endif

template <int R>
void RowsAwq(const WeightView& w, int64_t r, const float* x, int64_t ldx, int n, GemmOut out) {
  int t = 0;
  if constexpr (R * kAwqTokens <= kAwqMaxAcc) {
    for (; t + kAwqTokens <= n; t += kAwqTokens) TileAwq<R, kAwqTokens>(w, r, x, ldx, t, out);
  } else {
    for (; t + kAwqTokens <= n; t += kAwqTokens) {
      TileAwq<R / 2, kAwqTokens>(w, r, x, ldx, t, out);
      TileAwq<R / 2, kAwqTokens>(w, r + R / 2, x, ldx, t, out);
    }
  }
  for (; t < n; ++t) TileAwq<R, 1>(w, r, x, ldx, t, out);
}

#if defined(__AVX512F__)
// AWQ at decode without gathers: 16 outputs (two int32 words, o % 8 == 0) x one token, inputs k
// in order. Row k's two words are loaded with one 8-byte load and spread to the 16 output lanes
// (natural order: vpermd + per-lane shift); acc[j] holds, for each of the 16 outputs, lane j of
// its F32-order accumulator (the inputs k ≡ j mod 16), and the vertical tree acc[j] + acc[j + 8],
// ... at the end is Reduce16 of every output: the F32 order exactly. The weight is
// fma(float(q), s, -(z·s)), which equals float(q - z)·s exactly (every term is exact in float32
// for 4-bit q, z and an f16 scale). Per 16 inputs x 16 outputs: 16 loads, 16 x (vpermd, vpsrlvd,
// vpand, vcvtdq2ps, 2 fma).
void AwqDecode16(const WeightView& w, int64_t r, const float* x, float* y) {
  const QuantParts& q = w.quant;
  const int64_t o = q.row0 + r;
  const int64_t words = q.full_rows / 8;
  const uint8_t* base = w.data + 4 * (o / 8);
  const int64_t stride = 4 * words;
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i shifts =
      _mm512_setr_epi32(0, 16, 4, 20, 8, 24, 12, 28, 0, 16, 4, 20, 8, 24, 12, 28);
  const __m512i m15 = _mm512_set1_epi32(15);
  auto nibbles = [&](const uint8_t* p) {
    const __m512i v = _mm512_permutexvar_epi32(
        spread, _mm512_castsi128_si512(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    return _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(v, shifts), m15));
  };
  __m512 acc[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  __m512 s = _mm512_setzero_ps(), nzs = _mm512_setzero_ps();
  int64_t group = q.col0 / q.group - 1;
  int64_t group_end = q.col0;
  for (int64_t c = 0; c < w.cols; c += 16) {
    const int64_t k = q.col0 + c;
    if (k >= group_end) {
      ++group;
      group_end = (group + 1) * q.group;
      const __m512 z = nibbles(q.zeros + 4 * (group * words + o / 8));
      s = _mm512_cvtph_ps(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(q.scales + 2 * (group * q.full_rows + o))));
      nzs = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, s));
    }
    const uint8_t* p = base + k * stride;
    _mm_prefetch(reinterpret_cast<const char*>(p + 32 * stride), _MM_HINT_T0);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      const __m512 wv = _mm512_fmadd_ps(nibbles(p + j * stride), s, nzs);
      acc[j] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[c + j]), acc[j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) acc[j] = _mm512_add_ps(acc[j], acc[j + 8]);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) acc[j] = _mm512_add_ps(acc[j], acc[j + 4]);
  acc[0] = _mm512_add_ps(acc[0], acc[2]);
  acc[1] = _mm512_add_ps(acc[1], acc[3]);
  _mm512_storeu_ps(y + r, _mm512_add_ps(acc[0], acc[1]));
}
#endif

void GemmAwq(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
             GemmOut out, float* scratch) {
  const int64_t row0 = w.quant.row0;
  if (n > kFusedMaxTokens) {  // a whole word (8 outputs) per gather when aligned
    static_assert(kGemmScratchRows >= 8);
    for (int64_t r = r0; r < r1;) {
      if ((row0 + r) % 8 == 0 && r + 8 <= r1) {
        DecodeAwq<8>(w, r, scratch);
        TilesOverDecoded(scratch, 8, w.cols, x, ldx, n, out, r);
        r += 8;
      } else {
        DecodeAwq<1>(w, r, scratch);
        TilesOverDecoded(scratch, 1, w.cols, x, ldx, n, out, r);
        r += 1;
      }
    }
    return;
  }
  int64_t r = r0;
#if defined(__AVX512F__)
  for (; r < r1 && (row0 + r) % 8 != 0; ++r) RowsAwq<1>(w, r, x, ldx, n, out);
  for (; r + 16 <= r1; r += 16) {
    for (int t = 0; t < n; ++t) AwqDecode16(w, r, x + t * ldx, out.y + t * out.ldy);
  }
#endif
  for (; r < r1 && (row0 + r) % kAwqRows != 0; ++r) RowsAwq<1>(w, r, x, ldx, n, out);
  for (; r + kAwqRows <= r1; r += kAwqRows) RowsAwq<kAwqRows>(w, r, x, ldx, n, out);
  for (; r < r1; ++r) RowsAwq<1>(w, r, x, ldx, n, out);
}

void GemmF32(const WeightView& w, int64_t r0, int64_t r1, const float* x, int64_t ldx, int n,
             GemmOut out, float* scratch) {
  switch (w.dtype) {
    case DType::kF32:
      return GemmF32Typed<DType::kF32>(w, r0, r1, x, ldx, n, out);
    case DType::kF16:
      return GemmF32Typed<DType::kF16>(w, r0, r1, x, ldx, n, out);
    case DType::kBF16:
      return GemmF32Typed<DType::kBF16>(w, r0, r1, x, ldx, n, out);
    case DType::kQ4_0:
      return GemmF32Typed<DType::kQ4_0>(w, r0, r1, x, ldx, n, out);
    case DType::kQ4_1:
      return GemmF32Typed<DType::kQ4_1>(w, r0, r1, x, ldx, n, out);
    case DType::kQ8_0:
      return GemmF32Typed<DType::kQ8_0>(w, r0, r1, x, ldx, n, out);
    case DType::kInt8Channel:
      if (QuantChunked(w)) return GemmInt8(w, r0, r1, x, ldx, n, out, scratch);
      break;
    case DType::kAwqInt4:
      if (QuantChunked(w)) return GemmAwq(w, r0, r1, x, ldx, n, out, scratch);
      break;
    case DType::kNf4:
      if (QuantChunked(w)) return GemmNf4(w, r0, r1, x, ldx, n, out, scratch);
      break;
    default:
      break;
  }
  // Any other type: one row at a time through DequantizeRow (cols floats of scratch).
  const bool quantized = IsQuantizedLinear(w.dtype);
  for (int64_t r = r0; r < r1; ++r) {
    if (quantized) {
      DequantizeQuantizedRow(w.dtype, w.data, w.quant, r, w.cols, scratch);
    } else {
      (void)DequantizeRow(w.dtype, w.data + r * w.row_stride, w.cols, scratch);
    }
    const uint8_t* row = reinterpret_cast<const uint8_t*>(scratch);
    RowsF32<DType::kF32, 1>(&row, w.cols, x, ldx, n, out, r);
  }
}

// ---------------------------------------------------------------------------------------------
// Vector helpers for attention (F32 order dots; element-wise fma / conversions).

float DotF32(const float* a, const float* b, int64_t n) {
  const uint8_t* row = reinterpret_cast<const uint8_t*>(b);
  float y;
  RowsF32<DType::kF32, 1>(&row, n, a, 0, 1, GemmOut{&y, 1}, 0);
  return y;
}

float DotF16(const float* a, const uint16_t* b, int64_t n) {
  const uint8_t* row = reinterpret_cast<const uint8_t*>(b);
  float y;
  RowsF32<DType::kF16, 1>(&row, n, a, 0, 1, GemmOut{&y, 1}, 0);
  return y;
}

void AxpyF32(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

void AxpyF16(float a, const uint16_t* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] = std::fma(a, _cvtsh_ss(x[i]), y[i]);
}

void ToF16(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

void RoundF16(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) y[i] = _cvtsh_ss(_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT));
}

CpuKernels MakeX86Kernels(const char* name) {
  return CpuKernels{
      .name = name,
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
}

}  // namespace
}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_KERNELS_X86_H_
