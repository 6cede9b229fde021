#include "common/yaml_config.h"

#include <cmath>
#include <exception>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
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

absl::Status ConfigFieldError(absl::string_view what, absl::string_view key,
                              absl::string_view reason) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": key '", key, "': ", reason));
}

absl::Status ParseConfigNumber(absl::string_view what, absl::string_view key,
                               absl::string_view value, bool positive, double* out) {
  double d = 0;
  if (!absl::SimpleAtod(value, &d) || !std::isfinite(d)) {
    return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not a number"));
  }
  if (positive ? d <= 0 : d < 0) {
    return ConfigFieldError(what, key,
                            absl::StrCat(value, positive ? " is not positive" : " is negative"));
  }
  *out = d;
  return absl::OkStatus();
}

absl::Status ParseConfigChoice(absl::string_view what, absl::string_view key,
                               absl::string_view value,
                               std::initializer_list<absl::string_view> choices, std::string* out) {
  std::string lower = absl::AsciiStrToLower(value);
  for (absl::string_view c : choices) {
    if (lower == c) {
      *out = lower;
      return absl::OkStatus();
    }
  }
  std::string list;
  for (absl::string_view c : choices) absl::StrAppend(&list, list.empty() ? "" : " or ", c);
  return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not ", list));
}

absl::Status ParseConfigBool(absl::string_view what, absl::string_view key, absl::string_view value,
                             bool* out) {
  const std::string lower = absl::AsciiStrToLower(value);
  if (lower == "true" || lower == "yes" || lower == "on" || lower == "1") {
    *out = true;
  } else if (lower == "false" || lower == "no" || lower == "off" || lower == "0") {
    *out = false;
  } else {
    return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not true or false"));
  }
  return absl::OkStatus();
}

absl::Status ParseConfigAddress(absl::string_view what, absl::string_view key,
                                absl::string_view value, bool listen, std::string* out) {
  const size_t colon = value.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not host:port"));
  }
  absl::string_view host = value.substr(0, colon);
  if (absl::StrContains(host, ':') && !(absl::StartsWith(host, "[") && absl::EndsWith(host, "]"))) {
    return ConfigFieldError(
        what, key, absl::StrCat("'", value, "': an IPv6 host goes in brackets ([::1]:port)"));
  }
  if (absl::StrContains(host, ' ') || absl::StrContains(host, ',')) {
    return ConfigFieldError(what, key, absl::StrCat("'", value, "' is not host:port"));
  }
  int port = 0;
  const int min_port = listen ? 0 : 1;
  if (!absl::SimpleAtoi(value.substr(colon + 1), &port) || port < min_port || port > 65535) {
    return ConfigFieldError(what, key,
                            absl::StrCat("'", value, "' has no port in [", min_port, ", 65535]"));
  }
  *out = std::string(value);
  return absl::OkStatus();
}

}  // namespace shardserve
