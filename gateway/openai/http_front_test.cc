// The OpenAI front end to end in one process: HttpServer + RegisterOpenAiRoutes over a real
// Dispatcher, WorkerPool and Admission, with a FakeWorker behind them, spoken to with
// cpp-httplib's client on loopback.
#include "gateway/openai/http_front.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/json.h"
#include "common/metrics.h"
#include "gateway/admission.h"
#include "gateway/dispatcher.h"
#include "gateway/gateway_config.h"
#include "gateway/testing/fake_worker.h"
#include "gateway/worker_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace shardserve {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kModel[] = "fake-model";
constexpr char kReply[] = "Hello from the fake worker .";
constexpr char kKey[] = "sk-test-key";

// Polls `condition` until it holds; false after 60 s (the test then fails on what it waited
// for, not on a time).
template <typename F>
bool WaitFor(F condition) {
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (!condition()) {
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return true;
}

struct FrontSetup {
  bool with_key = false;
  std::map<std::string, TenantQuota> tenants;
  OpenAiFrontOptions options;
  testing::FakeWorkerOptions worker;
};

class HttpFrontTest : public ::testing::Test {
 protected:
  void Start(FrontSetup setup = {}) {
    setup.worker.model = kModel;
    worker_ = testing::FakeWorker::Start(setup.worker);
    ASSERT_NE(worker_, nullptr);

    GatewayConfig config;
    ModelRoute route;
    route.name = kModel;
    route.endpoints = {worker_->address()};
    config.models = {route};
    if (setup.with_key) config.api_keys = {ApiKeyEntry{Sha256Hex(kKey), "team-a"}};
    config.tenants = setup.tenants;

    WorkerPoolOptions pool_options;
    pool_options.health_interval = absl::Milliseconds(50);
    pool_options.status_interval = absl::Milliseconds(50);
    absl::StatusOr<std::unique_ptr<WorkerPool>> pool =
        WorkerPool::Create(config.models, pool_options, &metrics_);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
    pool_->Start();
    absl::StatusOr<std::unique_ptr<Admission>> admission =
        Admission::Create(config.api_keys, config.tenants, absl::Now());
    ASSERT_TRUE(admission.ok()) << admission.status();
    admission_ = *std::move(admission);
    dispatcher_ = std::make_unique<Dispatcher>(config, pool_.get(), admission_.get(), &metrics_);

    http_ = std::make_unique<HttpServer>();
    RegisterOpenAiRoutes(http_.get(), dispatcher_.get(), setup.options);
    ASSERT_TRUE(http_->Start("127.0.0.1:0").ok());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", http_->port());
    client_->set_read_timeout(60, 0);
    ASSERT_TRUE(WaitFor([&] { return pool_->Ready().ok(); })) << pool_->Ready();
  }

  void TearDown() override {
    client_.reset();
    if (http_ != nullptr) http_->Stop();
    http_.reset();
    dispatcher_.reset();
    if (pool_ != nullptr) pool_->Stop();
    pool_.reset();
    worker_.reset();
  }

  httplib::Result Post(const std::string& path, const std::string& body,
                       httplib::Headers headers = {}) {
    return client_->Post(path.c_str(), headers, body, "application/json");
  }

  static json Body(const httplib::Result& res) {
    absl::StatusOr<json> j = ParseJson(res->body, "response");
    EXPECT_TRUE(j.ok()) << j.status() << " in " << res->body;
    return j.ok() ? *j : json();
  }

  // Checks an OpenAI error response.
  static void ExpectError(const httplib::Result& res, int status, const std::string& type,
                          const std::string& message_part) {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    EXPECT_THAT(res->get_header_value("Content-Type"), HasSubstr("application/json"));
    json j = Body(res);
    ASSERT_TRUE(j.contains("error")) << res->body;
    EXPECT_EQ(j["error"]["type"], type) << res->body;
    EXPECT_THAT(j["error"]["message"].get<std::string>(), HasSubstr(message_part));
    EXPECT_TRUE(j["error"].contains("param"));
    EXPECT_TRUE(j["error"].contains("code"));
  }

  MetricsRegistry metrics_;
  std::unique_ptr<testing::FakeWorker> worker_;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<httplib::Client> client_;
};

std::string ChatBody(const json& extra = json::object()) {
  json body{{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "Say hello"}}}}};
  body.update(extra);
  return body.dump();
}

