#include "worker/text/jinja_value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {
namespace {

absl::Status TooDeep() {
  return absl::InvalidArgumentError(
      absl::StrCat("value nesting deeper than ", kMaxValueDepth, " levels"));
}

const char* BinaryOpSymbol(BinaryOp op) {
  switch (op) {
    case BinaryOp::kAdd:
      return "+";
    case BinaryOp::kSub:
      return "-";
    case BinaryOp::kMul:
      return "*";
    case BinaryOp::kDiv:
      return "/";
    case BinaryOp::kFloorDiv:
      return "//";
    case BinaryOp::kMod:
      return "%";
    case BinaryOp::kPow:
      return "** or pow()";
  }
  return "?";
}

absl::Status Unsupported(BinaryOp op, const Value& a, const Value& b) {
  return TypeError(absl::StrCat("unsupported operand type(s) for ", BinaryOpSymbol(op), ": '",
                                PyTypeName(a), "' and '", PyTypeName(b), "'"));
}

absl::Status Overflow() {
  return absl::InvalidArgumentError(
      "integer overflow: results beyond 64 bits are not supported by this interpreter");
}

// Python's float floor division / modulo (Objects/floatobject.c: float_divmod).
void FloatDivMod(double vx, double wx, double* floordiv, double* mod) {
  double m = std::fmod(vx, wx);
  double div = (vx - m) / wx;
  if (m != 0) {
    if ((wx < 0) != (m < 0)) {
      m += wx;
      div -= 1.0;
    }
  } else {
    m = std::copysign(0.0, wx);
  }
  double fd;
  if (div != 0) {
    fd = std::floor(div);
    if (div - fd > 0.5) fd += 1.0;
  } else {
    fd = std::copysign(0.0, vx / wx);
  }
  *floordiv = fd;
  *mod = m;
}

absl::StatusOr<Value> Repeat(const Value& seq, int64_t n, RenderContext& ctx) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    if (seq.is_markup()) {
      return absl::InvalidArgumentError("'*' on a Markup string (|safe, |escape) is not supported");
    }
    size_t len = seq.str().size();
    if (len != 0 && static_cast<uint64_t>(n) > ctx.max_string_bytes() / len + 1) {
      RETURN_IF_ERROR(ctx.CheckSize(ctx.max_string_bytes() + 1));
    }
    RETURN_IF_ERROR(ctx.CheckSize(len * static_cast<size_t>(n)));
    std::string out;
    out.reserve(len * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out.append(seq.str());
    return Value::String(std::move(out));
  }
  const auto& items = seq.seq().items;
  if (!items.empty() && static_cast<uint64_t>(n) > (1u << 24) / items.size()) {
    return absl::ResourceExhaustedError("list repetition result too large");
  }
  RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(items.size()) * n));
  std::vector<Value> out;
  out.reserve(items.size() * static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
  return Value::MakeSequence(seq.seq().kind, std::move(out));
}

void AppendJsonString(absl::string_view s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  size_t pos = 0;
  while (pos < s.size()) {
    size_t start = pos;
    char32_t c = DecodeUtf8(s, &pos);
    switch (c) {
      case '"':
        out->append("\\\"");
        continue;
      case '\\':
        out->append("\\\\");
        continue;
      case '\n':
        out->append("\\n");
        continue;
      case '\r':
        out->append("\\r");
        continue;
      case '\t':
        out->append("\\t");
        continue;
      case '\b':
        out->append("\\b");
        continue;
      case '\f':
        out->append("\\f");
        continue;
      default:
        break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c > 0xFFFF) {
        char32_t v = c - 0x10000;
        absl::StrAppend(out, "\\u", absl::Hex(0xD800 + (v >> 10), absl::kZeroPad4), "\\u",
                        absl::Hex(0xDC00 + (v & 0x3FF), absl::kZeroPad4));
      } else {
        absl::StrAppend(out, "\\u", absl::Hex(c, absl::kZeroPad4));
      }
    } else {
      out->append(s.data() + start, pos - start);
    }
  }
  out->push_back('"');
}

void AppendIndent(const JsonFormat& f, int level, std::string* out) {
  out->push_back('\n');
  for (int i = 0; i < level; ++i) out->append(*f.indent);
}

}  // namespace

// --- Value ---------------------------------------------------------------------------------------

