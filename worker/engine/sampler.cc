#include "worker/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardserve {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

absl::Status OutOfRange(absl::string_view field, double value, absl::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s: %g is out of range (%s)", field, value, rule));
}

// Uniform double in [0, 1) from the top 53 bits: the same on every standard library (unlike
// std::uniform_real_distribution, whose algorithm is unspecified).
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// A logit with NaN read as -inf (a token that can never be picked).
float Clean(float x) { return std::isnan(x) ? kNegInf : x; }

// The smallest best-first prefix of cand[0, n) whose weight reaches top_p of the total (at least
// one token); moves it to the front and returns its size. `sorted`: cand[0, n) is best first.
// Without a full sort: weights are bucketed by their float bits (8 buckets per octave; positive
// floats order like their bits), the bucket where the running mass crosses the target is found,
// and only that bucket is sorted. O(n) plus the sort of one bucket.
size_t TopPPrefix(const std::vector<float>& w, std::vector<int32_t>& cand, size_t n, bool sorted,
                  float top_p) {
  auto better = [&w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) total += w[cand[i]];
  const double target = static_cast<double>(top_p) * total;
  // Scan a best-first run, counting the tokens kept.
  double cum = 0.0;
  size_t keep = 0;
  auto take_sorted = [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      if (keep > 0 && cum >= target) return;
      cum += w[cand[i]];
      ++keep;
    }
  };
  if (sorted) {
    take_sorted(0, n);
    return std::max<size_t>(keep, 1);
  }
  auto key = [&w](int32_t id) {
    uint32_t bits;
    std::memcpy(&bits, &w[id], sizeof(bits));
    return bits >> 20;  // exponent and 3 mantissa bits; weights in (0, 1] give <= 0x3F8
  };
  constexpr uint32_t kBuckets = (0x3F800000u >> 20) + 1;
  std::vector<double> mass(kBuckets, 0.0);
  for (size_t i = 0; i < n; ++i) mass[std::min(key(cand[i]), kBuckets - 1)] += w[cand[i]];
  uint32_t cross = 0;
  double above = 0.0;
  for (uint32_t k = kBuckets; k-- > 0;) {
    if (above + mass[k] >= target || k == 0) {
      cross = k;
      break;
    }
    above += mass[k];
  }
  // Buckets above `cross` first (their order does not matter: all of them are kept), then the
  // crossing bucket best first, then the rest.
  auto bucket_of = [&](int32_t id) { return std::min(key(id), kBuckets - 1); };
  auto mid = std::partition(cand.begin(), cand.begin() + n,
                            [&](int32_t id) { return bucket_of(id) > cross; });
  auto end =
      std::partition(mid, cand.begin() + n, [&](int32_t id) { return bucket_of(id) == cross; });
  std::sort(mid, end, better);
  keep = static_cast<size_t>(mid - cand.begin());
  cum = above;
  take_sorted(keep, static_cast<size_t>(end - cand.begin()));
  return std::max<size_t>(keep, 1);
}

}  // namespace

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0.0f || o.temperature > 100.0f) {
    return OutOfRange("temperature", o.temperature, "must be in [0, 100]");
  }
  if (o.top_k < 0) return OutOfRange("top_k", o.top_k, "must be >= 0; 0 is off");
  if (!std::isfinite(o.top_p) || o.top_p <= 0.0f || o.top_p > 1.0f) {
    return OutOfRange("top_p", o.top_p, "must be in (0, 1]");
  }
  if (!std::isfinite(o.min_p) || o.min_p < 0.0f || o.min_p > 1.0f) {
    return OutOfRange("min_p", o.min_p, "must be in [0, 1]");
  }
  if (!std::isfinite(o.repetition_penalty) || o.repetition_penalty <= 0.0f) {
    return OutOfRange("repetition_penalty", o.repetition_penalty, "must be > 0; 1 is off");
  }
  if (!std::isfinite(o.frequency_penalty) || std::abs(o.frequency_penalty) > 2.0f) {
    return OutOfRange("frequency_penalty", o.frequency_penalty, "must be in [-2, 2]");
  }
  if (!std::isfinite(o.presence_penalty) || std::abs(o.presence_penalty) > 2.0f) {
    return OutOfRange("presence_penalty", o.presence_penalty, "must be in [-2, 2]");
  }
  if (o.top_logprobs < 0 || o.top_logprobs > 20) {
    return OutOfRange("top_logprobs", o.top_logprobs, "must be in [0, 20]");
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingOptions& options, absl::Span<const int32_t> prompt)
    : options_(options), rng_(options.seed) {
  for (int32_t t : prompt) {
    if (seen_set_.emplace(t, true).second) seen_.push_back(t);
  }
}

