#include "worker/text/jinja_interpreter.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/text/jinja_builtins.h"
#include "worker/text/jinja_strings.h"

namespace shardserve::jinja {
namespace {

// A variable scope. Lookups walk to the parents; assignments stay in this scope (Jinja2 gives
// each for-loop iteration and each macro call its own scope; if-blocks share their parent's).
class Scope {
 public:
  explicit Scope(std::shared_ptr<Scope> parent) : parent_(std::move(parent)) {}

  const Value* Find(absl::string_view name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent_.get()) {
      auto it = s->vars_.find(name);
      if (it != s->vars_.end()) return &it->second;
    }
    return nullptr;
  }
  void Set(const std::string& name, Value value) { vars_[name] = std::move(value); }
  void Clear() { vars_.clear(); }

 private:
  std::shared_ptr<Scope> parent_;
  absl::flat_hash_map<std::string, Value> vars_;
};
using ScopePtr = std::shared_ptr<Scope>;

enum class Flow { kNormal, kBreak, kContinue };

class Interpreter;

class Macro : public Callable {
 public:
  Macro(Interpreter* interp, const Stmt* def, ScopePtr closure)
      : interp_(interp), def_(def), closure_(std::move(closure)) {}
  std::string name() const override { return def_->name; }
  const char* type_name() const override { return "Macro"; }
  std::string repr() const override { return absl::StrCat("<Macro ", PyRepr(def_->name), ">"); }
  absl::StatusOr<Value> Call(RenderContext& ctx, CallArgs args) const override;
  const Stmt& def() const { return *def_; }
  const ScopePtr& closure() const { return closure_; }

 private:
  Interpreter* interp_;
  const Stmt* def_;
  ScopePtr closure_;
};

class Interpreter : public RenderContext {
 public:
  Interpreter(const Template& tmpl, const RenderOptions& options)
      : RenderContext(options.max_output_bytes, options.max_steps, options.clock,
                      options.time_zone),
        tmpl_(tmpl),
        max_call_depth_(options.max_call_depth) {}

