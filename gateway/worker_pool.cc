#include "gateway/worker_pool.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/host_port.h"
#include "common/log.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;
namespace gatewaypb = ::shardserve::gateway::v1;
namespace healthpb = ::grpc::health::v1;
namespace workerpb = ::shardserve::worker::v1;

namespace {

constexpr char kWorkerService[] = "shardserve.worker.v1.Worker";
// Probe deadlines: the probe interval, but never so short that a busy machine flaps.
constexpr absl::Duration kMinProbeDeadline = absl::Milliseconds(200);

// "host:port" of a worker to dial -> host (brackets removed) and port; false when it is not that
// (a host is required, and a port in [1, 65535]).
bool SplitAddress(const std::string& address, std::string* host, std::string* port) {
  int number = 0;
  if (!SplitHostPort(address, host, &number).ok() || host->empty() || number < 1) return false;
  *port = std::to_string(number);
  return true;
}

std::chrono::system_clock::time_point Deadline(absl::Duration timeout) {
  return absl::ToChronoTime(absl::Now() + std::max(timeout, kMinProbeDeadline));
}

// Every address `dns` ("host:port") resolves to, as "ip:port" / "[ip6]:port", sorted. IPv4 only
// when there is any (a dual-stack headless service lists each pod twice, once per family).
// NOT_FOUND when the name does not exist or has no address (a headless service with no ready
// pod); UNAVAILABLE for other failures (keep the previous answer).
absl::StatusOr<std::vector<std::string>> Resolve(const std::string& dns) {
  std::string host, port;
  if (!SplitAddress(dns, &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat("'", dns, "' is not host:port"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    const std::string reason = gai_strerror(rc);
    if (rc == EAI_NONAME
#ifdef EAI_NODATA
        || rc == EAI_NODATA
#endif
    ) {
      return absl::NotFoundError(absl::StrCat("dns ", dns, ": ", reason));
    }
    return absl::UnavailableError(absl::StrCat("dns ", dns, ": ", reason));
  }
  std::set<std::string> v4, v6;
  for (const addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char text[NI_MAXHOST];
    if (getnameinfo(ai->ai_addr, ai->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) !=
        0) {
      continue;
    }
    if (ai->ai_family == AF_INET) v4.insert(absl::StrCat(text, ":", port));
    if (ai->ai_family == AF_INET6) v6.insert(absl::StrCat("[", text, "]:", port));
  }
  freeaddrinfo(result);
  const std::set<std::string>& chosen = v4.empty() ? v6 : v4;
  if (chosen.empty()) return absl::NotFoundError(absl::StrCat("dns ", dns, ": no address"));
  return std::vector<std::string>(chosen.begin(), chosen.end());
}

// The probes in flight, so that Stop can cancel them and wait for their callbacks. Each callback
// holds a reference and calls Done last, after its last use of the pool: the pool may be gone
// by the time the callback returns, this object may not.
class InFlightCalls {
 public:
  uint64_t Add(std::shared_ptr<grpc::ClientContext> context) {
    absl::MutexLock lock(&mu_);
    const uint64_t id = ++next_id_;
    calls_.emplace(id, std::move(context));
    return id;
  }
  void Done(uint64_t id) {
    absl::MutexLock lock(&mu_);
    calls_.erase(id);
  }
  void CancelAllAndWait() {
    std::vector<std::shared_ptr<grpc::ClientContext>> contexts;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [id, context] : calls_) contexts.push_back(context);
    }
    for (const auto& context : contexts) context->TryCancel();  // not under mu_: may call back
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &InFlightCalls::EmptyLocked));
  }

 private:
  bool EmptyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return calls_.empty(); }
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<grpc::ClientContext>> calls_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

