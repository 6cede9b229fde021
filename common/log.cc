#include "common/log.h"

#include <unistd.h>

#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace shardserve {

void LogJsonLine(const nlohmann::json& line) {
  std::string text;
  if (line.is_object() && !line.contains("time")) {
    nlohmann::ordered_json stamped;
    stamped["time"] = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::Now(), absl::UTCTimeZone());
    for (auto it = line.begin(); it != line.end(); ++it) stamped[it.key()] = it.value();
    text = stamped.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  text.push_back('\n');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(STDERR_FILENO, text.data() + done, text.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
}

}  // namespace shardserve
