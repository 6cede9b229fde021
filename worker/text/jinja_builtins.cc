#include "worker/text/jinja_builtins.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "worker/text/jinja_args.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {
namespace {

// --- Callable helpers ----------------------------------------------------------------------------

using MethodImpl = absl::StatusOr<Value> (*)(RenderContext& ctx, const Value& self,
                                             const CallArgs& args);

class BoundMethod : public Callable {
 public:
  BoundMethod(Value self, std::string name, MethodImpl impl)
      : self_(std::move(self)), name_(std::move(name)), impl_(impl) {}
  std::string name() const override { return name_; }
  int depth() const override { return self_.depth() + 1; }
  absl::StatusOr<Value> Call(RenderContext& ctx, CallArgs args) const override {
    return impl_(ctx, self_, args);
  }

 private:
  Value self_;
  std::string name_;
  MethodImpl impl_;
};

Value BindMethod(Value self, std::string name, MethodImpl impl) {
  return Value::MakeCallable(std::make_shared<BoundMethod>(std::move(self), std::move(name), impl));
}

using GlobalImpl = absl::StatusOr<Value> (*)(RenderContext& ctx, const CallArgs& args);

class GlobalFunction : public Callable {
 public:
  GlobalFunction(std::string name, GlobalImpl impl, const char* type_name)
      : name_(std::move(name)), impl_(impl), type_name_(type_name) {}
  std::string name() const override { return name_; }
  const char* type_name() const override { return type_name_; }
  std::string repr() const override {
    if (name_ == "dict") return "<class 'dict'>";
    if (name_ == "range") return "<class 'range'>";
    return "";
  }
  absl::StatusOr<Value> Call(RenderContext& ctx, CallArgs args) const override {
    return impl_(ctx, args);
  }

 private:
  std::string name_;
  GlobalImpl impl_;
  const char* type_name_;
};

// --- str methods ---------------------------------------------------------------------------------

absl::StatusOr<Value> StrStrip(RenderContext&, const Value& self, const CallArgs& args,
                               absl::string_view name, bool left, bool right) {
  ASSIGN_OR_RETURN(Bound b, Bind(name, args, {"chars"}));
  ASSIGN_OR_RETURN(auto chars, ArgOptStr(b[0], "strip arg"));
  return Str(PyStrip(self.str(), chars, left, right));
}

absl::StatusOr<Value> SplitImpl(const Value& self, const CallArgs& args, bool reverse) {
  ASSIGN_OR_RETURN(Bound b, Bind(reverse ? "rsplit" : "split", args, {"sep", "maxsplit"}));
  ASSIGN_OR_RETURN(auto sep, ArgOptStr(b[0], "separator"));
  if (sep.has_value() && sep->empty()) return absl::InvalidArgumentError("empty separator");
  int64_t maxsplit = -1;
  if (b[1].has_value()) {
    ASSIGN_OR_RETURN(maxsplit, ToIndex(*b[1], "maxsplit"));
  }
  std::vector<std::string> parts =
      reverse ? PyRSplit(self.str(), sep, maxsplit) : PySplit(self.str(), sep, maxsplit);
  std::vector<Value> out;
  for (auto& p : parts) out.push_back(Str(std::move(p)));
  return Value::List(std::move(out));
}

// startswith/endswith: a str or a tuple of str.
absl::StatusOr<Value> AffixImpl(const Value& self, const CallArgs& args, bool prefix) {
  const char* name = prefix ? "startswith" : "endswith";
  ASSIGN_OR_RETURN(Bound b, Bind(name, args, {"affix", "start", "end"}, 1));
  if (b[1].has_value() || b[2].has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(name, "() with start/end is not supported"));
  }
  std::vector<std::string> affixes;
  if (b[0]->is_seq(SeqKind::kTuple)) {
    for (const Value& v : b[0]->seq().items) {
      ASSIGN_OR_RETURN(std::string s, ArgStr(v, absl::StrCat("tuple for ", name)));
      affixes.push_back(std::move(s));
    }
  } else if (b[0]->is_string()) {
    affixes.push_back(b[0]->str());
  } else {
    return TypeError(
        absl::StrCat(name, " first arg must be str or a tuple of str, not ", PyTypeName(*b[0])));
  }
  for (const std::string& a : affixes) {
    if (prefix ? absl::StartsWith(self.str(), a) : absl::EndsWith(self.str(), a)) {
      return Value::Bool(true);
    }
  }
  return Value::Bool(false);
}

absl::StatusOr<Value> JustifyImpl(const Value& self, const CallArgs& args, char mode) {
  const char* name = mode == 'l' ? "ljust" : mode == 'r' ? "rjust" : "center";
  ASSIGN_OR_RETURN(Bound b, Bind(name, args, {"width", "fillchar"}, 1));
  ASSIGN_OR_RETURN(int64_t width, ToIndex(*b[0], "width"));
  std::string fill = " ";
  if (b[1].has_value()) {
    ASSIGN_OR_RETURN(fill, ArgStr(*b[1], "fill character"));
    if (CodePointCount(fill) != 1) {
      return TypeError("The fill character must be exactly one character long");
    }
  }
  int64_t len = CodePointCount(self.str());
  if (width <= len) return self;
  if (width > (1 << 24)) return absl::ResourceExhaustedError("justify width too large");
  int64_t marg = width - len;
  int64_t left = mode == 'l' ? 0 : mode == 'r' ? marg : marg / 2 + (marg & width & 1);
  std::string out;
  for (int64_t i = 0; i < left; ++i) out += fill;
  out += self.str();
  for (int64_t i = 0; i < marg - left; ++i) out += fill;
  return Str(std::move(out));
}

