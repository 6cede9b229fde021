// The real `gateway` binary in front of two real `worker` processes on loopback (port 0), driven
// through gRPC (chat.v1, gateway.v1), HTTP (cpp-httplib), the `shardserve` CLI and two Python
// scripts (the official `openai` client, prometheus_client's parser):
//   GatewayTest     one cluster for the suite: streaming through the gateway, ListModels,
//                   ClusterStatus, the CLI, the OpenAI API, 400s, /metrics, probes, request ids,
//                   cancellation, overload (a second gateway with a queue bound of 2) and keys
//                   (a third gateway with an API key, sharing the workers).
//   GatewayKillTest its own two workers and gateway: SIGKILL one worker while streams run on both,
//                   then restart it on the same port.
// Runs with cwd = the repository root (ctest does that); needs
// models/SmolLM2-135M-Instruct.Q4_1.gguf.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gateway/admission.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "shardserve/chat/v1/chat.grpc.pb.h"
#include "shardserve/gateway/v1/gateway.grpc.pb.h"
#include "shardserve/worker/v1/worker.grpc.pb.h"
#include "tests/integration/chat_stream.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/test_util.h"
#include "worker/text/model_text.h"

namespace shardserve {
namespace {

using ::shardserve::testing::FindOnPath;
using ::shardserve::testing::ReadFile;
using ::shardserve::testing::Tail;

namespace chatpb = ::shardserve::chat::v1;
using testing::StreamResult;
namespace gatewaypb = ::shardserve::gateway::v1;
namespace workerpb = ::shardserve::worker::v1;
using ::shardserve::testing::Process;
using ::shardserve::testing::RunProgram;
using ::shardserve::testing::RunResult;
using ::testing::HasSubstr;
using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr char kModelPath[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr char kModel[] = "smol";  // --served-model-name of every worker here
constexpr int kContext = 512;
constexpr char kApiKey[] = "it-secret-key";
// A prompt that makes SmolLM2 talk for a long while (for streams that must still be running).
constexpr char kLongPrompt[] =
    "Write a very long and detailed story about a dragon, a knight and a village. Describe "
    "every character, every place and every event.";

std::chrono::system_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::system_clock::now() + d;
}

double MillisSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// VmRSS / VmHWM of a process in KiB (0 when unreadable).
int64_t ProcStatusKiB(pid_t pid, absl::string_view field) {
  std::istringstream in(ReadFile(absl::StrCat("/proc/", pid, "/status")));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, absl::StrCat(field, ":"))) {
      std::string value(absl::StripAsciiWhitespace(line.substr(field.size() + 1)));
      int64_t kib = 0;
      if (absl::SimpleAtoi(value.substr(0, value.find(' ')), &kib)) return kib;
    }
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// Processes.

struct WorkerProcess {
  std::unique_ptr<Process> process;
  std::string address;       // gRPC "127.0.0.1:PORT"
  std::string http_address;  // /metrics, /live, /ready; "" if the worker printed none
  std::string log_path;
  std::shared_ptr<grpc::Channel> channel;
};

// Starts a worker (1 thread, small context) on `address` and reads its stdout up to
// `serving NAME`, which it prints once health says SERVING. Fatal failures leave `channel` null.
void StartWorker(const std::string& name, const std::string& address, WorkerProcess* worker) {
  worker->log_path = ::testing::TempDir() + "gateway_test_worker_" + name + ".log";
  std::vector<std::string> argv = {SHARDSERVE_WORKER_PATH,
                                   "--model",
                                   kModelPath,
                                   "--served-model-name",
                                   kModel,
                                   "--address",
                                   address,
                                   "--http-address",
                                   "127.0.0.1:0",
                                   "--threads",
                                   "1",
                                   "--context-length",
                                   std::to_string(kContext),
                                   "--kv-cache-tokens",
                                   "4096",
                                   "--max-running",
                                   "8",
                                   "--drain-seconds",
                                   "0.5"};
  std::string error;
  worker->process = Process::Start(argv, worker->log_path, &error);
  ASSERT_NE(worker->process, nullptr) << error;
  // listening on HOST:PORT / http listening on HOST:PORT / serving NAME
  for (int i = 0; i < 4; ++i) {
    std::optional<std::string> line = worker->process->ReadLine(60s);
    ASSERT_TRUE(line.has_value()) << "worker " << name << " stopped printing; log:\n"
                                  << Tail(worker->log_path);
    if (absl::StartsWith(*line, "listening on ")) {
      worker->address = line->substr(std::string("listening on ").size());
    } else if (absl::StartsWith(*line, "http listening on ")) {
      worker->http_address = line->substr(std::string("http listening on ").size());
    } else if (*line == absl::StrCat("serving ", kModel)) {
      break;
    } else {
      FAIL() << "unexpected worker stdout line: " << *line;
    }
  }
  ASSERT_THAT(worker->address, ::testing::StartsWith("127.0.0.1:"));
  worker->channel = grpc::CreateChannel(worker->address, grpc::InsecureChannelCredentials());
}

struct GatewayProcess {
  std::unique_ptr<Process> process;
  std::string grpc_address;
  std::string http_address;
  std::string log_path;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<httplib::Client> http;
  std::string api_key;  // sent on gRPC calls when set
};

// Starts the gateway on port 0 (both servers), probing workers often so the test waits little,
// and reads its two stdout lines. Fatal failures leave `channel` null.
void StartGateway(const std::string& name, const std::vector<std::string>& extra_flags,
                  GatewayProcess* gateway) {
  gateway->log_path = ::testing::TempDir() + "gateway_test_gateway_" + name + ".log";
  std::vector<std::string> argv = {SHARDSERVE_GATEWAY_PATH,
                                   "--grpc-address",
                                   "127.0.0.1:0",
                                   "--http-address",
                                   "127.0.0.1:0",
                                   "--health-interval-seconds",
                                   "0.2",
                                   "--status-interval-seconds",
                                   "0.1",
                                   "--drain-seconds",
                                   "1"};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  std::string error;
  gateway->process = Process::Start(argv, gateway->log_path, &error);
  ASSERT_NE(gateway->process, nullptr) << error;
  std::optional<std::string> line = gateway->process->ReadLine(30s);
  ASSERT_TRUE(line.has_value()) << "no stdout from gateway " << name << "; log:\n"
                                << Tail(gateway->log_path);
  ASSERT_THAT(*line, ::testing::StartsWith("grpc listening on 127.0.0.1:"));
  gateway->grpc_address = line->substr(std::string("grpc listening on ").size());
  line = gateway->process->ReadLine(30s);
  ASSERT_TRUE(line.has_value()) << "no second stdout line; log:\n" << Tail(gateway->log_path);
  ASSERT_THAT(*line, ::testing::StartsWith("http listening on 127.0.0.1:"));
  gateway->http_address = line->substr(std::string("http listening on ").size());
  gateway->http = std::make_unique<httplib::Client>("http://" + gateway->http_address);
  gateway->http->set_read_timeout(120, 0);
  gateway->channel = grpc::CreateChannel(gateway->grpc_address, grpc::InsecureChannelCredentials());
}

void StopGateway(GatewayProcess* gateway) {
  if (gateway->process == nullptr) return;
  gateway->process->Signal(SIGTERM);
  EXPECT_EQ(gateway->process->Wait(30s), std::optional<int>(0))
      << "gateway did not exit cleanly on SIGTERM; log:\n"
      << Tail(gateway->log_path);
}

void StopWorker(WorkerProcess* worker) {
  if (worker->process == nullptr) return;
  worker->process->Signal(SIGTERM);
  EXPECT_EQ(worker->process->Wait(30s), std::optional<int>(0))
      << "worker did not exit cleanly on SIGTERM; log:\n"
      << Tail(worker->log_path);
}

std::string ModelFlag(const std::vector<const WorkerProcess*>& workers) {
  std::vector<std::string> addresses;
  for (const WorkerProcess* w : workers) addresses.push_back(w->address);
  return absl::StrCat(kModel, "=", absl::StrJoin(addresses, ","));
}

// ---------------------------------------------------------------------------------------------
// gRPC helpers.

gatewaypb::ClusterStatusResponse ClusterStatus(const GatewayProcess& gateway) {
  gatewaypb::Gateway::Stub stub(gateway.channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  if (!gateway.api_key.empty()) context.AddMetadata("authorization", "Bearer " + gateway.api_key);
  gatewaypb::ClusterStatusResponse response;
  grpc::Status status = stub.ClusterStatus(&context, gatewaypb::ClusterStatusRequest(), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return response;
}

const gatewaypb::WorkerInfo* FindWorker(const gatewaypb::ClusterStatusResponse& cluster,
                                        const std::string& address) {
  for (const gatewaypb::ModelStatus& model : cluster.models()) {
    for (const gatewaypb::WorkerInfo& worker : model.workers()) {
      if (worker.address() == address) return &worker;
    }
  }
  return nullptr;
}

// Polls ClusterStatus (no push API exists) until `done` holds or `limit` passes; returns how
// long it took, or nullopt at the limit.
std::optional<double> PollCluster(
    const GatewayProcess& gateway, std::chrono::milliseconds limit,
    const std::function<bool(const gatewaypb::ClusterStatusResponse&)>& done) {
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < limit) {
    if (done(ClusterStatus(gateway))) return MillisSince(start);
    std::this_thread::sleep_for(20ms);
  }
  return std::nullopt;
}

bool UpAndHealthy(const gatewaypb::ClusterStatusResponse& cluster, const std::string& address) {
  const gatewaypb::WorkerInfo* w = FindWorker(cluster, address);
  return w != nullptr && w->up() && w->healthy();
}

workerpb::StatusResponse WorkerStatus(const WorkerProcess& worker) {
  workerpb::Worker::Stub stub(worker.channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  workerpb::StatusResponse response;
  grpc::Status status = stub.Status(&context, workerpb::StatusRequest(), &response);
  EXPECT_TRUE(status.ok()) << worker.address << ": " << status.error_message();
  return response;
}

chatpb::ChatRequest Greedy(const std::string& prompt, int max_tokens) {
  return testing::GreedyRequest(kModel, prompt, max_tokens);
}

StreamResult Collect(grpc::ClientReaderInterface<chatpb::ChatChunk>* reader,
                     const std::function<void(const StreamResult&)>& on_chunk = nullptr) {
  return testing::CollectStream(reader, on_chunk);
}

StreamResult Chat(const std::shared_ptr<grpc::Channel>& channel,
                  const chatpb::ChatRequest& request) {
  chatpb::Chat::Stub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  auto reader = stub.Chat(&context, request);
  return Collect(reader.get());
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers.

json ErrorBody(const httplib::Result& result) {
  json body = json::parse(result->body, nullptr, /*allow_exceptions=*/false);
  return body.is_discarded() ? json() : body;
}

// A request that must come back 400 with OpenAI's error shape and a message naming `what`.
void ExpectBadRequest(httplib::Client* http, const std::string& path, const std::string& body,
                      const std::string& what) {
  SCOPED_TRACE(body);
  httplib::Result result = http->Post(path.c_str(), body, "application/json");
  ASSERT_TRUE(result) << httplib::to_string(result.error());
  EXPECT_EQ(result->status, 400) << result->body;
  json error = ErrorBody(result);
  ASSERT_TRUE(error.contains("error") && error["error"].is_object()) << result->body;
  ASSERT_TRUE(error["error"].contains("message") && error["error"]["message"].is_string())
      << result->body;
  EXPECT_THAT(absl::AsciiStrToLower(error["error"]["message"].get<std::string>()), HasSubstr(what));
  EXPECT_EQ(error["error"].value("type", ""), "invalid_request_error") << result->body;
  EXPECT_TRUE(error["error"].contains("param")) << result->body;
  EXPECT_TRUE(error["error"].contains("code")) << result->body;
  EXPECT_THAT(result->get_header_value("Content-Type"), HasSubstr("application/json"));
}

// ---------------------------------------------------------------------------------------------
// One cluster for the suite: workers w1, w2; gateway `main` over both; gateway `keyed` (API key
// required) over both.

class GatewayTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    w1_ = new WorkerProcess;
    w2_ = new WorkerProcess;
    main_ = new GatewayProcess;
    keyed_ = new GatewayProcess;
    StartWorker("w1", "127.0.0.1:0", w1_);
    if (w1_->channel == nullptr) return;
    StartWorker("w2", "127.0.0.1:0", w2_);
    if (w2_->channel == nullptr) return;
    StartGateway("main", {"--model", ModelFlag({w1_, w2_})}, main_);
    if (main_->channel == nullptr) return;
    StartGateway("keyed",
                 {"--model", ModelFlag({w1_, w2_}), "--api-key-sha256",
                  absl::StrCat(Sha256Hex(kApiKey), "=team-a")},
                 keyed_);
    if (keyed_->channel == nullptr) return;
    keyed_->api_key = kApiKey;
    for (GatewayProcess* g : {main_, keyed_}) {
      std::optional<double> ms = PollCluster(*g, 30s, [](const auto& cluster) {
        return UpAndHealthy(cluster, w1_->address) && UpAndHealthy(cluster, w2_->address);
      });
      if (!ms.has_value()) {
        ADD_FAILURE() << "the gateway never saw both workers healthy; log:\n" << Tail(g->log_path);
        return;
      }
    }
    ready_ = true;
  }

  static void TearDownTestSuite() {
    StopGateway(keyed_);
    StopGateway(main_);
    StopWorker(w1_);
    StopWorker(w2_);
    delete keyed_;
    delete main_;
    delete w2_;
    delete w1_;
  }

  void SetUp() override { ASSERT_TRUE(ready_) << "the cluster did not start"; }

  static std::string Cli() { return SHARDSERVE_CLI_PATH; }

  static WorkerProcess* w1_;
  static WorkerProcess* w2_;
  static GatewayProcess* main_;
  static GatewayProcess* keyed_;
  static bool ready_;
};

WorkerProcess* GatewayTest::w1_ = nullptr;
WorkerProcess* GatewayTest::w2_ = nullptr;
GatewayProcess* GatewayTest::main_ = nullptr;
GatewayProcess* GatewayTest::keyed_ = nullptr;
bool GatewayTest::ready_ = false;

TEST_F(GatewayTest, ChatStreamsThroughTheGatewayAsFromTheWorker) {
  chatpb::ChatRequest request = Greedy("What is the capital of France?", 16);
  StreamResult via_gateway = Chat(main_->channel, request);
  StreamResult direct = Chat(w1_->channel, request);
  ASSERT_TRUE(via_gateway.status.ok()) << via_gateway.status.error_message();
  ASSERT_TRUE(direct.status.ok()) << direct.status.error_message();
  ASSERT_FALSE(via_gateway.chunks.empty());
  EXPECT_GT(via_gateway.chunks.size(), 1u) << "the reply must stream in several chunks";
  EXPECT_FALSE(via_gateway.chunks.front().request_id().empty());
  EXPECT_EQ(via_gateway.chunks.front().model(), kModel);
  // Greedy: the gateway relays exactly what the worker generates.
  EXPECT_EQ(via_gateway.ids, direct.ids);
  EXPECT_EQ(via_gateway.text, direct.text);
  const chatpb::ChatChunk& last = via_gateway.chunks.back();
  EXPECT_THAT(last.finish_reason(),
              ::testing::AnyOf(chatpb::FINISH_REASON_STOP, chatpb::FINISH_REASON_LENGTH));
  ASSERT_TRUE(last.has_usage());
  EXPECT_GT(last.usage().prompt_tokens(), 0u);
  EXPECT_EQ(last.usage().completion_tokens(), via_gateway.ids.size());
  for (size_t i = 0; i + 1 < via_gateway.chunks.size(); ++i) {
    EXPECT_EQ(via_gateway.chunks[i].finish_reason(), chatpb::FINISH_REASON_UNSPECIFIED) << i;
  }
}

TEST_F(GatewayTest, ChatIsValidatedAtTheEdge) {
  chatpb::ChatRequest empty = Greedy("hi", 4);
  empty.clear_messages();
  StreamResult r = Chat(main_->channel, empty);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("messages"));
  EXPECT_TRUE(r.chunks.empty());

  chatpb::ChatRequest unknown = Greedy("hi", 4);
  unknown.set_model("no-such-model");
  r = Chat(main_->channel, unknown);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::NOT_FOUND) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("no-such-model"));
  EXPECT_TRUE(r.chunks.empty());
}

