// The value model of the chat-template interpreter (worker/text/chat_template.h): Python/Jinja2
// objects as a Jinja2 template running in transformers' ImmutableSandboxedEnvironment sees them.
//
//   undefined (jinja2.Undefined, carrying the message it raises when used), None, bool, int
//   (64-bit; overflow is an error, not a bignum), float, str (UTF-8, optionally Markup),
//   sequences (list, tuple, generator/iterator, dict views, range), dict (insertion-ordered,
//   string keys), namespace (the one mutable object), callables (builtins, bound methods,
//   macros) and the `loop` object.
//
// Values are cheap to copy: containers are shared, immutable after construction (the sandbox is
// immutable), except namespaces, loop objects and the consumption mark of iterators, which only
// exist inside one Render call. Python semantics live in the free functions below (truthiness,
// str(), repr(), ==, <, iteration, len(), json.dumps); each returns the Python error message
// (TypeError/UndefinedError text) as an INVALID_ARGUMENT status without a location; the
// interpreter adds the template line.
#ifndef SHARDSERVE_WORKER_TEXT_JINJA_VALUE_H_
#define SHARDSERVE_WORKER_TEXT_JINJA_VALUE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace shardserve::jinja {

// Containers nested deeper than this are rejected (keeps every recursive walk, and destruction,
// shallow).
inline constexpr int kMaxValueDepth = 200;

enum class ValueKind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kSequence,
  kDict,
  kNamespace,
  kCallable,
  kLoop,
};

enum class SeqKind : uint8_t {
  kList,
  kTuple,
  kIterator,  // generator / list_reverseiterator: single use, no len(), not subscriptable
  kKeysView,  // dict.keys()
  kValuesView,
  kItemsView,
  kRange,
};

class Value;
class Dict;
class RenderContext;

struct Sequence {
  SeqKind kind = SeqKind::kList;
  std::vector<Value> items;
  int depth = 1;
  // kIterator: items before this index were already consumed (Python iterators are single use).
  mutable size_t consumed = 0;
  // kIterator: the error a lazy Python generator (select, map, items, ...) raises when first
  // consumed; cleared once raised.
  mutable absl::Status deferred_error;
  // kIterator: Python's type name ("generator", "list_reverseiterator", ...).
  mutable const char* iterator_type = "generator";
  // kRange: the constructor arguments, for repr().
  int64_t range_start = 0;
  int64_t range_stop = 0;
  int64_t range_step = 1;
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

// Anything callable from a template: builtin functions and filters-as-functions, bound methods
// ("abc".upper), macros, loop.cycle.
class Callable {
 public:
  virtual ~Callable() = default;
  // The name used in error messages and repr ("upper", "macro 'm'").
  virtual std::string name() const = 0;
  // Python type name for messages: "builtin_function_or_method", "Macro", ...
  virtual const char* type_name() const { return "builtin_function_or_method"; }
  // The repr() Python would print, or empty when it would contain an address.
  virtual std::string repr() const { return ""; }
  virtual int depth() const { return 1; }
  virtual absl::StatusOr<Value> Call(RenderContext& ctx, CallArgs args) const = 0;
};

struct LoopState;
struct NamespaceData;

class Value {
 public:
  Value() = default;  // undefined, no hint
  static Value Undefined(std::string hint);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s, bool markup = false);
  static Value MakeSequence(SeqKind kind, std::vector<Value> items);
  static Value List(std::vector<Value> items) {
    return MakeSequence(SeqKind::kList, std::move(items));
  }
  static Value Tuple(std::vector<Value> items) {
    return MakeSequence(SeqKind::kTuple, std::move(items));
  }
  static Value Range(int64_t start, int64_t stop, int64_t step, std::vector<Value> items);
  static Value MakeDict(Dict dict);
  static Value Namespace(std::shared_ptr<NamespaceData> ns);
  static Value MakeCallable(std::shared_ptr<const Callable> fn);
  static Value Loop(std::shared_ptr<LoopState> loop);

