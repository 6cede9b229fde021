#include "worker/text/bpe.h"

#include <queue>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/text/unicode.h"

namespace shardserve::text {

void Vocab::Add(std::string token, int32_t id) {
  if (id < 0) return;
  if (static_cast<size_t>(id) >= id_to_token_.size()) {
    id_to_token_.resize(static_cast<size_t>(id) + 1);
    present_.resize(static_cast<size_t>(id) + 1, false);
  }
  id_to_token_[id] = token;
  present_[id] = true;
  token_to_id_.insert_or_assign(std::move(token), id);
}

std::string ByteTokenText(uint8_t b) { return absl::StrFormat("<0x%02X>", b); }

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    Vocab vocab, const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
    const JsonContext& ctx) {
  auto model = std::unique_ptr<BpeModel>(new BpeModel());
  model->vocab_ = std::move(vocab);
  model->options_ = std::move(options);
  const Vocab& v = model->vocab_;
  if (model->options_.unk_token.has_value()) {
    auto unk = v.Find(*model->options_.unk_token);
    if (!unk.has_value()) {
      return ctx.Error(
          absl::StrCat("unk_token '", *model->options_.unk_token, "' is not in the vocab"));
    }
    model->unk_id_ = *unk;
  }
  for (int b = 0; b < 256; ++b) {
    model->byte_ids_[b] = v.Find(ByteTokenText(static_cast<uint8_t>(b))).value_or(-1);
  }
  const size_t prefix_len = model->options_.continuing_subword_prefix
                                ? model->options_.continuing_subword_prefix->size()
                                : 0;
  model->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto a_id = v.Find(a);
    auto b_id = v.Find(b);
    if (!a_id.has_value() || !b_id.has_value()) {
      return ctx.Error(absl::StrCat("merge ", rank, " ('", a, "' '", b, "'): token '",
                                    a_id.has_value() ? b : a, "' is not in the vocab"));
    }
    if (b.size() < prefix_len) {
      return ctx.Error(absl::StrCat("merge ", rank, " ('", a, "' '", b,
                                    "'): second part is shorter than continuing_subword_prefix"));
    }
    const std::string merged = absl::StrCat(a, absl::string_view(b).substr(prefix_len));
    auto new_id = v.Find(merged);
    if (!new_id.has_value()) {
      return ctx.Error(absl::StrCat("merge ", rank, " ('", a, "' '", b, "'): result '", merged,
                                    "' is not in the vocab"));
    }
    // A repeated pair keeps its last rank, as the library's map does.
    model->merges_.insert_or_assign(PairKey(*a_id, *b_id),
                                    MergeInfo{static_cast<int32_t>(rank), *new_id});
  }
  return model;
}

void BpeModel::Tokenize(absl::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (auto id = vocab_.Find(word); id.has_value()) {
      ids->push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergeWord(word, ids);
  if (cacheable) {
    absl::WriterMutexLock lock(&cache_mu_);
    if (cache_.size() < kCacheCapacity) {
      cache_.try_emplace(std::string(word), ids->begin() + first, ids->end());
    }
  }
}

void BpeModel::MergeWord(absl::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    size_t len;  // bytes of the word covered; 0 once merged into its left neighbour
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id, size_t len) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(Symbol{id, index - 1, -1, len});
  };

  // Initial symbols: one per character (tokenizers' BPE::merge_word).
  bool unk_pending = false;  // an unk (unk_id_, unk_len) not yet added
  size_t unk_len = 0;
  std::string with_affixes;
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    NextCodepoint(word, &i);
    const size_t byte_len = i - start;
    absl::string_view s = word.substr(start, byte_len);
    const bool is_first = start == 0;
    const bool is_last = i >= word.size();
    if ((!is_first && options_.continuing_subword_prefix) ||
        (is_last && options_.end_of_word_suffix)) {
      with_affixes.clear();
      if (!is_first && options_.continuing_subword_prefix) {
        with_affixes.append(*options_.continuing_subword_prefix);
      }
      with_affixes.append(s.data(), s.size());
      if (is_last && options_.end_of_word_suffix) with_affixes.append(*options_.end_of_word_suffix);
      s = with_affixes;
    }
    if (auto id = vocab_.Find(s); id.has_value()) {
      if (unk_pending) {
        add(unk_id_, unk_len);
        unk_pending = false;
      }
      add(*id, byte_len);
      continue;
    }
    if (options_.byte_fallback) {
      bool all_bytes = true;
      for (unsigned char b : s) all_bytes = all_bytes && byte_ids_[b] >= 0;
      if (all_bytes) {
        // As in the library, a pending unk is not flushed before the bytes.
        for (unsigned char b : s) add(byte_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (unk_pending && options_.fuse_unk) {
        unk_len += byte_len;
      } else {
        if (unk_pending) add(unk_id_, unk_len);
        unk_pending = true;
        unk_len = byte_len;
      }
    }
  }
  if (unk_pending) add(unk_id_, unk_len);

  // Apply merges, lowest rank first, leftmost first among equal ranks (tokenizers' Word::
  // merge_all).
  struct Candidate {
    int32_t pos;
    int32_t rank;
    int32_t new_id;
  };
  auto lower_priority = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> queue(
      lower_priority);
  auto find_merge = [this](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t k = 0; k + 1 < symbols.size(); ++k) {
    if (const MergeInfo* m = find_merge(symbols[k].id, symbols[k + 1].id)) {
      queue.push(Candidate{static_cast<int32_t>(k), m->rank, m->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.len == 0 || left.next == -1) continue;
    const int32_t next_pos = left.next;
    const Symbol right = symbols[next_pos];
    const MergeInfo* m = find_merge(left.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;  // stale entry

    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next >= 0 && static_cast<size_t>(right.next) < symbols.size()) {
      symbols[right.next].prev = top.pos;
    }
    if (left.prev >= 0) {
      if (const MergeInfo* pm = find_merge(symbols[left.prev].id, left.id)) {
        queue.push(Candidate{left.prev, pm->rank, pm->new_id});
      }
    }
    if (left.next >= 0 && static_cast<size_t>(left.next) < symbols.size()) {
      if (const MergeInfo* nm = find_merge(left.id, symbols[left.next].id)) {
        queue.push(Candidate{top.pos, nm->rank, nm->new_id});
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

}  // namespace shardserve::text
