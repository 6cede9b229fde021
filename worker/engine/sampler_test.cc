#include "worker/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Softmax in double of logits / temperature over the tokens `keep` allows.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0,
                            const std::vector<bool>& keep = {}) {
  double max = -kInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (keep.empty() || keep[i]) max = std::max(max, logits[i] / temperature);
  }
  std::vector<double> p(logits.size(), 0.0);
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!keep.empty() && !keep[i]) continue;
    p[i] = std::exp(logits[i] / temperature - max);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  return p;
}

// Draws `n` tokens with one sampler and returns the empirical frequency of each token.
std::vector<double> Frequencies(const SamplingOptions& options, const std::vector<float>& logits,
                                int n) {
  Sampler sampler(options, {});
  std::vector<double> counts(logits.size(), 0.0);
  for (int i = 0; i < n; ++i) {
    const int32_t t = sampler.Sample(logits.data(), static_cast<int>(logits.size())).token;
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(logits.size()));
    counts[t] += 1;
  }
  for (double& c : counts) c /= n;
  return counts;
}

// Each frequency within 5 standard errors of its probability (a fixed seed makes the outcome
// deterministic; a wrong distribution misses by far more). Probability 0 must be frequency 0.
void ExpectMatches(const std::vector<double>& freq, const std::vector<double>& p, int n) {
  ASSERT_EQ(freq.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(freq[i], 0.0) << "token " << i << " is excluded but was drawn";
      continue;
    }
    const double sigma = std::sqrt(p[i] * (1 - p[i]) / n);
    EXPECT_NEAR(freq[i], p[i], 5 * sigma + 1e-9) << "token " << i;
  }
}

const std::vector<float> kLogits = {1.0f, 2.0f, 0.5f, -1.0f, 3.0f, 2.5f, -3.0f, 0.0f};
constexpr int kDraws = 100000;

// --- validation ----------------------------------------------------------------------------------

TEST(ValidateSamplingOptionsTest, AcceptsDefaultsAndEdges) {
  EXPECT_TRUE(ValidateSamplingOptions({}).ok());
  SamplingOptions o;
  o.temperature = 0;
  o.top_p = 1;
  o.min_p = 1;
  o.frequency_penalty = -2;
  o.presence_penalty = 2;
  o.top_logprobs = 20;
  EXPECT_TRUE(ValidateSamplingOptions(o).ok());
}

TEST(ValidateSamplingOptionsTest, NamesTheField) {
  struct Case {
    void (*set)(SamplingOptions&);
    const char* field;
  };
  const Case cases[] = {
      {[](SamplingOptions& o) { o.temperature = -0.1f; }, "temperature"},
      {[](SamplingOptions& o) { o.temperature = 101; }, "temperature"},
      {[](SamplingOptions& o) { o.temperature = std::nanf(""); }, "temperature"},
      {[](SamplingOptions& o) { o.top_k = -1; }, "top_k"},
      {[](SamplingOptions& o) { o.top_p = 0; }, "top_p"},
      {[](SamplingOptions& o) { o.top_p = 1.01f; }, "top_p"},
      {[](SamplingOptions& o) { o.top_p = kInf; }, "top_p"},
      {[](SamplingOptions& o) { o.min_p = -0.01f; }, "min_p"},
      {[](SamplingOptions& o) { o.min_p = 1.5f; }, "min_p"},
      {[](SamplingOptions& o) { o.repetition_penalty = 0; }, "repetition_penalty"},
      {[](SamplingOptions& o) { o.repetition_penalty = kInf; }, "repetition_penalty"},
      {[](SamplingOptions& o) { o.frequency_penalty = 2.5f; }, "frequency_penalty"},
      {[](SamplingOptions& o) { o.frequency_penalty = std::nanf(""); }, "frequency_penalty"},
      {[](SamplingOptions& o) { o.presence_penalty = -2.5f; }, "presence_penalty"},
      {[](SamplingOptions& o) { o.top_logprobs = 21; }, "top_logprobs"},
      {[](SamplingOptions& o) { o.top_logprobs = -1; }, "top_logprobs"},
  };
  for (const Case& c : cases) {
    SamplingOptions o;
    c.set(o);
    absl::Status s = ValidateSamplingOptions(o);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(s.message(), HasSubstr(c.field));
  }
}

