// Parser for the Jinja2 subset used by Hugging Face chat templates, following Jinja2's grammar
// and operator precedence (jinja2/parser.py). Supported statements: for (with else, loop filter,
// break/continue), if/elif/else, set (incl. namespace attributes, tuple targets and block set),
// macro, with, filter, raw, and transformers' generation block. Filters and tests are resolved
// here, so an unsupported one fails at parse time.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_PARSER_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_PARSER_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/text/jinja_ast.h"

namespace shardserve::jinja {

// Errors are INVALID_ARGUMENT "<what> line L column C: <reason>", e.g.
// "chat_template line 3 column 12: unsupported filter 'wordwrap'".
absl::StatusOr<std::unique_ptr<Template>> ParseTemplate(absl::string_view source,
                                                        absl::string_view what);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_PARSER_H_
