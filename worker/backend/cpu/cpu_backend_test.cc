// Every op of the CPU backend through the Backend interface, against plain references written
// here, for each kernel table this machine runs, both activation modes and 1-3 threads.
#include "worker/backend/cpu/cpu_backend.h"

#include <cmath>
#include <limits>
#include <numeric>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/backend/cpu/cpu_test_util.h"

namespace shardserve {
namespace {

using cpu::F16ToF32;
using cpu::F32ToF16Bits;
using cpu::RoundToF16;
using cpu::testing::ExpectNear;
using cpu::testing::ExpectSameBits;
using cpu::testing::RandomFloats;
using cpu::testing::RandomMatrix;
using cpu::testing::SupportedIsas;
using ::testing::HasSubstr;

std::unique_ptr<Backend> MakeBackend(CpuIsa isa, int threads,
                                     ActivationMode mode = ActivationMode::kQ8) {
  absl::StatusOr<std::unique_ptr<Backend>> b = CreateCpuBackend({threads, mode, isa});
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

TensorView View(const std::string& name, DType dtype, int64_t rows, int64_t cols,
                const std::vector<uint8_t>& bytes) {
  TensorView v;
  v.name = name;
  v.dtype = dtype;
  v.shape = {rows, cols};
  v.data = bytes.data();
  v.row_stride = bytes.size() / rows;
  return v;
}

// --- llama.cpp's kQ8 definition, literally (ggml block structs, x86 quantize_row_q8_x) -------

struct BlockQ8 {  // block_q8_1 (s unused for block_q8_0)
  uint16_t d, s;
  int8_t qs[32];
};

std::vector<BlockQ8> GgmlQuantizeRow(const float* x, int cols) {
  std::vector<BlockQ8> out(cols / 32);
  for (int b = 0; b < cols / 32; ++b) {
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[32 * b + i]));
    const float d = amax / 127.f;
    const float id = amax != 0.0f ? 127.f / amax : 0.0f;
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      out[b].qs[i] = static_cast<int8_t>(std::nearbyint(x[32 * b + i] * id));  // _mm256_round_ps
      sum += out[b].qs[i];
    }
    out[b].d = F32ToF16Bits(d);
    out[b].s = F32ToF16Bits(d * static_cast<float>(sum));
  }
  return out;
}

// ggml_vec_dot_{q4_0_q8_0, q4_1_q8_1, q8_0_q8_0} (AVX2 path): 8 float lanes, one FMA per block.
float GgmlVecDot(DType dtype, const uint8_t* w, const std::vector<BlockQ8>& x) {
  const size_t bb = GetDTypeInfo(dtype).block_bytes;
  float acc[8] = {};
  float summs = 0;
  for (size_t b = 0; b < x.size(); ++b) {
    const uint8_t* blk = w + b * bb;
    int v[32];
    uint16_t dh, mh = 0;
    std::memcpy(&dh, blk, 2);
    if (dtype == DType::kQ4_1) std::memcpy(&mh, blk + 2, 2);
    for (int j = 0; j < 32; ++j) {
      if (dtype == DType::kQ8_0) {
        v[j] = static_cast<int8_t>(blk[2 + j]);
      } else {
        const uint8_t byte = blk[(dtype == DType::kQ4_1 ? 4 : 2) + j % 16];
        v[j] = (j < 16 ? byte & 15 : byte >> 4) - (dtype == DType::kQ4_0 ? 8 : 0);
      }
    }
    const float d = F16ToF32(dh) * F16ToF32(x[b].d);
    for (int lane = 0; lane < 8; ++lane) {
      int p = 0;
      for (int k = 0; k < 4; ++k) p += v[4 * lane + k] * x[b].qs[4 * lane + k];
      acc[lane] = std::fma(d, static_cast<float>(p), acc[lane]);
    }
    if (dtype == DType::kQ4_1) summs = std::fma(F16ToF32(mh), F16ToF32(x[b].s), summs);
  }
  const float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  return dtype == DType::kQ4_1 ? s + summs : s;
}

