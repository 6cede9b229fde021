// The kernel tables against llama.cpp's own results (testdata/ggml_q8_golden.bin) and against
// each other: every table must give the scalar table's bits.
#include "worker/backend/cpu/kernels.h"

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/backend/cpu/cpu_test_util.h"

namespace shardserve::cpu {
namespace {

using testing::Bits;
using testing::ExpectSameBits;
using testing::RandomFloats;
using testing::RandomMatrix;
using testing::SupportedIsas;
using testing::TableFor;

TEST(Fp16Test, FloatToHalfRoundTripsAndRoundsHalfToEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0) continue;  // NaN payloads: quieted
    ASSERT_EQ(F32ToF16Bits(F16ToF32(static_cast<uint16_t>(h))), h) << h;
  }
  EXPECT_EQ(F32ToF16Bits(1.0f + 0x1p-11f), 0x3C00);      // tie -> even (down)
  EXPECT_EQ(F32ToF16Bits(1.0f + 3 * 0x1p-11f), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(F32ToF16Bits(65520.0f), 0x7C00);             // rounds to infinity
  EXPECT_EQ(F32ToF16Bits(65519.99f), 0x7BFF);
  EXPECT_EQ(F32ToF16Bits(0x1p-25f), 0x0000);  // tie -> zero
  EXPECT_EQ(F32ToF16Bits(0x1.000002p-25f), 0x0001);
  EXPECT_EQ(F32ToF16Bits(-0x1p-24f * 3), 0x8003);
}

TEST(Fp16Test, EveryTableConvertsLikeTheScalarOne) {
  std::mt19937 rng(1);
  std::vector<float> x(1 << 16);
  for (float& v : x) {
    const uint32_t bits = rng();
    std::memcpy(&v, &bits, 4);
  }
  for (float& v : x) {  // mostly in and near half's range
    if (rng() % 2)
      v = std::ldexp(static_cast<float>(rng() % 100000) / 7.0f, static_cast<int>(rng() % 50) - 40);
  }
  std::vector<uint16_t> want(x.size());
  ScalarKernels().to_f16(x.data(), want.data(), x.size());
  for (CpuIsa isa : SupportedIsas()) {
    std::vector<uint16_t> got(x.size());
    TableFor(isa).to_f16(x.data(), got.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << CpuIsaName(isa) << " " << x[i];
  }
}

// --- llama.cpp's own outputs ---------------------------------------------------------------

struct GoldenCase {
  DType dtype;
  int rows, cols, n;
  std::vector<uint8_t> w;
  std::vector<float> x;
  std::vector<uint8_t> xq;  // ggml block_q8_0 (34 B) or block_q8_1 (36 B) per 32 values
  std::vector<float> y;
};

std::vector<GoldenCase> ReadGolden() {
  const char* root = std::getenv("SHARDSERVE_SOURCE_DIR");
  const std::string path =
      std::string(root != nullptr ? root : ".") + "/worker/backend/cpu/testdata/ggml_q8_golden.bin";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing " << path;
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > bytes.size()) {
      ADD_FAILURE() << "truncated " << path;
      return false;
    }
    std::memcpy(dst, bytes.data() + pos, n);
    pos += n;
    return true;
  };
  char magic[4];
  uint32_t version = 0, count = 0;
  std::vector<GoldenCase> cases;
  if (!take(magic, 4) || std::memcmp(magic, "GGQ8", 4) != 0 || !take(&version, 4) ||
      !take(&count, 4)) {
    ADD_FAILURE() << "bad header in " << path;
    return cases;
  }
  for (uint32_t c = 0; c < count; ++c) {
    uint32_t head[4];
    if (!take(head, sizeof(head))) break;
    GoldenCase g;
    g.dtype = *DTypeFromGgmlType(head[0]);
    g.rows = head[1];
    g.cols = head[2];
    g.n = head[3];
    const size_t nb = g.cols / 32;
    g.w.resize(g.rows * nb * GetDTypeInfo(g.dtype).block_bytes);
    g.x.resize(static_cast<size_t>(g.n) * g.cols);
    g.xq.resize(g.n * nb * (g.dtype == DType::kQ4_1 ? 36 : 34));
    g.y.resize(static_cast<size_t>(g.n) * g.rows);
    if (!take(g.w.data(), g.w.size()) || !take(g.x.data(), g.x.size() * 4) ||
        !take(g.xq.data(), g.xq.size()) || !take(g.y.data(), g.y.size() * 4)) {
      break;
    }
    cases.push_back(std::move(g));
  }
  return cases;
}

