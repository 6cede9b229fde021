// One chat request's way through the gateway, shared by the gRPC front (chat_service.h) and the
// OpenAI HTTP front (openai/): authenticate the key, validate (the worker's rules,
// chat_validation.h, with n up to kMaxChoices), admit (tenant rate, tokens per minute, the
// model's queue bound, the gateway's in-flight bound), route (router.h over WorkerPool
// snapshots), forward as worker.v1.Worker/Generate with the request id, tenant and deadline,
// and relay the worker's chunks as they arrive.
//
// Failures: a worker that fails before the request's first chunk reached the caller is reported
// to the pool and the request is retried on another worker (up to max_attempts, excluding those
// tried); after the first chunk the stream ends with UNAVAILABLE ("worker W failed after N
// tokens: ...") and nothing is replayed, so tokens are never duplicated or dropped silently.
// Errors the worker returns about the request itself (INVALID_ARGUMENT, NOT_FOUND,
// RESOURCE_EXHAUSTED for a prompt over the context, ...) go to the caller unchanged;
// RESOURCE_EXHAUSTED for a full worker queue (the engine's "the queue is full" message) is
// retried elsewhere like a failure (the worker is not marked down), and when every worker tried
// was full the caller gets RESOURCE_EXHAUSTED. Worker streams use gRPC's callback API: no thread
// is held per request.
//
// n > 1 fans out into n worker requests (n = 1 each, seed + i when seeded); chunks carry their
// choice's index, and after every choice ended one last chunk (index 0) carries usage summed
// over the choices (completion tokens added, the shared prompt counted once). A choice that
// fails ends the request with its error and cancels the others.
//
// Metrics (all prefixed shardserve_gateway_): requests_total{model,tenant,code},
// time_to_first_token_seconds{model}, inter_token_latency_seconds{model},
// request_duration_seconds{model}, queue_time_seconds{model} (arrival to first chunk minus the
// worker's prefill, as the worker reports it), prompt_tokens_total{model,tenant},
// generation_tokens_total{model,tenant}, queue_depth{model} (waiting for the first token),
// in_flight_requests, retries_total{model}. One JSON log line per request (request_id, front,
// model, tenant, worker(s), code, tokens, ttft, duration).
#ifndef SHARDSERVE_GATEWAY_DISPATCHER_H_
#define SHARDSERVE_GATEWAY_DISPATCHER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "gateway/admission.h"
#include "gateway/gateway_config.h"
#include "gateway/worker_pool.h"
#include "shardserve/chat/v1/chat.pb.h"
#include "shardserve/gateway/v1/gateway.pb.h"

namespace shardserve {

struct DispatchRequest {
  chat::v1::ChatRequest request;  // request_id: kept when set, else a new one is assigned
  std::string api_key;            // "" when the caller sent none
  absl::Time deadline = absl::InfiniteFuture();  // the client's; capped by request_timeout
  std::string front;                             // "grpc" or "http", for logs
};

// Called from gRPC threads; neither may block (queue and return).
struct ChatCallbacks {
  // Each chunk in order. The first carries request_id and model.
  std::function<void(chat::v1::ChatChunk chunk)> on_chunk;
  // Exactly once, after the last chunk: OK, or the error that ended the request (also when no
  // chunk was ever sent, e.g. every attempt failed or the deadline passed).
  std::function<void(absl::Status status)> on_done;
};

// A running request.
class ChatCall {
 public:
  virtual ~ChatCall() = default;
  // Cancels the worker stream(s); on_done follows with CANCELLED (unless already done).
  virtual void Cancel() = 0;
  virtual const std::string& request_id() const = 0;
  virtual const std::string& tenant() const = 0;
};

class Dispatcher {
 public:
  // `pool`, `admission` and `metrics` are not owned and must outlive the dispatcher.
  Dispatcher(const GatewayConfig& config, WorkerPool* pool, Admission* admission,
             MetricsRegistry* metrics);
  ~Dispatcher();  // cancels what is still running and waits for it to end

  // Checks everything that can be checked before a worker is involved and starts the request.
  // Errors here mean no callback will run: UNAUTHENTICATED, INVALID_ARGUMENT, NOT_FOUND (unknown
  // model, naming the served ones), RESOURCE_EXHAUSTED (*retry_after set: tenant rate or model
  // queue full), UNAVAILABLE (no healthy worker for the model; *retry_after set).
  absl::StatusOr<std::shared_ptr<ChatCall>> Start(DispatchRequest request, ChatCallbacks callbacks,
                                                  absl::Duration* retry_after);

  // The tenant `api_key` belongs to (UNAUTHENTICATED as Admission::Authenticate).
  absl::StatusOr<std::string> Authenticate(const std::string& api_key) const;

  // The models (pool->Info for each), sorted by id.
  chat::v1::ListModelsResponse ListModels() const;
  // pool->ClusterStatus() with queued_requests filled.
  gateway::v1::ClusterStatusResponse ClusterStatus() const;

  // New requests get UNAVAILABLE ("the gateway is shutting down"); running ones go on.
  void SetDraining();
  // Cancels every running request (each one's on_done follows with CANCELLED); returns without
  // waiting. For the end of a drain, so that fronts blocked on a request can return.
  void CancelAll();
  int in_flight() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_DISPATCHER_H_
