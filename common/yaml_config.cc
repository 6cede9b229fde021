#include "common/yaml_config.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"

namespace shardserve {

std::string YamlWhere(absl::string_view what, const YAML::Node& node) {
  return absl::StrCat(what, ":", node.Mark().line + 1);
}

absl::Status ForEachYamlKey(
    absl::string_view yaml, absl::string_view what,
    const std::function<absl::Status(const std::string& key, const YAML::Node& value,
                                     const std::string& where)>& entry) {
  try {
    const YAML::Node root = YAML::Load(std::string(yaml));
    if (root.IsNull()) return absl::OkStatus();
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": the document must be a mapping of keys to values"));
    }
    for (const auto& item : root) {
      const std::string where = YamlWhere(what, item.first);
      if (!item.first.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": a key is not a scalar"));
      }
      absl::Status status = entry(item.first.Scalar(), item.second, where);
      if (!status.ok()) return status;
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ":", e.mark.line + 1, ":",
                                                   e.mark.column + 1, ": invalid YAML: ", e.msg));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid YAML: ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    return absl::NotFoundError(
        absl::StrCat("config file ", path, ": cannot be read: ", text.status().message()));
  }
  return text;
}

}  // namespace shardserve