TEST(GgmlGoldenTest, EveryTableReproducesLlamaCppBitForBit) {
  const std::vector<GoldenCase> cases = ReadGolden();
  ASSERT_EQ(cases.size(), 9u);
  for (CpuIsa isa : SupportedIsas()) {
    const CpuKernels& k = TableFor(isa);
    for (const GoldenCase& g : cases) {
      SCOPED_TRACE(::testing::Message() << CpuIsaName(isa) << " " << DTypeName(g.dtype) << " "
                                        << g.rows << "x" << g.cols << " n=" << g.n);
      const int nb = g.cols / 32;
      const bool q8_1 = g.dtype == DType::kQ4_1;
      const size_t ab = q8_1 ? 36 : 34;
      std::vector<Q8Block> xq(static_cast<size_t>(g.n) * nb);
      for (int t = 0; t < g.n; ++t)
        k.quantize_q8(g.x.data() + t * g.cols, g.cols, xq.data() + t * nb);
      for (size_t b = 0; b < xq.size(); ++b) {
        const uint8_t* ref = g.xq.data() + b * ab;
        uint16_t d, s;
        std::memcpy(&d, ref, 2);
        std::memcpy(&s, ref + 2, 2);
        ASSERT_EQ(Bits(xq[b].d), Bits(F16ToF32(d))) << "block " << b;
        if (q8_1) {
          ASSERT_EQ(Bits(xq[b].s), Bits(F16ToF32(s))) << "block " << b;
        }
        ASSERT_EQ(std::memcmp(xq[b].qs, ref + (q8_1 ? 4 : 2), 32), 0) << "block " << b;
      }
      WeightView w;
      w.data = g.w.data();
      w.dtype = g.dtype;
      w.rows = g.rows;
      w.cols = g.cols;
      w.row_stride = nb * GetDTypeInfo(g.dtype).block_bytes;
      std::vector<float> y(g.y.size(), -1.0f);
      k.gemm_q8(w, 0, g.rows, xq.data(), nb, g.n, GemmOut{y.data(), g.rows});
      ExpectSameBits(y, g.y, "y");
    }
  }
}

// --- every table equals the scalar one ------------------------------------------------------

