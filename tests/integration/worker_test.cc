// The real `worker` binary on a free loopback port, with the default GGUF, driven through gRPC:
// health, streaming order, greedy determinism, max_tokens, stop strings, concurrency,
// cancellation, each bad-input case, Status, ListModels, the log line, and shutdown on SIGTERM;
// its HTTP side (/metrics, also through prometheus_client's parser, /live, /ready); and the
// `shardserve status` and `chat` commands against it.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"
#include "tests/integration/chat_stream.h"
#include "tests/integration/subprocess.h"
#include "worker/text/model_text.h"

namespace shardserve {
namespace {

namespace chatpb = ::shardserve::chat::v1;
using testing::StreamResult;
namespace workerpb = ::shardserve::worker::v1;
namespace healthpb = ::grpc::health::v1;
using ::shardserve::testing::Process;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kModelPath[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr char kModelName[] = "SmolLM2-135M-Instruct";
constexpr int kContext = 256;

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

// One worker process and a channel to it.
struct Worker {
  std::unique_ptr<Process> process;
  std::string address;       // gRPC
  std::string http_address;  // /metrics, /live, /ready
  std::string log_path;
  std::shared_ptr<grpc::Channel> channel;
};

// Starts the worker on 127.0.0.1:0 (gRPC and HTTP) with a small context and cache, reads the
// ports it prints and waits (Health.Watch) until it serves. `extra_flags` override the defaults
// here. Fatal failures leave `worker->channel` null.
void StartWorker(const std::vector<std::string>& extra_flags, const std::string& name,
                 Worker* worker) {
  worker->log_path = ::testing::TempDir() + "worker_test_" + name + ".log";
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"--address", "127.0.0.1:0"},
      {"--http-address", "127.0.0.1:0"},
      {"--context-length", std::to_string(kContext)},
      {"--kv-cache-tokens", "1024"},
      {"--threads", "2"},
      {"--max-running", "4"},
      {"--drain-seconds", "0.5"}};
  std::vector<std::string> argv = {SHARDSERVE_WORKER_PATH, "--model", kModelPath};
  for (const auto& [flag, value] : defaults) {
    if (std::find(extra_flags.begin(), extra_flags.end(), flag) != extra_flags.end()) continue;
    argv.push_back(flag);
    argv.push_back(value);
  }
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  std::string error;
  worker->process = Process::Start(argv, worker->log_path, &error);
  ASSERT_NE(worker->process, nullptr) << error;
  std::optional<std::string> line = worker->process->ReadLine(60s);
  ASSERT_TRUE(line.has_value()) << "no 'listening on' line; log: " << worker->log_path;
  ASSERT_THAT(*line, ::testing::StartsWith("listening on 127.0.0.1:"));
  worker->address = line->substr(std::string("listening on ").size());
  // The second line, before the model loads: the HTTP address.
  line = worker->process->ReadLine(10s);
  ASSERT_TRUE(line.has_value()) << "no 'http listening on' line; log: " << worker->log_path;
  ASSERT_THAT(*line, ::testing::StartsWith("http listening on 127.0.0.1:"));
  worker->http_address = line->substr(std::string("http listening on ").size());
  worker->channel = grpc::CreateChannel(worker->address, grpc::InsecureChannelCredentials());

  // NOT_SERVING (or SERVING already) until the model is up; Watch streams each change.
  healthpb::Health::Stub health(worker->channel);
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  healthpb::HealthCheckRequest request;
  request.set_service("");
  auto reader = health.Watch(&context, request);
  healthpb::HealthCheckResponse response;
  bool serving = false;
  while (!serving && reader->Read(&response)) {
    serving = response.status() == healthpb::HealthCheckResponse::SERVING;
  }
  context.TryCancel();
  reader->Finish();
  ASSERT_TRUE(serving) << "worker never became SERVING; log: " << worker->log_path;
  // The third (and last) stdout line follows health SERVING.
  EXPECT_EQ(worker->process->ReadLine(10s),
            std::optional<std::string>("serving " + std::string(kModelName)));
}

chatpb::ChatRequest Greedy(const std::string& prompt, int max_tokens) {
  return testing::GreedyRequest(kModelName, prompt, max_tokens);
}

StreamResult Collect(grpc::ClientReaderInterface<chatpb::ChatChunk>* reader,
                     const std::function<void(const StreamResult&)>& on_chunk = nullptr) {
  return testing::CollectStream(reader, on_chunk);
}

// The value of one series in Prometheus text ("name{labels} value" lines); 0 when absent (a
// counter not incremented yet).
double Sample(const std::string& metrics, const std::string& series) {
  std::istringstream lines(metrics);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
    }
  }
  return 0;
}

