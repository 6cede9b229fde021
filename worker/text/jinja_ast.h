// Syntax tree of a parsed chat template (see jinja_parser.h). Immutable after parsing, so one
// tree serves concurrent renders.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_AST_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_AST_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "worker/text/jinja_builtins.h"
#include "worker/text/jinja_value.h"

namespace shardserve::jinja {

enum class ExprKind : uint8_t {
  kConst,     // value
  kName,      // name
  kGetattr,   // a.name
  kGetitem,   // a[b]
  kSlice,     // a[items[0]:items[1]:items[2]] (null parts are missing)
  kCall,      // a(items..., kwargs...)
  kFilter,    // a | name(items..., kwargs...); a is null inside {% filter %} / {% set %} blocks
  kTest,      // a is [not] name(items..., kwargs...)
  kNeg,       // -a
  kPos,       // +a
  kNot,       // not a
  kBinary,    // a op b
  kAnd,       // a and b
  kOr,        // a or b
  kCompare,   // items[0] compare_ops[0] items[1] compare_ops[1] items[2] ...
  kCondExpr,  // a if b else c (c may be null)
  kConcat,    // items[0] ~ items[1] ~ ...
  kList,      // [items...]
  kTuple,     // (items...)
  kDict,      // {items[0]: items[1], items[2]: items[3], ...}
};

enum class CompareOp : uint8_t { kEq, kNe, kLt, kLe, kGt, kGe, kIn, kNotIn };

struct Expr {
  ExprKind kind = ExprKind::kConst;
  int line = 0;
  int column = 0;
  Value value;
  std::string name;
  BinaryOp op = BinaryOp::kAdd;
  std::unique_ptr<Expr> a, b, c;
  std::vector<std::unique_ptr<Expr>> items;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<CompareOp> compare_ops;
  FilterFn filter = nullptr;
  TestFn test = nullptr;
  bool negated = false;  // kTest: "is not"
};
using ExprPtr = std::unique_ptr<Expr>;

// Left-hand side of set/for/with.
struct Target {
  enum class Kind { kName, kTuple, kNamespaceAttr };
  Kind kind = Kind::kName;
  std::string name;           // kName; the namespace variable for kNamespaceAttr
  std::string attr;           // kNamespaceAttr
  std::vector<Target> items;  // kTuple
  int line = 0;
  int column = 0;
};

enum class StmtKind : uint8_t {
  kData,      // text
  kPrint,     // {{ expr }}
  kIf,        // branches, else_body
  kFor,       // for target in expr [if cond] body [else else_body]
  kSet,       // set target = expr
  kSetBlock,  // set target [| filters] body endset
  kMacro,     // macro name(params) body
  kBreak,
  kContinue,
  kWith,         // with assignments body
  kFilterBlock,  // filter filters body
  kScope,        // {% generation %} body (transformers' assistant-mask marker)
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  StmtKind kind = StmtKind::kData;
  int line = 0;
  int column = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr condition;  // kFor: the "if" filter
  Target target;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<ExprPtr> filters;
  // kMacro
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when it has none
  bool uses_varargs = false;
  bool uses_kwargs = false;
  // kWith
  std::vector<std::pair<Target, ExprPtr>> assignments;
};

struct Template {
  std::string what;  // names the template in errors
  Body body;
};

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_AST_H_