// The same products in double, per block: Σ dw·dx·Σq·q (+ m·s).
double Q8MathDot(DType dtype, const uint8_t* w, const std::vector<BlockQ8>& x, double* magnitude) {
  const size_t bb = GetDTypeInfo(dtype).block_bytes;
  double sum = 0;
  *magnitude = 0;
  std::vector<float> wv(32);
  for (size_t b = 0; b < x.size(); ++b) {
    const uint8_t* blk = w + b * bb;
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    // Dequantized weight minus its min, divided by d, is the integer q.
    (void)DequantizeRow(dtype, blk, 32, wv.data());
    double term = 0;
    for (int j = 0; j < 32; ++j) {
      int q;
      if (dtype == DType::kQ8_0) {
        q = static_cast<int8_t>(blk[2 + j]);
      } else {
        const uint8_t byte = blk[(dtype == DType::kQ4_1 ? 4 : 2) + j % 16];
        q = (j < 16 ? byte & 15 : byte >> 4) - (dtype == DType::kQ4_0 ? 8 : 0);
      }
      term += static_cast<double>(q) * x[b].qs[j];
    }
    term *= static_cast<double>(F16ToF32(dh)) * F16ToF32(x[b].d);
    if (dtype == DType::kQ4_1) {
      uint16_t mh;
      std::memcpy(&mh, blk + 2, 2);
      term += static_cast<double>(F16ToF32(mh)) * F16ToF32(x[b].s);
    }
    sum += term;
    *magnitude += std::fabs(term);
  }
  return sum;
}

struct MatmulCase {
  int rows, cols, n;
};
const MatmulCase kMatmulCases[] = {{13, 224, 1}, {7, 96, 3}, {10, 160, 17}, {5, 32, 2}};

TEST(CpuMatmulTest, Q8MatchesLlamaCppDefinitionForEveryIsaAndThreadCount) {
  std::mt19937 rng(3);
  for (const MatmulCase& c : kMatmulCases) {
    const std::vector<float> x = RandomFloats(static_cast<int64_t>(c.n) * c.cols, rng, 2.0f);
    for (DType dtype : {DType::kQ4_0, DType::kQ4_1, DType::kQ8_0}) {
      const std::vector<uint8_t> bytes = RandomMatrix(dtype, c.rows, c.cols, rng);
      const size_t stride = bytes.size() / c.rows;
      std::vector<float> want(static_cast<size_t>(c.n) * c.rows);
      std::vector<double> math(want.size());
      for (int t = 0; t < c.n; ++t) {
        const std::vector<BlockQ8> xq = GgmlQuantizeRow(x.data() + t * c.cols, c.cols);
        for (int r = 0; r < c.rows; ++r) {
          want[t * c.rows + r] = GgmlVecDot(dtype, bytes.data() + r * stride, xq);
          double mag;
          math[t * c.rows + r] = Q8MathDot(dtype, bytes.data() + r * stride, xq, &mag);
          EXPECT_NEAR(want[t * c.rows + r], math[t * c.rows + r], 1e-5 * (mag + 1e-6));
        }
      }
      for (CpuIsa isa : SupportedIsas()) {
        for (int threads : {1, 2, 3}) {
          std::unique_ptr<Backend> b = MakeBackend(isa, threads);
          auto m = b->PrepareMatrix(View("w", dtype, c.rows, c.cols, bytes));
          ASSERT_TRUE(m.ok()) << m.status();
          std::vector<float> y(want.size(), std::nanf(""));
          const MatmulOutput out{m->get(), y.data()};
          b->Matmul(x.data(), c.n, {&out, 1});
          ExpectSameBits(
              y, want,
              b->Name() + " " + std::string(DTypeName(dtype)) + " n=" + std::to_string(c.n));
        }
      }
    }
  }
}

// Σ x·w over the dequantized weights, in double.
std::vector<double> DenseProduct(const TensorView& w, const std::vector<float>& x, int n) {
  absl::StatusOr<std::vector<float>> dense = DequantizeToF32(w);
  EXPECT_TRUE(dense.ok()) << dense.status();
  const int64_t rows = w.shape[0], cols = w.shape[1];
  std::vector<double> y(static_cast<size_t>(n) * rows);
  for (int t = 0; t < n; ++t) {
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0;
      for (int64_t i = 0; i < cols; ++i)
        s += static_cast<double>((*dense)[r * cols + i]) * x[t * cols + i];
      y[t * rows + r] = s;
    }
  }
  return y;
}

