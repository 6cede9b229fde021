#include "gateway/worker_pool.h"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gateway/testing/fake_worker.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::shardserve::testing::FakeWorker;
using ::shardserve::testing::FakeWorkerOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

// Conditions are polled, never timed: a generous deadline only bounds a failing test.
constexpr absl::Duration kPatience = absl::Seconds(10);

bool WaitFor(const std::function<bool()>& condition) {
  const absl::Time deadline = absl::Now() + kPatience;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return true;
}

WorkerPoolOptions FastOptions() {
  WorkerPoolOptions options;
  options.health_interval = absl::Milliseconds(50);
  options.status_interval = absl::Milliseconds(50);
  options.dns_refresh = absl::Milliseconds(100);
  options.connect_timeout = absl::Seconds(1);
  return options;
}

ModelRoute StaticModel(const std::string& name, std::vector<std::string> endpoints) {
  ModelRoute route;
  route.name = name;
  route.endpoints = std::move(endpoints);
  return route;
}

std::unique_ptr<FakeWorker> StartWorker(FakeWorkerOptions options = {}) {
  std::unique_ptr<FakeWorker> worker = FakeWorker::Start(std::move(options));
  EXPECT_NE(worker, nullptr);
  return worker;
}

std::unique_ptr<WorkerPool> StartPool(std::vector<ModelRoute> models,
                                      MetricsRegistry* metrics = nullptr,
                                      WorkerPoolOptions options = FastOptions()) {
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
      WorkerPool::Create(std::move(models), options, metrics);
  EXPECT_TRUE(pool.ok()) << pool.status();
  if (!pool.ok()) return nullptr;
  (*pool)->Start();
  return *std::move(pool);
}

// The snapshot of `id` among `model`'s workers (an empty one with id "" when absent).
WorkerSnapshot Find(const WorkerPool& pool, const std::string& model, const std::string& id) {
  for (WorkerSnapshot& s : pool.Snapshots(model)) {
    if (s.id == id) return s;
  }
  return WorkerSnapshot{};
}

bool Usable(const WorkerPool& pool, const std::string& model, const std::string& id) {
  const WorkerSnapshot s = Find(pool, model, id);
  return s.id == id && s.up && s.healthy;
}

const gateway::v1::WorkerInfo* FindInfo(const gateway::v1::ClusterStatusResponse& status,
                                        const std::string& id) {
  for (const auto& model : status.models()) {
    for (const auto& worker : model.workers()) {
      if (worker.address() == id) return &worker;
    }
  }
  return nullptr;
}

TEST(WorkerPoolTest, CreateRejectsBadModels) {
  ModelRoute empty;
  empty.name = "m";
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool = WorkerPool::Create({empty}, {}, nullptr);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("model 'm' has neither endpoints nor dns"));

  pool = WorkerPool::Create({StaticModel("m", {"no-port"})}, {}, nullptr);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("endpoint 'no-port' is not host:port"));

  ModelRoute dns;
  dns.name = "d";
  dns.dns = "host-without-port";
  pool = WorkerPool::Create({dns}, {}, nullptr);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("dns 'host-without-port' is not host:port"));

  pool = WorkerPool::Create({StaticModel("m", {"h:1"}), StaticModel("m", {"h:2"})}, {}, nullptr);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pool.status().message(), HasSubstr("model 'm' is configured twice"));
}

