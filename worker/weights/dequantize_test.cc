#include "worker/weights/dequantize.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

// Vectors written by worker/weights/testdata/make_dequant_vectors.py from the `gguf` Python
// package (gguf.quants) and ml_dtypes.
std::string TestdataPath(const std::string& file) {
  const char* root = std::getenv("SHARDSERVE_SOURCE_DIR");
  return std::string(root != nullptr ? root : ".") + "/worker/weights/testdata/dequant/" + file;
}

std::vector<uint8_t> ReadBytes(const std::string& file) {
  std::ifstream in(TestdataPath(file), std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test vector " << TestdataPath(file);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
std::vector<T> ReadArray(const std::string& file) {
  std::vector<uint8_t> bytes = ReadBytes(file);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

// Exact comparison: the bit patterns must match (NaN payloads included).
void ExpectBitIdentical(const std::vector<float>& actual, const std::vector<float>& expected,
                        const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int mismatches = 0;
  for (size_t i = 0; i < actual.size() && mismatches < 10; ++i) {
    if (Bits(actual[i]) != Bits(expected[i])) {
      ++mismatches;
      ADD_FAILURE() << what << "[" << i << "]: got " << actual[i] << " (0x" << std::hex
                    << Bits(actual[i]) << "), want " << expected[i] << " (0x" << Bits(expected[i])
                    << ")" << std::dec;
    }
  }
}

struct VectorCase {
  DType dtype;
  const char* file;
};

class GgufQuantsVectorsTest : public ::testing::TestWithParam<VectorCase> {};

TEST_P(GgufQuantsVectorsTest, BitIdenticalToPythonReference) {
  const VectorCase& c = GetParam();
  std::vector<uint8_t> raw = ReadBytes(std::string(c.file) + ".bin");
  std::vector<float> expected = ReadArray<float>(std::string(c.file) + ".f32");
  ASSERT_FALSE(expected.empty());
  std::optional<size_t> bytes = BytesForElements(c.dtype, expected.size());
  ASSERT_TRUE(bytes.has_value());
  ASSERT_EQ(*bytes, raw.size());

  std::vector<float> actual(expected.size());
  absl::Status status =
      DequantizeRow(c.dtype, raw.data(), static_cast<int64_t>(actual.size()), actual.data());
  ASSERT_TRUE(status.ok()) << status;
  ExpectBitIdentical(actual, expected, c.file);
}

INSTANTIATE_TEST_SUITE_P(
    AllTypes, GgufQuantsVectorsTest,
    ::testing::Values(VectorCase{DType::kQ4_0, "Q4_0"}, VectorCase{DType::kQ4_1, "Q4_1"},
                      VectorCase{DType::kQ5_0, "Q5_0"}, VectorCase{DType::kQ5_1, "Q5_1"},
                      VectorCase{DType::kQ8_0, "Q8_0"}, VectorCase{DType::kQ2_K, "Q2_K"},
                      VectorCase{DType::kQ3_K, "Q3_K"}, VectorCase{DType::kQ4_K, "Q4_K"},
                      VectorCase{DType::kQ5_K, "Q5_K"}, VectorCase{DType::kQ6_K, "Q6_K"},
                      VectorCase{DType::kF16, "F16"}),
    [](const ::testing::TestParamInfo<VectorCase>& info) { return std::string(info.param.file); });

// FP8 against ml_dtypes: bit-identical except that any NaN matches any NaN.
void CheckFp8(DType dtype, const char* file, float (*convert)(uint8_t)) {
  std::vector<float> expected = ReadArray<float>(std::string(file) + ".f32");
  ASSERT_EQ(expected.size(), 256u);
  std::vector<uint8_t> raw(256);
  for (int i = 0; i < 256; ++i) raw[i] = static_cast<uint8_t>(i);
  std::vector<float> actual(256);
  ASSERT_TRUE(DequantizeRow(dtype, raw.data(), 256, actual.data()).ok());
  for (int i = 0; i < 256; ++i) {
    EXPECT_EQ(Bits(convert(static_cast<uint8_t>(i))), Bits(actual[i])) << file << " byte " << i;
    if (std::isnan(expected[i])) {
      EXPECT_TRUE(std::isnan(actual[i])) << file << " byte " << i;
    } else {
      EXPECT_EQ(Bits(actual[i]), Bits(expected[i]))
          << file << " byte " << i << ": got " << actual[i] << " want " << expected[i];
    }
  }
}

TEST(Fp8Test, E4M3MatchesMlDtypes) {
  CheckFp8(DType::kF8E4M3, "F8_E4M3", F8E4M3ToF32);
  EXPECT_EQ(F8E4M3ToF32(0x7E), 448.0f);
  EXPECT_EQ(F8E4M3ToF32(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7F)));
  EXPECT_EQ(F8E4M3ToF32(0x01), std::ldexp(1.0f, -9));
}

TEST(Fp8Test, E5M2MatchesMlDtypes) {
  CheckFp8(DType::kF8E5M2, "F8_E5M2", F8E5M2ToF32);
  EXPECT_TRUE(std::isinf(F8E5M2ToF32(0x7C)));
  EXPECT_EQ(F8E5M2ToF32(0x7B), 57344.0f);
}

// Every half bit pattern against an independent formula.
TEST(ScalarTest, F16ToF32Exhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const int sign = (h >> 15) & 1;
    const int exp = (h >> 10) & 0x1F;
    const int mant = h & 0x3FF;
    const float got = F16ToF32(static_cast<uint16_t>(h));
    if (exp == 31) {
      if (mant == 0) {
        EXPECT_TRUE(std::isinf(got) && std::signbit(got) == (sign == 1)) << h;
      } else {
        EXPECT_TRUE(std::isnan(got)) << h;
        EXPECT_EQ(Bits(got) & 0x7FFFFFu, static_cast<uint32_t>(mant) << 13) << h;
      }
      continue;
    }
    const double magnitude = exp == 0 ? std::ldexp(static_cast<double>(mant), -24)
                                      : std::ldexp(1.0 + mant / 1024.0, exp - 15);
    const float want = static_cast<float>(sign ? -magnitude : magnitude);
    ASSERT_EQ(Bits(got), Bits(want)) << "half 0x" << std::hex << h;
  }
}

TEST(ScalarTest, BF16RoundTrip) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = BF16ToF32(static_cast<uint16_t>(b));
    ASSERT_EQ(Bits(f), b << 16);
    if (!std::isnan(f)) {
      ASSERT_EQ(F32ToBF16(f), b) << b;
    }
  }
}

