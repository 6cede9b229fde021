#include "gateway/dispatcher.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "gateway/router.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "shardserve/worker/v1/worker.grpc.pb.h"
#include "worker/rpc/chat_validation.h"

namespace shardserve {

namespace chatpb = ::shardserve::chat::v1;
namespace workerpb = ::shardserve::worker::v1;

namespace {

// How a worker's error status is treated.
enum class Failure {
  kRequest,  // about the request itself: goes to the caller unchanged
  kDown,     // the worker is broken or unreachable: reported to the pool, retried elsewhere
  kBusy,     // the worker's queue is full: retried elsewhere, not reported
  kOther,    // the stream broke without the worker saying why (CANCELLED not asked for)
};

Failure Classify(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
      return Failure::kDown;
    case absl::StatusCode::kResourceExhausted:
      // The engine's queue bound ("the queue is full (N requests waiting)"); a prompt over the
      // context is RESOURCE_EXHAUSTED too but about the request.
      return absl::StrContains(status.message(), "queue is full") ? Failure::kBusy
                                                                  : Failure::kRequest;
    case absl::StatusCode::kCancelled:
      return Failure::kOther;
    default:
      return Failure::kRequest;
  }
}

std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

// Rough prompt size before the worker tokenizes: about four characters per token.
int64_t EstimatePromptTokens(const chatpb::ChatRequest& request) {
  size_t chars = request.prompt().size();
  for (const chatpb::Message& m : request.messages()) chars += m.content().size();
  return std::max<int64_t>(1, static_cast<int64_t>((chars + 3) / 4));
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t seconds = nanos / 1000000000;
  int64_t rest = nanos % 1000000000;
  if (rest < 0) rest += 1000000000, --seconds;
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(rest));
}

}  // namespace

class Dispatcher::Impl {
 public:
  class Call;
  class Attempt;

  Impl(const GatewayConfig& config, WorkerPool* pool, Admission* admission,
       MetricsRegistry* metrics);

  absl::StatusOr<std::shared_ptr<ChatCall>> Start(DispatchRequest request, ChatCallbacks callbacks,
                                                  absl::Duration* retry_after);
  void CancelAll();
  // Refuses new calls, cancels every live one and waits until each delivered on_done.
  void Shutdown();

  // Counts a request that ended before it started (no callback runs) and logs it.
  void Reject(const std::string& request_id, const std::string& front, const std::string& model,
              const std::string& tenant, const absl::Status& status);
  std::string NewRequestId();
  // Leaves the model's queue (first chunk or end); idempotence is the caller's.
  void Dequeue(const std::string& model);
  // The call's on_done ran: it touches nothing of the dispatcher any more.
  void Forget(Call* call);

  const GatewayConfig config_;
  WorkerPool* const pool_;
  Admission* const admission_;
  std::map<std::string, int> max_queued_;  // per configured model

  MetricFamily* requests_;
  MetricFamily* ttft_;
  MetricFamily* inter_token_;
  MetricFamily* duration_;
  MetricFamily* queue_time_;
  MetricFamily* prompt_tokens_;
  MetricFamily* generation_tokens_;
  MetricFamily* queue_depth_;
  MetricFamily* in_flight_gauge_;
  MetricFamily* retries_;

  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> queued_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Call*, std::weak_ptr<Call>> live_ ABSL_GUARDED_BY(mu_);
  int attempts_ ABSL_GUARDED_BY(mu_) = 0;  // Attempt objects alive
  absl::BitGen random_ ABSL_GUARDED_BY(mu_);
};