TEST(CpuMatmulTest, F32ActivationsMatchTheDequantizedProduct) {
  std::mt19937 rng(5);
  const DType types[] = {DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,
                         DType::kQ4_1, DType::kQ8_0, DType::kQ5_0, DType::kQ6_K};
  for (const MatmulCase& c : {MatmulCase{9, 256, 1}, MatmulCase{6, 512, 3}, MatmulCase{11, 256, 17},
                              MatmulCase{5, 37, 3}}) {
    const std::vector<float> x = RandomFloats(static_cast<int64_t>(c.n) * c.cols, rng);
    for (DType dtype : types) {
      if (c.cols % GetDTypeInfo(dtype).block_elems != 0) continue;
      const std::vector<uint8_t> bytes = RandomMatrix(dtype, c.rows, c.cols, rng);
      const TensorView view = View("w", dtype, c.rows, c.cols, bytes);
      const std::vector<double> want = DenseProduct(view, x, c.n);
      std::vector<float> first;
      for (CpuIsa isa : SupportedIsas()) {
        for (ActivationMode mode : {ActivationMode::kF32, ActivationMode::kQ8}) {
          const bool q8 = mode == ActivationMode::kQ8 &&
                          (dtype == DType::kQ4_0 || dtype == DType::kQ4_1 || dtype == DType::kQ8_0);
          if (q8) continue;  // covered above
          for (int threads : {1, 3}) {
            std::unique_ptr<Backend> b = MakeBackend(isa, threads, mode);
            auto m = b->PrepareMatrix(view);
            ASSERT_TRUE(m.ok()) << m.status();
            std::vector<float> y(want.size(), std::nanf(""));
            const MatmulOutput out{m->get(), y.data()};
            b->Matmul(x.data(), c.n, {&out, 1});
            const std::string what = b->Name() + " " + std::string(DTypeName(dtype));
            ExpectNear(y, want, 2e-5, what);
            if (first.empty()) first = y;
            ExpectSameBits(y, first, what + " vs first");
          }
        }
      }
    }
  }
}

TEST(CpuMatmulTest, FusedOutputsStridedUnalignedViews) {
  std::mt19937 rng(9);
  const int n = 5, cols = 224, wide = 320;
  const std::vector<float> x = RandomFloats(static_cast<int64_t>(n) * cols, rng);
  for (DType dtype : {DType::kQ4_1, DType::kQ8_0, DType::kF16, DType::kQ4_0}) {
    // Three weights sharing x; each a column slice [64, 288) of a wider matrix stored at an odd
    // address, so rows are strided and unaligned.
    std::vector<std::vector<uint8_t>> storage;
    std::vector<TensorView> views;
    for (int rows : {21, 7, 7}) {
      const std::vector<uint8_t> full = RandomMatrix(dtype, rows, wide, rng);
      std::vector<uint8_t> shifted(full.size() + 1);
      std::memcpy(shifted.data() + 1, full.data(), full.size());
      storage.push_back(std::move(shifted));
      TensorView v;
      v.name = "w";
      v.dtype = dtype;
      v.shape = {rows, wide};
      v.data = storage.back().data() + 1;
      v.row_stride = full.size() / rows;
      absl::StatusOr<TensorView> slice = v.ColumnRange(64, 64 + cols);
      ASSERT_TRUE(slice.ok()) << slice.status();
      views.push_back(*slice);
    }
    for (CpuIsa isa : SupportedIsas()) {
      for (ActivationMode mode : {ActivationMode::kF32, ActivationMode::kQ8}) {
        std::unique_ptr<Backend> b = MakeBackend(isa, 2, mode);
        std::vector<std::unique_ptr<BackendMatrix>> ms;
        std::vector<std::vector<float>> ys;
        std::vector<MatmulOutput> outs;
        for (const TensorView& v : views) {
          auto m = b->PrepareMatrix(v);
          ASSERT_TRUE(m.ok()) << m.status();
          ms.push_back(std::move(*m));
          ys.emplace_back(static_cast<size_t>(n) * v.shape[0], std::nanf(""));
        }
        for (size_t i = 0; i < views.size(); ++i) outs.push_back({ms[i].get(), ys[i].data()});
        b->Matmul(x.data(), n, outs);
        for (size_t i = 0; i < views.size(); ++i) {
          // Same values as the output multiplied alone, and close to the dense product.
          std::vector<float> alone(ys[i].size());
          const MatmulOutput one{ms[i].get(), alone.data()};
          b->Matmul(x.data(), n, {&one, 1});
          ExpectSameBits(ys[i], alone, b->Name() + " fused vs alone");
          const double tol = mode == ActivationMode::kQ8 && dtype != DType::kF16 ? 3e-2 : 2e-5;
          ExpectNear(ys[i], DenseProduct(views[i], x, n), tol, b->Name() + " dense");
        }
      }
    }
  }
}