TEST(WorkerPoolTest, HealthyWorkersAndTheirStatusAppearInSnapshots) {
  auto a = StartWorker();
  auto b = StartWorker();
  MetricsRegistry metrics;
  auto pool = StartPool({StaticModel("fake-model", {a->address(), b->address()}),
                         StaticModel("another", {"127.0.0.1:1"})},
                        &metrics);
  ASSERT_NE(pool, nullptr);
  EXPECT_THAT(pool->Models(), ElementsAre("another", "fake-model"));
  EXPECT_TRUE(pool->HasModel("fake-model"));
  EXPECT_FALSE(pool->HasModel("nope"));
  EXPECT_THAT(pool->Snapshots("nope"), IsEmpty());

  ASSERT_TRUE(WaitFor([&] {
    return Usable(*pool, "fake-model", a->address()) && Usable(*pool, "fake-model", b->address());
  }));
  a->set_reported_load(3, 2, 10, 100);
  ASSERT_TRUE(WaitFor([&] {
    const WorkerSnapshot s = Find(*pool, "fake-model", a->address());
    return s.running == 3 && s.waiting == 2 && s.kv_blocks_used == 10 && s.kv_blocks_total == 100;
  }));
  const WorkerSnapshot s = Find(*pool, "fake-model", a->address());
  EXPECT_THAT(s.models, ElementsAre("fake-model"));

  const chat::v1::ModelInfo info = pool->Info("fake-model");
  EXPECT_EQ(info.id(), "fake-model");
  EXPECT_EQ(info.context_length(), 2048u);
  EXPECT_EQ(info.quantization(), "fake");
  EXPECT_EQ(info.source(), "fake/fake-model");
  EXPECT_EQ(info.ready_replicas(), 2u);

  // "another" has one unreachable worker: not ready, and Ready() names it.
  absl::Status ready = pool->Ready();
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ready.message(), HasSubstr("no worker up and healthy for model 'another' (0 of 1"));
  EXPECT_THAT(ready.message(), Not(HasSubstr("'fake-model'")));

  const gateway::v1::ClusterStatusResponse cluster = pool->ClusterStatus();
  ASSERT_EQ(cluster.models_size(), 2);
  EXPECT_EQ(cluster.models(0).model().id(), "another");
  EXPECT_EQ(cluster.models(1).model().id(), "fake-model");
  EXPECT_EQ(cluster.models(1).discovery(), "static");
  ASSERT_EQ(cluster.models(1).workers_size(), 2);
  EXPECT_LT(cluster.models(1).workers(0).address(), cluster.models(1).workers(1).address());
  const gateway::v1::WorkerInfo* wa = FindInfo(cluster, a->address());
  ASSERT_NE(wa, nullptr);
  EXPECT_TRUE(wa->up());
  EXPECT_TRUE(wa->healthy());
  EXPECT_EQ(wa->running_sequences(), 3u);
  EXPECT_EQ(wa->waiting_sequences(), 2u);
  EXPECT_EQ(wa->kv_blocks_used(), 10u);
  EXPECT_EQ(wa->kv_blocks_total(), 100u);
  EXPECT_EQ(wa->message(), "");
  EXPECT_GE(wa->seconds_since_seen(), 0);

  const std::string text = metrics.Render();
  EXPECT_THAT(text,
              HasSubstr(absl::StrCat("shardserve_gateway_worker_up{model=\"fake-model\",worker=\"",
                                     a->address(), "\"} 1")));
  EXPECT_THAT(
      text, HasSubstr("shardserve_gateway_worker_up{model=\"another\",worker=\"127.0.0.1:1\"} 0"));
}

TEST(WorkerPoolTest, NotServingMakesAWorkerUnhealthyUntilItServesAgain) {
  auto a = StartWorker();
  auto pool = StartPool({StaticModel("fake-model", {a->address()})});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  EXPECT_TRUE(pool->Ready().ok());

  a->set_healthy(false);
  ASSERT_TRUE(WaitFor([&] { return !Find(*pool, "fake-model", a->address()).healthy; }));
  EXPECT_TRUE(Find(*pool, "fake-model", a->address()).up);  // it answers: reachable
  absl::Status ready = pool->Ready();
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ready.message(),
              HasSubstr(absl::StrCat("'fake-model' (0 of 1 ready; ", a->address(),
                                     ": unhealthy: health check says NOT_SERVING")));
  EXPECT_EQ(pool->Info("fake-model").ready_replicas(), 0u);

  a->set_healthy(true);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  EXPECT_TRUE(pool->Ready().ok());
}

