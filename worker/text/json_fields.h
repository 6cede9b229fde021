// Typed field access for tokenizer.json sections. A missing or mistyped field becomes
// INVALID_ARGUMENT naming the document (`what`), the section (`where`, e.g. "pre_tokenizer") and
// the field, so no nlohmann exception escapes.
#ifndef SHARDSERVE_WORKER_TEXT_JSON_FIELDS_H_
#define SHARDSERVE_WORKER_TEXT_JSON_FIELDS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "worker/text/regex.h"

namespace shardserve::text {

// Names a place in a tokenizer.json for error messages: "<what>: <where>".
struct JsonContext {
  absl::string_view what;  // the file path or description of the document
  std::string where;       // the section, e.g. "pre_tokenizer.pretokenizers[1]"
  int depth = 0;           // nesting of Sequence components

  // Sequences nested deeper than this are rejected (they would only exhaust the stack).
  static constexpr int kMaxDepth = 32;

  absl::Status Error(absl::string_view problem) const {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", where, ": ", problem));
  }
  JsonContext Child(absl::string_view sub) const {
    return JsonContext{what, absl::StrCat(where, ".", sub), depth + 1};
  }
  absl::Status CheckDepth() const {
    return depth > kMaxDepth ? Error("components nested too deeply") : absl::OkStatus();
  }
};

inline absl::Status RequireObject(const nlohmann::json& j, const JsonContext& ctx) {
  if (!j.is_object()) return ctx.Error(absl::StrCat("expected an object, got ", j.type_name()));
  return absl::OkStatus();
}

inline absl::StatusOr<std::string> GetString(const nlohmann::json& obj, const char* key,
                                             const JsonContext& ctx) {
  auto it = obj.find(key);
  if (it == obj.end()) return ctx.Error(absl::StrCat("missing field '", key, "'"));
  if (!it->is_string()) {
    return ctx.Error(absl::StrCat("field '", key, "' must be a string, got ", it->type_name()));
  }
  return it->get<std::string>();
}

// A string field that may be absent or null (returns `fallback` then).
inline absl::StatusOr<std::string> GetOptionalString(const nlohmann::json& obj, const char* key,
                                                     const std::string& fallback,
                                                     const JsonContext& ctx) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    return ctx.Error(absl::StrCat("field '", key, "' must be a string, got ", it->type_name()));
  }
  return it->get<std::string>();
}

inline absl::StatusOr<bool> GetBool(const nlohmann::json& obj, const char* key, bool fallback,
                                    const JsonContext& ctx) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return ctx.Error(absl::StrCat("field '", key, "' must be a boolean, got ", it->type_name()));
  }
  return it->get<bool>();
}

inline absl::StatusOr<int64_t> GetInt(const nlohmann::json& obj, const char* key, int64_t fallback,
                                      const JsonContext& ctx) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return ctx.Error(absl::StrCat("field '", key, "' must be an integer, got ", it->type_name()));
  }
  return it->get<int64_t>();
}

// The "type" field of a component.
inline absl::StatusOr<std::string> GetType(const nlohmann::json& obj, const JsonContext& ctx) {
  if (absl::Status s = ctx.CheckDepth(); !s.ok()) return s;
  if (!obj.is_object()) return ctx.Error(absl::StrCat("expected an object, got ", obj.type_name()));
  return GetString(obj, "type", ctx);
}

inline absl::Status UnsupportedType(absl::string_view kind, absl::string_view type,
                                    const JsonContext& ctx) {
  return ctx.Error(absl::StrCat("unsupported ", kind, " type '", type, "'"));
}

// A tokenizer.json pattern: {"String": literal} or {"Regex": oniguruma-pattern}.
inline absl::StatusOr<std::unique_ptr<Regex>> GetPattern(const nlohmann::json& obj,
                                                         const JsonContext& ctx) {
  auto it = obj.find("pattern");
  if (it == obj.end() || !it->is_object()) return ctx.Error("missing object field 'pattern'");
  absl::StatusOr<std::unique_ptr<Regex>> regex;
  if (auto s = it->find("String"); s != it->end() && s->is_string()) {
    regex = Regex::Literal(s->get<std::string>());
  } else if (auto r = it->find("Regex"); r != it->end() && r->is_string()) {
    regex = Regex::Compile(r->get<std::string>());
  } else {
    return ctx.Error("field 'pattern' must hold a string 'String' or 'Regex'");
  }
  if (!regex.ok()) return ctx.Error(regex.status().message());
  return regex;
}

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_JSON_FIELDS_H_
