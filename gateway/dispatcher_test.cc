#include "gateway/dispatcher.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gateway/testing/fake_worker.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/rpc/chat_validation.h"

namespace shardserve {
namespace {

namespace chatpb = ::shardserve::chat::v1;
using ::shardserve::testing::FakeWorker;
using ::shardserve::testing::FakeWorkerOptions;
using ::testing::HasSubstr;

constexpr char kModel[] = "fake-model";
// Generous bound for anything the tests wait on; never reached when the code works.
constexpr absl::Duration kWait = absl::Seconds(30);

// What the dispatcher's callbacks delivered.
struct Collector {
  absl::Mutex mu;
  std::vector<chatpb::ChatChunk> chunks ABSL_GUARDED_BY(mu);
  std::optional<absl::Status> done ABSL_GUARDED_BY(mu);
  int done_calls ABSL_GUARDED_BY(mu) = 0;
  bool chunk_after_done ABSL_GUARDED_BY(mu) = false;

  static ChatCallbacks Callbacks(const std::shared_ptr<Collector>& c) {
    ChatCallbacks callbacks;
    callbacks.on_chunk = [c](chatpb::ChatChunk chunk) {
      absl::MutexLock lock(&c->mu);
      if (c->done.has_value()) c->chunk_after_done = true;
      c->chunks.push_back(std::move(chunk));
    };
    callbacks.on_done = [c](absl::Status status) {
      absl::MutexLock lock(&c->mu);
      ++c->done_calls;
      c->done = std::move(status);
    };
    return callbacks;
  }

  // The final status (UNKNOWN "timed out" if on_done never came within kWait).
  absl::Status Wait() {
    absl::MutexLock lock(&mu);
    if (!mu.AwaitWithTimeout(
            absl::Condition(
                +[](std::optional<absl::Status>* d) { return d->has_value(); }, &done),
            kWait)) {
      return absl::UnknownError("timed out waiting for on_done");
    }
    return *done;
  }

  bool WaitForChunks(size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return chunks.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }

  std::string Text(uint32_t index) {
    absl::MutexLock lock(&mu);
    std::string text;
    for (const auto& c : chunks) {
      if (c.index() == index) text += c.delta();
    }
    return text;
  }