// A parsed SSE body: the JSON events in order, whether `data: [DONE]` ended it.
struct SseBody {
  std::vector<json> events;
  bool done = false;
};

SseBody ParseSse(const std::string& body) {
  SseBody out;
  EXPECT_TRUE(body.size() >= 2 && body.substr(body.size() - 2) == "\n\n") << body;
  for (absl::string_view block : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    if (absl::StartsWith(block, ":")) continue;  // a comment (keep-alive)
    EXPECT_FALSE(out.done) << "event after [DONE]: " << block;
    EXPECT_TRUE(absl::ConsumePrefix(&block, "data: ")) << block;
    if (block == "[DONE]") {
      out.done = true;
      continue;
    }
    absl::StatusOr<json> j = ParseJson(block, "event");
    EXPECT_TRUE(j.ok()) << j.status();
    if (j.ok()) out.events.push_back(*j);
  }
  return out;
}

// The content deltas of a chat stream, concatenated.
std::string StreamedText(const SseBody& sse, const char* field = "content") {
  std::string text;
  for (json e : sse.events) {
    if (!e.contains("choices")) continue;  // an error event
    for (json c : e["choices"]) {
      if (c.contains("delta") && c["delta"].contains(field)) {
        text += c["delta"][field].get<std::string>();
      }
      if (c.contains("text")) text += c["text"].get<std::string>();
    }
  }
  return text;
}

TEST_F(HttpFrontTest, ChatCompletion) {
  Start();
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"max_tokens", 50}}));
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_THAT(res->get_header_value("Content-Type"), HasSubstr("application/json"));
  const std::string request_id = res->get_header_value("x-request-id");
  EXPECT_FALSE(request_id.empty());
  json j = Body(res);
  EXPECT_EQ(j["id"], "chatcmpl-" + request_id);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], kModel);
  EXPECT_TRUE(j["created"].is_number_integer());
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], kReply);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_EQ(j["usage"]["total_tokens"], 13);

  const worker::v1::GenerateRequest seen = worker_->last_request();
  EXPECT_EQ(seen.request().max_tokens(), 50u);
  EXPECT_EQ(seen.request().messages(0).content(), "Say hello");
  EXPECT_EQ(seen.request_id(), request_id);
}

TEST_F(HttpFrontTest, ClientRequestIdIsUsedAndEchoed) {
  Start();
  httplib::Result res =
      Post("/v1/chat/completions", ChatBody(), {{"x-request-id", "client-chosen-17"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("x-request-id"), "client-chosen-17");
  EXPECT_EQ(Body(res)["id"], "chatcmpl-client-chosen-17");
  EXPECT_EQ(worker_->last_request().request_id(), "client-chosen-17");

  res = Post("/v1/chat/completions", ChatBody(), {{"x-request-id", std::string(200, 'x')}});
  ExpectError(res, 400, "invalid_request_error", "x-request-id: longer than 128");
}

TEST_F(HttpFrontTest, NOverTwoChoices) {
  Start();
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"n", 2}, {"seed", 5}}));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json j = Body(res);
  ASSERT_EQ(j["choices"].size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(j["choices"][i]["index"], i);
    EXPECT_EQ(j["choices"][i]["message"]["content"], kReply);
    EXPECT_EQ(j["choices"][i]["finish_reason"], "stop");
  }
}

TEST_F(HttpFrontTest, DefaultMaxTokensApplies) {
  FrontSetup setup;
  setup.options.default_max_tokens = 3;
  Start(setup);
  httplib::Result res = Post("/v1/chat/completions", ChatBody());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(worker_->last_request().request().max_tokens(), 3u);
  json j = Body(res);
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello from the");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
}