absl::StatusOr<Value> PartitionImpl(const Value& self, const CallArgs& args, bool reverse) {
  ASSIGN_OR_RETURN(Bound b, Bind(reverse ? "rpartition" : "partition", args, {"sep"}, 1));
  ASSIGN_OR_RETURN(std::string sep, ArgStr(*b[0], "separator"));
  if (sep.empty()) return absl::InvalidArgumentError("empty separator");
  const std::string& s = self.str();
  size_t found = reverse ? s.rfind(sep) : s.find(sep);
  if (found == std::string::npos) {
    if (reverse) return Value::Tuple({Str(""), Str(""), self});
    return Value::Tuple({self, Str(""), Str("")});
  }
  return Value::Tuple({Str(s.substr(0, found)), Str(sep), Str(s.substr(found + sep.size()))});
}

absl::StatusOr<Value> FindImpl(const Value& self, const CallArgs& args, absl::string_view name,
                               bool reverse, bool raise) {
  ASSIGN_OR_RETURN(Bound b, Bind(name, args, {"sub", "start", "end"}, 1));
  if (b[1].has_value() || b[2].has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(name, "() with start/end is not supported"));
  }
  ASSIGN_OR_RETURN(std::string sub, ArgStr(*b[0], "substring"));
  int64_t pos = PyFind(self.str(), sub, reverse);
  if (pos < 0 && raise) return absl::InvalidArgumentError("substring not found");
  return Value::Int(pos);
}

// str.format with "{}", "{0}", "{name}", "!s"/"!r" conversions and "{{"/"}}" escapes.
absl::StatusOr<Value> StrFormat(RenderContext& ctx, const Value& self, const CallArgs& args) {
  const std::string& f = self.str();
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    char c = f[i];
    if (c == '}') {
      if (i + 1 < f.size() && f[i + 1] == '}') {
        out.push_back('}');
        ++i;
        continue;
      }
      return absl::InvalidArgumentError("Single '}' encountered in format string");
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (i + 1 < f.size() && f[i + 1] == '{') {
      out.push_back('{');
      ++i;
      continue;
    }
    size_t close = f.find('}', i);
    if (close == std::string::npos) {
      return absl::InvalidArgumentError("Single '{' encountered in format string");
    }
    std::string field = f.substr(i + 1, close - i - 1);
    i = close;
    char conversion = 's';
    size_t bang = field.find('!');
    if (bang != std::string::npos) {
      if (bang + 2 != field.size() || (field[bang + 1] != 's' && field[bang + 1] != 'r')) {
        return absl::InvalidArgumentError("unsupported conversion in str.format()");
      }
      conversion = field[bang + 1];
      field.resize(bang);
    }
    if (field.find(':') != std::string::npos || field.find('.') != std::string::npos ||
        field.find('[') != std::string::npos) {
      return absl::InvalidArgumentError(
          "str.format() with format specs or attribute/index lookups is not supported");
    }
    const Value* arg = nullptr;
    if (field.empty() || absl::ascii_isdigit(static_cast<unsigned char>(field[0]))) {
      size_t index = auto_index++;
      if (!field.empty()) {
        int64_t n = 0;
        if (std::from_chars(field.data(), field.data() + field.size(), n).ec != std::errc()) {
          return absl::InvalidArgumentError("invalid str.format() field");
        }
        index = static_cast<size_t>(n);
      }
      if (index >= args.positional.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Replacement index ", index, " out of range for positional args tuple"));
      }
      arg = &args.positional[index];
    } else {
      for (const auto& [k, v] : args.keyword) {
        if (k == field) arg = &v;
      }
      if (arg == nullptr)
        return absl::InvalidArgumentError(absl::StrCat("KeyError: ", PyRepr(field)));
    }
    if (conversion == 'r') {
      RETURN_IF_ERROR(AppendRepr(*arg, ctx, &out));
    } else {
      RETURN_IF_ERROR(AppendStr(*arg, ctx, &out));
    }
  }
  return Str(std::move(out));
}

absl::StatusOr<Value> StrJoin(RenderContext& ctx, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("join", args, {"iterable"}, 1));
  ASSIGN_OR_RETURN(std::vector<Value> items, Iterate(*b[0], ctx));
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!items[i].is_string()) {
      return TypeError(absl::StrCat("sequence item ", i, ": expected str instance, ",
                                    PyTypeName(items[i]), " found"));
    }
    if (i > 0) out += self.str();
    out += items[i].str();
    RETURN_IF_ERROR(ctx.CheckSize(out.size()));
  }
  return Str(std::move(out));
}

