// The AVX2 + FMA + F16C kernel table (compiled with -mavx2 -mfma -mf16c only; selected at run
// time when the CPU has them).
#include "worker/backend/cpu/kernels_x86.h"

namespace shardserve::cpu {

const CpuKernels& Avx2Kernels() {
  static const CpuKernels kKernels = MakeX86Kernels("avx2");
  return kKernels;
}

}  // namespace shardserve::cpu
