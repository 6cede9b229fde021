#include "worker/text/jinja_parser.h"

#include <initializer_list>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/text/jinja_lexer.h"

namespace shardserve::jinja {
namespace {

// Deepest nesting of expressions and blocks accepted (keeps recursion bounded).
constexpr int kMaxNesting = 150;

// Tags that Jinja2 (or an extension) defines but this interpreter does not.
const std::set<std::string>& UnsupportedTags() {
  static const auto* tags = new std::set<std::string>{
      "block", "extends",   "include", "import",   "from",    "call",          "autoescape", "do",
      "trans", "pluralize", "debug",   "endblock", "endcall", "endautoescape", "endtrans"};
  return *tags;
}

class Parser {
 public:
  Parser(std::vector<Token> tokens, absl::string_view what)
      : tokens_(std::move(tokens)), what_(what) {}

  absl::StatusOr<std::unique_ptr<Template>> Run() {
    auto tmpl = std::make_unique<Template>();
    tmpl->what = what_;
    ASSIGN_OR_RETURN(tmpl->body, Subparse({}));
    if (Cur().type != TokenType::kEof) return Error(Cur(), "unexpected tag");
    return tmpl;
  }

 private:
  // --- Token stream ----------------------------------------------------------------------------

  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  const Token& Next() {
    const Token& t = tokens_[pos_];
    if (pos_ + 1 < tokens_.size()) ++pos_;
    return t;
  }
  bool IsOp(const Token& t, absl::string_view op) const {
    return t.type == TokenType::kOperator && t.value == op;
  }
  bool IsName(const Token& t, absl::string_view name) const {
    return t.type == TokenType::kName && t.value == name;
  }
  bool SkipOp(absl::string_view op) {
    if (!IsOp(Cur(), op)) return false;
    Next();
    return true;
  }
  bool SkipName(absl::string_view name) {
    if (!IsName(Cur(), name)) return false;
    Next();
    return true;
  }