TEST(ScalarTest, F32ToBF16MatchesGgufQuants) {
  std::vector<uint32_t> inputs = ReadArray<uint32_t>("BF16_ROUND.bin");
  std::vector<uint16_t> expected = ReadArray<uint16_t>("BF16_ROUND.bf16");
  ASSERT_EQ(inputs.size(), expected.size());
  ASSERT_GT(inputs.size(), 2000u);
  for (size_t i = 0; i < inputs.size(); ++i) {
    float f;
    std::memcpy(&f, &inputs[i], sizeof(f));
    ASSERT_EQ(F32ToBF16(f), expected[i]) << "input 0x" << std::hex << inputs[i];
  }
  // Ties go to even.
  EXPECT_EQ(F32ToBF16(BF16ToF32(0x3F80) + std::ldexp(1.0f, -8)), 0x3F80);  // 1 + 2^-8
  EXPECT_EQ(F32ToBF16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
}

TEST(DequantizeRowTest, PlainTypes) {
  const float f32[3] = {1.5f, -2.0f, 3.25f};
  float out[3];
  ASSERT_TRUE(DequantizeRow(DType::kF32, reinterpret_cast<const uint8_t*>(f32), 3, out).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[2], 3.25f);
  const uint8_t bf16[4] = {0xC0, 0x3F, 0x00, 0xC0};  // 1.5, -2.0 (little-endian)
  ASSERT_TRUE(DequantizeRow(DType::kBF16, bf16, 2, out).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.0f);
  const uint8_t f16[4] = {0x00, 0x3E, 0x00, 0xC0};  // 1.5, -2.0
  ASSERT_TRUE(DequantizeRow(DType::kF16, f16, 2, out).ok());
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_EQ(out[1], -2.0f);
}

TEST(DequantizeRowTest, RejectsPartialBlock) {
  std::vector<uint8_t> raw(34);
  std::vector<float> out(40);
  absl::Status status = DequantizeRow(DType::kQ8_0, raw.data(), 40, out.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("40 values of Q8_0"));
  EXPECT_THAT(status.message(), HasSubstr("32-value block"));
}

TEST(DequantizeRowTest, UnsupportedTypeIsUnimplemented) {
  std::vector<uint8_t> raw(292);
  std::vector<float> out(256);
  for (DType dtype : {DType::kQ8_1, DType::kQ8_K, DType::kI32, DType::kBool}) {
    absl::Status status = DequantizeRow(dtype, raw.data(), 256, out.data());
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented);
    EXPECT_THAT(status.message(), HasSubstr(std::string(DTypeName(dtype))));
    EXPECT_FALSE(CanDequantize(dtype));
  }
  EXPECT_TRUE(CanDequantize(DType::kQ6_K));
}

