// Paged KV cache and causal grouped-query attention for the CPU backend.
//
// Cache layout (backend.h): per layer a K plane then a V plane, each [num_blocks, block_tokens,
// kv_heads, head_dim] of f16 or f32, so cache slot s of a layer starts at element
// s * kv_heads * head_dim of its plane.
//
// Attention follows llama.cpp's CPU path without flash attention: scores = scale · (q·K) with q
// rounded to f16 for an f16 cache (f32 accumulation), softmax in f32 after subtracting the max
// (the sum of exponentials accumulated in double, as ggml does), then Σ p·V with p rounded to
// f16 for an f16 cache (f32 accumulation). One task per (token, KV head): the query heads of a
// group share each K and V row while it is in L1.
//
// Roofline per call: reads Σ_t ctx_t · kv_heads · head_dim · 2 · elem_size bytes of K and V
// (from L2 when a sequence's context fits; each row is read once per token), does
// 4 · Σ_t ctx_t · heads · head_dim flops and Σ_t ctx_t · heads exponentials.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_ATTENTION_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/backend/cpu/thread_pool.h"

namespace shardserve::cpu {

// 64-byte aligned host memory, freed with the object.
class AlignedBuffer : public DeviceBuffer {
 public:
  // nullptr when the memory cannot be had (never throws).
  static std::unique_ptr<AlignedBuffer> Create(size_t bytes);
  ~AlignedBuffer() override;
  void* data() override { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const override { return bytes_; }

 private:
  AlignedBuffer(void* data, size_t bytes) : data_(data), bytes_(bytes) {}
  void* data_;
  size_t bytes_;
};

class CpuKvCache : public KvCache {
 public:
  // INVALID_ARGUMENT for a malformed spec or dtype other than F16 / F32; RESOURCE_EXHAUSTED when
  // the memory cannot be allocated.
  static absl::StatusOr<std::unique_ptr<CpuKvCache>> Create(const KvCacheSpec& spec);

  const KvCacheSpec& spec() const override { return spec_; }
  size_t elem_bytes() const { return spec_.dtype == DType::kF16 ? 2 : 4; }
  // First byte of layer `layer`'s K (v = false) or V (v = true) plane.
  uint8_t* plane(int layer, bool v) const;

 private:
  CpuKvCache(const KvCacheSpec& spec, std::unique_ptr<AlignedBuffer> mem, size_t plane_bytes)
      : spec_(spec), mem_(std::move(mem)), plane_bytes_(plane_bytes) {}
  KvCacheSpec spec_;
  std::unique_ptr<AlignedBuffer> mem_;
  size_t plane_bytes_;
};

// Backend::WriteKv.
void WriteKv(const CpuKernels& kernels, CpuKvCache& cache, int layer, const float* k,
             const float* v, int n, const int32_t* slots);

// Backend::Attention. Per-thread scratch lives here; used from one thread at a time.
class AttentionRunner {
 public:
  AttentionRunner(const CpuKernels& kernels, ThreadPool& pool);

  void Run(const CpuKvCache& cache, int layer, const float* q, int heads, float scale,
           const AttentionBatch& batch, float* out);

 private:
  struct Scratch {
    std::vector<float> q;       // the group's query heads (rounded to f16 for an f16 cache)
    std::vector<float> scores;  // [heads per group, context]
  };
  const CpuKernels& kernels_;
  ThreadPool& pool_;
  std::vector<Scratch> scratch_;  // per thread
  std::vector<int32_t> token_seq_;
};

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_ATTENTION_H_
