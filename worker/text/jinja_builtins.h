// Jinja2's builtins as transformers' ImmutableSandboxedEnvironment exposes them to chat
// templates: filters, tests, globals (raise_exception, strftime_now, range, dict, namespace,
// joiner), attribute/item lookup with Python's str/dict/list methods, `in`, and calls.
//
// Every function returns Python's error text (TypeError, UndefinedError, SecurityError, ...) as an
// INVALID_ARGUMENT status without a template location; the interpreter adds the line.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_BUILTINS_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_BUILTINS_H_

#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/text/jinja_value.h"

namespace shardserve::jinja {

using FilterFn = absl::StatusOr<Value> (*)(RenderContext& ctx, const Value& input,
                                           const CallArgs& args);
using TestFn = absl::StatusOr<bool> (*)(RenderContext& ctx, const Value& input,
                                        const CallArgs& args);

// The supported filters and tests by name (aliases included: "d", "count", "e", "==", ...);
// nullptr when not supported.
FilterFn FindFilter(absl::string_view name);
TestFn FindTest(absl::string_view name);
// Whether `name` is a Jinja2 builtin filter/test at all (to tell "unsupported" from "unknown").
bool IsJinjaFilterName(absl::string_view name);
bool IsJinjaTestName(absl::string_view name);

// The template globals: raise_exception, strftime_now, range, dict, namespace, joiner. Context
// variables shadow them. nullptr when `name` is not a global.
const Value* FindGlobal(absl::string_view name);
// Jinja2 globals this interpreter does not provide (cycler, lipsum): looking one up yields an
// undefined whose use says so.
bool IsUnsupportedGlobal(absl::string_view name);

// Python's getattr(obj, name) alone (no item fallback): str/dict/list methods, namespace and loop
// attributes. nullopt when there is no such attribute; an error for Python attributes this
// interpreter does not implement (str.encode, int.bit_length, ...).
absl::StatusOr<std::optional<Value>> GetPythonAttribute(const Value& obj, absl::string_view name);

// environment.getattr(obj, name): Python attribute first (str/dict/list methods, namespace and
// loop attributes), then obj[name]; undefined when neither exists. Using an attribute of an
// undefined raises its UndefinedError; unsafe (mutating) methods yield an undefined that raises
// SecurityError when called.
absl::StatusOr<Value> GetAttr(RenderContext& ctx, const Value& obj, absl::string_view name);
// environment.getitem(obj, key): obj[key] first, then the attribute for string keys.
absl::StatusOr<Value> GetItem(RenderContext& ctx, const Value& obj, const Value& key);
// obj[start:stop:step] for str, list, tuple (missing parts are None); undefined otherwise.
absl::StatusOr<Value> GetSlice(RenderContext& ctx, const Value& obj, const Value& start,
                               const Value& stop, const Value& step);
// `item in container`.
absl::StatusOr<bool> Contains(RenderContext& ctx, const Value& container, const Value& item);
// callee(*args, **kwargs).
absl::StatusOr<Value> CallValue(RenderContext& ctx, const Value& callee, CallArgs args);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_BUILTINS_H_