TEST_F(GatewayTest, KeyedGatewayWantsTheKeyOnGrpc) {
  chatpb::Chat::Stub stub(keyed_->channel);
  for (const std::string& key : {std::string(), std::string("wrong-key")}) {
    grpc::ClientContext context;
    context.set_deadline(In(60s));
    if (!key.empty()) context.AddMetadata("authorization", "Bearer " + key);
    auto reader = stub.Chat(&context, Greedy("hi", 2));
    StreamResult r = Collect(reader.get());
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << "key '" << key << "': " << r.status.error_message();
    EXPECT_THAT(r.status.error_message(), HasSubstr("API key"));
    EXPECT_TRUE(r.chunks.empty());
  }
  grpc::ClientContext context;
  context.set_deadline(In(60s));
  context.AddMetadata("authorization", absl::StrCat("Bearer ", kApiKey));
  auto reader = stub.Chat(&context, Greedy("hi", 2));
  StreamResult r = Collect(reader.get());
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
}

TEST_F(GatewayTest, ListModelsAndClusterStatusShowBothWorkers) {
  chatpb::Chat::Stub stub(main_->channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  chatpb::ListModelsResponse models;
  ASSERT_TRUE(stub.ListModels(&context, chatpb::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).id(), kModel);
  EXPECT_EQ(models.models(0).ready_replicas(), 2u);
  EXPECT_EQ(models.models(0).context_length(), static_cast<uint32_t>(kContext));
  EXPECT_EQ(models.models(0).quantization(), "gguf:Q4_1");

  gatewaypb::ClusterStatusResponse cluster = ClusterStatus(*main_);
  ASSERT_EQ(cluster.models_size(), 1);
  EXPECT_EQ(cluster.models(0).model().id(), kModel);
  EXPECT_EQ(cluster.models(0).discovery(), "static");
  ASSERT_EQ(cluster.models(0).workers_size(), 2);
  std::vector<std::string> sorted = {w1_->address, w2_->address};
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 2; ++i) {
    const gatewaypb::WorkerInfo& w = cluster.models(0).workers(i);
    EXPECT_EQ(w.address(), sorted[i]);
    EXPECT_TRUE(w.up() && w.healthy()) << w.address() << ": " << w.message();
    EXPECT_GT(w.kv_blocks_total(), 0u);
    EXPECT_LT(w.seconds_since_seen(), 5.0);
  }
  EXPECT_FALSE(cluster.version().empty());
}