// GET `path` from the worker's HTTP side.
httplib::Result HttpGet(const Worker& worker, const std::string& path) {
  httplib::Client client("http://" + worker.http_address);
  client.set_connection_timeout(10);
  client.set_read_timeout(30);
  return client.Get(path.c_str());
}

// The status of GET `path`, or -1 when the request fails.
int HttpStatus(const Worker& worker, const std::string& path) {
  httplib::Result r = HttpGet(worker, path);
  return r ? r->status : -1;
}

// A loopback port nothing listens on (bound, then closed).
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

class WorkerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    worker_ = new Worker;
    StartWorker({}, "shared", worker_);
    absl::StatusOr<ModelText> text = LoadModelText(kModelPath);
    ASSERT_TRUE(text.ok()) << text.status();
    text_ = new ModelText(*std::move(text));
  }
  static void TearDownTestSuite() {
    if (worker_->process != nullptr) {
      worker_->process->Signal(SIGTERM);
      EXPECT_EQ(worker_->process->Wait(30s), std::optional<int>(0));
    }
    delete worker_;
    delete text_;
  }
  void SetUp() override { ASSERT_NE(worker_->channel, nullptr) << "the worker did not start"; }

  StreamResult Generate(const chatpb::ChatRequest& request, const std::string& request_id = "",
                        std::optional<std::chrono::milliseconds> grpc_deadline = std::nullopt) {
    workerpb::Worker::Stub stub(worker_->channel);
    grpc::ClientContext context;
    context.set_deadline(In(grpc_deadline.value_or(60s)));
    workerpb::GenerateRequest g;
    *g.mutable_request() = request;
    g.set_request_id(request_id);
    auto reader = stub.Generate(&context, g);
    return Collect(reader.get());
  }

  StreamResult Chat(const chatpb::ChatRequest& request) {
    chatpb::Chat::Stub stub(worker_->channel);
    grpc::ClientContext context;
    context.set_deadline(In(60s));
    auto reader = stub.Chat(&context, request);
    return Collect(reader.get());
  }

  workerpb::StatusResponse Status() {
    workerpb::Worker::Stub stub(worker_->channel);
    grpc::ClientContext context;
    context.set_deadline(In(10s));
    workerpb::StatusResponse response;
    grpc::Status status = stub.Status(&context, workerpb::StatusRequest(), &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  // The worker's /metrics text (empty, with a test failure, when the GET fails).
  static std::string Metrics() {
    httplib::Result r = HttpGet(*worker_, "/metrics");
    EXPECT_TRUE(r) << "GET /metrics: " << httplib::to_string(r.error());
    if (!r) return "";
    EXPECT_EQ(r->status, 200);
    EXPECT_THAT(r->get_header_value("Content-Type"), ::testing::StartsWith("text/plain"));
    return r->body;
  }
  // /metrics once no sequence is running or waiting: every request that ended has been counted
  // (the engine publishes its load after the outputs of the step that ended them). Polled.
  static std::string IdleMetrics() {
    const auto start = std::chrono::steady_clock::now();
    std::string text;
    do {
      text = Metrics();
    } while ((Sample(text, "shardserve_worker_running_sequences") != 0 ||
              Sample(text, "shardserve_worker_waiting_sequences") != 0) &&
             std::chrono::steady_clock::now() - start < 10s);
    return text;
  }

  void ExpectError(const chatpb::ChatRequest& request, grpc::StatusCode code,
                   const std::string& field) {
    StreamResult r = Generate(request);
    EXPECT_EQ(r.status.error_code(), code) << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr(field));
    EXPECT_TRUE(r.chunks.empty());
  }

  static Worker* worker_;
  static ModelText* text_;
};

Worker* WorkerTest::worker_ = nullptr;
ModelText* WorkerTest::text_ = nullptr;

TEST_F(WorkerTest, HealthIsServingForEveryServiceName) {
  healthpb::Health::Stub health(worker_->channel);
  for (const char* name : {"", "shardserve.worker.v1.Worker", "shardserve.chat.v1.Chat"}) {
    grpc::ClientContext context;
    context.set_deadline(In(10s));
    healthpb::HealthCheckRequest request;
    request.set_service(name);
    healthpb::HealthCheckResponse response;
    ASSERT_TRUE(health.Check(&context, request, &response).ok()) << name;
    EXPECT_EQ(response.status(), healthpb::HealthCheckResponse::SERVING) << name;
  }
}

