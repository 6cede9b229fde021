// The worker's gRPC front: shardserve.worker.v1.Worker (Generate, Status) and
// shardserve.chat.v1.Chat (Chat, ListModels) on one engine. Chat is Generate without the
// gateway's envelope, so `shardserve chat --target` works against a worker and a gateway alike.
//
// Threads: gRPC's callback threads run validation, the chat template and tokenization
// (chat_conversion.h) and hand the request to the Engine; the engine thread delivers outputs
// through a callback that only queues chunks (it never blocks). Each stream is one
// GenerateReactor that writes one chunk at a time, coalescing what queued up meanwhile, and
// forwards a client's cancellation (OnCancel) or a failed write to Engine::Cancel.
//
// Lifecycle: the services exist before the model loads (requests get UNAVAILABLE, Status says
// LOADING); SetServing hands them the loaded model; SetDraining refuses new requests while the
// server shuts down. The ServedModel must outlive the grpc::Server that runs these services
// (and any HTTP server whose handlers call Readiness / EngineStatsIfLoaded).
//
// Metrics (when options.metrics is set), each request counted once, when it ends:
//   shardserve_worker_requests_total{code}            by the gRPC code the stream ends with
//                                                     ("OK", "INVALID_ARGUMENT", "CANCELLED"..)
//   shardserve_worker_time_to_first_token_seconds     arrival to the first generated token
//   shardserve_worker_request_duration_seconds        arrival to the last output (requests that
//                                                     reached the engine)
//   shardserve_worker_queue_duration_seconds          waiting in the engine before admission
//   shardserve_worker_prompt_tokens_total, shardserve_worker_generation_tokens_total
#ifndef SHARDSERVE_WORKER_RPC_WORKER_SERVICE_H_
#define SHARDSERVE_WORKER_RPC_WORKER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/log.h"
#include "common/metrics.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"
#include "worker/engine/engine.h"
#include "worker/text/model_text.h"

namespace shardserve {

// A loaded model and the engine that runs it. `engine` holds a pointer to text.tokenizer, so
// it is declared (and destroyed) after `text`.
struct ServedModel {
  chat::v1::ModelInfo info;  // id (the served name), context_length, source, quantization
  ModelText text;
  std::unique_ptr<Engine> engine;
  int default_max_tokens = 0;  // for requests with max_tokens 0; 0: up to the context
};

struct WorkerServicesOptions {
  std::string served_model_name;
  std::string version;
  std::string backend = "cpu";
  // Seeds for unseeded requests and ids for requests without one; default: std::random_device.
  std::function<uint64_t()> random = nullptr;
  // Where the request metrics above are registered and recorded (not owned; must outlive the
  // services). Null: none.
  MetricsRegistry* metrics = nullptr;
};

class WorkerServices {
 public:
  explicit WorkerServices(WorkerServicesOptions options);
  ~WorkerServices();
  WorkerServices(const WorkerServices&) = delete;
  WorkerServices& operator=(const WorkerServices&) = delete;

  grpc::Service* worker_service();
  grpc::Service* chat_service();

  // From now on requests run on `model` (not owned; must outlive the server).
  void SetServing(ServedModel* model);
  // New requests get UNAVAILABLE; running streams go on until the server cancels them.
  void SetDraining();
  bool draining() const;

  // OK while serving (model loaded, not draining); UNAVAILABLE saying "loading the model" or
  // "shutting down" otherwise. For /ready. Any thread.
  absl::Status Readiness() const;
  // The engine's counters, or nullopt before the model is loaded. Any thread.
  std::optional<EngineStats> EngineStatsIfLoaded() const;

 private:
  class GenerateReactor;
  class WorkerImpl;
  class ChatImpl;
  friend class GenerateReactor;

  // A reactor for one Chat / Generate stream (started, or already finished with an error).
  grpc::ServerWriteReactor<chat::v1::ChatChunk>* StartGenerate(grpc::CallbackServerContext* context,
                                                               const chat::v1::ChatRequest& request,
                                                               std::string request_id,
                                                               absl::Time deadline,
                                                               std::string tenant);
  void FillStatus(worker::v1::StatusResponse* response) const;
  void FillListModels(chat::v1::ListModelsResponse* response) const;
  uint64_t Random();
  std::string NewRequestId();

  // The request metrics' families (all null without options.metrics).
  struct RequestMetrics {
    MetricFamily* requests = nullptr;
    MetricFamily* time_to_first_token = nullptr;
    MetricFamily* duration = nullptr;
    MetricFamily* queue = nullptr;
    MetricFamily* prompt_tokens = nullptr;
    MetricFamily* generation_tokens = nullptr;
  };
  // Counts a request that ended with `code` (a no-op without metrics).
  void CountRequest(grpc::StatusCode code);

  const WorkerServicesOptions options_;
  RequestMetrics metrics_;
  std::unique_ptr<WorkerImpl> worker_impl_;
  std::unique_ptr<ChatImpl> chat_impl_;
  std::atomic<uint64_t> next_engine_id_{1};

  mutable absl::Mutex mu_;
  ServedModel* model_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::function<uint64_t()> random_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_RPC_WORKER_SERVICE_H_