template <bool (*Pred)(absl::string_view)>
absl::StatusOr<Value> StrPredicate(RenderContext&, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("str method", args, {}));
  return Value::Bool(Pred(self.str()));
}

template <std::string (*Fn)(absl::string_view)>
absl::StatusOr<Value> StrTransform(RenderContext&, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("str method", args, {}));
  return Str(Fn(self.str()));
}

bool PyIsAscii(absl::string_view s) { return IsAscii(s); }
std::string PyCaseFold(absl::string_view s) { return PyReplace(PyLower(s), "\xC3\x9F", "ss", -1); }

struct StrMethodEntry {
  const char* name;
  MethodImpl impl;
};

const absl::flat_hash_map<std::string, MethodImpl>& StrMethods() {
  static const auto* methods = [] {
    auto* m = new absl::flat_hash_map<std::string, MethodImpl>;
    const StrMethodEntry entries[] = {
        {"strip",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrStrip(ctx, self, args, "strip", true, true);
         }},
        {"lstrip",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrStrip(ctx, self, args, "lstrip", true, false);
         }},
        {"rstrip",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrStrip(ctx, self, args, "rstrip", false, true);
         }},
        {"split",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return SplitImpl(self, args, false);
         }},
        {"rsplit",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return SplitImpl(self, args, true);
         }},
        {"splitlines",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("splitlines", args, {"keepends"}));
           std::vector<Value> out;
           for (auto& line : PySplitLines(self.str(), b[0].has_value() && Truthy(*b[0]))) {
             out.push_back(Str(std::move(line)));
           }
           return Value::List(std::move(out));
         }},
        {"startswith",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return AffixImpl(self, args, true);
         }},
        {"endswith",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return AffixImpl(self, args, false);
         }},
        {"upper",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PyUpper>(ctx, self, args);
         }},
        {"lower",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PyLower>(ctx, self, args);
         }},
        {"casefold",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PyCaseFold>(ctx, self, args);
         }},
        {"title",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PyTitle>(ctx, self, args);
         }},
        {"capitalize",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PyCapitalize>(ctx, self, args);
         }},
        {"swapcase",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrTransform<PySwapCase>(ctx, self, args);
         }},
        {"replace",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("replace", args, {"old", "new", "count"}, 2));
           ASSIGN_OR_RETURN(std::string old_s, ArgStr(*b[0], "replace() argument 1"));
           ASSIGN_OR_RETURN(std::string new_s, ArgStr(*b[1], "replace() argument 2"));
           int64_t count = -1;
           if (b[2].has_value()) {
             ASSIGN_OR_RETURN(count, ToIndex(*b[2], "count"));
           }
           std::string out = PyReplace(self.str(), old_s, new_s, count);
           RETURN_IF_ERROR(ctx.CheckSize(out.size()));
           return Str(std::move(out));
         }},
        {"find",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return FindImpl(self, args, "find", false, false);
         }},
        {"rfind",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return FindImpl(self, args, "rfind", true, false);
         }},
        {"index",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return FindImpl(self, args, "index", false, true);
         }},
        {"rindex",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return FindImpl(self, args, "rindex", true, true);
         }},
        {"count",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("count", args, {"sub", "start", "end"}, 1));
           if (b[1].has_value() || b[2].has_value()) {
             return absl::InvalidArgumentError("count() with start/end is not supported");
           }
           ASSIGN_OR_RETURN(std::string sub, ArgStr(*b[0], "substring"));
           return Value::Int(PyCount(self.str(), sub));
         }},
        {"join",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrJoin(ctx, self, args);
         }},
        {"format",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrFormat(ctx, self, args);
         }},
        {"center",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return JustifyImpl(self, args, 'c');
         }},
        {"ljust",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return JustifyImpl(self, args, 'l');
         }},
        {"rjust",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return JustifyImpl(self, args, 'r');
         }},
        {"zfill",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("zfill", args, {"width"}, 1));
           ASSIGN_OR_RETURN(int64_t width, ToIndex(*b[0], "width"));
           const std::string& s = self.str();
           int64_t len = CodePointCount(s);
           if (width <= len) return self;
           if (width > (1 << 24)) return absl::ResourceExhaustedError("zfill width too large");
           size_t sign = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
           std::string out = s;
           out.insert(sign, static_cast<size_t>(width - len), '0');
           return Str(std::move(out));
         }},
        {"partition",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return PartitionImpl(self, args, false);
         }},
        {"rpartition",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return PartitionImpl(self, args, true);
         }},
        {"removeprefix",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("removeprefix", args, {"prefix"}, 1));
           ASSIGN_OR_RETURN(std::string p, ArgStr(*b[0], "removeprefix() argument"));
           if (absl::StartsWith(self.str(), p)) return Str(self.str().substr(p.size()));
           return self;
         }},
        {"removesuffix",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           ASSIGN_OR_RETURN(Bound b, Bind("removesuffix", args, {"suffix"}, 1));
           ASSIGN_OR_RETURN(std::string p, ArgStr(*b[0], "removesuffix() argument"));
           if (!p.empty() && absl::EndsWith(self.str(), p)) {
             return Str(self.str().substr(0, self.str().size() - p.size()));
           }
           return self;
         }},
        {"isalnum",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsAlnum>(ctx, self, args);
         }},
        {"isalpha",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsAlpha>(ctx, self, args);
         }},
        {"isascii",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsAscii>(ctx, self, args);
         }},
        {"isdecimal",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsDecimal>(ctx, self, args);
         }},
        {"isdigit",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsDigit>(ctx, self, args);
         }},
        {"isnumeric",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsNumeric>(ctx, self, args);
         }},
        {"islower",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsLower>(ctx, self, args);
         }},
        {"isupper",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsUpper>(ctx, self, args);
         }},
        {"isspace",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsSpace>(ctx, self, args);
         }},
        {"istitle",
         [](RenderContext& ctx, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
           return StrPredicate<PyIsTitle>(ctx, self, args);
         }},
    };
    for (const auto& e : entries) m->emplace(e.name, e.impl);
    return m;
  }();
  return *methods;
}