// --- greedy --------------------------------------------------------------------------------------

TEST(SamplerTest, TemperatureZeroIsArgmaxLowestIdOnTies) {
  SamplingOptions o;
  o.temperature = 0;
  o.seed = 99;
  Sampler s(o, {});
  EXPECT_EQ(s.Sample(kLogits.data(), 8).token, 4);
  const std::vector<float> tie = {0.0f, 5.0f, 1.0f, 5.0f};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.Sample(tie.data(), 4).token, 1);
  const std::vector<float> neg = {-kInf, -7.0f, -3.0f, -kInf};
  EXPECT_EQ(s.Sample(neg.data(), 4).token, 2);
}

TEST(SamplerTest, GreedyIgnoresFiltersAndSeed) {
  SamplingOptions o;
  o.temperature = 0;
  o.top_k = 3;
  o.top_p = 0.2f;
  o.min_p = 0.5f;
  for (uint64_t seed : {0, 1, 2, 77}) {
    o.seed = seed;
    Sampler s(o, {});
    EXPECT_EQ(s.Sample(kLogits.data(), 8).token, 4);
  }
}

TEST(SamplerTest, NanAndMinusInfinityAreNeverPicked) {
  const std::vector<float> logits = {std::nanf(""), 0.0f, -kInf, 0.0f, std::nanf("")};
  SamplingOptions o;
  o.seed = 5;
  std::vector<double> f = Frequencies(o, logits, 20000);
  ExpectMatches(f, {0, 0.5, 0, 0.5, 0}, 20000);
  o.temperature = 0;
  Sampler s(o, {});
  EXPECT_EQ(s.Sample(logits.data(), 5).token, 1);
}

TEST(SamplerTest, LogitsAreNotModified) {
  std::vector<float> logits = kLogits;
  SamplingOptions o;
  o.repetition_penalty = 1.5f;
  o.frequency_penalty = 1;
  o.temperature = 0.7f;
  o.top_k = 3;
  o.logprobs = true;
  o.top_logprobs = 3;
  Sampler s(o, std::vector<int32_t>{1, 4});
  for (int i = 0; i < 5; ++i) s.Sample(logits.data(), 8);
  EXPECT_EQ(logits, kLogits);
}

// --- distributions -------------------------------------------------------------------------------

TEST(SamplerTest, DrawsFollowTheSoftmax) {
  SamplingOptions o;
  o.seed = 42;
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits), kDraws);
}

TEST(SamplerTest, TemperatureSharpensAndFlattens) {
  for (float t : {0.5f, 2.0f}) {
    SamplingOptions o;
    o.seed = 7;
    o.temperature = t;
    ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, t), kDraws);
  }
  // A tiny temperature is (almost) greedy and stays finite.
  SamplingOptions o;
  o.temperature = 1e-4f;
  std::vector<double> f = Frequencies(o, kLogits, 1000);
  EXPECT_EQ(f[4], 1.0);
}

TEST(SamplerTest, TopKKeepsOnlyTheKBest) {
  SamplingOptions o;
  o.seed = 3;
  o.top_k = 3;  // tokens 4 (3.0), 5 (2.5), 1 (2.0)
  std::vector<bool> keep(8, false);
  keep[4] = keep[5] = keep[1] = true;
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, 1, keep), kDraws);
  o.top_k = 1;
  std::vector<double> f = Frequencies(o, kLogits, 1000);
  EXPECT_EQ(f[4], 1.0);
  o.top_k = 100;  // more than the vocabulary: off
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits), kDraws);
}

