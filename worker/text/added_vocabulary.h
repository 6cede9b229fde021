// Added tokens (tokenizer.json "added_tokens", GGUF control / user-defined tokens): found in the
// input before pre-tokenization, as the Hugging Face tokenizers library's AddedVocabulary does.
// Tokens with normalized=false are matched on the raw input, the others on each normalized piece
// (their own text normalized the same way); matching is leftmost-longest, and the single_word,
// lstrip and rstrip flags are honoured.
#ifndef SHARDSERVE_WORKER_TEXT_ADDED_VOCABULARY_H_
#define SHARDSERVE_WORKER_TEXT_ADDED_VOCABULARY_H_

#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "worker/text/normalizer.h"

namespace shardserve::text {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
  // What the token decodes from (and IdToToken returns): `content`, or for a normalized token
  // its normalized form when the normalizer changes it (as the library's decode does).
  std::string decode_text;
};

class AddedVocabulary {
 public:
  // A part of a split text: [begin, end) and the added token's id, or -1 for plain text.
  // Parts cover the text in order, except that an rstrip token's span may overlap the next
  // token's (the library's behaviour, kept).
  struct Part {
    size_t begin;
    size_t end;
    int32_t id;
  };

  AddedVocabulary() = default;
  // `tokens` in file order (a later duplicate content replaces an earlier one's flags);
  // `normalizer` (may be null) normalizes the text of normalized tokens for matching.
  AddedVocabulary(const std::vector<AddedToken>& tokens, const Normalizer* normalizer);

  // Splits `text` at the raw (normalized == false) or the normalized added tokens.
  std::vector<Part> Split(absl::string_view text, bool normalized_tokens) const;

  const AddedToken* FindById(int32_t id) const;
  std::optional<int32_t> FindByContent(absl::string_view content) const;
  // Whether `token` is the content of a special added token (how the library decides what
  // skip_special_tokens drops).
  bool IsSpecialContent(absl::string_view token) const { return special_.contains(token); }
  bool empty() const { return tokens_.empty(); }
  // Largest id + 1 (0 when empty).
  int32_t end_id() const { return end_id_; }

 private:
  // A byte trie of the patterns of one kind (raw or normalized).
  struct Trie {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
      int32_t token = -1;                             // index into tokens_
    };
    std::vector<Node> nodes{Node{}};
    std::bitset<256> first_bytes;

    void Insert(absl::string_view pattern, int32_t token);
    // Longest pattern that starts at text[pos]: its token index and length, or -1.
    int32_t LongestAt(absl::string_view text, size_t pos, size_t* len) const;
  };

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, size_t> by_id_;
  absl::flat_hash_map<std::string, size_t> by_content_;
  absl::flat_hash_set<std::string> special_;
  Trie raw_;
  Trie normalized_;
  int32_t end_id_ = 0;
};

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_ADDED_VOCABULARY_H_