  std::vector<chatpb::ChatChunk> Chunks() {
    absl::MutexLock lock(&mu);
    return chunks;
  }
};

// Polls `condition` until it holds or kWait passes.
template <typename F>
bool Eventually(F condition) {
  const absl::Time until = absl::Now() + kWait;
  while (absl::Now() < until) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

chatpb::ChatRequest Hello(const std::string& model = kModel) {
  chatpb::ChatRequest request;
  request.set_model(model);
  chatpb::Message* m = request.add_messages();
  m->set_role(chatpb::ROLE_USER);
  m->set_content("hello there");
  return request;
}

DispatchRequest Dispatch(chatpb::ChatRequest request, std::string key = "") {
  DispatchRequest d;
  d.request = std::move(request);
  d.api_key = std::move(key);
  d.front = "test";
  return d;
}

// Fake workers, a WorkerPool probing them quickly, and a dispatcher over them.
class DispatcherTest : public ::testing::Test {
 protected:
  void StartWorkers(int n, FakeWorkerOptions options = {}) {
    for (int i = 0; i < n; ++i) {
      workers_.push_back(FakeWorker::Start(options));
      ASSERT_NE(workers_.back(), nullptr);
    }
  }

  // Builds pool + admission + dispatcher; waits until every worker is routable.
  void StartGateway(std::vector<ApiKeyEntry> keys = {},
                    std::map<std::string, TenantQuota> quotas = {}) {
    if (config_.models.empty()) {
      ModelRoute route;
      route.name = kModel;
      route.max_queued = max_queued_;
      for (const auto& w : workers_) route.endpoints.push_back(w->address());
      config_.models.push_back(route);
    }
    WorkerPoolOptions options;
    options.health_interval = absl::Milliseconds(20);
    options.status_interval = absl::Milliseconds(20);
    options.connect_timeout = absl::Seconds(1);
    absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
        WorkerPool::Create(config_.models, options, &metrics_);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
    pool_->Start();
    absl::StatusOr<std::unique_ptr<Admission>> admission =
        Admission::Create(std::move(keys), std::move(quotas), absl::Now());
    ASSERT_TRUE(admission.ok()) << admission.status();
    admission_ = *std::move(admission);
    dispatcher_ = std::make_unique<Dispatcher>(config_, pool_.get(), admission_.get(), &metrics_);
    ASSERT_TRUE(Eventually([&] {
      std::vector<WorkerSnapshot> snapshots = pool_->Snapshots(kModel);
      if (snapshots.size() != workers_.size()) return false;
      for (const auto& s : snapshots) {
        if (!s.up || !s.healthy) return false;
      }
      return true;
    })) << "the workers never became healthy";
  }

  void TearDown() override {
    dispatcher_.reset();
    pool_.reset();
  }

  // Starts `request`; the call must be accepted.
  std::shared_ptr<ChatCall> StartOk(chatpb::ChatRequest request,
                                    const std::shared_ptr<Collector>& collector,
                                    absl::Time deadline = absl::InfiniteFuture()) {
    DispatchRequest d = Dispatch(std::move(request));
    d.deadline = deadline;
    absl::Duration retry_after;
    absl::StatusOr<std::shared_ptr<ChatCall>> call =
        dispatcher_->Start(std::move(d), Collector::Callbacks(collector), &retry_after);
    EXPECT_TRUE(call.ok()) << call.status();
    return call.ok() ? *call : nullptr;
  }

  absl::Status StartError(DispatchRequest request, absl::Duration* retry_after = nullptr) {
    auto collector = std::make_shared<Collector>();
    absl::Duration ignored;
    absl::StatusOr<std::shared_ptr<ChatCall>> call =
        dispatcher_->Start(std::move(request), Collector::Callbacks(collector),
                           retry_after != nullptr ? retry_after : &ignored);
    EXPECT_FALSE(call.ok());
    return call.ok() ? absl::OkStatus() : call.status();
  }

  GatewayConfig config_;
  int max_queued_ = 64;
  MetricsRegistry metrics_;
  std::vector<std::unique_ptr<FakeWorker>> workers_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<Dispatcher> dispatcher_;
};

TEST_F(DispatcherTest, RelaysChunksInOrderWithRequestId) {
  StartWorkers(1);
  StartGateway();
  auto collector = std::make_shared<Collector>();
  std::shared_ptr<ChatCall> call = StartOk(Hello(), collector);
  ASSERT_NE(call, nullptr);
  EXPECT_THAT(call->request_id(), HasSubstr("req-"));
  EXPECT_EQ(call->tenant(), "default");
  ASSERT_TRUE(collector->Wait().ok()) << collector->Wait();

  EXPECT_EQ(collector->Text(0), "Hello from the fake worker .");
  std::vector<chatpb::ChatChunk> chunks = collector->Chunks();
  ASSERT_EQ(chunks.size(), 7u);  // six words, then the final chunk
  EXPECT_EQ(chunks[0].request_id(), call->request_id());
  EXPECT_EQ(chunks[0].model(), kModel);
  for (size_t i = 1; i < chunks.size(); ++i) EXPECT_EQ(chunks[i].request_id(), "");
  EXPECT_EQ(chunks.back().finish_reason(), chatpb::FINISH_REASON_STOP);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 6u);
  EXPECT_EQ(chunks.back().usage().prompt_tokens(), 7u);
  {
    absl::MutexLock lock(&collector->mu);
    EXPECT_EQ(collector->done_calls, 1);
    EXPECT_FALSE(collector->chunk_after_done);
  }
  // The worker saw the gateway's id and tenant.
  worker::v1::GenerateRequest seen = workers_[0]->last_request();
  EXPECT_EQ(seen.request_id(), call->request_id());
  EXPECT_EQ(seen.request().request_id(), call->request_id());
  EXPECT_EQ(seen.tenant(), "default");
  EXPECT_EQ(dispatcher_->in_flight(), 0);

  const std::string metrics = metrics_.Render();
  EXPECT_THAT(metrics, HasSubstr("shardserve_gateway_requests_total{model=\"fake-model\","
                                 "tenant=\"default\",code=\"OK\"} 1"));
  EXPECT_THAT(metrics, HasSubstr("shardserve_gateway_generation_tokens_total{model=\"fake-model\","
                                 "tenant=\"default\"} 6"));
  EXPECT_THAT(metrics, HasSubstr("shardserve_gateway_queue_depth{model=\"fake-model\"} 0"));
}

TEST_F(DispatcherTest, KeepsTheCallersRequestId) {
  StartWorkers(1);
  StartGateway();
  auto collector = std::make_shared<Collector>();
  chatpb::ChatRequest request = Hello();
  request.set_request_id("my-id-1");
  std::shared_ptr<ChatCall> call = StartOk(request, collector);
  ASSERT_NE(call, nullptr);
  EXPECT_EQ(call->request_id(), "my-id-1");
  ASSERT_TRUE(collector->Wait().ok());
  EXPECT_EQ(collector->Chunks()[0].request_id(), "my-id-1");
  EXPECT_EQ(workers_[0]->last_request().request_id(), "my-id-1");
}

TEST_F(DispatcherTest, RetriesOnAnotherWorkerWhenTheFirstFailsBeforeItsFirstChunk) {
  StartWorkers(2);
  StartGateway();
  // Worker 1 looks busy, so worker 0 is chosen first; it fails before any chunk.
  workers_[1]->set_reported_load(50, 0, 0, 1024);
  ASSERT_TRUE(Eventually([&] {
    for (const auto& s : pool_->Snapshots(kModel)) {
      if (s.id == workers_[1]->address() && s.running == 50) return true;
    }
    return false;
  }));
  workers_[0]->set_fail_before_first(absl::UnavailableError("worker 0 is broken"));

  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  ASSERT_TRUE(collector->Wait().ok()) << collector->Wait();
  EXPECT_EQ(collector->Text(0), "Hello from the fake worker .");
  EXPECT_EQ(collector->Chunks()[0].index(), 0u);
  EXPECT_EQ(workers_[0]->generate_calls(), 1);
  EXPECT_EQ(workers_[1]->generate_calls(), 1);
  EXPECT_THAT(metrics_.Render(),
              HasSubstr("shardserve_gateway_retries_total{model=\"fake-model\"} 1"));
  // The failure was reported to the pool (which marked worker 0 down until its next health
  // check).
  EXPECT_THAT(metrics_.Render(),
              HasSubstr("shardserve_gateway_worker_failures_total{model=\"fake-model\",worker=\"" +
                        workers_[0]->address() + "\"} 1"));
}

TEST_F(DispatcherTest, FailureAfterTheFirstChunkEndsWithUnavailableNamingTheWorker) {
  StartWorkers(2);
  StartGateway();
  for (const auto& w : workers_) w->set_fail_after(2, absl::UnavailableError("engine crashed"));
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("failed after 2 tokens"));
  EXPECT_THAT(status.message(), HasSubstr("engine crashed"));
  const std::string text = collector->Text(0);
  EXPECT_EQ(text, "Hello from");  // the two chunks, nothing replayed
  EXPECT_EQ(workers_[0]->generate_calls() + workers_[1]->generate_calls(), 1);
  const std::string worker =
      workers_[0]->generate_calls() == 1 ? workers_[0]->address() : workers_[1]->address();
  EXPECT_THAT(status.message(), HasSubstr("worker " + worker));
}

TEST_F(DispatcherTest, EveryWorkerFailingBeforeTheFirstChunkIsUnavailable) {
  StartWorkers(2);
  StartGateway();
  for (const auto& w : workers_) w->set_fail_before_first(absl::UnavailableError("down"));
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr(workers_[0]->address()));
  EXPECT_THAT(status.message(), HasSubstr(workers_[1]->address()));
  EXPECT_TRUE(collector->Chunks().empty());
}

