// Python `str` semantics over UTF-8 std::strings, as the Jinja2 interpreter behind chat templates
// (worker/text/chat_template.h) needs them: code-point indexing, Python's whitespace set,
// strip/split/splitlines, case mapping, repr() quoting, and float repr().
//
// All functions expect valid UTF-8 (the interpreter validates templates and context strings on
// entry); on invalid input they do not read out of bounds, but results are unspecified.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_STRINGS_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_STRINGS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "worker/text/unicode.h"

namespace shardserve::jinja {

// --- UTF-8 ---------------------------------------------------------------------------------------

bool IsValidUtf8(absl::string_view s);
bool IsAscii(absl::string_view s);

// Decodes the code point starting at byte `*pos` and advances `*pos` past it. An invalid byte
// decodes as itself (one byte).
char32_t DecodeUtf8(absl::string_view s, size_t* pos);
using ::shardserve::text::AppendUtf8;
std::vector<char32_t> DecodeUtf8All(absl::string_view s);
std::string EncodeUtf8(const std::vector<char32_t>& cps);
// Number of code points (Python len()).
int64_t CodePointCount(absl::string_view s);
// The code points of `s` as separate strings (Python list(s)).
std::vector<std::string> SplitCodePoints(absl::string_view s);

// --- Character classes (Python's definitions) ---------------------------------------------------

// str.isspace() / the `\s` class of Python's re: ASCII whitespace, \x1c-\x1f, \x85, \xa0 and the
// Unicode space separators.
bool IsPyWhitespace(char32_t c);
// str.isprintable() for one character (used by repr()).
bool IsPyPrintable(char32_t c);
// str.splitlines() line boundaries.
bool IsPyLineBreak(char32_t c);

// --- str methods ---------------------------------------------------------------------------------

// str.strip/lstrip/rstrip: with no `chars`, strips Python whitespace.
std::string PyStrip(absl::string_view s, const std::optional<std::string>& chars, bool left,
                    bool right);
// str.split(sep=None, maxsplit=-1). `sep` must not be empty (the caller reports that error).
std::vector<std::string> PySplit(absl::string_view s, const std::optional<std::string>& sep,
                                 int64_t maxsplit);
// str.rsplit(sep=None, maxsplit=-1).
std::vector<std::string> PyRSplit(absl::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit);
std::vector<std::string> PySplitLines(absl::string_view s, bool keepends);
// str.replace(old, new, count=-1), including Python's behaviour for an empty `old`.
std::string PyReplace(absl::string_view s, absl::string_view old_sub, absl::string_view new_sub,
                      int64_t count);
// str.find / str.rfind / str.count over the whole string; indices are code points.
int64_t PyFind(absl::string_view s, absl::string_view sub, bool reverse);
int64_t PyCount(absl::string_view s, absl::string_view sub);

// Case mapping. Uses Unicode simple case mapping (utf8proc) plus Python's full mappings for the
// common multi-character cases (German sharp s, Latin ligatures, dotted capital I, final sigma).
std::string PyUpper(absl::string_view s);
std::string PyLower(absl::string_view s);
std::string PySwapCase(absl::string_view s);
std::string PyTitle(absl::string_view s);       // str.title()
std::string PyCapitalize(absl::string_view s);  // str.capitalize()
// Jinja2's `title` filter (capitalises after runs of whitespace, '-', '(', '{', '[' and '<').
std::string JinjaTitle(absl::string_view s);

// str.isX() predicates.
bool PyIsLower(absl::string_view s);
bool PyIsUpper(absl::string_view s);
bool PyIsSpace(absl::string_view s);
bool PyIsAlpha(absl::string_view s);
bool PyIsDigit(absl::string_view s);
bool PyIsDecimal(absl::string_view s);
bool PyIsNumeric(absl::string_view s);
bool PyIsAlnum(absl::string_view s);
bool PyIsTitle(absl::string_view s);

// repr(str): quoted with ' (or " when the text contains ' but not "), escapes as Python does.
std::string PyRepr(absl::string_view s);

// repr(float) / str(float): the shortest round-tripping form, "1.0", "1e-05", "1e+16", "inf".
std::string PyFloatRepr(double d);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_STRINGS_H_