TEST(WorkerPoolTest, ReportFailureMarksDownUntilAHealthCheckPasses) {
  auto a = StartWorker();
  MetricsRegistry metrics;
  auto pool = StartPool({StaticModel("fake-model", {a->address()})}, &metrics);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));

  // Unhealthy first, so that the health checks that follow the failure cannot pass.
  a->set_healthy(false);
  ASSERT_TRUE(WaitFor([&] { return !Find(*pool, "fake-model", a->address()).healthy; }));
  pool->ReportFailure(a->address(), absl::UnavailableError("stream broke"));
  EXPECT_FALSE(Find(*pool, "fake-model", a->address()).up);  // at once
  const gateway::v1::WorkerInfo* info = nullptr;
  const gateway::v1::ClusterStatusResponse cluster = pool->ClusterStatus();
  info = FindInfo(cluster, a->address());
  ASSERT_NE(info, nullptr);
  EXPECT_FALSE(info->up());
  EXPECT_EQ(info->message(), "down: stream broke");
  EXPECT_THAT(metrics.Render(), HasSubstr(absl::StrCat(
                                    "shardserve_gateway_worker_failures_total{model=\"fake-model\","
                                    "worker=\"",
                                    a->address(), "\"} 1")));
  pool->ReportFailure("127.0.0.1:9", absl::UnavailableError("not in the pool"));  // ignored

  a->set_healthy(true);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  EXPECT_TRUE(pool->Ready().ok());
  EXPECT_THAT(metrics.Render(),
              HasSubstr(absl::StrCat("shardserve_gateway_worker_up{model=\"fake-model\",worker=\"",
                                     a->address(), "\"} 1")));
}

TEST(WorkerPoolTest, AWorkerThatGoesAwayIsDownUntilItIsBack) {
  auto a = StartWorker();
  auto b = StartWorker();
  auto pool = StartPool({StaticModel("fake-model", {a->address(), b->address()})});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] {
    return Usable(*pool, "fake-model", a->address()) && Usable(*pool, "fake-model", b->address());
  }));

  a->Shutdown();
  ASSERT_TRUE(WaitFor([&] {
    const WorkerSnapshot s = Find(*pool, "fake-model", a->address());
    return !s.up && !s.healthy;
  }));
  EXPECT_TRUE(Usable(*pool, "fake-model", b->address()));
  EXPECT_TRUE(pool->Ready().ok());  // b still serves the model
  EXPECT_EQ(pool->Info("fake-model").ready_replicas(), 1u);
  const gateway::v1::ClusterStatusResponse cluster = pool->ClusterStatus();
  const gateway::v1::WorkerInfo* info = FindInfo(cluster, a->address());
  ASSERT_NE(info, nullptr);
  EXPECT_THAT(info->message(), HasSubstr("down: health check failed: UNAVAILABLE"));

  b->Shutdown();
  ASSERT_TRUE(WaitFor([&] { return !pool->Ready().ok(); }));
  EXPECT_THAT(pool->Ready().message(), HasSubstr("'fake-model' (0 of 2 ready"));

  a->Restart();
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  EXPECT_TRUE(pool->Ready().ok());
  EXPECT_FALSE(Usable(*pool, "fake-model", b->address()));
}

TEST(WorkerPoolTest, DnsModelFindsItsWorkers) {
  auto a = StartWorker();
  const std::string port = a->address().substr(a->address().rfind(':') + 1);
  ModelRoute route;
  route.name = "fake-model";
  route.dns = "localhost:" + port;
  auto pool = StartPool({route});
  ASSERT_NE(pool, nullptr);
  // localhost may resolve to 127.0.0.1 and ::1; the pool keeps the IPv4 address only.
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", "127.0.0.1:" + port); }));
  ASSERT_EQ(pool->Snapshots("fake-model").size(), 1u);
  EXPECT_TRUE(pool->Ready().ok());
  EXPECT_NE(pool->Stub("127.0.0.1:" + port), nullptr);
  const gateway::v1::ClusterStatusResponse cluster = pool->ClusterStatus();
  ASSERT_EQ(cluster.models_size(), 1);
  EXPECT_EQ(cluster.models(0).discovery(), "dns:localhost:" + port);
  ASSERT_EQ(cluster.models(0).workers_size(), 1);
  EXPECT_EQ(cluster.models(0).workers(0).address(), "127.0.0.1:" + port);
}