  ValueKind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == ValueKind::kUndefined; }
  bool is_none() const { return kind_ == ValueKind::kNone; }
  bool is_bool() const { return kind_ == ValueKind::kBool; }
  bool is_int() const { return kind_ == ValueKind::kInt; }
  bool is_float() const { return kind_ == ValueKind::kFloat; }
  // bool, int or float (Python's numbers.Number).
  bool is_number() const { return is_bool() || is_int() || is_float(); }
  // bool or int (Python int, of which bool is a subclass).
  bool is_integral() const { return is_bool() || is_int(); }
  bool is_string() const { return kind_ == ValueKind::kString; }
  bool is_markup() const { return markup_; }
  bool is_sequence() const { return kind_ == ValueKind::kSequence; }
  bool is_seq(SeqKind k) const { return is_sequence() && seq().kind == k; }
  // list or tuple: the sequences that support indexing and slicing.
  bool is_list_or_tuple() const { return is_seq(SeqKind::kList) || is_seq(SeqKind::kTuple); }
  bool is_dict() const { return kind_ == ValueKind::kDict; }
  bool is_namespace() const { return kind_ == ValueKind::kNamespace; }
  bool is_callable() const { return kind_ == ValueKind::kCallable; }
  bool is_loop() const { return kind_ == ValueKind::kLoop; }

  bool as_bool() const { return i_ != 0; }
  // The integer value of a bool or int.
  int64_t as_int() const { return i_; }
  // The value of a bool, int or float as a double.
  double as_double() const { return is_float() ? f_ : static_cast<double>(i_); }
  const std::string& str() const { return s_; }
  // The message an undefined raises when used.
  const std::string& undefined_hint() const { return s_; }
  const Sequence& seq() const { return *static_cast<const Sequence*>(obj_.get()); }
  const Dict& dict() const { return *static_cast<const Dict*>(obj_.get()); }
  NamespaceData& ns() const { return *static_cast<NamespaceData*>(obj_.get()); }
  const Callable& fn() const { return *static_cast<const Callable*>(obj_.get()); }
  LoopState& loop() const { return *static_cast<LoopState*>(obj_.get()); }
  const void* identity() const { return obj_.get(); }

  // Container nesting depth (0 for scalars).
  int depth() const;

 private:
  ValueKind kind_ = ValueKind::kUndefined;
  bool markup_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<void> obj_;
};

// An insertion-ordered str -> Value map (Python dict with string keys).
class Dict {
 public:
  const Value* Find(absl::string_view key) const;
  // Inserts or replaces; a replaced key keeps its position (as in Python).
  void Set(std::string key, Value value);
  const std::vector<std::pair<std::string, Value>>& items() const { return items_; }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  int depth() const;
  void Clear();

 private:
  std::vector<std::pair<std::string, Value>> items_;
  absl::flat_hash_map<std::string, size_t> index_;
};

// jinja2.utils.Namespace: attribute bag assignable with {% set ns.attr = ... %}.
struct NamespaceData {
  Dict attrs;
};

// The `loop` variable of one for-loop.
struct LoopState {
  std::shared_ptr<const std::vector<Value>> items;
  size_t index0 = 0;
  int depth0 = 0;
  bool has_changed_value = false;
  Value changed_value;  // last argument of loop.changed()
};

// Per-render limits, clock and bookkeeping. One per Render call; not thread-safe.
class RenderContext {
 public:
  RenderContext(size_t max_string_bytes, int64_t max_steps, std::function<absl::Time()> clock,
                absl::TimeZone time_zone)
      : max_string_bytes_(max_string_bytes),
        steps_left_(max_steps),
        clock_(std::move(clock)),
        time_zone_(time_zone) {}
  virtual ~RenderContext();

  // Counts `n` units of work; RESOURCE_EXHAUSTED once the budget is spent.
  absl::Status Step(int64_t n = 1);
  // RESOURCE_EXHAUSTED if a string of `bytes` bytes would exceed the size limit.
  absl::Status CheckSize(size_t bytes) const;
  size_t max_string_bytes() const { return max_string_bytes_; }
  absl::Time Now() const { return clock_(); }
  absl::TimeZone time_zone() const { return time_zone_; }
  // Namespaces may form reference cycles; every namespace made during a render is registered here
  // and emptied when the context is destroyed.
  std::shared_ptr<NamespaceData> NewNamespace();