// One attempt of one choice on one worker: a callback-API client stream (no thread is held
// while it runs). It lives while gRPC may call it (self_) and while the call holds it.
class Dispatcher::Impl::Attempt : public grpc::ClientReadReactor<chatpb::ChatChunk>,
                                  public std::enable_shared_from_this<Attempt> {
 public:
  Attempt(Impl* impl, std::shared_ptr<Call> call, int choice, std::string worker,
          std::shared_ptr<workerpb::Worker::Stub> stub)
      : token_(impl),
        call_(std::move(call)),
        choice_(choice),
        worker_(std::move(worker)),
        stub_(std::move(stub)) {}

  // Starts the stream. Call without holding the call's lock (gRPC may run reactions inline).
  void Start(workerpb::GenerateRequest request, absl::Time deadline) {
    self_ = shared_from_this();
    request_ = std::move(request);
    if (deadline != absl::InfiniteFuture()) context_.set_deadline(absl::ToChronoTime(deadline));
    stub_->async()->Generate(&context_, &request_, this);
    StartRead(&chunk_);
    StartCall();
  }

  void Cancel() { context_.TryCancel(); }

  const std::string& worker() const { return worker_; }

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  // Counts the attempt in the dispatcher from construction until every other member is gone:
  // declared first, destroyed last. The stub and the ClientContext hold the channel, and gRPC
  // (1.51, callback API over its alternative completion queue) must not see the process's last
  // channel released on one of its own callback threads, so the dispatcher outlives every
  // attempt and the pool (destroyed after it) releases the channels.
  struct Token {
    explicit Token(Impl* impl) : impl(impl) {
      absl::MutexLock lock(&impl->mu_);
      ++impl->attempts_;
    }
    ~Token() {
      absl::MutexLock lock(&impl->mu_);
      --impl->attempts_;
    }
    Impl* const impl;
  };
  Token token_;
  std::shared_ptr<Call> call_;
  const int choice_;
  const std::string worker_;
  std::shared_ptr<workerpb::Worker::Stub> stub_;  // keeps the channel alive
  grpc::ClientContext context_;
  workerpb::GenerateRequest request_;
  chatpb::ChatChunk chunk_;
  std::shared_ptr<Attempt> self_;  // set from Start until OnDone
};

class Dispatcher::Impl::Call : public ChatCall, public std::enable_shared_from_this<Call> {
 public:
  Call(Impl* impl, chatpb::ChatRequest request, std::string request_id, std::string tenant,
       std::string front, absl::Time arrival, absl::Time deadline, int64_t prompt_estimate,
       uint64_t prefix_key, ChatCallbacks callbacks)
      : impl_(impl),
        request_(std::move(request)),
        request_id_(std::move(request_id)),
        tenant_(std::move(tenant)),
        front_(std::move(front)),
        model_(request_.model()),
        arrival_(arrival),
        deadline_(deadline),
        prompt_estimate_(prompt_estimate),
        prefix_key_(prefix_key),
        n_(std::max<int>(1, static_cast<int>(request_.n()))),
        callbacks_(std::move(callbacks)) {
    absl::MutexLock lock(&mu_);
    choices_.resize(n_);
  }

  void Cancel() override {
    std::vector<std::shared_ptr<Attempt>> attempts;
    {
      absl::MutexLock lock(&mu_);
      if (finishing_ || cancelled_) return;
      cancelled_ = true;
      attempts = RunningAttemptsLocked();
    }
    for (const auto& attempt : attempts) attempt->Cancel();
  }
  const std::string& request_id() const override { return request_id_; }
  const std::string& tenant() const override { return tenant_; }

  // Picks a worker for every choice and installs the attempts (nothing started yet). On error
  // nothing is left behind on the pool.
  absl::Status Prepare() {
    absl::MutexLock lock(&mu_);
    for (int i = 0; i < n_; ++i) {
      absl::Status picked = PickLocked(i);
      if (!picked.ok()) {
        for (int j = 0; j < i; ++j) {
          impl_->pool_->RequestFinished(choices_[j].attempt->worker());
          choices_[j].attempt.reset();
        }
        return picked;
      }
    }
    return absl::OkStatus();
  }

  // Starts the installed attempts.
  void Launch() {
    std::vector<std::pair<std::shared_ptr<Attempt>, int>> starts;
    {
      absl::MutexLock lock(&mu_);
      for (int i = 0; i < n_; ++i) {
        starts.emplace_back(choices_[i].attempt, i);
      }
    }
    for (auto& [attempt, i] : starts) attempt->Start(GenerateRequestFor(i), deadline_);
  }