TEST_F(DispatcherTest, FullWorkerQueuesAreTriedElsewhereThenResourceExhausted) {
  StartWorkers(2);
  StartGateway();
  for (const auto& w : workers_) {
    w->set_fail_before_first(
        absl::ResourceExhaustedError("the queue is full (256 requests waiting)"));
  }
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("full queue"));
  EXPECT_EQ(workers_[0]->generate_calls(), 1);
  EXPECT_EQ(workers_[1]->generate_calls(), 1);
  // A full queue is load, not a failure: both stay up.
  for (const auto& s : pool_->Snapshots(kModel)) EXPECT_TRUE(s.up) << s.id;
}

TEST_F(DispatcherTest, RequestErrorsFromTheWorkerAreNotRetried) {
  StartWorkers(2);
  StartGateway();
  for (const auto& w : workers_) {
    w->set_fail_before_first(absl::InvalidArgumentError("max_tokens: too many"));
  }
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("max_tokens: too many"));
  EXPECT_EQ(workers_[0]->generate_calls() + workers_[1]->generate_calls(), 1);
  for (const auto& s : pool_->Snapshots(kModel)) EXPECT_TRUE(s.up) << s.id;
}

TEST_F(DispatcherTest, InvalidRequestNeverReachesAWorker) {
  StartWorkers(1);
  StartGateway();
  chatpb::ChatRequest empty;
  empty.set_model(kModel);
  absl::Status status = StartError(Dispatch(empty));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("messages"));

  chatpb::ChatRequest many = Hello();
  many.set_n(kMaxChoices + 1);
  status = StartError(Dispatch(many));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("n"));
  EXPECT_EQ(workers_[0]->generate_calls(), 0);
  EXPECT_EQ(dispatcher_->in_flight(), 0);
  EXPECT_THAT(metrics_.Render(), HasSubstr("code=\"INVALID_ARGUMENT\"} 2"));
}