TEST_F(GatewayTest, CliChatAndStatusWorkAgainstTheGateway) {
  const std::string prompt = "Name three colors.";
  RunResult via_gateway = RunProgram({Cli(), "chat", "--target", main_->grpc_address,
                                      "--max-tokens", "12", "--temperature", "0", prompt});
  ASSERT_EQ(via_gateway.exit_code, 0) << via_gateway.err;
  RunResult direct = RunProgram({Cli(), "chat", "--target", w2_->address, "--max-tokens", "12",
                                 "--temperature", "0", prompt});
  ASSERT_EQ(direct.exit_code, 0) << direct.err;
  EXPECT_FALSE(via_gateway.out.empty());
  EXPECT_EQ(via_gateway.out, direct.out);

  RunResult status = RunProgram({Cli(), "status", "--target", main_->grpc_address});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr(kModel));
  EXPECT_THAT(status.out, HasSubstr(w1_->address));
  EXPECT_THAT(status.out, HasSubstr(w2_->address));
  std::printf("shardserve status --target GATEWAY:\n%s", status.out.c_str());
}

TEST_F(GatewayTest, CliSendsTheApiKeyToAKeyedGateway) {
  RunResult refused = RunProgram({Cli(), "chat", "--target", keyed_->grpc_address, "--model",
                                  kModel, "--max-tokens", "4", "--temperature", "0", "hi"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_THAT(refused.err, HasSubstr("UNAUTHENTICATED"));
  RunResult chat = RunProgram({Cli(), "chat", "--target", keyed_->grpc_address, "--api-key",
                               kApiKey, "--max-tokens", "4", "--temperature", "0", "hi"});
  EXPECT_EQ(chat.exit_code, 0) << chat.err;
  EXPECT_FALSE(chat.out.empty());
  RunResult status =
      RunProgram({Cli(), "status", "--target", keyed_->grpc_address, "--api-key", kApiKey});
  EXPECT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr(kModel));
}

TEST_F(GatewayTest, OpenAiClientPassesEveryCase) {
  RunResult r = RunProgram(
      {FindOnPath("python3"), "tests/integration/openai_client_test.py", "--base-url",
       absl::StrCat("http://", main_->http_address, "/v1"), "--keyed-base-url",
       absl::StrCat("http://", keyed_->http_address, "/v1"), "--key", kApiKey, "--model", kModel});
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.exit_code, 0) << "stdout:\n" << r.out << "\nstderr:\n" << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok bad_key"));
}