TEST(CpuMatmulTest, PrepareMatrixRejectsBadWeights) {
  std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kScalar, 1);
  std::vector<uint8_t> bytes(4096);
  TensorView v = View("blk.0.ffn_up.weight", DType::kF32, 4, 8, bytes);
  v.shape = {2, 2, 8};
  auto r = b->PrepareMatrix(v);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("blk.0.ffn_up.weight"));
  EXPECT_THAT(r.status().message(), HasSubstr("2-D"));
  v = View("t", DType::kI32, 4, 8, bytes);
  r = b->PrepareMatrix(v);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(r.status().message(), HasSubstr("I32"));
  v = View("t", DType::kQ4_1, 4, 48, bytes);
  v.row_stride = 40;
  r = b->PrepareMatrix(v);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("blocks"));
  v = View("t", DType::kQ4_1, 4, 64, bytes);
  v.row_stride = 20;
  r = b->PrepareMatrix(v);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("row stride"));
}

// --- small ops ------------------------------------------------------------------------------

TEST(CpuOpsTest, RmsNormSiluMulAddGatherAreExact) {
  std::mt19937 rng(13);
  const int n = 3, dim = 577;
  const std::vector<float> x = RandomFloats(n * dim, rng, 3.0f);
  const std::vector<float> w = RandomFloats(dim, rng);
  const std::vector<float> g = RandomFloats(n * dim, rng, 4.0f);
  std::vector<float> norm(n * dim), silu(n * dim), add(n * dim);
  for (int i = 0; i < n; ++i) {
    double sum = 0;
    for (int j = 0; j < dim; ++j) sum += static_cast<double>(x[i * dim + j] * x[i * dim + j]);
    const float scale = 1.0f / std::sqrt(static_cast<float>(sum / dim) + 1e-5f);
    for (int j = 0; j < dim; ++j) norm[i * dim + j] = (x[i * dim + j] * scale) * w[j];
  }
  for (int i = 0; i < n * dim; ++i) {
    silu[i] = g[i] / (1.0f + std::exp(-g[i])) * x[i];
    add[i] = g[i] + x[i];
  }
  for (CpuIsa isa : SupportedIsas()) {
    std::unique_ptr<Backend> b = MakeBackend(isa, 2);
    std::vector<float> y(n * dim);
    b->RmsNorm(x.data(), w.data(), n, dim, 1e-5f, y.data());
    ExpectSameBits(y, norm, "rmsnorm");
    std::vector<float> inplace = x;
    b->RmsNorm(inplace.data(), w.data(), n, dim, 1e-5f, inplace.data());
    ExpectSameBits(inplace, norm, "rmsnorm in place");
    b->SiluMul(g.data(), x.data(), n * dim, y.data());
    ExpectSameBits(y, silu, "silu_mul");
    b->Add(g.data(), x.data(), n * dim, y.data());
    ExpectSameBits(y, add, "add");
    const int32_t rows[] = {2, 0, 2};
    std::vector<float> gathered(3 * dim);
    b->GatherRows(x.data(), rows, 3, dim, gathered.data());
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(std::equal(gathered.begin() + i * dim, gathered.begin() + (i + 1) * dim,
                             x.begin() + rows[i] * dim));
    }
  }
  // Large enough to run on the pool: same bits with 1 and 3 threads.
  const int big_n = 300, big_dim = 576;
  const std::vector<float> bx = RandomFloats(big_n * big_dim, rng);
  const std::vector<float> bw = RandomFloats(big_dim, rng);
  std::vector<float> y1(bx.size()), y3(bx.size()), s1(bx.size()), s3(bx.size());
  MakeBackend(CpuIsa::kAuto, 1)->RmsNorm(bx.data(), bw.data(), big_n, big_dim, 1e-6f, y1.data());
  MakeBackend(CpuIsa::kAuto, 3)->RmsNorm(bx.data(), bw.data(), big_n, big_dim, 1e-6f, y3.data());
  ExpectSameBits(y3, y1, "rmsnorm threads");
  MakeBackend(CpuIsa::kAuto, 1)->SiluMul(bx.data(), bx.data(), bx.size(), s1.data());
  MakeBackend(CpuIsa::kAuto, 3)->SiluMul(bx.data(), bx.data(), bx.size(), s3.data());
  ExpectSameBits(s3, s1, "silu threads");
}

