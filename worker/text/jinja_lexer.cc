#include "worker/text/jinja_lexer.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {
namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsNameChar(char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// Jinja2 reads the template with all newline styles converted to "\n" and drops one trailing
// newline (keep_trailing_newline=False).
std::string NormalizeSource(absl::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    char c = source[i];
    if (c == '\r') {
      out.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out.push_back(c);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  Lexer(std::string source, absl::string_view what) : src_(std::move(source)), what_(what) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  absl::StatusOr<std::vector<Token>> Run() {
    while (pos_ < src_.size()) {
      size_t tag = FindTagStart(pos_);
      if (tag == std::string::npos) {
        Emit(TokenType::kData, pos_, src_.substr(pos_));
        pos_ = src_.size();
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      char sign = 0;
      if (tag + 2 < src_.size() && (src_[tag + 2] == '-' || src_[tag + 2] == '+')) {
        sign = src_[tag + 2];
      }
      size_t after_start = tag + 2 + (sign ? 1 : 0);
      size_t raw_end = 0;
      bool raw = kind == '%' && MatchRawBegin(after_start, &raw_end);
      EmitText(pos_, tag, sign, kind != '{');
      line_starting_ = false;
      if (raw) {
        RETURN_IF_ERROR(LexRaw(tag, raw_end));
      } else if (kind == '#') {
        RETURN_IF_ERROR(LexComment(tag, after_start));
      } else {
        RETURN_IF_ERROR(LexTag(tag, after_start, kind == '%'));
      }
    }
    Token eof;
    eof.type = TokenType::kEof;
    SetPosition(&eof, src_.size());
    tokens_.push_back(std::move(eof));
    return std::move(tokens_);
  }

 private:
  absl::Status Error(size_t offset, absl::string_view message) const {
    auto [line, column] = LineColumn(offset);
    return absl::InvalidArgumentError(
        absl::StrCat(what_, " line ", line, " column ", column, ": ", message));
  }

  std::pair<int, int> LineColumn(size_t offset) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    size_t line = static_cast<size_t>(it - line_starts_.begin());
    size_t start = line_starts_[line - 1];
    return {static_cast<int>(line), static_cast<int>(offset - start + 1)};
  }

  void SetPosition(Token* t, size_t offset) const {
    auto [line, column] = LineColumn(offset);
    t->line = line;
    t->column = column;
  }

  Token& Emit(TokenType type, size_t offset, std::string value = "") {
    Token t;
    t.type = type;
    t.value = std::move(value);
    SetPosition(&t, offset);
    tokens_.push_back(std::move(t));
    return tokens_.back();
  }

  size_t FindTagStart(size_t from) const {
    size_t p = from;
    while (true) {
      p = src_.find('{', p);
      if (p == std::string::npos || p + 1 >= src_.size()) return std::string::npos;
      char next = src_[p + 1];
      if (next == '{' || next == '%' || next == '#') return p;
      ++p;
    }
  }

  // Length of the Python whitespace run at `p`.
  size_t WhitespaceRun(size_t p) const {
    size_t q = p;
    while (q < src_.size()) {
      size_t next = q;
      if (!IsPyWhitespace(DecodeUtf8(src_, &next))) break;
      q = next;
    }
    return q - p;
  }

  // `{%(-|+|)\s*raw\s*(-%}\s*|%})` starting after the sign; sets *end past the match.
  bool MatchRawBegin(size_t p, size_t* end) const {
    p += WhitespaceRun(p);
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    p += WhitespaceRun(p);
    if (src_.compare(p, 3, "-%}") == 0) {
      p += 3;
      p += WhitespaceRun(p);
    } else if (src_.compare(p, 2, "%}") == 0) {
      p += 2;
    } else {
      return false;
    }
    *end = p;
    return true;
  }

  // Emits src_[from, to) as data, applying '-' (strip all whitespace before the tag) or
  // lstrip_blocks (strip the tag's indentation when only whitespace precedes it on its line).
  void EmitText(size_t from, size_t to, char sign, bool lstrip_applies) {
    std::string text = src_.substr(from, to - from);
    if (sign == '-') {
      text = PyStrip(text, std::nullopt, false, true);
    } else if (sign != '+' && lstrip_applies) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && l_pos < text.size() &&
          PyIsSpace(absl::string_view(text).substr(l_pos))) {
        text.resize(l_pos);
      }
    }
    if (!text.empty()) Emit(TokenType::kData, from, std::move(text));
  }

  // After a block or comment end: '-' eats all following whitespace, plain ends eat one newline
  // (trim_blocks), '+' keeps everything. Updates line_starting_ like Jinja2 (last matched char).
  void AfterEnd(char end_sign, bool trim_newline) {
    size_t start = pos_;
    if (end_sign == '-') {
      pos_ += WhitespaceRun(pos_);
    } else if (end_sign == 0 && trim_newline && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
    }
    line_starting_ = pos_ > start && src_[pos_ - 1] == '\n';
  }

  absl::Status LexComment(size_t tag, size_t body) {
    for (size_t p = body; p + 1 < src_.size(); ++p) {
      char end_sign = 0;
      size_t end = 0;
      if ((src_[p] == '-' || src_[p] == '+') && src_.compare(p + 1, 2, "#}") == 0) {
        end_sign = src_[p];
        end = p + 3;
      } else if (src_.compare(p, 2, "#}") == 0) {
        end = p + 2;
      } else {
        continue;
      }
      pos_ = end;
      AfterEnd(end_sign, /*trim_newline=*/true);
      return absl::OkStatus();
    }
    return Error(tag, "unterminated comment: missing '#}'");
  }

  absl::Status LexRaw(size_t tag, size_t body) {
    // (.*?)({%(-|+|)\s*endraw\s*(+%}|-%}\s*|%}\n?)
    size_t p = body;
    while (true) {
      p = src_.find("{%", p);
      if (p == std::string::npos) return Error(tag, "unterminated {% raw %}: missing {% endraw %}");
      size_t q = p + 2;
      char sign = 0;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) sign = src_[q++];
      q += WhitespaceRun(q);
      if (src_.compare(q, 6, "endraw") != 0) {
        p += 2;
        continue;
      }
      q += 6;
      q += WhitespaceRun(q);
      char end_sign = 0;
      if (src_.compare(q, 3, "+%}") == 0 || src_.compare(q, 3, "-%}") == 0) {
        end_sign = src_[q];
        q += 3;
      } else if (src_.compare(q, 2, "%}") == 0) {
        q += 2;
      } else {
        p += 2;
        continue;
      }
      // The raw text gets the same stripping as text before any block tag.
      bool saved = line_starting_;
      line_starting_ = body > 0 && src_[body - 1] == '\n';
      EmitText(body, p, sign, true);
      line_starting_ = saved;
      pos_ = q;
      AfterEnd(end_sign, true);
      return absl::OkStatus();
    }
  }

  absl::Status LexTag(size_t tag, size_t p, bool block) {
    Emit(block ? TokenType::kBlockBegin : TokenType::kVariableBegin, tag);
    std::vector<char> balance;
    while (true) {
      if (p >= src_.size()) {
        return Error(tag, block ? "unterminated block tag: missing '%}'"
                                : "unterminated expression: missing '}}'");
      }
      if (balance.empty()) {
        char end_sign = 0;
        size_t end = 0;
        if (block) {
          if ((src_[p] == '-' || src_[p] == '+') && src_.compare(p + 1, 2, "%}") == 0) {
            end_sign = src_[p];
            end = p + 3;
          } else if (src_.compare(p, 2, "%}") == 0) {
            end = p + 2;
          }
        } else {
          if (src_[p] == '-' && src_.compare(p + 1, 2, "}}") == 0) {
            end_sign = '-';
            end = p + 3;
          } else if (src_.compare(p, 2, "}}") == 0) {
            end = p + 2;
          }
        }
        if (end != 0) {
          Emit(block ? TokenType::kBlockEnd : TokenType::kVariableEnd, p);
          pos_ = end;
          AfterEnd(end_sign, /*trim_newline=*/block);
          return absl::OkStatus();
        }
      }
      size_t ws = WhitespaceRun(p);
      if (ws > 0) {
        p += ws;
        continue;
      }
      char c = src_[p];
      size_t len = 0;
      if (IsDigit(c) && (len = MatchFloat(p)) > 0) {
        std::string digits;
        for (size_t i = p; i < p + len; ++i) {
          if (src_[i] != '_') digits.push_back(src_[i]);
        }
        double d = 0;
        auto res = std::from_chars(digits.data(), digits.data() + digits.size(), d);
        if (res.ec != std::errc()) d = digits.find('-') != std::string::npos ? 0.0 : HUGE_VAL;
        Emit(TokenType::kFloat, p).float_value = d;
        p += len;
        continue;
      }
      if (IsDigit(c)) {
        int64_t value = 0;
        ASSIGN_OR_RETURN(len, MatchInteger(p, &value));
        Emit(TokenType::kInteger, p).int_value = value;
        p += len;
        continue;
      }
      if (IsNameStart(c)) {
        size_t q = p;
        while (q < src_.size() && IsNameChar(src_[q])) ++q;
        Emit(TokenType::kName, p, src_.substr(p, q - p));
        p = q;
        continue;
      }
      if (c == '\'' || c == '"') {
        size_t q = p + 1;
        while (q < src_.size() && src_[q] != c) q += src_[q] == '\\' ? 2 : 1;
        if (q >= src_.size()) return Error(p, "unterminated string literal");
        ASSIGN_OR_RETURN(std::string value, DecodeString(p + 1, q));
        Emit(TokenType::kString, p, std::move(value));
        p = q + 1;
        continue;
      }
      static constexpr const char* kTwoCharOps[] = {"//", "**", "==", "!=", ">=", "<="};
      std::string op;
      for (const char* two : kTwoCharOps) {
        if (src_.compare(p, 2, two) == 0) op = two;
      }
      if (op.empty() &&
          absl::string_view("+-/*%~[](){}><=.:|,;").find(c) != absl::string_view::npos) {
        op = std::string(1, c);
      }
      if (op.empty()) {
        size_t next = p;
        char32_t cp = DecodeUtf8(src_, &next);
        std::string shown;
        AppendUtf8(cp, &shown);
        return Error(p, absl::StrCat("unexpected character ", PyRepr(shown)));
      }
      if (op == "(" || op == "[" || op == "{") {
        balance.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
      } else if (op == ")" || op == "]" || op == "}") {
        if (balance.empty()) return Error(p, absl::StrCat("unexpected '", op, "'"));
        if (balance.back() != op[0]) {
          return Error(p, absl::StrCat("unexpected '", op, "', expected '",
                                       std::string(1, balance.back()), "'"));
        }
        balance.pop_back();
      }
      Emit(TokenType::kOperator, p, op);
      p += op.size();
    }
  }

  // (\d+_)*\d+ at p; returns the length (0 if none).
  size_t MatchDigits(size_t p) const {
    size_t q = p;
    if (q >= src_.size() || !IsDigit(src_[q])) return 0;
    while (true) {
      while (q < src_.size() && IsDigit(src_[q])) ++q;
      if (q + 1 < src_.size() && src_[q] == '_' && IsDigit(src_[q + 1])) {
        ++q;
        continue;
      }
      return q - p;
    }
  }

  // (?<!\.)(\d+_)*\d+((\.(\d+_)*\d+)?e[+\-]?(\d+_)*\d+|\.(\d+_)*\d+), case-insensitive.
  size_t MatchFloat(size_t p) const {
    if (p > 0 && src_[p - 1] == '.') return 0;
    size_t q = p + MatchDigits(p);
    if (q == p) return 0;
    size_t frac = 0;
    if (q < src_.size() && src_[q] == '.') frac = MatchDigits(q + 1);
    size_t after_frac = frac > 0 ? q + 1 + frac : q;
    if (after_frac < src_.size() && (src_[after_frac] == 'e' || src_[after_frac] == 'E')) {
      size_t e = after_frac + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      size_t exp_digits = MatchDigits(e);
      if (exp_digits > 0) return e + exp_digits - p;
    }
    if (frac > 0) return after_frac - p;
    return 0;
  }

  // (0b(_?[0-1])+|0o(_?[0-7])+|0x(_?[\da-f])+|[1-9](_?\d)*|0(_?0)*), case-insensitive.
  absl::StatusOr<size_t> MatchInteger(size_t p, int64_t* value) const {
    int base = 10;
    size_t q = p;
    if (src_[p] == '0' && p + 1 < src_.size()) {
      char b = static_cast<char>(absl::ascii_tolower(static_cast<unsigned char>(src_[p + 1])));
      base = b == 'b' ? 2 : b == 'o' ? 8 : b == 'x' ? 16 : 10;
    }
    auto is_base_digit = [&](char c) {
      if (base == 2) return c == '0' || c == '1';
      if (base == 8) return c >= '0' && c <= '7';
      if (base == 16) return absl::ascii_isxdigit(static_cast<unsigned char>(c));
      return IsDigit(c);
    };
    std::string digits;
    if (base != 10) {
      q = p + 2;
      while (q < src_.size()) {
        if (src_[q] == '_' && q + 1 < src_.size() && is_base_digit(src_[q + 1])) {
          ++q;
        } else if (!is_base_digit(src_[q])) {
          break;
        }
        digits.push_back(src_[q++]);
      }
      if (digits.empty()) {
        // "0x" without digits: Jinja2 lexes the "0" alone.
        base = 10;
        q = p;
      }
    }
    if (base == 10) {
      q = p;
      if (src_[p] == '0') {
        // 0(_?0)*
        digits.assign(1, '0');  // (not = "0": GCC 12 -Wrestrict false positive)
        ++q;
        while (q < src_.size()) {
          if (src_[q] == '0') {
            ++q;
          } else if (src_[q] == '_' && q + 1 < src_.size() && src_[q + 1] == '0') {
            q += 2;
          } else {
            break;
          }
        }
      } else {
        while (q < src_.size()) {
          if (src_[q] == '_' && q + 1 < src_.size() && IsDigit(src_[q + 1])) {
            ++q;
          } else if (!IsDigit(src_[q])) {
            break;
          }
          digits.push_back(src_[q++]);
        }
      }
    }
    uint64_t v = 0;
    auto res = std::from_chars(digits.data(), digits.data() + digits.size(), v, base);
    if (res.ec != std::errc() || v > static_cast<uint64_t>(INT64_MAX)) {
      return Error(p, "integer literal does not fit in 64 bits");
    }
    *value = static_cast<int64_t>(v);
    return q - p;
  }

  // Python's unicode-escape decoding of a string literal body src_[from, to).
  absl::StatusOr<std::string> DecodeString(size_t from, size_t to) const {
    std::string out;
    size_t p = from;
    auto hex_value = [&](size_t at, int n, uint32_t* v) {
      if (at + static_cast<size_t>(n) > to) return false;
      *v = 0;
      for (int i = 0; i < n; ++i) {
        char c = src_[at + i];
        if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
        *v = *v * 16 + static_cast<uint32_t>(absl::ascii_isdigit(static_cast<unsigned char>(c))
                                                 ? c - '0'
                                                 : absl::ascii_tolower(c) - 'a' + 10);
      }
      return true;
    };
    while (p < to) {
      char c = src_[p];
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      size_t esc = p;
      ++p;  // the lexer guarantees a character follows
      char e = src_[p];
      switch (e) {
        case '\n':
          ++p;
          continue;
        case '\\':
          out.push_back('\\');
          ++p;
          continue;
        case '\'':
          out.push_back('\'');
          ++p;
          continue;
        case '"':
          out.push_back('"');
          ++p;
          continue;
        case 'a':
          out.push_back('\a');
          ++p;
          continue;
        case 'b':
          out.push_back('\b');
          ++p;
          continue;
        case 'f':
          out.push_back('\f');
          ++p;
          continue;
        case 'n':
          out.push_back('\n');
          ++p;
          continue;
        case 'r':
          out.push_back('\r');
          ++p;
          continue;
        case 't':
          out.push_back('\t');
          ++p;
          continue;
        case 'v':
          out.push_back('\v');
          ++p;
          continue;
        default:
          break;
      }
      if (e >= '0' && e <= '7') {
        uint32_t v = 0;
        int n = 0;
        while (n < 3 && p < to && src_[p] >= '0' && src_[p] <= '7') {
          v = v * 8 + static_cast<uint32_t>(src_[p] - '0');
          ++p;
          ++n;
        }
        AppendUtf8(v, &out);
        continue;
      }
      if (e == 'x' || e == 'u' || e == 'U') {
        int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
        uint32_t v = 0;
        if (!hex_value(p + 1, n, &v)) {
          return Error(esc, absl::StrCat("truncated \\", std::string(1, e), " escape"));
        }
        if (v > 0x10FFFF) return Error(esc, "illegal Unicode character in escape");
        if (v >= 0xD800 && v <= 0xDFFF) {
          return Error(esc, "surrogate code point escapes are not supported");
        }
        AppendUtf8(v, &out);
        p += 1 + static_cast<size_t>(n);
        continue;
      }
      if (e == 'N') return Error(esc, "\\N{...} escapes are not supported");
      if (static_cast<unsigned char>(e) >= 0x80) {
        // Python first backslash-escapes non-ASCII characters, so "\é" decodes to "\xe9".
        size_t next = p;
        char32_t cp = DecodeUtf8(src_, &next);
        if (cp <= 0xFF) {
          absl::StrAppend(&out, "\\x", absl::Hex(cp, absl::kZeroPad2));
        } else if (cp <= 0xFFFF) {
          absl::StrAppend(&out, "\\u", absl::Hex(cp, absl::kZeroPad4));
        } else {
          absl::StrAppend(&out, "\\U", absl::Hex(cp, absl::kZeroPad8));
        }
        p = next;
        continue;
      }
      // Unknown escape: kept verbatim.
      out.push_back('\\');
      out.push_back(e);
      ++p;
    }
    return out;
  }

  std::string src_;
  std::string what_;
  std::vector<size_t> line_starts_;
  size_t pos_ = 0;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

std::string DescribeToken(const Token& token) {
  switch (token.type) {
    case TokenType::kData:
      return "template data";
    case TokenType::kVariableBegin:
      return "'{{'";
    case TokenType::kVariableEnd:
      return "'}}'";
    case TokenType::kBlockBegin:
      return "'{%'";
    case TokenType::kBlockEnd:
      return "'%}'";
    case TokenType::kName:
      return absl::StrCat("'", token.value, "'");
    case TokenType::kString:
      return "string literal";
    case TokenType::kInteger:
      return absl::StrCat("integer ", token.int_value);
    case TokenType::kFloat:
      return "float literal";
    case TokenType::kOperator:
      return absl::StrCat("'", token.value, "'");
    case TokenType::kEof:
      return "end of template";
  }
  return "token";
}

absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, absl::string_view what) {
  if (!IsValidUtf8(source)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": template is not valid UTF-8"));
  }
  Lexer lexer(NormalizeSource(source), what);
  return lexer.Run();
}

}  // namespace shardserve::jinja