  ~Interpreter() override {
    // Macros hold their defining scope, which holds the macro: break those cycles.
    for (auto& scope : captured_scopes_) scope->Clear();
  }

  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) {
    if (!context.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(tmpl_.what, ": the render context must be a JSON object"));
    }
    auto globals = std::make_shared<Scope>(nullptr);
    for (const auto& [key, value] : context.items()) {
      auto v = FromJson(value, key);
      if (!v.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(tmpl_.what, ": context ", v.status().message()));
      }
      globals->Set(key, std::move(*v));
    }
    auto top = std::make_shared<Scope>(globals);
    std::string out;
    ASSIGN_OR_RETURN(Flow flow, ExecBody(tmpl_.body, top, &out));
    (void)flow;
    return out;
  }

  absl::StatusOr<Value> CallMacro(const Macro& macro, CallArgs args);

  // Evaluates a constant expression at "compile time" (no variables; lenient slices).
  absl::StatusOr<Value> EvalConstant(const Expr& e) {
    fold_mode_ = true;
    auto scope = std::make_shared<Scope>(nullptr);
    return Eval(e, scope);
  }

 private:
  // --- Errors ----------------------------------------------------------------------------------

  // Adds "<what> line L: " to errors from builtins; errors that already carry a location pass.
  absl::Status Located(int line, absl::Status status) const {
    if (status.ok()) return status;
    const std::string prefix = absl::StrCat(tmpl_.what, " line ");
    if (absl::StartsWith(status.message(), prefix)) return status;
    return absl::Status(status.code(), absl::StrCat(prefix, line, ": ", status.message()));
  }
  template <typename T>
  absl::StatusOr<T> Located(int line, absl::StatusOr<T> result) const {
    if (result.ok()) return result;
    return Located(line, result.status());
  }

  // Compile-time evaluation reached something only known at render time.
  static absl::Status NotConstant() { return absl::UnavailableError("not a constant"); }

  absl::Status CheckDepth(const Value& v, int line) const {
    if (v.depth() > kMaxValueDepth) {
      return Located(line, absl::InvalidArgumentError(absl::StrCat("value nesting deeper than ",
                                                                   kMaxValueDepth, " levels")));
    }
    return absl::OkStatus();
  }

  // --- Statements ------------------------------------------------------------------------------

  absl::StatusOr<Flow> ExecBody(const Body& body, const ScopePtr& scope, std::string* out) {
    for (const auto& stmt : body) {
      ASSIGN_OR_RETURN(Flow flow, Exec(*stmt, scope, out));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  absl::Status Emit(const Value& v, int line, std::string* out) {
    RETURN_IF_ERROR(Located(line, AppendStr(v, *this, out)));
    return Located(line, CheckSize(out->size()));
  }

  absl::StatusOr<Flow> Exec(const Stmt& s, const ScopePtr& scope, std::string* out) {
    RETURN_IF_ERROR(Located(s.line, Step()));
    switch (s.kind) {
      case StmtKind::kData:
        out->append(s.text);
        RETURN_IF_ERROR(Located(s.line, CheckSize(out->size())));
        return Flow::kNormal;
      case StmtKind::kPrint: {
        ASSIGN_OR_RETURN(Value v, Eval(*s.expr, scope));
        RETURN_IF_ERROR(Emit(v, s.expr->line, out));
        return Flow::kNormal;
      }
      case StmtKind::kIf:
        for (const auto& [cond, body] : s.branches) {
          ASSIGN_OR_RETURN(Value c, Eval(*cond, scope));
          if (Truthy(c)) return ExecBody(body, scope, out);
        }
        return ExecBody(s.else_body, scope, out);
      case StmtKind::kFor:
        return ExecFor(s, scope, out);
      case StmtKind::kSet: {
        ASSIGN_OR_RETURN(Value v, Eval(*s.expr, scope));
        RETURN_IF_ERROR(Assign(s.target, std::move(v), scope));
        return Flow::kNormal;
      }
      case StmtKind::kSetBlock: {
        std::string buf;
        auto inner = std::make_shared<Scope>(scope);
        ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, inner, &buf));
        if (flow != Flow::kNormal) return flow;  // break/continue leave before the assignment
        ASSIGN_OR_RETURN(Value v, ApplyFilters(s.filters, Value::String(std::move(buf)), scope));
        RETURN_IF_ERROR(Assign(s.target, std::move(v), scope));
        return Flow::kNormal;
      }
      case StmtKind::kMacro: {
        captured_scopes_.push_back(scope);
        scope->Set(s.name, Value::MakeCallable(std::make_shared<Macro>(this, &s, scope)));
        return Flow::kNormal;
      }
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kWith: {
        auto inner = std::make_shared<Scope>(scope);
        std::vector<Value> values;
        for (const auto& [target, expr] : s.assignments) {
          ASSIGN_OR_RETURN(Value v, Eval(*expr, scope));
          values.push_back(std::move(v));
        }
        for (size_t i = 0; i < values.size(); ++i) {
          RETURN_IF_ERROR(Assign(s.assignments[i].first, std::move(values[i]), inner));
        }
        return ExecBody(s.body, inner, out);
      }
      case StmtKind::kFilterBlock: {
        std::string buf;
        auto inner = std::make_shared<Scope>(scope);
        ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, inner, &buf));
        if (flow != Flow::kNormal) return flow;  // the buffered body is dropped, as in Jinja2
        ASSIGN_OR_RETURN(Value v, ApplyFilters(s.filters, Value::String(std::move(buf)), scope));
        RETURN_IF_ERROR(Emit(v, s.line, out));
        return Flow::kNormal;
      }
      case StmtKind::kScope: {
        auto inner = std::make_shared<Scope>(scope);
        return ExecBody(s.body, inner, out);
      }
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> ExecFor(const Stmt& s, const ScopePtr& scope, std::string* out) {
    ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr, scope));
    ASSIGN_OR_RETURN(std::vector<Value> items, Located(s.expr->line, Iterate(iterable, *this)));
    if (s.condition != nullptr) {
      std::vector<Value> kept;
      for (Value& item : items) {
        auto inner = std::make_shared<Scope>(scope);
        RETURN_IF_ERROR(Assign(s.target, item, inner));
        ASSIGN_OR_RETURN(Value c, Eval(*s.condition, inner));
        if (Truthy(c)) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      auto inner = std::make_shared<Scope>(scope);
      return ExecBody(s.else_body, inner, out);
    }
    auto loop = std::make_shared<LoopState>();
    loop->items = std::make_shared<const std::vector<Value>>(std::move(items));
    Value loop_value = Value::Loop(loop);
    for (size_t i = 0; i < loop->items->size(); ++i) {
      RETURN_IF_ERROR(Located(s.line, Step()));
      loop->index0 = i;
      auto inner = std::make_shared<Scope>(scope);
      RETURN_IF_ERROR(Assign(s.target, (*loop->items)[i], inner));
      inner->Set("loop", loop_value);
      ASSIGN_OR_RETURN(Flow flow, ExecBody(s.body, inner, out));
      if (flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  absl::Status Assign(const Target& target, Value value, const ScopePtr& scope) {
    switch (target.kind) {
      case Target::Kind::kName:
        scope->Set(target.name, std::move(value));
        return absl::OkStatus();
      case Target::Kind::kTuple: {
        if (!value.is_string() && !value.is_sequence() && !value.is_dict() &&
            !value.is_undefined()) {
          return Located(target.line, TypeError(absl::StrCat("cannot unpack non-iterable ",
                                                             PyTypeName(value), " object")));
        }
        ASSIGN_OR_RETURN(std::vector<Value> items, Located(target.line, Iterate(value, *this)));
        const size_t want = target.items.size();
        if (items.size() < want) {
          return Located(target.line, absl::InvalidArgumentError(
                                          absl::StrCat("not enough values to unpack (expected ",
                                                       want, ", got ", items.size(), ")")));
        }
        if (items.size() > want) {
          return Located(target.line, absl::InvalidArgumentError(absl::StrCat(
                                          "too many values to unpack (expected ", want, ")")));
        }
        for (size_t i = 0; i < want; ++i) {
          RETURN_IF_ERROR(Assign(target.items[i], std::move(items[i]), scope));
        }
        return absl::OkStatus();
      }
      case Target::Kind::kNamespaceAttr: {
        const Value* ns = scope->Find(target.name);
        if (ns == nullptr || !ns->is_namespace()) {
          return Located(target.line, absl::InvalidArgumentError(
                                          "cannot assign attribute on non-namespace object"));
        }
        ns->ns().attrs.Set(target.attr, std::move(value));
        return absl::OkStatus();
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Value> ApplyFilters(const std::vector<ExprPtr>& filters, Value value,
                                     const ScopePtr& scope) {
    for (const auto& f : filters) {
      ASSIGN_OR_RETURN(CallArgs args, EvalArgs(*f, scope));
      ASSIGN_OR_RETURN(value, Located(f->line, f->filter(*this, value, args)));
    }
    return value;
  }

  // --- Expressions -----------------------------------------------------------------------------

  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, const ScopePtr& scope) {
    CallArgs args;
    for (const auto& item : e.items) {
      ASSIGN_OR_RETURN(Value v, Eval(*item, scope));
      args.positional.push_back(std::move(v));
    }
    for (const auto& [key, expr] : e.kwargs) {
      ASSIGN_OR_RETURN(Value v, Eval(*expr, scope));
      args.keyword.emplace_back(key, std::move(v));
    }
    return args;
  }

  Value Lookup(const std::string& name, const ScopePtr& scope) const {
    if (const Value* v = scope->Find(name)) return *v;
    if (const Value* g = FindGlobal(name)) return *g;
    if (IsUnsupportedGlobal(name)) {
      return Value::Undefined(absl::StrCat("the Jinja2 global '", name, "' is not supported"));
    }
    return Value::Undefined(absl::StrCat(PyRepr(name), " is undefined"));
  }

  absl::StatusOr<bool> CompareValues(CompareOp op, const Value& a, const Value& b) {
    switch (op) {
      case CompareOp::kEq:
        return Equals(a, b, *this);
      case CompareOp::kNe: {
        ASSIGN_OR_RETURN(bool eq, Equals(a, b, *this));
        return !eq;
      }
      case CompareOp::kLt: {
        ASSIGN_OR_RETURN(int c, Compare(a, b, "<", *this));
        return c < 0;
      }
      case CompareOp::kLe: {
        ASSIGN_OR_RETURN(int c, Compare(a, b, "<=", *this));
        return c <= 0;
      }
      case CompareOp::kGt: {
        ASSIGN_OR_RETURN(int c, Compare(a, b, ">", *this));
        return c > 0;
      }
      case CompareOp::kGe: {
        ASSIGN_OR_RETURN(int c, Compare(a, b, ">=", *this));
        return c >= 0;
      }
      case CompareOp::kIn:
        return Contains(*this, b, a);
      case CompareOp::kNotIn: {
        ASSIGN_OR_RETURN(bool in, Contains(*this, b, a));
        return !in;
      }
    }
    return false;
  }

  absl::StatusOr<Value> Eval(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case ExprKind::kConst:
        return e.value;
      case ExprKind::kName:
        if (fold_mode_) return NotConstant();
        return Lookup(e.name, scope);
      case ExprKind::kGetattr: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.a, scope));
        return Located(e.line, GetAttr(*this, obj, e.name));
      }
      case ExprKind::kGetitem: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.a, scope));
        ASSIGN_OR_RETURN(Value key, Eval(*e.b, scope));
        return Located(e.line, GetItem(*this, obj, key));
      }
      case ExprKind::kSlice: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.a, scope));
        Value parts[3] = {Value::None(), Value::None(), Value::None()};
        for (size_t i = 0; i < 3; ++i) {
          if (e.items[i] != nullptr) {
            ASSIGN_OR_RETURN(parts[i], Eval(*e.items[i], scope));
          }
        }
        auto sliced = GetSlice(*this, obj, parts[0], parts[1], parts[2]);
        if (!sliced.ok() && fold_mode_ && !obj.is_undefined() &&
            !absl::StrContains(sliced.status().message(), "slice step cannot be zero")) {
          return UndefinedElement(obj, Value::None(), *this);
        }
        return Located(e.line, std::move(sliced));
      }
      case ExprKind::kCall: {
        if (fold_mode_) return NotConstant();
        ASSIGN_OR_RETURN(Value callee, Eval(*e.a, scope));
        ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, scope));
        ASSIGN_OR_RETURN(Value v, Located(e.line, CallValue(*this, callee, std::move(args))));
        RETURN_IF_ERROR(CheckDepth(v, e.line));
        return v;
      }
      case ExprKind::kFilter: {
        if (fold_mode_ && (e.name == "map" || e.name == "select" || e.name == "reject" ||
                           e.name == "selectattr" || e.name == "rejectattr")) {
          return NotConstant();  // filters that take the template context are never folded
        }
        ASSIGN_OR_RETURN(Value input, Eval(*e.a, scope));
        ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, scope));
        ASSIGN_OR_RETURN(Value v, Located(e.line, e.filter(*this, input, args)));
        RETURN_IF_ERROR(CheckDepth(v, e.line));
        return v;
      }
      case ExprKind::kTest: {
        ASSIGN_OR_RETURN(Value input, Eval(*e.a, scope));
        ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, scope));
        ASSIGN_OR_RETURN(bool r, Located(e.line, e.test(*this, input, args)));
        return Value::Bool(r != e.negated);
      }
      case ExprKind::kNeg:
      case ExprKind::kPos: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a, scope));
        const bool neg = e.kind == ExprKind::kNeg;
        if (v.is_integral()) {
          if (!neg) return Value::Int(v.as_int());
          if (v.as_int() == INT64_MIN) {
            return Located(e.line, absl::InvalidArgumentError("integer overflow"));
          }
          return Value::Int(-v.as_int());
        }
        if (v.is_float()) return Value::Float(neg ? -v.as_double() : v.as_double());
        if (v.is_undefined()) return Located(e.line, UndefinedError(v));
        return Located(e.line, TypeError(absl::StrCat("bad operand type for unary ",
                                                      neg ? "-" : "+", ": '", PyTypeName(v), "'")));
      }
      case ExprKind::kNot: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.a, scope));
        return Value::Bool(!Truthy(v));
      }
      case ExprKind::kBinary: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.a, scope));
        ASSIGN_OR_RETURN(Value b, Eval(*e.b, scope));
        ASSIGN_OR_RETURN(Value v, Located(e.line, BinaryArith(e.op, a, b, *this)));
        return v;
      }
      case ExprKind::kAnd: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.a, scope));
        if (!Truthy(a)) return a;
        return Eval(*e.b, scope);
      }
      case ExprKind::kOr: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.a, scope));
        if (Truthy(a)) return a;
        return Eval(*e.b, scope);
      }
      case ExprKind::kCompare: {
        ASSIGN_OR_RETURN(Value left, Eval(*e.items[0], scope));
        for (size_t i = 0; i < e.compare_ops.size(); ++i) {
          ASSIGN_OR_RETURN(Value right, Eval(*e.items[i + 1], scope));
          ASSIGN_OR_RETURN(
              bool r, Located(e.items[i + 1]->line, CompareValues(e.compare_ops[i], left, right)));
          if (!r) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case ExprKind::kCondExpr: {
        ASSIGN_OR_RETURN(Value cond, Eval(*e.b, scope));
        if (Truthy(cond)) return Eval(*e.a, scope);
        if (e.c != nullptr) return Eval(*e.c, scope);
        if (fold_mode_) return NotConstant();
        return Value::Undefined(absl::StrCat("the inline if-expression on line ", e.line,
                                             " evaluated to false and no else section was "
                                             "defined."));
      }
      case ExprKind::kConcat: {
        // Python evaluates every operand before converting any to a string.
        std::vector<Value> values;
        for (const auto& item : e.items) {
          ASSIGN_OR_RETURN(Value v, Eval(*item, scope));
          values.push_back(std::move(v));
        }
        std::string s;
        for (size_t i = 0; i < values.size(); ++i) {
          RETURN_IF_ERROR(Emit(values[i], e.items[i]->line, &s));
        }
        return Value::String(std::move(s));
      }
      case ExprKind::kList:
      case ExprKind::kTuple: {
        std::vector<Value> items;
        items.reserve(e.items.size());
        for (const auto& item : e.items) {
          ASSIGN_OR_RETURN(Value v, Eval(*item, scope));
          items.push_back(std::move(v));
        }
        Value v = e.kind == ExprKind::kList ? Value::List(std::move(items))
                                            : Value::Tuple(std::move(items));
        RETURN_IF_ERROR(CheckDepth(v, e.line));
        return v;
      }
      case ExprKind::kDict: {
        Dict dict;
        for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
          ASSIGN_OR_RETURN(Value key, Eval(*e.items[i], scope));
          ASSIGN_OR_RETURN(Value value, Eval(*e.items[i + 1], scope));
          if (!key.is_string()) {
            return Located(
                e.items[i]->line,
                absl::InvalidArgumentError(absl::StrCat(
                    "dict keys other than strings are not supported (got ", PyTypeName(key), ")")));
          }
          dict.Set(key.str(), std::move(value));
        }
        Value v = Value::MakeDict(std::move(dict));
        RETURN_IF_ERROR(CheckDepth(v, e.line));
        return v;
      }
    }
    return Value();
  }

  const Template& tmpl_;
  bool fold_mode_ = false;
  const int max_call_depth_;
  int call_depth_ = 0;
  std::vector<ScopePtr> captured_scopes_;
};