// Attributes of Python's str/int/float that this interpreter does not implement: using one is an
// error rather than a silently undefined value.
bool IsUnsupportedStrAttribute(absl::string_view name) {
  static const auto* names = new absl::flat_hash_set<std::string>{
      "encode",      "expandtabs", "format_map", "isidentifier",
      "isprintable", "maketrans",  "translate"};
  return names->contains(name);
}
bool IsNumberAttribute(absl::string_view name) {
  static const auto* names = new absl::flat_hash_set<std::string>{
      "real",       "imag",       "conjugate",        "bit_length", "bit_count",
      "to_bytes",   "from_bytes", "as_integer_ratio", "numerator",  "denominator",
      "is_integer", "hex",        "fromhex"};
  return names->contains(name);
}

// --- dict / list / tuple methods -----------------------------------------------------------------

absl::StatusOr<Value> DictGet(RenderContext&, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("get", args, {"key", "default"}, 1));
  if (b[0]->is_string()) {
    if (const Value* v = self.dict().Find(b[0]->str())) return *v;
  } else if (!IsHashable(*b[0])) {
    return Unhashable(*b[0]);
  }
  return b[1].has_value() ? *b[1] : Value::None();
}

Value DictView(const Value& self, SeqKind kind) {
  std::vector<Value> items;
  for (const auto& [k, v] : self.dict().items()) {
    if (kind == SeqKind::kKeysView) {
      items.push_back(Str(k));
    } else if (kind == SeqKind::kValuesView) {
      items.push_back(v);
    } else {
      items.push_back(Value::Tuple({Str(k), v}));
    }
  }
  return Value::MakeSequence(kind, std::move(items));
}

absl::StatusOr<Value> SeqCount(RenderContext& ctx, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("count", args, {"value"}, 1));
  int64_t n = 0;
  for (const Value& item : self.seq().items) {
    ASSIGN_OR_RETURN(bool eq, Equals(item, *b[0], ctx));
    if (eq) ++n;
  }
  return Value::Int(n);
}

absl::StatusOr<Value> SeqIndex(RenderContext& ctx, const Value& self, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("index", args, {"value"}, 1));
  const auto& items = self.seq().items;
  for (size_t i = 0; i < items.size(); ++i) {
    ASSIGN_OR_RETURN(bool eq, Equals(items[i], *b[0], ctx));
    if (eq) return Value::Int(static_cast<int64_t>(i));
  }
  if (self.is_seq(SeqKind::kList)) {
    std::string repr;
    RETURN_IF_ERROR(AppendRepr(*b[0], ctx, &repr));
    return absl::InvalidArgumentError(absl::StrCat(repr, " is not in list"));
  }
  return absl::InvalidArgumentError("tuple.index(x): x not in tuple");
}

Value UnsafeMethod(const Value& obj, absl::string_view name) {
  return Value::Undefined(absl::StrCat("access to attribute '", name, "' of '", PyTypeName(obj),
                                       "' object is unsafe."));
}

// --- loop object ---------------------------------------------------------------------------------

absl::StatusOr<Value> LoopCycle(RenderContext&, const Value& self, const CallArgs& args) {
  if (!args.keyword.empty()) return TypeError("cycle() takes no keyword arguments");
  if (args.positional.empty()) return TypeError("no items for cycling given");
  const LoopState& loop = self.loop();
  return args.positional[loop.index0 % args.positional.size()];
}

absl::StatusOr<Value> LoopChanged(RenderContext& ctx, const Value& self, const CallArgs& args) {
  LoopState& loop = self.loop();
  Value value = Value::Tuple(args.positional);
  bool changed = true;
  if (loop.has_changed_value) {
    ASSIGN_OR_RETURN(bool eq, Equals(loop.changed_value, value, ctx));
    changed = !eq;
  }
  if (changed) {
    loop.changed_value = value;
    loop.has_changed_value = true;
  }
  return Value::Bool(changed);
}

