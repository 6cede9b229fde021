// libFuzzer target for reading hub_sync artifacts: any safetensors bytes, assembled as quantized
// linears of every scheme, must give a Status or a view whose every value the dequantizer and the
// CPU matmul kernels (scalar and the best SIMD table) read inside the input.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/strip.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/backend/cpu/matmul.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/quantized_linear.h"
#include "worker/weights/safetensors.h"

namespace {

using shardserve::TensorView;
namespace quant = shardserve::quant;

void Exercise(const TensorView& view) {
  if (view.NumElements() > (int64_t{1} << 18)) return;  // keep runs fast
  (void)shardserve::DequantizeToF32(view);
  auto matrix = shardserve::cpu::MakeCpuMatrix(view);
  if (!matrix.ok()) return;
  const shardserve::cpu::WeightView& w = (*matrix)->view();
  std::vector<float> x(4 * w.cols, 1.0f), y(4 * w.rows);  // up to 4 tokens
  std::vector<float> scratch(shardserve::cpu::kGemmScratchRows * w.cols);
  for (int n : {1, 2}) {
    shardserve::cpu::ScalarKernels().gemm_f32(w, 0, w.rows, x.data(), w.cols, n, {y.data(), w.rows},
                                              scratch.data());
#if defined(SHARDSERVE_CPU_X86)
    if (shardserve::DetectCpuIsa() != shardserve::CpuIsa::kScalar) {
      shardserve::cpu::Avx2Kernels().gemm_f32(w, 0, w.rows, x.data(), w.cols, n + 2,
                                              {y.data(), w.rows}, scratch.data());
      shardserve::cpu::Avx2Kernels().gemm_f32(w, 0, w.rows, x.data(), w.cols, 1, {y.data(), w.rows},
                                              scratch.data());
    }
    if (shardserve::DetectCpuIsa() == shardserve::CpuIsa::kAvx512) {
      shardserve::cpu::Avx512Kernels().gemm_f32(w, 0, w.rows, x.data(), w.cols, n,
                                                {y.data(), w.rows}, scratch.data());
    }
#endif
  }
  if (view.shape[0] > 1) {
    auto rows = view.RowRange(1, view.shape[0]);
    if (rows.ok()) (void)shardserve::DequantizeToF32(*rows);
  }
  if (view.shape[1] > 16) {
    auto cols = view.ColumnRange(16, view.shape[1]);
    if (cols.ok()) (void)shardserve::DequantizeToF32(*cols);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = shardserve::SafetensorsFile::FromBytes(std::span<const uint8_t>(data, size),
                                                     "fuzz.safetensors");
  if (!file.ok()) return 0;
  const shardserve::StoredTensorLookup lookup =
      [&file](absl::string_view name) -> const TensorView* { return (*file)->Find(name); };
  for (quant::QuantScheme scheme :
       {quant::QuantScheme::kInt8, quant::QuantScheme::kInt4, quant::QuantScheme::kNf4}) {
    const absl::string_view marker = shardserve::QuantizedLinearMarkerSuffix(scheme);
    for (const TensorView& t : (*file)->tensors()) {
      absl::string_view prefix = t.name;
      if (!absl::ConsumeSuffix(&prefix, marker)) continue;
      for (int64_t group : {int64_t{0}, int64_t{64}}) {
        auto linear = shardserve::AssembleQuantizedLinear(scheme, prefix, lookup, group, "fuzz");
        if (linear.ok()) Exercise(linear->view);
      }
    }
  }
  return 0;
}