TEST_F(WorkerTest, StreamsInOrderWithOneFinalChunk) {
  StreamResult r = Generate(Greedy("Name three colors.", 16), "order-1");
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_FALSE(r.chunks.empty());
  EXPECT_EQ(r.chunks.front().request_id(), "order-1");
  EXPECT_EQ(r.chunks.front().model(), kModelName);
  int finals = 0;
  for (size_t i = 0; i < r.chunks.size(); ++i) {
    if (r.chunks[i].finish_reason() != chatpb::FINISH_REASON_UNSPECIFIED) {
      ++finals;
      EXPECT_EQ(i, r.chunks.size() - 1) << "the finish reason must be on the last chunk";
    } else {
      EXPECT_FALSE(r.chunks[i].has_usage());
    }
  }
  EXPECT_EQ(finals, 1);
  const chatpb::ChatChunk& last = *r.final_chunk();
  EXPECT_THAT(last.finish_reason(),
              ::testing::AnyOf(chatpb::FINISH_REASON_STOP, chatpb::FINISH_REASON_LENGTH));
  ASSERT_TRUE(last.has_usage());
  EXPECT_GT(last.usage().prompt_tokens(), 0u);
  EXPECT_EQ(last.usage().completion_tokens(), r.ids.size());
  EXPECT_LE(r.ids.size(), 16u);
  EXPECT_GT(last.timings().time_to_first_token_seconds(), 0);
  // The deltas concatenate to the text of the ids, in order.
  EXPECT_EQ(r.text, text_->tokenizer->Decode(r.ids, /*skip_special_tokens=*/true));
  EXPECT_FALSE(r.text.empty());
}

TEST_F(WorkerTest, GreedyIsDeterministicAndChatMatchesGenerate) {
  chatpb::ChatRequest request = Greedy("What is the capital of France?", 12);
  StreamResult a = Generate(request);
  StreamResult b = Generate(request);
  StreamResult c = Chat(request);
  ASSERT_TRUE(a.status.ok() && b.status.ok() && c.status.ok()) << c.status.error_message();
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.text, b.text);
  EXPECT_EQ(a.ids, c.ids);
  EXPECT_EQ(a.text, c.text);
  EXPECT_FALSE(c.chunks.front().request_id().empty());
}

TEST_F(WorkerTest, MaxTokensEndsWithLength) {
  StreamResult r = Generate(Greedy("Write a long story about a dragon and a knight.", 5));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final_chunk()->finish_reason(), chatpb::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.ids.size(), 5u);
  EXPECT_EQ(r.final_chunk()->usage().completion_tokens(), 5u);
}

TEST_F(WorkerTest, StopStringIsNeverEmitted) {
  chatpb::ChatRequest request = Greedy("Write a long story about a dragon and a knight.", 16);
  StreamResult free_run = Generate(request);
  ASSERT_TRUE(free_run.status.ok());
  ASSERT_GE(free_run.text.size(), 12u) << free_run.text;
  // A stop string from the middle of the greedy text, spanning whatever tokens it spans.
  const std::string stop = free_run.text.substr(free_run.text.size() / 2, 3);
  const std::string expected = free_run.text.substr(0, free_run.text.find(stop));
  request.add_stop(stop);
  StreamResult r = Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final_chunk()->finish_reason(), chatpb::FINISH_REASON_STOP);
  EXPECT_EQ(r.text, expected) << "stop '" << stop << "'";
  EXPECT_THAT(r.text, ::testing::Not(HasSubstr(stop)));
}

TEST_F(WorkerTest, ConcurrentRequestsMatchTheirSoloRuns) {
  const std::vector<std::string> prompts = {"Count from one to ten.", "What is a cat?",
                                            "Say hello in French.", "List two fruits."};
  std::vector<StreamResult> solo;
  for (const std::string& p : prompts) solo.push_back(Generate(Greedy(p, 10)));
  std::vector<StreamResult> together(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] { together[i] = Generate(Greedy(prompts[i], 10)); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(solo[i].status.ok()) << solo[i].status.error_message();
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].text, solo[i].text) << prompts[i];
    EXPECT_EQ(together[i].ids, solo[i].ids) << prompts[i];
  }
}

TEST_F(WorkerTest, CancellingFreesTheSequenceAndItsCache) {
  workerpb::Worker::Stub stub(worker_->channel);
  grpc::ClientContext context;
  workerpb::GenerateRequest g;
  *g.mutable_request() = Greedy("Write a long story about a dragon and a knight.", 200);
  g.set_request_id("cancel-me");
  auto reader = stub.Generate(&context, g);
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(reader->Read(&chunk));
  EXPECT_GT(Status().running_sequences(), 0u);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);

  // Polled: the engine drops the sequence within a step. Generous bound for a loaded machine;
  // the measured time is printed.
  const auto start = std::chrono::steady_clock::now();
  workerpb::StatusResponse s;
  do {
    s = Status();
  } while ((s.running_sequences() != 0 || s.kv_blocks_used() != 0) &&
           std::chrono::steady_clock::now() - start < 5s);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("cancellation: running and kv_blocks_used back to 0 after %.1f ms\n", ms);
  EXPECT_EQ(s.running_sequences(), 0u);
  EXPECT_EQ(s.waiting_sequences(), 0u);
  EXPECT_EQ(s.kv_blocks_used(), 0u);
}