  // A chunk from `attempt` (choice `index`). Returns after queueing it for the caller.
  void OnChunk(int index, const Attempt* attempt, chatpb::ChatChunk chunk) {
    const absl::Time now = absl::Now();
    bool first = false;
    {
      absl::MutexLock lock(&mu_);
      Choice& c = choices_[index];
      if (finishing_ || c.done || c.attempt.get() != attempt) return;
      const int tokens = chunk.token_ids_size();
      if (c.relayed && tokens > 0) {
        impl_->inter_token_->Observe({model_}, absl::ToDoubleSeconds(now - c.last_chunk) / tokens);
      }
      c.relayed = true;
      c.tokens += tokens;
      if (tokens > 0) c.last_chunk = now;
      if (queued_) {
        queued_ = false;
        first = true;
        first_chunk_ = now;
      }
      if (chunk.has_usage()) {
        c.usage = chunk.usage();
        c.has_usage = true;
      }
      if (chunk.has_timings()) c.timings = chunk.timings();
      if (n_ > 1) {
        // Usage and timings go out once, summed, after every choice ended.
        chunk.clear_usage();
        chunk.clear_timings();
      }
      chunk.set_index(static_cast<uint32_t>(index));
      chunk.clear_request_id();
      chunk.clear_model();
      if (!first_out_) {
        chunk.set_request_id(request_id_);
        chunk.set_model(model_);
        first_out_ = true;
      }
      out_.push_back(std::move(chunk));
    }
    if (first) {
      impl_->Dequeue(model_);
      impl_->ttft_->Observe({model_}, absl::ToDoubleSeconds(now - arrival_));
    }
    Deliver();
  }

  // `attempt` (choice `index`) ended with `grpc_status`.
  void OnAttemptDone(int index, Attempt* attempt, const grpc::Status& grpc_status) {
    const absl::Status status = FromGrpcStatus(grpc_status);
    const std::string worker = attempt->worker();
    bool report = false, retry = false;
    std::vector<std::shared_ptr<Attempt>> to_cancel, to_start;
    std::optional<absl::Status> final_status;
    {
      absl::MutexLock lock(&mu_);
      Choice& c = choices_[index];
      if (c.attempt.get() == attempt) c.attempt.reset();
      if (!c.done) {
        const Failure failure = Classify(status);
        if (status.ok()) {
          EndChoiceLocked(index, absl::OkStatus());
        } else if (cancelled_) {
          EndChoiceLocked(index, absl::CancelledError("the request was cancelled"));
        } else if (finishing_) {
          EndChoiceLocked(index, status);  // cancelled because another choice failed
        } else if (failure == Failure::kRequest) {
          EndChoiceLocked(index, status);
        } else {
          report = failure == Failure::kDown;
          c.tried.push_back(worker);
          c.errors.push_back(absl::StrCat(worker, ": ", CodeName(status.code()), ": ",
                                          absl::string_view(status.message())));
          if (failure != Failure::kBusy) c.all_busy = false;
          if (c.relayed) {
            EndChoiceLocked(index, absl::UnavailableError(absl::StrCat(
                                       "worker ", worker, " failed after ", c.tokens,
                                       " tokens: ", absl::string_view(status.message()))));
          } else if (c.attempts >= impl_->config_.max_attempts) {
            EndChoiceLocked(index, ExhaustedLocked(c, absl::StrCat("max_attempts is ",
                                                                   impl_->config_.max_attempts)));
          } else if (absl::Now() >= deadline_) {
            EndChoiceLocked(index, absl::DeadlineExceededError(
                                       "the request's deadline passed before a worker answered"));
          } else {
            absl::Status picked = PickLocked(index);
            if (picked.ok()) {
              retry = true;
              to_start.push_back(c.attempt);
            } else {
              EndChoiceLocked(index, ExhaustedLocked(c, std::string(picked.message())));
            }
          }
        }
      }
      if (!finishing_ && !error_.ok()) {
        finishing_ = true;  // a choice failed: the others are cancelled
        to_cancel = RunningAttemptsLocked();
      }
      if (!finishing_ && AllDoneLocked()) finishing_ = true;
      // The pool and metrics are touched under mu_: once the last attempt is seen to end,
      // Finish may hand out on_done and the dispatcher may go away.
      impl_->pool_->RequestFinished(worker);
      if (report) impl_->pool_->ReportFailure(worker, status);
      if (retry) impl_->retries_->Add({model_}, 1);
      if (finishing_ && !final_decided_ && RunningAttemptsLocked().empty()) {
        final_decided_ = true;
        final_status = error_;
        if (error_.ok() && n_ > 1) out_.push_back(SummaryChunkLocked());
      }
    }
    // Outside the lock: only the attempts (each kept alive by its shared_ptr) and Finish, which
    // runs on the one thread that saw the last attempt end.
    for (const auto& a : to_cancel) a->Cancel();
    for (const auto& a : to_start) a->Start(GenerateRequestFor(index), deadline_);
    if (final_status.has_value()) Finish(*final_status);
  }