TEST(CrossIsaTest, MatmulKernelsAreBitIdentical) {
  std::mt19937 rng(7);
  const DType q8_types[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0};
  const DType f32_types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                             DType::kQ4_1, DType::kQ8_0, DType::kQ5_1, DType::kQ6_K};
  struct Shape {
    int rows, cols, n;
  };
  for (Shape s : {Shape{13, 224, 1}, Shape{9, 96, 3}, Shape{6, 256, 17}, Shape{5, 512, 6}}) {
    const std::vector<float> x = RandomFloats(static_cast<int64_t>(s.n) * s.cols, rng);
    for (DType dtype : f32_types) {
      if (s.cols % GetDTypeInfo(dtype).block_elems != 0) continue;
      std::vector<uint8_t> bytes = RandomMatrix(dtype, s.rows, s.cols, rng);
      WeightView w{bytes.data(), bytes.size() / s.rows, s.rows, s.cols, dtype};
      std::vector<float> scratch(s.cols);
      std::vector<float> want(static_cast<size_t>(s.n) * s.rows);
      ScalarKernels().gemm_f32(w, 0, s.rows, x.data(), s.cols, s.n, GemmOut{want.data(), s.rows},
                               scratch.data());
      for (CpuIsa isa : SupportedIsas()) {
        std::vector<float> got(want.size(), -1.0f);
        TableFor(isa).gemm_f32(w, 0, s.rows, x.data(), s.cols, s.n, GemmOut{got.data(), s.rows},
                               scratch.data());
        ExpectSameBits(
            got, want,
            std::string("gemm_f32 ") + CpuIsaName(isa) + " " + std::string(DTypeName(dtype)));
      }
    }
    for (DType dtype : q8_types) {
      std::vector<uint8_t> bytes = RandomMatrix(dtype, s.rows, s.cols, rng);
      WeightView w{bytes.data(), bytes.size() / s.rows, s.rows, s.cols, dtype};
      const int nb = s.cols / 32;
      std::vector<Q8Block> xq(static_cast<size_t>(s.n) * nb);
      for (int t = 0; t < s.n; ++t)
        ScalarKernels().quantize_q8(x.data() + t * s.cols, s.cols, xq.data() + t * nb);
      std::vector<float> want(static_cast<size_t>(s.n) * s.rows);
      ScalarKernels().gemm_q8(w, 0, s.rows, xq.data(), nb, s.n, GemmOut{want.data(), s.rows});
      for (CpuIsa isa : SupportedIsas()) {
        std::vector<Q8Block> xq2(xq.size());
        for (int t = 0; t < s.n; ++t)
          TableFor(isa).quantize_q8(x.data() + t * s.cols, s.cols, xq2.data() + t * nb);
        ASSERT_EQ(std::memcmp(xq.data(), xq2.data(), xq.size() * sizeof(Q8Block)), 0)
            << CpuIsaName(isa);
        std::vector<float> got(want.size(), -1.0f);
        TableFor(isa).gemm_q8(w, 0, s.rows, xq.data(), nb, s.n, GemmOut{got.data(), s.rows});
        ExpectSameBits(
            got, want,
            std::string("gemm_q8 ") + CpuIsaName(isa) + " " + std::string(DTypeName(dtype)));
      }
    }
  }
}

TEST(CrossIsaTest, VectorKernelsAreBitIdentical) {
  std::mt19937 rng(11);
  for (int n : {1, 7, 16, 33, 64, 100}) {
    const std::vector<float> a = RandomFloats(n, rng);
    const std::vector<float> b = RandomFloats(n, rng);
    std::vector<uint16_t> bh(n);
    ScalarKernels().to_f16(b.data(), bh.data(), n);
    const CpuKernels& ref = ScalarKernels();
    double exact = 0;
    for (int i = 0; i < n; ++i) exact += static_cast<double>(a[i]) * b[i];
    EXPECT_NEAR(ref.dot_f32(a.data(), b.data(), n), exact, 1e-5 * n);
    for (CpuIsa isa : SupportedIsas()) {
      const CpuKernels& k = TableFor(isa);
      EXPECT_EQ(Bits(k.dot_f32(a.data(), b.data(), n)), Bits(ref.dot_f32(a.data(), b.data(), n)));
      EXPECT_EQ(Bits(k.dot_f16(a.data(), bh.data(), n)), Bits(ref.dot_f16(a.data(), bh.data(), n)));
      std::vector<float> y1 = b, y2 = b, y3 = a, y4 = a, r1(n), r2(n);
      k.axpy_f32(0.37f, a.data(), y1.data(), n);
      ref.axpy_f32(0.37f, a.data(), y2.data(), n);
      k.axpy_f16(-1.7f, bh.data(), y3.data(), n);
      ref.axpy_f16(-1.7f, bh.data(), y4.data(), n);
      k.round_f16(a.data(), r1.data(), n);
      ref.round_f16(a.data(), r2.data(), n);
      ExpectSameBits(y1, y2, "axpy_f32");
      ExpectSameBits(y3, y4, "axpy_f16");
      ExpectSameBits(r1, r2, "round_f16");
    }
  }
}

}  // namespace
}  // namespace shardserve::cpu
