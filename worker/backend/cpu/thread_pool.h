// A persistent pool of worker threads for the CPU backend's parallel regions.
//
// Run() is called from one thread at a time (the engine loop, which owns the backend); that
// thread takes part as thread 0. Tasks are claimed from an atomic counter, so uneven tasks
// balance themselves. Between regions workers spin (~200 µs, `pause`) and then sleep on a futex,
// so a decode step's ~150 regions cost well under a microsecond each to start while the pool
// costs nothing when idle.
#ifndef SHARDSERVE_WORKER_BACKEND_CPU_THREAD_POOL_H_
#define SHARDSERVE_WORKER_BACKEND_CPU_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace shardserve::cpu {

class ThreadPool {
 public:
  // `threads` >= 1 in all, including the caller of Run().
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(task, thread) once for every task in [0, num_tasks), thread in [0, size()), and
  // returns when all calls have returned. Runs inline when there is one task or one thread.
  void Run(int num_tasks, absl::FunctionRef<void(int task, int thread)> fn);

 private:
  void WorkerLoop(int thread);
  void DoTasks(int thread);

  std::vector<std::thread> workers_;
  // Bumped (release) to start a region or to stop; workers wait for it to change. 32 bits for
  // the futex.
  alignas(64) std::atomic<uint32_t> epoch_{0};
  alignas(64) std::atomic<int> next_task_{0};
  alignas(64) std::atomic<int> busy_workers_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  int num_tasks_ = 0;
  const absl::FunctionRef<void(int, int)>* fn_ = nullptr;
  bool stop_ = false;
};

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_WORKER_BACKEND_CPU_THREAD_POOL_H_