TEST_F(WorkerTest, BadRequestsNameTheField) {
  chatpb::ChatRequest r = Greedy("hi", 4);
  r.set_model("no-such-model");
  ExpectError(r, grpc::StatusCode::NOT_FOUND, "model: 'no-such-model'");

  r = Greedy("hi", 4);
  r.clear_messages();
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "messages:");

  r = Greedy("hi", 4);
  r.mutable_messages(0)->set_role(chatpb::ROLE_UNSPECIFIED);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "messages[0].role");

  r = Greedy("hi", 4);
  r.mutable_messages(0)->set_role(static_cast<chatpb::Role>(42));
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "messages[0].role: unknown value 42");

  r = Greedy("hi", 4);
  r.set_n(3);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "n: 3");

  r = Greedy("hi", 4);
  r.mutable_sampling()->set_temperature(-0.5f);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling.temperature");

  r = Greedy("hi", 4);
  r.mutable_sampling()->set_top_p(1.5f);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_p");

  r = Greedy("hi", 4);
  r.mutable_sampling()->set_top_k(-1);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling.top_k");

  r = Greedy("hi", 4);
  r.mutable_sampling()->set_frequency_penalty(2.5f);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "sampling.frequency_penalty");

  r = Greedy("hi", 4);
  r.set_logprobs(true);
  r.set_top_logprobs(21);
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "top_logprobs");

  r = Greedy("hi", 4);
  for (int i = 0; i < 17; ++i) r.add_stop("s" + std::to_string(i));
  ExpectError(r, grpc::StatusCode::INVALID_ARGUMENT, "stop:");

  r = Greedy("hi", kContext);  // prompt + max_tokens over the context
  ExpectError(r, grpc::StatusCode::RESOURCE_EXHAUSTED, "max_tokens");
  r = Greedy(std::string(4000, 'x') + " long prompt", 0);
  ExpectError(r, grpc::StatusCode::RESOURCE_EXHAUSTED, "context length");

  // Through the Chat service too.
  r = Greedy("hi", 4);
  r.set_model("no-such-model");
  StreamResult c = Chat(r);
  EXPECT_EQ(c.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(c.status.error_message(), HasSubstr("model"));
}

TEST_F(WorkerTest, DeadlinesEndTheRequest) {
  // GenerateRequest.deadline already past.
  workerpb::Worker::Stub stub(worker_->channel);
  {
    grpc::ClientContext context;
    workerpb::GenerateRequest g;
    *g.mutable_request() = Greedy("hi", 4);
    g.mutable_deadline()->set_seconds(1);
    StreamResult r = Collect(stub.Generate(&context, g).get());
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  // GenerateRequest.deadline passing mid-stream: the engine ends the sequence.
  {
    grpc::ClientContext context;
    workerpb::GenerateRequest g;
    *g.mutable_request() = Greedy("Write a long story about a dragon and a knight.", 200);
    const auto deadline = std::chrono::system_clock::now() + 500ms;
    const auto since_epoch = deadline.time_since_epoch();
    g.mutable_deadline()->set_seconds(
        std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count());
    g.mutable_deadline()->set_nanos(static_cast<int32_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch).count() % 1000000000));
    StreamResult r = Collect(stub.Generate(&context, g).get());
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << r.status.error_message();
    EXPECT_LT(r.ids.size(), 200u);
  }
  // The gRPC deadline.
  StreamResult r =
      Generate(Greedy("Write a long story about a dragon and a knight.", 200), "", 500ms);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
}