TEST_F(HttpFrontTest, StreamingChat) {
  Start();
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", true}}));
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_THAT(res->get_header_value("Content-Type"), HasSubstr("text/event-stream"));
  const std::string request_id = res->get_header_value("x-request-id");
  EXPECT_FALSE(request_id.empty());
  SseBody sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done);
  ASSERT_GE(sse.events.size(), 3u);
  EXPECT_EQ(sse.events.front()["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(StreamedText(sse), kReply);
  EXPECT_EQ(sse.events.back()["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(sse.events.back()["choices"][0]["delta"], json::object());
  for (json e : sse.events) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["id"], "chatcmpl-" + request_id);
    EXPECT_EQ(e["model"], kModel);
    EXPECT_FALSE(e.contains("usage"));
  }
}

TEST_F(HttpFrontTest, StreamsAreNeverCompressed) {
  Start();
  // A compressor would hold events back until it flushes; SSE must reach the client as written.
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", true}}),
                             {{"Accept-Encoding", "gzip, deflate, br"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_FALSE(res->has_header("Content-Encoding")) << res->get_header_value("Content-Encoding");
  EXPECT_TRUE(ParseSse(res->body).done);
}

TEST_F(HttpFrontTest, KeepAliveCommentsWhileWaiting) {
  FrontSetup setup;
  setup.options.keepalive_interval = absl::Milliseconds(1);
  setup.worker.reply = "slow reply";
  setup.worker.token_delay = absl::Milliseconds(500);  // longer than the stream's 200 ms tick
  Start(setup);
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", true}}));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_THAT(res->body, HasSubstr("\n\n: keep-alive\n\n"));
  SseBody sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done);
  EXPECT_EQ(StreamedText(sse), "slow reply");
}

TEST_F(HttpFrontTest, StreamingIncludeUsage) {
  Start();
  httplib::Result res =
      Post("/v1/chat/completions",
           ChatBody({{"stream", true}, {"stream_options", {{"include_usage", true}}}}));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  SseBody sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done);
  ASSERT_GE(sse.events.size(), 2u);
  json last = sse.events.back();
  EXPECT_EQ(last["choices"], json::array());
  EXPECT_EQ(last["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(last["usage"]["completion_tokens"], 6);
  EXPECT_EQ(last["usage"]["total_tokens"], 13);
  for (size_t i = 0; i + 1 < sse.events.size(); ++i) {
    EXPECT_TRUE(sse.events[i]["usage"].is_null());
  }
}

TEST_F(HttpFrontTest, Completions) {
  Start();
  httplib::Result res =
      Post("/v1/completions", json{{"model", kModel}, {"prompt", "Once upon"}}.dump());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json j = Body(res);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_THAT(j["id"].get<std::string>(), StartsWith("cmpl-"));
  EXPECT_EQ(j["choices"][0]["text"], kReply);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const worker::v1::GenerateRequest seen = worker_->last_request();
  EXPECT_EQ(seen.request().prompt(), "Once upon");
  EXPECT_EQ(seen.request().messages_size(), 0);

  res = Post("/v1/completions",
             json{{"model", kModel}, {"prompt", "Once upon"}, {"stream", true}}.dump());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  SseBody sse = ParseSse(res->body);
  EXPECT_TRUE(sse.done);
  EXPECT_EQ(StreamedText(sse), kReply);
  for (json e : sse.events) EXPECT_EQ(e["object"], "text_completion");
  EXPECT_EQ(sse.events.back()["choices"][0]["finish_reason"], "stop");
}

TEST_F(HttpFrontTest, BadRequestsAre400NamingTheField) {
  Start();
  ExpectError(Post("/v1/chat/completions", "{\"model\": "), 400, "invalid_request_error",
              "invalid JSON");
  ExpectError(Post("/v1/chat/completions", "[]"), 400, "invalid_request_error",
              "expected a JSON object");
  ExpectError(Post("/v1/chat/completions", ChatBody({{"temperature", "warm"}})), 400,
              "invalid_request_error", "temperature: expected a number");
  ExpectError(Post("/v1/chat/completions", ChatBody({{"messages", json::array()}})), 400,
              "invalid_request_error", "messages: at least one message");
  ExpectError(Post("/v1/chat/completions", ChatBody({{"max_tokens", "ten"}})), 400,
              "invalid_request_error", "max_tokens");
  ExpectError(Post("/v1/completions", json{{"model", kModel}, {"prompt", {"a", "b"}}}.dump()), 400,
              "invalid_request_error", "only one prompt");
  // Checked by the dispatcher with the worker's rules; the param is still the field.
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"n", 100}}));
  ExpectError(res, 400, "invalid_request_error", "n: 100");
  EXPECT_EQ(Body(res)["error"]["param"], "n");
  res = Post("/v1/chat/completions", ChatBody({{"temperature", -1}}));
  ExpectError(res, 400, "invalid_request_error", "temperature");
  EXPECT_EQ(Body(res)["error"]["param"], "temperature");
  // Content-Type is not checked: the body is JSON.
  res = client_->Post("/v1/chat/completions", ChatBody(), "application/x-www-form-urlencoded");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(worker_->generate_calls(), 1);
}

