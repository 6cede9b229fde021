#include "worker/engine/kv_cache.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"

namespace shardserve {

KvBlockManager::KvBlockManager(int num_blocks, int block_tokens)
    : num_blocks_(std::max(0, num_blocks)), block_tokens_(std::max(1, block_tokens)) {
  assert(num_blocks >= 0 && block_tokens > 0);
  refcount_.assign(num_blocks_, 0);
  free_.reserve(num_blocks_);
  // A stack popped from the back: block 0 is handed out first.
  for (int b = num_blocks_ - 1; b >= 0; --b) free_.push_back(b);
}

int KvBlockManager::BlocksFor(int64_t tokens) const {
  if (tokens <= 0) return 0;
  return static_cast<int>((tokens + block_tokens_ - 1) / block_tokens_);
}

int64_t KvBlockManager::Capacity(int64_t seq) const {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return 0;
  return static_cast<int64_t>(it->second.size()) * block_tokens_;
}

bool KvBlockManager::CanReserve(int64_t seq, int64_t tokens) const {
  if (tokens < 0) return false;
  auto it = tables_.find(seq);
  const int have = it == tables_.end() ? 0 : static_cast<int>(it->second.size());
  return BlocksFor(tokens) - have <= free_blocks();
}

absl::Status KvBlockManager::Reserve(int64_t seq, int64_t tokens) {
  if (tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: sequence ", seq, " cannot hold ", tokens, " tokens"));
  }
  auto it = tables_.find(seq);
  const int have = it == tables_.end() ? 0 : static_cast<int>(it->second.size());
  const int needed = BlocksFor(tokens) - have;
  if (needed > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: sequence ", seq, " needs ", needed, " more blocks of ", block_tokens_,
        " tokens for ", tokens, " tokens, ", free_blocks(), " of ", num_blocks_, " are free"));
  }
  std::vector<int32_t>& table = it == tables_.end() ? tables_[seq] : it->second;
  for (int i = 0; i < needed; ++i) {
    const int32_t block = free_.back();
    free_.pop_back();
    assert(refcount_[block] == 0);
    refcount_[block] = 1;
    table.push_back(block);
  }
  return absl::OkStatus();
}

int32_t KvBlockManager::Slot(int64_t seq, int64_t position) const {
  auto it = tables_.find(seq);
  assert(it != tables_.end() && position >= 0 && position < Capacity(seq));
  if (it == tables_.end() || position < 0 || position >= Capacity(seq)) return -1;
  const std::vector<int32_t>& table = it->second;
  return table[position / block_tokens_] * block_tokens_ +
         static_cast<int32_t>(position % block_tokens_);
}

const std::vector<int32_t>& KvBlockManager::BlockTable(int64_t seq) const {
  static const std::vector<int32_t>* const kEmpty = new std::vector<int32_t>();
  auto it = tables_.find(seq);
  return it == tables_.end() ? *kEmpty : it->second;
}

void KvBlockManager::Free(int64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Return blocks in reverse so the next sequence reuses them in the same order.
  for (auto b = it->second.rbegin(); b != it->second.rend(); ++b) {
    assert(refcount_[*b] > 0);
    if (--refcount_[*b] == 0) free_.push_back(*b);
  }
  tables_.erase(it);
}

}  // namespace shardserve
