// The CPU implementation of Backend (worker/backend/backend.h): the reference every other
// backend is tested against, and a fast one.
//
// Kernels come in three tables (kernels.h) chosen once at creation: scalar (portable, the
// literal reference), AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL + VNNI). All three compute
// bit-identical results, and with ActivationMode::kQ8 the Q4_0 / Q4_1 / Q8_0 matmuls reproduce
// llama.cpp's x86 ggml-cpu arithmetic bit for bit (activation quantization and vec_dot order).
// Work is split across a persistent thread pool owned by the backend; results do not depend on
// the thread count. Ops are synchronous: Synchronize() has nothing to wait for.
//
// Thread-safety: one thread issues ops (the Backend contract). Matrices, vectors and caches
// from one backend may be used by another CPU backend.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_CPU_BACKEND_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_CPU_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"

namespace shardserve {

enum class CpuIsa { kAuto, kScalar, kAvx2, kAvx512 };

// "auto", "scalar", "avx2", "avx512".
const char* CpuIsaName(CpuIsa isa);

struct CpuBackendOptions {
  // Threads in all (the caller's included); 0: the CPUs this process may run on.
  int threads = 0;
  ActivationMode activations = ActivationMode::kQ8;
  CpuIsa isa = CpuIsa::kAuto;
};

// The best kernel table this machine supports: kAvx512 needs AVX-512 F, BW, VL and VNNI (and
// AVX2/FMA/F16C); kAvx2 needs AVX2, FMA and F16C.
CpuIsa DetectCpuIsa();

// INVALID_ARGUMENT for threads < 0 (or > 1024) or an ISA this CPU (or build) lacks.
absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_CPU_BACKEND_H_
