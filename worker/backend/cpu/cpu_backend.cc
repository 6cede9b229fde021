#include "worker/backend/cpu/cpu_backend.h"

#include <sched.h>
#if defined(SHARDSERVE_CPU_X86)
#include <cpuid.h>
#endif

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/backend/cpu/attention.h"
#include "worker/backend/cpu/elementwise.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/backend/cpu/matmul.h"
#include "worker/backend/cpu/thread_pool.h"
#include "worker/weights/dequantize.h"

namespace shardserve {
namespace {

using cpu::AlignedBuffer;
using cpu::CpuKvCache;
using cpu::CpuMatrix;

constexpr int kMaxThreads = 1024;

int AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

const cpu::CpuKernels& KernelsFor(CpuIsa isa) {
  switch (isa) {
#if defined(SHARDSERVE_CPU_X86)
    case CpuIsa::kAvx512:
      return cpu::Avx512Kernels();
    case CpuIsa::kAvx2:
      return cpu::Avx2Kernels();
#endif
    default:
      return cpu::ScalarKernels();
  }
}

class CpuBackend : public Backend {
 public:
  CpuBackend(CpuIsa isa, int threads, ActivationMode mode)
      : isa_(isa),
        mode_(mode),
        kernels_(KernelsFor(isa)),
        pool_(threads),
        matmul_(kernels_, pool_, mode),
        attention_(kernels_, pool_) {}

  std::string Name() const override {
    return absl::StrFormat("cpu (%s, %d thread%s%s)", CpuIsaName(isa_), pool_.size(),
                           pool_.size() == 1 ? "" : "s",
                           mode_ == ActivationMode::kF32 ? ", f32 activations" : "");
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) override {
    std::unique_ptr<AlignedBuffer> buffer = AlignedBuffer::Create(bytes);
    if (buffer == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes of host memory"));
    }
    return std::unique_ptr<DeviceBuffer>(std::move(buffer));
  }

  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void Synchronize() override {}

  absl::StatusOr<std::unique_ptr<BackendMatrix>> PrepareMatrix(const TensorView& w) override {
    absl::StatusOr<std::unique_ptr<CpuMatrix>> m = cpu::MakeCpuMatrix(w);
    if (!m.ok()) return m.status();
    return std::unique_ptr<BackendMatrix>(std::move(*m));
  }

  absl::StatusOr<std::unique_ptr<DeviceBuffer>> PrepareVector(const TensorView& v) override {
    if (v.shape.size() != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", v.name, "': a vector weight must be 1-D, got shape ", ShapeString(v.shape)));
    }
    absl::StatusOr<std::vector<float>> values = DequantizeToF32(v);
    if (!values.ok()) return values.status();
    absl::StatusOr<std::unique_ptr<DeviceBuffer>> buffer = Allocate(values->size() * sizeof(float));
    if (!buffer.ok()) return buffer.status();
    std::memcpy((*buffer)->data(), values->data(), values->size() * sizeof(float));
    return buffer;
  }

  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) override {
    absl::StatusOr<std::unique_ptr<CpuKvCache>> cache = CpuKvCache::Create(spec);
    if (!cache.ok()) return cache.status();
    return std::unique_ptr<KvCache>(std::move(*cache));
  }

  // One DequantizeRow per id (exact for every dtype); ids outside the table give zeros rather
  // than a read past the mapping.
  void Embedding(const BackendMatrix& table, const int32_t* ids, int n, float* out) override {
    const cpu::WeightView& w = static_cast<const CpuMatrix&>(table).view();
    for (int i = 0; i < n; ++i) {
      float* row = out + static_cast<int64_t>(i) * w.cols;
      if (ids[i] < 0 || ids[i] >= w.rows) {
        std::fill(row, row + w.cols, 0.0f);
        continue;
      }
      if (IsQuantizedLinear(w.dtype)) {
        DequantizeQuantizedRow(w.dtype, w.data, w.quant, ids[i], w.cols, row);
      } else {
        (void)DequantizeRow(w.dtype, w.data + static_cast<size_t>(ids[i]) * w.row_stride, w.cols,
                            row);
      }
    }
  }

  void Matmul(const float* x, int n, absl::Span<const MatmulOutput> outputs) override {
    matmul_.Run(x, n, outputs);
  }

  void RmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* y) override {
    cpu::RmsNorm(pool_, x, weight, n, dim, eps, y);
  }

  void Rope(float* x, int n, int heads, const int32_t* positions, const RopeSpec& rope) override {
    rope_.Run(pool_, x, n, heads, positions, rope);
  }

  void WriteKv(KvCache& cache, int layer, const float* k, const float* v, int n,
               const int32_t* slots) override {
    cpu::WriteKv(kernels_, static_cast<CpuKvCache&>(cache), layer, k, v, n, slots);
  }

  void Attention(const KvCache& cache, int layer, const float* q, int heads, float scale,
                 const AttentionBatch& batch, float* out) override {
    attention_.Run(static_cast<const CpuKvCache&>(cache), layer, q, heads, scale, batch, out);
  }

  void SiluMul(const float* gate, const float* up, int64_t count, float* out) override {
    cpu::SiluMul(pool_, gate, up, count, out);
  }

  void Add(const float* a, const float* b, int64_t count, float* out) override {
    cpu::Add(pool_, a, b, count, out);
  }

  void GatherRows(const float* x, const int32_t* rows, int n, int dim, float* out) override {
    for (int i = 0; i < n; ++i) {
      std::memmove(out + static_cast<int64_t>(i) * dim, x + static_cast<int64_t>(rows[i]) * dim,
                   static_cast<size_t>(dim) * sizeof(float));
    }
  }

 private:
  const CpuIsa isa_;
  const ActivationMode mode_;
  const cpu::CpuKernels& kernels_;
  cpu::ThreadPool pool_;
  cpu::MatmulRunner matmul_;
  cpu::AttentionRunner attention_;
  cpu::RopeRunner rope_;
};

}  // namespace

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAuto:
      return "auto";
    case CpuIsa::kScalar:
      return "scalar";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

CpuIsa DetectCpuIsa() {
#if defined(SHARDSERVE_CPU_X86)
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 directly: clang 14's __builtin_cpu_supports does not know "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512vnni");
  if (avx512) return CpuIsa::kAvx512;
  if (avx2) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kScalar;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.threads < 0 || options.threads > kMaxThreads) {
    return absl::InvalidArgumentError(absl::StrCat("cpu backend: threads must be in [0, ",
                                                   kMaxThreads, "], got ", options.threads));
  }
  const CpuIsa best = DetectCpuIsa();
  CpuIsa isa = options.isa == CpuIsa::kAuto ? best : options.isa;
  if (static_cast<int>(isa) > static_cast<int>(best)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cpu backend: isa ", CpuIsaName(isa),
                     " is not supported by this CPU (best: ", CpuIsaName(best), ")"));
  }
  const int threads = options.threads == 0 ? AvailableCpus() : options.threads;
  return std::unique_ptr<Backend>(new CpuBackend(isa, threads, options.activations));
}

}  // namespace shardserve
