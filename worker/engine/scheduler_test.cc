#include "worker/engine/scheduler.h"

#include <algorithm>
#include <deque>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/kv_cache.h"

namespace shardserve {

void PrintTo(const PrefillChunk& c, std::ostream* os) {
  *os << "{id " << c.id << ", start " << c.start << ", tokens " << c.tokens
      << (c.samples ? ", samples}" : "}");
}

namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

SchedulerConfig Config(int block_tokens = 16, int max_step_tokens = 512, int max_running = 8) {
  SchedulerConfig c;
  c.block_tokens = block_tokens;
  c.max_step_tokens = max_step_tokens;
  c.max_running = max_running;
  return c;
}

// A running sequence that decodes next: `tokens` in all, all but the last in the cache, holding
// exactly the blocks for its cached tokens (block_tokens 16).
SequenceSnapshot Decoding(int64_t id, int64_t tokens, int blocks = -1) {
  const int64_t computed = tokens - 1;
  return {id, tokens, computed, blocks >= 0 ? blocks : static_cast<int>((computed + 15) / 16)};
}
SequenceSnapshot Waiting(int64_t id, int64_t tokens) { return {id, tokens, 0, 0}; }

TEST(SchedulerTest, NothingToDo) {
  Schedule s = ScheduleStep({}, Config());
  EXPECT_THAT(s.decode, IsEmpty());
  EXPECT_THAT(s.prefill, IsEmpty());
  EXPECT_THAT(s.preempt, IsEmpty());
  EXPECT_THAT(s.admit, IsEmpty());
  EXPECT_EQ(s.num_tokens(), 0);
}

TEST(SchedulerTest, RunningSequencesDecodeOldestFirst) {
  SchedulerSnapshot snap;
  snap.running = {Decoding(3, 20), Decoding(1, 5), Decoding(2, 40)};
  snap.free_blocks = 10;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.decode, ElementsAre(3, 1, 2));
  EXPECT_THAT(s.prefill, IsEmpty());
  EXPECT_EQ(s.num_tokens(), 3);
}

TEST(SchedulerTest, LongPromptIsPrefilledInChunks) {
  SchedulerSnapshot snap;
  snap.waiting = {Waiting(7, 1000)};
  snap.free_blocks = 100;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.admit, ElementsAre(7));
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{7, 0, 512, false}));
  // Next step it is running, 512 in the cache (32 blocks).
  snap.waiting.clear();
  snap.running = {{7, 1000, 512, 32}};
  snap.free_blocks = 68;
  s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.admit, IsEmpty());
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{7, 512, 488, true}));
}

TEST(SchedulerTest, DecodesAndPrefillShareTheStepBudget) {
  SchedulerSnapshot snap;
  snap.running = {Decoding(1, 10), Decoding(2, 30)};
  snap.waiting = {Waiting(3, 600), Waiting(4, 5)};
  snap.free_blocks = 100;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.decode, ElementsAre(1, 2));
  EXPECT_THAT(s.admit, ElementsAre(3));  // 4 waits: no budget left
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{3, 0, 510, false}));
  EXPECT_EQ(s.num_tokens(), 512);
}

TEST(SchedulerTest, SeveralShortPromptsStartInOneStep) {
  SchedulerSnapshot snap;
  snap.waiting = {Waiting(1, 100), Waiting(2, 100), Waiting(3, 400)};
  snap.free_blocks = 100;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.admit, ElementsAre(1, 2, 3));
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{1, 0, 100, true}, PrefillChunk{2, 0, 100, true},
                                     PrefillChunk{3, 0, 312, false}));
}

TEST(SchedulerTest, WaitingQueueIsFirstComeFirstServed) {
  SchedulerSnapshot snap;
  snap.waiting = {Waiting(1, 200), Waiting(2, 10)};
  snap.free_blocks = 5;  // 2 would fit, 1 (13 blocks) does not: 2 waits behind it
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.admit, IsEmpty());
  EXPECT_EQ(s.num_tokens(), 0);
}

TEST(SchedulerTest, AdmissionNeedsTheWholePromptPlusOneToken) {
  SchedulerSnapshot snap;
  snap.waiting = {Waiting(1, 32)};  // 33 tokens: 3 blocks
  snap.free_blocks = 2;
  EXPECT_THAT(ScheduleStep(snap, Config()).admit, IsEmpty());
  snap.free_blocks = 3;
  EXPECT_THAT(ScheduleStep(snap, Config()).admit, ElementsAre(1));
}

TEST(SchedulerTest, AtMostMaxRunning) {
  SchedulerSnapshot snap;
  snap.running = {Decoding(1, 10), Decoding(2, 10)};
  snap.waiting = {Waiting(3, 10), Waiting(4, 10)};
  snap.free_blocks = 50;
  Schedule s = ScheduleStep(snap, Config(16, 512, 3));
  EXPECT_THAT(s.decode, ElementsAre(1, 2));
  EXPECT_THAT(s.admit, ElementsAre(3));
}

