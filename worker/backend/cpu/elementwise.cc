#include "worker/backend/cpu/elementwise.h"

#include <algorithm>
#include <cmath>

namespace shardserve::cpu {
namespace {

constexpr int64_t kInlineElems = 1 << 16;
constexpr int64_t kChunkElems = 1 << 14;

// Calls fn(begin, end) over [0, count) in chunks, on the pool when count is large.
template <typename Fn>
void ForChunks(ThreadPool& pool, int64_t count, int64_t chunk, Fn fn) {
  if (count <= kInlineElems || pool.size() == 1) {
    fn(int64_t{0}, count);
    return;
  }
  const int tasks = static_cast<int>((count + chunk - 1) / chunk);
  pool.Run(tasks, [&](int task, int) {
    const int64_t begin = task * chunk;
    fn(begin, std::min(count, begin + chunk));
  });
}

}  // namespace

void RmsNorm(ThreadPool& pool, const float* x, const float* weight, int n, int dim, float eps,
             float* y) {
  const int64_t rows_per_task = std::max<int64_t>(1, kChunkElems / std::max(dim, 1));
  auto rows = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * dim;
      float* yr = y + r * dim;
      double sum = 0.0;
      for (int i = 0; i < dim; ++i) {
        const float sq = xr[i] * xr[i];
        sum += static_cast<double>(sq);
      }
      const float mean = static_cast<float>(sum / dim);
      const float scale = 1.0f / std::sqrt(mean + eps);
      for (int i = 0; i < dim; ++i) yr[i] = (xr[i] * scale) * weight[i];
    }
  };
  if (static_cast<int64_t>(n) * dim <= kInlineElems || pool.size() == 1) {
    rows(0, n);
    return;
  }
  const int tasks = static_cast<int>((n + rows_per_task - 1) / rows_per_task);
  pool.Run(tasks, [&](int task, int) {
    const int64_t r0 = task * rows_per_task;
    rows(r0, std::min<int64_t>(n, r0 + rows_per_task));
  });
}

void SiluMul(ThreadPool& pool, const float* gate, const float* up, int64_t count, float* out) {
  ForChunks(pool, count, kChunkElems, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float g = gate[i];
      out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
  });
}

void Add(ThreadPool& pool, const float* a, const float* b, int64_t count, float* out) {
  ForChunks(pool, count, kChunkElems, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = a[i] + b[i];
  });
}

void RopeRunner::Run(ThreadPool& pool, float* x, int n, int heads, const int32_t* positions,
                     const RopeSpec& rope) {
  const int half = rope.rotary_dim / 2;
  const bool same = rotary_dim_ == rope.rotary_dim && scaling_ == rope.attention_scaling &&
                    inv_freq_ == rope.inv_freq && positions_.size() == static_cast<size_t>(n) &&
                    std::equal(positions_.begin(), positions_.end(), positions);
  if (!same) {
    inv_freq_ = rope.inv_freq;
    rotary_dim_ = rope.rotary_dim;
    scaling_ = rope.attention_scaling;
    positions_.assign(positions, positions + n);
    cos_sin_.resize(static_cast<size_t>(n) * half * 2);
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < half; ++k) {
        const double theta =
            static_cast<double>(positions[i]) * static_cast<double>(rope.inv_freq[k]);
        float* cs = &cos_sin_[(static_cast<size_t>(i) * half + k) * 2];
        cs[0] = static_cast<float>(std::cos(theta)) * rope.attention_scaling;
        cs[1] = static_cast<float>(std::sin(theta)) * rope.attention_scaling;
      }
    }
  }
  const int dim = rope.head_dim;
  auto tokens = [&](int64_t t0, int64_t t1) {
    for (int64_t i = t0; i < t1; ++i) {
      const float* cs = &cos_sin_[static_cast<size_t>(i) * half * 2];
      for (int h = 0; h < heads; ++h) {
        float* v = x + (i * heads + h) * dim;
        for (int k = 0; k < half; ++k) {
          const int i0 = rope.interleaved ? 2 * k : k;
          const int i1 = rope.interleaved ? 2 * k + 1 : k + half;
          const float x0 = v[i0];
          const float x1 = v[i1];
          const float c = cs[2 * k];
          const float s = cs[2 * k + 1];
          v[i0] = x0 * c - x1 * s;
          v[i1] = x0 * s + x1 * c;
        }
      }
    }
  };
  const int64_t elems = static_cast<int64_t>(n) * heads * dim;
  if (elems <= kInlineElems || pool.size() == 1) {
    tokens(0, n);
    return;
  }
  const int64_t per_task = std::max<int64_t>(1, kChunkElems / (static_cast<int64_t>(heads) * dim));
  const int tasks = static_cast<int>((n + per_task - 1) / per_task);
  pool.Run(tasks, [&](int task, int) {
    const int64_t t0 = task * per_task;
    tokens(t0, std::min<int64_t>(n, t0 + per_task));
  });
}

}  // namespace shardserve::cpu
