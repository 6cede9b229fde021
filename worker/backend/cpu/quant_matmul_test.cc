// Matmuls with hub_sync's quantized weights (int8 per channel, int4 AWQ GEMM, nf4 bitsandbytes)
// against a float reference made from quant_formats' Dequantize*.
//
// The kernels promise F32 order on exactly the dequantized values (kernels.h), so the reference
// is the scalar table's F32 matmul of the Dequantize* matrix and every table, every window and
// every split into tasks must give the same bits. As an independent check of the arithmetic, each
// result is also compared with a double-precision sum: F32 order adds a lane's K/16 products
// with one rounding each (fma) and then 4 levels of the reduction tree, so
// |y - exact| <= (K/16 + 4)·u·Σ|w·x| + O(u²), u = 2^-24; the test allows (K/16 + 5)·u·Σ|w·x|.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/backend/cpu/cpu_test_util.h"
#include "worker/backend/cpu/kernels.h"
#include "worker/backend/cpu/matmul.h"
#include "worker/weights/quantized_test_util.h"

namespace shardserve::cpu {
namespace {

using testing::ExpectSameBits;
using testing::RandomFloats;
using testing::SupportedIsas;
using testing::TableFor;

struct Case {
  const char* label;
  quant::QuantScheme scheme;
  quant::QuantParams params;
  int64_t out, in;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

// SmolLM2-like widths (576 = 9 blocks of 64, 1536), the tiny test model's, and widths that are
// not whole 16-value chunks (the row-at-a-time path) or whose nf4 blocks straddle rows.
std::vector<Case> Cases() {
  return {
      {"int8_576", quant::QuantScheme::kInt8, {}, 72, 576},
      {"int8_odd", quant::QuantScheme::kInt8, {}, 13, 40},
      {"int4_g64_576", quant::QuantScheme::kInt4, {64, false}, 96, 576},
      {"int4_g128_1536", quant::QuantScheme::kInt4, {128, false}, 64, 1536},
      {"int4_g32_64", quant::QuantScheme::kInt4, {32, false}, 40, 64},
      {"nf4_576", quant::QuantScheme::kNf4, {128, false}, 40, 576},
      {"nf4_dq_1536", quant::QuantScheme::kNf4, {128, true}, 24, 1536},
      {"nf4_dq_straddle", quant::QuantScheme::kNf4, {128, true}, 21, 72},
  };
}

struct Prepared {
  quant::QuantizedTensors stored;
  std::unique_ptr<shardserve::testing::StoredViews> views;
  TensorView view;       // the quantized linear
  std::vector<float> w;  // Dequantize* of it, [out, in]
};

Prepared Prepare(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> w = RandomFloats(c.out * c.in, rng, 0.05f);
  Prepared p;
  absl::StatusOr<quant::QuantizedTensors> q =
      quant::QuantizeLinear(c.scheme, "layer", w, c.out, c.in, c.params);
  EXPECT_TRUE(q.ok()) << q.status();
  p.stored = std::move(*q);
  absl::StatusOr<std::vector<float>> ref =
      shardserve::testing::ReferenceDequantize(c.scheme, p.stored, c.out, c.in, c.params);
  EXPECT_TRUE(ref.ok()) << ref.status();
  p.w = std::move(*ref);
  p.views = std::make_unique<shardserve::testing::StoredViews>(p.stored.specs, p.stored.data);
  absl::StatusOr<QuantizedLinear> linear = AssembleQuantizedLinear(
      c.scheme, "layer", p.views->Lookup(),
      c.scheme == quant::QuantScheme::kInt4 ? c.params.group_size : 0, "test");
  EXPECT_TRUE(linear.ok()) << linear.status();
  p.view = linear->view;
  return p;
}

// Rows [r0, r1) x columns [c0, c1) of a row-major [rows, cols] matrix.
std::vector<float> Sub(const std::vector<float>& m, int64_t cols, int64_t r0, int64_t r1,
                       int64_t c0, int64_t c1) {
  std::vector<float> out;
  for (int64_t r = r0; r < r1; ++r) out.insert(out.end(), &m[r * cols + c0], &m[r * cols + c1]);
  return out;
}

// The scalar table's F32-order y[n, rows] = x[n, cols] · wᵀ of a float matrix.
std::vector<float> Reference(const std::vector<float>& w, int64_t rows, int64_t cols,
                             const float* x, int64_t ldx, int n) {
  WeightView f;
  f.data = reinterpret_cast<const uint8_t*>(w.data());
  f.row_stride = 4 * cols;
  f.rows = rows;
  f.cols = cols;
  f.dtype = DType::kF32;
  std::vector<float> y(n * rows), scratch(cols);
  ScalarKernels().gemm_f32(f, 0, rows, x, ldx, n, GemmOut{y.data(), rows}, scratch.data());
  return y;
}

WeightView KernelView(const TensorView& t) {
  absl::StatusOr<std::unique_ptr<CpuMatrix>> m = MakeCpuMatrix(t);
  EXPECT_TRUE(m.ok()) << m.status();
  return (*m)->view();
}

class QuantMatmulTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantMatmulTest, EveryTableGivesTheReferenceBits) {
  const Case& c = GetParam();
  Prepared p = Prepare(c, 11);
  const WeightView w = KernelView(p.view);
  std::mt19937 rng(5);
  for (int n : {1, 2, 3, 5, 9}) {
    const std::vector<float> x = RandomFloats(n * c.in, rng);
    const std::vector<float> want = Reference(p.w, c.out, c.in, x.data(), c.in, n);
    for (CpuIsa isa : SupportedIsas()) {
      const CpuKernels& k = TableFor(isa);
      std::vector<float> y(n * c.out, -1.0f), scratch(kGemmScratchRows * c.in);
      // Uneven task boundaries: an odd split point and the rest.
      const int64_t split = std::min<int64_t>(c.out, 5);
      k.gemm_f32(w, 0, split, x.data(), c.in, n, GemmOut{y.data(), c.out}, scratch.data());
      k.gemm_f32(w, split, c.out, x.data(), c.in, n, GemmOut{y.data(), c.out}, scratch.data());
      ExpectSameBits(y, want, absl::StrCat(c.label, " ", CpuIsaName(isa), " n=", n));

      // Against the exact sum, within the F32-order bound.
      for (int t = 0; t < n; ++t) {
        for (int64_t r = 0; r < c.out; ++r) {
          double exact = 0.0, magnitude = 0.0;
          for (int64_t i = 0; i < c.in; ++i) {
            const double prod = static_cast<double>(p.w[r * c.in + i]) * x[t * c.in + i];
            exact += prod;
            magnitude += std::fabs(prod);
          }
          const double bound = (static_cast<double>(c.in) / 16 + 5) * 0x1p-24 * magnitude;
          ASSERT_LE(std::fabs(y[t * c.out + r] - exact), bound) << c.label << " r=" << r;
        }
      }
    }
  }
}

// Tensor-parallel windows (RowRange / ColumnRange) multiply their part of the matrix.
TEST_P(QuantMatmulTest, WindowsMultiplyTheirPart) {
  const Case& c = GetParam();
  Prepared p = Prepare(c, 12);
  const int64_t r0 = 3, r1 = c.out - 2;  // AWQ: not word-aligned at either end
  // Columns: whole groups for int4; for the others a window that starts mid-way (16-aligned when
  // the width allows it, so both paths are covered across the cases).
  int64_t c0 = c.in / 2, c1 = c.in;
  if (c.scheme == quant::QuantScheme::kInt4) c0 = c.in - c.params.group_size;
  if (c.in % 32 == 0) c0 = c0 / 16 * 16;
  absl::StatusOr<TensorView> rows = p.view.RowRange(r0, r1);
  ASSERT_TRUE(rows.ok()) << rows.status();
  absl::StatusOr<TensorView> window = rows->ColumnRange(c0, c1);
  ASSERT_TRUE(window.ok()) << window.status();
  const WeightView w = KernelView(*window);
  EXPECT_EQ(w.rows, r1 - r0);
  EXPECT_EQ(w.cols, c1 - c0);
  std::mt19937 rng(6);
  const int n = 3;
  const int64_t ldx = c.in;  // x rows are longer than the window: ldx is honoured
  const std::vector<float> x = RandomFloats(n * ldx, rng);
  const std::vector<float> sub = Sub(p.w, c.in, r0, r1, c0, c1);
  const std::vector<float> want = Reference(sub, r1 - r0, c1 - c0, x.data(), ldx, n);
  for (CpuIsa isa : SupportedIsas()) {
    std::vector<float> y(n * w.rows), scratch(kGemmScratchRows * w.cols);
    TableFor(isa).gemm_f32(w, 0, w.rows, x.data(), ldx, n, GemmOut{y.data(), w.rows},
                           scratch.data());
    ExpectSameBits(y, want, absl::StrCat(c.label, " window ", CpuIsaName(isa)));
  }
}

// Through the backend: tasks on a thread pool, both activation modes, and Embedding rows.
TEST_P(QuantMatmulTest, BackendMatmulAndEmbedding) {
  const Case& c = GetParam();
  Prepared p = Prepare(c, 13);
  std::mt19937 rng(7);
  const int n = 4;
  const std::vector<float> x = RandomFloats(n * c.in, rng);
  const std::vector<float> want = Reference(p.w, c.out, c.in, x.data(), c.in, n);
  for (ActivationMode mode : {ActivationMode::kQ8, ActivationMode::kF32}) {
    for (CpuIsa isa : SupportedIsas()) {
      CpuBackendOptions options;
      options.threads = 3;
      options.activations = mode;
      options.isa = isa;
      absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(options);
      ASSERT_TRUE(backend.ok()) << backend.status();
      absl::StatusOr<std::unique_ptr<BackendMatrix>> m = (*backend)->PrepareMatrix(p.view);
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_EQ((*m)->dtype(), p.view.dtype);
      std::vector<float> y(n * c.out);
      const MatmulOutput output{m->get(), y.data()};
      (*backend)->Matmul(x.data(), n, absl::MakeConstSpan(&output, 1));
      ExpectSameBits(y, want, absl::StrCat(c.label, " backend ", CpuIsaName(isa)));

      const int32_t ids[] = {0, static_cast<int32_t>(c.out - 1), 3, -1};
      std::vector<float> rows(4 * c.in);
      (*backend)->Embedding(**m, ids, 4, rows.data());
      std::vector<float> expected = Sub(p.w, c.in, 0, 1, 0, c.in);
      for (int64_t r : {c.out - 1, int64_t{3}}) {
        const std::vector<float> row = Sub(p.w, c.in, r, r + 1, 0, c.in);
        expected.insert(expected.end(), row.begin(), row.end());
      }
      expected.resize(4 * c.in, 0.0f);  // an id outside the table gives zeros
      ExpectSameBits(rows, expected, absl::StrCat(c.label, " embedding"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schemes, QuantMatmulTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.label); });

TEST(QuantMatrixTest, InconsistentViewsAreRefused) {
  Case c{"int4", quant::QuantScheme::kInt4, {64, false}, 16, 128};
  Prepared p = Prepare(c, 1);
  TensorView bad = p.view;
  bad.quant.group = 48;  // does not divide 128
  absl::StatusOr<std::unique_ptr<CpuMatrix>> m = MakeCpuMatrix(bad);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), ::testing::HasSubstr("group size 48"));

  bad = p.view;
  bad.quant.row0 = 8;  // the window would end past the stored rows
  m = MakeCpuMatrix(bad);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), ::testing::HasSubstr("outside the stored [16, 128]"));

  bad = p.view;
  bad.quant.zeros = nullptr;
  m = MakeCpuMatrix(bad);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), ::testing::HasSubstr("no scales or zeros"));
}

}  // namespace
}  // namespace shardserve::cpu