Value Value::Undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = ValueKind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = ValueKind::kBool;
  v.i_ = b ? 1 : 0;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = ValueKind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = ValueKind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::String(std::string s, bool markup) {
  Value v;
  v.kind_ = ValueKind::kString;
  v.s_ = std::move(s);
  v.markup_ = markup;
  return v;
}
Value Value::MakeSequence(SeqKind kind, std::vector<Value> items) {
  auto seq = std::make_shared<Sequence>();
  seq->kind = kind;
  int depth = 0;
  for (const Value& item : items) depth = std::max(depth, item.depth());
  seq->depth = depth + 1;
  seq->items = std::move(items);
  Value v;
  v.kind_ = ValueKind::kSequence;
  v.obj_ = std::move(seq);
  return v;
}
Value Value::Range(int64_t start, int64_t stop, int64_t step, std::vector<Value> items) {
  auto seq = std::make_shared<Sequence>();
  seq->kind = SeqKind::kRange;
  seq->items = std::move(items);
  seq->range_start = start;
  seq->range_stop = stop;
  seq->range_step = step;
  Value v;
  v.kind_ = ValueKind::kSequence;
  v.obj_ = std::move(seq);
  return v;
}
Value Value::MakeDict(Dict dict) {
  Value v;
  v.kind_ = ValueKind::kDict;
  v.obj_ = std::make_shared<Dict>(std::move(dict));
  return v;
}
Value Value::Namespace(std::shared_ptr<NamespaceData> ns) {
  Value v;
  v.kind_ = ValueKind::kNamespace;
  v.obj_ = std::move(ns);
  return v;
}
Value Value::MakeCallable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind_ = ValueKind::kCallable;
  v.obj_ = std::const_pointer_cast<Callable>(std::move(fn));
  return v;
}
Value Value::Loop(std::shared_ptr<LoopState> loop) {
  Value v;
  v.kind_ = ValueKind::kLoop;
  v.obj_ = std::move(loop);
  return v;
}

int Value::depth() const {
  switch (kind_) {
    case ValueKind::kSequence:
      return seq().depth;
    case ValueKind::kDict:
      return dict().depth();
    case ValueKind::kCallable:
      return fn().depth();
    case ValueKind::kNamespace:
    case ValueKind::kLoop:
      return 1;
    default:
      return 0;
  }
}

// --- Dict ----------------------------------------------------------------------------------------

const Value* Dict::Find(absl::string_view key) const {
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  return &items_[it->second].second;
}

void Dict::Set(std::string key, Value value) {
  auto it = index_.find(key);
  if (it != index_.end()) {
    items_[it->second].second = std::move(value);
    return;
  }
  index_.emplace(key, items_.size());
  items_.emplace_back(std::move(key), std::move(value));
}

int Dict::depth() const {
  int depth = 0;
  for (const auto& [k, v] : items_) depth = std::max(depth, v.depth());
  return depth + 1;
}

void Dict::Clear() {
  items_.clear();
  index_.clear();
}

// --- RenderContext -------------------------------------------------------------------------------

RenderContext::~RenderContext() {
  // Break reference cycles through namespaces (ns.self = ns) before the registry goes away.
  for (auto& ns : namespaces_) ns->attrs.Clear();
}

absl::Status RenderContext::Step(int64_t n) {
  steps_left_ -= n;
  if (steps_left_ < 0) {
    return absl::ResourceExhaustedError("template evaluation exceeded its step budget");
  }
  return absl::OkStatus();
}

absl::Status RenderContext::CheckSize(size_t bytes) const {
  if (bytes > max_string_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("template output or string value exceeds ", max_string_bytes_, " bytes"));
  }
  return absl::OkStatus();
}

std::shared_ptr<NamespaceData> RenderContext::NewNamespace() {
  auto ns = std::make_shared<NamespaceData>();
  namespaces_.push_back(ns);
  return ns;
}

// --- Type names and undefined --------------------------------------------------------------------

std::string PyTypeName(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return "Undefined";
    case ValueKind::kNone:
      return "NoneType";
    case ValueKind::kBool:
      return "bool";
    case ValueKind::kInt:
      return "int";
    case ValueKind::kFloat:
      return "float";
    case ValueKind::kString:
      return v.is_markup() ? "Markup" : "str";
    case ValueKind::kSequence:
      switch (v.seq().kind) {
        case SeqKind::kList:
          return "list";
        case SeqKind::kTuple:
          return "tuple";
        case SeqKind::kIterator:
          return v.seq().iterator_type;
        case SeqKind::kKeysView:
          return "dict_keys";
        case SeqKind::kValuesView:
          return "dict_values";
        case SeqKind::kItemsView:
          return "dict_items";
        case SeqKind::kRange:
          return "range";
      }
      return "list";
    case ValueKind::kDict:
      return "dict";
    case ValueKind::kNamespace:
      return "Namespace";
    case ValueKind::kCallable:
      return v.fn().type_name();
    case ValueKind::kLoop:
      return "LoopContext";
  }
  return "object";
}