TEST_F(DispatcherTest, UnknownModelIsNotFoundNamingTheServedOnes) {
  StartWorkers(1);
  StartGateway();
  absl::Status status = StartError(Dispatch(Hello("no-such-model")));
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("no-such-model"));
  EXPECT_THAT(status.message(), HasSubstr(kModel));
  // Unknown names never become metric labels.
  EXPECT_THAT(metrics_.Render(), HasSubstr("model=\"unknown\""));
  EXPECT_THAT(metrics_.Render(), ::testing::Not(HasSubstr("no-such-model")));
}

TEST_F(DispatcherTest, KeysAreChecked) {
  StartWorkers(1);
  StartGateway({{Sha256Hex("secret-key"), "team-a"}});
  absl::Status status = StartError(Dispatch(Hello(), "wrong-key"));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(status.message(), HasSubstr("invalid API key"));
  status = StartError(Dispatch(Hello(), ""));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(status.message(), HasSubstr("missing API key"));
  EXPECT_EQ(workers_[0]->generate_calls(), 0);

  auto collector = std::make_shared<Collector>();
  DispatchRequest d = Dispatch(Hello(), "secret-key");
  absl::Duration retry_after;
  absl::StatusOr<std::shared_ptr<ChatCall>> call =
      dispatcher_->Start(std::move(d), Collector::Callbacks(collector), &retry_after);
  ASSERT_TRUE(call.ok()) << call.status();
  EXPECT_EQ((*call)->tenant(), "team-a");
  ASSERT_TRUE(collector->Wait().ok());
  EXPECT_EQ(workers_[0]->last_request().tenant(), "team-a");
  EXPECT_EQ(dispatcher_->Authenticate("secret-key").value_or(""), "team-a");
}

TEST_F(DispatcherTest, TenantRateLimitIsResourceExhaustedWithRetryAfter) {
  StartWorkers(1);
  TenantQuota quota;
  quota.requests_per_second = 0.01;
  quota.request_burst = 1;
  StartGateway({}, {{"default", quota}});
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  absl::Duration retry_after = absl::ZeroDuration();
  absl::Status status = StartError(Dispatch(Hello()), &retry_after);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("requests per second"));
  EXPECT_GT(retry_after, absl::ZeroDuration());
  ASSERT_TRUE(collector->Wait().ok());
}

TEST_F(DispatcherTest, ModelQueueBoundIsResourceExhaustedWithRetryAfter) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Seconds(60));  // the first request never gets a token
  max_queued_ = 1;
  config_.retry_after_seconds = 3;
  StartGateway();
  auto first = std::make_shared<Collector>();
  std::shared_ptr<ChatCall> call = StartOk(Hello(), first);
  ASSERT_NE(call, nullptr);
  absl::Duration retry_after = absl::ZeroDuration();
  absl::Status status = StartError(Dispatch(Hello()), &retry_after);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("waiting for their first token"));
  EXPECT_EQ(retry_after, absl::Seconds(3));
  gateway::v1::ClusterStatusResponse cluster = dispatcher_->ClusterStatus();
  ASSERT_EQ(cluster.models_size(), 1);
  EXPECT_EQ(cluster.models(0).queued_requests(), 1u);

  call->Cancel();
  EXPECT_EQ(first->Wait().code(), absl::StatusCode::kCancelled);
  // The slot is free again.
  EXPECT_EQ(dispatcher_->ClusterStatus().models(0).queued_requests(), 0u);
  workers_[0]->set_token_delay(absl::Milliseconds(1));
  auto second = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), second), nullptr);
  EXPECT_TRUE(second->Wait().ok());
}

