#include "gateway/router.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace shardserve {
namespace {

constexpr uint64_t kFnvOffset = 14695981039346656037ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

uint64_t Fnv1a(uint64_t h, absl::string_view bytes) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= kFnvPrime;
  }
  return h;
}

// splitmix64's finaliser: spreads FNV's weak low bits before comparing weights.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

double WorkerLoad(const WorkerSnapshot& worker, const RouterConfig& config) {
  double load = worker.running + worker.waiting;
  if (worker.kv_blocks_total > 0) {
    load += config.kv_weight * static_cast<double>(worker.kv_blocks_used) /
            static_cast<double>(worker.kv_blocks_total);
  }
  return load;
}

absl::StatusOr<size_t> PickWorker(absl::Span<const WorkerSnapshot> workers,
                                  const RouteRequest& request, const RouterConfig& config) {
  std::vector<size_t> candidates;
  int serving = 0, unhealthy = 0, excluded = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    const WorkerSnapshot& w = workers[i];
    if (std::find(w.models.begin(), w.models.end(), request.model) == w.models.end()) continue;
    ++serving;
    if (std::find(request.exclude.begin(), request.exclude.end(), w.id) != request.exclude.end()) {
      ++excluded;
    } else if (!w.up || !w.healthy) {
      ++unhealthy;
    } else {
      candidates.push_back(i);
    }
  }
  if (serving == 0) {
    return absl::NotFoundError(absl::StrCat("model '", request.model, "' is not served"));
  }
  if (candidates.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "no worker can take a request for model '", request.model, "': ", serving, " serve it, ",
        unhealthy, " down or not healthy, ", excluded, " already failed it"));
  }

  auto load = [&](size_t i) { return WorkerLoad(workers[i], config); };
  size_t least = candidates[0];
  for (size_t i : candidates) {
    if (load(i) < load(least) || (load(i) == load(least) && workers[i].id < workers[least].id)) {
      least = i;
    }
  }
  if (request.prefix_key == 0) return least;

  size_t preferred = candidates[0];
  uint64_t best = 0;
  for (size_t i : candidates) {
    const uint64_t weight = Mix(Fnv1a(request.prefix_key, workers[i].id));
    if (weight > best || (weight == best && workers[i].id < workers[preferred].id)) {
      best = weight;
      preferred = i;
    }
  }
  return load(preferred) - load(least) > config.affinity_margin ? least : preferred;
}

uint64_t PrefixKey(absl::string_view model,
                   absl::Span<const std::pair<std::string, std::string>> role_content) {
  const size_t prefix = role_content.empty() ? 0 : role_content.size() - 1;
  if (prefix == 0) return 0;  // a first message has no prefix worth following
  uint64_t h = Fnv1a(kFnvOffset, model);
  for (size_t i = 0; i < prefix; ++i) {
    h = Fnv1a(h, absl::string_view("\x1e", 1));  // record separator between fields
    h = Fnv1a(h, role_content[i].first);
    h = Fnv1a(h, absl::string_view("\x1f", 1));
    h = Fnv1a(h, role_content[i].second);
  }
  return h == 0 ? 1 : h;  // 0 means "no preference"
}

}  // namespace shardserve
