// Matmul for the CPU backend: weights prepared as zero-copy views, activations quantized per
// call (ActivationMode::kQ8) and the rows of every output split into tasks for the thread pool.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_MATMUL_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_MATMUL_H_

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/backend/cpu/thread_pool.h"

namespace shardserve::cpu {

// A weight as the CPU backend multiplies it: the (possibly strided, unaligned) mapped view.
class CpuMatrix : public BackendMatrix {
 public:
  explicit CpuMatrix(const WeightView& view) : view_(view) {}
  int64_t rows() const override { return view_.rows; }
  int64_t cols() const override { return view_.cols; }
  DType dtype() const override { return view_.dtype; }
  size_t device_bytes() const override { return 0; }
  const WeightView& view() const { return view_; }

 private:
  WeightView view_;
};

// Checks a 2-D weight view (shape, type, strides, block alignment) and wraps it.
// INVALID_ARGUMENT / UNIMPLEMENTED naming the tensor.
absl::StatusOr<std::unique_ptr<CpuMatrix>> MakeCpuMatrix(const TensorView& w);

// True when ActivationMode::kQ8 multiplies `dtype` with quantized activations.
bool UsesQ8Activations(DType dtype);

// Runs Backend::Matmul. Owns the per-call scratch (quantized activations, per-thread rows), so
// one instance serves one backend and is used from one thread at a time.
class MatmulRunner {
 public:
  MatmulRunner(const CpuKernels& kernels, ThreadPool& pool, ActivationMode mode);

  void Run(const float* x, int n, absl::Span<const MatmulOutput> outputs);

 private:
  struct Task {
    const CpuMatrix* w;
    float* y;
    int64_t r0, r1;
    bool q8;
  };

  const CpuKernels& kernels_;
  ThreadPool& pool_;
  ActivationMode mode_;
  std::vector<Q8Block> xq_;
  std::vector<std::vector<float>> row_scratch_;  // per thread
  std::vector<Task> tasks_;
};

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_MATMUL_H_
