// SpmModel: the SentencePiece-BPE tokenizer of GGUF "llama" vocabularies, as llama.cpp runs it
// (llm_tokenizer_spm): start from UTF-8 characters, repeatedly merge the adjacent pair whose
// concatenation is a vocabulary token with the highest score (leftmost on ties), then emit each
// symbol's token, or its bytes as <0xNN> tokens when the symbol is not a token.
#ifndef SHARDSERVE_WORKER_TEXT_SPM_H_
#define SHARDSERVE_WORKER_TEXT_SPM_H_

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/text/bpe.h"

namespace shardserve::text {

class SpmModel : public Model {
 public:
  // `scores[id]` ranks merges; `mergeable[id]` says whether the token may be the result of a
  // merge (normal and user-defined tokens; control, unknown, unused and byte tokens may not).
  // `unk_id` (or -1) stands for a byte whose <0xNN> token is missing.
  static std::unique_ptr<SpmModel> Create(Vocab vocab, std::vector<float> scores,
                                          std::vector<bool> mergeable, int32_t unk_id);

  void Tokenize(absl::string_view word, std::vector<int32_t>* ids) const override;
  const Vocab& vocab() const override { return vocab_; }

 private:
  SpmModel() = default;

  Vocab vocab_;
  std::vector<float> scores_;
  std::vector<bool> mergeable_;
  int32_t unk_id_ = -1;
  std::array<int32_t, 256> byte_ids_;
};

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_SPM_H_
