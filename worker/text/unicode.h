// UTF-8 and Unicode helpers for the tokenizer: decoding code points, Rust-compatible lossy UTF-8
// conversion (one U+FFFD per maximal ill-formed subpart, as String::from_utf8_lossy), an
// incremental version of it for streaming, the character classes the Hugging Face tokenizers
// library uses (char::is_whitespace, char::is_numeric, regex \w), Unicode normalization through
// utf8proc, and the GPT-2 byte <-> character table of the ByteLevel pre-tokenizer and decoder.
#ifndef SHARDSERVE_WORKER_TEXT_UNICODE_H_
#define SHARDSERVE_WORKER_TEXT_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace shardserve::text {

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes the code point at s[*pos] and advances *pos past it. `s` must be valid UTF-8 (callers
// sanitize input with ToValidUtf8 first).
char32_t NextCodepoint(absl::string_view s, size_t* pos);

// Byte length of the UTF-8 sequence that starts with lead byte `b` (1 for invalid lead bytes).
inline size_t Utf8SequenceLength(uint8_t b) {
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : b < 0xF8 ? 4 : 1;
}

void AppendUtf8(char32_t cp, std::string* out);

// Result of examining the bytes at the start of a buffer.
enum class Utf8Scan {
  kValid,       // a complete, valid sequence of `len` bytes
  kInvalid,     // an ill-formed maximal subpart of `len` bytes (replaced by one U+FFFD)
  kIncomplete,  // a valid prefix that runs to the end of the buffer (`len` = buffer size)
};
Utf8Scan ScanUtf8(const uint8_t* p, size_t n, size_t* len);

bool IsValidUtf8(absl::string_view s);

// `bytes` as valid UTF-8, each maximal ill-formed subpart replaced by U+FFFD (Rust's
// String::from_utf8_lossy, which the tokenizers library uses).
std::string ToValidUtf8(absl::string_view bytes);

// Incremental ToValidUtf8: Append() emits every character that is complete and holds back a
// trailing valid-but-incomplete sequence; Finish() flushes it as U+FFFD. The concatenation of
// all output equals ToValidUtf8 of the concatenated input.
class Utf8StreamDecoder {
 public:
  void Append(absl::string_view bytes, std::string* out);
  void Finish(std::string* out);

 private:
  std::string pending_;
};

// Unicode White_Space (Rust's char::is_whitespace, Oniguruma's and Rust regex's \s).
bool IsWhitespace(char32_t c);
// General category Nd, Nl or No (Rust's char::is_numeric).
bool IsNumeric(char32_t c);
// General category M: Mn, Mc or Me (unicode-normalization's is_combining_mark, which the
// tokenizers StripAccents normalizer uses).
bool IsCombiningMark(char32_t c);
// Rust regex's Unicode \w: letters, marks, decimal and letter numbers, connector punctuation,
// ZWNJ/ZWJ (used only for the single_word flag of added tokens).
bool IsWordChar(char32_t c);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
// Unicode normalization of valid UTF-8 text (utf8proc).
std::string Normalize(absl::string_view s, NormalForm form);
// Rust's char::to_lowercase applied to every character (full mappings, no Final_Sigma rule).
std::string Lowercase(absl::string_view s);

// GPT-2's bytes_to_unicode table: the UTF-8 text of the character standing for byte `b`.
const std::string& ByteToChar(uint8_t b);
// The byte a ByteLevel character stands for, or -1 if `c` is not one of the 256 characters.
int CharToByte(char32_t c);

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_UNICODE_H_