std::optional<Value> LoopAttribute(const Value& obj, absl::string_view name) {
  const LoopState& loop = obj.loop();
  const int64_t length = static_cast<int64_t>(loop.items->size());
  const int64_t i = static_cast<int64_t>(loop.index0);
  if (name == "index") return Value::Int(i + 1);
  if (name == "index0") return Value::Int(i);
  if (name == "revindex") return Value::Int(length - i);
  if (name == "revindex0") return Value::Int(length - i - 1);
  if (name == "first") return Value::Bool(i == 0);
  if (name == "last") return Value::Bool(i == length - 1);
  if (name == "length") return Value::Int(length);
  if (name == "depth") return Value::Int(loop.depth0 + 1);
  if (name == "depth0") return Value::Int(loop.depth0);
  if (name == "previtem") {
    if (i == 0) return Value::Undefined("there is no previous item");
    return (*loop.items)[static_cast<size_t>(i - 1)];
  }
  if (name == "nextitem") {
    if (i + 1 >= length) return Value::Undefined("there is no next item");
    return (*loop.items)[static_cast<size_t>(i + 1)];
  }
  if (name == "cycle") return BindMethod(obj, "loop.cycle", LoopCycle);
  if (name == "changed") return BindMethod(obj, "loop.changed", LoopChanged);
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::optional<Value>> GetPythonAttribute(const Value& obj, absl::string_view name) {
  switch (obj.kind()) {
    case ValueKind::kString: {
      auto& methods = StrMethods();
      auto it = methods.find(name);
      if (it != methods.end()) {
        if (obj.is_markup()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "methods of Markup strings (|safe, |escape) are not supported: '", name, "'"));
        }
        return std::optional<Value>(BindMethod(obj, absl::StrCat("str.", name), it->second));
      }
      if (IsUnsupportedStrAttribute(name)) {
        return absl::InvalidArgumentError(absl::StrCat("unsupported string method '", name, "'"));
      }
      return std::optional<Value>();
    }
    case ValueKind::kDict:
      if (name == "get") return std::optional<Value>(BindMethod(obj, "dict.get", DictGet));
      if (name == "items" || name == "keys" || name == "values") {
        MethodImpl impl;
        if (name == "items") {
          impl = [](RenderContext&, const Value& self,
                    const CallArgs& args) -> absl::StatusOr<Value> {
            ASSIGN_OR_RETURN(Bound b, Bind("items", args, {}));
            return DictView(self, SeqKind::kItemsView);
          };
        } else if (name == "keys") {
          impl = [](RenderContext&, const Value& self,
                    const CallArgs& args) -> absl::StatusOr<Value> {
            ASSIGN_OR_RETURN(Bound b, Bind("keys", args, {}));
            return DictView(self, SeqKind::kKeysView);
          };
        } else {
          impl = [](RenderContext&, const Value& self,
                    const CallArgs& args) -> absl::StatusOr<Value> {
            ASSIGN_OR_RETURN(Bound b, Bind("values", args, {}));
            return DictView(self, SeqKind::kValuesView);
          };
        }
        return std::optional<Value>(BindMethod(obj, absl::StrCat("dict.", name), impl));
      }
      if (name == "copy") {
        return std::optional<Value>(BindMethod(
            obj, "dict.copy",
            [](RenderContext&, const Value& self, const CallArgs& args) -> absl::StatusOr<Value> {
              ASSIGN_OR_RETURN(Bound b, Bind("copy", args, {}));
              return Value::MakeDict(self.dict());
            }));
      }
      if (name == "clear" || name == "pop" || name == "popitem" || name == "setdefault" ||
          name == "update") {
        return std::optional<Value>(UnsafeMethod(obj, name));
      }
      if (name == "fromkeys") {
        return absl::InvalidArgumentError("unsupported dict method 'fromkeys'");
      }
      return std::optional<Value>();
    case ValueKind::kSequence:
      if (obj.is_list_or_tuple()) {
        if (name == "count") return std::optional<Value>(BindMethod(obj, "count", SeqCount));
        if (name == "index") return std::optional<Value>(BindMethod(obj, "index", SeqIndex));
        if (obj.is_seq(SeqKind::kList)) {
          if (name == "copy") {
            return std::optional<Value>(
                BindMethod(obj, "list.copy",
                           [](RenderContext&, const Value& self,
                              const CallArgs& args) -> absl::StatusOr<Value> {
                             ASSIGN_OR_RETURN(Bound b, Bind("copy", args, {}));
                             return Value::List(self.seq().items);
                           }));
          }
          if (name == "append" || name == "clear" || name == "extend" || name == "insert" ||
              name == "pop" || name == "remove" || name == "reverse" || name == "sort") {
            return std::optional<Value>(UnsafeMethod(obj, name));
          }
        }
      }
      return std::optional<Value>();
    case ValueKind::kNamespace:
      if (const Value* v = obj.ns().attrs.Find(name)) return std::optional<Value>(*v);
      return std::optional<Value>();
    case ValueKind::kLoop:
      return LoopAttribute(obj, name);
    case ValueKind::kBool:
    case ValueKind::kInt:
    case ValueKind::kFloat:
      if (IsNumberAttribute(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("unsupported ", PyTypeName(obj), " attribute '", name, "'"));
      }
      return std::optional<Value>();
    default:
      return std::optional<Value>();
  }
}

