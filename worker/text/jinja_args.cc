#include "worker/text/jinja_args.h"

#include <algorithm>
#include <charconv>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "worker/text/jinja_builtins.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {

absl::StatusOr<Bound> Bind(absl::string_view fname, const CallArgs& args,
                           std::initializer_list<const char*> names, size_t required) {
  std::vector<const char*> params(names);
  Bound bound(params.size());
  if (args.positional.size() > params.size()) {
    return TypeError(absl::StrCat(fname, "() takes at most ", params.size(), " argument(s) (",
                                  args.positional.size(), " given)"));
  }
  for (size_t i = 0; i < args.positional.size(); ++i) bound[i] = args.positional[i];
  for (const auto& [key, value] : args.keyword) {
    size_t i = 0;
    while (i < params.size() && key != params[i]) ++i;
    if (i == params.size()) {
      return TypeError(absl::StrCat(fname, "() got an unexpected keyword argument '", key, "'"));
    }
    if (bound[i].has_value()) {
      return TypeError(absl::StrCat(fname, "() got multiple values for argument '", key, "'"));
    }
    bound[i] = value;
  }
  for (size_t i = 0; i < required; ++i) {
    if (!bound[i].has_value()) {
      return TypeError(absl::StrCat(fname, "() missing required argument '", params[i], "'"));
    }
  }
  return bound;
}

absl::StatusOr<int64_t> ToIndex(const Value& v, absl::string_view what) {
  if (v.is_undefined()) return UndefinedError(v);
  if (!v.is_integral()) {
    return TypeError(absl::StrCat("'", PyTypeName(v),
                                  "' object cannot be interpreted as an integer",
                                  what.empty() ? "" : absl::StrCat(" (", what, ")")));
  }
  return v.as_int();
}

absl::StatusOr<std::string> ArgStr(const Value& v, absl::string_view what) {
  if (v.is_string()) return v.str();
  if (v.is_undefined()) return UndefinedError(v);
  return TypeError(absl::StrCat(what, " must be str, not ", PyTypeName(v)));
}

// Optional `chars`-style argument: None means "not given".
absl::StatusOr<std::optional<std::string>> ArgOptStr(const std::optional<Value>& v,
                                                     absl::string_view what) {
  if (!v.has_value() || v->is_none()) return std::optional<std::string>();
  ASSIGN_OR_RETURN(std::string s, ArgStr(*v, what));
  return std::optional<std::string>(std::move(s));
}

// --- Attribute getters (jinja2.filters.make_attrgetter) -----------------------------------------

std::vector<Value> AttributeParts(const Value& attribute) {
  std::vector<Value> parts;
  if (attribute.is_none()) return parts;
  if (!attribute.is_string()) {
    parts.push_back(attribute);
    return parts;
  }
  for (absl::string_view part : absl::StrSplit(attribute.str(), '.')) {
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                               [](char c) { return c >= '0' && c <= '9'; });
    int64_t n = 0;
    if (digits && std::from_chars(part.data(), part.data() + part.size(), n).ec == std::errc()) {
      parts.push_back(Value::Int(n));
    } else {
      parts.push_back(Str(std::string(part)));
    }
  }
  return parts;
}

absl::StatusOr<Value> AttrGetter::Get(RenderContext& ctx, Value item) const {
  for (const Value& part : parts) {
    ASSIGN_OR_RETURN(item, GetItem(ctx, item, part));
    if (default_value.has_value() && !default_value->is_none() && item.is_undefined()) {
      item = *default_value;
    }
  }
  if (ignore_case && item.is_string()) item = Str(PyLower(item.str()));
  return item;
}

absl::StatusOr<Value> MultiAttrGetter::Get(RenderContext& ctx, const Value& item) const {
  if (getters.empty()) {
    if (ignore_case && item.is_string()) return Str(PyLower(item.str()));
    return item;
  }
  if (getters.size() == 1) return getters[0].Get(ctx, item);
  std::vector<Value> keys;
  for (const auto& g : getters) {
    ASSIGN_OR_RETURN(Value k, g.Get(ctx, item));
    keys.push_back(std::move(k));
  }
  return Value::List(std::move(keys));
}

MultiAttrGetter MakeMultiAttrGetter(const Value& attribute, bool ignore_case) {
  MultiAttrGetter m;
  m.ignore_case = ignore_case;
  if (attribute.is_none()) return m;
  if (attribute.is_string()) {
    for (absl::string_view part : absl::StrSplit(attribute.str(), ',')) {
      AttrGetter g;
      g.parts = AttributeParts(Str(std::string(part)));
      g.ignore_case = ignore_case;
      m.getters.push_back(std::move(g));
    }
  } else {
    AttrGetter g;
    g.parts = {attribute};
    g.ignore_case = ignore_case;
    m.getters.push_back(std::move(g));
  }
  return m;
}

absl::Status SortByKey(RenderContext& ctx, std::vector<Value>* items, std::vector<Value> keys,
                       bool reverse) {
  std::vector<size_t> order(items->size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  absl::Status error;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    if (!error.ok()) return false;
    auto c = reverse ? Compare(keys[y], keys[x], "<", ctx) : Compare(keys[x], keys[y], "<", ctx);
    if (!c.ok()) {
      error = c.status();
      return false;
    }
    return *c < 0;
  });
  RETURN_IF_ERROR(error);
  std::vector<Value> sorted;
  sorted.reserve(items->size());
  for (size_t i : order) sorted.push_back((*items)[i]);
  *items = std::move(sorted);
  return absl::OkStatus();
}

bool IsHashable(const Value& v) {
  if (v.is_dict()) return false;
  if (v.is_seq(SeqKind::kList) || v.is_seq(SeqKind::kKeysView) || v.is_seq(SeqKind::kValuesView) ||
      v.is_seq(SeqKind::kItemsView)) {
    return false;
  }
  if (v.is_seq(SeqKind::kTuple)) {
    for (const Value& item : v.seq().items) {
      if (!IsHashable(item)) return false;
    }
  }
  return true;
}

absl::Status Unhashable(const Value& v) {
  return TypeError(absl::StrCat("unhashable type: '", PyTypeName(v), "'"));
}

}  // namespace shardserve::jinja