std::string ObjectTypeRepr(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kNone:
      return "None";
    case ValueKind::kUndefined:
      return "jinja2.runtime.Undefined object";
    case ValueKind::kNamespace:
      return "jinja2.utils.Namespace object";
    case ValueKind::kLoop:
      return "jinja2.runtime.LoopContext object";
    case ValueKind::kString:
      if (v.is_markup()) return "markupsafe.Markup object";
      break;
    case ValueKind::kCallable:
      if (std::string(v.fn().type_name()) == "Macro") return "jinja2.runtime.Macro object";
      break;
    default:
      break;
  }
  return absl::StrCat(PyTypeName(v), " object");
}

absl::Status UndefinedError(const Value& v) {
  if (v.undefined_hint().empty()) return absl::InvalidArgumentError("value is undefined");
  return absl::InvalidArgumentError(v.undefined_hint());
}

Value UndefinedAttribute(const Value& obj, absl::string_view name) {
  return Value::Undefined(
      absl::StrCat(PyRepr(ObjectTypeRepr(obj)), " has no attribute ", PyRepr(name)));
}

Value UndefinedElement(const Value& obj, const Value& key, RenderContext& ctx) {
  std::string key_repr;
  if (!AppendRepr(key, ctx, &key_repr).ok()) key_repr = PyTypeName(key);
  return Value::Undefined(absl::StrCat(ObjectTypeRepr(obj), " has no element ", key_repr));
}

absl::Status TypeError(absl::string_view message) { return absl::InvalidArgumentError(message); }

bool Truthy(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return false;
    case ValueKind::kBool:
    case ValueKind::kInt:
      return v.as_int() != 0;
    case ValueKind::kFloat:
      return v.as_double() != 0;
    case ValueKind::kString:
      return !v.str().empty();
    case ValueKind::kSequence:
      if (v.seq().kind == SeqKind::kIterator) return true;
      return !v.seq().items.empty();
    case ValueKind::kDict:
      return !v.dict().empty();
    default:
      return true;
  }
}

// --- str() and repr() ----------------------------------------------------------------------------

namespace {

absl::Status AppendSeqItems(const std::vector<Value>& items, RenderContext& ctx, std::string* out,
                            int depth) {
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out->append(", ");
    RETURN_IF_ERROR(AppendRepr(items[i], ctx, out, depth + 1));
    RETURN_IF_ERROR(ctx.CheckSize(out->size()));
  }
  return absl::OkStatus();
}

absl::Status AppendDictRepr(const Dict& dict, RenderContext& ctx, std::string* out, int depth) {
  out->push_back('{');
  bool first = true;
  for (const auto& [k, v] : dict.items()) {
    if (!first) out->append(", ");
    first = false;
    out->append(PyRepr(k));
    out->append(": ");
    RETURN_IF_ERROR(AppendRepr(v, ctx, out, depth + 1));
    RETURN_IF_ERROR(ctx.CheckSize(out->size()));
  }
  out->push_back('}');
  return absl::OkStatus();
}

std::string LoopRepr(const LoopState& loop) {
  return absl::StrCat("<LoopContext ", loop.index0 + 1, "/", loop.items->size(), ">");
}

absl::Status Unprintable(const Value& v) {
  return absl::InvalidArgumentError(absl::StrCat(
      "printing a ", PyTypeName(v),
      " object is not supported (Python prints its memory address); convert it with |list"));
}

}  // namespace

absl::Status AppendRepr(const Value& v, RenderContext& ctx, std::string* out, int depth) {
  if (depth > kMaxValueDepth) return TooDeep();
  switch (v.kind()) {
    case ValueKind::kUndefined:
      out->append("Undefined");
      return absl::OkStatus();
    case ValueKind::kString:
      if (v.is_markup()) {
        absl::StrAppend(out, "Markup(", PyRepr(v.str()), ")");
      } else {
        out->append(PyRepr(v.str()));
      }
      return ctx.CheckSize(out->size());
    case ValueKind::kSequence: {
      const Sequence& seq = v.seq();
      switch (seq.kind) {
        case SeqKind::kList:
          out->push_back('[');
          RETURN_IF_ERROR(AppendSeqItems(seq.items, ctx, out, depth));
          out->push_back(']');
          return absl::OkStatus();
        case SeqKind::kTuple:
          out->push_back('(');
          RETURN_IF_ERROR(AppendSeqItems(seq.items, ctx, out, depth));
          if (seq.items.size() == 1) out->push_back(',');
          out->push_back(')');
          return absl::OkStatus();
        case SeqKind::kKeysView:
        case SeqKind::kValuesView:
        case SeqKind::kItemsView:
          absl::StrAppend(out, PyTypeName(v), "([");
          RETURN_IF_ERROR(AppendSeqItems(seq.items, ctx, out, depth));
          out->append("])");
          return absl::OkStatus();
        case SeqKind::kRange:
          absl::StrAppend(out, "range(", seq.range_start, ", ", seq.range_stop);
          if (seq.range_step != 1) absl::StrAppend(out, ", ", seq.range_step);
          out->push_back(')');
          return absl::OkStatus();
        case SeqKind::kIterator:
          return Unprintable(v);
      }
      return Unprintable(v);
    }
    case ValueKind::kDict:
      return AppendDictRepr(v.dict(), ctx, out, depth);
    case ValueKind::kNamespace:
      out->append("<Namespace ");
      RETURN_IF_ERROR(AppendDictRepr(v.ns().attrs, ctx, out, depth));
      out->push_back('>');
      return absl::OkStatus();
    case ValueKind::kCallable: {
      std::string repr = v.fn().repr();
      if (repr.empty()) return Unprintable(v);
      out->append(repr);
      return absl::OkStatus();
    }
    case ValueKind::kLoop:
      out->append(LoopRepr(v.loop()));
      return absl::OkStatus();
    default:
      return AppendStr(v, ctx, out);
  }
}