TEST_F(GatewayTest, MalformedRequestsGet400WithOpenAiErrors) {
  httplib::Client* http = main_->http.get();
  const std::string chat = "/v1/chat/completions";
  ExpectBadRequest(http, chat, "{\"model\": \"smol\", \"messages\": [", "json");
  ExpectBadRequest(http, chat, "[1, 2]", "object");
  ExpectBadRequest(http, chat, "{\"model\": \"smol\", \"messages\": \"hi\"}", "messages");
  ExpectBadRequest(http, chat, "{\"model\": \"smol\", \"messages\": []}", "messages");
  ExpectBadRequest(http, chat,
                   "{\"model\": \"smol\", \"messages\": [{\"role\": \"user\", \"content\": "
                   "\"hi\"}], \"max_tokens\": \"x\"}",
                   "max_tokens");
  ExpectBadRequest(http, chat,
                   "{\"model\": \"smol\", \"messages\": [{\"role\": \"user\", \"content\": "
                   "\"hi\"}], \"temperature\": \"hot\"}",
                   "temperature");
  ExpectBadRequest(http, chat,
                   "{\"model\": \"smol\", \"messages\": [{\"role\": \"wizard\", \"content\": "
                   "\"hi\"}]}",
                   "role");
  ExpectBadRequest(http, chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}",
                   "model");
  ExpectBadRequest(http, "/v1/completions", "{\"model\": \"smol\", \"prompt\": 5}", "prompt");
}