// The smallest best-first set of tokens whose probability reaches top_p (at least one).
std::vector<bool> Nucleus(const std::vector<double>& p, double top_p) {
  std::vector<int> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  std::vector<bool> keep(p.size(), false);
  double cum = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    if (i > 0 && cum >= top_p) break;
    keep[order[i]] = true;
    cum += p[order[i]];
  }
  return keep;
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Probabilities of kLogits, best first: 4: .385, 5: .233, 1: .142, 0: .052, ...
  const std::vector<double> p = Softmax(kLogits);
  for (float top_p : {0.5f, 0.8f, 0.95f}) {
    SamplingOptions o;
    o.seed = 11;
    o.top_p = top_p;
    const std::vector<bool> keep = Nucleus(p, top_p);
    const int size = static_cast<int>(std::count(keep.begin(), keep.end(), true));
    EXPECT_GT(size, 1);
    EXPECT_LT(size, 8);
    ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, 1, keep), kDraws);
  }
  SamplingOptions o;
  o.top_p = 0.01f;  // always at least the best token
  std::vector<double> f = Frequencies(o, kLogits, 1000);
  EXPECT_EQ(f[4], 1.0);
}

TEST(SamplerTest, TopPAppliesAfterTopKAndTemperature) {
  SamplingOptions o;
  o.seed = 12;
  o.temperature = 2.0f;
  o.top_k = 4;  // 4, 5, 1, 0
  o.top_p = 0.6f;
  std::vector<bool> top4(8, false);
  top4[4] = top4[5] = top4[1] = top4[0] = true;
  // The nucleus of the top-k distribution, not of the full one.
  const std::vector<bool> keep = Nucleus(Softmax(kLogits, 2.0, top4), 0.6);
  ASSERT_NE(keep, Nucleus(Softmax(kLogits, 2.0), 0.6));
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, 2.0, keep), kDraws);
}

TEST(SamplerTest, MinPDropsTokensBelowAFractionOfTheBest) {
  const std::vector<double> p = Softmax(kLogits);
  SamplingOptions o;
  o.seed = 13;
  o.min_p = 0.3f;  // p >= 0.3 * p(4): 4, 5 (e^-0.5 = .61), 1 (e^-1 = .37); not 0 (e^-2)
  std::vector<bool> keep(8);
  for (int i = 0; i < 8; ++i) keep[i] = p[i] >= 0.3 * p[4];
  EXPECT_EQ(std::count(keep.begin(), keep.end(), true), 3);
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, 1, keep), kDraws);
  // With temperature the ratio is taken on the tempered distribution.
  o.temperature = 0.5f;  // ratios e^-1 (5), e^-2 (1): only 4 and 5 stay
  const std::vector<double> pt = Softmax(kLogits, 0.5);
  for (int i = 0; i < 8; ++i) keep[i] = pt[i] >= 0.3 * pt[4];
  EXPECT_EQ(std::count(keep.begin(), keep.end(), true), 2);
  ExpectMatches(Frequencies(o, kLogits, kDraws), Softmax(kLogits, 0.5, keep), kDraws);
}

TEST(SamplerTest, FilterTiesKeepTheLowerIds) {
  const std::vector<float> flat(6, 1.0f);
  SamplingOptions o;
  o.seed = 4;
  o.top_k = 2;
  ExpectMatches(Frequencies(o, flat, 20000), {0.5, 0.5, 0, 0, 0, 0}, 20000);
  o.top_k = 0;
  o.top_p = 0.5f;  // 3 of 6 equal tokens reach one half
  ExpectMatches(Frequencies(o, flat, 20000), {1 / 3.0, 1 / 3.0, 1 / 3.0, 0, 0, 0}, 20000);
}