SampleResult Sampler::Sample(const float* logits, int vocab) {
  SampleResult result;
  if (vocab <= 0) return result;

  // Penalised logits.
  scratch_.resize(vocab);
  for (int i = 0; i < vocab; ++i) scratch_[i] = Clean(logits[i]);
  const float rep = options_.repetition_penalty;
  if (rep != 1.0f) {
    for (int32_t t : seen_) {
      if (t < 0 || t >= vocab) continue;
      float& l = scratch_[t];
      l = l > 0.0f ? l / rep : l * rep;
    }
  }
  if (options_.frequency_penalty != 0.0f || options_.presence_penalty != 0.0f) {
    for (const auto& [t, count] : generated_counts_) {
      if (t < 0 || t >= vocab) continue;
      scratch_[t] -=
          options_.frequency_penalty * static_cast<float>(count) + options_.presence_penalty;
    }
  }

  // Argmax (lowest id on ties); also the fallback when nothing is finite.
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i) {
    if (scratch_[i] > scratch_[best]) best = i;
  }
  const float max_logit = scratch_[best];

  int32_t token = best;
  if (options_.temperature > 0.0f && std::isfinite(max_logit)) {
    // Candidates: the top_k best (best first; ties: lower id, so the draw is fully determined),
    // or every token in id order.
    auto better = [this](int32_t a, int32_t b) {
      return scratch_[a] > scratch_[b] || (scratch_[a] == scratch_[b] && a < b);
    };
    std::vector<int32_t>& cand = index_scratch_;
    cand.clear();
    bool sorted = false;  // whether cand is best first
    if (options_.top_k > 0 && options_.top_k < vocab) {
      // A heap of the k best so far, the worst on top: one comparison for most tokens.
      const size_t k = static_cast<size_t>(options_.top_k);
      for (int32_t i = 0; i < vocab; ++i) {
        if (cand.size() < k) {
          cand.push_back(i);
          std::push_heap(cand.begin(), cand.end(), better);
        } else if (better(i, cand.front())) {
          std::pop_heap(cand.begin(), cand.end(), better);
          cand.back() = i;
          std::push_heap(cand.begin(), cand.end(), better);
        }
      }
      std::sort_heap(cand.begin(), cand.end(), better);
      sorted = true;
    } else {
      cand.resize(vocab);
      for (int32_t i = 0; i < vocab; ++i) cand[i] = i;
    }
    // Unnormalised probabilities w = exp((l - l_max) / T) in (0, 1], the best token's 1, so
    // nothing overflows; tokens whose weight underflows to 0 can never be drawn and drop out.
    const float inv_t = 1.0f / options_.temperature;
    size_t n = 0;
    for (int32_t id : cand) {
      const float l = scratch_[id];
      const float w = l == kNegInf ? 0.0f : std::exp((l - max_logit) * inv_t);
      scratch_[id] = w;
      if (w > 0.0f) cand[n++] = id;
    }
    cand.resize(n);
    if (options_.top_p < 1.0f) n = TopPPrefix(scratch_, cand, n, sorted, options_.top_p);
    if (options_.min_p > 0.0f) {
      // p / p_max = w whatever the normalisation (the best token's w is 1).
      size_t kept = 0;
      for (size_t i = 0; i < n; ++i) {
        if (scratch_[cand[i]] >= options_.min_p) cand[kept++] = cand[i];
      }
      n = kept;
    }
    // Inverse-CDF draw over the remaining candidates.
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) total += scratch_[cand[i]];
    const double u = Uniform01(rng_) * total;
    double cum = 0.0;
    if (n > 0) token = cand[n - 1];
    for (size_t i = 0; i < n; ++i) {
      cum += scratch_[cand[i]];
      if (u < cum) {
        token = cand[i];
        break;
      }
    }
  }
  result.token = token;
  ++generated_counts_[token];
  if (seen_set_.emplace(token, true).second) seen_.push_back(token);

  if (options_.logprobs) {
    // log-softmax of the raw logits: exp relative to the max (never overflows), summed in double.
    float raw_max = kNegInf;
    for (int i = 0; i < vocab; ++i) raw_max = std::max(raw_max, Clean(logits[i]));
    double sum = 0.0;
    if (std::isfinite(raw_max)) {
      for (int i = 0; i < vocab; ++i) sum += std::exp(Clean(logits[i]) - raw_max);
    }
    const double log_z = std::isfinite(raw_max) ? raw_max + std::log(sum) : 0.0;
    auto logprob = [&](int32_t t) {
      return static_cast<float>(static_cast<double>(Clean(logits[t])) - log_z);
    };
    result.logprob = logprob(token);
    // The k best in one pass: `top` stays best first (ties: lower id), insertion from the back.
    const size_t k = static_cast<size_t>(std::min(options_.top_logprobs, vocab));
    if (k > 0) {
      std::vector<TokenLogprob>& top = result.top;
      top.reserve(k + 1);
      for (int i = 0; i < vocab; ++i) {
        const float l = Clean(logits[i]);
        if (top.size() == k && !(l > top.back().logprob)) continue;
        if (top.size() == k) top.pop_back();
        size_t pos = top.size();
        while (pos > 0 && l > top[pos - 1].logprob) --pos;
        top.insert(top.begin() + pos, TokenLogprob{i, l});
      }
      for (TokenLogprob& t : top) t.logprob = logprob(t.token);
    }
  }
  return result;
}

}  // namespace shardserve
