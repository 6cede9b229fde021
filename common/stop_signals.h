// SIGINT / SIGTERM for a server process: blocked in every thread (construct before starting any
// other thread, so they all inherit the mask), taken by one thread with sigwait, logged as a
// JSON line, and turned into a notification the main thread waits on.
#ifndef SHARDSERVE_COMMON_STOP_SIGNALS_H_
#define SHARDSERVE_COMMON_STOP_SIGNALS_H_

#include <signal.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/notification.h"

namespace shardserve {

class StopSignals {
 public:
  StopSignals();
  // Ends the waiting thread (also when no signal came). The signals stay blocked.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // Notified on the first SIGINT / SIGTERM.
  const absl::Notification& received() const { return received_; }

 private:
  sigset_t signals_;
  absl::Notification received_;
  std::atomic<bool> exiting_{false};
  std::thread thread_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_STOP_SIGNALS_H_
