#include "worker/backend/cpu/matmul.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "worker/weights/dequantize.h"

namespace shardserve::cpu {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Quantizing more than this many activations is split across the pool (one task per row).
constexpr int64_t kInlineQuantize = 1 << 16;
// Rows per task: a multiple of the kernels' row tile, about 4 tasks per thread so that uneven
// progress balances, and never so few rows that claiming a task costs more than running it.
constexpr int64_t kRowAlign = 16;  // also two int32 words of AWQ outputs
constexpr int64_t kMinTaskRows = 16;

}  // namespace

bool UsesQ8Activations(DType dtype) {
  return dtype == DType::kQ4_0 || dtype == DType::kQ4_1 || dtype == DType::kQ8_0;
}

absl::StatusOr<std::unique_ptr<CpuMatrix>> MakeCpuMatrix(const TensorView& w) {
  if (w.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", w.name, "': a matrix must be 2-D, got shape ", ShapeString(w.shape)));
  }
  if (!CanDequantize(w.dtype)) {
    return absl::UnimplementedError(absl::StrCat(
        "tensor '", w.name, "': the CPU backend cannot multiply dtype ", Sv(DTypeName(w.dtype))));
  }
  if (IsQuantizedLinear(w.dtype)) {
    absl::Status status = CheckQuantParts(w);
    if (!status.ok()) return status;
    if (w.shape[0] <= 0 || w.shape[1] <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", w.name, "': empty matrix ", ShapeString(w.shape)));
    }
    WeightView view;
    view.data = w.data;
    view.rows = w.shape[0];
    view.cols = w.shape[1];
    view.dtype = w.dtype;
    view.quant = w.quant;
    return std::make_unique<CpuMatrix>(view);
  }
  const DTypeInfo& info = GetDTypeInfo(w.dtype);
  if (w.shape[0] <= 0 || w.shape[1] <= 0 ||
      w.shape[1] % static_cast<int64_t>(info.block_elems) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", w.name, "': shape ", ShapeString(w.shape),
                     " is not a whole number of ", Sv(info.name), " blocks per row"));
  }
  if (w.data == nullptr || w.row_stride < w.RowBytes()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", w.name, "': row stride ",
                                                   w.row_stride, " is smaller than a row (",
                                                   w.RowBytes(), " bytes)"));
  }
  WeightView view;
  view.data = w.data;
  view.row_stride = w.row_stride;
  view.rows = w.shape[0];
  view.cols = w.shape[1];
  view.dtype = w.dtype;
  return std::make_unique<CpuMatrix>(view);
}

MatmulRunner::MatmulRunner(const CpuKernels& kernels, ThreadPool& pool, ActivationMode mode)
    : kernels_(kernels), pool_(pool), mode_(mode), row_scratch_(pool.size()) {}

void MatmulRunner::Run(const float* x, int n, absl::Span<const MatmulOutput> outputs) {
  if (n <= 0 || outputs.empty()) return;
  const int64_t cols = outputs[0].w->cols();
  bool need_q8 = false;
  int64_t total_rows = 0;
  for (const MatmulOutput& o : outputs) {
    const DType dtype = o.w->dtype();
    need_q8 |= mode_ == ActivationMode::kQ8 && UsesQ8Activations(dtype);
    total_rows += o.w->rows();
  }

  // Activations quantized once for all outputs.
  const int64_t nb = cols / 32;
  if (need_q8) {
    if (xq_.size() < static_cast<size_t>(n * nb)) xq_.resize(n * nb);
    if (n * cols <= kInlineQuantize) {
      for (int t = 0; t < n; ++t) kernels_.quantize_q8(x + t * cols, cols, xq_.data() + t * nb);
    } else {
      pool_.Run(n,
                [&](int t, int) { kernels_.quantize_q8(x + t * cols, cols, xq_.data() + t * nb); });
    }
  }
  // Rows of floats per thread for weights dequantized before the f32 tiles (kernels.h).
  for (std::vector<float>& s : row_scratch_) {
    if (s.size() < static_cast<size_t>(kGemmScratchRows * cols)) s.resize(kGemmScratchRows * cols);
  }

  const int64_t threads = pool_.size();
  int64_t chunk = (total_rows + 4 * threads - 1) / (4 * threads);
  chunk = std::max(kMinTaskRows, (chunk + kRowAlign - 1) / kRowAlign * kRowAlign);
  tasks_.clear();
  for (const MatmulOutput& o : outputs) {
    const CpuMatrix* w = static_cast<const CpuMatrix*>(o.w);
    const bool q8 = mode_ == ActivationMode::kQ8 && UsesQ8Activations(w->dtype());
    for (int64_t r = 0; r < w->rows(); r += chunk) {
      tasks_.push_back(Task{w, o.y, r, std::min(w->rows(), r + chunk), q8});
    }
  }
  pool_.Run(static_cast<int>(tasks_.size()), [&](int i, int thread) {
    const Task& task = tasks_[i];
    const GemmOut out{task.y, task.w->rows()};
    if (task.q8) {
      kernels_.gemm_q8(task.w->view(), task.r0, task.r1, xq_.data(), nb, n, out);
    } else {
      kernels_.gemm_f32(task.w->view(), task.r0, task.r1, x, cols, n, out,
                        row_scratch_[thread].data());
    }
  });
}

}  // namespace shardserve::cpu
