#include "worker/text/jinja_strings.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "utf8proc.h"

namespace shardserve::jinja {
namespace {

utf8proc_category_t Category(char32_t c) {
  if (c > 0x10FFFF) return UTF8PROC_CATEGORY_CN;
  return utf8proc_category(static_cast<utf8proc_int32_t>(c));
}

bool IsUpperCat(char32_t c) { return Category(c) == UTF8PROC_CATEGORY_LU; }
bool IsLowerCat(char32_t c) { return Category(c) == UTF8PROC_CATEGORY_LL; }
bool IsTitleCat(char32_t c) { return Category(c) == UTF8PROC_CATEGORY_LT; }
bool IsCased(char32_t c) { return IsUpperCat(c) || IsLowerCat(c) || IsTitleCat(c); }

bool IsAlphaChar(char32_t c) {
  switch (Category(c)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool IsDecimalChar(char32_t c) { return Category(c) == UTF8PROC_CATEGORY_ND; }

// Characters with Numeric_Type=Digit that are not decimal (superscripts, circled digits, ...).
bool IsDigitChar(char32_t c) {
  if (IsDecimalChar(c)) return true;
  return c == 0xB2 || c == 0xB3 || c == 0xB9 || c == 0x2070 || (c >= 0x2074 && c <= 0x2079) ||
         (c >= 0x2080 && c <= 0x2089) || (c >= 0x2460 && c <= 0x2468) ||
         (c >= 0x2474 && c <= 0x247C) || (c >= 0x2488 && c <= 0x2490) || c == 0x24EA ||
         (c >= 0x24F5 && c <= 0x24FD) || c == 0x24FF || (c >= 0x2776 && c <= 0x277E) ||
         (c >= 0x2780 && c <= 0x2788) || (c >= 0x278A && c <= 0x2792) ||
         (c >= 0x1369 && c <= 0x1371);
}

bool IsNumericChar(char32_t c) {
  auto cat = Category(c);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
         cat == UTF8PROC_CATEGORY_NO || IsDigitChar(c);
}

char32_t SimpleUpper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}
char32_t SimpleLower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}
char32_t SimpleTitle(char32_t c) {
  if (c < 0x80) return SimpleUpper(c);
  return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}

// Python's full (multi-character) mappings for the common SpecialCasing.txt entries.
const char* FullUpper(char32_t c) {
  switch (c) {
    case 0xDF:
      return "SS";
    case 0x149:
      return "\xCA\xBCN";  // ʼN
    case 0xFB00:
      return "FF";
    case 0xFB01:
      return "FI";
    case 0xFB02:
      return "FL";
    case 0xFB03:
      return "FFI";
    case 0xFB04:
      return "FFL";
    case 0xFB05:
      return "ST";
    case 0xFB06:
      return "ST";
    default:
      return nullptr;
  }
}
const char* FullTitle(char32_t c) {
  switch (c) {
    case 0xDF:
      return "Ss";
    case 0x149:
      return "\xCA\xBCN";
    case 0xFB00:
      return "Ff";
    case 0xFB01:
      return "Fi";
    case 0xFB02:
      return "Fl";
    case 0xFB03:
      return "Ffi";
    case 0xFB04:
      return "Ffl";
    case 0xFB05:
      return "St";
    case 0xFB06:
      return "St";
    default:
      return nullptr;
  }
}

void AppendUpper(char32_t c, std::string* out) {
  if (const char* full = FullUpper(c)) {
    out->append(full);
  } else {
    AppendUtf8(SimpleUpper(c), out);
  }
}
void AppendTitle(char32_t c, std::string* out) {
  if (const char* full = FullTitle(c)) {
    out->append(full);
  } else {
    AppendUtf8(SimpleTitle(c), out);
  }
}

// Lower-cases cps[i], applying the final-sigma rule and the dotted capital I expansion.
void AppendLowerAt(const std::vector<char32_t>& cps, size_t i, std::string* out) {
  char32_t c = cps[i];
  if (c == 0x130) {  // İ -> i + combining dot above
    out->append("i\xCC\x87");
    return;
  }
  if (c == 0x3A3) {  // Σ: final form when preceded by a cased letter and not followed by one.
    bool before = false;
    for (size_t j = i; j-- > 0;) {
      if (IsCased(cps[j])) {
        before = true;
        break;
      }
      if (Category(cps[j]) != UTF8PROC_CATEGORY_MN) break;
    }
    bool after = false;
    for (size_t j = i + 1; j < cps.size(); ++j) {
      if (IsCased(cps[j])) {
        after = true;
        break;
      }
      if (Category(cps[j]) != UTF8PROC_CATEGORY_MN) break;
    }
    AppendUtf8(before && !after ? 0x3C2 : 0x3C3, out);
    return;
  }
  AppendUtf8(SimpleLower(c), out);
}

bool InChars(char32_t c, const std::vector<char32_t>& set) {
  for (char32_t x : set) {
    if (x == c) return true;
  }
  return false;
}

}  // namespace

// --- UTF-8 ---------------------------------------------------------------------------------------

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    char32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

bool IsAscii(absl::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

char32_t DecodeUtf8(absl::string_view s, size_t* pos) {
  size_t i = *pos;
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    *pos = i + 1;
    return c;
  }
  int len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    *pos = i + 1;
    return c;
  }
  char32_t cp = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (int k = 1; k < len; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) {
      *pos = i + 1;
      return c;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  *pos = i + len;
  return cp;
}

std::vector<char32_t> DecodeUtf8All(absl::string_view s) {
  std::vector<char32_t> cps;
  cps.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) cps.push_back(DecodeUtf8(s, &pos));
  return cps;
}