  absl::Status Error(const Token& t, absl::string_view message) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, " line ", t.line, " column ", t.column, ": ", message));
  }
  absl::Status Expected(absl::string_view what) const {
    return Error(Cur(), absl::StrCat("expected ", what, ", got ", DescribeToken(Cur())));
  }
  absl::Status ExpectOp(absl::string_view op) {
    if (!SkipOp(op)) return Expected(absl::StrCat("'", op, "'"));
    return absl::OkStatus();
  }
  absl::StatusOr<Token> ExpectName() {
    if (Cur().type != TokenType::kName) return Expected("a name");
    return Next();
  }
  absl::Status ExpectBlockEnd() {
    if (Cur().type != TokenType::kBlockEnd) {
      return Error(Cur(),
                   absl::StrCat("expected end of statement '%}', got ", DescribeToken(Cur())));
    }
    Next();
    return absl::OkStatus();
  }

  // Bounds recursion depth.
  class NestingGuard {
   public:
    explicit NestingGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~NestingGuard() { --*depth_; }
    bool ok() const { return *depth_ <= kMaxNesting; }

   private:
    int* depth_;
  };
  absl::Status TooDeep(const Token& t) const {
    return Error(t, absl::StrCat("template nested more than ", kMaxNesting, " levels deep"));
  }

  template <typename T>
  std::unique_ptr<T> Make(const Token& at) {
    auto node = std::make_unique<T>();
    node->line = at.line;
    node->column = at.column;
    return node;
  }
  ExprPtr MakeExpr(ExprKind kind, const Token& at) {
    auto e = Make<Expr>(at);
    e->kind = kind;
    return e;
  }

  // --- Statements ------------------------------------------------------------------------------

  // Parses until EOF or a block whose first name is in `end_names` (left as the current token).
  absl::StatusOr<Body> Subparse(const std::vector<std::string>& end_names) {
    NestingGuard guard(&nesting_);
    if (!guard.ok()) return TooDeep(Cur());
    end_stack_.push_back(end_names);
    Body body;
    while (true) {
      const Token& t = Cur();
      if (t.type == TokenType::kEof) break;
      if (t.type == TokenType::kData) {
        auto s = Make<Stmt>(t);
        s->kind = StmtKind::kData;
        s->text = t.value;
        body.push_back(std::move(s));
        Next();
        continue;
      }
      if (t.type == TokenType::kVariableBegin) {
        Next();
        auto s = Make<Stmt>(t);
        s->kind = StmtKind::kPrint;
        ASSIGN_OR_RETURN(s->expr, ParseTuple(false, true, {}, false));
        if (Cur().type != TokenType::kVariableEnd) {
          return Error(Cur(), absl::StrCat("expected end of print statement '}}', got ",
                                           DescribeToken(Cur())));
        }
        Next();
        body.push_back(std::move(s));
        continue;
      }
      if (t.type == TokenType::kBlockBegin) {
        Next();
        if (Cur().type == TokenType::kName) {
          for (const std::string& end : end_names) {
            if (Cur().value == end) {
              end_stack_.pop_back();
              return body;
            }
          }
        }
        ASSIGN_OR_RETURN(auto stmt, ParseStatement());
        if (stmt != nullptr) body.push_back(std::move(stmt));
        RETURN_IF_ERROR(ExpectBlockEnd());
        continue;
      }
      return Error(t, absl::StrCat("unexpected ", DescribeToken(t)));
    }
    if (!end_names.empty()) {
      return Error(Cur(), absl::StrCat("unexpected end of template: expected ",
                                       QuoteNames(end_names), " to close the '",
                                       open_blocks_.empty() ? "" : open_blocks_.back().first,
                                       "' block opened on line ",
                                       open_blocks_.empty() ? 0 : open_blocks_.back().second));
    }
    end_stack_.pop_back();
    return body;
  }

  static std::string QuoteNames(const std::vector<std::string>& names) {
    std::vector<std::string> quoted;
    for (const auto& n : names) quoted.push_back(absl::StrCat("'", n, "'"));
    return absl::StrJoin(quoted, " or ");
  }

  // Jinja2's parse_statements: consumes "%}", parses the body up to one of `end_names` and, with
  // `drop_needle`, the end name itself.
  absl::StatusOr<Body> ParseStatements(const std::vector<std::string>& end_names,
                                       bool drop_needle) {
    RETURN_IF_ERROR(ExpectBlockEnd());
    ASSIGN_OR_RETURN(Body body, Subparse(end_names));
    if (drop_needle) Next();
    return body;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseStatement() {
    const Token& t = Cur();
    if (t.type != TokenType::kName) return Error(t, "expected a tag name after '{%'");
    const std::string name = t.value;
    if (name == "for") return ParseFor();
    if (name == "if") return ParseIf();
    if (name == "set") return ParseSet();
    if (name == "macro") return ParseMacro();
    if (name == "with") return ParseWith();
    if (name == "filter") return ParseFilterBlock();
    if (name == "generation") return ParseGeneration();
    if (name == "print") {
      auto s = Make<Stmt>(Next());
      s->kind = StmtKind::kPrint;
      ASSIGN_OR_RETURN(s->expr, ParseTuple(false, true, {}, false));
      return s;
    }
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) {
        return Error(t, absl::StrCat("'", name, "' outside of a for loop"));
      }
      auto s = Make<Stmt>(Next());
      s->kind = name == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      return s;
    }
    if (UnsupportedTags().count(name) > 0) {
      return Error(t, absl::StrCat("unsupported tag '", name, "'"));
    }
    // An end tag that does not close the innermost block, or an unknown tag.
    const bool looks_like_end = name.rfind("end", 0) == 0 || name == "else" || name == "elif";
    if (looks_like_end) {
      if (end_stack_.empty() || end_stack_.back().empty()) {
        return Error(t, absl::StrCat("unexpected tag '", name, "' (no open block)"));
      }
      return Error(t, absl::StrCat("unexpected tag '", name, "' (expected ",
                                   QuoteNames(end_stack_.back()), ")"));
    }
    return Error(t, absl::StrCat("unknown tag '", name, "'"));
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseFor() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kFor;
    ASSIGN_OR_RETURN(s->target, ParseAssignTarget(/*with_namespace=*/false, {"in"}));
    if (!SkipName("in")) return Expected("'in'");
    ASSIGN_OR_RETURN(s->expr, ParseTuple(false, false, {"recursive"}, false));
    if (SkipName("if")) {
      ASSIGN_OR_RETURN(s->condition, ParseExpression(true));
    }
    if (IsName(Cur(), "recursive")) return Error(Cur(), "unsupported: recursive for loops");
    open_blocks_.emplace_back("for", s->line);
    ++loop_depth_;
    auto body = ParseStatements({"endfor", "else"}, false);
    --loop_depth_;
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    if (Next().value == "else") {
      ASSIGN_OR_RETURN(s->else_body, ParseStatements({"endfor"}, true));
    }
    open_blocks_.pop_back();
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseIf() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kIf;
    open_blocks_.emplace_back("if", s->line);
    while (true) {
      ASSIGN_OR_RETURN(ExprPtr cond, ParseTuple(false, false, {}, false));
      ASSIGN_OR_RETURN(Body body, ParseStatements({"elif", "else", "endif"}, false));
      s->branches.emplace_back(std::move(cond), std::move(body));
      const std::string end = Next().value;
      if (end == "elif") continue;
      if (end == "else") {
        ASSIGN_OR_RETURN(s->else_body, ParseStatements({"endif"}, true));
      }
      break;
    }
    open_blocks_.pop_back();
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseSet() {
    auto s = Make<Stmt>(Next());
    ASSIGN_OR_RETURN(s->target, ParseAssignTarget(/*with_namespace=*/true, {}));
    if (SkipOp("=")) {
      s->kind = StmtKind::kSet;
      ASSIGN_OR_RETURN(s->expr, ParseTuple(false, true, {}, false));
      return s;
    }
    s->kind = StmtKind::kSetBlock;
    if (IsOp(Cur(), "|")) {
      ASSIGN_OR_RETURN(s->filters, ParseFilterChain(false));
    }
    open_blocks_.emplace_back("set", s->line);
    ASSIGN_OR_RETURN(s->body, ParseStatements({"endset"}, true));
    open_blocks_.pop_back();
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseMacro() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kMacro;
    ASSIGN_OR_RETURN(Token name, ExpectName());
    s->name = name.value;
    RETURN_IF_ERROR(ExpectOp("("));
    while (!IsOp(Cur(), ")")) {
      if (!s->params.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(Cur(), ")")) break;
      ASSIGN_OR_RETURN(Token param, ExpectName());
      s->params.push_back(param.value);
      if (SkipOp("=")) {
        ASSIGN_OR_RETURN(ExprPtr def, ParseExpression(true));
        s->defaults.push_back(std::move(def));
      } else {
        for (const auto& d : s->defaults) {
          if (d != nullptr) return Error(param, "non-default argument follows default argument");
        }
        s->defaults.push_back(nullptr);
      }
    }
    RETURN_IF_ERROR(ExpectOp(")"));
    // Macro bodies are their own scope for break/continue.
    int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    std::set<std::string> names;
    macro_names_.push_back(&names);
    open_blocks_.emplace_back("macro", s->line);
    auto body = ParseStatements({"endmacro"}, true);
    open_blocks_.pop_back();
    macro_names_.pop_back();
    loop_depth_ = saved_loop_depth;
    if (!body.ok()) return body.status();
    s->body = std::move(*body);
    s->uses_varargs = names.count("varargs") > 0;
    s->uses_kwargs = names.count("kwargs") > 0;
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseWith() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kWith;
    while (Cur().type != TokenType::kBlockEnd) {
      if (!s->assignments.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(Target target, ParseAssignTarget(false, {}));
      RETURN_IF_ERROR(ExpectOp("="));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      s->assignments.emplace_back(std::move(target), std::move(value));
    }
    open_blocks_.emplace_back("with", s->line);
    ASSIGN_OR_RETURN(s->body, ParseStatements({"endwith"}, true));
    open_blocks_.pop_back();
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseFilterBlock() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kFilterBlock;
    ASSIGN_OR_RETURN(s->filters, ParseFilterChain(true));
    open_blocks_.emplace_back("filter", s->line);
    ASSIGN_OR_RETURN(s->body, ParseStatements({"endfilter"}, true));
    open_blocks_.pop_back();
    return s;
  }

  absl::StatusOr<std::unique_ptr<Stmt>> ParseGeneration() {
    auto s = Make<Stmt>(Next());
    s->kind = StmtKind::kScope;
    open_blocks_.emplace_back("generation", s->line);
    ASSIGN_OR_RETURN(s->body, ParseStatements({"endgeneration"}, true));
    open_blocks_.pop_back();
    return s;
  }

  // parse_assign_target: a name, a (possibly parenthesised) tuple of names, or with
  // `with_namespace` a namespace attribute "ns.attr".
  absl::StatusOr<Target> ParseAssignTarget(bool with_namespace,
                                           const std::vector<std::string>& extra_end_rules) {
    if (with_namespace && Cur().type == TokenType::kName && IsOp(Look(), ".")) {
      Target t;
      t.kind = Target::Kind::kNamespaceAttr;
      t.line = Cur().line;
      t.column = Cur().column;
      t.name = Next().value;
      Next();  // '.'
      ASSIGN_OR_RETURN(Token attr, ExpectName());
      t.attr = attr.value;
      return t;
    }
    const Token start = Cur();
    ASSIGN_OR_RETURN(ExprPtr e, ParseTuple(/*simplified=*/true, true, extra_end_rules, false));
    return ToTarget(*e, start);
  }

  absl::StatusOr<Target> ToTarget(const Expr& e, const Token& at) {
    Target t;
    t.line = e.line;
    t.column = e.column;
    if (e.kind == ExprKind::kName) {
      t.kind = Target::Kind::kName;
      t.name = e.name;
      return t;
    }
    if (e.kind == ExprKind::kTuple) {
      t.kind = Target::Kind::kTuple;
      for (const auto& item : e.items) {
        ASSIGN_OR_RETURN(Target sub, ToTarget(*item, at));
        t.items.push_back(std::move(sub));
      }
      return t;
    }
    return Error(at, "can't assign to this expression (expected a name or a tuple of names)");
  }

  // --- Expressions -----------------------------------------------------------------------------

  absl::StatusOr<ExprPtr> ParseExpression(bool with_condexpr) {
    if (with_condexpr) return ParseCondExpr();
    return ParseOr();
  }

  absl::StatusOr<ExprPtr> ParseCondExpr() {
    const Token start = Cur();
    ASSIGN_OR_RETURN(ExprPtr expr1, ParseOr());
    while (IsName(Cur(), "if")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr expr2, ParseOr());
      ExprPtr expr3;
      if (SkipName("else")) {
        NestingGuard guard(&nesting_);
        if (!guard.ok()) return TooDeep(Cur());
        ASSIGN_OR_RETURN(expr3, ParseCondExpr());
      }
      auto e = MakeExpr(ExprKind::kCondExpr, t);
      e->a = std::move(expr1);
      e->b = std::move(expr2);
      e->c = std::move(expr3);
      expr1 = std::move(e);
    }
    return expr1;
  }

  absl::StatusOr<ExprPtr> ParseOr() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseAnd());
    while (IsName(Cur(), "or")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseAnd());
      auto e = MakeExpr(ExprKind::kOr, t);
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseAnd() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseNot());
    while (IsName(Cur(), "and")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseNot());
      auto e = MakeExpr(ExprKind::kAnd, t);
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (IsName(Cur(), "not")) {
      const Token t = Next();
      NestingGuard guard(&nesting_);
      if (!guard.ok()) return TooDeep(t);
      auto e = MakeExpr(ExprKind::kNot, t);
      ASSIGN_OR_RETURN(e->a, ParseNot());
      return e;
    }
    return ParseCompare();
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    const Token start = Cur();
    ASSIGN_OR_RETURN(ExprPtr expr, ParseMath1());
    ExprPtr cmp;
    while (true) {
      CompareOp op;
      const Token t = Cur();
      if (t.type == TokenType::kOperator &&
          (t.value == "==" || t.value == "!=" || t.value == "<" || t.value == "<=" ||
           t.value == ">" || t.value == ">=")) {
        op = t.value == "=="   ? CompareOp::kEq
             : t.value == "!=" ? CompareOp::kNe
             : t.value == "<"  ? CompareOp::kLt
             : t.value == "<=" ? CompareOp::kLe
             : t.value == ">"  ? CompareOp::kGt
                               : CompareOp::kGe;
        Next();
      } else if (IsName(t, "in")) {
        op = CompareOp::kIn;
        Next();
      } else if (IsName(t, "not") && IsName(Look(), "in")) {
        op = CompareOp::kNotIn;
        Next();
        Next();
      } else {
        break;
      }
      if (cmp == nullptr) {
        cmp = MakeExpr(ExprKind::kCompare, start);
        cmp->items.push_back(std::move(expr));
      }
      cmp->compare_ops.push_back(op);
      ASSIGN_OR_RETURN(ExprPtr right, ParseMath1());
      cmp->items.push_back(std::move(right));
    }
    if (cmp != nullptr) return cmp;
    return expr;
  }

  absl::StatusOr<ExprPtr> ParseMath1() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseConcat());
    while (IsOp(Cur(), "+") || IsOp(Cur(), "-")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseConcat());
      auto e = MakeExpr(ExprKind::kBinary, t);
      e->op = t.value == "+" ? BinaryOp::kAdd : BinaryOp::kSub;
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseConcat() {
    const Token start = Cur();
    ASSIGN_OR_RETURN(ExprPtr first, ParseMath2());
    if (!IsOp(Cur(), "~")) return first;
    auto e = MakeExpr(ExprKind::kConcat, start);
    e->items.push_back(std::move(first));
    while (SkipOp("~")) {
      ASSIGN_OR_RETURN(ExprPtr next, ParseMath2());
      e->items.push_back(std::move(next));
    }
    return e;
  }

  absl::StatusOr<ExprPtr> ParseMath2() {
    ASSIGN_OR_RETURN(ExprPtr left, ParsePow());
    while (IsOp(Cur(), "*") || IsOp(Cur(), "/") || IsOp(Cur(), "//") || IsOp(Cur(), "%")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr right, ParsePow());
      auto e = MakeExpr(ExprKind::kBinary, t);
      e->op = t.value == "*"    ? BinaryOp::kMul
              : t.value == "/"  ? BinaryOp::kDiv
              : t.value == "//" ? BinaryOp::kFloorDiv
                                : BinaryOp::kMod;
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParsePow() {
    ASSIGN_OR_RETURN(ExprPtr left, ParseUnary(true));
    while (IsOp(Cur(), "**")) {
      const Token t = Next();
      ASSIGN_OR_RETURN(ExprPtr right, ParseUnary(true));
      auto e = MakeExpr(ExprKind::kBinary, t);
      e->op = BinaryOp::kPow;
      e->a = std::move(left);
      e->b = std::move(right);
      left = std::move(e);
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filter) {
    NestingGuard guard(&nesting_);
    if (!guard.ok()) return TooDeep(Cur());
    ExprPtr node;
    if (IsOp(Cur(), "-") || IsOp(Cur(), "+")) {
      const Token t = Next();
      node = MakeExpr(t.value == "-" ? ExprKind::kNeg : ExprKind::kPos, t);
      ASSIGN_OR_RETURN(node->a, ParseUnary(false));
    } else {
      ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
    }
    return node;
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token t = Cur();
    switch (t.type) {
      case TokenType::kName: {
        Next();
        if (t.value == "true" || t.value == "True" || t.value == "false" || t.value == "False") {
          auto e = MakeExpr(ExprKind::kConst, t);
          e->value = Value::Bool(t.value == "true" || t.value == "True");
          return e;
        }
        if (t.value == "none" || t.value == "None") {
          auto e = MakeExpr(ExprKind::kConst, t);
          e->value = Value::None();
          return e;
        }
        auto e = MakeExpr(ExprKind::kName, t);
        e->name = t.value;
        for (auto* sink : macro_names_) sink->insert(t.value);
        return e;
      }
      case TokenType::kString: {
        std::string s;
        while (Cur().type == TokenType::kString) s += Next().value;
        auto e = MakeExpr(ExprKind::kConst, t);
        e->value = Value::String(std::move(s));
        return e;
      }
      case TokenType::kInteger: {
        Next();
        auto e = MakeExpr(ExprKind::kConst, t);
        e->value = Value::Int(t.int_value);
        return e;
      }
      case TokenType::kFloat: {
        Next();
        auto e = MakeExpr(ExprKind::kConst, t);
        e->value = Value::Float(t.float_value);
        return e;
      }
      case TokenType::kOperator:
        if (t.value == "(") {
          Next();
          ASSIGN_OR_RETURN(ExprPtr e, ParseTuple(false, true, {}, true));
          RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (t.value == "[") return ParseList();
        if (t.value == "{") return ParseDict();
        break;
      default:
        break;
    }
    return Error(t, absl::StrCat("unexpected ", DescribeToken(t), " in expression"));
  }

  // parse_tuple. `simplified`: elements are primaries (assignment targets).
  absl::StatusOr<ExprPtr> ParseTuple(bool simplified, bool with_condexpr,
                                     const std::vector<std::string>& extra_end_rules,
                                     bool explicit_parentheses) {
    const Token start = Cur();
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsTupleEnd(extra_end_rules)) break;
      ExprPtr item;
      if (simplified) {
        ASSIGN_OR_RETURN(item, ParsePrimary());
      } else {
        ASSIGN_OR_RETURN(item, ParseExpression(with_condexpr));
      }
      args.push_back(std::move(item));
      if (IsOp(Cur(), ",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parentheses) {
        return Error(Cur(), absl::StrCat("expected an expression, got ", DescribeToken(Cur())));
      }
    }
    auto e = MakeExpr(ExprKind::kTuple, start);
    e->items = std::move(args);
    return e;
  }

  bool IsTupleEnd(const std::vector<std::string>& extra_end_rules) const {
    const Token& t = Cur();
    if (t.type == TokenType::kVariableEnd || t.type == TokenType::kBlockEnd || IsOp(t, ")")) {
      return true;
    }
    for (const std::string& name : extra_end_rules) {
      if (IsName(t, name)) return true;
    }
    return false;
  }

  absl::StatusOr<ExprPtr> ParseList() {
    auto e = MakeExpr(ExprKind::kList, Next());
    while (!IsOp(Cur(), "]")) {
      if (!e->items.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(Cur(), "]")) break;
      ASSIGN_OR_RETURN(ExprPtr item, ParseExpression(true));
      e->items.push_back(std::move(item));
    }
    RETURN_IF_ERROR(ExpectOp("]"));
    return e;
  }

  absl::StatusOr<ExprPtr> ParseDict() {
    auto e = MakeExpr(ExprKind::kDict, Next());
    while (!IsOp(Cur(), "}")) {
      if (!e->items.empty()) RETURN_IF_ERROR(ExpectOp(","));
      if (IsOp(Cur(), "}")) break;
      ASSIGN_OR_RETURN(ExprPtr key, ParseExpression(true));
      RETURN_IF_ERROR(ExpectOp(":"));
      ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
      e->items.push_back(std::move(key));
      e->items.push_back(std::move(value));
    }
    RETURN_IF_ERROR(ExpectOp("}"));
    return e;
  }

  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(Cur(), ".") || IsOp(Cur(), "[")) {
        ASSIGN_OR_RETURN(node, ParseSubscript(std::move(node)));
      } else if (IsOp(Cur(), "(")) {
        ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp(Cur(), "|")) {
        ASSIGN_OR_RETURN(std::vector<ExprPtr> chain, ParseFilterChain(false));
        for (auto& f : chain) {
          f->a = std::move(node);
          node = std::move(f);
        }
      } else if (IsName(Cur(), "is")) {
        ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
      } else if (IsOp(Cur(), "(")) {
        ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseSubscript(ExprPtr node) {
    const Token t = Next();
    if (t.value == ".") {
      const Token attr = Cur();
      if (attr.type == TokenType::kName) {
        Next();
        auto e = MakeExpr(ExprKind::kGetattr, t);
        e->a = std::move(node);
        e->name = attr.value;
        return e;
      }
      if (attr.type == TokenType::kInteger) {
        Next();
        auto e = MakeExpr(ExprKind::kGetitem, t);
        e->a = std::move(node);
        e->b = MakeExpr(ExprKind::kConst, attr);
        e->b->value = Value::Int(attr.int_value);
        return e;
      }
      return Error(attr,
                   absl::StrCat("expected a name or number after '.', got ", DescribeToken(attr)));
    }
    // '['
    std::vector<ExprPtr> args;
    while (!IsOp(Cur(), "]")) {
      if (!args.empty()) RETURN_IF_ERROR(ExpectOp(","));
      ASSIGN_OR_RETURN(ExprPtr arg, ParseSubscribed());
      args.push_back(std::move(arg));
    }
    RETURN_IF_ERROR(ExpectOp("]"));
    if (args.size() == 1 && args[0]->kind == ExprKind::kSlice) {
      ExprPtr slice = std::move(args[0]);
      slice->a = std::move(node);
      return slice;
    }
    auto e = MakeExpr(ExprKind::kGetitem, t);
    e->a = std::move(node);
    if (args.size() == 1) {
      e->b = std::move(args[0]);
    } else {
      for (const auto& arg : args) {
        if (arg->kind == ExprKind::kSlice) return Error(t, "unsupported: multiple slices");
      }
      e->b = MakeExpr(ExprKind::kTuple, t);
      e->b->items = std::move(args);
    }
    return e;
  }

  // One subscript: an expression or a slice "start:stop:step" (parts optional). A slice is
  // returned as a kSlice node whose `a` the caller fills in.
  absl::StatusOr<ExprPtr> ParseSubscribed() {
    const Token start = Cur();
    std::vector<ExprPtr> parts;
    if (IsOp(Cur(), ":")) {
      Next();
      parts.push_back(nullptr);
    } else {
      ASSIGN_OR_RETURN(ExprPtr node, ParseExpression(true));
      if (!IsOp(Cur(), ":")) return node;
      Next();
      parts.push_back(std::move(node));
    }
    if (IsOp(Cur(), ":")) {
      parts.push_back(nullptr);
    } else if (!IsOp(Cur(), "]") && !IsOp(Cur(), ",")) {
      ASSIGN_OR_RETURN(ExprPtr stop, ParseExpression(true));
      parts.push_back(std::move(stop));
    } else {
      parts.push_back(nullptr);
    }
    if (IsOp(Cur(), ":")) {
      Next();
      if (!IsOp(Cur(), "]") && !IsOp(Cur(), ",")) {
        ASSIGN_OR_RETURN(ExprPtr step, ParseExpression(true));
        parts.push_back(std::move(step));
      } else {
        parts.push_back(nullptr);
      }
    } else {
      parts.push_back(nullptr);
    }
    auto e = MakeExpr(ExprKind::kSlice, start);
    e->items = std::move(parts);
    return e;
  }

  absl::Status ParseCallArgs(Expr* e) {
    RETURN_IF_ERROR(ExpectOp("("));
    bool require_comma = false;
    while (!IsOp(Cur(), ")")) {
      if (require_comma) {
        RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp(Cur(), ")")) break;
      }
      if (IsOp(Cur(), "*") || IsOp(Cur(), "**")) {
        return Error(Cur(), "unsupported: *args / **kwargs in calls");
      }
      if (Cur().type == TokenType::kName && IsOp(Look(), "=")) {
        std::string key = Next().value;
        Next();
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        e->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!e->kwargs.empty()) {
          return Error(Cur(), "positional argument follows keyword argument");
        }
        ASSIGN_OR_RETURN(ExprPtr value, ParseExpression(true));
        e->items.push_back(std::move(value));
      }
      require_comma = true;
    }
    return ExpectOp(")");
  }

  absl::StatusOr<ExprPtr> ParseCall(ExprPtr node) {
    auto e = MakeExpr(ExprKind::kCall, Cur());
    e->a = std::move(node);
    RETURN_IF_ERROR(ParseCallArgs(e.get()));
    return e;
  }

  // "| name(args) | name ..." (or, for {% filter %}, the first name without a pipe). Returns
  // kFilter nodes with `a` unset, in application order.
  absl::StatusOr<std::vector<ExprPtr>> ParseFilterChain(bool start_inline) {
    std::vector<ExprPtr> chain;
    while (IsOp(Cur(), "|") || start_inline) {
      if (!start_inline) Next();
      start_inline = false;
      const Token name_token = Cur();
      ASSIGN_OR_RETURN(Token name, ExpectName());
      std::string full = name.value;
      while (IsOp(Cur(), ".")) {
        Next();
        ASSIGN_OR_RETURN(Token part, ExpectName());
        absl::StrAppend(&full, ".", part.value);
      }
      auto e = MakeExpr(ExprKind::kFilter, name_token);
      e->name = full;
      e->filter = FindFilter(full);
      if (e->filter == nullptr) {
        return Error(name_token, absl::StrCat(IsJinjaFilterName(full) ? "unsupported" : "unknown",
                                              " filter '", full, "'"));
      }
      if (IsOp(Cur(), "(")) RETURN_IF_ERROR(ParseCallArgs(e.get()));
      RETURN_IF_ERROR(CheckNamedTestOrFilter(*e));
      chain.push_back(std::move(e));
    }
    return chain;
  }

  // select/reject/selectattr/rejectattr/map name a test or filter by string: check constant
  // names at parse time.
  absl::Status CheckNamedTestOrFilter(const Expr& e) {
    size_t index;
    bool is_test = true;
    if (e.name == "select" || e.name == "reject") {
      index = 0;
    } else if (e.name == "selectattr" || e.name == "rejectattr") {
      index = 1;
    } else if (e.name == "map") {
      index = 0;
      is_test = false;
      for (const auto& kw : e.kwargs) {
        if (kw.first == "attribute") return absl::OkStatus();
      }
    } else {
      return absl::OkStatus();
    }
    if (e.items.size() <= index || e.items[index]->kind != ExprKind::kConst ||
        !e.items[index]->value.is_string()) {
      return absl::OkStatus();
    }
    const std::string& name = e.items[index]->value.str();
    const Expr& arg = *e.items[index];
    if (is_test && FindTest(name) == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what_, " line ", arg.line, " column ", arg.column, ": ",
                       IsJinjaTestName(name) ? "unsupported" : "unknown", " test '", name, "'"));
    }
    if (!is_test && FindFilter(name) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          what_, " line ", arg.line, " column ", arg.column, ": ",
          IsJinjaFilterName(name) ? "unsupported" : "unknown", " filter '", name, "'"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ExprPtr> ParseTest(ExprPtr node) {
    const Token is_token = Next();
    bool negated = SkipName("not");
    const Token name_token = Cur();
    ASSIGN_OR_RETURN(Token name, ExpectName());
    std::string full = name.value;
    while (IsOp(Cur(), ".")) {
      Next();
      ASSIGN_OR_RETURN(Token part, ExpectName());
      absl::StrAppend(&full, ".", part.value);
    }
    auto e = MakeExpr(ExprKind::kTest, is_token);
    e->a = std::move(node);
    e->name = full;
    e->negated = negated;
    e->test = FindTest(full);
    if (e->test == nullptr) {
      return Error(name_token, absl::StrCat(IsJinjaTestName(full) ? "unsupported" : "unknown",
                                            " test '", full, "'"));
    }
    const Token& t = Cur();
    if (IsOp(t, "(")) {
      RETURN_IF_ERROR(ParseCallArgs(e.get()));
    } else if ((t.type == TokenType::kName || t.type == TokenType::kString ||
                t.type == TokenType::kInteger || t.type == TokenType::kFloat || IsOp(t, "[") ||
                IsOp(t, "{")) &&
               !IsName(t, "else") && !IsName(t, "or") && !IsName(t, "and")) {
      if (IsName(t, "is")) return Error(t, "you cannot chain multiple tests with 'is'");
      ASSIGN_OR_RETURN(ExprPtr arg, ParsePrimary());
      ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
      e->items.push_back(std::move(arg));
    }
    return e;
  }

  std::vector<Token> tokens_;
  std::string what_;
  size_t pos_ = 0;
  int nesting_ = 0;
  int loop_depth_ = 0;
  std::vector<std::vector<std::string>> end_stack_;
  std::vector<std::pair<std::string, int>> open_blocks_;
  std::vector<std::set<std::string>*> macro_names_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Template>> ParseTemplate(absl::string_view source,
                                                        absl::string_view what) {
  ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(source, what));
  Parser parser(std::move(tokens), what);
  return parser.Run();
}

}  // namespace shardserve::jinja
