// What every service's config has in common: reading the file, walking the top-level YAML
// mapping (yaml-cpp's exceptions become statuses here and nowhere else), and parsing one field's
// text, from the file or a flag, the same way everywhere. Errors name the source (`what`: the
// file and line, or the flag), the key and the reason.
#ifndef SHARDSERVE_COMMON_YAML_CONFIG_H_
#define SHARDSERVE_COMMON_YAML_CONFIG_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "yaml-cpp/yaml.h"

namespace shardserve {

// "what:LINE" for a node of the document `what`.
std::string YamlWhere(absl::string_view what, const YAML::Node& node);

// Calls `entry(key, value, where)` for each key of the document's top-level mapping, in order,
// until one returns an error. An empty document calls nothing. INVALID_ARGUMENT naming `what`
// for a document that is not a mapping, a key that is not a scalar, or invalid YAML (with line
// and column); yaml-cpp exceptions thrown inside `entry` are caught too.
absl::Status ForEachYamlKey(
    absl::string_view yaml, absl::string_view what,
    const std::function<absl::Status(const std::string& key, const YAML::Node& value,
                                     const std::string& where)>& entry);

// The text of config file `path`. NOT_FOUND "config file PATH: cannot be read: ...".
absl::StatusOr<std::string> ReadConfigFile(const std::string& path);

// INVALID_ARGUMENT "WHAT: key 'KEY': REASON".
absl::Status ConfigFieldError(absl::string_view what, absl::string_view key,
                              absl::string_view reason);

// An integer in [min, the type's maximum].
template <typename Int>
absl::Status ParseConfigInt(absl::string_view what, absl::string_view key, absl::string_view value,
                            int64_t min, Int* out) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(value, &v)) {
    return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not an integer"));
  }
  if (v < min || v > static_cast<int64_t>(std::numeric_limits<Int>::max())) {
    return ConfigFieldError(what, key, absl::StrCat(v, " is out of range (at least ", min, ")"));
  }
  *out = static_cast<Int>(v);
  return absl::OkStatus();
}

// A finite number >= 0, or > 0 when `positive`.
absl::Status ParseConfigNumber(absl::string_view what, absl::string_view key,
                               absl::string_view value, bool positive, double* out);

// One of `choices` (compared in lower case; stored lower case).
absl::Status ParseConfigChoice(absl::string_view what, absl::string_view key,
                               absl::string_view value,
                               std::initializer_list<absl::string_view> choices, std::string* out);

// true / false (also yes / no, on / off, 1 / 0; any case).
absl::Status ParseConfigBool(absl::string_view what, absl::string_view key, absl::string_view value,
                             bool* out);

// "host:port" with a numeric port; an IPv6 host in brackets; no spaces or commas. `listen`: an
// address to bind (port 0 picks one); otherwise a peer to dial (port 1-65535).
absl::Status ParseConfigAddress(absl::string_view what, absl::string_view key,
                                absl::string_view value, bool listen, std::string* out);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_YAML_CONFIG_H_
