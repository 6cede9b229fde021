// Evaluates a parsed chat template (jinja_ast.h) against a JSON context with Jinja2's runtime
// semantics: scoping (for-loop bodies and macros are scopes, if is not), loop variables,
// undefined values, macros, and the limits that keep a hostile template bounded.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_INTERPRETER_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_INTERPRETER_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "worker/text/jinja_ast.h"

namespace shardserve::jinja {

struct RenderOptions {
  std::function<absl::Time()> clock;  // for strftime_now(); must be thread-safe
  absl::TimeZone time_zone;
  size_t max_output_bytes = 0;  // also bounds every string value
  int64_t max_steps = 0;        // statements, loop iterations, items walked
  int max_call_depth = 0;       // macro recursion
};

// Jinja2's compile-time constant folding (jinja2/optimizer.py), which is observable: a
// sub-expression that evaluates without variables or calls is replaced by its value when that
// value has a safe repr, and a constant {{ }} is printed at compile time even when it is an
// undefined. At compile time a slice goes through environment.getitem (a failed slice is an
// undefined) while at render time it is plain Python slicing (TypeError). Run once after parsing.
void FoldConstants(Template* tmpl);

// Renders `tmpl`. Every top-level key of `context` (a JSON object) becomes a template variable.
// Errors name the template and line: INVALID_ARGUMENT for template errors (raise_exception(msg)
// gives "<what> line L: <msg>"), RESOURCE_EXHAUSTED when a limit is hit.
absl::StatusOr<std::string> RenderTemplate(const Template& tmpl,
                                           const nlohmann::ordered_json& context,
                                           const RenderOptions& options);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_INTERPRETER_H_
