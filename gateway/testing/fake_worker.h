// A worker played in-process for the gateway's unit tests (a test fixture that plays the peer;
// the integration tests use the real worker binary). It serves shardserve.worker.v1.Worker
// (Generate, Status) and grpc.health.v1.Health on 127.0.0.1:<free port>, and streams canned
// replies: for each request, the words of `reply` as separate chunks (one per "token"),
// `token_delay` apart, then a final chunk with finish_reason STOP, usage and timings.
//
// Behaviour on demand (set before or between requests; thread-safe):
//   set_healthy(false)          health says NOT_SERVING;
//   set_fail_before_first(st)   Generate ends at once with status `st` (e.g. UNAVAILABLE);
//   set_fail_after(n, st)       Generate sends n chunks then ends with `st`;
//   Shutdown()                  the server stops (connections drop), Restart() serves again on
//                               the same port.
// It records what it saw: the last GenerateRequest, how many Generate calls started, how many
// are running now, how many were cancelled by the client.
//
// Details tests may rely on: the first chunk carries request_id (GenerateRequest.request_id,
// else request.request_id) and model; chunk i has token_ids {i+1}; request.max_tokens below the
// word count ends with FINISH_REASON_LENGTH; a request for another model gets NOT_FOUND. A client
// cancel or a passed gRPC deadline stops the stream within ~2 ms and counts in cancelled(); a
// passed GenerateRequest.deadline ends it with a FINISH_REASON_CANCELLED chunk and
// DEADLINE_EXCEEDED. Shutdown ends running streams with UNAVAILABLE (not counted as cancelled),
// health answers stop (connection refused) until Restart. Status reports model id, context
// length, source "fake/MODEL", quantization "fake", kv 0/1024 unless set_reported_load.
// Generate uses the sync API (one server thread per running stream).
#ifndef SHARDSERVE_GATEWAY_TESTING_FAKE_WORKER_H_
#define SHARDSERVE_GATEWAY_TESTING_FAKE_WORKER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shardserve/worker/v1/worker.pb.h"

namespace shardserve::testing {

struct FakeWorkerOptions {
  std::string model = "fake-model";
  std::string reply = "Hello from the fake worker .";
  absl::Duration token_delay = absl::Milliseconds(5);
  uint32_t context_length = 2048;
  uint32_t prompt_tokens = 7;  // reported in usage
  bool healthy = true;
};

class FakeWorker {
 public:
  // Starts serving; the port is free and fixed for the worker's life (Restart reuses it).
  static std::unique_ptr<FakeWorker> Start(FakeWorkerOptions options);
  ~FakeWorker();

  std::string address() const;  // "127.0.0.1:PORT"

  void set_healthy(bool healthy);
  void set_fail_before_first(absl::Status status);       // OK: off
  void set_fail_after(int chunks, absl::Status status);  // OK status: off
  void set_token_delay(absl::Duration delay);
  // Status() reports these (running/waiting are otherwise the live counts).
  void set_reported_load(int running, int waiting, uint64_t kv_used, uint64_t kv_total);

  void Shutdown();
  void Restart();

  int generate_calls() const;
  int running() const;
  int cancelled() const;
  worker::v1::GenerateRequest last_request() const;

 private:
  class Impl;
  explicit FakeWorker(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardserve::testing

#endif  // SHARDSERVE_GATEWAY_TESTING_FAKE_WORKER_H_
