// The plan of one engine step: which sequences run, with which tokens at which positions, where
// their keys and values go in the paged KV cache, and which rows of logits are wanted. A plain
// struct of integers, so the leader rank can broadcast it to its followers (they run the same
// forward pass on their weight shards) and a test can build one by hand.
#ifndef SHARDSERVE_WORKER_ENGINE_STEP_PLAN_H_
#define SHARDSERVE_WORKER_ENGINE_STEP_PLAN_H_

#include <cstdint>
#include <vector>

namespace shardserve {

struct StepPlan {
  uint64_t step = 0;
  // All tokens of the step, sequence after sequence, and for each its absolute position in its
  // sequence and its cache slot (block * block_tokens + offset).
  std::vector<int32_t> token_ids;
  std::vector<int32_t> positions;
  std::vector<int32_t> slots;
  // Per sequence: its tokens are [seq_start[s], seq_start[s + 1]) of the above; after the step
  // it has context_len[s] tokens in the cache, in blocks block_tables[s * max_blocks_per_seq ..]
  // (unused entries -1).
  std::vector<int64_t> seq_ids;
  std::vector<int32_t> seq_start;
  std::vector<int32_t> context_len;
  std::vector<int32_t> block_tables;
  int32_t max_blocks_per_seq = 0;
  // Indices into token_ids whose next-token logits the step returns, in this order (usually the
  // last token of each sequence that samples; every token when scoring a text).
  std::vector<int32_t> logit_rows;

  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  int num_seqs() const { return static_cast<int>(seq_ids.size()); }
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_STEP_PLAN_H_
