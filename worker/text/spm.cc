#include "worker/text/spm.h"

#include <queue>
#include <string>
#include <utility>

#include "worker/text/unicode.h"

namespace shardserve::text {

std::unique_ptr<SpmModel> SpmModel::Create(Vocab vocab, std::vector<float> scores,
                                           std::vector<bool> mergeable, int32_t unk_id) {
  auto model = std::unique_ptr<SpmModel>(new SpmModel());
  model->vocab_ = std::move(vocab);
  model->scores_ = std::move(scores);
  model->mergeable_ = std::move(mergeable);
  model->unk_id_ = unk_id;
  for (int b = 0; b < 256; ++b) {
    model->byte_ids_[b] = model->vocab_.Find(ByteTokenText(static_cast<uint8_t>(b))).value_or(-1);
  }
  return model;
}

void SpmModel::Tokenize(absl::string_view word, std::vector<int32_t>* ids) const {
  struct Symbol {
    size_t begin;
    size_t len;  // 0 once merged into its left neighbour
    int32_t prev;
    int32_t next;
  };
  struct Bigram {
    int32_t left;
    int32_t right;
    float score;
    size_t len;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  size_t i = 0;
  while (i < word.size()) {
    const size_t start = i;
    NextCodepoint(word, &i);
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{start, i - start, index - 1, i >= word.size() ? -1 : index + 1});
  }

  // Highest score first, then leftmost (llama.cpp's llm_bigram_spm comparator).
  auto lower_priority = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower_priority)> queue(lower_priority);
  auto try_add = [&](int32_t left, int32_t right) {
    if (left == -1 || right == -1) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    const absl::string_view text = word.substr(l.begin, l.len + r.len);
    auto id = vocab_.Find(text);
    if (!id.has_value() || static_cast<size_t>(*id) >= mergeable_.size() || !mergeable_[*id]) {
      return;
    }
    queue.push(Bigram{left, right, scores_[*id], text.size()});
  };
  for (size_t k = 1; k < symbols.size(); ++k) {
    try_add(static_cast<int32_t>(k - 1), static_cast<int32_t>(k));
  }
  while (!queue.empty()) {
    const Bigram top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    if (left.len == 0 || right.len == 0 || left.len + right.len != top.len) continue;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    try_add(left.prev, top.left);
    try_add(top.left, left.next);
  }

  for (int32_t k = symbols.empty() ? -1 : 0; k != -1; k = symbols[k].next) {
    const Symbol& s = symbols[k];
    const absl::string_view text = word.substr(s.begin, s.len);
    if (auto id = vocab_.Find(text); id.has_value()) {
      ids->push_back(*id);
      continue;
    }
    // Merged symbols are always tokens, so this is a single character: emit its bytes.
    for (unsigned char b : text) {
      if (byte_ids_[b] >= 0) {
        ids->push_back(byte_ids_[b]);
      } else if (unk_id_ >= 0) {
        ids->push_back(unk_id_);
      }
    }
  }
}

}  // namespace shardserve::text
