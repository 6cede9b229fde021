// Microbenchmark of the CPU backend's matmul kernels on SmolLM2-135M's shapes (hidden 576,
// intermediate 1536, 30 layers, vocab 49152): each kernel table and thread count, decode (n = 1)
// and prefill (n = 512), plus the machine's streaming-read bandwidth for reference.
//
//   cpu_ops_bench [--iters N]
//
// Decode rows walk a model's worth of distinct weights (~96 MB: 210 Q4_1 matrices and a Q8_0
// LM head), as a real decode step does, so the numbers include cache misses; GB/s is weight
// bytes per second.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/fp16.h"
#include "worker/backend/cpu/thread_pool.h"

namespace shardserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Random blocks of `dtype` with finite fp16 scales (the values do not matter for speed, but
// NaNs would make the numbers meaningless to print).
std::vector<uint8_t> RandomWeights(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  const DTypeInfo& info = GetDTypeInfo(dtype);
  const int64_t blocks = rows * cols / static_cast<int64_t>(info.block_elems);
  std::vector<uint8_t> out(blocks * info.block_bytes);
  for (size_t i = 0; i < out.size(); i += 4) {
    const uint32_t r = rng();
    std::memcpy(&out[i], &r, std::min<size_t>(4, out.size() - i));
  }
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* blk = &out[b * info.block_bytes];
    const uint16_t d = cpu::F32ToF16Bits(0.01f + 0.001f * (b % 7));
    std::memcpy(blk, &d, 2);
    if (dtype == DType::kQ4_1) {
      const uint16_t m = cpu::F32ToF16Bits(-0.05f);
      std::memcpy(blk + 2, &m, 2);
    }
  }
  return out;
}

struct Weight {
  std::vector<uint8_t> bytes;
  std::unique_ptr<BackendMatrix> m;
  int64_t rows, cols;
};

Weight MakeWeight(Backend& b, DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  Weight w;
  w.bytes = RandomWeights(dtype, rows, cols, rng);
  w.rows = rows;
  w.cols = cols;
  TensorView v;
  v.name = "w";
  v.dtype = dtype;
  v.shape = {rows, cols};
  v.data = w.bytes.data();
  v.row_stride = w.bytes.size() / rows;
  w.m = std::move(*b.PrepareMatrix(v));
  return w;
}