TEST(CpuOpsTest, RopeInterleavedAndNeoxPartialAndScaled) {
  std::mt19937 rng(17);
  const int n = 4, heads = 3, dim = 16;
  for (bool interleaved : {true, false}) {
    for (int rotary : {16, 8}) {
      RopeSpec spec;
      spec.head_dim = dim;
      spec.rotary_dim = rotary;
      spec.interleaved = interleaved;
      spec.attention_scaling = rotary == 8 ? 1.25f : 1.0f;
      for (int i = 0; i < rotary / 2; ++i)
        spec.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / rotary));
      for (const std::vector<int32_t>& pos :
           {std::vector<int32_t>{0, 1, 7, 1000}, std::vector<int32_t>{5, 6, 7, 8}}) {
        const std::vector<float> x = RandomFloats(n * heads * dim, rng);
        std::vector<float> want = x;
        for (int t = 0; t < n; ++t) {
          for (int h = 0; h < heads; ++h) {
            float* v = want.data() + (t * heads + h) * dim;
            for (int k = 0; k < rotary / 2; ++k) {
              const double theta = static_cast<double>(pos[t]) * spec.inv_freq[k];
              const float c = static_cast<float>(std::cos(theta)) * spec.attention_scaling;
              const float s = static_cast<float>(std::sin(theta)) * spec.attention_scaling;
              const int i0 = interleaved ? 2 * k : k, i1 = interleaved ? 2 * k + 1 : k + rotary / 2;
              const float x0 = v[i0], x1 = v[i1];
              v[i0] = x0 * c - x1 * s;
              v[i1] = x0 * s + x1 * c;
            }
          }
        }
        std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kAuto, 2);
        std::vector<float> y = x;
        b->Rope(y.data(), n, heads, pos.data(), spec);
        ExpectSameBits(y, want, "rope");
      }
    }
  }
}

TEST(CpuOpsTest, EmbeddingIsDequantizeRowForAnyType) {
  std::mt19937 rng(19);
  const int rows = 9, cols = 256;
  for (DType dtype : {DType::kQ4_1, DType::kQ8_0, DType::kF16, DType::kBF16, DType::kQ6_K}) {
    const std::vector<uint8_t> bytes = RandomMatrix(dtype, rows, cols, rng);
    const TensorView v = View("emb", dtype, rows, cols, bytes);
    std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kAuto, 2);
    auto m = b->PrepareMatrix(v);
    ASSERT_TRUE(m.ok()) << m.status();
    const int32_t ids[] = {8, 0, 3, 3};
    std::vector<float> out(4 * cols);
    b->Embedding(**m, ids, 4, out.data());
    for (int i = 0; i < 4; ++i) {
      std::vector<float> want(cols);
      ASSERT_TRUE(
          DequantizeRow(dtype, bytes.data() + ids[i] * v.row_stride, cols, want.data()).ok());
      ExpectSameBits(std::vector<float>(out.begin() + i * cols, out.begin() + (i + 1) * cols), want,
                     "embedding " + std::string(DTypeName(dtype)));
    }
  }
}