absl::Status AppendStr(const Value& v, RenderContext& ctx, std::string* out) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return absl::OkStatus();
    case ValueKind::kNone:
      out->append("None");
      return absl::OkStatus();
    case ValueKind::kBool:
      out->append(v.as_bool() ? "True" : "False");
      return absl::OkStatus();
    case ValueKind::kInt:
      absl::StrAppend(out, v.as_int());
      return absl::OkStatus();
    case ValueKind::kFloat:
      out->append(PyFloatRepr(v.as_double()));
      return absl::OkStatus();
    case ValueKind::kString:
      RETURN_IF_ERROR(ctx.CheckSize(out->size() + v.str().size()));
      out->append(v.str());
      return absl::OkStatus();
    default:
      return AppendRepr(v, ctx, out, 0);
  }
}

absl::StatusOr<std::string> ToStr(const Value& v, RenderContext& ctx) {
  if (v.is_string()) return v.str();
  std::string out;
  RETURN_IF_ERROR(AppendStr(v, ctx, &out));
  return out;
}

// --- Comparison ----------------------------------------------------------------------------------

absl::StatusOr<bool> Equals(const Value& a, const Value& b, RenderContext& ctx, int depth) {
  if (depth > kMaxValueDepth) return TooDeep();
  RETURN_IF_ERROR(ctx.Step());
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case ValueKind::kUndefined:
    case ValueKind::kNone:
      return true;
    case ValueKind::kString:
      return a.str() == b.str();
    case ValueKind::kSequence: {
      if (a.identity() == b.identity()) return true;
      const Sequence& x = a.seq();
      const Sequence& y = b.seq();
      if (x.kind != y.kind) return false;
      if (x.kind == SeqKind::kIterator || x.kind == SeqKind::kValuesView) return false;
      if (x.items.size() != y.items.size()) return false;
      if (x.kind == SeqKind::kKeysView || x.kind == SeqKind::kItemsView) {
        // Set comparison.
        for (const Value& item : x.items) {
          bool found = false;
          for (const Value& other : y.items) {
            ASSIGN_OR_RETURN(bool eq, Equals(item, other, ctx, depth + 1));
            if (eq) {
              found = true;
              break;
            }
          }
          if (!found) return false;
        }
        return true;
      }
      for (size_t i = 0; i < x.items.size(); ++i) {
        ASSIGN_OR_RETURN(bool eq, Equals(x.items[i], y.items[i], ctx, depth + 1));
        if (!eq) return false;
      }
      return true;
    }
    case ValueKind::kDict: {
      if (a.identity() == b.identity()) return true;
      const Dict& x = a.dict();
      const Dict& y = b.dict();
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x.items()) {
        const Value* other = y.Find(k);
        if (other == nullptr) return false;
        ASSIGN_OR_RETURN(bool eq, Equals(v, *other, ctx, depth + 1));
        if (!eq) return false;
      }
      return true;
    }
    default:
      return a.identity() == b.identity();
  }
}

absl::StatusOr<int> Compare(const Value& a, const Value& b, absl::string_view op,
                            RenderContext& ctx, int depth) {
  if (depth > kMaxValueDepth) return TooDeep();
  RETURN_IF_ERROR(ctx.Step());
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_integral() && b.is_integral()) {
      return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int() ? 1 : 0;
    }
    double x = a.as_double();
    double y = b.as_double();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) {
    int c = a.str().compare(b.str());
    return c < 0 ? -1 : c > 0 ? 1 : 0;
  }
  if (a.is_list_or_tuple() && b.is_list_or_tuple() && a.seq().kind == b.seq().kind) {
    const auto& x = a.seq().items;
    const auto& y = b.seq().items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      ASSIGN_OR_RETURN(bool eq, Equals(x[i], y[i], ctx, depth + 1));
      if (!eq) return Compare(x[i], y[i], op, ctx, depth + 1);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  return TypeError(absl::StrCat("'", op, "' not supported between instances of '", PyTypeName(a),
                                "' and '", PyTypeName(b), "'"));
}

