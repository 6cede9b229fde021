// Turns the token ids a sequence generates into the text it streams: incremental detokenization
// (worker/text StreamDecoder: never a broken UTF-8 sequence) and stop strings. Text that could
// still be the start of a stop string is held back until it cannot; a matched stop string and
// everything after it is never emitted (OpenAI / vLLM semantics). Stop strings may span token
// boundaries.
//
// One per sequence; not thread-safe.
#ifndef SHARDSERVE_WORKER_ENGINE_TEXT_OUTPUT_H_
#define SHARDSERVE_WORKER_ENGINE_TEXT_OUTPUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "worker/text/tokenizer.h"

namespace shardserve {

class TextOutput {
 public:
  // `tokenizer` must outlive this object. Empty stop strings are ignored.
  TextOutput(const Tokenizer& tokenizer, std::vector<std::string> stop,
             bool skip_special_tokens = true);

  struct Delta {
    std::string text;      // safe to emit now
    bool stopped = false;  // a stop string matched: text is the rest before it; stop generating
  };

  // Feeds one generated token.
  Delta Push(int32_t token);
  // The sequence ended for another reason (EOS, length, cancel): everything held back.
  std::string Finish();

  // All text emitted so far (for tests and non-streaming callers).
  const std::string& emitted() const { return emitted_; }

 private:
  StreamDecoder decoder_;
  std::vector<std::string> stop_;
  std::string pending_;  // decoded, not yet emitted (may be a stop string's prefix)
  std::string emitted_;
  bool stopped_ = false;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_TEXT_OUTPUT_H_
