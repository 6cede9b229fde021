// A tiny random Llama quantized as hub_sync writes it (int8, int4 AWQ, nf4 with and without
// double quantization) generates, greedily, exactly what the same model dequantized to F32 with
// quant_formats' Dequantize* generates. The CPU kernels multiply the exact dequantized values in
// the F32 order (kernels.h), so the logits are not merely close but identical; the tokens are the
// contract, the logits the reason it holds for any prompt.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/model_runner.h"
#include "worker/weights/quantized_test_util.h"

namespace shardserve {
namespace {

struct Case {
  const char* label;
  quant::QuantScheme scheme;
  quant::QuantParams params;
  ActivationMode activations;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

struct Generation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // every step's row
};

// Greedy: the prompt in one step, then `steps` single-token steps.
absl::StatusOr<Generation> Greedy(const std::string& dir, ActivationMode activations,
                                  const std::vector<int32_t>& prompt, int steps) {
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> weights, ModelWeights::Open(dir));
  RunnerOptions options;
  options.threads = 2;
  options.activations = activations;
  options.context_length = 64;
  options.kv_cache_tokens = 64;
  ASSIGN_OR_RETURN(
      std::unique_ptr<ModelRunner> runner,
      ModelRunner::Create(std::shared_ptr<const ModelWeights>(std::move(weights)), options));
  const int vocab = runner->vocab_size();
  Generation g;
  std::vector<int32_t> next = prompt;
  int64_t position = 0;
  for (int s = 0; s <= steps; ++s) {
    StepPlan plan;
    RETURN_IF_ERROR(runner->AddToPlan(0, position, next, ModelRunner::Logits::kLast, &plan));
    std::vector<float> logits;
    RETURN_IF_ERROR(runner->Step(plan, &logits));
    position += static_cast<int64_t>(next.size());
    const int32_t token = static_cast<int32_t>(
        std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
    g.tokens.push_back(token);
    g.logits.insert(g.logits.end(), logits.begin(), logits.begin() + vocab);
    next = {token};
  }
  return g;
}

class QuantizedModelTest : public ::testing::TestWithParam<Case> {};

TEST_P(QuantizedModelTest, GreedyTokensEqualTheDequantizedModel) {
  const Case& c = GetParam();
  const std::string dir = testing::FreshTempDir(absl::StrCat("quantized_model_", c.label));
  std::vector<testing::StoredTensor> stored;
  testing::FloatModel dequantized;
  ASSERT_TRUE(testing::BuildArtifactTensors(testing::RandomTinyLlama(42), c.scheme, c.params,
                                            &stored, &dequantized)
                  .ok());
  const std::string artifact = dir + "/artifact";
  const std::string reference = dir + "/f32";
  ASSERT_TRUE(testing::WriteArtifact(artifact, testing::TinyLlamaConfig(), c.scheme, c.params,
                                     stored, testing::MinimalManifest(c.scheme, c.params))
                  .ok());
  ASSERT_TRUE(testing::WriteF32Model(reference, testing::TinyLlamaConfig(), dequantized).ok());

  const std::vector<int32_t> prompt = {1, 17, 42, 5, 88, 23, 64, 9, 3};
  absl::StatusOr<Generation> got = Greedy(artifact, c.activations, prompt, 12);
  ASSERT_TRUE(got.ok()) << got.status();
  absl::StatusOr<Generation> want = Greedy(reference, c.activations, prompt, 12);
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(got->tokens, want->tokens);
  ASSERT_EQ(got->logits.size(), want->logits.size());
  size_t differing = 0;
  for (size_t i = 0; i < got->logits.size(); ++i) {
    if (std::memcmp(&got->logits[i], &want->logits[i], sizeof(float)) != 0) ++differing;
  }
  EXPECT_EQ(differing, 0u) << "logits differ from the dequantized model's";
  // Not a degenerate model: the greedy continuation is not one token repeated.
  EXPECT_GT(std::set<int32_t>(want->tokens.begin(), want->tokens.end()).size(), 1u);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, QuantizedModelTest,
    ::testing::Values(Case{"int8", quant::QuantScheme::kInt8, {}, ActivationMode::kQ8},
                      Case{"int4", quant::QuantScheme::kInt4, {64, false}, ActivationMode::kQ8},
                      Case{
                          "int4_f32", quant::QuantScheme::kInt4, {64, false}, ActivationMode::kF32},
                      Case{"nf4", quant::QuantScheme::kNf4, {64, false}, ActivationMode::kQ8},
                      Case{"nf4_dq", quant::QuantScheme::kNf4, {64, true}, ActivationMode::kQ8}),
    [](const auto& info) { return std::string(info.param.label); });

}  // namespace
}  // namespace shardserve