TEST_F(GatewayTest, RawSseStreamEndsWithDone) {
  json body = {{"model", kModel},
               {"messages", {{{"role", "user"}, {"content", "Say hello."}}}},
               {"max_tokens", 8},
               {"temperature", 0},
               {"stream", true}};
  httplib::Result result =
      main_->http->Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(result) << httplib::to_string(result.error());
  ASSERT_EQ(result->status, 200) << result->body;
  EXPECT_THAT(result->get_header_value("Content-Type"), HasSubstr("text/event-stream"));
  std::vector<std::string> events;
  for (absl::string_view line : absl::StrSplit(result->body, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, ":")) continue;  // an SSE comment (keep-alive)
    ASSERT_TRUE(absl::StartsWith(line, "data: ")) << "not an SSE data line: " << line;
    events.emplace_back(line.substr(6));
  }
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json chunk = json::parse(events[i], nullptr, false);
    ASSERT_FALSE(chunk.is_discarded()) << events[i];
    EXPECT_EQ(chunk.value("object", ""), "chat.completion.chunk");
    ASSERT_TRUE(chunk["choices"].is_array() && !chunk["choices"].empty()) << events[i];
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content") && delta["content"].is_string()) {
      text += delta["content"].get<std::string>();
    }
  }
  EXPECT_FALSE(text.empty());
}

TEST_F(GatewayTest, MetricsParseAndMove) {
  ASSERT_FALSE(w1_->http_address.empty()) << "the worker printed no 'http listening on' line";
  RunResult r = RunProgram({FindOnPath("python3"), "tests/integration/metrics_check.py",
                            "--gateway", absl::StrCat("http://", main_->http_address), "--worker",
                            absl::StrCat("http://", w1_->http_address), "--worker",
                            absl::StrCat("http://", w2_->http_address), "--model", kModel});
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.exit_code, 0) << "stdout:\n" << r.out << "\nstderr:\n" << r.err;
}

TEST_F(GatewayTest, ProbesSayLiveAndReady) {
  for (const char* path : {"/live", "/ready"}) {
    httplib::Result result = main_->http->Get(path);
    ASSERT_TRUE(result) << path;
    EXPECT_EQ(result->status, 200) << path << ": " << result->body;
  }
  ASSERT_FALSE(w1_->http_address.empty()) << "the worker printed no 'http listening on' line";
  httplib::Client worker_http("http://" + w1_->http_address);
  for (const char* path : {"/live", "/ready"}) {
    httplib::Result result = worker_http.Get(path);
    ASSERT_TRUE(result) << path;
    EXPECT_EQ(result->status, 200) << "worker " << path << ": " << result->body;
  }
}