TEST_F(HttpFrontTest, UnknownModelIs404) {
  Start();
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"model", "no-such-model"}}));
  ExpectError(res, 404, "invalid_request_error", "no-such-model");
  EXPECT_EQ(Body(res)["error"]["code"], "model_not_found");
  res = Post("/v1/chat/completions", ChatBody({{"model", "no-such-model"}, {"stream", true}}));
  ExpectError(res, 404, "invalid_request_error", "no-such-model");

  res = client_->Get("/v1/models/no-such-model");
  ExpectError(res, 404, "invalid_request_error", "no-such-model");
  EXPECT_EQ(Body(res)["error"]["code"], "model_not_found");
  EXPECT_EQ(worker_->generate_calls(), 0);
}

TEST_F(HttpFrontTest, Models) {
  Start();
  httplib::Result res = client_->Get("/v1/models");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json j = Body(res);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], kModel);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["owned_by"], "shardserve");

  res = client_->Get((std::string("/v1/models/") + kModel).c_str());
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(Body(res)["id"], kModel);
}

TEST_F(HttpFrontTest, UnknownPathIs404InOpenAiShape) {
  Start();
  ExpectError(client_->Get("/v1/embeddings"), 404, "invalid_request_error",
              "Invalid URL (GET /v1/embeddings)");
  ExpectError(Post("/v1/embeddings", "{}"), 404, "invalid_request_error", "POST /v1/embeddings");
}