TEST_F(DispatcherTest, InFlightBoundIsResourceExhausted) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Seconds(60));
  config_.max_in_flight = 1;
  StartGateway();
  auto first = std::make_shared<Collector>();
  std::shared_ptr<ChatCall> call = StartOk(Hello(), first);
  ASSERT_NE(call, nullptr);
  EXPECT_EQ(dispatcher_->in_flight(), 1);
  absl::Duration retry_after = absl::ZeroDuration();
  absl::Status status = StartError(Dispatch(Hello()), &retry_after);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(status.message(), HasSubstr("in flight"));
  EXPECT_GT(retry_after, absl::ZeroDuration());
  call->Cancel();
  EXPECT_EQ(first->Wait().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(dispatcher_->in_flight(), 0);
}

TEST_F(DispatcherTest, CancelStopsTheWorkerStream) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Milliseconds(200));
  StartGateway();
  auto collector = std::make_shared<Collector>();
  std::shared_ptr<ChatCall> call = StartOk(Hello(), collector);
  ASSERT_NE(call, nullptr);
  ASSERT_TRUE(collector->WaitForChunks(1));
  EXPECT_EQ(workers_[0]->running(), 1);
  call->Cancel();
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(Eventually([&] { return workers_[0]->cancelled() == 1; }));
  EXPECT_TRUE(Eventually([&] { return workers_[0]->running() == 0; }));
  call->Cancel();  // after the end: nothing happens
  absl::MutexLock lock(&collector->mu);
  EXPECT_EQ(collector->done_calls, 1);
}

TEST_F(DispatcherTest, DeadlineIsForwarded) {
  StartWorkers(1);
  config_.request_timeout_seconds = 100;
  StartGateway();
  const absl::Time deadline = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) + 50);
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector, deadline), nullptr);
  ASSERT_TRUE(collector->Wait().ok());
  worker::v1::GenerateRequest seen = workers_[0]->last_request();
  ASSERT_TRUE(seen.has_deadline());
  EXPECT_EQ(seen.deadline().seconds(), absl::ToUnixSeconds(deadline));
  EXPECT_EQ(seen.deadline().nanos(), 0);

  // No deadline from the client: request_timeout is the deadline.
  const absl::Time before = absl::Now();
  auto second = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), second), nullptr);
  ASSERT_TRUE(second->Wait().ok());
  seen = workers_[0]->last_request();
  ASSERT_TRUE(seen.has_deadline());
  EXPECT_GE(seen.deadline().seconds(), absl::ToUnixSeconds(before + absl::Seconds(100)));
  EXPECT_LE(seen.deadline().seconds(), absl::ToUnixSeconds(absl::Now() + absl::Seconds(100)));
}

TEST_F(DispatcherTest, ExpiredDeadlineIsRefused) {
  StartWorkers(1);
  StartGateway();
  DispatchRequest d = Dispatch(Hello());
  d.deadline = absl::Now() - absl::Seconds(1);
  absl::Status status = StartError(std::move(d));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(workers_[0]->generate_calls(), 0);
}