// A model-sized vocabulary: the nucleus found by the partial sort equals a full sort's.
TEST(SamplerTest, TopPOverALargeVocabularyNeverLeavesTheNucleus) {
  constexpr int kVocab = 49152;
  std::mt19937_64 rng(2024);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(kVocab);
  for (float& l : logits) l = normal(rng);
  const std::vector<double> p = Softmax(logits);
  std::vector<int> order(kVocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  for (float top_p : {0.3f, 0.9f, 0.99f}) {
    std::set<int> nucleus;
    double cum = 0;
    for (int id : order) {
      if (!nucleus.empty() && cum >= top_p) break;
      nucleus.insert(id);
      cum += p[id];
    }
    SamplingOptions o;
    o.seed = 17;
    o.top_p = top_p;
    Sampler s(o, {});
    std::set<int> drawn;
    for (int i = 0; i < 300; ++i) {
      const int t = s.Sample(logits.data(), kVocab).token;
      ASSERT_TRUE(nucleus.contains(t)) << "top_p " << top_p << " drew " << t;
      drawn.insert(t);
    }
    // And it does draw from more than a few of them.
    EXPECT_GT(drawn.size(), std::min<size_t>(nucleus.size() / 2, 50)) << top_p;
  }
}

// --- penalties -----------------------------------------------------------------------------------

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingOptions o;
  o.temperature = 0;
  o.repetition_penalty = 2.0f;
  // Token 2 (4.0) is in the prompt: 4.0 / 2 = 2.0 < 3.0, so token 1 wins.
  const std::vector<float> logits = {1.0f, 3.0f, 4.0f};
  Sampler greedy(o, std::vector<int32_t>{2, 2, 2});
  EXPECT_EQ(greedy.Sample(logits.data(), 3).token, 1);
  // Negative logits are multiplied: -1 * 2 = -2 < -1.5.
  const std::vector<float> neg = {-1.5f, -1.0f};
  Sampler greedy2(o, std::vector<int32_t>{1});
  EXPECT_EQ(greedy2.Sample(neg.data(), 2).token, 0);
  // Generated tokens count too: after picking 1 it is penalised (3 / 2 = 1.5 > 1.0 still).
  const std::vector<float> close = {2.0f, 3.0f};
  Sampler greedy3(o, {});
  EXPECT_EQ(greedy3.Sample(close.data(), 2).token, 1);
  EXPECT_EQ(greedy3.Sample(close.data(), 2).token, 0);  // 3 / 2 = 1.5 < 2
  // The sampled distribution is the softmax of the penalised logits.
  SamplingOptions r;
  r.seed = 21;
  r.repetition_penalty = 1.5f;
  std::vector<float> penalised = kLogits;
  penalised[4] /= 1.5f;
  penalised[3] *= 1.5f;
  // One draw per sampler (a sampler's own draws would add generated tokens to the penalty),
  // over many seeds.
  std::vector<double> counts(8, 0);
  for (int i = 0; i < 20000; ++i) {
    r.seed = static_cast<uint64_t>(i) * 7919 + 1;
    Sampler one(r, std::vector<int32_t>{4, 3});
    counts[one.Sample(kLogits.data(), 8).token] += 1;
  }
  for (double& c : counts) c /= 20000;
  ExpectMatches(counts, Softmax(penalised), 20000);
}

TEST(SamplerTest, FrequencyPenaltyGrowsWithCountPresencePenaltyDoesNot) {
  SamplingOptions o;
  o.temperature = 0;
  o.frequency_penalty = 0.6f;
  // Logits 0: 2.0, 1: 1.0. Picks 0 (2.0), 0 (1.4), then 1 (1.0 vs 0.8), then 0 (0.8 vs 0.4).
  const std::vector<float> logits = {2.0f, 1.0f};
  Sampler freq(o, std::vector<int32_t>{0, 0, 0});  // the prompt does not count
  std::vector<int32_t> got;
  for (int i = 0; i < 4; ++i) got.push_back(freq.Sample(logits.data(), 2).token);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 0, 1, 0}));

  SamplingOptions p;
  p.temperature = 0;
  p.presence_penalty = 0.6f;
  // 0 once penalised (1.4) and stays 1.4 however often it is picked: always 0.
  Sampler pres(p, {});
  got.clear();
  for (int i = 0; i < 4; ++i) got.push_back(pres.Sample(logits.data(), 2).token);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 0, 0, 0}));
  p.presence_penalty = 1.5f;  // 2.0 - 1.5 = 0.5 < 1.0; then 1 is also penalised: -0.5
  Sampler pres2(p, {});
  got.clear();
  for (int i = 0; i < 3; ++i) got.push_back(pres2.Sample(logits.data(), 2).token);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 0}));
  // A negative penalty encourages repetition.
  SamplingOptions n;
  n.temperature = 0;
  n.frequency_penalty = -2.0f;
  const std::vector<float> flip = {1.0f, 1.5f};
  Sampler neg(n, {});
  EXPECT_EQ(neg.Sample(flip.data(), 2).token, 1);
  EXPECT_EQ(neg.Sample(flip.data(), 2).token, 1);
}