TEST(SchedulerTest, DecodesBeyondTheBudgetWait) {
  SchedulerSnapshot snap;
  snap.running = {Decoding(1, 10), Decoding(2, 10), Decoding(3, 10)};
  snap.free_blocks = 50;
  Schedule s = ScheduleStep(snap, Config(16, 2, 8));
  EXPECT_THAT(s.decode, ElementsAre(1, 2));
  EXPECT_THAT(s.preempt, IsEmpty());
}

TEST(SchedulerTest, DecodeThatNeedsABlockPreemptsTheNewest) {
  SchedulerSnapshot snap;
  // 1 has 16 tokens cached in 1 block: its 17th needs a second block. None is free.
  snap.running = {Decoding(1, 17, 1), Decoding(2, 5), Decoding(3, 40)};
  snap.waiting = {Waiting(9, 4)};
  snap.free_blocks = 0;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.preempt, ElementsAre(3));  // frees 3 blocks
  EXPECT_THAT(s.decode, ElementsAre(1, 2));
  EXPECT_THAT(s.admit, IsEmpty());  // no admissions in a step that preempts
  EXPECT_THAT(s.prefill, IsEmpty());
}

TEST(SchedulerTest, PreemptsAsManyAsNeededNewestFirst) {
  SchedulerSnapshot snap;
  // 2 needs a block; 4 and 3 hold none (just admitted, nothing cached yet).
  snap.running = {Decoding(1, 5), Decoding(2, 33, 2), {3, 50, 0, 0}, {4, 60, 0, 0}};
  snap.free_blocks = 0;
  Schedule s = ScheduleStep(snap, Config());
  // 4 and 3 free nothing; then 2 itself is the newest left.
  EXPECT_THAT(s.preempt, ElementsAre(4, 3, 2));
  EXPECT_THAT(s.decode, ElementsAre(1));
}

TEST(SchedulerTest, PrefillChunkIsLimitedByFreeBlocks) {
  SchedulerSnapshot snap;
  snap.running = {{1, 200, 32, 2}};
  snap.free_blocks = 3;  // 5 blocks: 80 tokens, 48 beyond the 32 cached
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{1, 32, 48, false}));
  EXPECT_THAT(s.preempt, IsEmpty());
}

TEST(SchedulerTest, AdmissionLeavesRoomForRunningPrompts) {
  SchedulerSnapshot snap;
  // 1 has 1000 tokens, 512 cached (32 blocks), budget 100 this step: 63 blocks for the whole
  // prompt plus one, 7 more after this chunk (612 tokens, 39 blocks) -> 24 outstanding.
  snap.running = {{1, 1000, 512, 32}};
  snap.waiting = {Waiting(2, 40)};  // 3 blocks
  snap.free_blocks = 7 + 24 + 2;
  Schedule s = ScheduleStep(snap, Config(16, 200, 8));
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{1, 512, 200, false}));
  // 200 tokens to 712: 45 blocks (13 taken), 18 outstanding of 63; 33 - 13 - 18 = 2 < 3.
  EXPECT_THAT(s.admit, IsEmpty());
  // With budget for the rest of 1's prompt (488 tokens, 31 blocks; none outstanding after),
  // 33 - 31 = 2 blocks are free: still too few for 2's 3.
  s = ScheduleStep(snap, Config(16, 600, 8));
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{1, 512, 488, true}));
  EXPECT_THAT(s.admit, IsEmpty());
  snap.free_blocks += 1;
  s = ScheduleStep(snap, Config(16, 600, 8));
  EXPECT_THAT(s.admit, ElementsAre(2));
  EXPECT_THAT(s.prefill,
              ElementsAre(PrefillChunk{1, 512, 488, true}, PrefillChunk{2, 0, 40, true}));
}

TEST(SchedulerTest, StalledPromptsPreemptTheNewest) {
  SchedulerSnapshot snap;
  // Both part way through their prompts, no free block: the newer gives its blocks back.
  snap.running = {{1, 100, 32, 2}, {2, 100, 48, 3}};
  snap.free_blocks = 0;
  Schedule s = ScheduleStep(snap, Config());
  EXPECT_THAT(s.preempt, ElementsAre(2));
  EXPECT_THAT(s.prefill, ElementsAre(PrefillChunk{1, 32, 48, false}));
  EXPECT_THAT(s.admit, IsEmpty());
}