TEST_F(DispatcherTest, DeadlinePassingMidStreamIsDeadlineExceeded) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Milliseconds(300));
  StartGateway();
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector, absl::Now() + absl::Milliseconds(500)), nullptr);
  EXPECT_EQ(collector->Wait().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(DispatcherTest, FanOutGivesEveryIndexAndSummedUsage) {
  StartWorkers(2);
  StartGateway();
  chatpb::ChatRequest request = Hello();
  request.set_n(2);
  request.mutable_sampling()->set_seed(40);
  auto collector = std::make_shared<Collector>();
  std::shared_ptr<ChatCall> call = StartOk(request, collector);
  ASSERT_NE(call, nullptr);
  ASSERT_TRUE(collector->Wait().ok()) << collector->Wait();
  EXPECT_EQ(collector->Text(0), "Hello from the fake worker .");
  EXPECT_EQ(collector->Text(1), "Hello from the fake worker .");
  std::vector<chatpb::ChatChunk> chunks = collector->Chunks();
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks[0].request_id(), call->request_id());
  int finished = 0, with_usage = 0;
  for (const auto& c : chunks) {
    if (c.finish_reason() == chatpb::FINISH_REASON_STOP) ++finished;
    if (c.has_usage()) ++with_usage;
  }
  EXPECT_EQ(finished, 2);
  EXPECT_EQ(with_usage, 1);
  ASSERT_TRUE(chunks.back().has_usage());
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 12u);
  EXPECT_EQ(chunks.back().usage().prompt_tokens(), 7u);
  // Each worker request is one choice with its own seed.
  EXPECT_EQ(workers_[0]->generate_calls() + workers_[1]->generate_calls(), 2);
  for (const auto& w : workers_) {
    if (w->generate_calls() == 0) continue;
    EXPECT_EQ(w->last_request().request().n(), 1u);
    const uint64_t seed = w->last_request().request().sampling().seed();
    EXPECT_TRUE(seed == 40 || seed == 41) << seed;
  }
}

TEST_F(DispatcherTest, FanOutFailureOfOneChoiceCancelsTheOthers) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Milliseconds(50));
  workers_[0]->set_fail_after(1, absl::InternalError("choice broke"));
  StartGateway();
  chatpb::ChatRequest request = Hello();
  request.set_n(3);
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(request, collector), nullptr);
  absl::Status status = collector->Wait();
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(status.message(), HasSubstr("choice broke"));
  EXPECT_TRUE(Eventually([&] { return workers_[0]->running() == 0; }));
}

TEST_F(DispatcherTest, NoHealthyWorkerIsUnavailableWithRetryAfter) {
  StartWorkers(1);
  StartGateway();
  workers_[0]->set_healthy(false);
  ASSERT_TRUE(Eventually([&] { return !pool_->Snapshots(kModel)[0].healthy; }));
  absl::Duration retry_after = absl::ZeroDuration();
  absl::Status status = StartError(Dispatch(Hello()), &retry_after);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_GT(retry_after, absl::ZeroDuration());
  EXPECT_EQ(dispatcher_->in_flight(), 0);
}

TEST_F(DispatcherTest, DrainingRefusesNewRequests) {
  StartWorkers(1);
  StartGateway();
  dispatcher_->SetDraining();
  absl::Status status = StartError(Dispatch(Hello()));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("shutting down"));
}

TEST_F(DispatcherTest, DestructionCancelsRunningRequests) {
  StartWorkers(1);
  workers_[0]->set_token_delay(absl::Seconds(60));
  StartGateway();
  auto collector = std::make_shared<Collector>();
  ASSERT_NE(StartOk(Hello(), collector), nullptr);
  dispatcher_.reset();  // waits for the call's end
  absl::MutexLock lock(&collector->mu);
  ASSERT_TRUE(collector->done.has_value());
  EXPECT_EQ(collector->done->code(), absl::StatusCode::kCancelled);
}

TEST_F(DispatcherTest, ListModelsAndClusterStatus) {
  StartWorkers(2);
  StartGateway();
  chatpb::ListModelsResponse models = dispatcher_->ListModels();
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), kModel);
  gateway::v1::ClusterStatusResponse cluster = dispatcher_->ClusterStatus();
  ASSERT_EQ(cluster.models_size(), 1);
  EXPECT_EQ(cluster.models(0).workers_size(), 2);
  EXPECT_EQ(cluster.models(0).queued_requests(), 0u);
}

TEST_F(DispatcherTest, ConcurrentRequestsAllComplete) {
  StartWorkers(2);
  StartGateway();
  std::vector<std::shared_ptr<Collector>> collectors;
  for (int i = 0; i < 20; ++i) {
    collectors.push_back(std::make_shared<Collector>());
    ASSERT_NE(StartOk(Hello(), collectors.back()), nullptr);
  }
  for (const auto& c : collectors) {
    EXPECT_TRUE(c->Wait().ok());
    EXPECT_EQ(c->Text(0), "Hello from the fake worker .");
  }
  EXPECT_EQ(workers_[0]->generate_calls() + workers_[1]->generate_calls(), 20);
  EXPECT_EQ(dispatcher_->in_flight(), 0);
}

}  // namespace
}  // namespace shardserve
