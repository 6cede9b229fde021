// tokenizer.json decoders with the Hugging Face tokenizers library's semantics: ByteLevel,
// Metaspace, Replace, ByteFallback, Fuse, Strip and Sequence of them (no decoder: tokens joined
// with spaces). Decode() turns token strings into text exactly as the library's decode does;
// DecodeStream does the same one token at a time, emitting only text that later tokens cannot
// change, so that the concatenation of everything it emits equals Decode() of all the tokens.
#ifndef SHARDSERVE_WORKER_TEXT_DECODER_H_
#define SHARDSERVE_WORKER_TEXT_DECODER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "worker/text/json_fields.h"
#include "worker/text/regex.h"
#include "worker/text/unicode.h"

namespace shardserve::text {

class DecodeStream;

class Decoder {
 public:
  // One step of a (flattened) decoder Sequence.
  struct Step {
    enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
    Kind kind;
    // Metaspace: the replacement character; whether the first token loses it (prepend_scheme
    // other than "never") instead of turning it into a space.
    char32_t replacement = 0;
    bool strip_first = false;
    // Replace: the pattern, the literal when the pattern is a {"String": ...}, the content.
    std::shared_ptr<const Regex> pattern;
    std::optional<std::string> literal;
    std::string content;
    // Strip: the character and how many to remove at the start and at the end of each token.
    char32_t strip_char = 0;
    size_t start = 0;
    size_t stop = 0;
  };

  // `j` is a tokenizer.json "decoder" value; null means no decoder (tokens joined by " ").
  // Unsupported types are INVALID_ARGUMENT naming the type and ctx.
  static absl::StatusOr<std::unique_ptr<Decoder>> Parse(const nlohmann::json& j,
                                                        const JsonContext& ctx);

  // The library's decoder.decode(tokens): valid UTF-8.
  std::string Decode(std::vector<std::string> tokens) const;

  std::unique_ptr<DecodeStream> NewStream() const;

  bool has_decoder() const { return has_decoder_; }
  const std::vector<Step>& steps() const { return steps_; }

 private:
  friend class DecodeStream;
  Decoder() = default;

  bool has_decoder_ = false;
  std::vector<Step> steps_;
  // Index of the first step that joins all tokens into one (ByteLevel or Fuse), or
  // steps_.size() when none does (the final concatenation then joins them).
  size_t join_index_ = 0;
};

// Incremental decoding state for one sequence. Not thread-safe; the Decoder must outlive it.
class DecodeStream {
 public:
  explicit DecodeStream(const Decoder* decoder);

  // Feeds the next token string; appends the text that became final to `out`.
  void Push(absl::string_view token, std::string* out);
  // Ends the sequence: appends everything still held back (an incomplete UTF-8 sequence becomes
  // U+FFFD, as in Decode) and resets the stream for a new sequence.
  void Finish(std::string* out);

 private:
  struct StageState {
    size_t tokens_seen = 0;  // token-level Metaspace: index of the next token
    std::string held;        // bytes of a ByteFallback run, trailing Strip chars, or pending text
    size_t stripped = 0;     // Strip after a join: leading characters removed so far
    bool lead_done = false;  // Strip after a join: a kept character was seen
    bool decided = false;    // ByteFallback after a join: the text is known not to be a byte
  };

  void PushToken(size_t stage, std::string token, std::string* out);
  void PushText(size_t stage, std::string text, std::string* out);
  void FinishText(size_t stage, std::string* out);
  void Reset();

  const Decoder* decoder_;
  std::vector<StageState> state_;
  Utf8StreamDecoder utf8_;
  bool any_token_ = false;  // no decoder: whether a separating space is due
};

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_DECODER_H_
