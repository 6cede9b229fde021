// Picks the next token of one sequence from its logits, as vLLM / llama.cpp do, in this order:
// repetition penalty (prompt and generated tokens, HF's rule: positive logits divided, negative
// multiplied), frequency and presence penalties (generated tokens only, OpenAI's rule), then
// temperature; temperature 0 is greedy (argmax, lowest id on ties); else top_k, top_p, min_p
// filter and a draw from the renormalised distribution with the sequence's own RNG.
//
// Logprobs are log-softmax of the raw logits (the model's distribution, before penalties and
// temperature), like vLLM's default and OpenAI's API.
//
// One Sampler per sequence; not thread-safe (the engine loop owns it). The same options, seed,
// prompt and logits give the same tokens.
#ifndef SHARDSERVE_WORKER_ENGINE_SAMPLER_H_
#define SHARDSERVE_WORKER_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/types/span.h"

namespace shardserve {

struct SamplingOptions {
  float temperature = 1.0f;         // 0: greedy
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // 1: off
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off
  float frequency_penalty = 0.0f;   // [-2, 2]
  float presence_penalty = 0.0f;    // [-2, 2]
  uint64_t seed = 0;
  int top_logprobs = 0;  // alternatives returned per position (0..20)
  bool logprobs = false;
};

// INVALID_ARGUMENT naming the field (`temperature`, `top_p`, ...) for values out of range:
// temperature < 0 or > 100, top_k < 0, top_p not in (0, 1], min_p not in [0, 1],
// repetition_penalty <= 0, frequency/presence penalty outside [-2, 2], top_logprobs > 20, or
// non-finite values.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;           // of `token` (filled when options.logprobs)
  std::vector<TokenLogprob> top;  // the top_logprobs most likely tokens, best first
};

class Sampler {
 public:
  // `prompt` feeds the repetition penalty.
  Sampler(const SamplingOptions& options, absl::Span<const int32_t> prompt);

  // Samples from logits[0..vocab) and records the token as generated. `logits` is not modified.
  SampleResult Sample(const float* logits, int vocab);

  const SamplingOptions& options() const { return options_; }

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  absl::flat_hash_map<int32_t, int> generated_counts_;
  std::vector<int32_t> seen_;  // distinct prompt + generated tokens (repetition penalty)
  absl::flat_hash_map<int32_t, bool> seen_set_;
  std::vector<float> scratch_;
  std::vector<int32_t> index_scratch_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_SAMPLER_H_