std::string EncodeUtf8(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) AppendUtf8(c, &out);
  return out;
}

int64_t CodePointCount(absl::string_view s) {
  int64_t n = 0;
  for (char c : s) {
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  }
  return n;
}

std::vector<std::string> SplitCodePoints(absl::string_view s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    DecodeUtf8(s, &pos);
    out.emplace_back(s.substr(start, pos - start));
  }
  return out;
}

// --- Character classes ---------------------------------------------------------------------------

bool IsPyWhitespace(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool IsPyPrintable(char32_t c) {
  if (c == ' ') return true;
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  switch (Category(c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
      return false;
    default:
      return true;
  }
}

bool IsPyLineBreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
         c == 0x85 || c == 0x2028 || c == 0x2029;
}

// --- str methods ---------------------------------------------------------------------------------

std::string PyStrip(absl::string_view s, const std::optional<std::string>& chars, bool left,
                    bool right) {
  std::vector<char32_t> set;
  if (chars.has_value()) set = DecodeUtf8All(*chars);
  auto strip_me = [&](char32_t c) {
    return chars.has_value() ? InChars(c, set) : IsPyWhitespace(c);
  };
  size_t begin = 0;
  size_t end = s.size();
  if (left) {
    while (begin < end) {
      size_t next = begin;
      if (!strip_me(DecodeUtf8(s, &next))) break;
      begin = next;
    }
  }
  if (right) {
    while (end > begin) {
      size_t start = end - 1;
      while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      size_t tmp = start;
      if (!strip_me(DecodeUtf8(s, &tmp))) break;
      end = start;
    }
  }
  return std::string(s.substr(begin, end - begin));
}

std::vector<std::string> PySplit(absl::string_view s, const std::optional<std::string>& sep,
                                 int64_t maxsplit) {
  std::vector<std::string> out;
  if (maxsplit < 0) maxsplit = INT64_MAX;
  if (sep.has_value()) {
    size_t start = 0;
    int64_t splits = 0;
    while (splits < maxsplit) {
      size_t found = s.find(*sep, start);
      if (found == absl::string_view::npos) break;
      out.emplace_back(s.substr(start, found - start));
      start = found + sep->size();
      ++splits;
    }
    out.emplace_back(s.substr(start));
    return out;
  }
  // Whitespace split: runs of whitespace separate, leading/trailing whitespace ignored.
  size_t pos = 0;
  int64_t splits = 0;
  while (pos < s.size()) {
    // Skip whitespace.
    size_t next = pos;
    while (pos < s.size()) {
      next = pos;
      if (!IsPyWhitespace(DecodeUtf8(s, &next))) break;
      pos = next;
    }
    if (pos >= s.size()) break;
    if (splits >= maxsplit) {
      // The remainder keeps its trailing whitespace (as CPython does).
      out.emplace_back(s.substr(pos));
      return out;
    }
    size_t start = pos;
    while (pos < s.size()) {
      next = pos;
      if (IsPyWhitespace(DecodeUtf8(s, &next))) break;
      pos = next;
    }
    out.emplace_back(s.substr(start, pos - start));
    ++splits;
  }
  return out;
}

std::vector<std::string> PyRSplit(absl::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit) {
  if (maxsplit < 0) return PySplit(s, sep, maxsplit);
  std::vector<std::string> out;
  if (sep.has_value()) {
    size_t end = s.size();
    int64_t splits = 0;
    while (splits < maxsplit && end >= sep->size()) {
      size_t found = s.substr(0, end).rfind(*sep);
      if (found == absl::string_view::npos) break;
      out.emplace_back(s.substr(found + sep->size(), end - found - sep->size()));
      end = found;
      ++splits;
    }
    out.emplace_back(s.substr(0, end));
    std::reverse(out.begin(), out.end());
    return out;
  }
  std::vector<char32_t> cps = DecodeUtf8All(s);
  size_t end = cps.size();
  int64_t splits = 0;
  std::vector<std::vector<char32_t>> parts;
  while (end > 0) {
    while (end > 0 && IsPyWhitespace(cps[end - 1])) --end;
    if (end == 0) break;
    if (splits >= maxsplit) {
      // The remainder keeps its leading whitespace (as CPython does).
      parts.emplace_back(cps.begin(), cps.begin() + end);
      end = 0;
      break;
    }
    size_t start = end;
    while (start > 0 && !IsPyWhitespace(cps[start - 1])) --start;
    parts.emplace_back(cps.begin() + start, cps.begin() + end);
    end = start;
    ++splits;
  }
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) out.push_back(EncodeUtf8(*it));
  return out;
}

