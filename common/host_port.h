// "host:port" addresses as every service's flags and configs write them (IPv6 hosts in
// brackets: "[::1]:8000").
#ifndef SHARDSERVE_COMMON_HOST_PORT_H_
#define SHARDSERVE_COMMON_HOST_PORT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace shardserve {

// Splits "host:port" (brackets around an IPv6 host removed; port 0-65535). INVALID_ARGUMENT
// naming `address` otherwise.
absl::Status SplitHostPort(absl::string_view address, std::string* host, int* port);

// "host:port", with brackets around an IPv6 host.
std::string JoinHostPort(absl::string_view host, int port);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_HOST_PORT_H_
