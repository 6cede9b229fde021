#include "gateway/chat_service.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gateway/testing/fake_worker.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/gateway/v1/gateway.grpc.pb.h"

namespace shardserve {
namespace {

namespace chatpb = ::shardserve::chat::v1;
namespace gatewaypb = ::shardserve::gateway::v1;
using ::shardserve::testing::FakeWorker;
using ::shardserve::testing::FakeWorkerOptions;
using ::testing::HasSubstr;

constexpr char kModel[] = "fake-model";
constexpr char kKey[] = "test-key-1";

template <typename F>
bool Eventually(F condition) {
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (absl::Now() < until) {
    if (condition()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return condition();
}

chatpb::ChatRequest Hello() {
  chatpb::ChatRequest request;
  request.set_model(kModel);
  chatpb::Message* m = request.add_messages();
  m->set_role(chatpb::ROLE_USER);
  m->set_content("hello");
  return request;
}

// A fake worker, the pool, the dispatcher and the gRPC services on a real loopback server.
class ChatServiceTest : public ::testing::Test {
 protected:
  void Start(int max_queued = 64) {
    worker_ = FakeWorker::Start(FakeWorkerOptions{});
    ASSERT_NE(worker_, nullptr);
    config_.models.push_back({kModel, {worker_->address()}, "", max_queued});
    config_.retry_after_seconds = 3;
    WorkerPoolOptions options;
    options.health_interval = absl::Milliseconds(20);
    options.status_interval = absl::Milliseconds(20);
    auto pool = WorkerPool::Create(config_.models, options, &metrics_);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
    pool_->Start();
    auto admission = Admission::Create({{Sha256Hex(kKey), "team-a"}}, {}, absl::Now());
    ASSERT_TRUE(admission.ok()) << admission.status();
    admission_ = *std::move(admission);
    dispatcher_ = std::make_unique<Dispatcher>(config_, pool_.get(), admission_.get(), &metrics_);
    services_ = std::make_unique<GatewayServices>(
        dispatcher_.get(), GatewayServicesOptions{"test-version", absl::Seconds(3)});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(services_->chat_service());
    builder.RegisterService(services_->gateway_service());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    auto channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    chat_ = chatpb::Chat::NewStub(channel);
    gateway_ = gatewaypb::Gateway::NewStub(channel);
    ASSERT_TRUE(Eventually([&] { return pool_->Ready().ok(); }));
  }

  void TearDown() override {
    chat_.reset();
    gateway_.reset();
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    dispatcher_.reset();
    pool_.reset();
    server_.reset();  // after the pool: see server.cc on gRPC's shared completion queue
  }

  GatewayConfig config_;
  MetricsRegistry metrics_;
  std::unique_ptr<FakeWorker> worker_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<GatewayServices> services_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<chatpb::Chat::Stub> chat_;
  std::unique_ptr<gatewaypb::Gateway::Stub> gateway_;
};

TEST_F(ChatServiceTest, StreamsTheReplyWithABearerKey) {
  Start();
  grpc::ClientContext context;
  context.AddMetadata("authorization", std::string("Bearer ") + kKey);
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = chat_->Chat(&context, Hello());
  std::vector<chatpb::ChatChunk> chunks;
  chatpb::ChatChunk chunk;
  while (reader->Read(&chunk)) chunks.push_back(chunk);
  grpc::Status status = reader->Finish();
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_FALSE(chunks.empty());
  std::string text;
  for (const auto& c : chunks) text += c.delta();
  EXPECT_EQ(text, "Hello from the fake worker .");
  EXPECT_THAT(chunks.front().request_id(), HasSubstr("req-"));
  EXPECT_EQ(chunks.front().model(), kModel);
  EXPECT_EQ(chunks.back().usage().completion_tokens(), 6u);
  // The client's deadline went to the worker; the tenant too.
  worker::v1::GenerateRequest seen = worker_->last_request();
  EXPECT_TRUE(seen.has_deadline());
  EXPECT_LE(seen.deadline().seconds(), absl::ToUnixSeconds(absl::Now() + absl::Seconds(61)));
  EXPECT_EQ(seen.tenant(), "team-a");
}

TEST_F(ChatServiceTest, KeyFromXApiKeyAndMissingKeyIsUnauthenticated) {
  Start();
  {
    grpc::ClientContext context;
    context.AddMetadata("x-api-key", kKey);
    auto reader = chat_->Chat(&context, Hello());
    chatpb::ChatChunk chunk;
    while (reader->Read(&chunk)) {
    }
    EXPECT_TRUE(reader->Finish().ok());
  }
  grpc::ClientContext context;
  auto reader = chat_->Chat(&context, Hello());
  chatpb::ChatChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("missing API key"));
}

TEST_F(ChatServiceTest, InvalidRequestIsInvalidArgument) {
  Start();
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", kKey);
  chatpb::ChatRequest request = Hello();
  request.clear_messages();
  auto reader = chat_->Chat(&context, request);
  chatpb::ChatChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("messages"));
  EXPECT_EQ(worker_->generate_calls(), 0);
}

TEST_F(ChatServiceTest, QueueFullIsResourceExhaustedWithRetryAfterTrailer) {
  Start(/*max_queued=*/1);
  worker_->set_token_delay(absl::Seconds(60));
  grpc::ClientContext first;
  first.AddMetadata("x-api-key", kKey);
  auto first_reader = chat_->Chat(&first, Hello());
  ASSERT_TRUE(Eventually([&] { return worker_->running() == 1; }));

  grpc::ClientContext second;
  second.AddMetadata("x-api-key", kKey);
  auto reader = chat_->Chat(&second, Hello());
  chatpb::ChatChunk chunk;
  EXPECT_FALSE(reader->Read(&chunk));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("first token"));
  const auto& trailers = second.GetServerTrailingMetadata();
  auto it = trailers.find("retry-after");
  ASSERT_NE(it, trailers.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "3");