absl::StatusOr<Value> Macro::Call(RenderContext& ctx, CallArgs args) const {
  (void)ctx;
  return interp_->CallMacro(*this, std::move(args));
}

absl::StatusOr<Value> Interpreter::CallMacro(const Macro& macro, CallArgs args) {
  const Stmt& def = macro.def();
  if (call_depth_ >= max_call_depth_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("macro calls nested deeper than ", max_call_depth_, " levels"));
  }
  RETURN_IF_ERROR(Step());
  auto scope = std::make_shared<Scope>(macro.closure());
  const size_t n = def.params.size();
  std::vector<bool> given(n, false);
  if (args.positional.size() > n && !def.uses_varargs) {
    return TypeError(
        absl::StrCat("macro ", PyRepr(def.name), " takes not more than ", n, " argument(s)"));
  }
  for (size_t i = 0; i < args.positional.size() && i < n; ++i) {
    scope->Set(def.params[i], args.positional[i]);
    given[i] = true;
  }
  Dict extra_kwargs;
  for (auto& [key, value] : args.keyword) {
    size_t i = 0;
    while (i < n && def.params[i] != key) ++i;
    if (i < n && !given[i]) {
      scope->Set(key, std::move(value));
      given[i] = true;
    } else if (def.uses_kwargs) {
      // Like Jinja2, a keyword naming a parameter already passed positionally is an extra kwarg.
      extra_kwargs.Set(key, std::move(value));
    } else {
      return TypeError(
          absl::StrCat("macro ", PyRepr(def.name), " takes no keyword argument ", PyRepr(key)));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (given[i]) continue;
    if (def.defaults[i] != nullptr) {
      ASSIGN_OR_RETURN(Value v, Eval(*def.defaults[i], scope));
      scope->Set(def.params[i], std::move(v));
    } else {
      scope->Set(def.params[i], Value::Undefined(absl::StrCat("parameter ", PyRepr(def.params[i]),
                                                              " was not provided")));
    }
  }
  if (def.uses_varargs) {
    std::vector<Value> rest;
    for (size_t i = n; i < args.positional.size(); ++i) rest.push_back(args.positional[i]);
    scope->Set("varargs", Value::Tuple(std::move(rest)));
  }
  if (def.uses_kwargs) scope->Set("kwargs", Value::MakeDict(std::move(extra_kwargs)));
  std::string buf;
  ++call_depth_;
  auto flow = ExecBody(def.body, scope, &buf);
  --call_depth_;
  if (!flow.ok()) return flow.status();
  return Value::String(std::move(buf));
}

