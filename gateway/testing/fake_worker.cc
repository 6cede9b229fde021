#include "gateway/testing/fake_worker.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"
#include "worker/rpc/health_service.h"

namespace shardserve::testing {

namespace chatpb = ::shardserve::chat::v1;
namespace workerpb = ::shardserve::worker::v1;

namespace {

constexpr char kWorkerService[] = "shardserve.worker.v1.Worker";
// How often a stream waiting for its next "token" looks for a cancelled call.
constexpr absl::Duration kPollSlice = absl::Milliseconds(2);

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

class FakeWorker::Impl {
 public:
  explicit Impl(FakeWorkerOptions options)
      : options_(std::move(options)),
        token_delay_(options_.token_delay),
        healthy_(options_.healthy) {
    for (absl::string_view word : absl::StrSplit(options_.reply, ' ', absl::SkipEmpty())) {
      words_.emplace_back(word);
    }
  }

  ~Impl() { Shutdown(); }

  // Binds `address` (port 0 on the first start); false when the port cannot be bound.
  bool Serve(const std::string& address) {
    absl::MutexLock lock(&server_mu_);
    auto health = std::make_unique<HealthService>();
    {
      absl::MutexLock state_lock(&mu_);
      SetHealthLocked(health.get(), healthy_);
      stopping_ = false;
    }
    auto worker_service = std::make_unique<WorkerServiceImpl>(this);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(worker_service.get());
    builder.RegisterService(health.get());
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr || port == 0) return false;
    {
      absl::MutexLock state_lock(&mu_);
      port_ = port;
      health_ = health.get();
    }
    server_ = std::move(server);
    health_service_ = std::move(health);
    worker_service_ = std::move(worker_service);
    return true;
  }

  void Shutdown() {
    absl::MutexLock lock(&server_mu_);
    if (server_ == nullptr) return;
    {
      absl::MutexLock state_lock(&mu_);
      stopping_ = true;  // streams end now and are not counted as client cancellations
      health_ = nullptr;
    }
    health_service_->Shutdown();  // ends Watch streams
    // A deadline of now cancels every call in flight and drops the connections, as a worker
    // that dies would; returns once every handler has returned.
    server_->Shutdown(std::chrono::system_clock::now());
    server_->Wait();
    server_.reset();
    worker_service_.reset();
    health_service_.reset();
  }

  void Restart() {
    Shutdown();
    const std::string address = this->address();
    // The port was ours a moment ago; gRPC sets SO_REUSEADDR / SO_REUSEPORT, so rebinding works
    // unless another process took it in between (then retry briefly).
    for (int attempt = 0; attempt < 50; ++attempt) {
      if (Serve(address)) return;
      absl::SleepFor(absl::Milliseconds(20));
    }
    fprintf(stderr, "FakeWorker: cannot serve on %s again\n", address.c_str());
  }

  std::string address() const {
    absl::MutexLock lock(&mu_);
    return absl::StrCat("127.0.0.1:", port_);
  }

  void set_healthy(bool healthy) {
    absl::MutexLock lock(&mu_);
    healthy_ = healthy;
    if (health_ != nullptr) SetHealthLocked(health_, healthy);
  }
  void set_fail_before_first(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_before_first_ = std::move(status);
  }
  void set_fail_after(int chunks, absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_after_chunks_ = chunks;
    fail_after_ = std::move(status);
  }
  void set_token_delay(absl::Duration delay) {
    absl::MutexLock lock(&mu_);
    token_delay_ = delay;
  }
  void set_reported_load(int running, int waiting, uint64_t kv_used, uint64_t kv_total) {
    absl::MutexLock lock(&mu_);
    reported_load_ = true;
    reported_running_ = running;
    reported_waiting_ = waiting;
    kv_used_ = kv_used;
    kv_total_ = kv_total;
  }

  int generate_calls() const {
    absl::MutexLock lock(&mu_);
    return generate_calls_;
  }
  int running() const {
    absl::MutexLock lock(&mu_);
    return running_;
  }
  int cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  workerpb::GenerateRequest last_request() const {
    absl::MutexLock lock(&mu_);
    return last_request_;
  }

 private:
  // Sync API: each Generate holds a server thread while it streams, which a test fixture can
  // afford; cancellation is noticed by polling ServerContext::IsCancelled between tokens.
  class WorkerServiceImpl final : public workerpb::Worker::Service {
   public:
    explicit WorkerServiceImpl(Impl* impl) : impl_(impl) {}
    grpc::Status Generate(grpc::ServerContext* context, const workerpb::GenerateRequest* request,
                          grpc::ServerWriter<chatpb::ChatChunk>* writer) override {
      return impl_->Generate(context, *request, writer);
    }
    grpc::Status Status(grpc::ServerContext* /*context*/,
                        const workerpb::StatusRequest* /*request*/,
                        workerpb::StatusResponse* response) override {
      impl_->FillStatus(response);
      return grpc::Status::OK;
    }