// --- Iteration -----------------------------------------------------------------------------------

Value DeferredErrorIterator(absl::Status error) {
  Value v = Value::MakeSequence(SeqKind::kIterator, {});
  v.seq().deferred_error = std::move(error);
  return v;
}

absl::Status TakeDeferredError(const Sequence& seq) {
  if (seq.deferred_error.ok()) return absl::OkStatus();
  absl::Status error = std::move(seq.deferred_error);
  seq.deferred_error = absl::OkStatus();
  seq.consumed = seq.items.size();
  return error;
}

absl::StatusOr<std::vector<Value>> Iterate(const Value& v, RenderContext& ctx) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return std::vector<Value>{};
    case ValueKind::kString: {
      std::vector<Value> out;
      for (std::string& c : SplitCodePoints(v.str())) out.push_back(Value::String(std::move(c)));
      RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(out.size())));
      return out;
    }
    case ValueKind::kSequence: {
      const Sequence& seq = v.seq();
      RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(seq.items.size())));
      if (seq.kind == SeqKind::kIterator) {
        RETURN_IF_ERROR(TakeDeferredError(seq));
        std::vector<Value> out(seq.items.begin() + static_cast<ptrdiff_t>(seq.consumed),
                               seq.items.end());
        seq.consumed = seq.items.size();
        return out;
      }
      return seq.items;
    }
    case ValueKind::kDict: {
      std::vector<Value> out;
      for (const auto& [k, unused] : v.dict().items()) out.push_back(Value::String(k));
      RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(out.size())));
      return out;
    }
    case ValueKind::kLoop:
      return absl::InvalidArgumentError("iterating a loop object is not supported");
    default:
      return TypeError(absl::StrCat("'", PyTypeName(v), "' object is not iterable"));
  }
}

absl::StatusOr<int64_t> Length(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined:
      return 0;
    case ValueKind::kString:
      return CodePointCount(v.str());
    case ValueKind::kSequence:
      if (v.seq().kind == SeqKind::kIterator) break;
      return static_cast<int64_t>(v.seq().items.size());
    case ValueKind::kDict:
      return static_cast<int64_t>(v.dict().size());
    case ValueKind::kLoop:
      return static_cast<int64_t>(v.loop().items->size());
    default:
      break;
  }
  return TypeError(absl::StrCat("object of type '", PyTypeName(v), "' has no len()"));
}

// --- JSON ----------------------------------------------------------------------------------------

absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& j, const std::string& path,
                               int depth) {
  if (depth > kMaxValueDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": nested deeper than ", kMaxValueDepth, " levels"));
  }
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value::None();
    case nlohmann::ordered_json::value_t::boolean:
      return Value::Bool(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
      return Value::Int(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": integer ", u, " does not fit in 64 bits"));
      }
      return Value::Int(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float:
      return Value::Float(j.get<double>());
    case nlohmann::ordered_json::value_t::string: {
      const auto& s = j.get_ref<const std::string&>();
      if (!IsValidUtf8(s)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": string is not valid UTF-8"));
      }
      return Value::String(s);
    }
    case nlohmann::ordered_json::value_t::array: {
      std::vector<Value> items;
      items.reserve(j.size());
      size_t i = 0;
      for (const auto& item : j) {
        ASSIGN_OR_RETURN(Value v, FromJson(item, absl::StrCat(path, "[", i, "]"), depth + 1));
        items.push_back(std::move(v));
        ++i;
      }
      return Value::List(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict dict;
      for (const auto& [k, item] : j.items()) {
        if (!IsValidUtf8(k)) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": key is not valid UTF-8"));
        }
        ASSIGN_OR_RETURN(Value v, FromJson(item, absl::StrCat(path, ".", k), depth + 1));
        dict.Set(k, std::move(v));
      }
      return Value::MakeDict(std::move(dict));
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": unsupported JSON value type ", j.type_name()));
  }
}