namespace {

// obj[key] without the attribute fallback. nullopt: Python raised TypeError/LookupError.
absl::StatusOr<std::optional<Value>> LookupItem(RenderContext& ctx, const Value& obj,
                                                const Value& key) {
  switch (obj.kind()) {
    case ValueKind::kString: {
      if (!key.is_integral()) return std::optional<Value>();
      int64_t i = key.as_int();
      const std::string& s = obj.str();
      if (IsAscii(s)) {
        int64_t n = static_cast<int64_t>(s.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return std::optional<Value>();
        return std::optional<Value>(Str(std::string(1, s[static_cast<size_t>(i)])));
      }
      std::vector<std::string> cps = SplitCodePoints(s);
      int64_t n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return std::optional<Value>();
      return std::optional<Value>(Str(cps[static_cast<size_t>(i)]));
    }
    case ValueKind::kSequence: {
      const Sequence& seq = obj.seq();
      if (seq.kind != SeqKind::kList && seq.kind != SeqKind::kTuple &&
          seq.kind != SeqKind::kRange) {
        return std::optional<Value>();
      }
      if (!key.is_integral()) return std::optional<Value>();
      int64_t n = static_cast<int64_t>(seq.items.size());
      int64_t i = key.as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return std::optional<Value>();
      return std::optional<Value>(seq.items[static_cast<size_t>(i)]);
    }
    case ValueKind::kDict:
      if (key.is_string()) {
        if (const Value* v = obj.dict().Find(key.str())) return std::optional<Value>(*v);
      }
      return std::optional<Value>();
    default:
      return std::optional<Value>();
  }
}

int64_t AdjustSliceIndex(int64_t i, int64_t n, bool is_start, int64_t step) {
  if (i < 0) {
    i += n;
    if (i < 0) i = step < 0 ? -1 : 0;
  } else if (i >= n) {
    i = step < 0 ? n - 1 : n;
  }
  (void)is_start;
  return i;
}

// --- Globals -------------------------------------------------------------------------------------

absl::StatusOr<Value> GlobalRaiseException(RenderContext& ctx, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("raise_exception", args, {"message"}, 1));
  ASSIGN_OR_RETURN(std::string message, ToStr(*b[0], ctx));
  return absl::InvalidArgumentError(message);
}

absl::StatusOr<Value> GlobalStrftimeNow(RenderContext& ctx, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("strftime_now", args, {"format"}, 1));
  ASSIGN_OR_RETURN(std::string format, ArgStr(*b[0], "strftime_now() argument"));
  if (format.size() > 1000) return absl::InvalidArgumentError("strftime format too long");
  // transformers calls datetime.now().strftime(): a naive local time, so %z and %Z are empty,
  // and %f (microseconds) is Python's own directive.
  const absl::Time now = ctx.Now();
  std::string fmt;
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%' || i + 1 >= format.size()) {
      fmt.push_back(format[i]);
      continue;
    }
    const char d = format[++i];
    if (d == 'z' || d == 'Z') continue;
    if (d == 'f') {
      const absl::Duration sub = now - absl::FromUnixSeconds(absl::ToUnixSeconds(now));
      absl::StrAppend(&fmt, absl::Dec(absl::ToInt64Microseconds(sub), absl::kZeroPad6));
      continue;
    }
    fmt.push_back('%');
    fmt.push_back(d);
  }
  return Str(absl::FormatTime(fmt, now, ctx.time_zone()));
}

// Sandbox limit on range() sizes (jinja2.sandbox.MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

absl::StatusOr<Value> GlobalRange(RenderContext& ctx, const CallArgs& args) {
  if (!args.keyword.empty()) return TypeError("range() takes no keyword arguments");
  const auto& p = args.positional;
  if (p.empty() || p.size() > 3) {
    return TypeError(absl::StrCat("range expected at most 3 arguments, got ", p.size()));
  }
  int64_t start = 0, stop = 0, step = 1;
  if (p.size() == 1) {
    ASSIGN_OR_RETURN(stop, ToIndex(p[0], ""));
  } else {
    ASSIGN_OR_RETURN(start, ToIndex(p[0], ""));
    ASSIGN_OR_RETURN(stop, ToIndex(p[1], ""));
    if (p.size() == 3) {
      ASSIGN_OR_RETURN(step, ToIndex(p[2], ""));
    }
  }
  if (step == 0) return absl::InvalidArgumentError("range() arg 3 must not be zero");
  __int128 span =
      step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
  __int128 abs_step = step > 0 ? step : -static_cast<__int128>(step);
  __int128 n = span <= 0 ? 0 : (span + abs_step - 1) / abs_step;
  if (n > kMaxRange) {
    return absl::InvalidArgumentError(
        "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  }
  RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(n)));
  std::vector<Value> items;
  items.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i)
    items.push_back(Value::Int(start + i * step));
  return Value::Range(start, stop, step, std::move(items));
}