// --- seeds ---------------------------------------------------------------------------------------

std::vector<int32_t> Draw(uint64_t seed, int n, float top_p = 1.0f) {
  SamplingOptions o;
  o.seed = seed;
  o.temperature = 1.5f;
  o.top_p = top_p;
  o.frequency_penalty = 0.1f;
  Sampler s(o, std::vector<int32_t>{1, 2});
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) out.push_back(s.Sample(kLogits.data(), 8).token);
  return out;
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedsDiffer) {
  EXPECT_EQ(Draw(1, 200), Draw(1, 200));
  EXPECT_EQ(Draw(0, 200, 0.9f), Draw(0, 200, 0.9f));
  EXPECT_NE(Draw(1, 200), Draw(2, 200));
  EXPECT_NE(Draw(0, 200), Draw(1, 200));
  // Not degenerate: many distinct tokens appear.
  const std::vector<int32_t> d = Draw(3, 200);
  EXPECT_GE(std::set<int32_t>(d.begin(), d.end()).size(), 6u);
}

// --- logprobs ------------------------------------------------------------------------------------

TEST(SamplerTest, LogprobsAreTheRawLogSoftmaxBestFirst) {
  SamplingOptions o;
  o.seed = 8;
  o.temperature = 0.3f;  // do not affect logprobs
  o.repetition_penalty = 1.8f;
  o.logprobs = true;
  o.top_logprobs = 3;
  Sampler s(o, std::vector<int32_t>{4});
  const std::vector<double> p = Softmax(kLogits);
  for (int i = 0; i < 20; ++i) {
    SampleResult r = s.Sample(kLogits.data(), 8);
    EXPECT_NEAR(r.logprob, std::log(p[r.token]), 1e-5);
    ASSERT_EQ(r.top.size(), 3u);
    EXPECT_EQ(r.top[0].token, 4);
    EXPECT_EQ(r.top[1].token, 5);
    EXPECT_EQ(r.top[2].token, 1);
    for (const TokenLogprob& t : r.top) EXPECT_NEAR(t.logprob, std::log(p[t.token]), 1e-5);
  }
}

TEST(SamplerTest, LogprobsOnlyWhenAsked) {
  SamplingOptions o;
  o.top_logprobs = 5;  // ignored without logprobs
  Sampler s(o, {});
  SampleResult r = s.Sample(kLogits.data(), 8);
  EXPECT_EQ(r.logprob, 0.0f);
  EXPECT_TRUE(r.top.empty());
  o.logprobs = true;
  o.top_logprobs = 0;
  Sampler s2(o, {});
  r = s2.Sample(kLogits.data(), 8);
  EXPECT_LT(r.logprob, 0.0f);
  EXPECT_TRUE(r.top.empty());
  o.top_logprobs = 20;  // more than the vocabulary: all of it
  Sampler s3(o, {});
  EXPECT_EQ(s3.Sample(kLogits.data(), 8).top.size(), 8u);
}

TEST(SamplerTest, LogprobsAreStableForHugeLogits) {
  const std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, -kInf};
  SamplingOptions o;
  o.temperature = 0;
  o.logprobs = true;
  o.top_logprobs = 4;
  Sampler s(o, {});
  SampleResult r = s.Sample(logits.data(), 4);
  EXPECT_EQ(r.token, 0);
  const double lse = 1000.0 + std::log1p(std::exp(-1.0));
  EXPECT_NEAR(r.logprob, 1000.0 - lse, 1e-4);
  ASSERT_EQ(r.top.size(), 4u);
  EXPECT_NEAR(r.top[1].logprob, 999.0 - lse, 1e-4);
  EXPECT_NEAR(r.top[2].logprob, -2000.0 - (lse - 1000.0), 1e-2);
  EXPECT_EQ(r.top[3].logprob, -kInf);
  for (const TokenLogprob& t : r.top) EXPECT_FALSE(std::isnan(t.logprob));
}

}  // namespace
}  // namespace shardserve