class WorkerPool::Impl {
 public:
  Impl(std::vector<ModelRoute> models, WorkerPoolOptions options, MetricsRegistry* metrics)
      : models_(std::move(models)), options_(options) {
    std::sort(models_.begin(), models_.end(),
              [](const ModelRoute& a, const ModelRoute& b) { return a.name < b.name; });
    if (metrics != nullptr) {
      up_gauge_ =
          metrics->Gauge("shardserve_gateway_worker_up",
                         "1 when the worker is up and healthy, else 0", {"model", "worker"});
      failures_ = metrics->Counter("shardserve_gateway_worker_failures_total",
                                   "Requests that failed in a way that marked the worker down",
                                   {"model", "worker"});
    }
    absl::MutexLock lock(&mu_);
    for (const ModelRoute& model : models_) {
      for (const std::string& endpoint : model.endpoints) AddLocked(endpoint, model.name);
    }
  }

  ~Impl() { Stop(); }

  void Start() {
    absl::MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
    prober_ = std::thread([this] { ProbeLoop(); });
    const bool any_dns = std::any_of(models_.begin(), models_.end(),
                                     [](const ModelRoute& m) { return !m.dns.empty(); });
    if (any_dns) resolver_ = std::thread([this] { ResolveLoop(); });
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      if (!started_ || stopping_) return;
      stopping_ = true;
    }
    if (prober_.joinable()) prober_.join();
    if (resolver_.joinable()) resolver_.join();
    // Probes still in flight: cancel them and wait for their callbacks, which use `this`.
    calls_->CancelAllAndWait();
  }

  std::vector<WorkerSnapshot> Snapshots(const std::string& model) const {
    std::vector<WorkerSnapshot> out;
    absl::MutexLock lock(&mu_);
    for (const auto& [address, worker] : workers_) {
      if (!worker->models.contains(model)) continue;
      WorkerSnapshot s;
      s.id = address;
      s.up = !worker->down;
      s.healthy = worker->healthy && worker->has_status;  // usable only once it has reported
      s.models.push_back(ServedModelLocked(*worker, model));
      if (worker->has_status) {
        s.running = static_cast<int>(worker->status.running_sequences());
        s.waiting = static_cast<int>(worker->status.waiting_sequences());
        s.kv_blocks_used = static_cast<int64_t>(worker->status.kv_blocks_used());
        s.kv_blocks_total = static_cast<int64_t>(worker->status.kv_blocks_total());
      }
      s.waiting += PendingLocked(*worker);
      out.push_back(std::move(s));
    }
    std::sort(out.begin(), out.end(),
              [](const WorkerSnapshot& a, const WorkerSnapshot& b) { return a.id < b.id; });
    return out;
  }

  std::vector<std::string> Models() const {
    std::vector<std::string> names;
    for (const ModelRoute& model : models_) names.push_back(model.name);
    return names;  // models_ is sorted
  }

  bool HasModel(const std::string& model) const { return FindModel(model) != nullptr; }

  chatpb::ModelInfo Info(const std::string& model) const {
    absl::MutexLock lock(&mu_);
    return InfoLocked(model);
  }

  absl::Status Ready() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> missing;
    for (const ModelRoute& model : models_) {
      int known = 0, ready = 0;
      std::string why;
      for (const auto& [address, worker] : workers_) {
        if (!worker->models.contains(model.name)) continue;
        ++known;
        if (ReadyForLocked(*worker, model.name)) {
          ++ready;
        } else if (why.empty()) {
          why = absl::StrCat("; ", address, ": ", MessageLocked(*worker, model.name));
        }
      }
      if (ready > 0) continue;
      if (known == 0) {
        missing.push_back(absl::StrCat(
            "'", model.name, "' (no worker found",
            model.dns.empty() ? "" : absl::StrCat(": dns ", model.dns, " resolved to no address"),
            dns_errors_.contains(model.name) ? absl::StrCat(" (", dns_errors_.at(model.name), ")")
                                             : "",
            ")"));
      } else {
        missing.push_back(absl::StrCat("'", model.name, "' (0 of ", known, " ready", why, ")"));
      }
    }
    if (missing.empty()) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("no worker up and healthy for model ", absl::StrJoin(missing, ", model ")));
  }

  std::shared_ptr<workerpb::Worker::Stub> Stub(const std::string& worker_id) const {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    return it == workers_.end() ? nullptr : it->second->stub;
  }

  void ReportFailure(const std::string& worker_id, const absl::Status& why) {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    Worker& worker = *it->second;
    worker.down = true;
    worker.down_reason = std::string(why.message());
    // Only a health check sent from now on can bring it back.
    worker.down_generation = ++generation_;
    for (const std::string& model : worker.models) {
      if (failures_ != nullptr) failures_->Add({model, worker_id}, 1);
    }
    NoteChangeLocked(worker);
  }

  void RequestStarted(const std::string& worker_id) {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    ++it->second->in_flight;
    ++it->second->started_total;
  }

  void RequestFinished(const std::string& worker_id) {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(worker_id);
    if (it == workers_.end()) return;
    Worker& worker = *it->second;
    if (worker.in_flight > 0) --worker.in_flight;
    if (worker.models.empty() && worker.in_flight == 0) workers_.erase(it);  // left DNS earlier
  }

  gatewaypb::ClusterStatusResponse ClusterStatus() const {
    gatewaypb::ClusterStatusResponse response;
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu_);
    for (const ModelRoute& model : models_) {
      gatewaypb::ModelStatus* status = response.add_models();
      *status->mutable_model() = InfoLocked(model.name);
      status->set_discovery(model.dns.empty() ? "static" : absl::StrCat("dns:", model.dns));
      for (const auto& [address, worker] : workers_) {  // std::map: sorted by address
        if (!worker->models.contains(model.name)) continue;
        gatewaypb::WorkerInfo* info = status->add_workers();
        info->set_address(address);
        info->set_up(!worker->down);
        info->set_healthy(worker->healthy);
        if (worker->has_status) {
          info->set_running_sequences(worker->status.running_sequences());
          info->set_waiting_sequences(worker->status.waiting_sequences());
          info->set_kv_blocks_used(worker->status.kv_blocks_used());
          info->set_kv_blocks_total(worker->status.kv_blocks_total());
        }
        info->set_gateway_in_flight(static_cast<uint32_t>(worker->in_flight));
        info->set_message(MessageLocked(*worker, model.name));
        info->set_seconds_since_seen(absl::ToDoubleSeconds(now - worker->last_seen));
      }
    }
    return response;
  }

 private:
  struct Worker {
    std::string address;
    std::set<std::string> models;  // configured models that list it; empty: leaving
    std::shared_ptr<grpc::Channel> channel;
    std::shared_ptr<workerpb::Worker::Stub> stub;
    std::unique_ptr<healthpb::Health::Stub> health;

    bool down = false;  // ReportFailure, or the health check could not reach it
    std::string down_reason;
    uint64_t down_generation = 0;  // health checks sent before this cannot bring it up
    bool healthy = false;
    std::string health_message;  // why not healthy
    bool has_status = false;
    workerpb::StatusResponse status;
    std::string status_message;  // the last Status error
    absl::Time last_seen;        // last answer of either probe (creation time before any)

    int in_flight = 0;
    int64_t started_total = 0;     // RequestStarted calls
    int64_t started_baseline = 0;  // started_total when the last answered Status was sent

    absl::Time next_health = absl::InfinitePast();
    absl::Time next_status = absl::InfinitePast();
    bool health_pending = false;
    bool status_pending = false;
    bool usable = false;  // as last logged
  };

  const ModelRoute* FindModel(const std::string& name) const {
    for (const ModelRoute& model : models_) {
      if (model.name == name) return &model;
    }
    return nullptr;
  }

  grpc::ChannelArguments ChannelArgs() const {
    grpc::ChannelArguments args;
    // A dead peer on a stream is noticed within ~15 s even without a RST (keepalive pings while
    // calls are active); a restarted worker is reconnected to within ~1 s.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // gRPC's "min reconnect backoff" is the least time a connection attempt is given.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                static_cast<int>(absl::ToInt64Milliseconds(options_.connect_timeout)));
    // One channel per worker address, never shared with another pool's (or a test's) channel.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return args;
  }

  void AddLocked(const std::string& address, const std::string& model)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = workers_.find(address);
    if (it != workers_.end()) {
      it->second->models.insert(model);
      UpdateGaugeLocked(*it->second);
      return;
    }
    auto worker = std::make_shared<Worker>();
    worker->address = address;
    worker->models.insert(model);
    worker->channel =
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), ChannelArgs());
    worker->stub = workerpb::Worker::NewStub(worker->channel);
    worker->health = healthpb::Health::NewStub(worker->channel);
    worker->health_message = "not checked yet";
    worker->last_seen = absl::Now();
    UpdateGaugeLocked(*worker);
    workers_.emplace(address, std::move(worker));
  }

  // The model `worker` serves as far as routing for `model` knows: its Status's, else `model`.
  static std::string ServedModelLocked(const Worker& worker, const std::string& model) {
    if (worker.has_status && !worker.status.model().id().empty()) {
      return worker.status.model().id();
    }
    return model;
  }

  bool ReadyForLocked(const Worker& worker, const std::string& model) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return UsableLocked(worker) && ServedModelLocked(worker, model) == model;
  }

  // Up, healthy, and its Status known (so that its model and load are).
  static bool UsableLocked(const Worker& worker) {
    return !worker.down && worker.healthy && worker.has_status;
  }

  // After any change to `worker`: the up gauge, and a log line when it becomes usable or stops
  // being usable.
  void NoteChangeLocked(Worker& worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const bool usable = UsableLocked(worker);
    if (usable != worker.usable && !stopping_) {
      const std::vector<std::string> models(worker.models.begin(), worker.models.end());
      nlohmann::json line = {{"event", usable ? "worker_up" : "worker_unavailable"},
                             {"worker", worker.address},
                             {"models", models}};
      if (!usable) line["reason"] = MessageLocked(worker, models.empty() ? "" : models.front());
      if (worker.has_status) line["serves"] = worker.status.model().id();
      LogJsonLine(line);
    }
    worker.usable = usable;
    UpdateGaugeLocked(worker);
  }

  static int PendingLocked(const Worker& worker) {
    return static_cast<int>(std::max<int64_t>(0, worker.started_total - worker.started_baseline));
  }

  // Why the worker cannot serve `model`, "" when it can.
  static std::string MessageLocked(const Worker& worker, const std::string& model) {
    if (worker.down) return absl::StrCat("down: ", worker.down_reason);
    if (!worker.healthy) return absl::StrCat("unhealthy: ", worker.health_message);
    if (!worker.has_status) {
      return worker.status_message.empty()
                 ? "no Status answer yet"
                 : absl::StrCat("no Status answer yet: ", worker.status_message);
    }
    const std::string served = ServedModelLocked(worker, model);
    if (served != model) {
      return absl::StrCat("serves model '", served, "', not '", model, "'");
    }
    if (!worker.status_message.empty()) return absl::StrCat("status: ", worker.status_message);
    return "";
  }

  chatpb::ModelInfo InfoLocked(const std::string& model) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    chatpb::ModelInfo info;
    info.set_id(model);
    uint32_t ready = 0;
    // Described by a ready worker's Status, else by any worker's that serves the model.
    const Worker* source = nullptr;
    bool source_ready = false;
    for (const auto& [address, worker] : workers_) {
      if (!worker->models.contains(model)) continue;
      const bool is_ready = ReadyForLocked(*worker, model);
      if (is_ready) ++ready;
      if (worker->has_status && worker->status.model().id() == model &&
          (source == nullptr || (is_ready && !source_ready))) {
        source = worker.get();
        source_ready = is_ready;
      }
    }
    if (source != nullptr) {
      info.set_context_length(source->status.model().context_length());
      info.set_source(source->status.model().source());
      info.set_quantization(source->status.model().quantization());
    }
    info.set_ready_replicas(ready);
    return info;
  }

  void UpdateGaugeLocked(const Worker& worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (up_gauge_ == nullptr) return;
    for (const std::string& model : worker.models) {
      up_gauge_->Set({model, worker.address}, ReadyForLocked(worker, model) ? 1 : 0);
    }
  }

  // ---- probing (the prober thread sends; gRPC's callback threads receive) ----

  void ProbeLoop() {
    while (true) {
      std::vector<std::shared_ptr<Worker>> health, status;
      absl::Time wake = absl::InfiniteFuture();
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        const absl::Time now = absl::Now();
        for (auto& [address, worker] : workers_) {
          if (worker->models.empty()) continue;  // leaving: no new requests, no probes
          if (!worker->health_pending && now >= worker->next_health) {
            worker->health_pending = true;
            worker->next_health = now + options_.health_interval;
            health.push_back(worker);
          }
          if (!worker->status_pending && now >= worker->next_status) {
            worker->status_pending = true;
            worker->next_status = now + options_.status_interval;
            status.push_back(worker);
          }
          if (!worker->health_pending) wake = std::min(wake, worker->next_health);
          if (!worker->status_pending) wake = std::min(wake, worker->next_status);
        }
        // A probe that finishes late sets its next time itself; look again at least this often.
        wake = std::min(wake, now + std::min(options_.health_interval, options_.status_interval));
      }
      for (const auto& worker : health) SendHealthCheck(worker);
      for (const auto& worker : status) SendStatus(worker);
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(this, &Impl::WakeProberLocked), wake);
      kick_ = false;
    }
  }

  bool WakeProberLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || kick_; }

  void SendHealthCheck(std::shared_ptr<Worker> worker) {
    struct Call {
      healthpb::HealthCheckRequest request;
      healthpb::HealthCheckResponse response;
    };
    auto call = std::make_shared<Call>();
    call->request.set_service(kWorkerService);
    auto context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(Deadline(options_.health_interval));
    uint64_t generation;
    {
      absl::MutexLock lock(&mu_);
      generation = ++generation_;
    }
    const uint64_t id = calls_->Add(context);
    worker->health->async()->Check(
        context.get(), &call->request, &call->response,
        [this, calls = calls_, worker, call, context, id, generation](grpc::Status status) mutable {
          OnHealthAnswer(*worker, status, call->response.status(), generation);
          ReleaseBeforeDone(&worker, &call, &context);
          calls->Done(id);  // last: the pool may be destroyed from here on
        });
  }

  void OnHealthAnswer(Worker& worker, const grpc::Status& status,
                      healthpb::HealthCheckResponse::ServingStatus serving, uint64_t generation) {
    absl::MutexLock lock(&mu_);
    worker.health_pending = false;
    kick_ = true;
    const bool reachable = status.error_code() != grpc::StatusCode::UNAVAILABLE &&
                           status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED &&
                           status.error_code() != grpc::StatusCode::CANCELLED;
    if (reachable) worker.last_seen = absl::Now();
    if (status.ok() && serving == healthpb::HealthCheckResponse::SERVING) {
      worker.healthy = true;
      worker.health_message.clear();
      if (worker.down && generation > worker.down_generation) {
        worker.down = false;
        worker.down_reason.clear();
      }
    } else {
      worker.healthy = false;
      if (status.ok()) {
        worker.health_message = absl::StrCat(
            "health check says ", healthpb::HealthCheckResponse::ServingStatus_Name(serving));
      } else {
        worker.health_message = absl::StrCat(
            "health check failed: ",
            absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), ": ",
            status.error_message());
      }
      if (!reachable && !stopping_ && !worker.down) {
        worker.down = true;
        worker.down_reason = worker.health_message;
        worker.down_generation = generation;
      }
    }
    NoteChangeLocked(worker);
  }

  void SendStatus(std::shared_ptr<Worker> worker) {
    struct Call {
      workerpb::StatusRequest request;
      workerpb::StatusResponse response;
    };
    auto call = std::make_shared<Call>();
    auto context = std::make_shared<grpc::ClientContext>();
    context->set_deadline(Deadline(options_.status_interval));
    int64_t started;
    {
      absl::MutexLock lock(&mu_);
      started = worker->started_total;
    }
    const uint64_t id = calls_->Add(context);
    worker->stub->async()->Status(
        context.get(), &call->request, &call->response,
        [this, calls = calls_, worker, call, context, id, started](grpc::Status status) mutable {
          {
            absl::MutexLock lock(&mu_);
            worker->status_pending = false;
            kick_ = true;
            if (status.ok()) {
              worker->has_status = true;
              worker->status = std::move(call->response);
              worker->status_message.clear();
              worker->last_seen = absl::Now();
              // Requests started after this Status was sent are not in its counts.
              worker->started_baseline = std::max(worker->started_baseline, started);
              NoteChangeLocked(*worker);  // the served model may have changed too
            } else {
              worker->status_message = absl::StrCat(
                  absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())),
                  ": ", status.error_message());
            }
          }
          ReleaseBeforeDone(&worker, &call, &context);
          calls->Done(id);  // last: the pool may be destroyed from here on
        });
  }

  // A probe's callback drops its references (the worker holds the channel) before it says it
  // is done: once Done runs the pool may be destroyed, and a channel whose last reference went
  // on gRPC's callback thread after that tears down the shared callback queue from its own
  // thread, which gRPC 1.51 aborts on (grpc/grpc#32584).
  template <typename W, typename C, typename X>
  static void ReleaseBeforeDone(W* worker, C* call, X* context) {
    worker->reset();
    call->reset();
    context->reset();
  }

  // ---- DNS (its own thread: getaddrinfo blocks) ----

  void ResolveLoop() {
    while (true) {
      for (const ModelRoute& model : models_) {
        if (model.dns.empty()) continue;
        absl::StatusOr<std::vector<std::string>> addresses = Resolve(model.dns);
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        if (!addresses.ok() && addresses.status().code() != absl::StatusCode::kNotFound) {
          // A resolver hiccup: keep the workers we know.
          dns_errors_[model.name] = std::string(addresses.status().message());
          continue;
        }
        if (addresses.ok()) {
          dns_errors_.erase(model.name);
        } else {
          dns_errors_[model.name] = std::string(addresses.status().message());
        }
        ApplyResolvedLocked(model.name, addresses.ok() ? *addresses : std::vector<std::string>{});
      }
      absl::MutexLock lock(&mu_);
      const absl::Time until = absl::Now() + options_.dns_refresh;
      mu_.AwaitWithDeadline(absl::Condition(&stopping_), until);
      if (stopping_) return;
    }
  }

  void ApplyResolvedLocked(const std::string& model, const std::vector<std::string>& addresses)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::set<std::string> now(addresses.begin(), addresses.end());
    std::vector<std::string> added, removed;
    for (auto it = workers_.begin(); it != workers_.end();) {
      Worker& worker = *it->second;
      if (worker.models.contains(model) && !now.contains(it->first) &&
          !StaticEndpointLocked(model, it->first)) {
        worker.models.erase(model);
        removed.push_back(it->first);
        if (up_gauge_ != nullptr) up_gauge_->Set({model, it->first}, 0);
        if (worker.models.empty() && worker.in_flight == 0) {
          it = workers_.erase(it);
          continue;
        }
      }
      ++it;
    }
    for (const std::string& address : now) {
      auto it = workers_.find(address);
      if (it == workers_.end() || !it->second->models.contains(model)) {
        AddLocked(address, model);
        added.push_back(address);
      }
    }
    if (!added.empty() || !removed.empty()) {
      kick_ = true;
      LogJsonLine({{"event", "workers_resolved"},
                   {"model", model},
                   {"added", added},
                   {"removed", removed},
                   {"workers", addresses}});
    }
  }

  bool StaticEndpointLocked(const std::string& model, const std::string& address) const {
    const ModelRoute* route = FindModel(model);
    return route != nullptr && std::find(route->endpoints.begin(), route->endpoints.end(),
                                         address) != route->endpoints.end();
  }

  std::vector<ModelRoute> models_;  // sorted by name; immutable
  const WorkerPoolOptions options_;
  MetricFamily* up_gauge_ = nullptr;
  MetricFamily* failures_ = nullptr;

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Worker>> workers_ ABSL_GUARDED_BY(mu_);  // by address
  std::map<std::string, std::string> dns_errors_ ABSL_GUARDED_BY(mu_);  // model -> last error
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // orders health checks and failures
  const std::shared_ptr<InFlightCalls> calls_ = std::make_shared<InFlightCalls>();
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool kick_ ABSL_GUARDED_BY(mu_) = false;  // a probe answered or the workers changed
  std::thread prober_;
  std::thread resolver_;
};

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(std::vector<ModelRoute> models,
                                                               WorkerPoolOptions options,
                                                               MetricsRegistry* metrics) {
  std::set<std::string> names;
  for (const ModelRoute& model : models) {
    if (model.name.empty()) return absl::InvalidArgumentError("worker pool: a model has no name");
    if (!names.insert(model.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("worker pool: model '", model.name, "' is configured twice"));
    }
    if (model.endpoints.empty() && model.dns.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("worker pool: model '", model.name, "' has neither endpoints nor dns"));
    }
    std::string host, port;
    for (const std::string& endpoint : model.endpoints) {
      if (!SplitAddress(endpoint, &host, &port)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "worker pool: model '", model.name, "': endpoint '", endpoint, "' is not host:port"));
      }
    }
    if (!model.dns.empty() && !SplitAddress(model.dns, &host, &port)) {
      return absl::InvalidArgumentError(absl::StrCat("worker pool: model '", model.name, "': dns '",
                                                     model.dns, "' is not host:port"));
    }
  }
  for (absl::Duration d : {options.health_interval, options.status_interval, options.dns_refresh,
                           options.connect_timeout}) {
    if (d <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError("worker pool: probe intervals must be positive");
    }
  }
  return std::unique_ptr<WorkerPool>(
      new WorkerPool(std::make_unique<Impl>(std::move(models), options, metrics)));
}

