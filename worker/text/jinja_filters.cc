// Jinja2's builtin filters and tests (jinja2/filters.py, jinja2/tests.py) as transformers'
// sandbox exposes them, plus transformers' json.dumps-based tojson.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/text/jinja_args.h"
#include "worker/text/jinja_builtins.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {
namespace {

// --- Filters -------------------------------------------------------------------------------------

#define FILTER(NAME) \
  absl::StatusOr<Value> NAME(RenderContext& ctx, const Value& input, const CallArgs& args)

absl::StatusOr<std::string> SoftStr(RenderContext& ctx, const Value& v) { return ToStr(v, ctx); }

FILTER(FilterAbs) {
  ASSIGN_OR_RETURN(Bound b, Bind("abs", args, {}));
  if (input.is_integral()) {
    if (input.as_int() == INT64_MIN) return absl::InvalidArgumentError("integer overflow");
    return Value::Int(std::llabs(input.as_int()));
  }
  if (input.is_float()) return Value::Float(std::fabs(input.as_double()));
  return TypeError(absl::StrCat("bad operand type for abs(): '", PyTypeName(input), "'"));
}

FILTER(FilterAttr) {
  ASSIGN_OR_RETURN(Bound b, Bind("attr", args, {"name"}, 1));
  ASSIGN_OR_RETURN(std::string name, ArgStr(*b[0], "attribute name"));
  if (input.is_undefined()) return UndefinedError(input);
  ASSIGN_OR_RETURN(std::optional<Value> v, GetPythonAttribute(input, name));
  if (v.has_value()) return *v;
  return UndefinedAttribute(input, name);
}

FILTER(FilterBatch) {
  ASSIGN_OR_RETURN(Bound b, Bind("batch", args, {"linecount", "fill_with"}, 1));
  ASSIGN_OR_RETURN(int64_t linecount, ToIndex(*b[0], "linecount"));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  std::vector<Value> batches;
  std::vector<Value> tmp;
  for (Value& item : items) {
    if (static_cast<int64_t>(tmp.size()) == linecount) {
      batches.push_back(Value::List(std::move(tmp)));
      tmp.clear();
    }
    tmp.push_back(std::move(item));
  }
  if (!tmp.empty()) {
    if (b[1].has_value() && !b[1]->is_none()) {
      while (static_cast<int64_t>(tmp.size()) < linecount) tmp.push_back(*b[1]);
    }
    batches.push_back(Value::List(std::move(tmp)));
  }
  return Value::MakeSequence(SeqKind::kIterator, std::move(batches));
}

FILTER(FilterCapitalize) {
  ASSIGN_OR_RETURN(Bound b, Bind("capitalize", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Str(PyCapitalize(s));
}

FILTER(FilterCenter) {
  // soft_str(value).center(width)
  ASSIGN_OR_RETURN(Bound b, Bind("center", args, {"width"}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  ASSIGN_OR_RETURN(Value center, GetAttr(ctx, Str(std::move(s)), "center"));
  CallArgs inner;
  inner.positional.push_back(b[0].has_value() ? *b[0] : Value::Int(80));
  return CallValue(ctx, center, std::move(inner));
}

FILTER(FilterLength) {
  ASSIGN_OR_RETURN(Bound b, Bind("length", args, {}));
  ASSIGN_OR_RETURN(int64_t n, Length(input));
  return Value::Int(n);
}

FILTER(FilterDefault) {
  ASSIGN_OR_RETURN(Bound b, Bind("default", args, {"default_value", "boolean"}));
  Value def = b[0].has_value() ? *b[0] : Str("");
  bool boolean = b[1].has_value() && Truthy(*b[1]);
  if (input.is_undefined() || (boolean && !Truthy(input))) return def;
  return input;
}

FILTER(FilterDictsort) {
  ASSIGN_OR_RETURN(Bound b, Bind("dictsort", args, {"case_sensitive", "by", "reverse"}));
  bool case_sensitive = b[0].has_value() && Truthy(*b[0]);
  int pos = 0;
  if (b[1].has_value()) {
    if (b[1]->is_string() && b[1]->str() == "value") {
      pos = 1;
    } else if (!(b[1]->is_string() && b[1]->str() == "key")) {
      return absl::InvalidArgumentError("You can only sort by either \"key\" or \"value\"");
    }
  }
  bool reverse = b[2].has_value() && Truthy(*b[2]);
  if (input.is_undefined()) return UndefinedError(input);
  if (!input.is_dict()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", PyTypeName(input), "' object has no attribute 'items'"));
  }
  std::vector<Value> items;
  std::vector<Value> keys;
  for (const auto& [k, v] : input.dict().items()) {
    items.push_back(Value::Tuple({Str(k), v}));
    Value key = pos == 0 ? Str(k) : v;
    if (!case_sensitive && key.is_string()) key = Str(PyLower(key.str()));
    keys.push_back(std::move(key));
  }
  RETURN_IF_ERROR(SortByKey(ctx, &items, std::move(keys), reverse));
  return Value::List(std::move(items));
}

std::string HtmlEscape(absl::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

FILTER(FilterEscape) {
  ASSIGN_OR_RETURN(Bound b, Bind("escape", args, {}));
  if (input.is_markup()) return input;
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Value::String(HtmlEscape(s), /*markup=*/true);
}

FILTER(FilterForceEscape) {
  ASSIGN_OR_RETURN(Bound b, Bind("forceescape", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Value::String(HtmlEscape(s), /*markup=*/true);
}

FILTER(FilterFirst) {
  ASSIGN_OR_RETURN(Bound b, Bind("first", args, {}));
  Value empty = Value::Undefined("No first item, sequence was empty.");
  switch (input.kind()) {
    case ValueKind::kUndefined:
      return empty;
    case ValueKind::kString: {
      if (input.str().empty()) return empty;
      size_t pos = 0;
      DecodeUtf8(input.str(), &pos);
      return Str(input.str().substr(0, pos));
    }
    case ValueKind::kSequence: {
      const Sequence& seq = input.seq();
      if (seq.kind == SeqKind::kIterator) {
        RETURN_IF_ERROR(TakeDeferredError(seq));
        if (seq.consumed >= seq.items.size()) return empty;
        return seq.items[seq.consumed++];
      }
      if (seq.items.empty()) return empty;
      return seq.items.front();
    }
    case ValueKind::kDict:
      if (input.dict().empty()) return empty;
      return Str(input.dict().items().front().first);
    default:
      break;
  }
  return TypeError(absl::StrCat("'", PyTypeName(input), "' object is not iterable"));
}

FILTER(FilterLast) {
  ASSIGN_OR_RETURN(Bound b, Bind("last", args, {}));
  Value empty = Value::Undefined("No last item, sequence was empty.");
  switch (input.kind()) {
    case ValueKind::kUndefined:
      return empty;
    case ValueKind::kString: {
      if (input.str().empty()) return empty;
      auto cps = SplitCodePoints(input.str());
      return Str(cps.back());
    }
    case ValueKind::kSequence: {
      const Sequence& seq = input.seq();
      if (seq.kind == SeqKind::kIterator) break;
      if (seq.items.empty()) return empty;
      return seq.items.back();
    }
    case ValueKind::kDict:
      if (input.dict().empty()) return empty;
      return Str(input.dict().items().back().first);
    default:
      break;
  }
  return TypeError(absl::StrCat("'", PyTypeName(input), "' object is not reversible"));
}

// Python float(str): surrounding whitespace, sign, digits with single underscores, inf/nan.
std::optional<double> ParsePyFloat(absl::string_view text) {
  std::string s = PyStrip(text, std::nullopt, true, true);
  std::string lower = absl::AsciiStrToLower(s);
  absl::string_view body = lower;
  bool negative = false;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (body == "inf" || body == "infinity") return negative ? -HUGE_VAL : HUGE_VAL;
  if (body == "nan") return std::nan("");
  std::string clean;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (c == '_') {
      if (i == 0 || i + 1 >= body.size() || !absl::ascii_isdigit(body[i - 1]) ||
          !absl::ascii_isdigit(body[i + 1])) {
        return std::nullopt;
      }
      continue;
    }
    if (!absl::ascii_isdigit(c) && c != '.' && c != 'e' && c != '+' && c != '-') {
      return std::nullopt;
    }
    clean.push_back(c);
  }
  if (clean.empty()) return std::nullopt;
  double d = 0;
  auto res = std::from_chars(clean.data(), clean.data() + clean.size(), d);
  if (res.ptr != clean.data() + clean.size()) return std::nullopt;
  if (res.ec == std::errc::result_out_of_range) {
    d = clean.find("e-") != std::string::npos ? 0.0 : HUGE_VAL;
  } else if (res.ec != std::errc()) {
    return std::nullopt;
  }
  return negative ? -d : d;
}

// Python int(str, base).
std::optional<int64_t> ParsePyInt(absl::string_view text, int base, bool* overflow) {
  std::string s = PyStrip(text, std::nullopt, true, true);
  absl::string_view body = s;
  bool negative = false;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  auto has_prefix = [&](char p) {
    return body.size() >= 2 && body[0] == '0' && absl::ascii_tolower(body[1]) == p;
  };
  if (base == 0) {
    base = has_prefix('x') ? 16 : has_prefix('o') ? 8 : has_prefix('b') ? 2 : 10;
    if (base == 10 && body.size() > 1 && body[0] == '0') {
      for (char c : body) {
        if (c != '0' && c != '_') return std::nullopt;
      }
    }
  }
  if ((base == 16 && has_prefix('x')) || (base == 8 && has_prefix('o')) ||
      (base == 2 && has_prefix('b'))) {
    body.remove_prefix(2);
    if (!body.empty() && body[0] == '_') body.remove_prefix(1);
  }
  std::string clean;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] == '_') {
      if (i == 0 || i + 1 >= body.size() || body[i + 1] == '_') return std::nullopt;
      continue;
    }
    clean.push_back(body[i]);
  }
  if (clean.empty()) return std::nullopt;
  uint64_t v = 0;
  auto res = std::from_chars(clean.data(), clean.data() + clean.size(), v, base);
  if (res.ptr != clean.data() + clean.size()) return std::nullopt;
  if (res.ec == std::errc::result_out_of_range ||
      v > static_cast<uint64_t>(INT64_MAX) + (negative ? 1 : 0)) {
    *overflow = true;
    return std::nullopt;
  }
  if (res.ec != std::errc()) return std::nullopt;
  return negative ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
}

absl::StatusOr<std::optional<int64_t>> FloatToInt(double d) {
  if (std::isnan(d)) return std::optional<int64_t>();
  if (std::isinf(d)) {
    return absl::InvalidArgumentError("cannot convert float infinity to integer");
  }
  double t = std::trunc(d);
  if (t >= 9223372036854775808.0 || t < -9223372036854775808.0) {
    return absl::InvalidArgumentError("integer overflow: value beyond 64 bits");
  }
  return std::optional<int64_t>(static_cast<int64_t>(t));
}

FILTER(FilterInt) {
  ASSIGN_OR_RETURN(Bound b, Bind("int", args, {"default", "base"}));
  Value def = b[0].has_value() ? *b[0] : Value::Int(0);
  int64_t base = 10;
  if (b[1].has_value()) {
    ASSIGN_OR_RETURN(base, ToIndex(*b[1], "base"));
  }
  if (input.is_undefined()) return UndefinedError(input);
  if (input.is_integral()) return Value::Int(input.as_int());
  if (input.is_float()) {
    ASSIGN_OR_RETURN(auto i, FloatToInt(input.as_double()));
    if (i.has_value()) return Value::Int(*i);
    return def;
  }
  if (input.is_string()) {
    if (base != 0 && (base < 2 || base > 36)) {
      return absl::InvalidArgumentError("int() base must be >= 2 and <= 36, or 0");
    }
    bool overflow = false;
    auto i = ParsePyInt(input.str(), static_cast<int>(base), &overflow);
    if (overflow) return absl::InvalidArgumentError("integer overflow: value beyond 64 bits");
    if (i.has_value()) return Value::Int(*i);
    auto d = ParsePyFloat(input.str());
    if (d.has_value()) {
      ASSIGN_OR_RETURN(auto j, FloatToInt(*d));
      if (j.has_value()) return Value::Int(*j);
    }
    return def;
  }
  return def;
}

FILTER(FilterFloat) {
  ASSIGN_OR_RETURN(Bound b, Bind("float", args, {"default"}));
  Value def = b[0].has_value() ? *b[0] : Value::Float(0.0);
  if (input.is_undefined()) return UndefinedError(input);
  if (input.is_number()) return Value::Float(input.as_double());
  if (input.is_string()) {
    auto d = ParsePyFloat(input.str());
    if (d.has_value()) return Value::Float(*d);
  }
  return def;
}

FILTER(FilterFormat) {
  if (!args.positional.empty() && !args.keyword.empty()) {
    return absl::InvalidArgumentError(
        "can't handle positional and keyword arguments at the same time");
  }
  ASSIGN_OR_RETURN(std::string fmt, SoftStr(ctx, input));
  Value fargs;
  if (!args.keyword.empty()) {
    Dict d;
    for (const auto& [k, v] : args.keyword) d.Set(k, v);
    fargs = Value::MakeDict(std::move(d));
  } else {
    fargs = Value::Tuple(args.positional);
  }
  ASSIGN_OR_RETURN(std::string out, PercentFormat(fmt, fargs, ctx));
  return Str(std::move(out));
}

FILTER(FilterIndent) {
  ASSIGN_OR_RETURN(Bound b, Bind("indent", args, {"width", "first", "blank"}));
  std::string indention = "    ";
  if (b[0].has_value()) {
    if (b[0]->is_string()) {
      indention = b[0]->str();
    } else {
      ASSIGN_OR_RETURN(int64_t width, ToIndex(*b[0], "width"));
      if (width > 10000) return absl::ResourceExhaustedError("indent width too large");
      indention = std::string(static_cast<size_t>(std::max<int64_t>(width, 0)), ' ');
    }
  }
  bool first = b[1].has_value() && Truthy(*b[1]);
  bool blank = b[2].has_value() && Truthy(*b[2]);
  if (input.is_undefined()) return UndefinedError(input);
  if (!input.is_string()) {
    return TypeError(
        absl::StrCat("unsupported operand type(s) for +=: '", PyTypeName(input), "' and 'str'"));
  }
  std::string s = input.str() + "\n";
  std::vector<std::string> lines = PySplitLines(s, false);
  std::string rv;
  if (blank) {
    rv = absl::StrJoin(lines, "\n" + indention);
  } else {
    rv = lines.empty() ? "" : lines[0];
    if (lines.size() > 1) {
      rv += "\n";
      for (size_t i = 1; i < lines.size(); ++i) {
        if (i > 1) rv += "\n";
        if (!lines[i].empty()) rv += indention;
        rv += lines[i];
      }
    }
  }
  if (first) rv = indention + rv;
  RETURN_IF_ERROR(ctx.CheckSize(rv.size()));
  return Str(std::move(rv));
}

FILTER(FilterItems) {
  ASSIGN_OR_RETURN(Bound b, Bind("items", args, {}));
  if (input.is_undefined()) return Value::MakeSequence(SeqKind::kIterator, {});
  if (!input.is_dict()) return TypeError("Can only get item pairs from a mapping.");
  std::vector<Value> items;
  for (const auto& [k, v] : input.dict().items()) items.push_back(Value::Tuple({Str(k), v}));
  return Value::MakeSequence(SeqKind::kIterator, std::move(items));
}

FILTER(FilterJoin) {
  ASSIGN_OR_RETURN(Bound b, Bind("join", args, {"d", "attribute"}));
  std::string sep;
  if (b[0].has_value()) {
    ASSIGN_OR_RETURN(sep, SoftStr(ctx, *b[0]));
  }
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  AttrGetter getter;
  if (b[1].has_value()) getter.parts = AttributeParts(*b[1]);
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += sep;
    ASSIGN_OR_RETURN(Value item, getter.Get(ctx, items[i]));
    RETURN_IF_ERROR(AppendStr(item, ctx, &out));
    RETURN_IF_ERROR(ctx.CheckSize(out.size()));
  }
  return Str(std::move(out));
}

FILTER(FilterList) {
  ASSIGN_OR_RETURN(Bound b, Bind("list", args, {}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  return Value::List(std::move(items));
}

FILTER(FilterLower) {
  ASSIGN_OR_RETURN(Bound b, Bind("lower", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Str(PyLower(s));
}

FILTER(FilterUpper) {
  ASSIGN_OR_RETURN(Bound b, Bind("upper", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Str(PyUpper(s));
}

absl::StatusOr<Value> CallTestByName(RenderContext& ctx, const Value& name, const Value& item,
                                     const CallArgs& args) {
  if (!name.is_string()) return TypeError("test name must be a string");
  TestFn test = FindTest(name.str());
  if (test == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        IsJinjaTestName(name.str()) ? "unsupported" : "unknown", " test '", name.str(), "'"));
  }
  ASSIGN_OR_RETURN(bool r, test(ctx, item, args));
  return Value::Bool(r);
}

FILTER(FilterMap) {
  if (!Truthy(input)) return Value::MakeSequence(SeqKind::kIterator, {});
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  std::vector<Value> out;
  const Value* attribute = nullptr;
  for (const auto& [k, v] : args.keyword) {
    if (k == "attribute") attribute = &v;
  }
  if (args.positional.empty() && attribute != nullptr) {
    AttrGetter getter;
    getter.parts = AttributeParts(*attribute);
    for (const auto& [k, v] : args.keyword) {
      if (k == "default") {
        getter.default_value = v;
      } else if (k != "attribute") {
        return absl::InvalidArgumentError(absl::StrCat("Unexpected keyword argument ", PyRepr(k)));
      }
    }
    for (const Value& item : items) {
      ASSIGN_OR_RETURN(Value v, getter.Get(ctx, item));
      out.push_back(std::move(v));
    }
    return Value::MakeSequence(SeqKind::kIterator, std::move(out));
  }
  if (args.positional.empty()) return absl::InvalidArgumentError("map requires a filter argument");
  const Value& name = args.positional[0];
  if (!name.is_string()) return TypeError("map filter name must be a string");
  FilterFn filter = FindFilter(name.str());
  if (filter == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        IsJinjaFilterName(name.str()) ? "unsupported" : "unknown", " filter '", name.str(), "'"));
  }
  CallArgs rest;
  rest.positional.assign(args.positional.begin() + 1, args.positional.end());
  rest.keyword = args.keyword;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value v, filter(ctx, item, rest));
    out.push_back(std::move(v));
  }
  return Value::MakeSequence(SeqKind::kIterator, std::move(out));
}

absl::StatusOr<Value> MinMax(RenderContext& ctx, const Value& input, const CallArgs& args,
                             bool max) {
  ASSIGN_OR_RETURN(Bound b, Bind(max ? "max" : "min", args, {"case_sensitive", "attribute"}));
  bool case_sensitive = b[0].has_value() && Truthy(*b[0]);
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
  AttrGetter getter;
  if (b[1].has_value()) getter.parts = AttributeParts(*b[1]);
  getter.ignore_case = !case_sensitive;
  size_t best = 0;
  ASSIGN_OR_RETURN(Value best_key, getter.Get(ctx, items[0]));
  for (size_t i = 1; i < items.size(); ++i) {
    ASSIGN_OR_RETURN(Value key, getter.Get(ctx, items[i]));
    // Python's max() asks item > best, min() item < best; ties keep the first.
    ASSIGN_OR_RETURN(int c, Compare(key, best_key, max ? ">" : "<", ctx));
    if (max ? c > 0 : c < 0) {
      best = i;
      best_key = std::move(key);
    }
  }
  return items[best];
}
FILTER(FilterMax) { return MinMax(ctx, input, args, true); }
FILTER(FilterMin) { return MinMax(ctx, input, args, false); }

absl::StatusOr<Value> SelectOrReject(RenderContext& ctx, const Value& input, const CallArgs& args,
                                     bool select, bool lookup_attr) {
  if (!Truthy(input)) return Value::MakeSequence(SeqKind::kIterator, {});
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  size_t off = 0;
  AttrGetter getter;
  if (lookup_attr) {
    if (args.positional.empty()) {
      return absl::InvalidArgumentError("Missing parameter for attribute name");
    }
    getter.parts = AttributeParts(args.positional[0]);
    off = 1;
  }
  std::optional<Value> test_name;
  CallArgs test_args;
  if (args.positional.size() > off) {
    test_name = args.positional[off];
    test_args.positional.assign(args.positional.begin() + static_cast<ptrdiff_t>(off) + 1,
                                args.positional.end());
    test_args.keyword = args.keyword;
  }
  std::vector<Value> out;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value v, getter.Get(ctx, item));
    bool r;
    if (test_name.has_value()) {
      ASSIGN_OR_RETURN(Value rv, CallTestByName(ctx, *test_name, v, test_args));
      r = Truthy(rv);
    } else {
      r = Truthy(v);
    }
    if (r == select) out.push_back(item);
  }
  return Value::MakeSequence(SeqKind::kIterator, std::move(out));
}
FILTER(FilterSelect) { return SelectOrReject(ctx, input, args, true, false); }
FILTER(FilterReject) { return SelectOrReject(ctx, input, args, false, false); }
FILTER(FilterSelectAttr) { return SelectOrReject(ctx, input, args, true, true); }
FILTER(FilterRejectAttr) { return SelectOrReject(ctx, input, args, false, true); }

FILTER(FilterReplace) {
  ASSIGN_OR_RETURN(Bound b, Bind("replace", args, {"old", "new", "count"}, 2));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  ASSIGN_OR_RETURN(std::string old_s, SoftStr(ctx, *b[0]));
  ASSIGN_OR_RETURN(std::string new_s, SoftStr(ctx, *b[1]));
  int64_t count = -1;
  if (b[2].has_value() && !b[2]->is_none()) {
    ASSIGN_OR_RETURN(count, ToIndex(*b[2], "count"));
  }
  std::string out = PyReplace(s, old_s, new_s, count);
  RETURN_IF_ERROR(ctx.CheckSize(out.size()));
  return Str(std::move(out));
}

FILTER(FilterReverse) {
  ASSIGN_OR_RETURN(Bound b, Bind("reverse", args, {}));
  if (input.is_string()) {
    std::vector<char32_t> cps = DecodeUtf8All(input.str());
    std::reverse(cps.begin(), cps.end());
    return Str(EncodeUtf8(cps));
  }
  if (input.is_seq(SeqKind::kIterator)) {
    // reversed() fails on a generator; Jinja2 then builds a reversed list.
    ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (input.is_undefined() || input.is_sequence() || input.is_dict()) {
    ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
    std::reverse(items.begin(), items.end());
    Value v = Value::MakeSequence(SeqKind::kIterator, std::move(items));
    const char* name = "reversed";
    if (input.is_seq(SeqKind::kList)) name = "list_reverseiterator";
    if (input.is_seq(SeqKind::kRange)) name = "range_iterator";
    if (input.is_dict() || input.is_seq(SeqKind::kKeysView)) name = "dict_reversekeyiterator";
    if (input.is_seq(SeqKind::kValuesView)) name = "dict_reversevalueiterator";
    if (input.is_seq(SeqKind::kItemsView)) name = "dict_reverseitemiterator";
    v.seq().iterator_type = name;
    return v;
  }
  return absl::InvalidArgumentError("argument must be iterable");
}

// Python's round(x, ndigits) for floats: correctly rounded, ties to even on the exact value.
double PyRoundFloat(double x, int64_t ndigits) {
  if (!std::isfinite(x) || ndigits > 323) return x;
  if (ndigits < -308) return std::copysign(0.0, x);
  if (ndigits >= 0) {
    std::vector<char> buf(400 + static_cast<size_t>(ndigits));
    std::snprintf(buf.data(), buf.size(), "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf.data(), nullptr);
  }
  double p = std::pow(10.0, static_cast<double>(-ndigits));
  double y = x / p;
  double r = std::nearbyint(y);  // default rounding mode: ties to even
  return r * p;
}

FILTER(FilterRound) {
  ASSIGN_OR_RETURN(Bound b, Bind("round", args, {"precision", "method"}));
  int64_t precision = 0;
  if (b[0].has_value()) {
    ASSIGN_OR_RETURN(precision, ToIndex(*b[0], "precision"));
  }
  std::string method = "common";
  if (b[1].has_value()) {
    ASSIGN_OR_RETURN(method, ArgStr(*b[1], "method"));
  }
  if (method != "common" && method != "ceil" && method != "floor") {
    return absl::InvalidArgumentError("method must be common, ceil or floor");
  }
  if (!input.is_number()) {
    if (method == "common") {
      return TypeError(
          absl::StrCat("type ", PyTypeName(input), " doesn't define __round__ method"));
    }
    if (input.is_undefined()) return UndefinedError(input);
    return TypeError(
        absl::StrCat("unsupported operand type(s) for *: '", PyTypeName(input), "' and 'int'"));
  }
  if (method == "common") {
    if (input.is_integral()) {
      if (precision < 0) {
        return absl::InvalidArgumentError(
            "round() of an int with negative precision is not supported");
      }
      return Value::Int(input.as_int());
    }
    return Value::Float(PyRoundFloat(input.as_double(), precision));
  }
  double p = std::pow(10.0, static_cast<double>(precision));
  double v = input.as_double() * p;
  double r = method == "ceil" ? std::ceil(v) : std::floor(v);
  return Value::Float(r / p);
}

FILTER(FilterSafe) {
  ASSIGN_OR_RETURN(Bound b, Bind("safe", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Value::String(std::move(s), /*markup=*/true);
}

FILTER(FilterSort) {
  ASSIGN_OR_RETURN(Bound b, Bind("sort", args, {"reverse", "case_sensitive", "attribute"}));
  bool reverse = b[0].has_value() && Truthy(*b[0]);
  bool case_sensitive = b[1].has_value() && Truthy(*b[1]);
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  MultiAttrGetter getter =
      MakeMultiAttrGetter(b[2].has_value() ? *b[2] : Value::None(), !case_sensitive);
  std::vector<Value> keys;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value k, getter.Get(ctx, item));
    keys.push_back(std::move(k));
  }
  RETURN_IF_ERROR(SortByKey(ctx, &items, std::move(keys), reverse));
  return Value::List(std::move(items));
}

FILTER(FilterString) {
  ASSIGN_OR_RETURN(Bound b, Bind("string", args, {}));
  if (input.is_string()) return input;
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Str(std::move(s));
}

FILTER(FilterSum) {
  ASSIGN_OR_RETURN(Bound b, Bind("sum", args, {"attribute", "start"}));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  AttrGetter getter;
  if (b[0].has_value()) getter.parts = AttributeParts(*b[0]);
  Value total = b[1].has_value() ? *b[1] : Value::Int(0);
  if (total.is_string()) return TypeError("sum() can't sum strings [use ''.join(seq) instead]");
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value v, getter.Get(ctx, item));
    ASSIGN_OR_RETURN(total, BinaryArith(BinaryOp::kAdd, total, v, ctx));
  }
  return total;
}

FILTER(FilterTitle) {
  ASSIGN_OR_RETURN(Bound b, Bind("title", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  return Str(JinjaTitle(s));
}

FILTER(FilterToJson) {
  ASSIGN_OR_RETURN(Bound b,
                   Bind("tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonFormat f;
  f.ensure_ascii = b[0].has_value() && Truthy(*b[0]);
  if (b[1].has_value() && !b[1]->is_none()) {
    if (b[1]->is_string()) {
      f.indent = b[1]->str();
    } else if (b[1]->is_integral()) {
      f.indent =
          std::string(static_cast<size_t>(std::clamp<int64_t>(b[1]->as_int(), 0, 1000)), ' ');
    } else {
      return TypeError(absl::StrCat("indent must be an int or str, not ", PyTypeName(*b[1])));
    }
    f.item_separator = ",";
  }
  if (b[2].has_value() && !b[2]->is_none()) {
    const Value& seps = *b[2];
    if (!seps.is_list_or_tuple() || seps.seq().items.size() != 2 ||
        !seps.seq().items[0].is_string() || !seps.seq().items[1].is_string()) {
      return TypeError("separators must be a (item_separator, key_separator) pair of strings");
    }
    f.item_separator = seps.seq().items[0].str();
    f.key_separator = seps.seq().items[1].str();
  }
  f.sort_keys = b[3].has_value() && Truthy(*b[3]);
  std::string out;
  RETURN_IF_ERROR(AppendJson(input, f, ctx, &out));
  RETURN_IF_ERROR(ctx.CheckSize(out.size()));
  return Str(std::move(out));
}

FILTER(FilterTrim) {
  ASSIGN_OR_RETURN(Bound b, Bind("trim", args, {"chars"}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  ASSIGN_OR_RETURN(auto chars, ArgOptStr(b[0], "strip arg"));
  return Str(PyStrip(s, chars, true, true));
}

FILTER(FilterTruncate) {
  ASSIGN_OR_RETURN(Bound b, Bind("truncate", args, {"length", "killwords", "end", "leeway"}));
  int64_t length = 255;
  if (b[0].has_value()) {
    ASSIGN_OR_RETURN(length, ToIndex(*b[0], "length"));
  }
  bool killwords = b[1].has_value() && Truthy(*b[1]);
  std::string end = "...";
  if (b[2].has_value()) {
    ASSIGN_OR_RETURN(end, ArgStr(*b[2], "end"));
  }
  int64_t leeway = 5;
  if (b[3].has_value() && !b[3]->is_none()) {
    ASSIGN_OR_RETURN(leeway, ToIndex(*b[3], "leeway"));
  }
  const int64_t end_len = CodePointCount(end);
  if (length < end_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected length >= ", end_len, ", got ", length));
  }
  if (leeway < 0)
    return absl::InvalidArgumentError(absl::StrCat("expected leeway >= 0, got ", leeway));
  // Jinja2 does not convert the value to a string: len() must work and only str is cut.
  ASSIGN_OR_RETURN(int64_t len, Length(input));
  if (len <= length + leeway) return input;
  if (!input.is_string()) {
    return absl::InvalidArgumentError(absl::StrCat("truncate of a ", PyTypeName(input),
                                                   " longer than the limit is not supported"));
  }
  std::vector<std::string> cps = SplitCodePoints(input.str());
  std::string head;
  for (int64_t i = 0; i < length - end_len; ++i) head += cps[static_cast<size_t>(i)];
  if (!killwords) {
    size_t space = head.rfind(' ');
    if (space != std::string::npos) head.resize(space);
  }
  return Str(head + end);
}

FILTER(FilterUnique) {
  ASSIGN_OR_RETURN(Bound b, Bind("unique", args, {"case_sensitive", "attribute"}));
  bool case_sensitive = b[0].has_value() && Truthy(*b[0]);
  AttrGetter getter;
  if (b[1].has_value()) getter.parts = AttributeParts(*b[1]);
  getter.ignore_case = !case_sensitive;
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(input, ctx));
  std::vector<Value> seen;
  std::vector<Value> out;
  for (const Value& item : items) {
    ASSIGN_OR_RETURN(Value key, getter.Get(ctx, item));
    if (!IsHashable(key)) return Unhashable(key);
    bool found = false;
    for (const Value& s : seen) {
      ASSIGN_OR_RETURN(bool eq, Equals(s, key, ctx));
      if (eq) {
        found = true;
        break;
      }
    }
    if (!found) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::MakeSequence(SeqKind::kIterator, std::move(out));
}

FILTER(FilterWordcount) {
  ASSIGN_OR_RETURN(Bound b, Bind("wordcount", args, {}));
  ASSIGN_OR_RETURN(std::string s, SoftStr(ctx, input));
  int64_t words = 0;
  bool in_word = false;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    char32_t c = DecodeUtf8(s, &pos);
    bool word_char = c == '_' || PyIsAlnum(absl::string_view(s).substr(start, pos - start));
    if (word_char && !in_word) ++words;
    in_word = word_char;
  }
  return Value::Int(words);
}

// Jinja2's generator filters run lazily: their errors surface when the result is consumed.
template <FilterFn Fn>
absl::StatusOr<Value> Lazy(RenderContext& ctx, const Value& input, const CallArgs& args) {
  absl::StatusOr<Value> result = Fn(ctx, input, args);
  if (result.ok() || result.status().code() != absl::StatusCode::kInvalidArgument) return result;
  return DeferredErrorIterator(result.status());
}

const absl::flat_hash_map<std::string, FilterFn>& Filters() {
  static const auto* filters = new absl::flat_hash_map<std::string, FilterFn>{
      {"abs", FilterAbs},
      {"attr", FilterAttr},
      {"batch", Lazy<FilterBatch>},
      {"capitalize", FilterCapitalize},
      {"center", FilterCenter},
      {"count", FilterLength},
      {"d", FilterDefault},
      {"default", FilterDefault},
      {"dictsort", FilterDictsort},
      {"e", FilterEscape},
      {"escape", FilterEscape},
      {"first", FilterFirst},
      {"float", FilterFloat},
      {"forceescape", FilterForceEscape},
      {"format", FilterFormat},
      {"indent", FilterIndent},
      {"int", FilterInt},
      {"items", Lazy<FilterItems>},
      {"join", FilterJoin},
      {"last", FilterLast},
      {"length", FilterLength},
      {"list", FilterList},
      {"lower", FilterLower},
      {"map", Lazy<FilterMap>},
      {"max", FilterMax},
      {"min", FilterMin},
      {"reject", Lazy<FilterReject>},
      {"rejectattr", Lazy<FilterRejectAttr>},
      {"replace", FilterReplace},
      {"reverse", FilterReverse},
      {"round", FilterRound},
      {"safe", FilterSafe},
      {"select", Lazy<FilterSelect>},
      {"selectattr", Lazy<FilterSelectAttr>},
      {"sort", FilterSort},
      {"string", FilterString},
      {"sum", FilterSum},
      {"title", FilterTitle},
      {"tojson", FilterToJson},
      {"trim", FilterTrim},
      {"truncate", FilterTruncate},
      {"unique", Lazy<FilterUnique>},
      {"upper", FilterUpper},
      {"wordcount", FilterWordcount},
  };
  return *filters;
}

// --- Tests ---------------------------------------------------------------------------------------

#define TEST_FN(NAME) \
  absl::StatusOr<bool> NAME(RenderContext& ctx, const Value& input, const CallArgs& args)

absl::StatusOr<Value> OneArg(absl::string_view name, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind(name, args, {"other"}, 1));
  return *b[0];
}
absl::Status NoArgs(absl::string_view name, const CallArgs& args) {
  return Bind(name, args, {}).status();
}

TEST_FN(TestDefined) {
  RETURN_IF_ERROR(NoArgs("defined", args));
  return !input.is_undefined();
}
TEST_FN(TestUndefined) {
  RETURN_IF_ERROR(NoArgs("undefined", args));
  return input.is_undefined();
}
TEST_FN(TestNone) {
  RETURN_IF_ERROR(NoArgs("none", args));
  return input.is_none();
}
TEST_FN(TestBoolean) {
  RETURN_IF_ERROR(NoArgs("boolean", args));
  return input.is_bool();
}
TEST_FN(TestTrue) {
  RETURN_IF_ERROR(NoArgs("true", args));
  return input.is_bool() && input.as_bool();
}
TEST_FN(TestFalse) {
  RETURN_IF_ERROR(NoArgs("false", args));
  return input.is_bool() && !input.as_bool();
}
TEST_FN(TestInteger) {
  RETURN_IF_ERROR(NoArgs("integer", args));
  return input.is_int();
}
TEST_FN(TestFloat) {
  RETURN_IF_ERROR(NoArgs("float", args));
  return input.is_float();
}
TEST_FN(TestNumber) {
  RETURN_IF_ERROR(NoArgs("number", args));
  return input.is_number();
}
TEST_FN(TestString) {
  RETURN_IF_ERROR(NoArgs("string", args));
  return input.is_string();
}
TEST_FN(TestMapping) {
  RETURN_IF_ERROR(NoArgs("mapping", args));
  return input.is_dict();
}
TEST_FN(TestIterable) {
  RETURN_IF_ERROR(NoArgs("iterable", args));
  return input.is_undefined() || input.is_string() || input.is_sequence() || input.is_dict() ||
         input.is_loop();
}
TEST_FN(TestSequence) {
  RETURN_IF_ERROR(NoArgs("sequence", args));
  return input.is_undefined() || input.is_string() || input.is_dict() || input.is_list_or_tuple() ||
         input.is_seq(SeqKind::kRange);
}
TEST_FN(TestCallable) {
  RETURN_IF_ERROR(NoArgs("callable", args));
  return input.is_callable() || input.is_undefined() || input.is_loop();
}
TEST_FN(TestEscaped) {
  RETURN_IF_ERROR(NoArgs("escaped", args));
  return input.is_markup();
}
TEST_FN(TestSameAs) {
  ASSIGN_OR_RETURN(Value other, OneArg("sameas", args));
  if (input.is_none() || other.is_none()) return input.is_none() && other.is_none();
  if (input.is_bool() || other.is_bool()) {
    return input.is_bool() && other.is_bool() && input.as_bool() == other.as_bool();
  }
  if (input.is_undefined() || other.is_undefined()) return false;
  if (input.is_sequence() || input.is_dict() || input.is_namespace() || input.is_callable() ||
      input.is_loop()) {
    return input.kind() == other.kind() && input.identity() == other.identity();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "'sameas' on ", PyTypeName(input), " values (Python object identity) is not supported"));
}
TEST_FN(TestEq) {
  ASSIGN_OR_RETURN(Value other, OneArg("eq", args));
  return Equals(input, other, ctx);
}
TEST_FN(TestNe) {
  ASSIGN_OR_RETURN(Value other, OneArg("ne", args));
  ASSIGN_OR_RETURN(bool eq, Equals(input, other, ctx));
  return !eq;
}
TEST_FN(TestLt) {
  ASSIGN_OR_RETURN(Value other, OneArg("lt", args));
  ASSIGN_OR_RETURN(int c, Compare(input, other, "<", ctx));
  return c < 0;
}
TEST_FN(TestLe) {
  ASSIGN_OR_RETURN(Value other, OneArg("le", args));
  ASSIGN_OR_RETURN(int c, Compare(input, other, "<=", ctx));
  return c <= 0;
}
TEST_FN(TestGt) {
  ASSIGN_OR_RETURN(Value other, OneArg("gt", args));
  ASSIGN_OR_RETURN(int c, Compare(input, other, ">", ctx));
  return c > 0;
}
TEST_FN(TestGe) {
  ASSIGN_OR_RETURN(Value other, OneArg("ge", args));
  ASSIGN_OR_RETURN(int c, Compare(input, other, ">=", ctx));
  return c >= 0;
}
TEST_FN(TestIn) {
  ASSIGN_OR_RETURN(Value seq, OneArg("in", args));
  return Contains(ctx, seq, input);
}
absl::StatusOr<bool> ModuloTest(RenderContext& ctx, const Value& input, const Value& divisor,
                                int64_t expected) {
  ASSIGN_OR_RETURN(Value m, BinaryArith(BinaryOp::kMod, input, divisor, ctx));
  return Equals(m, Value::Int(expected), ctx);
}
TEST_FN(TestOdd) {
  RETURN_IF_ERROR(NoArgs("odd", args));
  return ModuloTest(ctx, input, Value::Int(2), 1);
}
TEST_FN(TestEven) {
  RETURN_IF_ERROR(NoArgs("even", args));
  return ModuloTest(ctx, input, Value::Int(2), 0);
}
TEST_FN(TestDivisibleBy) {
  ASSIGN_OR_RETURN(Value num, OneArg("divisibleby", args));
  return ModuloTest(ctx, input, num, 0);
}
TEST_FN(TestLower) {
  RETURN_IF_ERROR(NoArgs("lower", args));
  ASSIGN_OR_RETURN(std::string s, ToStr(input, ctx));
  return PyIsLower(s);
}
TEST_FN(TestUpper) {
  RETURN_IF_ERROR(NoArgs("upper", args));
  ASSIGN_OR_RETURN(std::string s, ToStr(input, ctx));
  return PyIsUpper(s);
}
TEST_FN(TestFilter) {
  RETURN_IF_ERROR(NoArgs("filter", args));
  if (!IsHashable(input)) return Unhashable(input);
  return input.is_string() && FindFilter(input.str()) != nullptr;
}
TEST_FN(TestTest) {
  RETURN_IF_ERROR(NoArgs("test", args));
  if (!IsHashable(input)) return Unhashable(input);
  return input.is_string() && FindTest(input.str()) != nullptr;
}

const absl::flat_hash_map<std::string, TestFn>& Tests() {
  static const auto* tests = new absl::flat_hash_map<std::string, TestFn>{
      {"defined", TestDefined},
      {"undefined", TestUndefined},
      {"none", TestNone},
      {"boolean", TestBoolean},
      {"true", TestTrue},
      {"false", TestFalse},
      {"integer", TestInteger},
      {"float", TestFloat},
      {"number", TestNumber},
      {"string", TestString},
      {"mapping", TestMapping},
      {"iterable", TestIterable},
      {"sequence", TestSequence},
      {"callable", TestCallable},
      {"escaped", TestEscaped},
      {"sameas", TestSameAs},
      {"eq", TestEq},
      {"equalto", TestEq},
      {"==", TestEq},
      {"ne", TestNe},
      {"!=", TestNe},
      {"lt", TestLt},
      {"lessthan", TestLt},
      {"<", TestLt},
      {"le", TestLe},
      {"<=", TestLe},
      {"gt", TestGt},
      {"greaterthan", TestGt},
      {">", TestGt},
      {"ge", TestGe},
      {">=", TestGe},
      {"in", TestIn},
      {"odd", TestOdd},
      {"even", TestEven},
      {"divisibleby", TestDivisibleBy},
      {"lower", TestLower},
      {"upper", TestUpper},
      {"filter", TestFilter},
      {"test", TestTest},
  };
  return *tests;
}

}  // namespace

FilterFn FindFilter(absl::string_view name) {
  auto it = Filters().find(name);
  return it == Filters().end() ? nullptr : it->second;
}

TestFn FindTest(absl::string_view name) {
  auto it = Tests().find(name);
  return it == Tests().end() ? nullptr : it->second;
}

bool IsJinjaFilterName(absl::string_view name) {
  static const auto* names = new absl::flat_hash_set<std::string>{
      "abs",    "attr",       "batch",       "capitalize", "center",   "count",
      "d",      "default",    "dictsort",    "e",          "escape",   "filesizeformat",
      "first",  "float",      "forceescape", "format",     "groupby",  "indent",
      "int",    "items",      "join",        "last",       "length",   "list",
      "lower",  "map",        "max",         "min",        "pprint",   "random",
      "reject", "rejectattr", "replace",     "reverse",    "round",    "safe",
      "select", "selectattr", "slice",       "sort",       "string",   "striptags",
      "sum",    "title",      "tojson",      "trim",       "truncate", "unique",
      "upper",  "urlencode",  "urlize",      "wordcount",  "wordwrap", "xmlattr"};
  return names->contains(name);
}

bool IsJinjaTestName(absl::string_view name) { return FindTest(name) != nullptr; }

}  // namespace shardserve::jinja