// Streaming read of a buffer much larger than the caches, `threads` threads.
double ReadBandwidth(int threads) {
  const size_t bytes = size_t{1} << 30;
  std::vector<uint64_t> buf(bytes / 8);
  for (size_t i = 0; i < buf.size(); i += 512) buf[i] = i;
  cpu::ThreadPool pool(threads);
  std::vector<uint64_t> sums(threads * 8);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    const int tasks = threads * 16;
    pool.Run(tasks, [&](int task, int thread) {
      const size_t n = buf.size() / tasks;
      const uint64_t* p = buf.data() + task * n;
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (size_t i = 0; i < n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
      }
      sums[thread * 8] += s0 + s1 + s2 + s3;
    });
    best = std::max(best, bytes / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

void Run(int iters) {
  std::printf("machine: streaming read %.1f GB/s (1 thread), %.1f GB/s (2 threads)\n\n",
              ReadBandwidth(1), ReadBandwidth(2));
  std::printf("%-8s %-3s %-34s %10s %10s %10s\n", "isa", "thr", "op", "time", "GB/s", "GOP/s");
  std::vector<CpuIsa> isas = {CpuIsa::kScalar};
  if (DetectCpuIsa() != CpuIsa::kScalar) isas.push_back(CpuIsa::kAvx2);
  if (DetectCpuIsa() == CpuIsa::kAvx512) isas.push_back(CpuIsa::kAvx512);
  for (CpuIsa isa : isas) {
    for (int threads : {1, 2}) {
      std::unique_ptr<Backend> b =
          std::move(*CreateCpuBackend({threads, ActivationMode::kQ8, isa}));
      std::mt19937 rng(1);
      const int layers = isa == CpuIsa::kScalar ? 2 : 30;  // scalar: keep the run short
      std::vector<Weight> ws;
      for (int l = 0; l < layers; ++l) {
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 576, 576, rng));   // q
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 192, 576, rng));   // k
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 192, 576, rng));   // v
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 576, 576, rng));   // o
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 1536, 576, rng));  // gate
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 1536, 576, rng));  // up
        ws.push_back(MakeWeight(*b, DType::kQ4_1, 576, 1536, rng));  // down
      }
      Weight head = MakeWeight(*b, DType::kQ8_0, 49152, 576, rng);
      std::vector<float> x(512 * 1536), y(512 * 49152);
      for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.01f * i);

      // Decode: the matmuls of one token (fused qkv and gate/up as the model issues them).
      auto decode_layers = [&] {
        for (int l = 0; l < layers; ++l) {
          Weight* w = &ws[l * 7];
          const MatmulOutput qkv[] = {{w[0].m.get(), y.data()},
                                      {w[1].m.get(), y.data() + 576},
                                      {w[2].m.get(), y.data() + 768}};
          b->Matmul(x.data(), 1, qkv);
          const MatmulOutput o = {w[3].m.get(), y.data()};
          b->Matmul(x.data(), 1, {&o, 1});
          const MatmulOutput gu[] = {{w[4].m.get(), y.data()}, {w[5].m.get(), y.data() + 1536}};
          b->Matmul(x.data(), 1, gu);
          const MatmulOutput d = {w[6].m.get(), y.data()};
          b->Matmul(x.data(), 1, {&d, 1});
        }
      };
      auto lm_head = [&] {
        const MatmulOutput o = {head.m.get(), y.data()};
        b->Matmul(x.data(), 1, {&o, 1});
      };
      auto time_it = [&](auto fn, int reps) {
        fn();  // warm up
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
          const auto t0 = Clock::now();
          fn();
          t.push_back(Seconds(t0, Clock::now()));
        }
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
      };
      size_t layer_bytes = 0;
      double layer_ops = 0;
      for (const Weight& w : ws) {
        layer_bytes += w.bytes.size();
        layer_ops += 2.0 * w.rows * w.cols;
      }
      const int reps = isa == CpuIsa::kScalar ? 3 : iters;
      const double tl = time_it(decode_layers, reps);
      const double th = time_it(lm_head, reps);
      auto row = [&](const std::string& op, double t, double bytes, double ops) {
        std::printf("%-8s %-3d %-34s %8.3f ms %10.2f %10.2f\n", CpuIsaName(isa), threads,
                    op.c_str(), t * 1e3, bytes / t / 1e9, ops / t / 1e9);
      };
      row(absl::StrFormat("decode %d layers Q4_1 (n=1)", layers), tl, layer_bytes, layer_ops);
      row("decode LM head Q8_0 49152x576", th, head.bytes.size(), 2.0 * 49152 * 576);
      if (layers == 30) {
        std::printf("%-8s %-3d %-34s %8.3f ms  -> %.1f tokens/s matmul-only\n", CpuIsaName(isa),
                    threads, "decode total", (tl + th) * 1e3, 1.0 / (tl + th));
      }
      // Prefill: n = 512 through one layer's gate+up (2 x 1536 x 576).
      const int n = isa == CpuIsa::kScalar ? 16 : 512;
      auto prefill = [&] {
        const MatmulOutput gu[] = {{ws[4].m.get(), y.data()}, {ws[5].m.get(), y.data() + 1536 * n}};
        b->Matmul(x.data(), n, gu);
      };
      const double tp = time_it(prefill, std::max(3, reps / 4));
      row(absl::StrFormat("prefill gate+up Q4_1 (n=%d)", n), tp, ws[4].bytes.size() * 2,
          2.0 * 2 * 1536 * 576 * n);
      // Thread-pool round trip: an empty matmul region.
      cpu::ThreadPool pool(threads);
      const double te = time_it(
          [&] {
            for (int i = 0; i < 1000; ++i) pool.Run(threads, [](int, int) {});
          },
          5);
      std::printf("%-8s %-3d %-34s %8.3f us\n", CpuIsaName(isa), threads, "empty parallel region",
                  te * 1e3);
    }
  }
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) {
  int iters = 20;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::max(1, std::atoi(argv[i + 1]));
  }
  shardserve::Run(iters);
  return 0;
}
