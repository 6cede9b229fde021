// The one place nlohmann::json's exceptions become statuses. Every JSON document from disk or the
// network is parsed here, and errors name the document (`what`: a file path or a description).
#ifndef SHARDSERVE_COMMON_JSON_H_
#define SHARDSERVE_COMMON_JSON_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace shardserve {

// Parses `text`; a syntax error (or invalid UTF-8) is INVALID_ARGUMENT naming `what` and the
// byte offset.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what);

// Reads and parses the file at `path`.
absl::StatusOr<nlohmann::json> ParseJsonFile(const std::string& path);

// Serializes `value`; invalid UTF-8 in strings is replaced with U+FFFD instead of throwing.
std::string DumpJson(const nlohmann::json& value, int indent = -1);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_JSON_H_