 private:
  struct Choice {
    std::shared_ptr<Attempt> attempt;  // running (or about to start); null between / after
    std::vector<std::string> tried;    // workers this choice failed on
    std::vector<std::string> errors;   // "worker: CODE: message" for each
    bool all_busy = true;              // every failure so far was a full queue
    int attempts = 0;
    bool relayed = false;  // a chunk of this choice reached the caller: no more retries
    int64_t tokens = 0;    // tokens relayed for this choice
    absl::Time last_chunk;
    bool done = false;
    bool has_usage = false;
    chatpb::Usage usage;
    chatpb::Timings timings;
  };

  // Picks a worker for choice `index` (not in its tried list) and installs a new attempt.
  absl::Status PickLocked(int index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Choice& c = choices_[index];
    RouteRequest route;
    route.model = model_;
    route.prefix_key = prefix_key_;
    route.exclude = c.tried;
    while (true) {
      std::vector<WorkerSnapshot> workers = impl_->pool_->Snapshots(model_);
      absl::StatusOr<size_t> picked = PickWorker(workers, route, impl_->config_.router);
      if (!picked.ok()) {
        if (picked.status().code() == absl::StatusCode::kNotFound) {
          // The model is configured but its DNS name has resolved to nothing (yet).
          return absl::UnavailableError(absl::StrCat("model '", model_, "' has no workers"));
        }
        return picked.status();
      }
      const std::string& id = workers[*picked].id;
      std::shared_ptr<workerpb::Worker::Stub> stub = impl_->pool_->Stub(id);
      if (stub == nullptr) {  // left the pool since the snapshot
        route.exclude.push_back(id);
        continue;
      }
      ++c.attempts;
      workers_used_.push_back(id);
      impl_->pool_->RequestStarted(id);
      c.attempt = std::make_shared<Attempt>(impl_, shared_from_this(), index, id, std::move(stub));
      return absl::OkStatus();
    }
  }

  workerpb::GenerateRequest GenerateRequestFor(int index) const {
    workerpb::GenerateRequest out;
    chatpb::ChatRequest* request = out.mutable_request();
    *request = request_;
    request->set_n(1);
    request->set_request_id(request_id_);
    if (request->sampling().has_seed()) {
      request->mutable_sampling()->set_seed(request_.sampling().seed() + index);
    }
    out.set_request_id(request_id_);
    out.set_tenant(tenant_);
    if (deadline_ != absl::InfiniteFuture()) SetTimestamp(deadline_, out.mutable_deadline());
    return out;
  }

