// Helpers shared by the Jinja2 builtins (jinja_builtins.cc, jinja_filters.cc): Python-style
// argument binding, argument conversions, and jinja2.filters' attribute getters.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_ARGS_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_ARGS_H_

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/text/jinja_value.h"

namespace shardserve::jinja {

// One slot per parameter; nullopt when the caller did not pass it.
using Bound = std::vector<std::optional<Value>>;

// Binds positional and keyword arguments to the parameters `names` of `fname` (no *args) like a
// Python call: TypeError for too many arguments, unknown or repeated keywords, and missing
// required (the first `required`) parameters.
absl::StatusOr<Bound> Bind(absl::string_view fname, const CallArgs& args,
                           std::initializer_list<const char*> names, size_t required = 0);

// An int (or bool) argument; TypeError otherwise, UndefinedError for an undefined.
absl::StatusOr<int64_t> ToIndex(const Value& v, absl::string_view what);
// A str argument.
absl::StatusOr<std::string> ArgStr(const Value& v, absl::string_view what);
// An optional str argument where None means "not given".
absl::StatusOr<std::optional<std::string>> ArgOptStr(const std::optional<Value>& v,
                                                     absl::string_view what);

inline Value Str(std::string s) { return Value::String(std::move(s)); }

// "a.b.0" -> ["a", "b", 0] (jinja2.filters._prepare_attribute_parts).
std::vector<Value> AttributeParts(const Value& attribute);

// jinja2.filters.make_attrgetter: environment.getitem per part, optional default for undefined
// results, optional lower-casing of string results.
struct AttrGetter {
  std::vector<Value> parts;
  std::optional<Value> default_value;
  bool ignore_case = false;

  absl::StatusOr<Value> Get(RenderContext& ctx, Value item) const;
};

// jinja2.filters.make_multi_attrgetter: "a,b" gives a list key of several attributes.
struct MultiAttrGetter {
  std::vector<AttrGetter> getters;
  bool ignore_case = false;

  absl::StatusOr<Value> Get(RenderContext& ctx, const Value& item) const;
};
MultiAttrGetter MakeMultiAttrGetter(const Value& attribute, bool ignore_case);

// Stable sort of `items` by `keys` with Python's < (sorted(..., reverse=...)); comparison errors
// are returned.
absl::Status SortByKey(RenderContext& ctx, std::vector<Value>* items, std::vector<Value> keys,
                       bool reverse);

// Python hashability (lists, dicts and dict views are not hashable).
bool IsHashable(const Value& v);
absl::Status Unhashable(const Value& v);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_ARGS_H_