   private:
    Impl* const impl_;
  };

  // Why a wait for the next token ended early.
  enum class Interrupt { kNone, kCancelled, kStopping, kDeadline };

  static void SetHealthLocked(HealthService* health, bool healthy) {
    health->SetServing("", healthy);
    health->SetServing(kWorkerService, healthy);
  }

  Interrupt WaitForToken(grpc::ServerContext* context, absl::Time until, absl::Time deadline) {
    while (true) {
      if (context->IsCancelled()) return Interrupt::kCancelled;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return Interrupt::kStopping;
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) return Interrupt::kDeadline;
      if (now >= until) return Interrupt::kNone;
      absl::SleepFor(std::min({kPollSlice, until - now, deadline - now}));
    }
  }

  grpc::Status Generate(grpc::ServerContext* context, const workerpb::GenerateRequest& request,
                        grpc::ServerWriter<chatpb::ChatChunk>* writer) {
    const absl::Time arrival = absl::Now();
    absl::Status fail_before, fail_after;
    int fail_after_chunks = 0;
    absl::Duration token_delay;
    {
      absl::MutexLock lock(&mu_);
      ++generate_calls_;
      ++running_;
      last_request_ = request;
      fail_before = fail_before_first_;
      fail_after = fail_after_;
      fail_after_chunks = fail_after_chunks_;
      token_delay = token_delay_;
    }
    const grpc::Status status = Stream(context, request, writer, arrival, fail_before, fail_after,
                                       fail_after_chunks, token_delay);
    absl::MutexLock lock(&mu_);
    --running_;
    return status;
  }

  grpc::Status Stream(grpc::ServerContext* context, const workerpb::GenerateRequest& request,
                      grpc::ServerWriter<chatpb::ChatChunk>* writer, absl::Time arrival,
                      const absl::Status& fail_before, const absl::Status& fail_after,
                      int fail_after_chunks, absl::Duration token_delay) {
    if (!fail_before.ok()) return ToGrpc(fail_before);
    if (request.request().model() != options_.model) {
      return grpc::Status(
          grpc::StatusCode::NOT_FOUND,
          absl::StrCat("model '", request.request().model(),
                       "' is not served here (this worker serves '", options_.model, "')"));
    }
    absl::Time deadline = absl::InfiniteFuture();
    if (request.has_deadline()) {
      deadline = absl::FromUnixSeconds(request.deadline().seconds()) +
                 absl::Nanoseconds(request.deadline().nanos());
      if (deadline <= arrival) {
        return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                            "the request's deadline has already passed");
      }
    }
    const std::string request_id =
        request.request_id().empty() ? request.request().request_id() : request.request_id();
    size_t tokens = words_.size();
    bool length = false;
    if (request.request().max_tokens() > 0 && request.request().max_tokens() < tokens) {
      tokens = request.request().max_tokens();
      length = true;
    }

    absl::Time next = arrival;
    absl::Time first_token;
    for (size_t i = 0; i < tokens; ++i) {
      if (!fail_after.ok() && static_cast<int>(i) == fail_after_chunks) return ToGrpc(fail_after);
      next += token_delay;
      switch (WaitForToken(context, next, deadline)) {
        case Interrupt::kNone:
          break;
        case Interrupt::kCancelled:
          return CountCancelled();
        case Interrupt::kStopping:
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the fake worker shut down");
        case Interrupt::kDeadline: {
          chatpb::ChatChunk last;
          last.set_finish_reason(chatpb::FINISH_REASON_CANCELLED);
          if (i == 0) {
            last.set_request_id(request_id);
            last.set_model(options_.model);
          }
          writer->Write(last);
          return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the request's deadline passed");
        }
      }
      chatpb::ChatChunk chunk;
      chunk.set_delta(i == 0 ? words_[i] : absl::StrCat(" ", words_[i]));
      chunk.add_token_ids(static_cast<int32_t>(i + 1));
      if (i == 0) {
        chunk.set_request_id(request_id);
        chunk.set_model(options_.model);
        first_token = absl::Now();
      }
      if (!writer->Write(chunk)) return CountCancelled();
    }
    // Failing after every token: the final chunk is never sent.
    if (!fail_after.ok() && fail_after_chunks >= static_cast<int>(tokens)) {
      return ToGrpc(fail_after);
    }