  // The error for a choice no worker could take.
  absl::Status ExhaustedLocked(const Choice& c, const std::string& why) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    const std::string tried = absl::StrJoin(c.errors, "; ");
    if (c.all_busy && !c.errors.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat("every worker tried for model '", model_,
                                                       "' has a full queue (", tried, ")"));
    }
    return absl::UnavailableError(
        absl::StrCat("no worker could serve model '", model_, "' (", why, "); tried ", tried));
  }

  void EndChoiceLocked(int index, absl::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    choices_[index].done = true;
    if (!status.ok() && error_.ok()) error_ = std::move(status);
  }

  bool AllDoneLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    for (const Choice& c : choices_) {
      if (!c.done) return false;
    }
    return true;
  }

  std::vector<std::shared_ptr<Attempt>> RunningAttemptsLocked() const
      ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    std::vector<std::shared_ptr<Attempt>> out;
    for (const Choice& c : choices_) {
      if (c.attempt != nullptr) out.push_back(c.attempt);
    }
    return out;
  }

  // The n > 1 stream's last chunk: usage summed over the choices (the prompt counted once, as
  // every choice has the same one), timings of the first token and the longest decode.
  chatpb::ChatChunk SummaryChunkLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    chatpb::ChatChunk chunk;
    chatpb::Usage* usage = chunk.mutable_usage();
    chatpb::Timings* timings = chunk.mutable_timings();
    bool first = true;
    for (const Choice& c : choices_) {
      usage->set_prompt_tokens(std::max(usage->prompt_tokens(), c.usage.prompt_tokens()));
      usage->set_completion_tokens(usage->completion_tokens() + c.usage.completion_tokens());
      usage->set_cached_prompt_tokens(
          std::max(usage->cached_prompt_tokens(), c.usage.cached_prompt_tokens()));
      if (first) {
        *timings = c.timings;
        first = false;
        continue;
      }
      timings->set_queue_seconds(std::min(timings->queue_seconds(), c.timings.queue_seconds()));
      timings->set_time_to_first_token_seconds(std::min(timings->time_to_first_token_seconds(),
                                                        c.timings.time_to_first_token_seconds()));
      timings->set_decode_seconds(std::max(timings->decode_seconds(), c.timings.decode_seconds()));
      timings->set_prefill_seconds(
          std::max(timings->prefill_seconds(), c.timings.prefill_seconds()));
    }
    if (!first_out_) {
      chunk.set_request_id(request_id_);
      chunk.set_model(model_);
    }
    return chunk;
  }

  // Every attempt has ended: account, log, and hand the caller its on_done.
  void Finish(const absl::Status& status) {
    const absl::Time now = absl::Now();
    int64_t prompt_tokens = 0, completion_tokens = 0;
    double prefill = 0;
    bool was_queued;
    absl::Time first_chunk;
    std::vector<std::string> workers;
    {
      absl::MutexLock lock(&mu_);
      first_chunk = first_chunk_;
      was_queued = queued_;
      queued_ = false;
      for (const Choice& c : choices_) {
        if (c.has_usage) {
          prompt_tokens = std::max<int64_t>(prompt_tokens, c.usage.prompt_tokens());
          completion_tokens += c.usage.completion_tokens();
          prefill = std::max(prefill, c.timings.prefill_seconds());
        } else {
          completion_tokens += c.tokens;
        }
      }
      workers = workers_used_;
    }
    if (was_queued) impl_->Dequeue(model_);
    {
      absl::MutexLock lock(&impl_->mu_);
      --impl_->in_flight_;
      impl_->in_flight_gauge_->Set({}, impl_->in_flight_);
    }
    const std::string code = CodeName(status.code());
    impl_->requests_->Add({model_, tenant_, code}, 1);
    impl_->duration_->Observe({model_}, absl::ToDoubleSeconds(now - arrival_));
    if (first_chunk != absl::InfinitePast()) {
      impl_->queue_time_->Observe(
          {model_}, std::max(0.0, absl::ToDoubleSeconds(first_chunk - arrival_) - prefill));
    }
    impl_->prompt_tokens_->Add({model_, tenant_}, static_cast<double>(prompt_tokens));
    impl_->generation_tokens_->Add({model_, tenant_}, static_cast<double>(completion_tokens));
    // Admit charged the estimate; the rest now (never a refund above the bucket).
    impl_->admission_->Charge(
        tenant_, completion_tokens + std::max<int64_t>(0, prompt_tokens - prompt_estimate_), now);

    nlohmann::json line = {{"event", "request"},
                           {"request_id", request_id_},
                           {"front", front_},
                           {"model", model_},
                           {"tenant", tenant_},
                           {"workers", workers},
                           {"code", code},
                           {"n", n_},
                           {"prompt_tokens", prompt_tokens},
                           {"completion_tokens", completion_tokens},
                           {"duration_seconds", absl::ToDoubleSeconds(now - arrival_)}};
    if (first_chunk != absl::InfinitePast()) {
      line["ttft_seconds"] = absl::ToDoubleSeconds(first_chunk - arrival_);
    }
    if (!status.ok()) line["error"] = std::string(status.message());
    LogJsonLine(line);

    {
      absl::MutexLock lock(&mu_);
      final_ = status;
    }
    Deliver();
  }

  // Hands queued chunks and then the final status to the caller, one thread at a time and
  // never under mu_, so callbacks run in order and on_done exactly once, last.
  void Deliver() {
    while (true) {
      std::deque<chatpb::ChatChunk> chunks;
      std::optional<absl::Status> done;
      {
        absl::MutexLock lock(&mu_);
        if (delivering_ || delivered_done_) return;
        chunks.swap(out_);
        if (final_.has_value()) {
          done = final_;
          delivered_done_ = true;
        }
        if (chunks.empty() && !done.has_value()) return;
        delivering_ = true;
      }
      for (chatpb::ChatChunk& chunk : chunks) callbacks_.on_chunk(std::move(chunk));
      if (done.has_value()) {
        callbacks_.on_done(*done);
        impl_->Forget(this);  // the last touch of the dispatcher
        return;
      }
      absl::MutexLock lock(&mu_);
      delivering_ = false;
    }
  }

  Impl* const impl_;
  const chatpb::ChatRequest request_;
  const std::string request_id_;
  const std::string tenant_;
  const std::string front_;
  const std::string model_;
  const absl::Time arrival_;
  const absl::Time deadline_;
  const int64_t prompt_estimate_;
  const uint64_t prefix_key_;
  const int n_;
  const ChatCallbacks callbacks_;

  absl::Mutex mu_;
  std::vector<Choice> choices_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> workers_used_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;      // no more chunks; waiting for attempts
  bool final_decided_ ABSL_GUARDED_BY(mu_) = false;  // Finish runs (once)
  absl::Status error_ ABSL_GUARDED_BY(mu_);          // the first choice's error
  bool queued_ ABSL_GUARDED_BY(mu_) = true;          // counted in the model's queue depth
  absl::Time first_chunk_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool first_out_ ABSL_GUARDED_BY(mu_) = false;  // a chunk with request_id went out
  std::deque<chatpb::ChatChunk> out_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  bool delivered_done_ ABSL_GUARDED_BY(mu_) = false;
};

