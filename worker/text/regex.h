// The regular expressions of tokenizer.json (Split pre-tokenizer, Replace normalizer/decoder),
// compiled with PCRE2 (UTF + Unicode properties, JIT when available) to behave like the Oniguruma
// engine the Hugging Face tokenizers library uses.
#ifndef SHARDSERVE_WORKER_TEXT_REGEX_H_
#define SHARDSERVE_WORKER_TEXT_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve::text {

// A piece of a searched text: [begin, end) byte offsets and whether it is a match.
struct MatchSpan {
  size_t begin;
  size_t end;
  bool is_match;
};

// Immutable and thread-safe after construction (each search uses its own match data).
class Regex {
 public:
  // Compiles an Oniguruma-syntax pattern. Differences from PCRE2 that matter for tokenizer
  // patterns are translated: Oniguruma's \s (and \S) is Unicode White_Space, which includes
  // U+0085 that PCRE2's \s lacks. Errors are INVALID_ARGUMENT with PCRE2's message and offset.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern);
  // A pattern that matches `literal` exactly (tokenizer.json's {"String": ...} patterns).
  static absl::StatusOr<std::unique_ptr<Regex>> Literal(absl::string_view literal);

  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping matches of `text` (valid UTF-8), iterated as the tokenizers library's
  // onig find_iter does (an empty match right after the previous match is skipped), returned
  // with the gaps between them so that the spans cover `text` in order (tokenizers'
  // Pattern::find_matches). An empty text gives one empty non-match span.
  std::vector<MatchSpan> FindMatches(absl::string_view text) const;

  // Every match replaced by `content` (tokenizers' Replace normalizer and decoder).
  std::string ReplaceAll(absl::string_view text, absl::string_view content) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  static absl::StatusOr<std::unique_ptr<Regex>> Build(absl::string_view pattern, bool literal);

  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// Exposed for tests: the PCRE2 form of an Oniguruma pattern.
std::string TranslateOnigurumaPattern(absl::string_view pattern);

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_REGEX_H_