std::vector<std::string> PySplitLines(absl::string_view s, bool keepends) {
  std::vector<std::string> out;
  size_t pos = 0;
  size_t line_start = 0;
  while (pos < s.size()) {
    size_t next = pos;
    char32_t c = DecodeUtf8(s, &next);
    if (IsPyLineBreak(c)) {
      size_t eol = next;
      if (c == '\r' && eol < s.size() && s[eol] == '\n') ++eol;
      out.emplace_back(s.substr(line_start, (keepends ? eol : pos) - line_start));
      line_start = eol;
      pos = eol;
    } else {
      pos = next;
    }
  }
  if (line_start < s.size()) out.emplace_back(s.substr(line_start));
  return out;
}

std::string PyReplace(absl::string_view s, absl::string_view old_sub, absl::string_view new_sub,
                      int64_t count) {
  if (count < 0) count = INT64_MAX;
  std::string out;
  if (old_sub.empty()) {
    // Inserts `new_sub` before every code point and at the end, up to `count` times.
    int64_t done = 0;
    size_t pos = 0;
    while (pos < s.size()) {
      if (done < count) {
        out.append(new_sub.data(), new_sub.size());
        ++done;
      }
      size_t start = pos;
      DecodeUtf8(s, &pos);
      out.append(s.data() + start, pos - start);
    }
    if (done < count) out.append(new_sub.data(), new_sub.size());
    return out;
  }
  size_t start = 0;
  int64_t done = 0;
  while (done < count) {
    size_t found = s.find(old_sub, start);
    if (found == absl::string_view::npos) break;
    out.append(s.data() + start, found - start);
    out.append(new_sub.data(), new_sub.size());
    start = found + old_sub.size();
    ++done;
  }
  out.append(s.data() + start, s.size() - start);
  return out;
}

int64_t PyFind(absl::string_view s, absl::string_view sub, bool reverse) {
  size_t found = reverse ? s.rfind(sub) : s.find(sub);
  if (found == absl::string_view::npos) return -1;
  return CodePointCount(s.substr(0, found));
}

int64_t PyCount(absl::string_view s, absl::string_view sub) {
  if (sub.empty()) return CodePointCount(s) + 1;
  int64_t n = 0;
  size_t start = 0;
  while (true) {
    size_t found = s.find(sub, start);
    if (found == absl::string_view::npos) break;
    ++n;
    start = found + sub.size();
  }
  return n;
}

std::string PyUpper(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) AppendUpper(DecodeUtf8(s, &pos), &out);
  return out;
}

std::string PyLower(absl::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
    }
    return out;
  }
  std::vector<char32_t> cps = DecodeUtf8All(s);
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < cps.size(); ++i) AppendLowerAt(cps, i, &out);
  return out;
}

std::string PySwapCase(absl::string_view s) {
  std::vector<char32_t> cps = DecodeUtf8All(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (IsUpperCat(cps[i])) {
      AppendLowerAt(cps, i, &out);
    } else if (IsLowerCat(cps[i])) {
      AppendUpper(cps[i], &out);
    } else {
      AppendUtf8(cps[i], &out);
    }
  }
  return out;
}

std::string PyTitle(absl::string_view s) {
  std::vector<char32_t> cps = DecodeUtf8All(s);
  std::string out;
  bool previous_is_cased = false;
  for (size_t i = 0; i < cps.size(); ++i) {
    char32_t c = cps[i];
    if (previous_is_cased) {
      AppendLowerAt(cps, i, &out);
    } else {
      AppendTitle(c, &out);
    }
    previous_is_cased = IsCased(c);
  }
  return out;
}

std::string PyCapitalize(absl::string_view s) {
  std::vector<char32_t> cps = DecodeUtf8All(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (i == 0) {
      AppendTitle(cps[i], &out);
    } else {
      AppendLowerAt(cps, i, &out);
    }
  }
  return out;
}