void Dispatcher::Impl::Attempt::OnReadDone(bool ok) {
  if (!ok) return;  // the stream ended; OnDone follows
  call_->OnChunk(choice_, this, std::move(chunk_));
  chunk_.Clear();
  StartRead(&chunk_);
}

void Dispatcher::Impl::Attempt::OnDone(const grpc::Status& status) {
  call_->OnAttemptDone(choice_, this, status);
  std::shared_ptr<Attempt> self = std::move(self_);  // may destroy this on return
}

Dispatcher::Impl::Impl(const GatewayConfig& config, WorkerPool* pool, Admission* admission,
                       MetricsRegistry* metrics)
    : config_(config), pool_(pool), admission_(admission) {
  for (const ModelRoute& route : config_.models) max_queued_[route.name] = route.max_queued;
  const std::vector<double> latency = MetricsRegistry::LatencyBuckets();
  requests_ = metrics->Counter("shardserve_gateway_requests_total",
                               "Requests by model, tenant and final status code",
                               {"model", "tenant", "code"});
  ttft_ = metrics->Histogram("shardserve_gateway_time_to_first_token_seconds",
                             "From arrival at the gateway to the first chunk relayed", {"model"},
                             latency);
  inter_token_ =
      metrics->Histogram("shardserve_gateway_inter_token_latency_seconds",
                         "Time between relayed tokens of one choice", {"model"}, latency);
  duration_ = metrics->Histogram("shardserve_gateway_request_duration_seconds",
                                 "From arrival to the end of the stream", {"model"}, latency);
  queue_time_ = metrics->Histogram(
      "shardserve_gateway_queue_time_seconds",
      "From arrival to the first chunk, minus the worker's prefill time", {"model"}, latency);
  prompt_tokens_ = metrics->Counter("shardserve_gateway_prompt_tokens_total",
                                    "Prompt tokens of finished requests", {"model", "tenant"});
  generation_tokens_ = metrics->Counter("shardserve_gateway_generation_tokens_total",
                                        "Tokens generated", {"model", "tenant"});
  queue_depth_ = metrics->Gauge("shardserve_gateway_queue_depth",
                                "Requests admitted and waiting for their first token", {"model"});
  in_flight_gauge_ =
      metrics->Gauge("shardserve_gateway_in_flight_requests", "Requests running at the gateway");
  retries_ = metrics->Counter("shardserve_gateway_retries_total",
                              "Attempts moved to another worker before the first token", {"model"});
  for (const ModelRoute& route : config_.models) queue_depth_->Set({route.name}, 0);
  in_flight_gauge_->Set({}, 0);
}