// Drives the policy like the engine loop, with a real KvBlockManager, over random traffic:
// every plan fits the cache and the budget, every request completes, and they start in order.
TEST(SchedulerTest, RandomTrafficAlwaysProgressesWithinTheCache) {
  struct Seq {
    int64_t id;
    int64_t prompt, max_new;
    int64_t tokens, computed = 0;
  };
  int preemptions = 0, chunked = 0;
  for (uint64_t seed : {1, 2, 3, 4, 5, 6, 7, 8}) {
    std::mt19937_64 rng(seed);
    const int kBlockTokens = 4 + static_cast<int>(rng() % 13);
    const int kBlocks = 40 + static_cast<int>(rng() % 60);
    const SchedulerConfig config =
        Config(kBlockTokens, 16 + static_cast<int>(rng() % 200), 1 + static_cast<int>(rng() % 8));
    KvBlockManager blocks(kBlocks, kBlockTokens);
    std::deque<Seq> waiting;
    std::vector<Seq> running;
    int64_t next_id = 1, done = 0, arrived = 0;
    std::vector<int64_t> first_admitted;
    for (int step = 0; step < 20000 && (arrived < 60 || !waiting.empty() || !running.empty());
         ++step) {
      if (arrived < 60 && rng() % 3 == 0) {
        Seq s;
        s.id = next_id++;
        s.prompt = 1 + static_cast<int64_t>(rng() % 200);
        s.max_new = 1 + static_cast<int64_t>(rng() % 50);
        // As the engine's Submit: prompt + max_new must fit the whole cache.
        if (blocks.BlocksFor(s.prompt + s.max_new) > kBlocks) s.prompt = kBlockTokens;
        s.tokens = s.prompt;
        waiting.push_back(s);
        ++arrived;
      }
      SchedulerSnapshot snap;
      auto snapshot_of = [&](const Seq& s) {
        return SequenceSnapshot{s.id, s.tokens, s.computed,
                                static_cast<int>(blocks.BlockTable(s.id).size())};
      };
      for (const Seq& s : running) snap.running.push_back(snapshot_of(s));
      for (const Seq& s : waiting) snap.waiting.push_back(snapshot_of(s));
      snap.free_blocks = blocks.free_blocks();
      const Schedule plan = ScheduleStep(snap, config);
      ASSERT_LE(plan.num_tokens(), config.max_step_tokens);
      if (!running.empty() || !waiting.empty()) {
        ASSERT_TRUE(plan.num_tokens() > 0 || !plan.preempt.empty() || running.empty())
            << "stuck at step " << step;
      }
      // Preempt.
      preemptions += static_cast<int>(plan.preempt.size());
      for (int64_t id : plan.preempt) {
        auto it =
            std::find_if(running.begin(), running.end(), [&](const Seq& s) { return s.id == id; });
        ASSERT_NE(it, running.end());
        ASSERT_EQ(it->id, running.back().id) << "preempted a sequence that is not the newest";
        blocks.Free(id);
        it->computed = 0;
        waiting.push_front(*it);
        running.erase(it);
      }
      // Admit.
      for (int64_t id : plan.admit) {
        ASSERT_FALSE(waiting.empty());
        ASSERT_EQ(waiting.front().id, id) << "admitted out of order";
        if (std::find(first_admitted.begin(), first_admitted.end(), id) == first_admitted.end()) {
          first_admitted.push_back(id);
        }
        running.push_back(waiting.front());
        waiting.pop_front();
      }
      ASSERT_LE(static_cast<int>(running.size()), config.max_running);
      auto find = [&](int64_t id) -> Seq& {
        return *std::find_if(running.begin(), running.end(),
                             [&](const Seq& s) { return s.id == id; });
      };
      // Run: reserve exactly what the tokens need (as ModelRunner::AddToPlan) - it must fit.
      std::vector<int64_t> sampled;
      for (int64_t id : plan.decode) {
        Seq& s = find(id);
        ASSERT_EQ(s.tokens - s.computed, 1);
        ASSERT_TRUE(blocks.Reserve(id, s.computed + 1).ok()) << "decode does not fit";
        s.computed += 1;
        sampled.push_back(id);
      }
      for (const PrefillChunk& c : plan.prefill) {
        Seq& s = find(c.id);
        ASSERT_EQ(c.start, s.computed);
        ASSERT_GT(c.tokens, 0);
        ASSERT_LE(c.start + c.tokens, s.tokens);
        ASSERT_TRUE(blocks.Reserve(c.id, c.start + c.tokens).ok()) << "chunk does not fit";
        s.computed += c.tokens;
        ASSERT_EQ(c.samples, s.computed == s.tokens);
        if (c.samples) sampled.push_back(c.id);
        if (!c.samples) ++chunked;
      }
      // Sample: one more token, or done.
      for (int64_t id : sampled) {
        Seq& s = find(id);
        s.tokens += 1;
        if (s.tokens - s.prompt >= s.max_new) {
          blocks.Free(id);
          running.erase(std::find_if(running.begin(), running.end(),
                                     [&](const Seq& x) { return x.id == id; }));
          ++done;
        }
      }
    }
    EXPECT_EQ(done, 60) << "seed " << seed;
    EXPECT_EQ(blocks.free_blocks(), kBlocks);
    EXPECT_TRUE(std::is_sorted(first_admitted.begin(), first_admitted.end())) << "seed " << seed;
  }
  // The traffic did exercise preemption and chunking.
  EXPECT_GT(preemptions, 0);
  EXPECT_GT(chunked, 0);
}

}  // namespace
}  // namespace shardserve