// dict(*args, **kwargs) semantics, shared with namespace().
absl::StatusOr<Dict> BuildDict(RenderContext& ctx, const CallArgs& args, absl::string_view name) {
  Dict d;
  if (args.positional.size() > 1) {
    return TypeError(
        absl::StrCat(name, " expected at most 1 argument, got ", args.positional.size()));
  }
  if (!args.positional.empty()) {
    const Value& src = args.positional[0];
    if (src.is_dict()) {
      d = src.dict();
    } else if (src.is_namespace()) {
      d = src.ns().attrs;
    } else {
      ASSIGN_OR_RETURN(std::vector<Value> pairs, Iterate(src, ctx));
      for (size_t i = 0; i < pairs.size(); ++i) {
        ASSIGN_OR_RETURN(std::vector<Value> kv, Iterate(pairs[i], ctx));
        if (kv.size() != 2) {
          return absl::InvalidArgumentError(absl::StrCat("dictionary update sequence element #", i,
                                                         " has length ", kv.size(),
                                                         "; 2 is required"));
        }
        if (!kv[0].is_string()) {
          return absl::InvalidArgumentError("dict keys other than strings are not supported");
        }
        d.Set(kv[0].str(), kv[1]);
      }
    }
  }
  for (const auto& [k, v] : args.keyword) d.Set(k, v);
  return d;
}

absl::StatusOr<Value> GlobalDict(RenderContext& ctx, const CallArgs& args) {
  ASSIGN_OR_RETURN(Dict d, BuildDict(ctx, args, "dict"));
  return Value::MakeDict(std::move(d));
}

absl::StatusOr<Value> GlobalNamespace(RenderContext& ctx, const CallArgs& args) {
  ASSIGN_OR_RETURN(Dict d, BuildDict(ctx, args, "namespace"));
  auto ns = ctx.NewNamespace();
  ns->attrs = std::move(d);
  return Value::Namespace(std::move(ns));
}

class Joiner : public Callable {
 public:
  explicit Joiner(std::string sep) : sep_(std::move(sep)) {}
  std::string name() const override { return "joiner"; }
  const char* type_name() const override { return "Joiner"; }
  absl::StatusOr<Value> Call(RenderContext&, CallArgs args) const override {
    ASSIGN_OR_RETURN(Bound b, Bind("joiner", args, {}));
    if (!used_) {
      used_ = true;
      return Str("");
    }
    return Str(sep_);
  }

 private:
  std::string sep_;
  mutable bool used_ = false;  // a joiner lives inside one render
};

absl::StatusOr<Value> GlobalJoiner(RenderContext& ctx, const CallArgs& args) {
  ASSIGN_OR_RETURN(Bound b, Bind("joiner", args, {"sep"}));
  std::string sep = ", ";
  if (b[0].has_value()) {
    ASSIGN_OR_RETURN(sep, ToStr(*b[0], ctx));
  }
  return Value::MakeCallable(std::make_shared<Joiner>(std::move(sep)));
}

const absl::flat_hash_map<std::string, Value>& Globals() {
  static const auto* globals = [] {
    auto* m = new absl::flat_hash_map<std::string, Value>;
    auto add = [&](const char* name, GlobalImpl impl, const char* type_name) {
      m->emplace(name,
                 Value::MakeCallable(std::make_shared<GlobalFunction>(name, impl, type_name)));
    };
    add("raise_exception", GlobalRaiseException, "function");
    add("strftime_now", GlobalStrftimeNow, "function");
    add("range", GlobalRange, "type");
    add("dict", GlobalDict, "type");
    add("namespace", GlobalNamespace, "type");
    add("joiner", GlobalJoiner, "type");
    return m;
  }();
  return *globals;
}

}  // namespace

// --- Public entry points -------------------------------------------------------------------------

const Value* FindGlobal(absl::string_view name) {
  auto it = Globals().find(name);
  return it == Globals().end() ? nullptr : &it->second;
}

bool IsUnsupportedGlobal(absl::string_view name) { return name == "cycler" || name == "lipsum"; }

absl::StatusOr<Value> GetAttr(RenderContext& ctx, const Value& obj, absl::string_view name) {
  if (obj.is_undefined()) return UndefinedError(obj);
  ASSIGN_OR_RETURN(std::optional<Value> attr, GetPythonAttribute(obj, name));
  if (attr.has_value()) return *attr;
  ASSIGN_OR_RETURN(std::optional<Value> item, LookupItem(ctx, obj, Str(std::string(name))));
  if (item.has_value()) return *item;
  return UndefinedAttribute(obj, name);
}

absl::StatusOr<Value> GetItem(RenderContext& ctx, const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  ASSIGN_OR_RETURN(std::optional<Value> item, LookupItem(ctx, obj, key));
  if (item.has_value()) return *item;
  if (key.is_string()) {
    ASSIGN_OR_RETURN(std::optional<Value> attr, GetPythonAttribute(obj, key.str()));
    if (attr.has_value()) return *attr;
    return UndefinedAttribute(obj, key.str());
  }
  return UndefinedElement(obj, key, ctx);
}

