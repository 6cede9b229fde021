// What every service's YAML config file has in common: reading the file, walking the top-level
// mapping, and turning yaml-cpp's exceptions into statuses (the one place that happens).
// Errors name the file (`what`), the line and the reason.
#ifndef SHARDSERVE_COMMON_YAML_CONFIG_H_
#define SHARDSERVE_COMMON_YAML_CONFIG_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_YAML_CONFIG_H_