TEST(WorkerPoolTest, RequestsStartedSinceTheLastStatusAddToLoad) {
  auto a = StartWorker();
  a->set_reported_load(1, 0, 0, 100);
  // One Status at start, then none for the test's life: the added load stays put.
  WorkerPoolOptions options = FastOptions();
  options.status_interval = absl::Hours(1);
  auto pool = StartPool({StaticModel("fake-model", {a->address()})}, nullptr, options);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  EXPECT_EQ(Find(*pool, "fake-model", a->address()).running, 1);
  EXPECT_EQ(Find(*pool, "fake-model", a->address()).waiting, 0);

  for (int i = 0; i < 3; ++i) pool->RequestStarted(a->address());
  WorkerSnapshot s = Find(*pool, "fake-model", a->address());
  EXPECT_EQ(s.running, 1);
  EXPECT_EQ(s.waiting, 3);
  gateway::v1::ClusterStatusResponse cluster = pool->ClusterStatus();
  const gateway::v1::WorkerInfo* info = FindInfo(cluster, a->address());
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->gateway_in_flight(), 3u);
  EXPECT_EQ(info->waiting_sequences(), 0u);  // the worker's own count

  for (int i = 0; i < 3; ++i) pool->RequestFinished(a->address());
  cluster = pool->ClusterStatus();
  info = FindInfo(cluster, a->address());
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->gateway_in_flight(), 0u);
  // Still counted until the worker's next Status covers them.
  EXPECT_EQ(Find(*pool, "fake-model", a->address()).waiting, 3);
  pool->RequestStarted("127.0.0.1:9");  // not in the pool: ignored
}

TEST(WorkerPoolTest, TheNextStatusAccountsForStartedRequests) {
  auto a = StartWorker();
  a->set_reported_load(1, 0, 0, 100);
  auto pool = StartPool({StaticModel("fake-model", {a->address()})});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] { return Usable(*pool, "fake-model", a->address()); }));
  for (int i = 0; i < 3; ++i) pool->RequestStarted(a->address());
  // The worker reports a fixed load: once a Status sent after the starts answers, they are no
  // longer added.
  ASSERT_TRUE(WaitFor([&] { return Find(*pool, "fake-model", a->address()).waiting == 0; }));
  EXPECT_EQ(Find(*pool, "fake-model", a->address()).running, 1);
}

TEST(WorkerPoolTest, AWorkerServingAnotherModelIsNotUsedForThisOne) {
  FakeWorkerOptions options;
  options.model = "other-model";
  auto a = StartWorker(options);
  auto pool = StartPool({StaticModel("fake-model", {a->address()})});
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitFor([&] {
    return Find(*pool, "fake-model", a->address()).models ==
           std::vector<std::string>{"other-model"};
  }));
  absl::Status ready = pool->Ready();
  EXPECT_EQ(ready.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(ready.message(), HasSubstr("serves model 'other-model', not 'fake-model'"));
  EXPECT_EQ(pool->Info("fake-model").ready_replicas(), 0u);
}

TEST(WorkerPoolTest, StubReachesTheWorker) {
  auto a = StartWorker();
  auto pool = StartPool({StaticModel("fake-model", {a->address()})});
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->Stub("127.0.0.1:9"), nullptr);
  std::shared_ptr<worker::v1::Worker::Stub> stub = pool->Stub(a->address());
  ASSERT_NE(stub, nullptr);
  grpc::ClientContext context;
  context.set_wait_for_ready(true);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  worker::v1::GenerateRequest request;
  request.mutable_request()->set_model("fake-model");
  request.set_request_id("req-1");
  auto reader = stub->Generate(&context, request);
  chat::v1::ChatChunk chunk;
  std::string text;
  std::vector<chat::v1::ChatChunk> chunks;
  while (reader->Read(&chunk)) chunks.push_back(chunk);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.front().request_id(), "req-1");
  EXPECT_EQ(chunks.front().model(), "fake-model");
  for (const auto& c : chunks) text += c.delta();
  EXPECT_EQ(text, "Hello from the fake worker .");
  EXPECT_EQ(chunks.back().finish_reason(), chat::v1::FINISH_REASON_STOP);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 6u);
  pool->Stop();
  pool->Stop();  // idempotent
}

// ---- the fixture itself (other gateway tests rely on it) ----