TEST_F(HttpFrontTest, ApiKeys) {
  FrontSetup setup;
  setup.with_key = true;
  Start(setup);
  httplib::Result res = Post("/v1/chat/completions", ChatBody());
  ExpectError(res, 401, "invalid_request_error", "missing API key");
  EXPECT_EQ(Body(res)["error"]["code"], "invalid_api_key");
  res = Post("/v1/chat/completions", ChatBody(), {{"Authorization", "Bearer wrong"}});
  ExpectError(res, 401, "invalid_request_error", "invalid API key");
  ExpectError(client_->Get("/v1/models"), 401, "invalid_request_error", "missing API key");
  EXPECT_EQ(worker_->generate_calls(), 0);

  res =
      Post("/v1/chat/completions", ChatBody(), {{"Authorization", std::string("Bearer ") + kKey}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  res = Post("/v1/chat/completions", ChatBody(), {{"x-api-key", kKey}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  res = Post("/v1/chat/completions", ChatBody(), {{"api-key", kKey}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  res = client_->Get("/v1/models", {{"Authorization", std::string("bearer ") + kKey}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
}

TEST_F(HttpFrontTest, TenantRateLimitIs429WithRetryAfter) {
  FrontSetup setup;
  setup.tenants["default"] = TenantQuota{0.01, 1, 0};  // one request, then one per 100 s
  Start(setup);
  httplib::Result res = Post("/v1/chat/completions", ChatBody());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  for (bool stream : {false, true}) {
    res = Post("/v1/chat/completions", ChatBody({{"stream", stream}}));
    ExpectError(res, 429, "requests", "requests per second");
    EXPECT_EQ(Body(res)["error"]["code"], "rate_limit_exceeded");
    const std::string retry_after = res->get_header_value("Retry-After");
    ASSERT_FALSE(retry_after.empty());
    EXPECT_GE(std::stoi(retry_after), 2);  // whole seconds, rounded up
  }
  EXPECT_EQ(worker_->generate_calls(), 1);
}

TEST_F(HttpFrontTest, UnhealthyWorkerIs503WithRetryAfter) {
  Start();
  worker_->set_healthy(false);
  ASSERT_TRUE(WaitFor([&] { return !pool_->Ready().ok(); }));
  for (bool stream : {false, true}) {
    httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", stream}}));
    ExpectError(res, 503, "server_error", "");
    EXPECT_EQ(Body(res)["error"]["code"], "service_unavailable");
    const std::string retry_after = res->get_header_value("Retry-After");
    ASSERT_FALSE(retry_after.empty());
    EXPECT_GE(std::stoi(retry_after), 1);
  }
  EXPECT_EQ(worker_->generate_calls(), 0);
}

TEST_F(HttpFrontTest, WorkerErrorBeforeFirstChunkIsAPlainError) {
  Start();
  worker_->set_fail_before_first(absl::InvalidArgumentError("messages[0].content: too odd"));
  for (bool stream : {false, true}) {
    httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", stream}}));
    ExpectError(res, 400, "invalid_request_error", "too odd");
    EXPECT_EQ(Body(res)["error"]["param"], "messages[0].content");
    EXPECT_FALSE(res->get_header_value("x-request-id").empty());
  }
}

TEST_F(HttpFrontTest, ErrorAfterFirstChunkEndsTheStreamWithAnErrorEvent) {
  Start();
  worker_->set_fail_after(2, absl::UnavailableError("the worker fell over"));
  httplib::Result res = Post("/v1/chat/completions", ChatBody({{"stream", true}}));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  SseBody sse = ParseSse(res->body);
  EXPECT_FALSE(sse.done);
  ASSERT_FALSE(sse.events.empty());
  json last = sse.events.back();
  ASSERT_TRUE(last.contains("error")) << last;
  EXPECT_EQ(last["error"]["type"], "server_error");
  EXPECT_EQ(last["error"]["code"], "service_unavailable");
  EXPECT_EQ(StreamedText(sse), "Hello from");  // the two chunks that did arrive, once each

  // Not streaming: the same failure is an error response, not a partial answer.
  res = Post("/v1/chat/completions", ChatBody());
  ExpectError(res, 503, "server_error", "");
}

TEST_F(HttpFrontTest, ClientDisconnectCancelsTheWorkerStream) {
  FrontSetup setup;
  std::string reply;
  for (int i = 0; i < 500; ++i) reply += "word ";
  setup.worker.reply = reply;
  setup.worker.token_delay = absl::Milliseconds(20);
  Start(setup);

  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.body = ChatBody({{"stream", true}});
  req.set_header("Content-Type", "application/json");
  std::string received;
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    received.append(data, size);
    return received.find("word") == std::string::npos;  // hang up after the first token
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  client_->send(req, res, error);
  client_.reset();  // the connection is closed
  EXPECT_EQ(error, httplib::Error::Canceled);
  EXPECT_THAT(received, HasSubstr("word"));
  ASSERT_TRUE(WaitFor([&] { return worker_->cancelled() == 1; }))
      << "cancelled " << worker_->cancelled() << ", running " << worker_->running();
  EXPECT_TRUE(WaitFor([&] { return worker_->running() == 0; }));
}

TEST_F(HttpFrontTest, Cors) {
  FrontSetup setup;
  setup.options.cors_allowed_origins = {"https://app.example"};
  Start(setup);
  httplib::Headers preflight = {{"Origin", "https://app.example"},
                                {"Access-Control-Request-Method", "POST"},
                                {"Access-Control-Request-Headers", "authorization, content-type"}};
  httplib::Result res = client_->Options("/v1/chat/completions", preflight);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 204);
  EXPECT_EQ(res->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_THAT(res->get_header_value("Access-Control-Allow-Methods"), HasSubstr("POST"));
  EXPECT_EQ(res->get_header_value("Access-Control-Allow-Headers"), "authorization, content-type");

  res = client_->Options("/v1/chat/completions", {{"Origin", "https://evil.example"},
                                                  {"Access-Control-Request-Method", "POST"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 403);
  EXPECT_FALSE(res->has_header("Access-Control-Allow-Origin"));

  res = Post("/v1/chat/completions", ChatBody(), {{"Origin", "https://app.example"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Access-Control-Allow-Origin"), "https://app.example");
  EXPECT_THAT(res->get_header_value("Access-Control-Expose-Headers"), HasSubstr("x-request-id"));
  res = Post("/v1/chat/completions", ChatBody(), {{"Origin", "https://evil.example"}});
  ASSERT_TRUE(res);
  EXPECT_FALSE(res->has_header("Access-Control-Allow-Origin"));
}

TEST_F(HttpFrontTest, CorsWildcard) {
  FrontSetup setup;
  setup.options.cors_allowed_origins = {"*"};
  Start(setup);
  httplib::Result res = client_->Get("/v1/models", {{"Origin", "https://anything.example"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Access-Control-Allow-Origin"), "*");
}

}  // namespace
}  // namespace shardserve
