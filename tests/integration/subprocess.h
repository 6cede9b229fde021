// Runs a program to completion and captures what it printed. For integration tests that start
// the project's real binaries.
#ifndef SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_
#define SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace shardserve::testing {

struct RunResult {
  int exit_code = -1;  // -1 when the program did not exit normally
  std::string out;
  std::string err;
};

// An executable found on $PATH (posix_spawn does not search it); `name` itself when none is.
std::string FindOnPath(const std::string& name);

// Runs argv[0] with argv (no shell) and waits for it. `stdin_path`: a file to read stdin from
// ("" inherits the test's stdin).
RunResult RunProgram(const std::vector<std::string>& argv, const std::string& stdin_path = "");

// A program running in the background (a server under test): its stdout is read line by line,
// its stderr goes to a file (or is inherited), and it can be signalled and waited for. Waits use
// poll(2) on the pipe and on a pidfd, never sleeps. The destructor kills (SIGKILL) and reaps a
// process that is still running. Not thread-safe.
class Process {
 public:
  // Starts argv[0] with argv (no shell). `stderr_path`: a file that receives stderr (created or
  // truncated); "" inherits the test's stderr. nullptr with *error set when it cannot start.
  static std::unique_ptr<Process> Start(const std::vector<std::string>& argv,
                                        const std::string& stderr_path, std::string* error);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // The next line of stdout without its '\n'; nullopt when none arrives within `timeout` or
  // stdout is closed first.
  std::optional<std::string> ReadLine(std::chrono::milliseconds timeout);
  // Sends `signal`; false when the process has already been reaped.
  bool Signal(int signal);
  // Waits up to `timeout` for the process to exit and reaps it. The exit status (128 + signal
  // number when killed by a signal), or nullopt when it is still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout);

 private:
  Process() = default;
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int pid_fd_ = -1;
  std::string buffer_;
  std::optional<int> exit_status_;
};

}  // namespace shardserve::testing

#endif  // SHARDSERVE_TESTS_INTEGRATION_SUBPROCESS_H_