struct Stream {
  std::unique_ptr<grpc::ClientContext> context = std::make_unique<grpc::ClientContext>();
  std::unique_ptr<grpc::ClientReader<chat::v1::ChatChunk>> reader;
  std::vector<chat::v1::ChatChunk> chunks;
  grpc::Status status;
  void ReadAll() {
    chat::v1::ChatChunk chunk;
    while (reader->Read(&chunk)) chunks.push_back(chunk);
    status = reader->Finish();
  }
};

class FakeWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    worker_ = StartWorker();
    ASSERT_NE(worker_, nullptr);
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 100);
    stub_ = worker::v1::Worker::NewStub(
        grpc::CreateCustomChannel(worker_->address(), grpc::InsecureChannelCredentials(), args));
  }
  Stream Start(worker::v1::GenerateRequest request) {
    Stream stream;
    stream.context->set_wait_for_ready(true);
    stream.context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (request.request().model().empty()) request.mutable_request()->set_model("fake-model");
    stream.reader = stub_->Generate(stream.context.get(), request);
    return stream;
  }
  std::unique_ptr<FakeWorker> worker_;
  std::unique_ptr<worker::v1::Worker::Stub> stub_;
};

TEST_F(FakeWorkerTest, FailuresOnDemand) {
  worker_->set_fail_before_first(absl::UnavailableError("boom"));
  Stream s = Start({});
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(s.status.error_message(), "boom");
  EXPECT_TRUE(s.chunks.empty());

  worker_->set_fail_before_first(absl::OkStatus());
  worker_->set_fail_after(2, absl::InternalError("mid-stream"));
  s = Start({});
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_EQ(s.chunks.size(), 2u);

  worker_->set_fail_after(0, absl::OkStatus());
  worker::v1::GenerateRequest request;
  request.mutable_request()->set_max_tokens(2);
  s = Start(request);
  s.ReadAll();
  EXPECT_TRUE(s.status.ok());
  ASSERT_EQ(s.chunks.size(), 3u);
  EXPECT_EQ(s.chunks.back().finish_reason(), chat::v1::FINISH_REASON_LENGTH);

  request.mutable_request()->set_model("unknown");
  s = Start(request);
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(worker_->generate_calls(), 4);
  EXPECT_EQ(worker_->last_request().request().model(), "unknown");
}

TEST_F(FakeWorkerTest, ClientCancellationStopsTheStream) {
  worker_->set_token_delay(absl::Milliseconds(100));
  Stream s = Start({});
  chat::v1::ChatChunk chunk;
  ASSERT_TRUE(s.reader->Read(&chunk));
  EXPECT_EQ(worker_->running(), 1);
  s.context->TryCancel();
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitFor([&] { return worker_->running() == 0; }));
  EXPECT_EQ(worker_->cancelled(), 1);
}

TEST_F(FakeWorkerTest, RequestDeadlineEndsTheStream) {
  worker_->set_token_delay(absl::Milliseconds(100));
  worker::v1::GenerateRequest request;
  const int64_t deadline_ns = absl::ToUnixNanos(absl::Now() + absl::Milliseconds(150));
  request.mutable_deadline()->set_seconds(deadline_ns / 1000000000);
  request.mutable_deadline()->set_nanos(static_cast<int32_t>(deadline_ns % 1000000000));
  Stream s = Start(request);
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_FALSE(s.chunks.empty());
  EXPECT_EQ(s.chunks.back().finish_reason(), chat::v1::FINISH_REASON_CANCELLED);
}

TEST_F(FakeWorkerTest, ShutdownEndsStreamsAndRestartServesTheSamePort) {
  worker_->set_token_delay(absl::Milliseconds(100));
  const std::string address = worker_->address();
  Stream s = Start({});
  chat::v1::ChatChunk chunk;
  ASSERT_TRUE(s.reader->Read(&chunk));
  worker_->Shutdown();
  s.ReadAll();
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(worker_->running(), 0);
  EXPECT_EQ(worker_->cancelled(), 0);  // not the client's doing

  worker_->Restart();
  EXPECT_EQ(worker_->address(), address);
  worker_->set_token_delay(absl::ZeroDuration());
  s = Start({});
  s.ReadAll();
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  EXPECT_EQ(s.chunks.size(), 7u);
}

}  // namespace
}  // namespace shardserve
