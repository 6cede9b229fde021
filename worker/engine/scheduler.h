// The engine loop's scheduling policy: given a snapshot of the sequences and of the KV cache,
// decides what one step runs. A pure function (no threads, no model, no cache), so every policy
// decision is unit-tested on hand-made snapshots; the engine loop applies the result.
//
// Policy (vLLM's chunked prefill, decode first):
//  1. Decode: every running sequence with exactly one token not in the cache (its last sampled
//     token) runs that token, oldest first, one token of the step budget each. When its next
//     token needs a KV block and none is free, running sequences are preempted newest first
//     (their blocks freed; they recompute from scratch when readmitted) until one is; if it is
//     itself the newest left, it is preempted.
//  2. Prefill, with the budget left (max_step_tokens minus the decodes): first running
//     sequences still part way through their prompt, oldest first, then waiting sequences in
//     order (FCFS; a sequence that cannot start blocks the ones behind it). Each gets a chunk of
//     min(tokens left, budget left, tokens its blocks plus the free blocks hold). A waiting
//     sequence is admitted (becomes running) only while fewer than max_running run, no
//     preemption happened this step, and the free blocks, less those the running prompts
//     still need, hold its whole prompt plus one token. A chunk that reaches the end of the
//     sequence's tokens samples the next token.
//  3. If sequences are running but none of them can run anything (prompts part way through,
//     no free block for their next chunk), the newest are preempted until one can.
//
// A waiting sequence whose prompt needs more blocks than the whole cache never starts (and
// blocks the queue): the engine refuses such requests when they are submitted.
//
// Block accounting matches KvBlockManager::Reserve: a sequence that runs tokens up to position
// p needs ceil(p / block_tokens) blocks in all.
#ifndef SHARDSERVE_WORKER_ENGINE_SCHEDULER_H_
#define SHARDSERVE_WORKER_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <vector>

namespace shardserve {

struct SchedulerConfig {
  int block_tokens = 16;
  int max_step_tokens = 512;  // tokens one step runs (decodes + prefill chunks); should be
                              // >= max_running, or the newest decodes wait a step
  int max_running = 8;        // admitted sequences at once
};

// One sequence as the scheduler sees it.
struct SequenceSnapshot {
  int64_t id = 0;
  int64_t tokens = 0;    // prompt + generated: all must be in the cache before it samples
  int64_t computed = 0;  // of those, already in the KV cache (0 for a waiting sequence)
  int blocks = 0;        // KV blocks it holds now
};

struct SchedulerSnapshot {
  std::vector<SequenceSnapshot> running;  // admitted, oldest first
  std::vector<SequenceSnapshot> waiting;  // not admitted, in the order they may start
  int free_blocks = 0;
};

struct PrefillChunk {
  int64_t id = 0;
  int64_t start = 0;     // first position: the sequence's `computed`
  int tokens = 0;        // run [start, start + tokens)
  bool samples = false;  // the chunk ends the sequence's tokens: sample the next one

  bool operator==(const PrefillChunk&) const = default;
};

struct Schedule {
  // Running sequences to evict first, newest first: free their blocks, set computed to 0 and
  // push each to the front of the waiting queue in this order (the oldest ends up first).
  std::vector<int64_t> preempt;
  // Running sequences that run their last token and sample, oldest first.
  std::vector<int64_t> decode;
  // Waiting sequences that become running (the newest running ones, in this order); each also
  // has a chunk in `prefill`.
  std::vector<int64_t> admit;
  // Prompt chunks, in order (running ones first, then the admitted).
  std::vector<PrefillChunk> prefill;

  int num_tokens() const;
};

Schedule ScheduleStep(const SchedulerSnapshot& snapshot, const SchedulerConfig& config);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_SCHEDULER_H_
