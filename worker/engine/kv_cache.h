// Bookkeeping of the paged KV cache: the cache is num_blocks blocks of block_tokens token slots
// (the memory itself is the backend's KvCache); each sequence owns a table of blocks, grown as it
// gets longer and returned whole when it ends. Blocks carry reference counts so a later prefix
// cache can share full blocks between sequences without changing this interface.
//
// Pure bookkeeping, no threads: owned and called by the engine loop only.
#ifndef SHARDSERVE_WORKER_ENGINE_KV_CACHE_H_
#define SHARDSERVE_WORKER_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace shardserve {

class KvBlockManager {
 public:
  KvBlockManager(int num_blocks, int block_tokens);

  int num_blocks() const { return num_blocks_; }
  int block_tokens() const { return block_tokens_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int used_blocks() const { return num_blocks_ - free_blocks(); }
  // Blocks that hold `tokens` tokens: ceil(tokens / block_tokens).
  int BlocksFor(int64_t tokens) const;

  // Grows sequence `seq` (created on first use) so it can hold `tokens` tokens in all. On
  // RESOURCE_EXHAUSTED (not enough free blocks; the message says how many are needed and free)
  // nothing changes.
  absl::Status Reserve(int64_t seq, int64_t tokens);
  // Whether Reserve(seq, tokens) would succeed now.
  bool CanReserve(int64_t seq, int64_t tokens) const;
  // Tokens `seq` can hold without growing (0 for an unknown sequence).
  int64_t Capacity(int64_t seq) const;
  bool Has(int64_t seq) const { return tables_.contains(seq); }
  // Cache slot of token `position` of `seq`; position < Capacity(seq).
  int32_t Slot(int64_t seq, int64_t position) const;
  // The sequence's blocks in order (empty for an unknown sequence).
  const std::vector<int32_t>& BlockTable(int64_t seq) const;
  // Returns all blocks of `seq` (no-op when unknown).
  void Free(int64_t seq);
  // Number of live sequences.
  int num_sequences() const { return static_cast<int>(tables_.size()); }

 private:
  int num_blocks_;
  int block_tokens_;
  std::vector<int32_t> free_;      // stack of free block ids
  std::vector<int32_t> refcount_;  // per block
  absl::flat_hash_map<int64_t, std::vector<int32_t>> tables_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_KV_CACHE_H_