WorkerPool::WorkerPool(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
WorkerPool::~WorkerPool() { Stop(); }

void WorkerPool::Start() { impl_->Start(); }
void WorkerPool::Stop() { impl_->Stop(); }
std::vector<WorkerSnapshot> WorkerPool::Snapshots(const std::string& model) const {
  return impl_->Snapshots(model);
}
std::vector<std::string> WorkerPool::Models() const { return impl_->Models(); }
bool WorkerPool::HasModel(const std::string& model) const { return impl_->HasModel(model); }
chat::v1::ModelInfo WorkerPool::Info(const std::string& model) const { return impl_->Info(model); }
absl::Status WorkerPool::Ready() const { return impl_->Ready(); }
std::shared_ptr<worker::v1::Worker::Stub> WorkerPool::Stub(const std::string& worker_id) const {
  return impl_->Stub(worker_id);
}
void WorkerPool::ReportFailure(const std::string& worker_id, const absl::Status& why) {
  impl_->ReportFailure(worker_id, why);
}
void WorkerPool::RequestStarted(const std::string& worker_id) { impl_->RequestStarted(worker_id); }
void WorkerPool::RequestFinished(const std::string& worker_id) {
  impl_->RequestFinished(worker_id);
}
gateway::v1::ClusterStatusResponse WorkerPool::ClusterStatus() const {
  return impl_->ClusterStatus();
}

}  // namespace shardserve