absl::StatusOr<Value> GetSlice(RenderContext& ctx, const Value& obj, const Value& start_v,
                               const Value& stop_v, const Value& step_v) {
  // Jinja2 compiles slices to plain Python slicing (not environment.getitem): unsliceable
  // objects raise TypeError instead of giving an undefined.
  if (obj.is_undefined()) return UndefinedError(obj);
  const bool is_str = obj.is_string();
  const bool is_seq = obj.is_list_or_tuple() || obj.is_seq(SeqKind::kRange);
  if (obj.is_dict()) return TypeError("unhashable type: 'slice'");
  if (!is_str && !is_seq) {
    return TypeError(absl::StrCat("'", PyTypeName(obj), "' object is not subscriptable"));
  }
  auto as_index = [](const Value& v, std::optional<int64_t>* out) {
    if (v.is_none()) return true;
    if (!v.is_integral()) return false;
    *out = v.as_int();
    return true;
  };
  std::optional<int64_t> start, stop, step_opt;
  if (!as_index(start_v, &start) || !as_index(stop_v, &stop) || !as_index(step_v, &step_opt)) {
    for (const Value* v : {&start_v, &stop_v, &step_v}) {
      if (v->is_undefined()) return UndefinedError(*v);
    }
    return TypeError("slice indices must be integers or None or have an __index__ method");
  }
  int64_t step = step_opt.value_or(1);
  if (step == 0) return absl::InvalidArgumentError("slice step cannot be zero");
  std::vector<std::string> cps;
  if (is_str) cps = SplitCodePoints(obj.str());
  const int64_t n =
      is_str ? static_cast<int64_t>(cps.size()) : static_cast<int64_t>(obj.seq().items.size());
  int64_t lo, hi;
  if (step > 0) {
    lo = start.has_value() ? AdjustSliceIndex(*start, n, true, step) : 0;
    hi = stop.has_value() ? AdjustSliceIndex(*stop, n, false, step) : n;
  } else {
    lo = start.has_value() ? AdjustSliceIndex(*start, n, true, step) : n - 1;
    hi = stop.has_value() ? AdjustSliceIndex(*stop, n, false, step) : -1;
  }
  std::vector<int64_t> indices;
  if (step > 0) {
    for (int64_t i = lo; i < hi; i += step) indices.push_back(i);
  } else {
    for (int64_t i = lo; i > hi; i += step) indices.push_back(i);
  }
  RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(indices.size())));
  if (is_str) {
    std::string out;
    for (int64_t i : indices) out += cps[static_cast<size_t>(i)];
    return Str(std::move(out));
  }
  std::vector<Value> items;
  for (int64_t i : indices) items.push_back(obj.seq().items[static_cast<size_t>(i)]);
  if (obj.is_seq(SeqKind::kRange)) {
    const Sequence& r = obj.seq();
    int64_t new_step = r.range_step * step;
    int64_t new_start = items.empty() ? r.range_start : items.front().as_int();
    int64_t new_stop = items.empty() ? new_start : items.back().as_int() + new_step;
    return Value::Range(new_start, new_stop, new_step, std::move(items));
  }
  return Value::MakeSequence(obj.seq().kind, std::move(items));
}

absl::StatusOr<bool> Contains(RenderContext& ctx, const Value& container, const Value& item) {
  switch (container.kind()) {
    case ValueKind::kUndefined:
      return false;
    case ValueKind::kString:
      if (!item.is_string()) {
        return TypeError(
            absl::StrCat("'in <string>' requires string as left operand, not ", PyTypeName(item)));
      }
      return container.str().find(item.str()) != std::string::npos;
    case ValueKind::kSequence: {
      const Sequence& seq = container.seq();
      if (seq.kind == SeqKind::kIterator) RETURN_IF_ERROR(TakeDeferredError(seq));
      size_t begin = seq.kind == SeqKind::kIterator ? seq.consumed : 0;
      for (size_t i = begin; i < seq.items.size(); ++i) {
        ASSIGN_OR_RETURN(bool eq, Equals(seq.items[i], item, ctx));
        if (eq) {
          if (seq.kind == SeqKind::kIterator) seq.consumed = i + 1;
          return true;
        }
      }
      if (seq.kind == SeqKind::kIterator) seq.consumed = seq.items.size();
      return false;
    }
    case ValueKind::kDict:
      if (item.is_string()) return container.dict().Find(item.str()) != nullptr;
      if (!IsHashable(item)) return Unhashable(item);
      return false;
    case ValueKind::kLoop:
      return absl::InvalidArgumentError("'in' on a loop object is not supported");
    default:
      return TypeError(
          absl::StrCat("argument of type '", PyTypeName(container), "' is not iterable"));
  }
}

absl::StatusOr<Value> CallValue(RenderContext& ctx, const Value& callee, CallArgs args) {
  if (callee.is_callable()) return callee.fn().Call(ctx, std::move(args));
  if (callee.is_undefined()) return UndefinedError(callee);
  return TypeError(absl::StrCat("'", PyTypeName(callee), "' object is not callable"));
}

}  // namespace shardserve::jinja
