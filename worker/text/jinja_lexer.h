// Tokenizer for the Jinja2 subset of chat templates, reproducing Jinja2's lexer as transformers
// configures it: trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False, default
// delimiters ({{ }}, {% %}, {# #}), whitespace control with '-' and '+', {% raw %} blocks, and
// Python string-literal escapes. Newlines are normalised to "\n".
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_LEXER_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_LEXER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve::jinja {

enum class TokenType {
  kData,           // template text (value)
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,           // identifier (value)
  kString,         // string literal, escapes decoded (value)
  kInteger,        // int_value
  kFloat,          // float_value
  kOperator,       // value: "+", "//", "==", "(", ...
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  std::string value;
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;    // 1-based
  int column = 1;  // 1-based, in bytes
};

// Human-readable description of a token for error messages ("'endfor'", "end of template").
std::string DescribeToken(const Token& token);

// Tokenizes `source`. Errors (unterminated tags, strings or comments; unexpected characters;
// unbalanced brackets; invalid UTF-8) are INVALID_ARGUMENT "<what> line L column C: reason".
absl::StatusOr<std::vector<Token>> Tokenize(absl::string_view source, absl::string_view what);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_LEXER_H_