absl::Status AppendJson(const Value& v, const JsonFormat& f, RenderContext& ctx, std::string* out,
                        int depth) {
  if (depth > kMaxValueDepth) return TooDeep();
  RETURN_IF_ERROR(ctx.CheckSize(out->size()));
  switch (v.kind()) {
    case ValueKind::kNone:
      out->append("null");
      return absl::OkStatus();
    case ValueKind::kBool:
      out->append(v.as_bool() ? "true" : "false");
      return absl::OkStatus();
    case ValueKind::kInt:
      absl::StrAppend(out, v.as_int());
      return absl::OkStatus();
    case ValueKind::kFloat: {
      double d = v.as_double();
      if (std::isnan(d)) {
        out->append("NaN");
      } else if (std::isinf(d)) {
        out->append(d < 0 ? "-Infinity" : "Infinity");
      } else {
        out->append(PyFloatRepr(d));
      }
      return absl::OkStatus();
    }
    case ValueKind::kString:
      AppendJsonString(v.str(), f.ensure_ascii, out);
      return absl::OkStatus();
    case ValueKind::kSequence:
      if (v.is_list_or_tuple()) {
        const auto& items = v.seq().items;
        if (items.empty()) {
          out->append("[]");
          return absl::OkStatus();
        }
        out->push_back('[');
        for (size_t i = 0; i < items.size(); ++i) {
          if (i > 0) out->append(f.item_separator);
          if (f.indent.has_value()) AppendIndent(f, depth + 1, out);
          RETURN_IF_ERROR(AppendJson(items[i], f, ctx, out, depth + 1));
        }
        if (f.indent.has_value()) AppendIndent(f, depth, out);
        out->push_back(']');
        return absl::OkStatus();
      }
      break;
    case ValueKind::kDict: {
      const Dict& dict = v.dict();
      if (dict.empty()) {
        out->append("{}");
        return absl::OkStatus();
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : dict.items()) items.push_back(&item);
      if (f.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* x, const auto* y) { return x->first < y->first; });
      }
      out->push_back('{');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out->append(f.item_separator);
        if (f.indent.has_value()) AppendIndent(f, depth + 1, out);
        AppendJsonString(items[i]->first, f.ensure_ascii, out);
        out->append(f.key_separator);
        RETURN_IF_ERROR(AppendJson(items[i]->second, f, ctx, out, depth + 1));
      }
      if (f.indent.has_value()) AppendIndent(f, depth, out);
      out->push_back('}');
      return absl::OkStatus();
    }
    default:
      break;
  }
  return TypeError(absl::StrCat("Object of type ", PyTypeName(v), " is not JSON serializable"));
}

// --- Arithmetic ----------------------------------------------------------------------------------

