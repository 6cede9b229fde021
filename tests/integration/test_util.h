// Small helpers the integration tests share: finding programs, reading logs, scratch folders.
#ifndef SHARDSERVE_TESTS_INTEGRATION_TEST_UTIL_H_
#define SHARDSERVE_TESTS_INTEGRATION_TEST_UTIL_H_

#include <string>

namespace shardserve::testing {

// The whole file ("" when it cannot be read).
std::string ReadFile(const std::string& path);

// The last `n` lines of a log file, for failure messages.
std::string Tail(const std::string& path, size_t n = 15);

// A new empty folder under the temporary directory ($TMPDIR, else /tmp), named after `prefix`;
// removed with everything in it by RemoveTree.
std::string MakeTempDir(const std::string& prefix);
void RemoveTree(const std::string& path);

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_INTEGRATION_TEST_UTIL_H_
