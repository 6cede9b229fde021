// Row-wise and element-wise ops of the CPU backend: RmsNorm, Rope, SiluMul, Add. Each is a
// single pass over its rows (bandwidth bound: RmsNorm reads x, weight and writes y — 12·n·dim
// bytes, 4 flops per element; Rope 8 bytes and 6 flops per element; SiluMul 12 bytes, one exp
// per element; Add 12 bytes, 1 flop). They run on the calling thread below ~64K elements,
// where starting the pool would cost more than it saves, and on the pool above.
//
// All of them are plain C++ compiled without floating-point contraction, so every ISA and
// thread count gives the same bits.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_ELEMENTWISE_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_ELEMENTWISE_H_

#include <cstdint>
#include <vector>

#include "worker/backend/backend.h"
#include "worker/backend/cpu/thread_pool.h"

namespace shardserve::cpu {

// y = x * (1 / sqrtf(float(Σx² / dim) + eps)) * weight, Σ of float squares in double (ggml).
void RmsNorm(ThreadPool& pool, const float* x, const float* weight, int n, int dim, float eps,
             float* y);

// out = gate / (1 + expf(-gate)) * up.
void SiluMul(ThreadPool& pool, const float* gate, const float* up, int64_t count, float* out);

// out = a + b.
void Add(ThreadPool& pool, const float* a, const float* b, int64_t count, float* out);

// Rotary embedding. cos/sin of (double) position · inv_freq are computed once per distinct
// (inv_freq, scaling, positions) and reused while consecutive calls (q and k of every layer)
// repeat them.
class RopeRunner {
 public:
  void Run(ThreadPool& pool, float* x, int n, int heads, const int32_t* positions,
           const RopeSpec& rope);

 private:
  std::vector<float> inv_freq_;
  int rotary_dim_ = 0;
  float scaling_ = 0.0f;
  std::vector<int32_t> positions_;
  std::vector<float> cos_sin_;  // [n, rotary_dim / 2, 2]
};

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_ELEMENTWISE_H_