TEST(CpuOpsTest, PrepareVectorAllocateAndErrors) {
  std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kAuto, 1);
  std::vector<uint8_t> bytes;
  for (float f : {1.5f, -2.0f, 0.25f}) cpu::testing::PutF16(bytes, f);
  TensorView v;
  v.name = "norm";
  v.dtype = DType::kF16;
  v.shape = {3};
  v.data = bytes.data();
  v.row_stride = 6;
  auto buf = b->PrepareVector(v);
  ASSERT_TRUE(buf.ok()) << buf.status();
  EXPECT_EQ((*buf)->f32()[0], 1.5f);
  EXPECT_EQ((*buf)->f32()[1], -2.0f);
  EXPECT_EQ((*buf)->f32()[2], 0.25f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*buf)->data()) % 64, 0u);
  v.shape = {1, 3};
  EXPECT_EQ(b->PrepareVector(v).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b->PrepareVector(v).status().message(), HasSubstr("norm"));
  auto big = b->Allocate(size_t{1} << 62);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  auto ok = b->Allocate(100);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->bytes(), 100u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*ok)->data()) % 64, 0u);
}

TEST(CpuBackendTest, CreateOptionsAndName) {
  auto bad = CreateCpuBackend({-1, ActivationMode::kQ8, CpuIsa::kAuto});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("threads"));
  if (DetectCpuIsa() != CpuIsa::kAvx512) {
    auto no = CreateCpuBackend({1, ActivationMode::kQ8, CpuIsa::kAvx512});
    EXPECT_EQ(no.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(no.status().message(), HasSubstr("avx512"));
  }
  std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kScalar, 2);
  EXPECT_EQ(b->Name(), "cpu (scalar, 2 threads)");
  auto a = CreateCpuBackend({});
  ASSERT_TRUE(a.ok());
  EXPECT_THAT((*a)->Name(), HasSubstr(CpuIsaName(DetectCpuIsa())));
}

// --- KV cache and attention -----------------------------------------------------------------

TEST(CpuKvCacheTest, SpecErrorsAndSizes) {
  std::unique_ptr<Backend> b = MakeBackend(CpuIsa::kAuto, 1);
  KvCacheSpec spec{2, 4, 16, 3, 64, DType::kF16};
  EXPECT_EQ(spec.BytesPerBlock(), 2u * 2 * 16 * 3 * 64 * 2);
  EXPECT_EQ(spec.TotalBytes(), spec.BytesPerBlock() * 4);
  EXPECT_TRUE(b->CreateKvCache(spec).ok());
  spec.dtype = DType::kBF16;
  auto r = b->CreateKvCache(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("BF16"));
  spec.dtype = DType::kF32;
  spec.layers = 0;
  r = b->CreateKvCache(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("layers"));
  spec = KvCacheSpec{1000, 1 << 20, 256, 64, 256, DType::kF32};  // ~2^55 bytes
  r = b->CreateKvCache(spec);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("KV cache"));
}

struct Seq {
  int context;  // tokens in the cache after the step
  int new_tokens;
};

