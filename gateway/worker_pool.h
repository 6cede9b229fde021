// The gateway's view of its workers: one gRPC channel per worker address, kept current by
// background threads, and the snapshots the router (router.h) decides on.
//
// For each configured model (ModelRoute), the workers are the static endpoints or every address
// its DNS name resolves to (getaddrinfo, re-resolved every dns_refresh; a Kubernetes headless
// service lists one address per ready pod; addresses that disappear are dropped once nothing
// is in flight on them). Each worker is probed:
//   - grpc.health.v1 Check ("shardserve.worker.v1.Worker") every health_interval: SERVING makes
//     it healthy, anything else (or no answer within the interval) unhealthy;
//   - shardserve.worker.v1.Worker/Status every status_interval: running, waiting, KV blocks, and
//     the ModelInfo (context length, quantization) that ListModels reports; a worker whose
//     Status names another model is not used for this one (the message says so).
// A worker is `up` until a request fails on it with UNAVAILABLE / an unreachable channel
// (ReportFailure); it is up again after the next successful health check that says SERVING.
//
// Load between polls: requests the gateway has started on a worker since its last Status are
// added to its `waiting`, so a burst spreads instead of all landing on the least loaded worker.
//
// A snapshot's `healthy` also needs one Status answer (so its model and load are known); a health
// check that cannot reach the worker (UNAVAILABLE, DEADLINE_EXCEEDED) also marks it down. DNS
// names keep only their IPv4 addresses when they have any (dual-stack services list each pod
// twice); worker ids are the resolved "ip:port". Threads: one prober (async health / Status
// calls, so a dead worker stalls no other's probes) and one resolver when a model uses DNS.
//
// Thread-safe. Metrics: shardserve_gateway_worker_up{model,worker} (1 up and healthy, else 0),
// shardserve_gateway_worker_failures_total{model,worker}.
#ifndef SHARDSERVE_GATEWAY_WORKER_POOL_H_
#define SHARDSERVE_GATEWAY_WORKER_POOL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "gateway/gateway_config.h"
#include "gateway/router.h"
#include "shardserve/chat/v1/chat.pb.h"
#include "shardserve/gateway/v1/gateway.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"

namespace shardserve {

struct WorkerPoolOptions {
  absl::Duration health_interval = absl::Seconds(1);
  absl::Duration status_interval = absl::Milliseconds(500);
  absl::Duration dns_refresh = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(2);
};

class WorkerPool {
 public:
  // INVALID_ARGUMENT for a model without endpoints and DNS name, or a bad address. Starts no
  // thread (Start does).
  static absl::StatusOr<std::unique_ptr<WorkerPool>> Create(std::vector<ModelRoute> models,
                                                            WorkerPoolOptions options,
                                                            MetricsRegistry* metrics);
  ~WorkerPool();  // Stop()

  // Resolves names and starts probing (first probes run at once, in the background).
  void Start();
  void Stop();

  // Every worker of `model` (empty for an unknown model), for PickWorker.
  std::vector<WorkerSnapshot> Snapshots(const std::string& model) const;
  // The configured model names, sorted.
  std::vector<std::string> Models() const;
  bool HasModel(const std::string& model) const;
  // ModelInfo for ListModels: id, and from the workers' Status: context_length, source,
  // quantization; ready_replicas = workers up and healthy.
  chat::v1::ModelInfo Info(const std::string& model) const;
  // OK when every configured model has at least one worker up and healthy; otherwise
  // UNAVAILABLE naming the models that have none (for /ready).
  absl::Status Ready() const;

  // The stub for a worker (shared: stays valid after the worker leaves the pool); nullptr when
  // `worker_id` is not in the pool.
  std::shared_ptr<worker::v1::Worker::Stub> Stub(const std::string& worker_id) const;

  // A request failed on the worker in a way that says the worker (not the request) is broken:
  // marks it down (not chosen until a health check passes) and logs why.
  void ReportFailure(const std::string& worker_id, const absl::Status& why);
  // The gateway started / finished a request on the worker (gateway_in_flight, see above).
  void RequestStarted(const std::string& worker_id);
  void RequestFinished(const std::string& worker_id);

  // The operator view (gateway.v1.ClusterStatus), models sorted by name, workers by address.
  // queued_requests is left 0 (the dispatcher fills it).
  gateway::v1::ClusterStatusResponse ClusterStatus() const;

 private:
  class Impl;
  explicit WorkerPool(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_WORKER_POOL_H_