TEST_F(WorkerTest, LogprobsCoverEveryToken) {
  chatpb::ChatRequest request = Greedy("What is 2+2?", 6);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  StreamResult r = Generate(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  std::vector<chatpb::PositionLogprobs> positions;
  for (const chatpb::ChatChunk& c : r.chunks) {
    EXPECT_EQ(c.logprobs_size(), c.token_ids_size());
    positions.insert(positions.end(), c.logprobs().begin(), c.logprobs().end());
  }
  ASSERT_EQ(positions.size(), r.ids.size());
  for (size_t i = 0; i < positions.size(); ++i) {
    const chatpb::PositionLogprobs& p = positions[i];
    EXPECT_EQ(p.sampled().token_id(), r.ids[i]);
    EXPECT_LE(p.sampled().logprob(), 0.0f);
    ASSERT_EQ(p.top_size(), 3);
    EXPECT_EQ(p.top(0).token_id(), r.ids[i]) << "greedy picks the most likely token";
    EXPECT_GE(p.top(0).logprob(), p.top(1).logprob());
    EXPECT_EQ(p.sampled().token(), text_->tokenizer->Decode({r.ids[i]}, false));
    EXPECT_FALSE(p.sampled().token_bytes().empty());
  }
}

TEST_F(WorkerTest, StatusAndListModelsDescribeTheModel) {
  workerpb::StatusResponse s = Status();
  EXPECT_EQ(s.state(), workerpb::WORKER_STATE_SERVING);
  EXPECT_EQ(s.model().id(), kModelName);
  EXPECT_EQ(s.model().context_length(), static_cast<uint32_t>(kContext));
  EXPECT_EQ(s.model().quantization(), "gguf:Q4_1");
  EXPECT_EQ(s.model().source(), kModelPath);
  EXPECT_EQ(s.model().ready_replicas(), 1u);
  EXPECT_EQ(s.world_size(), 1u);
  EXPECT_EQ(s.kv_block_tokens(), 16u);
  EXPECT_EQ(s.kv_blocks_total(), 1024u / 16);
  EXPECT_EQ(s.backend(), "cpu");
  EXPECT_FALSE(s.version().empty());

  chatpb::Chat::Stub chat(worker_->channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  chatpb::ListModelsResponse models;
  ASSERT_TRUE(chat.ListModels(&context, chatpb::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), kModelName);
  EXPECT_EQ(models.models(0).context_length(), static_cast<uint32_t>(kContext));
  EXPECT_EQ(models.models(0).ready_replicas(), 1u);
}

TEST_F(WorkerTest, LogsOneJsonLinePerRequest) {
  StreamResult r = Generate(Greedy("Say yes.", 3), "logged-1");
  ASSERT_TRUE(r.status.ok());
  // The line is written before the last chunk is sent, so it is in the file now.
  std::ifstream log(worker_->log_path);
  std::string line;
  int found = 0;
  while (std::getline(log, line)) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
    if (j.value("request_id", "") != "logged-1") continue;
    ++found;
    EXPECT_EQ(j.value("model", ""), kModelName);
    EXPECT_EQ(j.value("completion_tokens", -1), static_cast<int>(r.ids.size()));
    EXPECT_GT(j.value("prompt_tokens", 0), 0);
    EXPECT_EQ(j.value("finish_reason", ""), "length");
    EXPECT_TRUE(j.contains("ttft_seconds"));
    EXPECT_TRUE(j.contains("duration_seconds"));
  }
  EXPECT_EQ(found, 1);
}

TEST_F(WorkerTest, ChatCliStreamsTheAnswer) {
  const std::string question = "What is the capital of France?";
  StreamResult expected = Generate(Greedy(question, 12));
  ASSERT_TRUE(expected.status.ok());
  testing::RunResult r =
      testing::RunProgram({SHARDSERVE_CLI_PATH, "chat", "--target", worker_->address,
                           "--temperature", "0", "--max-tokens", "12", question});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected.text + "\n");
  EXPECT_THAT(r.err, HasSubstr("completion tokens"));

  r = testing::RunProgram(
      {SHARDSERVE_CLI_PATH, "chat", "--target", worker_->address, "--model", "nope", "hi"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("NOT_FOUND: model: 'nope'"));
  EXPECT_EQ(r.out, "");
}

TEST_F(WorkerTest, ChatCliInteractiveKeepsTheConversation) {
  const std::string q1 = "What is the capital of France?", q2 = "And of Germany?";
  const std::string input_path = ::testing::TempDir() + "worker_test_chat_input.txt";
  {
    std::ofstream f(input_path);
    f << q1 << "\n" << q2 << "\n\nnot asked\n";
  }
  testing::RunResult r =
      testing::RunProgram({SHARDSERVE_CLI_PATH, "chat", "--target", worker_->address,
                           "--temperature", "0", "--max-tokens", "10", "--system", "Be brief."},
                          input_path);
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // The same conversation through the API: the second answer must have seen the first.
  chatpb::ChatRequest request = Greedy(q1, 10);
  chatpb::Message system;
  system.set_role(chatpb::ROLE_SYSTEM);
  system.set_content("Be brief.");
  request.mutable_messages()->Add(std::move(system));
  request.mutable_messages()->SwapElements(0, 1);
  StreamResult a1 = Generate(request);
  ASSERT_TRUE(a1.status.ok());
  chatpb::Message* m = request.add_messages();
  m->set_role(chatpb::ROLE_ASSISTANT);
  m->set_content(a1.text);
  m = request.add_messages();
  m->set_role(chatpb::ROLE_USER);
  m->set_content(q2);
  StreamResult a2 = Generate(request);
  ASSERT_TRUE(a2.status.ok());
  EXPECT_EQ(r.out, a1.text + "\n" + a2.text + "\n");
}

TEST_F(WorkerTest, HttpProbesAndMetricsFollowRequests) {
  httplib::Result live = HttpGet(*worker_, "/live");
  ASSERT_TRUE(live) << httplib::to_string(live.error());
  EXPECT_EQ(live->status, 200);
  EXPECT_EQ(live->body, "ok\n");
  httplib::Result ready = HttpGet(*worker_, "/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(ready->body, "ready\n");
  EXPECT_EQ(HttpStatus(*worker_, "/nope"), 404);

  const std::string before = IdleMetrics();
  EXPECT_EQ(Sample(before, "shardserve_worker_kv_blocks_total"), 1024 / 16);
  EXPECT_EQ(Sample(before, "shardserve_worker_kv_blocks_used"), 0);
  StreamResult r = Generate(Greedy("Name three colors.", 6));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const chatpb::Usage& usage = r.final_chunk()->usage();
  chatpb::ChatRequest unknown = Greedy("hi", 4);
  unknown.set_model("no-such-model");
  EXPECT_EQ(Generate(unknown).status.error_code(), grpc::StatusCode::NOT_FOUND);
  const std::string after = IdleMetrics();

  auto delta = [&](const std::string& series) {
    return Sample(after, series) - Sample(before, series);
  };
  EXPECT_EQ(delta("shardserve_worker_requests_total{code=\"OK\"}"), 1);
  EXPECT_EQ(delta("shardserve_worker_requests_total{code=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(delta("shardserve_worker_prompt_tokens_total"), usage.prompt_tokens());
  EXPECT_EQ(delta("shardserve_worker_generation_tokens_total"), usage.completion_tokens());
  EXPECT_EQ(delta("shardserve_worker_time_to_first_token_seconds_count"), 1);
  EXPECT_EQ(delta("shardserve_worker_request_duration_seconds_count"), 1);
  EXPECT_EQ(delta("shardserve_worker_queue_duration_seconds_count"), 1);
  EXPECT_GT(delta("shardserve_worker_request_duration_seconds_sum"), 0);
  EXPECT_GE(delta("shardserve_worker_request_duration_seconds_sum"),
            delta("shardserve_worker_time_to_first_token_seconds_sum"));
  // One step prefills the prompt (and samples the first token); each further token is a decode
  // step. Nothing else ran meanwhile.
  EXPECT_EQ(delta("shardserve_worker_step_duration_seconds_count"), usage.completion_tokens());
  EXPECT_EQ(delta("shardserve_worker_step_tokens_total{phase=\"prefill\"}"), usage.prompt_tokens());
  EXPECT_EQ(delta("shardserve_worker_step_tokens_total{phase=\"decode\"}"),
            usage.completion_tokens() - 1);
  EXPECT_GT(delta("shardserve_worker_step_duration_seconds_sum"), 0);

  // Mid-stream the gauges show the sequence and its cache; cancelling counts CANCELLED.
  workerpb::Worker::Stub stub(worker_->channel);
  grpc::ClientContext context;
  workerpb::GenerateRequest g;
  *g.mutable_request() = Greedy("Write a long story about a dragon and a knight.", 200);
  auto reader = stub.Generate(&context, g);
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(reader->Read(&chunk));
  const std::string during = Metrics();
  EXPECT_EQ(Sample(during, "shardserve_worker_running_sequences"), 1);
  EXPECT_GT(Sample(during, "shardserve_worker_kv_blocks_used"), 0);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const std::string end = IdleMetrics();
  EXPECT_EQ(Sample(end, "shardserve_worker_requests_total{code=\"CANCELLED\"}") -
                Sample(after, "shardserve_worker_requests_total{code=\"CANCELLED\"}"),
            1);
  EXPECT_EQ(Sample(end, "shardserve_worker_kv_blocks_used"), 0);
}

// prometheus_client's own parser reads /metrics (tests/integration/parse_metrics.py also checks
// the content type, the shardserve_ prefix and every histogram's buckets).
TEST_F(WorkerTest, MetricsParseWithPrometheusClient) {
  ASSERT_TRUE(Generate(Greedy("Say yes.", 3)).status.ok());
  IdleMetrics();
  const char* source = std::getenv("SHARDSERVE_SOURCE_DIR");
  const std::string script =
      std::string(source != nullptr ? source : ".") + "/tests/integration/parse_metrics.py";
  testing::RunResult r = testing::RunProgram(
      {"/usr/bin/env", "python3", script, "http://" + worker_->http_address + "/metrics"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json families = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(families.is_object()) << r.out;
  // prometheus_client names a counter's family without "_total".
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"shardserve_worker_requests", "counter"},
      {"shardserve_worker_prompt_tokens", "counter"},
      {"shardserve_worker_generation_tokens", "counter"},
      {"shardserve_worker_step_tokens", "counter"},
      {"shardserve_worker_preemptions", "counter"},
      {"shardserve_worker_running_sequences", "gauge"},
      {"shardserve_worker_waiting_sequences", "gauge"},
      {"shardserve_worker_kv_blocks_used", "gauge"},
      {"shardserve_worker_kv_blocks_total", "gauge"},
      {"shardserve_worker_step_duration_seconds", "histogram"},
      {"shardserve_worker_time_to_first_token_seconds", "histogram"},
      {"shardserve_worker_request_duration_seconds", "histogram"},
      {"shardserve_worker_queue_duration_seconds", "histogram"}};
  for (const auto& [name, type] : expected) {
    ASSERT_TRUE(families.contains(name)) << name << " missing from " << r.out;
    EXPECT_EQ(families[name].value("type", ""), type) << name;
    EXPECT_FALSE(families[name]["samples"].empty()) << name;
  }
  EXPECT_EQ(families["shardserve_worker_kv_blocks_total"]["samples"][0]["value"], 64.0);
  bool ok_counted = false;
  for (const nlohmann::json& sample : families["shardserve_worker_requests"]["samples"]) {
    if (sample["name"] == "shardserve_worker_requests_total" &&
        sample["labels"].value("code", "") == "OK") {
      ok_counted = sample["value"].get<double>() >= 1;
    }
  }
  EXPECT_TRUE(ok_counted) << families["shardserve_worker_requests"].dump();
}

TEST_F(WorkerTest, StatusCliShowsTheWorker) {
  testing::RunResult r =
      testing::RunProgram({SHARDSERVE_CLI_PATH, "status", "--target", worker_->address});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("worker " + worker_->address));
  EXPECT_THAT(r.out, HasSubstr("WORKER_STATE_SERVING"));
  EXPECT_THAT(r.out, HasSubstr("model SmolLM2-135M-Instruct  context 256  quantization gguf:Q4_1"));
  EXPECT_THAT(r.out, ::testing::ContainsRegex("WORKER +UP +HEALTHY +RUNNING +WAITING +KV USED"));
  EXPECT_THAT(r.out,
              ::testing::ContainsRegex(worker_->address + " +up +yes +0 +0 +0/64 \\(0\\.0%\\)"));

  r = testing::RunProgram({SHARDSERVE_CLI_PATH, "status", "--json", "--target", worker_->address});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << r.out;
  EXPECT_EQ(j["healthy"], true);
  EXPECT_EQ(j["worker"]["model"]["id"], kModelName);
  EXPECT_EQ(j["worker"]["state"], "WORKER_STATE_SERVING");
  EXPECT_EQ(j["worker"]["kv_blocks_total"], "64");  // proto3 JSON writes 64-bit ints as strings

  const std::string closed = "127.0.0.1:" + std::to_string(ClosedPort());
  r = testing::RunProgram({SHARDSERVE_CLI_PATH, "status", "--timeout", "5", "--target", closed});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("shardserve status: ClusterStatus on " + closed + ": UNAVAILABLE"));
  EXPECT_EQ(r.out, "");
}

TEST(WorkerProcessTest, FullQueueIsResourceExhausted) {
  Worker worker;
  StartWorker({"--max-waiting", "0"}, "queue", &worker);
  ASSERT_NE(worker.channel, nullptr);
  workerpb::Worker::Stub stub(worker.channel);
  grpc::ClientContext context;
  context.set_deadline(In(30s));
  workerpb::GenerateRequest g;
  *g.mutable_request() = Greedy("hi", 4);
  StreamResult r = Collect(stub.Generate(&context, g).get());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(r.status.error_message(), HasSubstr("queue is full"));
  worker.process->Signal(SIGINT);
  EXPECT_EQ(worker.process->Wait(30s), std::optional<int>(0));
}

TEST(WorkerProcessTest, SigtermDrainsRunningStreamsAndExitsZero) {
  Worker worker;
  StartWorker({}, "drain", &worker);
  ASSERT_NE(worker.channel, nullptr);
  workerpb::Worker::Stub stub(worker.channel);
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  workerpb::GenerateRequest g;
  *g.mutable_request() = Greedy("Write a long story about a dragon and a knight.", 200);
  auto reader = stub.Generate(&context, g);
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(worker.process->Signal(SIGTERM));
  // The stream ends (cancelled after --drain-seconds 0.5) before it could produce 200 tokens.
  StreamResult rest = Collect(reader.get());
  EXPECT_FALSE(rest.status.ok());
  EXPECT_THAT(rest.status.error_code(),
              ::testing::AnyOf(grpc::StatusCode::CANCELLED, grpc::StatusCode::UNAVAILABLE));
  EXPECT_EQ(worker.process->Wait(30s), std::optional<int>(0));
}

// /ready turns 503 as soon as draining starts (Kubernetes stops routing), while /live and
// /metrics stay up until the running stream ends.
TEST(WorkerProcessTest, ReadyIsUnavailableWhileDraining) {
  Worker worker;
  StartWorker({"--drain-seconds", "60"}, "ready", &worker);
  ASSERT_NE(worker.channel, nullptr);
  workerpb::Worker::Stub stub(worker.channel);
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  workerpb::GenerateRequest g;
  *g.mutable_request() = Greedy("Write a long story about a dragon and a knight.", 200);
  auto reader = stub.Generate(&context, g);
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(worker.process->Signal(SIGTERM));
  // The stream keeps the worker draining (up to 60 s) until it is cancelled below.
  int ready_status = 200;
  std::string ready_body;
  while (ready_status == 200) {
    httplib::Result ready = HttpGet(worker, "/ready");
    ASSERT_TRUE(ready) << httplib::to_string(ready.error());
    ready_status = ready->status;
    ready_body = ready->body;
  }
  EXPECT_EQ(ready_status, 503);
  EXPECT_EQ(ready_body, "not ready: shutting down\n");
  httplib::Result live = HttpGet(worker, "/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
  EXPECT_EQ(HttpStatus(worker, "/metrics"), 200);
  context.TryCancel();
  Collect(reader.get());
  EXPECT_EQ(worker.process->Wait(30s), std::optional<int>(0));
}

TEST(WorkerProcessTest, BadConfigFailsAtStartNamingFileKeyAndReason) {
  const std::string path = ::testing::TempDir() + "worker_test_bad.yaml";
  {
    std::ofstream f(path);
    f << "model: " << kModelPath << "\nkv_dtype: q4\n";
  }
  testing::RunResult r = testing::RunProgram({SHARDSERVE_WORKER_PATH, "--config", path});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(path + ":2: key 'kv_dtype': 'q4' is not f16 or f32"));

  r = testing::RunProgram({SHARDSERVE_WORKER_PATH, "--model", kModelPath, "--threads", "many"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("flag --threads: key 'threads': 'many' is not an integer"));

  r = testing::RunProgram({SHARDSERVE_WORKER_PATH, "--model", "/nonexistent.gguf", "--address",
                           "127.0.0.1:0", "--http-address", "127.0.0.1:0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent.gguf"));

  r = testing::RunProgram({SHARDSERVE_WORKER_PATH, "--model", kModelPath, "--http-address", "x"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("flag --http-address: key 'http_address': 'x' is not host:port"));
}

// An HTTP port already taken fails the start (exit 1, the reason logged, nothing on stdout: both
// ports are bound before the first line), and "" serves no HTTP and prints no HTTP line.
TEST(WorkerProcessTest, HttpAddressInUseFailsAndEmptyDisablesHttp) {
  Worker first;
  StartWorker({}, "http_first", &first);
  ASSERT_NE(first.channel, nullptr);
  testing::RunResult r =
      testing::RunProgram({SHARDSERVE_WORKER_PATH, "--model", kModelPath, "--address",
                           "127.0.0.1:0", "--http-address", first.http_address});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err, HasSubstr("http_address: HTTP: cannot bind " + first.http_address));
  first.process->Signal(SIGTERM);
  EXPECT_EQ(first.process->Wait(30s), std::optional<int>(0));

  std::string error;
  std::unique_ptr<Process> plain =
      Process::Start({SHARDSERVE_WORKER_PATH, "--model", kModelPath, "--address", "127.0.0.1:0",
                      "--http-address", "", "--threads", "1", "--context-length", "256"},
                     ::testing::TempDir() + "worker_test_no_http.log", &error);
  ASSERT_NE(plain, nullptr) << error;
  std::optional<std::string> line = plain->ReadLine(60s);
  ASSERT_TRUE(line.has_value());
  EXPECT_THAT(*line, ::testing::StartsWith("listening on 127.0.0.1:"));
  EXPECT_EQ(plain->ReadLine(60s), std::optional<std::string>("serving " + std::string(kModelName)));
  plain->Signal(SIGTERM);
  EXPECT_EQ(plain->ReadLine(30s), std::nullopt);  // stdout closes: nothing else was printed
  EXPECT_EQ(plain->Wait(30s), std::optional<int>(0));
}

}  // namespace
}  // namespace shardserve
