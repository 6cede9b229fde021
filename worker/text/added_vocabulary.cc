#include "worker/text/added_vocabulary.h"

#include <algorithm>

#include "worker/text/unicode.h"

namespace shardserve::text {

void AddedVocabulary::Trie::Insert(absl::string_view pattern, int32_t token) {
  int32_t node = 0;
  for (unsigned char b : pattern) {
    auto& next = nodes[node].next;
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{-1}));
    if (it != next.end() && it->first == b) {
      node = it->second;
      continue;
    }
    const int32_t child = static_cast<int32_t>(nodes.size());
    next.insert(it, {b, child});
    nodes.emplace_back();  // may reallocate: `next` is not used after this
    node = child;
  }
  if (nodes[node].token < 0) nodes[node].token = token;  // the first of equal patterns wins
  first_bytes.set(static_cast<unsigned char>(pattern[0]));
}

int32_t AddedVocabulary::Trie::LongestAt(absl::string_view text, size_t pos, size_t* len) const {
  int32_t node = 0, best = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& next = nodes[node].next;
    const uint8_t b = static_cast<uint8_t>(text[i]);
    auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(b, int32_t{-1}));
    if (it == next.end() || it->first != b) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      *len = i + 1 - pos;
    }
  }
  return best;
}

AddedVocabulary::AddedVocabulary(const std::vector<AddedToken>& tokens,
                                 const Normalizer* normalizer) {
  for (const AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    auto [it, inserted] = by_content_.try_emplace(t.content, tokens_.size());
    if (inserted) {
      tokens_.push_back(t);
    } else {
      tokens_[it->second] = t;  // same content again: the later flags and id win
    }
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    AddedToken& t = tokens_[i];
    t.decode_text = t.content;
    if (t.normalized && normalizer != nullptr) normalizer->Normalize(&t.decode_text);
    by_id_.insert_or_assign(t.id, i);
    end_id_ = std::max(end_id_, t.id + 1);
    if (t.special) special_.insert(t.content);
  }
  // The library builds each trie from the special tokens first, then the others.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (t.special != (pass == 0)) continue;
      if (!t.normalized) {
        raw_.Insert(t.content, static_cast<int32_t>(i));
        continue;
      }
      if (!t.decode_text.empty()) normalized_.Insert(t.decode_text, static_cast<int32_t>(i));
    }
  }
}

namespace {

bool EndsWithWordChar(absl::string_view s) {
  if (s.empty()) return false;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<uint8_t>(s[b]) & 0xC0) == 0x80) --b;
  return IsWordChar(NextCodepoint(s, &b));
}

bool StartsWithWordChar(absl::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return IsWordChar(NextCodepoint(s, &i));
}

// Start of the run of whitespace that ends `s` (s.size() if none).
size_t TrailingWhitespaceStart(absl::string_view s) {
  size_t i = 0, run_start = 0;
  bool in_run = false;
  while (i < s.size()) {
    const size_t begin = i;
    if (IsWhitespace(NextCodepoint(s, &i))) {
      if (!in_run) run_start = begin;
      in_run = true;
    } else {
      in_run = false;
    }
  }
  return in_run ? run_start : s.size();
}

// Length of the run of whitespace that begins `s`.
size_t LeadingWhitespaceLength(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t next = i;
    if (!IsWhitespace(NextCodepoint(s, &next))) break;
    i = next;
  }
  return i;
}

}  // namespace

std::vector<AddedVocabulary::Part> AddedVocabulary::Split(absl::string_view text,
                                                          bool normalized_tokens) const {
  std::vector<Part> parts;
  const Trie& trie = normalized_tokens ? normalized_ : raw_;
  const size_t n = text.size();
  size_t start_offset = 0, pos = 0;
  if (trie.first_bytes.any()) {
    while (pos < n) {
      // Leftmost match, longest at that position (aho-corasick's LeftmostLongest).
      int32_t token = -1;
      size_t match_start = pos, len = 0;
      for (; match_start < n; ++match_start) {
        if (!trie.first_bytes[static_cast<uint8_t>(text[match_start])]) continue;
        token = trie.LongestAt(text, match_start, &len);
        if (token >= 0) break;
      }
      if (token < 0) break;
      size_t start = match_start, stop = match_start + len;
      pos = stop;  // the search resumes after the match itself, not after stripped spaces
      const AddedToken& t = tokens_[token];
      if (t.single_word) {
        const bool start_space = start == 0 || !EndsWithWordChar(text.substr(0, start));
        const bool stop_space = stop == n || !StartsWithWordChar(text.substr(stop));
        if (!start_space || !stop_space) continue;
      }
      if (t.lstrip) {
        start = std::max(TrailingWhitespaceStart(text.substr(0, start)), start_offset);
      }
      if (t.rstrip) stop += LeadingWhitespaceLength(text.substr(stop));
      if (start_offset < start) parts.push_back({start_offset, start, -1});
      parts.push_back({start, stop, t.id});
      start_offset = stop;
    }
  }
  if (start_offset < n) parts.push_back({start_offset, n, -1});
  return parts;
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::FindByContent(absl::string_view content) const {
  auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return tokens_[it->second].id;
}

}  // namespace shardserve::text