    const absl::Time end = absl::Now();
    chatpb::ChatChunk last;
    if (tokens == 0) {
      last.set_request_id(request_id);
      last.set_model(options_.model);
      first_token = end;
    }
    last.set_finish_reason(length ? chatpb::FINISH_REASON_LENGTH : chatpb::FINISH_REASON_STOP);
    last.mutable_usage()->set_prompt_tokens(options_.prompt_tokens);
    last.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(tokens));
    chatpb::Timings* timings = last.mutable_timings();
    timings->set_queue_seconds(0);
    timings->set_time_to_first_token_seconds(absl::ToDoubleSeconds(first_token - arrival));
    timings->set_decode_seconds(absl::ToDoubleSeconds(end - first_token));
    timings->set_prefill_seconds(0);
    if (!writer->Write(last)) return CountCancelled();
    return grpc::Status::OK;
  }

  grpc::Status CountCancelled() {
    absl::MutexLock lock(&mu_);
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the fake worker shut down");
    ++cancelled_;
    return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
  }

  void FillStatus(workerpb::StatusResponse* response) {
    absl::MutexLock lock(&mu_);
    chatpb::ModelInfo* info = response->mutable_model();
    info->set_id(options_.model);
    info->set_context_length(options_.context_length);
    info->set_source("fake/" + options_.model);
    info->set_quantization("fake");
    info->set_ready_replicas(healthy_ ? 1 : 0);
    response->set_state(healthy_ ? workerpb::WORKER_STATE_SERVING : workerpb::WORKER_STATE_LOADING);
    response->set_world_size(1);
    response->set_running_sequences(reported_load_ ? reported_running_ : running_);
    response->set_waiting_sequences(reported_load_ ? reported_waiting_ : 0);
    response->set_kv_blocks_used(kv_used_);
    response->set_kv_blocks_total(kv_total_);
    response->set_kv_block_tokens(16);
    response->set_backend("fake");
    response->set_version("fake");
  }

  const FakeWorkerOptions options_;  // read-only (token_delay_ and healthy_ are the live values)
  std::vector<std::string> words_;   // read-only after construction

  // Serializes Serve / Shutdown (held across server start and stop, never by RPC handlers).
  absl::Mutex server_mu_;
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(server_mu_);
  std::unique_ptr<HealthService> health_service_ ABSL_GUARDED_BY(server_mu_);
  std::unique_ptr<WorkerServiceImpl> worker_service_ ABSL_GUARDED_BY(server_mu_);

  mutable absl::Mutex mu_;
  HealthService* health_ ABSL_GUARDED_BY(mu_) = nullptr;  // the serving server's, or null
  int port_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Duration token_delay_ ABSL_GUARDED_BY(mu_);
  bool healthy_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_before_first_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_after_ ABSL_GUARDED_BY(mu_);
  int fail_after_chunks_ ABSL_GUARDED_BY(mu_) = 0;
  bool reported_load_ ABSL_GUARDED_BY(mu_) = false;
  int reported_running_ ABSL_GUARDED_BY(mu_) = 0;
  int reported_waiting_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t kv_used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t kv_total_ ABSL_GUARDED_BY(mu_) = 1024;
  int generate_calls_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  int cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  workerpb::GenerateRequest last_request_ ABSL_GUARDED_BY(mu_);
};

std::unique_ptr<FakeWorker> FakeWorker::Start(FakeWorkerOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  if (!impl->Serve("127.0.0.1:0")) return nullptr;
  return std::unique_ptr<FakeWorker>(new FakeWorker(std::move(impl)));
}

FakeWorker::FakeWorker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FakeWorker::~FakeWorker() = default;

std::string FakeWorker::address() const { return impl_->address(); }
void FakeWorker::set_healthy(bool healthy) { impl_->set_healthy(healthy); }
void FakeWorker::set_fail_before_first(absl::Status status) {
  impl_->set_fail_before_first(std::move(status));
}
void FakeWorker::set_fail_after(int chunks, absl::Status status) {
  impl_->set_fail_after(chunks, std::move(status));
}
void FakeWorker::set_token_delay(absl::Duration delay) { impl_->set_token_delay(delay); }
void FakeWorker::set_reported_load(int running, int waiting, uint64_t kv_used, uint64_t kv_total) {
  impl_->set_reported_load(running, waiting, kv_used, kv_total);
}
void FakeWorker::Shutdown() { impl_->Shutdown(); }
void FakeWorker::Restart() { impl_->Restart(); }
int FakeWorker::generate_calls() const { return impl_->generate_calls(); }
int FakeWorker::running() const { return impl_->running(); }
int FakeWorker::cancelled() const { return impl_->cancelled(); }
worker::v1::GenerateRequest FakeWorker::last_request() const { return impl_->last_request(); }

}  // namespace shardserve::testing
