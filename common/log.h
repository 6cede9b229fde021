// Structured logs: one JSON object per line on stderr, for every service.
#ifndef SHARDSERVE_COMMON_LOG_H_
#define SHARDSERVE_COMMON_LOG_H_

#include "nlohmann/json.hpp"

namespace shardserve {

// Writes `line` as one line on stderr, with "time" (RFC 3339, UTC, microseconds) added first
// when absent. A single write(2), so lines from different threads never interleave. Invalid
// UTF-8 in strings is replaced, never thrown on.
void LogJsonLine(const nlohmann::json& line);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_LOG_H_
