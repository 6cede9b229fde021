#include "worker/engine/scheduler.h"

#include <algorithm>

namespace shardserve {

namespace {

int64_t BlocksFor(int64_t tokens, int block_tokens) {
  return tokens <= 0 ? 0 : (tokens + block_tokens - 1) / block_tokens;
}

// One pass of the policy over `snapshot`; `allow_admit` is false once something was preempted.
Schedule ScheduleOnce(const SchedulerSnapshot& snapshot, const SchedulerConfig& config,
                      bool allow_admit) {
  Schedule out;
  const int bt = std::max(1, config.block_tokens);
  int64_t free = snapshot.free_blocks;
  int64_t budget = config.max_step_tokens;

  // Running sequences still in play, oldest first; preemption pops from the back.
  std::vector<const SequenceSnapshot*> running;
  for (const SequenceSnapshot& s : snapshot.running) running.push_back(&s);

  // 1. Decodes.
  for (size_t i = 0; i < running.size() && budget > 0; ++i) {
    const SequenceSnapshot& s = *running[i];
    if (s.tokens - s.computed != 1) continue;
    const int64_t need = std::max<int64_t>(0, BlocksFor(s.computed + 1, bt) - s.blocks);
    bool self_preempted = false;
    while (need > free) {
      const SequenceSnapshot* victim = running.back();
      running.pop_back();
      out.preempt.push_back(victim->id);
      free += victim->blocks;
      if (victim == &s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // it was the newest left: nothing after it remains
    free -= need;
    out.decode.push_back(s.id);
    --budget;
  }

  // Blocks that sequences part way through their prompt will still need for the rest of it and
  // their first sampled token: admissions leave them free.
  int64_t outstanding = 0;
  // Runs a chunk of `s` within the budget and the blocks it holds plus the free ones.
  auto run_chunk = [&](const SequenceSnapshot& s) -> bool {
    const int64_t fits = (s.blocks + free) * bt - s.computed;
    const int64_t n = std::min({s.tokens - s.computed, budget, fits});
    if (n <= 0) return false;
    const int64_t held = std::max<int64_t>(s.blocks, BlocksFor(s.computed + n, bt));
    free -= held - s.blocks;
    budget -= n;
    outstanding += std::max<int64_t>(0, BlocksFor(s.tokens + 1, bt) - held);
    out.prefill.push_back({s.id, s.computed, static_cast<int>(n), s.computed + n == s.tokens});
    return true;
  };

  // 2a. Running sequences part way through their prompt.
  for (const SequenceSnapshot* s : running) {
    if (s->tokens - s->computed <= 1) continue;
    if (budget <= 0 || !run_chunk(*s)) {
      outstanding += std::max<int64_t>(0, BlocksFor(s->tokens + 1, bt) - s->blocks);
    }
  }

  // 2b. Admissions, FCFS.
  if (allow_admit && out.preempt.empty()) {
    int64_t num_running = static_cast<int64_t>(running.size());
    for (const SequenceSnapshot& s : snapshot.waiting) {
      if (budget <= 0 || num_running >= config.max_running) break;
      if (s.tokens - s.computed <= 0) continue;  // nothing to run (not expected)
      const int64_t whole = std::max<int64_t>(0, BlocksFor(s.tokens + 1, bt) - s.blocks);
      if (whole > free - outstanding) break;
      if (!run_chunk(s)) break;
      out.admit.push_back(s.id);
      ++num_running;
    }
  }
  return out;
}

}  // namespace

int Schedule::num_tokens() const {
  int n = static_cast<int>(decode.size());
  for (const PrefillChunk& c : prefill) n += c.tokens;
  return n;
}

Schedule ScheduleStep(const SchedulerSnapshot& snapshot, const SchedulerConfig& config) {
  Schedule out = ScheduleOnce(snapshot, config, /*allow_admit=*/true);
  if (out.num_tokens() > 0 || snapshot.running.empty()) return out;
  // Nothing can run although sequences are running: they are all part way through prompts
  // whose next chunk has no free block. Preempt the newest until the others can go on.
  SchedulerSnapshot rest = snapshot;
  std::vector<int64_t> evicted;
  while (out.num_tokens() == 0 && !rest.running.empty()) {
    evicted.push_back(rest.running.back().id);
    rest.free_blocks += rest.running.back().blocks;
    rest.running.pop_back();
    out = ScheduleOnce(rest, config, /*allow_admit=*/false);
  }
  out.preempt.insert(out.preempt.begin(), evicted.begin(), evicted.end());
  return out;
}

}  // namespace shardserve
