#include "worker/backend/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace shardserve::cpu {

std::unique_ptr<AlignedBuffer> AlignedBuffer::Create(size_t bytes) {
  const size_t size = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  if (size < bytes) return nullptr;  // overflow
  void* p = std::aligned_alloc(64, size);
  if (p == nullptr) return nullptr;
  return std::unique_ptr<AlignedBuffer>(new (std::nothrow) AlignedBuffer(p, bytes));
}

AlignedBuffer::~AlignedBuffer() { std::free(data_); }

absl::StatusOr<std::unique_ptr<CpuKvCache>> CpuKvCache::Create(const KvCacheSpec& spec) {
  if (spec.layers <= 0 || spec.num_blocks <= 0 || spec.block_tokens <= 0 || spec.kv_heads <= 0 ||
      spec.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layers, num_blocks, block_tokens, kv_heads and head_dim must be positive, got ",
        spec.layers, ", ", spec.num_blocks, ", ", spec.block_tokens, ", ", spec.kv_heads, ", ",
        spec.head_dim));
  }
  if (spec.dtype != DType::kF16 && spec.dtype != DType::kF32) {
    const std::string_view name = DTypeName(spec.dtype);
    return absl::InvalidArgumentError(absl::StrCat("KV cache: dtype must be F16 or F32, got ",
                                                   absl::string_view(name.data(), name.size())));
  }
  // Sizes in 128-bit arithmetic: a spec from a config file must not wrap.
  const unsigned __int128 plane = static_cast<unsigned __int128>(spec.num_blocks) *
                                  spec.block_tokens * spec.kv_heads * spec.head_dim *
                                  (spec.dtype == DType::kF16 ? 2 : 4);
  const unsigned __int128 total = plane * 2 * spec.layers;
  if (total > std::numeric_limits<size_t>::max() / 2) {
    return absl::ResourceExhaustedError("KV cache: the requested size overflows the address space");
  }
  std::unique_ptr<AlignedBuffer> mem = AlignedBuffer::Create(static_cast<size_t>(total));
  if (mem == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: cannot allocate ", static_cast<uint64_t>(total), " bytes of host memory"));
  }
  return std::unique_ptr<CpuKvCache>(
      new CpuKvCache(spec, std::move(mem), static_cast<size_t>(plane)));
}

uint8_t* CpuKvCache::plane(int layer, bool v) const {
  return static_cast<uint8_t*>(mem_->data()) +
         (2 * static_cast<size_t>(layer) + (v ? 1 : 0)) * plane_bytes_;
}

void WriteKv(const CpuKernels& kernels, CpuKvCache& cache, int layer, const float* k,
             const float* v, int n, const int32_t* slots) {
  const KvCacheSpec& spec = cache.spec();
  const int64_t row = static_cast<int64_t>(spec.kv_heads) * spec.head_dim;
  uint8_t* kp = cache.plane(layer, false);
  uint8_t* vp = cache.plane(layer, true);
  const size_t eb = cache.elem_bytes();
  for (int i = 0; i < n; ++i) {
    const size_t off = static_cast<size_t>(slots[i]) * row * eb;
    if (spec.dtype == DType::kF16) {
      kernels.to_f16(k + i * row, reinterpret_cast<uint16_t*>(kp + off), row);
      kernels.to_f16(v + i * row, reinterpret_cast<uint16_t*>(vp + off), row);
    } else {
      std::memcpy(kp + off, k + i * row, row * sizeof(float));
      std::memcpy(vp + off, v + i * row, row * sizeof(float));
    }
  }
}

AttentionRunner::AttentionRunner(const CpuKernels& kernels, ThreadPool& pool)
    : kernels_(kernels), pool_(pool), scratch_(pool.size()) {}

