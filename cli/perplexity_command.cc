// `shardserve perplexity`: teacher-forced scoring of a text file, as llama.cpp's
// llama-perplexity (windows of --context tokens, the second half of each scored).
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cli/commands.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "worker/engine/model_runner.h"
#include "worker/text/model_text.h"
#include "worker/weights/model_weights.h"

namespace shardserve::cli {

namespace {

// -log softmax(logits)[target], in double.
double NegativeLogLikelihood(const float* logits, int vocab, int32_t target) {
  float max = logits[0];
  for (int i = 1; i < vocab; ++i) max = std::max(max, logits[i]);
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  return std::log(sum) + max - static_cast<double>(logits[target]);
}

}  // namespace

int RunPerplexity(const PerplexityOptions& options) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "shardserve perplexity: " << status.message() << "\n";
    return 1;
  };
  ActivationMode activations;
  if (options.activations == "q8") {
    activations = ActivationMode::kQ8;
  } else if (options.activations == "f32") {
    activations = ActivationMode::kF32;
  } else {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--activations: '", options.activations, "' is not one of q8, f32")));
  }
  if (options.context < 4) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--context: ", options.context, " tokens (at least 4)")));
  }
  absl::StatusOr<std::string> raw = ReadFileToString(options.text_file);
  if (!raw.ok()) return fail(raw.status());
  absl::StatusOr<ModelText> text = LoadModelText(options.model);
  if (!text.ok()) return fail(text.status());
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = ModelWeights::Open(options.model);
  if (!weights.ok()) return fail(weights.status());

  // The text's tokens without special tokens; the tokenizer's own leading tokens (a BOS, if
  // its post-processor adds one) start every window.
  const Tokenizer& tokenizer = *text->tokenizer;
  const std::vector<int32_t> tokens = tokenizer.Encode(*raw, /*add_special_tokens=*/false);
  const std::vector<int32_t> prefix = tokenizer.Encode("", /*add_special_tokens=*/true);
  const int64_t n_ctx = options.context;
  const int64_t per_window = n_ctx - static_cast<int64_t>(prefix.size());
  if (per_window < 4) {
    return fail(absl::InvalidArgumentError(absl::StrCat("--context: ", n_ctx,
                                                        " tokens is too "
                                                        "short for the model's prefix")));
  }
  if (tokens.size() < 2) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat(options.text_file, ": ", tokens.size(), " tokens; need at least 2")));
  }

  RunnerOptions runner_options;
  runner_options.threads = options.threads;
  runner_options.activations = activations;
  runner_options.context_length = n_ctx;
  runner_options.kv_cache_tokens = n_ctx;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), runner_options);
  if (!runner.ok()) return fail(runner.status());
  const int vocab = (*runner)->vocab_size();

  // Windows of n_ctx tokens (prefix included); the last may be shorter. In each, the logits at
  // positions [first, len - 1) predict the tokens after them, first = len / 2 (llama.cpp's
  // choice: every scored token has at least half a window of context).
  const absl::Time start = absl::Now();
  double nll = 0.0;
  int64_t scored = 0, windows = 0, evaluated = 0;
  std::vector<int32_t> window;
  for (size_t begin = 0; begin < tokens.size(); begin += per_window) {
    const size_t end = std::min(tokens.size(), begin + per_window);
    window.assign(prefix.begin(), prefix.end());
    window.insert(window.end(), tokens.begin() + begin, tokens.begin() + end);
    const int64_t len = static_cast<int64_t>(window.size());
    const int64_t first = std::max<int64_t>(len / 2, static_cast<int64_t>(prefix.size()));
    if (len - 1 - first <= 0) continue;  // a tail too short to score
    absl::Status st = (*runner)->Score(window, [&](int64_t i, const float* logits) {
      if (i < first || i >= len - 1) return;
      nll += NegativeLogLikelihood(logits, vocab, window[i + 1]);
      ++scored;
    });
    if (!st.ok()) return fail(st);
    ++windows;
    evaluated += len;
  }
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (scored == 0) return fail(absl::InvalidArgumentError("no token could be scored"));
  const double mean = nll / static_cast<double>(scored);
  const double ppl = std::exp(mean);
  if (options.json) {
    nlohmann::ordered_json out;
    out["perplexity"] = ppl;
    out["mean_nll"] = mean;
    out["scored_tokens"] = scored;
    out["tokens"] = tokens.size();
    out["windows"] = windows;
    out["context"] = n_ctx;
    out["seconds"] = seconds;
    out["tokens_per_second"] = seconds > 0 ? evaluated / seconds : 0.0;
    std::cout << out.dump() << "\n";
  } else {
    std::cout << absl::StrFormat("perplexity %.4f (mean NLL %.4f) over %d scored tokens\n", ppl,
                                 mean, scored);
    std::cerr << absl::StrFormat("%d tokens in %d windows of up to %d, %.1f s (%.1f tok/s)\n",
                                 tokens.size(), windows, n_ctx, seconds,
                                 seconds > 0 ? evaluated / seconds : 0.0);
  }
  return 0;
}

}  // namespace shardserve::cli