std::string Dispatcher::Impl::NewRequestId() {
  absl::MutexLock lock(&mu_);
  return absl::StrFormat("req-%016x", absl::Uniform<uint64_t>(random_));
}

void Dispatcher::Impl::Dequeue(const std::string& model) {
  absl::MutexLock lock(&mu_);
  const int depth = --queued_[model];
  queue_depth_->Set({model}, depth);
}

void Dispatcher::Impl::Forget(Call* call) {
  absl::MutexLock lock(&mu_);
  live_.erase(call);
}

void Dispatcher::Impl::Reject(const std::string& request_id, const std::string& front,
                              const std::string& model, const std::string& tenant,
                              const absl::Status& status) {
  // Unknown model names are not labels (they would grow the metrics without bound).
  requests_->Add({pool_->HasModel(model) ? model : "unknown", tenant, CodeName(status.code())}, 1);
  LogJsonLine({{"event", "request"},
               {"request_id", request_id},
               {"front", front},
               {"model", model},
               {"tenant", tenant},
               {"code", CodeName(status.code())},
               {"error", std::string(status.message())}});
}

absl::StatusOr<std::shared_ptr<ChatCall>> Dispatcher::Impl::Start(DispatchRequest request,
                                                                  ChatCallbacks callbacks,
                                                                  absl::Duration* retry_after) {
  const absl::Time now = absl::Now();
  const absl::Duration retry = absl::Seconds(config_.retry_after_seconds);
  chatpb::ChatRequest& chat = request.request;
  if (chat.request_id().empty()) chat.set_request_id(NewRequestId());
  const std::string request_id = chat.request_id();
  const std::string model = chat.model();
  std::string tenant_label = "none";  // until authenticated
  auto reject = [&](absl::Status status) {
    Reject(request_id, request.front, model, tenant_label, status);
    return status;
  };

  {
    absl::MutexLock lock(&mu_);
    if (draining_) {
      if (retry_after != nullptr) *retry_after = retry;
      return reject(absl::UnavailableError("the gateway is shutting down"));
    }
  }
  absl::StatusOr<std::string> tenant = admission_->Authenticate(request.api_key);
  if (!tenant.ok()) return reject(tenant.status());
  tenant_label = *tenant;
  if (absl::Status valid = ValidateChatRequest(chat, kMaxChoices); !valid.ok()) {
    return reject(valid);
  }
  if (!pool_->HasModel(model)) {
    return reject(
        absl::NotFoundError(absl::StrCat("model '", model, "' is not served here; ",
                                         "served: ", absl::StrJoin(pool_->Models(), ", "))));
  }
  absl::Time deadline = request.deadline;
  if (config_.request_timeout_seconds > 0) {
    deadline = std::min(deadline, now + absl::Seconds(config_.request_timeout_seconds));
  }
  if (deadline <= now) {
    return reject(absl::DeadlineExceededError("the request's deadline has already passed"));
  }

  // The bounds: gateway-wide in flight, then the model's queue; both taken together.
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_ >= config_.max_in_flight) {
      if (retry_after != nullptr) *retry_after = retry;
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "the gateway is at its limit of ", config_.max_in_flight, " requests in flight")));
    }
    const auto bound = max_queued_.find(model);
    int& queued = queued_[model];
    if (bound != max_queued_.end() && queued >= bound->second) {
      if (retry_after != nullptr) *retry_after = retry;
      return reject(absl::ResourceExhaustedError(absl::StrCat(
          "model '", model, "' has ", queued,
          " requests waiting for their first token (the limit is ", bound->second, ")")));
    }
    ++in_flight_;
    ++queued;
    in_flight_gauge_->Set({}, in_flight_);
    queue_depth_->Set({model}, queued);
  }
  auto release = [&] {
    absl::MutexLock lock(&mu_);
    --in_flight_;
    const int queued = --queued_[model];
    in_flight_gauge_->Set({}, in_flight_);
    queue_depth_->Set({model}, queued);
  };

  const int64_t prompt_estimate = EstimatePromptTokens(chat);
  absl::Duration wait = absl::ZeroDuration();
  if (absl::Status admitted = admission_->Admit(*tenant, prompt_estimate, now, &wait);
      !admitted.ok()) {
    release();
    if (retry_after != nullptr) *retry_after = wait;
    return reject(admitted);
  }

  std::vector<std::pair<std::string, std::string>> role_content;
  role_content.reserve(chat.messages_size());
  for (int i = 0; i < chat.messages_size(); ++i) {
    absl::StatusOr<const char*> role = RoleName(chat.messages(i).role(), i);
    role_content.emplace_back(role.ok() ? *role : "", chat.messages(i).content());
  }
  const uint64_t prefix_key = PrefixKey(model, role_content);

  auto call = std::make_shared<Call>(this, std::move(chat), request_id, *tenant, request.front, now,
                                     deadline, prompt_estimate, prefix_key, std::move(callbacks));
  if (absl::Status prepared = call->Prepare(); !prepared.ok()) {
    release();
    if (retry_after != nullptr) *retry_after = retry;
    return reject(prepared);
  }
  {
    absl::MutexLock lock(&mu_);
    live_.emplace(call.get(), call);
  }
  call->Launch();
  return call;
}

