#include "worker/text/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "worker/text/unicode.h"

namespace shardserve::text {

std::string TranslateOnigurumaPattern(absl::string_view p) {
  std::string out;
  out.reserve(p.size() + 16);
  bool in_class = false;
  size_t class_body_start = 0;  // index where a class's first (possibly literal ']') item is
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') {
        out.append(in_class ? "\\s\\x{85}" : "[\\s\\x{85}]");
      } else if (d == 'S' && !in_class) {
        out.append("[^\\s\\x{85}]");
      } else {
        out.push_back(c);
        out.push_back(d);
      }
      ++i;
      continue;
    }
    if (in_class) {
      if (c == ']' && i != class_body_start) {
        in_class = false;
      } else if (c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
        const size_t close = p.find(":]", i + 2);
        if (close != absl::string_view::npos) {
          out.append(p.data() + i, close + 2 - i);
          i = close + 1;
          continue;
        }
      }
    } else if (c == '[') {
      in_class = true;
      class_body_start = i + 1;
      if (class_body_start < p.size() && p[class_body_start] == '^') ++class_body_start;
    }
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(absl::string_view pattern) {
  return Build(pattern, /*literal=*/false);
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Literal(absl::string_view literal) {
  return Build(literal, /*literal=*/true);
}

absl::StatusOr<std::unique_ptr<Regex>> Regex::Build(absl::string_view pattern, bool literal) {
  const std::string translated =
      literal ? std::string(pattern) : TranslateOnigurumaPattern(pattern);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                   translated.size(), options, &error, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("invalid regex '", std::string(pattern),
                                                   "': ", reinterpret_cast<char*>(message),
                                                   " at offset ", error_offset));
  }
  auto regex = std::unique_ptr<Regex>(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<MatchSpan> Regex::FindMatches(absl::string_view text) const {
  std::vector<MatchSpan> spans;
  if (text.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t prev = 0;         // end of the last span pushed
  size_t search_from = 0;  // onig's last_end
  bool have_last = false;  // onig's last_match_end.is_some()
  size_t last_match_end = 0;
  while (search_from <= text.size()) {
    const int rc =
        pcre2_match(code, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;  // no match (or a PCRE2 limit: the rest is left unmatched)
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t start = ov[0], end = ov[1];
    if (start == end && have_last && last_match_end == end) {
      // Do not accept an empty match right after the previous match: step one character.
      if (search_from >= text.size()) break;
      search_from += Utf8SequenceLength(static_cast<uint8_t>(text[search_from]));
      continue;
    }
    search_from = end;
    have_last = true;
    last_match_end = end;
    if (prev != start) spans.push_back({prev, start, false});
    spans.push_back({start, end, true});
    prev = end;
  }
  pcre2_match_data_free(md);
  if (prev != text.size()) spans.push_back({prev, text.size(), false});
  return spans;
}

std::string Regex::ReplaceAll(absl::string_view text, absl::string_view content) const {
  std::string out;
  out.reserve(text.size());
  for (const MatchSpan& s : FindMatches(text)) {
    if (s.is_match) {
      out.append(content.data(), content.size());
    } else {
      out.append(text.data() + s.begin, s.end - s.begin);
    }
  }
  return out;
}

}  // namespace shardserve::text