  first.TryCancel();
  EXPECT_EQ(first_reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(ChatServiceTest, ClientCancellationStopsTheWorker) {
  Start();
  worker_->set_token_delay(absl::Milliseconds(100));
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", kKey);
  auto reader = chat_->Chat(&context, Hello());
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_EQ(chunk.delta(), "Hello");
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(Eventually([&] { return worker_->cancelled() == 1; }));
  EXPECT_TRUE(Eventually([&] { return worker_->running() == 0; }));
  EXPECT_TRUE(Eventually([&] { return dispatcher_->in_flight() == 0; }));
}

TEST_F(ChatServiceTest, ListModelsAndClusterStatusNeedTheKey) {
  Start();
  {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("bearer ") + kKey);
    chatpb::ListModelsResponse response;
    ASSERT_TRUE(chat_->ListModels(&context, {}, &response).ok());
    ASSERT_EQ(response.models_size(), 1);
    EXPECT_EQ(response.models(0).id(), kModel);
    EXPECT_EQ(response.models(0).context_length(), 2048u);
  }
  {
    grpc::ClientContext context;
    context.AddMetadata("x-api-key", kKey);
    gatewaypb::ClusterStatusResponse response;
    ASSERT_TRUE(gateway_->ClusterStatus(&context, {}, &response).ok());
    EXPECT_EQ(response.version(), "test-version");
    ASSERT_EQ(response.models_size(), 1);
    ASSERT_EQ(response.models(0).workers_size(), 1);
    EXPECT_EQ(response.models(0).workers(0).address(), worker_->address());
  }
  grpc::ClientContext context;
  context.AddMetadata("x-api-key", "wrong");
  gatewaypb::ClusterStatusResponse response;
  grpc::Status status = gateway_->ClusterStatus(&context, {}, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), HasSubstr("invalid API key"));
}

TEST(ApiKeyFromMetadataTest, ReadsBearerThenXApiKey) {
  std::multimap<grpc::string_ref, grpc::string_ref> metadata;
  EXPECT_EQ(ApiKeyFromMetadata(metadata), "");
  metadata.emplace("x-api-key", "k2");
  EXPECT_EQ(ApiKeyFromMetadata(metadata), "k2");
  metadata.emplace("authorization", "Basic abc");
  EXPECT_EQ(ApiKeyFromMetadata(metadata), "k2");
  metadata.emplace("authorization", "BEARER  k1 ");
  EXPECT_EQ(ApiKeyFromMetadata(metadata), "k1");
}

TEST(RetryAfterSecondsTest, RoundsUpToWholeSeconds) {
  EXPECT_EQ(RetryAfterSeconds(absl::ZeroDuration()), 1);
  EXPECT_EQ(RetryAfterSeconds(absl::Milliseconds(1500)), 2);
  EXPECT_EQ(RetryAfterSeconds(absl::Seconds(3)), 3);
  EXPECT_EQ(RetryAfterSeconds(absl::InfiniteDuration()), 86400);
}

}  // namespace
}  // namespace shardserve