 private:
  size_t max_string_bytes_;
  int64_t steps_left_;
  std::function<absl::Time()> clock_;
  absl::TimeZone time_zone_;
  std::vector<std::shared_ptr<NamespaceData>> namespaces_;
};

// --- Python semantics ----------------------------------------------------------------------------

// type(v).__name__: "str", "int", "NoneType", "list", "generator", "Undefined", ...
std::string PyTypeName(const Value& v);
// jinja2.utils.object_type_repr: "dict object", "None", "jinja2.utils.Namespace object".
std::string ObjectTypeRepr(const Value& v);
// The UndefinedError an undefined raises when used (INVALID_ARGUMENT with its hint).
absl::Status UndefinedError(const Value& v);
// Hints for undefineds made by failed lookups, with Jinja2's wording.
Value UndefinedAttribute(const Value& obj, absl::string_view name);
Value UndefinedElement(const Value& obj, const Value& key, RenderContext& ctx);
absl::Status TypeError(absl::string_view message);

bool Truthy(const Value& v);

// str(v) as Jinja2 prints it (soft_str): "None", "True", "1.0", "['a', 1]"; "" for undefined.
// Errors for objects whose str() shows a memory address (generators, builtin methods).
absl::Status AppendStr(const Value& v, RenderContext& ctx, std::string* out);
absl::StatusOr<std::string> ToStr(const Value& v, RenderContext& ctx);
// repr(v).
absl::Status AppendRepr(const Value& v, RenderContext& ctx, std::string* out, int depth = 0);

// Python ==.
absl::StatusOr<bool> Equals(const Value& a, const Value& b, RenderContext& ctx, int depth = 0);
// Python <, <=, >, >= for numbers, strings, lists, tuples. Returns -1, 0 or 1; `op` names the
// operator in the TypeError for other types.
absl::StatusOr<int> Compare(const Value& a, const Value& b, absl::string_view op,
                            RenderContext& ctx, int depth = 0);

// A generator whose body fails: `error` is raised when it is first consumed (Jinja2's generator
// filters fail lazily, so e.g. `5|select` is truthy and only iterating it raises).
Value DeferredErrorIterator(absl::Status error);
// For an iterator with a pending deferred error: returns it and exhausts the iterator.
absl::Status TakeDeferredError(const Sequence& seq);

// iter(v) drained into a vector: list items, string code points, dict keys; empty for undefined.
// Consumes iterators.
absl::StatusOr<std::vector<Value>> Iterate(const Value& v, RenderContext& ctx);
// len(v).
absl::StatusOr<int64_t> Length(const Value& v);

// The context JSON as template values. Numbers: integers stay int (beyond int64 is an error),
// others float. Strings must be valid UTF-8. `path` names the value in errors.
absl::StatusOr<Value> FromJson(const nlohmann::ordered_json& j, const std::string& path,
                               int depth = 0);

// json.dumps(v, ensure_ascii=..., indent=..., separators=..., sort_keys=...), as transformers'
// tojson filter calls it.
struct JsonFormat {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
absl::Status AppendJson(const Value& v, const JsonFormat& format, RenderContext& ctx,
                        std::string* out, int depth = 0);

// Python's binary arithmetic operators (int64 overflow is an error), incl. str/list repetition
// and concatenation and printf-style `str % args`.
enum class BinaryOp { kAdd, kSub, kMul, kDiv, kFloorDiv, kMod, kPow };
absl::StatusOr<Value> BinaryArith(BinaryOp op, const Value& a, const Value& b, RenderContext& ctx);
// printf-style formatting: `format % args` (args: a tuple, a dict for %(name)s, or one value).
absl::StatusOr<std::string> PercentFormat(absl::string_view format, const Value& args,
                                          RenderContext& ctx);

}  // namespace shardserve::jinja

#endif  // SHARDSERVE_WORKER_TEXT_JINJA_VALUE_H_
