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
    default:
      break;
  }
  // Any other type: one row at a time through DequantizeRow (cols floats of scratch).
  for (int64_t r = r0; r < r1; ++r) {
    (void)DequantizeRow(w.dtype, w.data + r * w.row_stride, w.cols, scratch);
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
