// Scalar IEEE half-precision helpers shared by the CPU kernels and their tests (the half ->
// float direction is dequantize.h's F16ToF32).
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_FP16_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_FP16_H_

#include <cstdint>
#include <cstring>

#include "worker/weights/dequantize.h"

namespace shardserve::cpu {

// float -> half bits, round to nearest even, as the F16C instruction vcvtps2ph does (also for
// subnormals, overflow to infinity, and NaN: quiet, sign and top payload bits kept).
inline uint16_t F32ToF16Bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  if (abs >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65536 or inf
  if (abs < 0x38800000u) {  // below 2^-14: half subnormal (or zero)
    if (abs <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25 rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // value in units of 2^-24 is m >> shift
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = (abs - 0x38000000u) >> 13;
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) ++r;  // may carry into the exponent: exact
  return static_cast<uint16_t>(sign | r);
}

// half bits -> float: the project's exact conversion (worker/weights/dequantize.h).
using ::shardserve::F16ToF32;

inline float RoundToF16(float f) { return F16ToF32(F32ToF16Bits(f)); }

inline float LoadF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return F16ToF32(h);
}

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_FP16_H_
