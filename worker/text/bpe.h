// Tokenizer models: the interface the tokenizer pipeline calls for each pre-tokenized word, and
// BpeModel, tokenizer.json's BPE with the Hugging Face tokenizers library's semantics (merges by
// rank with a priority queue, unk / fuse_unk, byte_fallback to <0xNN> tokens, ignore_merges,
// continuing_subword_prefix, end_of_word_suffix) and a cache of merged words.
#ifndef SHARDSERVE_WORKER_TEXT_BPE_H_
#define SHARDSERVE_WORKER_TEXT_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "worker/text/json_fields.h"

namespace shardserve::text {

// Token strings by id and ids by token string. Ids need not be dense.
class Vocab {
 public:
  // Adds (token, id); a token seen twice keeps its last id, as a JSON object would.
  void Add(std::string token, int32_t id);

  std::optional<int32_t> Find(absl::string_view token) const {
    auto it = token_to_id_.find(token);
    if (it == token_to_id_.end()) return std::nullopt;
    return it->second;
  }
  // The token with id `id`, or null.
  const std::string* Token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !present_[id]) return nullptr;
    return &id_to_token_[id];
  }
  // Largest id + 1 (0 when empty).
  int32_t end_id() const { return static_cast<int32_t>(id_to_token_.size()); }
  size_t size() const { return token_to_id_.size(); }

 private:
  absl::flat_hash_map<std::string, int32_t> token_to_id_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> present_;
};

// A model turns one pre-tokenized word into ids. Implementations are immutable after creation
// and safe to call from several threads.
class Model {
 public:
  virtual ~Model() = default;
  // Appends the ids for `word` (non-empty, valid UTF-8) to `ids`.
  virtual void Tokenize(absl::string_view word, std::vector<int32_t>* ids) const = 0;
  virtual const Vocab& vocab() const = 0;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  std::optional<std::string> continuing_subword_prefix;
  std::optional<std::string> end_of_word_suffix;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
};

class BpeModel : public Model {
 public:
  // `merges` in rank order. A merge whose parts or result (a + b without b's
  // continuing_subword_prefix) are not in `vocab`, or an unk_token missing from `vocab`, is
  // INVALID_ARGUMENT naming ctx and the merge.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options, const JsonContext& ctx);

  void Tokenize(absl::string_view word, std::vector<int32_t>* ids) const override;
  const Vocab& vocab() const override { return vocab_; }

 private:
  struct MergeInfo {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  BpeModel() = default;
  void MergeWord(absl::string_view word, std::vector<int32_t>* ids) const;

  Vocab vocab_;
  BpeOptions options_;
  int32_t unk_id_ = -1;
  std::array<int32_t, 256> byte_ids_;  // <0xNN> token ids, -1 where absent
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;

  static constexpr size_t kCacheCapacity = 10000;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

// The byte-fallback token text for byte `b`: "<0x0A>" (upper-case hex, as the library writes).
std::string ByteTokenText(uint8_t b);

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_BPE_H_