// Writes random K/V for every sequence's context through WriteKv (blocks assigned in a shuffled
// order), then runs attention for each sequence's last `new_tokens` tokens and compares with a
// direct computation over the stored values.
void CheckAttention(DType cache_dtype, int window, CpuIsa isa, int threads,
                    std::vector<float>* result) {
  std::mt19937 rng(23);
  const int layers = 2, layer = 1, kv_heads = 2, heads = 6, dim = 32, bt = 4;
  const std::vector<Seq> seqs = {{13, 13}, {1, 1}, {30, 1}, {9, 3}};
  int blocks_needed = 0;
  for (const Seq& s : seqs) blocks_needed += (s.context + bt - 1) / bt;
  const int max_blocks = 8;
  std::vector<int32_t> pool(blocks_needed + 3);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);

  std::unique_ptr<Backend> b = MakeBackend(isa, threads);
  KvCacheSpec spec{layers, static_cast<int>(pool.size()), bt, kv_heads, dim, cache_dtype};
  auto cache = b->CreateKvCache(spec);
  ASSERT_TRUE(cache.ok()) << cache.status();

  std::vector<int32_t> tables(seqs.size() * max_blocks, -1), seq_start = {0}, ctx, positions;
  std::vector<std::vector<float>> keys(seqs.size()), values(seqs.size());
  size_t next_block = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int j = 0; j < (seqs[s].context + bt - 1) / bt; ++j)
      tables[s * max_blocks + j] = pool[next_block++];
    keys[s] = RandomFloats(seqs[s].context * kv_heads * dim, rng);
    values[s] = RandomFloats(seqs[s].context * kv_heads * dim, rng);
    std::vector<int32_t> slots;
    for (int p = 0; p < seqs[s].context; ++p)
      slots.push_back(tables[s * max_blocks + p / bt] * bt + p % bt);
    b->WriteKv(**cache, layer, keys[s].data(), values[s].data(), seqs[s].context, slots.data());
    // Layer 0 gets other data: attention must read its own layer.
    std::vector<float> junk = RandomFloats(seqs[s].context * kv_heads * dim, rng, 100.0f);
    b->WriteKv(**cache, 0, junk.data(), junk.data(), seqs[s].context, slots.data());
    for (int p = seqs[s].context - seqs[s].new_tokens; p < seqs[s].context; ++p)
      positions.push_back(p);
    seq_start.push_back(static_cast<int32_t>(positions.size()));
    ctx.push_back(seqs[s].context);
  }
  const int num_tokens = static_cast<int>(positions.size());
  const std::vector<float> q = RandomFloats(num_tokens * heads * dim, rng);
  AttentionBatch batch;
  batch.num_tokens = num_tokens;
  batch.positions = positions.data();
  batch.num_seqs = static_cast<int>(seqs.size());
  batch.seq_start = seq_start.data();
  batch.context_len = ctx.data();
  batch.block_tables = tables.data();
  batch.max_blocks_per_seq = max_blocks;
  batch.sliding_window = window;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  std::vector<float> out(num_tokens * heads * dim, std::nanf(""));
  b->Attention(**cache, layer, q.data(), heads, scale, batch, out.data());

  const bool f16 = cache_dtype == DType::kF16;
  auto stored = [&](float v) { return f16 ? RoundToF16(v) : v; };
  std::vector<double> want(out.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int t = seq_start[s]; t < seq_start[s + 1]; ++t) {
      const int pos = positions[t];
      const int lo = window > 0 ? std::max(0, pos - window + 1) : 0;
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kv_heads);
        std::vector<double> p;
        double max = -1e30;
        for (int j = lo; j <= pos; ++j) {
          double dot = 0;
          for (int d = 0; d < dim; ++d) {
            dot += static_cast<double>(stored(q[(t * heads + h) * dim + d])) *
                   stored(keys[s][(j * kv_heads + g) * dim + d]);
          }
          p.push_back(dot * scale);
          max = std::max(max, p.back());
        }
        double sum = 0;
        for (double& v : p) sum += (v = std::exp(v - max));
        for (int d = 0; d < dim; ++d) {
          double acc = 0;
          for (int j = lo; j <= pos; ++j)
            acc += p[j - lo] / sum * stored(values[s][(j * kv_heads + g) * dim + d]);
          want[(t * heads + h) * dim + d] = acc;
        }
      }
    }
  }
  // f16 rounds the probabilities (relative 2^-11): allow that much of the output's scale.
  ExpectNear(out, want, f16 ? 2e-3 : 2e-5,
             b->Name() + (f16 ? " f16" : " f32") + " window " + std::to_string(window));
  *result = out;
}

TEST(CpuAttentionTest, PagedGqaSlidingWindowF16AndF32) {
  for (DType dtype : {DType::kF16, DType::kF32}) {
    for (int window : {0, 5}) {
      std::vector<float> first;
      for (CpuIsa isa : SupportedIsas()) {
        for (int threads : {1, 2, 3}) {
          std::vector<float> out;
          CheckAttention(dtype, window, isa, threads, &out);
          if (first.empty()) first = out;
          ExpectSameBits(
              out, first,
              std::string("attention ") + CpuIsaName(isa) + " threads " + std::to_string(threads));
        }
      }
    }
  }
}

}  // namespace
}  // namespace shardserve