// A gateway whose only worker address refuses connections (a bound socket that never listens,
// so no other process can take the port): live, not ready, and requests get UNAVAILABLE / 503.
TEST_F(GatewayTest, GatewayWithoutAHealthyWorkerIsNotReady) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string dead = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));

  GatewayProcess lonely;
  StartGateway("lonely", {"--model", absl::StrCat(kModel, "=", dead)}, &lonely);
  ASSERT_NE(lonely.channel, nullptr);
  httplib::Result live = lonely.http->Get("/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
  httplib::Result ready = lonely.http->Get("/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_THAT(ready->body, HasSubstr(kModel));

  json body = {{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  httplib::Result chat = lonely.http->Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(chat);
  EXPECT_EQ(chat->status, 503) << chat->body;
  EXPECT_TRUE(ErrorBody(chat).contains("error")) << chat->body;

  StreamResult r = Chat(lonely.channel, Greedy("hi", 4));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr(kModel));
  gatewaypb::ClusterStatusResponse cluster = ClusterStatus(lonely);
  const gatewaypb::WorkerInfo* w = FindWorker(cluster, dead);
  ASSERT_NE(w, nullptr);
  EXPECT_FALSE(w->up() && w->healthy());
  StopGateway(&lonely);
  close(fd);
}

// The request id a caller sets is in the gateway's log line for the request and in the log of
// the worker that served it.
TEST_F(GatewayTest, RequestIdIsLoggedByGatewayAndWorker) {
  chatpb::ChatRequest request = Greedy("Say hi.", 4);
  request.set_request_id("gateway-test-rid-7781");
  StreamResult r = Chat(main_->channel, request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.chunks.front().request_id(), "gateway-test-rid-7781");
  // Log lines are written as requests end, possibly just after the last chunk: poll the files.
  const auto start = std::chrono::steady_clock::now();
  bool in_gateway = false, in_worker = false;
  while (!(in_gateway && in_worker) && std::chrono::steady_clock::now() - start < 5s) {
    in_gateway = absl::StrContains(ReadFile(main_->log_path), "gateway-test-rid-7781");
    in_worker = absl::StrContains(ReadFile(w1_->log_path), "gateway-test-rid-7781") ||
                absl::StrContains(ReadFile(w2_->log_path), "gateway-test-rid-7781");
    if (!(in_gateway && in_worker)) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(in_gateway) << Tail(main_->log_path);
  EXPECT_TRUE(in_worker);
  // The gateway's line is one JSON object.
  std::istringstream lines(ReadFile(main_->log_path));
  std::string line;
  bool parsed = false;
  while (std::getline(lines, line)) {
    if (!absl::StrContains(line, "gateway-test-rid-7781")) continue;
    json j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    EXPECT_EQ(j.value("request_id", ""), "gateway-test-rid-7781") << line;
    parsed = true;
  }
  EXPECT_TRUE(parsed);
}

// The bound: a client that cancels through the gateway frees the worker's sequence
// within one second (the worker's own Status, polled).
TEST_F(GatewayTest, CancelledStreamStopsOnTheWorkerWithinOneSecond) {
  chatpb::Chat::Stub stub(main_->channel);
  grpc::ClientContext context;
  context.set_deadline(In(120s));
  auto reader = stub.Chat(&context, Greedy(kLongPrompt, 400));
  chatpb::ChatChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  ASSERT_TRUE(reader->Read(&chunk));
  const uint32_t running =
      WorkerStatus(*w1_).running_sequences() + WorkerStatus(*w2_).running_sequences();
  EXPECT_EQ(running, 1u);
  context.TryCancel();
  const auto start = std::chrono::steady_clock::now();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  uint32_t still_running = running;
  while (still_running != 0 && std::chrono::steady_clock::now() - start < 1s) {
    still_running = WorkerStatus(*w1_).running_sequences() + WorkerStatus(*w2_).running_sequences();
  }
  std::printf("cancel through the gateway: the worker's running count is %u after %.1f ms\n",
              still_running, MillisSince(start));
  EXPECT_EQ(still_running, 0u);
}

// A gateway with a per-model queue bound of 2 (config file) under 40 simultaneous HTTP
// requests, twice: every answer is 200 or 429 (with Retry-After and an OpenAI error), some of
// each, the gateway stays live, and its memory stays bounded.
TEST_F(GatewayTest, OverloadGets429sAndMemoryStaysBounded) {
  const std::string config_path = ::testing::TempDir() + "gateway_test_overload.yaml";
  {
    std::ofstream config(config_path);
    config << "models:\n"
           << "  - name: " << kModel << "\n"
           << "    endpoints: [" << w1_->address << ", " << w2_->address << "]\n"
           << "    max_queued: 2\n"
           << "retry_after_seconds: 2\n";
  }
  GatewayProcess gateway;
  StartGateway("overload", {"--config", config_path}, &gateway);
  ASSERT_NE(gateway.channel, nullptr);
  ASSERT_TRUE(PollCluster(gateway, 30s, [](const auto& cluster) {
                return UpAndHealthy(cluster, w1_->address) && UpAndHealthy(cluster, w2_->address);
              }).has_value());
  const std::string body =
      json({{"model", kModel},
            {"messages", {{{"role", "user"}, {"content", "Count from one to ten."}}}},
            {"max_tokens", 8},
            {"temperature", 0}})
          .dump();
  // Warm the gateway's paths once, then take the baseline.
  httplib::Result warm = gateway.http->Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(warm);
  ASSERT_EQ(warm->status, 200) << warm->body;
  const int64_t baseline_kib = ProcStatusKiB(gateway.process->pid(), "VmRSS");
  ASSERT_GT(baseline_kib, 0);

  constexpr int kClients = 40;
  for (int wave = 0; wave < 2; ++wave) {
    std::vector<int> codes(kClients, 0);
    std::vector<std::string> bodies(kClients), retry_after(kClients);
    std::atomic<int> arrived{0};
    std::vector<std::thread> clients;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kClients; ++i) {
      clients.emplace_back([&, i] {
        httplib::Client http("http://" + gateway.http_address);
        http.set_read_timeout(120, 0);
        ++arrived;
        while (arrived.load() < kClients) std::this_thread::yield();  // start together
        httplib::Result r = http.Post("/v1/chat/completions", body, "application/json");
        if (!r) {
          bodies[i] = httplib::to_string(r.error());
          return;
        }
        codes[i] = r->status;
        bodies[i] = r->body;
        retry_after[i] = r->get_header_value("Retry-After");
      });
    }
    for (std::thread& t : clients) t.join();
    const double ms = MillisSince(start);
    int ok = 0, rejected = 0;
    for (int i = 0; i < kClients; ++i) {
      if (codes[i] == 200) {
        ++ok;
      } else if (codes[i] == 429) {
        ++rejected;
        EXPECT_EQ(retry_after[i], "2") << "429 without the configured Retry-After";
        json error = json::parse(bodies[i], nullptr, false);
        ASSERT_FALSE(error.is_discarded()) << bodies[i];
        EXPECT_TRUE(error["error"]["message"].is_string()) << bodies[i];
      } else {
        ADD_FAILURE() << "client " << i << ": status " << codes[i] << " " << bodies[i];
      }
    }
    std::printf("overload wave %d: %d x 200, %d x 429 in %.0f ms; gateway VmRSS %lld KiB\n", wave,
                ok, rejected, ms,
                static_cast<long long>(ProcStatusKiB(gateway.process->pid(), "VmRSS")));
    EXPECT_GE(ok, 1);
    EXPECT_GE(rejected, 1);
  }
  httplib::Result live = gateway.http->Get("/live");
  ASSERT_TRUE(live) << "the gateway stopped answering";
  EXPECT_EQ(live->status, 200);
  httplib::Result after = gateway.http->Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200) << after->body;

  // Peak resident memory over both waves. The bound: 40 requests in flight hold a few KiB each
  // (JSON body, protos, 8 tokens), and the HTTP threads exist from the start (in the baseline);
  // 64 MiB above the idle gateway is far more than bounded per-request state can take, while a
  // gateway that buffered without bound would not stay under it long (and the absolute cap
  // keeps the whole process small, as it holds no model).
  const int64_t peak_kib = ProcStatusKiB(gateway.process->pid(), "VmHWM");
  std::printf("gateway memory: baseline VmRSS %lld KiB, peak VmHWM %lld KiB\n",
              static_cast<long long>(baseline_kib), static_cast<long long>(peak_kib));
  EXPECT_LT(peak_kib, baseline_kib + 64 * 1024);
  EXPECT_LT(peak_kib, 256 * 1024);
  StopGateway(&gateway);
}

// ---------------------------------------------------------------------------------------------
// A worker killed mid-stream, then restarted on the same port.

class GatewayKillTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    a_ = new WorkerProcess;
    b_ = new WorkerProcess;
    gateway_ = new GatewayProcess;
    StartWorker("kill_a", "127.0.0.1:0", a_);
    if (a_->channel == nullptr) return;
    StartWorker("kill_b", "127.0.0.1:0", b_);
    if (b_->channel == nullptr) return;
    StartGateway("kill", {"--model", ModelFlag({a_, b_})}, gateway_);
    if (gateway_->channel == nullptr) return;
    if (!PollCluster(*gateway_, 30s, [](const auto& cluster) {
           return UpAndHealthy(cluster, a_->address) && UpAndHealthy(cluster, b_->address);
         }).has_value()) {
      ADD_FAILURE() << "the gateway never saw both workers healthy";
      return;
    }
    absl::StatusOr<ModelText> text = LoadModelText(kModelPath);
    if (!text.ok()) {
      ADD_FAILURE() << text.status();
      return;
    }
    text_ = new ModelText(*std::move(text));
    ready_ = true;
  }
  static void TearDownTestSuite() {
    StopGateway(gateway_);
    StopWorker(a_);
    StopWorker(b_);
    delete gateway_;
    delete a_;
    delete b_;
    delete text_;
  }
  void SetUp() override { ASSERT_TRUE(ready_) << "the cluster did not start"; }

  static WorkerProcess* a_;
  static WorkerProcess* b_;
  static GatewayProcess* gateway_;
  static ModelText* text_;
  static bool ready_;
};

