#include "common/stop_signals.h"

#include <pthread.h>

#include "common/log.h"

namespace shardserve {

StopSignals::StopSignals() {
  sigemptyset(&signals_);
  sigaddset(&signals_, SIGINT);
  sigaddset(&signals_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
  thread_ = std::thread([this] {
    int sig = 0;
    sigwait(&signals_, &sig);
    if (!exiting_.load()) {
      LogJsonLine({{"event", "signal"}, {"signal", sig == SIGINT ? "SIGINT" : "SIGTERM"}});
    }
    received_.Notify();
  });
}

StopSignals::~StopSignals() {
  exiting_.store(true);
  // No signal came: send one to our own thread so its sigwait returns.
  if (!received_.HasBeenNotified()) pthread_kill(thread_.native_handle(), SIGTERM);
  thread_.join();
}

}  // namespace shardserve
