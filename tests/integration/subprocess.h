// Runs a program to completion and captures what it printed. For integration tests that start
// the project's real binaries.
#ifndef SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_
#define SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_

#include <string>
#include <vector>

namespace shardserve::testing {

struct RunResult {
  int exit_code = -1;  // -1 when the program did not exit normally
  std::string out;
  std::string err;
};

// Runs argv[0] with argv (no shell) and waits for it.
RunResult RunProgram(const std::vector<std::string>& argv);

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_
