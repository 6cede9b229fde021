#include "worker/backend/cpu/thread_pool.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SHARDSERVE_CPU_RELAX() _mm_pause()
#else
#define SHARDSERVE_CPU_RELAX() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace shardserve::cpu {
namespace {

constexpr auto kSpinTime = std::chrono::microseconds(200);

uint32_t* FutexWord(std::atomic<uint32_t>& a) { return reinterpret_cast<uint32_t*>(&a); }

void FutexWait(std::atomic<uint32_t>& a, uint32_t expected) {
  syscall(SYS_futex, FutexWord(a), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>& a) {
  syscall(SYS_futex, FutexWord(a), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { WorkerLoop(t); });
}

ThreadPool::~ThreadPool() {
  stop_ = true;
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  FutexWakeAll(epoch_);
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::DoTasks(int thread) {
  for (;;) {
    const int task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= num_tasks_) return;
    (*fn_)(task, thread);
  }
}

void ThreadPool::Run(int num_tasks, absl::FunctionRef<void(int task, int thread)> fn) {
  if (num_tasks <= 0) return;
  if (workers_.empty() || num_tasks == 1) {
    for (int task = 0; task < num_tasks; ++task) fn(task, 0);
    return;
  }
  num_tasks_ = num_tasks;
  fn_ = &fn;
  next_task_.store(0, std::memory_order_relaxed);
  busy_workers_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  // seq_cst pairs with the worker's sleepers_ increment: either it sees the new epoch in the
  // futex check or we see it asleep and wake it.
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) FutexWakeAll(epoch_);
  DoTasks(0);
  int spins = 0;
  while (busy_workers_.load(std::memory_order_acquire) != 0) {
    SHARDSERVE_CPU_RELAX();
    if (++spins > 100000) sched_yield();  // a worker lost its core: let it run
  }
}

void ThreadPool::WorkerLoop(int thread) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t e = epoch_.load(std::memory_order_acquire);
    if (e == seen) {
      const auto start = std::chrono::steady_clock::now();
      int spins = 0;
      while ((e = epoch_.load(std::memory_order_acquire)) == seen) {
        SHARDSERVE_CPU_RELAX();
        if (++spins % 64 == 0 && std::chrono::steady_clock::now() - start > kSpinTime) {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          FutexWait(epoch_, seen);
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
          spins = 0;
        }
      }
    }
    seen = e;
    if (stop_) return;
    DoTasks(thread);
    busy_workers_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace shardserve::cpu
