// The AVX-512 kernel table: 512-bit f32 paths and VNNI (vpdpbusd) integer dots (compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vnni; selected at run time when the CPU has them).
#include "worker/backend/cpu/kernels_x86.h"

#if !defined(__AVX512F__) || !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
#error "kernels_avx512.cc needs -mavx512f -mavx512bw -mavx512vl -mavx512vnni"
#endif

namespace shardserve::cpu {

const CpuKernels& Avx512Kernels() {
  static const CpuKernels kKernels = MakeX86Kernels("avx512");
  return kKernels;
}

}  // namespace shardserve::cpu
