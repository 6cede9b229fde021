// Test-only helpers for the CPU backend tests: random weights in GGML block formats (built with
// the simple quantizers below), the kernel tables this machine can run, and bit comparisons.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_CPU_TEST_UTIL_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_CPU_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/fp16.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/weights/dequantize.h"

namespace shardserve::cpu::testing {

inline uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

inline void PutF16(std::vector<uint8_t>& out, float v) {
  const uint16_t h = F32ToF16Bits(v);
  out.push_back(static_cast<uint8_t>(h & 0xFF));
  out.push_back(static_cast<uint8_t>(h >> 8));
}

// ggml's reference quantizers (quantize_row_q4_0_ref, q4_1_ref, q8_0_ref), one row.
inline std::vector<uint8_t> QuantizeRow(DType dtype, const float* x, int64_t cols) {
  std::vector<uint8_t> out;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const float* v = x + 32 * b;
    if (dtype == DType::kQ4_0) {
      float amax = 0, max = 0;
      for (int i = 0; i < 32; ++i) {
        if (std::fabs(v[i]) > amax) {
          amax = std::fabs(v[i]);
          max = v[i];
        }
      }
      const float d = max / -8;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      PutF16(out, d);
      for (int j = 0; j < 16; ++j) {
        const int q0 = std::min(15, static_cast<int>(v[j] * id + 8.5f));
        const int q1 = std::min(15, static_cast<int>(v[j + 16] * id + 8.5f));
        out.push_back(static_cast<uint8_t>(q0 | (q1 << 4)));
      }
    } else if (dtype == DType::kQ4_1) {
      float lo = v[0], hi = v[0];
      for (int i = 1; i < 32; ++i) {
        lo = std::min(lo, v[i]);
        hi = std::max(hi, v[i]);
      }
      const float d = (hi - lo) / 15;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      PutF16(out, d);
      PutF16(out, lo);
      for (int j = 0; j < 16; ++j) {
        const int q0 = std::min(15, static_cast<int>((v[j] - lo) * id + 0.5f));
        const int q1 = std::min(15, static_cast<int>((v[j + 16] - lo) * id + 0.5f));
        out.push_back(static_cast<uint8_t>(q0 | (q1 << 4)));
      }
    } else {  // kQ8_0
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float d = amax / 127;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      PutF16(out, d);
      for (int i = 0; i < 32; ++i)
        out.push_back(static_cast<uint8_t>(static_cast<int8_t>(std::round(v[i] * id))));
    }
  }
  return out;
}

// `rows` x `cols` random weights of `dtype`, rows contiguous. Plain types store the values;
// GGML block types quantize them; other block types (Q5_0, Q6_K, ...) are random bytes with
// finite fp16 scales.
inline std::vector<uint8_t> RandomMatrix(DType dtype, int64_t rows, int64_t cols,
                                         std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(rows * cols);
  for (float& v : values) v = normal(rng) * 0.1f;
  std::vector<uint8_t> out;
  switch (dtype) {
    case DType::kF32:
      out.resize(values.size() * 4);
      std::memcpy(out.data(), values.data(), out.size());
      return out;
    case DType::kF16:
      for (float v : values) PutF16(out, v);
      return out;
    case DType::kBF16:
      for (float v : values) {
        const uint16_t b = F32ToBF16(v);
        out.push_back(static_cast<uint8_t>(b & 0xFF));
        out.push_back(static_cast<uint8_t>(b >> 8));
      }
      return out;
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ8_0:
      for (int64_t r = 0; r < rows; ++r) {
        std::vector<uint8_t> row = QuantizeRow(dtype, values.data() + r * cols, cols);
        out.insert(out.end(), row.begin(), row.end());
      }
      return out;
    default: {
      const DTypeInfo& info = GetDTypeInfo(dtype);
      const int64_t blocks = rows * cols / static_cast<int64_t>(info.block_elems);
      out.resize(blocks * info.block_bytes);
      std::uniform_int_distribution<int> byte(0, 255);
      for (uint8_t& b : out) b = static_cast<uint8_t>(byte(rng));
      // Offsets of the fp16 scales in the block layouts (see dequantize.cc).
      std::vector<size_t> scales;
      if (dtype == DType::kQ5_0 || dtype == DType::kQ5_1) scales = {0};
      if (dtype == DType::kQ5_1) scales.push_back(2);
      if (dtype == DType::kQ6_K) scales = {208};
      if (dtype == DType::kQ4_K || dtype == DType::kQ5_K) scales = {0, 2};
      std::uniform_real_distribution<float> scale(0.001f, 0.01f);
      for (int64_t b = 0; b < blocks; ++b) {
        for (size_t off : scales) {
          const uint16_t h = F32ToF16Bits(scale(rng));
          std::memcpy(&out[b * info.block_bytes + off], &h, 2);
        }
      }
      return out;
    }
  }
}

inline std::vector<float> RandomFloats(int64_t count, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> out(count);
  for (float& v : out) v = normal(rng);
  return out;
}

// The kernel tables this machine runs, scalar first.
inline std::vector<CpuIsa> SupportedIsas() {
  std::vector<CpuIsa> isas = {CpuIsa::kScalar};
  const CpuIsa best = DetectCpuIsa();
  if (best == CpuIsa::kAvx2 || best == CpuIsa::kAvx512) isas.push_back(CpuIsa::kAvx2);
  if (best == CpuIsa::kAvx512) isas.push_back(CpuIsa::kAvx512);
  return isas;
}

inline const CpuKernels& TableFor(CpuIsa isa) {
#if defined(SHARDSERVE_CPU_X86)
  if (isa == CpuIsa::kAvx2) return Avx2Kernels();
  if (isa == CpuIsa::kAvx512) return Avx512Kernels();
#endif
  return ScalarKernels();
}

inline void ExpectSameBits(const std::vector<float>& actual, const std::vector<float>& expected,
                           const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int mismatches = 0;
  for (size_t i = 0; i < actual.size() && mismatches < 8; ++i) {
    if (Bits(actual[i]) != Bits(expected[i])) {
      ++mismatches;
      ADD_FAILURE() << what << " [" << i << "]: got " << actual[i] << ", want " << expected[i];
    }
  }
}

// |actual - expected| <= tol * max(1, |expected|) elementwise.
inline void ExpectNear(const std::vector<float>& actual, const std::vector<double>& expected,
                       double tol, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int mismatches = 0;
  for (size_t i = 0; i < actual.size() && mismatches < 8; ++i) {
    const double err = std::fabs(actual[i] - expected[i]);
    if (!(err <= tol * std::max(1.0, std::fabs(expected[i])))) {
      ++mismatches;
      ADD_FAILURE() << what << " [" << i << "]: got " << actual[i] << ", want " << expected[i];
    }
  }
}

}  // namespace shardserve::cpu::testing

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_CPU_TEST_UTIL_H_