void AttentionRunner::Run(const CpuKvCache& cache, int layer, const float* q, int heads,
                          float scale, const AttentionBatch& batch, float* out) {
  const KvCacheSpec& spec = cache.spec();
  const int kv_heads = spec.kv_heads;
  const int dim = spec.head_dim;
  const int group = heads / kv_heads;
  const int bt = spec.block_tokens;
  const bool f16 = spec.dtype == DType::kF16;
  const size_t eb = cache.elem_bytes();
  const size_t slot_bytes = static_cast<size_t>(kv_heads) * dim * eb;
  const uint8_t* kplane = cache.plane(layer, false);
  const uint8_t* vplane = cache.plane(layer, true);

  token_seq_.resize(batch.num_tokens);
  for (int s = 0; s < batch.num_seqs; ++s) {
    for (int t = batch.seq_start[s]; t < batch.seq_start[s + 1]; ++t) token_seq_[t] = s;
  }

  const int num_tasks = batch.num_tokens * kv_heads;
  pool_.Run(num_tasks, [&](int task, int thread) {
    const int t = task / kv_heads;
    const int g = task % kv_heads;
    const int s = token_seq_[t];
    const int pos = batch.positions[t];
    const int hi = std::min(pos, batch.context_len[s] - 1);  // inclusive
    const int lo = batch.sliding_window > 0 ? std::max(0, pos - batch.sliding_window + 1) : 0;
    const int ctx = hi - lo + 1;
    float* o = out + (static_cast<int64_t>(t) * heads + g * group) * dim;
    if (ctx <= 0) {  // nothing to attend to (outside the contract); keep the output defined
      std::fill(o, o + static_cast<int64_t>(group) * dim, 0.0f);
      return;
    }
    Scratch& sc = scratch_[thread];
    if (sc.q.size() < static_cast<size_t>(group) * dim)
      sc.q.resize(static_cast<size_t>(group) * dim);
    if (sc.scores.size() < static_cast<size_t>(group) * ctx)
      sc.scores.resize(static_cast<size_t>(group) * ctx);
    const float* qg = q + (static_cast<int64_t>(t) * heads + g * group) * dim;
    if (f16) {
      kernels_.round_f16(qg, sc.q.data(), static_cast<int64_t>(group) * dim);
    } else {
      std::copy(qg, qg + static_cast<int64_t>(group) * dim, sc.q.data());
    }
    const int32_t* table = batch.block_tables + static_cast<int64_t>(s) * batch.max_blocks_per_seq;
    auto row_at = [&](const uint8_t* plane, int j) {
      const size_t slot = static_cast<size_t>(table[j / bt]) * bt + j % bt;
      return plane + slot * slot_bytes + static_cast<size_t>(g) * dim * eb;
    };

    // Scores.
    for (int j = lo; j <= hi; ++j) {
      const uint8_t* k = row_at(kplane, j);
      for (int h = 0; h < group; ++h) {
        const float* qh = sc.q.data() + h * dim;
        const float dot = f16 ? kernels_.dot_f16(qh, reinterpret_cast<const uint16_t*>(k), dim)
                              : kernels_.dot_f32(qh, reinterpret_cast<const float*>(k), dim);
        sc.scores[static_cast<size_t>(h) * ctx + (j - lo)] = dot * scale;
      }
    }
    // Softmax per head.
    for (int h = 0; h < group; ++h) {
      float* p = sc.scores.data() + static_cast<size_t>(h) * ctx;
      float max = -std::numeric_limits<float>::infinity();
      for (int j = 0; j < ctx; ++j) max = std::max(max, p[j]);
      double sum = 0.0;
      for (int j = 0; j < ctx; ++j) {
        const float e = std::exp(p[j] - max);
        p[j] = e;
        sum += e;
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int j = 0; j < ctx; ++j) p[j] *= inv;
      if (f16) kernels_.round_f16(p, p, ctx);
    }
    // Weighted sum of V.
    std::fill(o, o + static_cast<int64_t>(group) * dim, 0.0f);
    for (int j = lo; j <= hi; ++j) {
      const uint8_t* v = row_at(vplane, j);
      for (int h = 0; h < group; ++h) {
        const float p = sc.scores[static_cast<size_t>(h) * ctx + (j - lo)];
        float* oh = o + static_cast<int64_t>(h) * dim;
        if (f16) {
          kernels_.axpy_f16(p, reinterpret_cast<const uint16_t*>(v), oh, dim);
        } else {
          kernels_.axpy_f32(p, reinterpret_cast<const float*>(v), oh, dim);
        }
      }
    }
  });
}

}  // namespace shardserve::cpu
