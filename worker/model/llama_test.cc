// The rotary table (MakeRopeSpec); the decoder itself is tested end to end by the engine and
// fidelity tests, and its ops by the backend's.
#include "worker/model/llama.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

ModelConfig Llama31() {
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  return c;
}

TEST(MakeRopeSpecTest, PlainThetaGivesTheStandardFrequencies) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 10000.0;
  absl::StatusOr<RopeSpec> rope = MakeRopeSpec(c, nullptr, /*interleaved=*/true);
  ASSERT_TRUE(rope.ok()) << rope.status();
  ASSERT_EQ(rope->inv_freq.size(), 32u);
  EXPECT_TRUE(rope->interleaved);
  EXPECT_EQ(rope->rotary_dim, 64);
  EXPECT_FLOAT_EQ(rope->inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(rope->inv_freq[5], 0.23713737056616552f);  // 10000^(-10/64)
}

// Llama 3.1's rope_scaling: high frequencies (wavelength < 8192/4) kept, low ones (> 8192)
// divided by 8, the band between interpolated (values from HF's formula evaluated in Python).
TEST(MakeRopeSpecTest, Llama3ScalingHasThreeRegimes) {
  absl::StatusOr<RopeSpec> rope = MakeRopeSpec(Llama31(), nullptr, false);
  ASSERT_TRUE(rope.ok()) << rope.status();
  ASSERT_EQ(rope->inv_freq.size(), 64u);
  EXPECT_FLOAT_EQ(rope->inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(rope->inv_freq[20], 0.016560440080994446f);   // kept
  EXPECT_FLOAT_EQ(rope->inv_freq[32], 0.0005248461609929547f);  // interpolated
  EXPECT_FLOAT_EQ(rope->inv_freq[40], 3.428102195952591e-05f);  // divided by 8
  EXPECT_FLOAT_EQ(rope->inv_freq[63], 3.068925988914511e-07f);
}

// GGUF rope_freqs factors replace the formula (llama.cpp divides the frequency by them).
TEST(MakeRopeSpecTest, GgufFrequencyFactorsDivide) {
  ModelConfig c = Llama31();
  std::vector<float> factors(64, 1.0f);
  factors[40] = 8.0f;
  factors[32] = 2.0f;
  absl::StatusOr<RopeSpec> rope = MakeRopeSpec(c, factors.data(), false);
  ASSERT_TRUE(rope.ok()) << rope.status();
  EXPECT_FLOAT_EQ(rope->inv_freq[40], 3.428102195952591e-05f);
  EXPECT_FLOAT_EQ(rope->inv_freq[32], 0.001414213562373095f / 2);
  EXPECT_FLOAT_EQ(rope->inv_freq[20], 0.016560440080994446f);
}

TEST(MakeRopeSpecTest, LinearScalingDividesEveryFrequency) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 10000.0;
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 2.0;
  absl::StatusOr<RopeSpec> rope = MakeRopeSpec(c, nullptr, false);
  ASSERT_TRUE(rope.ok()) << rope.status();
  EXPECT_FLOAT_EQ(rope->inv_freq[0], 0.5f);
  EXPECT_FLOAT_EQ(rope->inv_freq[5], 0.11856868528308276f);
}

TEST(MakeRopeSpecTest, UnknownScalingIsRefusedByName) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_scaling.type = "yarn";
  absl::StatusOr<RopeSpec> rope = MakeRopeSpec(c, nullptr, false);
  EXPECT_EQ(rope.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(rope.status().message(), HasSubstr("'yarn'"));
}

}  // namespace
}  // namespace shardserve