WorkerProcess* GatewayKillTest::a_ = nullptr;
WorkerProcess* GatewayKillTest::b_ = nullptr;
GatewayProcess* GatewayKillTest::gateway_ = nullptr;
ModelText* GatewayKillTest::text_ = nullptr;
bool GatewayKillTest::ready_ = false;

TEST_F(GatewayKillTest, KilledWorkerEndsItsStreamsAndComesBackAfterRestart) {
  // Four long streams at once; the gateway spreads them over both workers (single-message
  // conversations carry no prefix preference, so the least loaded worker wins).
  constexpr int kStreams = 4;
  absl::Mutex mu;
  std::vector<size_t> chunks_seen(kStreams, 0);
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < kStreams; ++i) contexts.push_back(std::make_unique<grpc::ClientContext>());
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      chatpb::Chat::Stub stub(gateway_->channel);
      contexts[i]->set_deadline(In(180s));
      chatpb::ChatRequest request =
          Greedy(absl::StrCat(kLongPrompt, " Story number ", i, "."), 200);
      auto reader = stub.Chat(contexts[i].get(), request);
      results[i] = Collect(reader.get(), [&](const StreamResult& so_far) {
        absl::MutexLock lock(&mu);
        chunks_seen[i] = so_far.chunks.size();
      });
      absl::MutexLock lock(&mu);
      chunks_seen[i] = SIZE_MAX;  // ended
    });
  }
  // On any early return: cancel what still runs and join, before the locals go.
  absl::Cleanup join_all = [&] {
    for (auto& context : contexts) context->TryCancel();
    for (std::thread& t : threads) {
      if (t.joinable()) t.join();
    }
  };
  // Every stream has a few tokens (or ended, which fails below).
  {
    absl::MutexLock lock(&mu);
    const bool all_going = mu.AwaitWithTimeout(absl::Condition(
                                                   +[](std::vector<size_t>* seen) {
                                                     for (size_t n : *seen) {
                                                       if (n < 3) return false;
                                                     }
                                                     return true;
                                                   },
                                                   &chunks_seen),
                                               absl::Seconds(120));
    ASSERT_TRUE(all_going) << "the streams did not start";
    for (size_t n : chunks_seen) ASSERT_NE(n, SIZE_MAX) << "a stream ended before the kill";
  }
  const uint32_t on_a = WorkerStatus(*a_).running_sequences();
  const uint32_t on_b = WorkerStatus(*b_).running_sequences();
  EXPECT_EQ(on_a + on_b, static_cast<uint32_t>(kStreams));
  ASSERT_GT(on_a, 0u) << "the streams were not spread over both workers";
  ASSERT_GT(on_b, 0u) << "the streams were not spread over both workers";

  const std::string killed = a_->address;
  ASSERT_TRUE(a_->process->Signal(SIGKILL));
  ASSERT_EQ(a_->process->Wait(10s), std::optional<int>(128 + SIGKILL));
  const auto killed_at = std::chrono::steady_clock::now();

  // The dead worker is marked down or unhealthy while the survivor's streams still run (a
  // failed stream reports it at once; the next health check would too).
  std::optional<double> down_ms = PollCluster(*gateway_, 10s, [&](const auto& cluster) {
    const gatewaypb::WorkerInfo* w = FindWorker(cluster, killed);
    return w != nullptr && !(w->up() && w->healthy());
  });
  ASSERT_TRUE(down_ms.has_value()) << "ClusterStatus still shows " << killed << " as fine";
  {
    gatewaypb::ClusterStatusResponse cluster = ClusterStatus(*gateway_);
    const gatewaypb::WorkerInfo* w = FindWorker(cluster, killed);
    ASSERT_NE(w, nullptr);
    std::printf(
        "killed worker shown down in ClusterStatus %.0f ms after the kill: up=%d "
        "healthy=%d '%s'\n",
        MillisSince(killed_at), w->up(), w->healthy(), w->message().c_str());
  }

  for (std::thread& t : threads) t.join();
  std::move(join_all).Cancel();

  int unavailable = 0, finished = 0;
  for (int i = 0; i < kStreams; ++i) {
    const StreamResult& r = results[i];
    SCOPED_TRACE(absl::StrCat("stream ", i, ": ", r.status.error_message()));
    // Nothing duplicated or dropped: the deltas are the text of the token ids, in order.
    EXPECT_EQ(r.text, text_->tokenizer->Decode(r.ids, /*skip_special_tokens=*/true));
    if (r.status.ok()) {
      ++finished;
      ASSERT_FALSE(r.chunks.empty());
      EXPECT_NE(r.chunks.back().finish_reason(), chatpb::FINISH_REASON_UNSPECIFIED);
      EXPECT_EQ(r.chunks.back().usage().completion_tokens(), r.ids.size());
    } else {
      ++unavailable;
      EXPECT_EQ(r.status.error_code(), grpc::StatusCode::UNAVAILABLE);
      // "worker W failed after N tokens: ...", N being exactly the tokens this client got.
      EXPECT_THAT(
          r.status.error_message(),
          HasSubstr(absl::StrCat("worker ", killed, " failed after ", r.ids.size(), " tokens")));
      EXPECT_GE(r.ids.size(), 3u);
      std::printf(
          "stream %d on the killed worker: %zu tokens, then %s: %s\n", i, r.ids.size(),
          absl::StatusCodeToString(static_cast<absl::StatusCode>(r.status.error_code())).c_str(),
          r.status.error_message().c_str());
    }
  }
  EXPECT_EQ(unavailable, static_cast<int>(on_a));
  EXPECT_EQ(finished, static_cast<int>(on_b));

  // Still ready (one healthy worker serves the model), with one replica.
  httplib::Result ready = gateway_->http->Get("/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
  {
    chatpb::Chat::Stub stub(gateway_->channel);
    grpc::ClientContext context;
    context.set_deadline(In(10s));
    chatpb::ListModelsResponse models;
    ASSERT_TRUE(stub.ListModels(&context, chatpb::ListModelsRequest(), &models).ok());
    ASSERT_EQ(models.models_size(), 1);
    EXPECT_EQ(models.models(0).ready_replicas(), 1u);
  }

  // New requests succeed, on the survivor.
  for (int i = 0; i < 3; ++i) {
    StreamResult r = Chat(gateway_->channel, Greedy(absl::StrCat("Say the number ", i, "."), 6));
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  }

  // Restart on the same port: the gateway sees it healthy again.
  const std::string port = killed.substr(killed.rfind(':') + 1);
  a_->process.reset();
  a_->channel.reset();
  StartWorker("kill_a_restarted", "127.0.0.1:" + port, a_);
  ASSERT_NE(a_->channel, nullptr);
  ASSERT_EQ(a_->address, killed);
  const auto restarted_at = std::chrono::steady_clock::now();
  std::optional<double> up_ms = PollCluster(
      *gateway_, 60s, [&](const auto& cluster) { return UpAndHealthy(cluster, killed); });
  ASSERT_TRUE(up_ms.has_value()) << "the restarted worker never became healthy in ClusterStatus";
  std::printf("restarted worker up and healthy in ClusterStatus after %.0f ms\n",
              MillisSince(restarted_at));
  chatpb::Chat::Stub stub(gateway_->channel);
  grpc::ClientContext context;
  context.set_deadline(In(10s));
  chatpb::ListModelsResponse models;
  ASSERT_TRUE(stub.ListModels(&context, chatpb::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).ready_replicas(), 2u);
}

}  // namespace
}  // namespace shardserve