// jinja2.utils.has_safe_repr: values that can become a compile-time constant.
bool HasSafeRepr(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kNone:
    case ValueKind::kBool:
    case ValueKind::kInt:
    case ValueKind::kFloat:
    case ValueKind::kString:
      return true;
    case ValueKind::kSequence:
      if (!v.is_list_or_tuple() && !v.is_seq(SeqKind::kRange)) return false;
      for (const Value& item : v.seq().items) {
        if (!HasSafeRepr(item)) return false;
      }
      return true;
    case ValueKind::kDict:
      for (const auto& [k, item] : v.dict().items()) {
        if (!HasSafeRepr(item)) return false;
      }
      return true;
    default:
      return false;
  }
}

class Folder {
 public:
  explicit Folder(const Template& tmpl)
      : tmpl_(tmpl),
        options_{[] { return absl::UnixEpoch(); }, absl::UTCTimeZone(), 1 << 20, 100000, 8} {}

  // Replaces each maximal sub-expression that evaluates at compile time to a value with a safe
  // repr by a constant (children first, as Jinja2's optimizer does).
  void FoldExpr(ExprPtr* slot) {
    Expr* e = slot->get();
    if (e == nullptr) return;
    FoldExpr(&e->a);
    FoldExpr(&e->b);
    FoldExpr(&e->c);
    for (auto& item : e->items) FoldExpr(&item);
    for (auto& kw : e->kwargs) FoldExpr(&kw.second);
    if (e->kind == ExprKind::kConst) return;
    absl::StatusOr<Value> v = Evaluate(*e);
    if (!v.ok() || !HasSafeRepr(*v)) return;
    auto folded = std::make_unique<Expr>();
    folded->kind = ExprKind::kConst;
    folded->line = e->line;
    folded->column = e->column;
    folded->value = std::move(*v);
    *slot = std::move(folded);
  }