absl::StatusOr<Value> BinaryArith(BinaryOp op, const Value& a, const Value& b, RenderContext& ctx) {
  if (op == BinaryOp::kMod && a.is_string() && !a.is_markup()) {
    // str.__mod__ runs first, whatever the right operand (even an undefined).
    ASSIGN_OR_RETURN(std::string s, PercentFormat(a.str(), b, ctx));
    return Value::String(std::move(s));
  }
  if (a.is_undefined()) return UndefinedError(a);
  if (b.is_undefined()) return UndefinedError(b);
  if (a.is_number() && b.is_number()) {
    const bool ints = a.is_integral() && b.is_integral();
    const int64_t x = a.as_int();
    const int64_t y = b.as_int();
    const double dx = a.as_double();
    const double dy = b.as_double();
    int64_t r;
    switch (op) {
      case BinaryOp::kAdd:
        if (!ints) return Value::Float(dx + dy);
        if (__builtin_add_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      case BinaryOp::kSub:
        if (!ints) return Value::Float(dx - dy);
        if (__builtin_sub_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      case BinaryOp::kMul:
        if (!ints) return Value::Float(dx * dy);
        if (__builtin_mul_overflow(x, y, &r)) return Overflow();
        return Value::Int(r);
      case BinaryOp::kDiv:
        if (dy == 0) {
          return absl::InvalidArgumentError(ints ? "division by zero" : "float division by zero");
        }
        return Value::Float(dx / dy);
      case BinaryOp::kFloorDiv:
      case BinaryOp::kMod: {
        if (ints) {
          if (y == 0) {
            return absl::InvalidArgumentError(op == BinaryOp::kFloorDiv
                                                  ? "integer division or modulo by zero"
                                                  : "integer modulo by zero");
          }
          if (x == INT64_MIN && y == -1) {
            if (op == BinaryOp::kMod) return Value::Int(0);
            return Overflow();
          }
          int64_t q = x / y;
          int64_t m = x % y;
          if (m != 0 && ((m < 0) != (y < 0))) {
            m += y;
            q -= 1;
          }
          return Value::Int(op == BinaryOp::kFloorDiv ? q : m);
        }
        if (dy == 0) {
          return absl::InvalidArgumentError(
              op == BinaryOp::kFloorDiv ? "float floor division by zero" : "float modulo");
        }
        double fd, m;
        FloatDivMod(dx, dy, &fd, &m);
        return Value::Float(op == BinaryOp::kFloorDiv ? fd : m);
      }
      case BinaryOp::kPow:
        if (ints && y >= 0) {
          int64_t result = 1;
          int64_t base = x;
          int64_t e = y;
          while (e > 0) {
            if (e & 1) {
              if (__builtin_mul_overflow(result, base, &result)) return Overflow();
            }
            e >>= 1;
            if (e > 0 && __builtin_mul_overflow(base, base, &base)) return Overflow();
          }
          return Value::Int(result);
        }
        if (dx == 0 && dy < 0) {
          return absl::InvalidArgumentError("0.0 cannot be raised to a negative power");
        }
        if (dx < 0 && std::floor(dy) != dy) {
          return absl::InvalidArgumentError(
              "raising a negative number to a fractional power (complex result) is not "
              "supported");
        }
        return Value::Float(std::pow(dx, dy));
    }
  }
  switch (op) {
    case BinaryOp::kAdd:
      if (a.is_string()) {
        if (a.is_markup() && !b.is_string()) return Unsupported(op, a, b);
        if (!b.is_string()) {
          return TypeError(
              absl::StrCat("can only concatenate str (not \"", PyTypeName(b), "\") to str"));
        }
        if (a.is_markup() || b.is_markup()) {
          return absl::InvalidArgumentError(
              "'+' on a Markup string (|safe, |escape) is not supported");
        }
        RETURN_IF_ERROR(ctx.CheckSize(a.str().size() + b.str().size()));
        return Value::String(absl::StrCat(a.str(), b.str()));
      }
      if (a.is_list_or_tuple()) {
        if (!b.is_seq(a.seq().kind)) {
          return TypeError(absl::StrCat("can only concatenate ", PyTypeName(a), " (not \"",
                                        PyTypeName(b), "\") to ", PyTypeName(a)));
        }
        std::vector<Value> items = a.seq().items;
        if (items.size() + b.seq().items.size() > (1u << 24)) {
          return absl::ResourceExhaustedError("list concatenation result too large");
        }
        RETURN_IF_ERROR(ctx.Step(static_cast<int64_t>(items.size() + b.seq().items.size())));
        items.insert(items.end(), b.seq().items.begin(), b.seq().items.end());
        return Value::MakeSequence(a.seq().kind, std::move(items));
      }
      break;
    case BinaryOp::kMul: {
      auto is_repeatable = [](const Value& v) { return v.is_string() || v.is_list_or_tuple(); };
      if (is_repeatable(a) && b.is_integral()) return Repeat(a, b.as_int(), ctx);
      if (is_repeatable(b) && a.is_integral()) return Repeat(b, a.as_int(), ctx);
      if (is_repeatable(a) || is_repeatable(b)) {
        const Value& other = is_repeatable(a) ? b : a;
        return TypeError(
            absl::StrCat("can't multiply sequence by non-int of type '", PyTypeName(other), "'"));
      }
      break;
    }
    case BinaryOp::kMod:
      if (a.is_string()) {
        if (a.is_markup()) {
          return absl::InvalidArgumentError(
              "'%' on a Markup string (|safe, |escape) is not supported");
        }
        ASSIGN_OR_RETURN(std::string s, PercentFormat(a.str(), b, ctx));
        return Value::String(std::move(s));
      }
      break;
    default:
      break;
  }
  return Unsupported(op, a, b);
}

// --- printf-style formatting ---------------------------------------------------------------------

absl::StatusOr<std::string> PercentFormat(absl::string_view format, const Value& args,
                                          RenderContext& ctx) {
  std::vector<Value> positional;
  const Dict* mapping = nullptr;
  // Python skips the "not all arguments converted" check when the single argument supports
  // __getitem__ (a mapping, but also a list or an undefined).
  bool getitem_arg = false;
  if (args.is_seq(SeqKind::kTuple)) {
    positional = args.seq().items;
  } else {
    if (args.is_dict()) mapping = &args.dict();
    getitem_arg = args.is_dict() || args.is_undefined() || args.is_seq(SeqKind::kList) ||
                  args.is_seq(SeqKind::kRange);
    positional.push_back(args);
  }
  size_t next_arg = 0;
  bool used_mapping = false;
  std::string out;
  size_t i = 0;
  auto fail = [](absl::string_view msg) { return TypeError(msg); };
  while (i < format.size()) {
    char c = format[i];
    if (c != '%') {
      out.push_back(c);
      ++i;
      continue;
    }
    ++i;
    if (i >= format.size()) return absl::InvalidArgumentError("incomplete format");
    if (format[i] == '%') {
      out.push_back('%');
      ++i;
      continue;
    }
    const Value* arg = nullptr;
    if (format[i] == '(') {
      size_t close = format.find(')', i);
      if (close == absl::string_view::npos) {
        return absl::InvalidArgumentError("incomplete format key");
      }
      if (args.is_undefined()) return UndefinedError(args);
      if (mapping == nullptr) return fail("format requires a mapping");
      std::string key(format.substr(i + 1, close - i - 1));
      arg = mapping->Find(key);
      if (arg == nullptr)
        return absl::InvalidArgumentError(absl::StrCat("KeyError: ", PyRepr(key)));
      used_mapping = true;
      i = close + 1;
    }
    std::string flags;
    while (i < format.size() &&
           absl::string_view("-+ #0").find(format[i]) != absl::string_view::npos) {
      flags.push_back(format[i++]);
    }
    int width = -1;
    int precision = -1;
    while (i < format.size() && format[i] >= '0' && format[i] <= '9') {
      width = std::max(width, 0) * 10 + (format[i++] - '0');
      if (width > 10000) return absl::InvalidArgumentError("format width too large");
    }
    if (i < format.size() && format[i] == '.') {
      ++i;
      precision = 0;
      while (i < format.size() && format[i] >= '0' && format[i] <= '9') {
        precision = precision * 10 + (format[i++] - '0');
        if (precision > 10000) return absl::InvalidArgumentError("format precision too large");
      }
    }
    if (i >= format.size()) return absl::InvalidArgumentError("incomplete format");
    char type = format[i++];
    if (arg == nullptr) {
      if (next_arg >= positional.size()) return fail("not enough arguments for format string");
      arg = &positional[next_arg++];
    }
    std::string piece;
    bool numeric = false;
    switch (type) {
      case 's': {
        ASSIGN_OR_RETURN(piece, ToStr(*arg, ctx));
        if (precision >= 0) {
          auto cps = SplitCodePoints(piece);
          if (cps.size() > static_cast<size_t>(precision)) {
            piece.clear();
            for (int k = 0; k < precision; ++k) piece.append(cps[k]);
          }
        }
        break;
      }
      case 'r':
      case 'a':
        RETURN_IF_ERROR(AppendRepr(*arg, ctx, &piece));
        break;
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o':
      case 'c': {
        if (arg->is_undefined()) return UndefinedError(*arg);
        if (!arg->is_number()) {
          return fail(absl::StrCat("%", std::string(1, type),
                                   " format: a real number is required, not ", PyTypeName(*arg)));
        }
        if (type == 'c') {
          piece.clear();
          AppendUtf8(static_cast<char32_t>(arg->as_int()), &piece);
          break;
        }
        int64_t n =
            arg->is_float() ? static_cast<int64_t>(std::trunc(arg->as_double())) : arg->as_int();
        std::string spec = "%" + flags;
        if (precision >= 0) spec += "." + std::to_string(precision);
        spec += (type == 'x' || type == 'X' || type == 'o') ? std::string("l") + type
                                                            : std::string("ld");
        char buf[128];
        if ((type == 'x' || type == 'X' || type == 'o') && n < 0) {
          std::snprintf(buf, sizeof(buf), spec.c_str(), static_cast<long>(-n));
          piece = std::string("-") + buf;
        } else {
          std::snprintf(buf, sizeof(buf), spec.c_str(), static_cast<long>(n));
          piece = buf;
        }
        numeric = true;
        break;
      }
      case 'f':
      case 'F':
      case 'e':
      case 'E':
      case 'g':
      case 'G': {
        if (arg->is_undefined()) return UndefinedError(*arg);
        if (!arg->is_number()) {
          return fail(absl::StrCat("must be real number, not ", PyTypeName(*arg)));
        }
        std::string spec = "%" + flags;
        spec += "." + std::to_string(precision >= 0 ? precision : 6);
        spec.push_back(type);
        std::vector<char> buf(512 + static_cast<size_t>(std::max(precision, 0)));
        std::snprintf(buf.data(), buf.size(), spec.c_str(), arg->as_double());
        piece = buf.data();
        numeric = true;
        break;
      }
      default:
        return absl::InvalidArgumentError(absl::StrFormat(
            "unsupported format character '%c' (0x%x)", type, static_cast<unsigned char>(type)));
    }
    int64_t len = CodePointCount(piece);
    if (width > len) {
      bool left = flags.find('-') != std::string::npos;
      bool zero = numeric && flags.find('0') != std::string::npos && !left;
      size_t pad = static_cast<size_t>(width - len);
      if (left) {
        piece.append(pad, ' ');
      } else if (zero) {
        size_t sign =
            (!piece.empty() && (piece[0] == '-' || piece[0] == '+' || piece[0] == ' ')) ? 1 : 0;
        piece.insert(sign, pad, '0');
      } else {
        piece.insert(0, pad, ' ');
      }
    }
    out.append(piece);
    RETURN_IF_ERROR(ctx.CheckSize(out.size()));
  }
  if (!used_mapping && !getitem_arg && next_arg < positional.size()) {
    return fail("not all arguments converted during string formatting");
  }
  return out;
}

}  // namespace shardserve::jinja