void Dispatcher::Impl::CancelAll() {
  std::vector<std::shared_ptr<Call>> calls;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [ptr, weak] : live_) {
      if (std::shared_ptr<Call> call = weak.lock()) calls.push_back(std::move(call));
    }
  }
  for (const auto& call : calls) call->Cancel();
}

void Dispatcher::Impl::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
  }
  CancelAll();
  absl::MutexLock lock(&mu_);
  auto ended = [this]()
                   ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_.empty() && attempts_ == 0; };
  mu_.Await(absl::Condition(&ended));
}

Dispatcher::Dispatcher(const GatewayConfig& config, WorkerPool* pool, Admission* admission,
                       MetricsRegistry* metrics)
    : impl_(std::make_unique<Impl>(config, pool, admission, metrics)) {}

Dispatcher::~Dispatcher() { impl_->Shutdown(); }

absl::StatusOr<std::shared_ptr<ChatCall>> Dispatcher::Start(DispatchRequest request,
                                                            ChatCallbacks callbacks,
                                                            absl::Duration* retry_after) {
  return impl_->Start(std::move(request), std::move(callbacks), retry_after);
}

absl::StatusOr<std::string> Dispatcher::Authenticate(const std::string& api_key) const {
  return impl_->admission_->Authenticate(api_key);
}

chatpb::ListModelsResponse Dispatcher::ListModels() const {
  chatpb::ListModelsResponse response;
  for (const std::string& model : impl_->pool_->Models()) {
    *response.add_models() = impl_->pool_->Info(model);
  }
  std::sort(response.mutable_models()->begin(), response.mutable_models()->end(),
            [](const chatpb::ModelInfo& a, const chatpb::ModelInfo& b) { return a.id() < b.id(); });
  return response;
}

gateway::v1::ClusterStatusResponse Dispatcher::ClusterStatus() const {
  gateway::v1::ClusterStatusResponse response = impl_->pool_->ClusterStatus();
  absl::MutexLock lock(&impl_->mu_);
  for (gateway::v1::ModelStatus& model : *response.mutable_models()) {
    const auto it = impl_->queued_.find(model.model().id());
    if (it != impl_->queued_.end()) model.set_queued_requests(static_cast<uint32_t>(it->second));
  }
  return response;
}

void Dispatcher::SetDraining() {
  absl::MutexLock lock(&impl_->mu_);
  impl_->draining_ = true;
}

void Dispatcher::CancelAll() { impl_->CancelAll(); }

int Dispatcher::in_flight() const {
  absl::MutexLock lock(&impl_->mu_);
  return impl_->in_flight_;
}

}  // namespace shardserve