class DequantizeToF32Test : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_ = ReadBytes("Q4_0.bin");
    expected_ = ReadArray<float>("Q4_0.f32");
    ASSERT_EQ(expected_.size(), 512u);  // 16 blocks
  }
  std::vector<uint8_t> raw_;
  std::vector<float> expected_;
};

TEST_F(DequantizeToF32Test, Contiguous2D) {
  TensorView view{.name = "w",
                  .dtype = DType::kQ4_0,
                  .shape = {4, 128},
                  .data = raw_.data(),
                  .row_stride = 4 * 18};
  absl::StatusOr<std::vector<float>> out = DequantizeToF32(view);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectBitIdentical(*out, expected_, "contiguous");
}

TEST_F(DequantizeToF32Test, StridedColumnSlice) {
  // Columns [32, 96) of the {4, 128} tensor: blocks 1 and 2 of every row.
  TensorView view{.name = "w",
                  .dtype = DType::kQ4_0,
                  .shape = {4, 64},
                  .data = raw_.data() + 18,
                  .row_stride = 4 * 18};
  absl::StatusOr<std::vector<float>> out = DequantizeToF32(view);
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<float> want;
  for (int r = 0; r < 4; ++r) {
    want.insert(want.end(), expected_.begin() + r * 128 + 32, expected_.begin() + r * 128 + 96);
  }
  ExpectBitIdentical(*out, want, "strided");
}

TEST_F(DequantizeToF32Test, ThreeDimensional) {
  TensorView view{.name = "experts",
                  .dtype = DType::kQ4_0,
                  .shape = {2, 2, 128},
                  .data = raw_.data(),
                  .row_stride = 2 * 4 * 18};
  absl::StatusOr<std::vector<float>> out = DequantizeToF32(view);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectBitIdentical(*out, expected_, "3-D");
}

TEST_F(DequantizeToF32Test, Errors) {
  TensorView small_stride{.name = "blk.0.w",
                          .dtype = DType::kQ4_0,
                          .shape = {4, 64},
                          .data = raw_.data(),
                          .row_stride = 18};
  absl::StatusOr<std::vector<float>> out = DequantizeToF32(small_stride);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("tensor 'blk.0.w'"));
  EXPECT_THAT(out.status().message(), HasSubstr("row stride 18"));

  TensorView partial{.name = "odd",
                     .dtype = DType::kQ4_0,
                     .shape = {2, 48},
                     .data = raw_.data(),
                     .row_stride = 36};
  out = DequantizeToF32(partial);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("tensor 'odd'"));

  TensorView ints{
      .name = "ids", .dtype = DType::kI32, .shape = {4}, .data = raw_.data(), .row_stride = 4};
  out = DequantizeToF32(ints);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(out.status().message(), HasSubstr("tensor 'ids'"));
  EXPECT_THAT(out.status().message(), HasSubstr("I32"));

  TensorView negative{
      .name = "neg", .dtype = DType::kF32, .shape = {2, -1}, .data = raw_.data(), .row_stride = 4};
  out = DequantizeToF32(negative);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("invalid shape"));
}

TEST_F(DequantizeToF32Test, EmptyAndScalar) {
  TensorView empty{.name = "e", .dtype = DType::kF32, .shape = {0, 4}, .data = nullptr};
  absl::StatusOr<std::vector<float>> out = DequantizeToF32(empty);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_TRUE(out->empty());
  const float value = 7.5f;
  TensorView scalar{.name = "s",
                    .dtype = DType::kF32,
                    .shape = {},
                    .data = reinterpret_cast<const uint8_t*>(&value)};
  out = DequantizeToF32(scalar);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  EXPECT_EQ((*out)[0], 7.5f);
}

}  // namespace
}  // namespace shardserve