  absl::StatusOr<Value> Evaluate(const Expr& e) {
    Interpreter interp(tmpl_, options_);
    return interp.EvalConstant(e);
  }

  void FoldBody(Body* body) {
    for (auto& stmt : *body) {
      Stmt& s = *stmt;
      FoldExpr(&s.expr);
      FoldExpr(&s.condition);
      for (auto& [cond, branch] : s.branches) {
        FoldExpr(&cond);
        FoldBody(&branch);
      }
      FoldBody(&s.body);
      FoldBody(&s.else_body);
      for (auto& f : s.filters) {
        for (auto& item : f->items) FoldExpr(&item);
        for (auto& kw : f->kwargs) FoldExpr(&kw.second);
      }
      for (auto& d : s.defaults) FoldExpr(&d);
      for (auto& [target, value] : s.assignments) FoldExpr(&value);
      // A constant {{ }} is printed at compile time, even when it is an undefined.
      if (s.kind == StmtKind::kPrint && s.expr->kind != ExprKind::kConst) {
        absl::StatusOr<Value> v = Evaluate(*s.expr);
        if (v.ok()) {
          Interpreter interp(tmpl_, options_);
          absl::StatusOr<std::string> text = ToStr(*v, interp);
          if (text.ok()) {
            s.kind = StmtKind::kData;
            s.text = std::move(*text);
            s.expr.reset();
          }
        }
      }
    }
  }

 private:
  const Template& tmpl_;
  RenderOptions options_;
};

}  // namespace

void FoldConstants(Template* tmpl) {
  Folder folder(*tmpl);
  folder.FoldBody(&tmpl->body);
}

absl::StatusOr<std::string> RenderTemplate(const Template& tmpl,
                                           const nlohmann::ordered_json& context,
                                           const RenderOptions& options) {
  Interpreter interp(tmpl, options);
  return interp.Render(context);
}

}  // namespace shardserve::jinja