std::string JinjaTitle(absl::string_view s) {
  // "".join(item[0].upper() + item[1:].lower() for item in re.split(r"([-\s({\[<]+)", s) if item)
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsPyWhitespace(c);
  };
  std::vector<char32_t> cps = DecodeUtf8All(s);
  std::string out;
  size_t i = 0;
  while (i < cps.size()) {
    size_t j = i;
    bool sep = is_sep(cps[i]);
    while (j < cps.size() && is_sep(cps[j]) == sep) ++j;
    std::vector<char32_t> item(cps.begin() + i, cps.begin() + j);
    AppendUpper(item[0], &out);
    for (size_t k = 1; k < item.size(); ++k) AppendLowerAt(item, k, &out);
    i = j;
  }
  return out;
}

bool PyIsLower(absl::string_view s) {
  bool cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t c = DecodeUtf8(s, &pos);
    if (IsUpperCat(c) || IsTitleCat(c)) return false;
    if (IsLowerCat(c)) cased = true;
  }
  return cased;
}

bool PyIsUpper(absl::string_view s) {
  bool cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t c = DecodeUtf8(s, &pos);
    if (IsLowerCat(c) || IsTitleCat(c)) return false;
    if (IsUpperCat(c)) cased = true;
  }
  return cased;
}

namespace {
template <typename Pred>
bool AllOf(absl::string_view s, Pred pred) {
  if (s.empty()) return false;
  size_t pos = 0;
  while (pos < s.size()) {
    if (!pred(DecodeUtf8(s, &pos))) return false;
  }
  return true;
}
}  // namespace

bool PyIsSpace(absl::string_view s) { return AllOf(s, IsPyWhitespace); }
bool PyIsAlpha(absl::string_view s) { return AllOf(s, IsAlphaChar); }
bool PyIsDigit(absl::string_view s) { return AllOf(s, IsDigitChar); }
bool PyIsDecimal(absl::string_view s) { return AllOf(s, IsDecimalChar); }
bool PyIsNumeric(absl::string_view s) { return AllOf(s, IsNumericChar); }
bool PyIsAlnum(absl::string_view s) {
  return AllOf(s, [](char32_t c) { return IsAlphaChar(c) || IsNumericChar(c); });
}

bool PyIsTitle(absl::string_view s) {
  bool cased = false;
  bool previous_is_cased = false;
  size_t pos = 0;
  while (pos < s.size()) {
    char32_t c = DecodeUtf8(s, &pos);
    if (IsUpperCat(c) || IsTitleCat(c)) {
      if (previous_is_cased) return false;
      previous_is_cased = true;
      cased = true;
    } else if (IsLowerCat(c)) {
      if (!previous_is_cased) return false;
      previous_is_cased = true;
      cased = true;
    } else {
      previous_is_cased = false;
    }
  }
  return cased;
}

std::string PyRepr(absl::string_view s) {
  char quote = '\'';
  if (s.find('\'') != absl::string_view::npos && s.find('"') == absl::string_view::npos) {
    quote = '"';
  }
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back(quote);
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    char32_t c = DecodeUtf8(s, &pos);
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out.append("\\t");
    } else if (c == '\n') {
      out.append("\\n");
    } else if (c == '\r') {
      out.append("\\r");
    } else if (c < 0x20 || c == 0x7F) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else if (c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else if (IsPyPrintable(c)) {
      out.append(s.data() + start, pos - start);
    } else if (c <= 0xFF) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else if (c <= 0xFFFF) {
      absl::StrAppend(&out, "\\u", absl::Hex(c, absl::kZeroPad4));
    } else {
      absl::StrAppend(&out, "\\U", absl::Hex(c, absl::kZeroPad8));
    }
  }
  out.push_back(quote);
  return out;
}

std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  // Shortest round-trip digits in scientific form: "d.ddde+XX".
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string out;
  size_t i = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    i = 1;
  }
  size_t e = sci.find('e');
  std::string digits;
  for (size_t k = i; k < e; ++k) {
    if (sci[k] != '.') digits.push_back(sci[k]);
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int exp10 = std::atoi(sci.c_str() + e + 1);
  int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  const int ndigits = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out.append("0.");
      out.append(static_cast<size_t>(-decpt), '0');
      out.append(digits);
    } else if (decpt >= ndigits) {
      out.append(digits);
      out.append(static_cast<size_t>(decpt - ndigits), '0');
      out.append(".0");
    } else {
      out.append(digits, 0, static_cast<size_t>(decpt));
      out.push_back('.');
      out.append(digits, static_cast<size_t>(decpt), std::string::npos);
    }
  } else {
    out.push_back(digits[0]);
    if (ndigits > 1) {
      out.push_back('.');
      out.append(digits, 1, std::string::npos);
    }
    int x = decpt - 1;
    out.push_back('e');
    out.push_back(x < 0 ? '-' : '+');
    if (x < 0) x = -x;
    if (x < 10) out.push_back('0');
    out.append(std::to_string(x));
  }
  return out;
}

}  // namespace shardserve::jinja
