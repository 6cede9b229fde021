#include "gateway/openai/openai_api.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve::openai {
namespace {

namespace chatpb = ::shardserve::chat::v1;
using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Expects `body` to be refused as INVALID_ARGUMENT with `field` leading the message and `what`
// in it.
void ExpectChatError(const std::string& body, const std::string& field, const std::string& what) {
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(body);
  ASSERT_FALSE(r.ok()) << body;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
  EXPECT_THAT(r.status().message(), HasSubstr(field + ": ")) << body;
  EXPECT_THAT(r.status().message(), HasSubstr(what)) << body;
}

void ExpectCompletionError(const std::string& body, const std::string& field,
                           const std::string& what) {
  absl::StatusOr<ParsedRequest> r = ParseCompletionRequest(body);
  ASSERT_FALSE(r.ok()) << body;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << body;
  EXPECT_THAT(r.status().message(), HasSubstr(field + ": ")) << body;
  EXPECT_THAT(r.status().message(), HasSubstr(what)) << body;
}

// A chat body with `extra` merged in.
std::string Chat(const json& extra = json::object()) {
  json body{{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  body.update(extra);
  return body.dump();
}

TEST(ParseChatTest, MinimalRequestLeavesOptionalFieldsUnset) {
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(Chat());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.model(), "m");
  ASSERT_EQ(r->request.messages_size(), 1);
  EXPECT_EQ(r->request.messages(0).role(), chatpb::ROLE_USER);
  EXPECT_EQ(r->request.messages(0).content(), "hi");
  EXPECT_FALSE(r->stream);
  EXPECT_FALSE(r->include_usage);
  EXPECT_EQ(r->request.max_tokens(), 0u);
  EXPECT_EQ(r->request.n(), 0u);
  EXPECT_FALSE(r->request.sampling().has_temperature());
  EXPECT_FALSE(r->request.sampling().has_seed());
  EXPECT_FALSE(r->request.has_add_generation_prompt());
  EXPECT_TRUE(r->request.prompt().empty());
}

TEST(ParseChatTest, ReadsEveryField) {
  json extra{{"messages",
              {{{"role", "system"}, {"content", "be brief"}},
               {{"role", "developer"}, {"content", "dev"}},
               {{"role", "user"}, {"content", "hi"}, {"name", "bob"}},
               {{"role", "assistant"}, {"content", nullptr}},
               {{"role", "tool"}, {"content", "42"}}}},
             {"max_tokens", 17},
             {"n", 2},
             {"stop", {"a", "b"}},
             {"seed", 1234},
             {"temperature", 0.5},
             {"top_p", 0.9},
             {"presence_penalty", 0.25},
             {"frequency_penalty", -0.5},
             {"logprobs", true},
             {"top_logprobs", 3},
             {"user", "u-1"},
             {"stream", true},
             {"stream_options", {{"include_usage", true}}},
             {"top_k", 40},
             {"min_p", 0.05},
             {"repetition_penalty", 1.1},
             {"add_generation_prompt", false},
             {"some_future_field", {{"x", 1}}},
             {"tools", json::array()},
             {"logit_bias", json::object()},
             {"response_format", {{"type", "text"}}}};
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(Chat(extra));
  ASSERT_TRUE(r.ok()) << r.status();
  const chatpb::ChatRequest& q = r->request;
  ASSERT_EQ(q.messages_size(), 5);
  EXPECT_EQ(q.messages(0).role(), chatpb::ROLE_SYSTEM);
  EXPECT_EQ(q.messages(1).role(), chatpb::ROLE_SYSTEM);
  EXPECT_EQ(q.messages(1).content(), "dev");
  EXPECT_EQ(q.messages(2).name(), "bob");
  EXPECT_EQ(q.messages(3).role(), chatpb::ROLE_ASSISTANT);
  EXPECT_EQ(q.messages(3).content(), "");
  EXPECT_EQ(q.messages(4).role(), chatpb::ROLE_TOOL);
  EXPECT_EQ(q.max_tokens(), 17u);
  EXPECT_EQ(q.n(), 2u);
  EXPECT_THAT(q.stop(), ElementsAre("a", "b"));
  EXPECT_EQ(q.sampling().seed(), 1234u);
  EXPECT_FLOAT_EQ(q.sampling().temperature(), 0.5f);
  EXPECT_FLOAT_EQ(q.sampling().top_p(), 0.9f);
  EXPECT_FLOAT_EQ(q.sampling().presence_penalty(), 0.25f);
  EXPECT_FLOAT_EQ(q.sampling().frequency_penalty(), -0.5f);
  EXPECT_TRUE(q.logprobs());
  EXPECT_EQ(q.top_logprobs(), 3u);
  EXPECT_EQ(q.user(), "u-1");
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(q.sampling().top_k(), 40);
  EXPECT_FLOAT_EQ(q.sampling().min_p(), 0.05f);
  EXPECT_FLOAT_EQ(q.sampling().repetition_penalty(), 1.1f);
  ASSERT_TRUE(q.has_add_generation_prompt());
  EXPECT_FALSE(q.add_generation_prompt());
}

TEST(ParseChatTest, NullMeansAbsent) {
  json extra{{"max_tokens", nullptr}, {"temperature", nullptr}, {"stop", nullptr},
             {"seed", nullptr},       {"stream", nullptr},      {"stream_options", nullptr},
             {"user", nullptr},       {"logprobs", nullptr},    {"tools", nullptr}};
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(Chat(extra));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.max_tokens(), 0u);
  EXPECT_FALSE(r->request.sampling().has_temperature());
  EXPECT_EQ(r->request.stop_size(), 0);
  EXPECT_FALSE(r->stream);
}

TEST(ParseChatTest, MaxCompletionTokensWinsOverMaxTokens) {
  absl::StatusOr<ParsedRequest> r =
      ParseChatCompletionRequest(Chat({{"max_tokens", 5}, {"max_completion_tokens", 9}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.max_tokens(), 9u);
  r = ParseChatCompletionRequest(Chat({{"max_completion_tokens", 3}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.max_tokens(), 3u);
}

TEST(ParseChatTest, ContentPartsAreJoined) {
  json messages = {
      {{"role", "user"},
       {"content",
        {{{"type", "text"}, {"text", "first"}}, {{"type", "text"}, {"text", "second"}}}}}};
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(Chat({{"messages", messages}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.messages(0).content(), "first\nsecond");
}

TEST(ParseChatTest, RejectsNonTextPartsNamingTheField) {
  json messages = {{{"role", "user"}, {"content", "x"}},
                   {{"role", "user"},
                    {"content",
                     {{{"type", "text"}, {"text", "look"}},
                      {{"type", "image_url"}, {"image_url", {{"url", "http://x/y.png"}}}}}}}};
  ExpectChatError(Chat({{"messages", messages}}), "messages[1].content[1].type",
                  "'image_url' parts are not supported");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}}}}}}}}),
                  "messages[0].content[0].text", "required");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}, {"content", {"plain"}}}}}}),
                  "messages[0].content[0]", "expected a content part object, got a string");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}, {"content", {{{"text", "t"}}}}}}}}),
                  "messages[0].content[0].type", "required");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}, {"content", 5}}}}}), "messages[0].content",
                  "expected a string or an array of content parts");
}

TEST(ParseChatTest, RejectsBadMessages) {
  ExpectChatError(R"({"model": "m"})", "messages", "required");
  ExpectChatError(Chat({{"messages", json::array()}}), "messages",
                  "at least one message is required");
  ExpectChatError(Chat({{"messages", "hello"}}), "messages", "expected an array of messages");
  ExpectChatError(Chat({{"messages", {1}}}), "messages[0]", "expected a message object");
  ExpectChatError(Chat({{"messages", {{{"content", "x"}}}}}), "messages[0].role", "required");
  ExpectChatError(Chat({{"messages", {{{"role", "function"}, {"content", "x"}}}}}),
                  "messages[0].role", "'function' is not one of");
  ExpectChatError(Chat({{"messages", {{{"role", 1}, {"content", "x"}}}}}), "messages[0].role",
                  "expected a string, got an integer");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}}}}}), "messages[0].content", "required");
  ExpectChatError(Chat({{"messages", {{{"role", "user"}, {"content", "x"}, {"name", 3}}}}}),
                  "messages[0].name", "expected a string");
}

TEST(ParseChatTest, RejectsWrongTypesNamingTheField) {
  ExpectChatError(Chat({{"model", 7}}), "model", "expected a string, got an integer");
  ExpectChatError(Chat({{"model", ""}}), "model", "must not be empty");
  ExpectChatError(R"({"messages": [{"role": "user", "content": "x"}]})", "model", "required");
  ExpectChatError(Chat({{"temperature", "hot"}}), "temperature", "expected a number, got a string");
  ExpectChatError(Chat({{"temperature", 1e300}}), "temperature", "out of range");
  ExpectChatError(Chat({{"top_p", true}}), "top_p", "expected a number, got a boolean");
  ExpectChatError(Chat({{"max_tokens", "10"}}), "max_tokens", "expected an integer");
  ExpectChatError(Chat({{"max_tokens", 1.5}}), "max_tokens", "got a non-integer number");
  ExpectChatError(Chat({{"max_tokens", 0}}), "max_tokens", "out of range [1, 4294967295]");
  ExpectChatError(Chat({{"max_tokens", -3}}), "max_tokens", "out of range");
  ExpectChatError(Chat({{"max_tokens", 8589934592LL}}), "max_tokens", "out of range");
  ExpectChatError(Chat({{"max_completion_tokens", {1}}}), "max_completion_tokens",
                  "expected an integer, got an array");
  ExpectChatError(Chat({{"n", 0}}), "n", "out of range");
  ExpectChatError(Chat({{"stop", 5}}), "stop", "expected a string or an array of strings");
  ExpectChatError(Chat({{"stop", {"ok", 5}}}), "stop[1]", "expected a string");
  ExpectChatError(Chat({{"seed", "1"}}), "seed", "expected an integer");
  ExpectChatError(Chat({{"seed", 1.5}}), "seed", "expected a 64-bit integer");
  ExpectChatError(Chat({{"logprobs", 1}}), "logprobs", "expected a boolean");
  ExpectChatError(Chat({{"top_logprobs", -1}}), "top_logprobs", "out of range");
  ExpectChatError(Chat({{"top_k", -2}}), "top_k", "out of range");
  ExpectChatError(Chat({{"user", 12}}), "user", "expected a string");
  ExpectChatError(Chat({{"stream", "yes"}}), "stream", "expected a boolean");
  ExpectChatError(Chat({{"stream_options", true}}), "stream_options", "expected an object");
  ExpectChatError(Chat({{"stream_options", {{"include_usage", 1}}}}),
                  "stream_options.include_usage", "expected a boolean");
  ExpectChatError(Chat({{"add_generation_prompt", "no"}}), "add_generation_prompt",
                  "expected a boolean");
}

TEST(ParseChatTest, RejectsUnsupportedFeatures) {
  ExpectChatError(Chat({{"tools", {{{"type", "function"}}}}}), "tools", "not supported");
  ExpectChatError(Chat({{"functions", {{{"name", "f"}}}}}), "functions", "not supported");
  ExpectChatError(Chat({{"logit_bias", {{"50256", -100}}}}), "logit_bias", "not supported");
  ExpectChatError(Chat({{"response_format", {{"type", "json_object"}}}}), "response_format",
                  "only {\"type\": \"text\"}");
}

TEST(ParseChatTest, RejectsBodiesThatAreNotJsonObjects) {
  for (const std::string& body : {std::string("{"), std::string(""), std::string("nul")}) {
    absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(body);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("request body: invalid JSON"));
  }
  ExpectChatError("[1, 2]", "request body", "expected a JSON object, got an array");
  ExpectChatError("\"text\"", "request body", "expected a JSON object, got a string");
}

TEST(ParseChatTest, IntegersAcceptIntegralFloatsAndSeedsWrap) {
  absl::StatusOr<ParsedRequest> r =
      ParseChatCompletionRequest(Chat({{"max_tokens", 8.0}, {"seed", -1}, {"top_k", -1}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.max_tokens(), 8u);
  EXPECT_EQ(r->request.sampling().seed(), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r->request.sampling().top_k(), 0);  // -1: off, as vLLM
  r = ParseChatCompletionRequest(Chat({{"seed", 18446744073709551615ULL}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.sampling().seed(), std::numeric_limits<uint64_t>::max());
}

TEST(ParseChatTest, StopAsOneString) {
  absl::StatusOr<ParsedRequest> r = ParseChatCompletionRequest(Chat({{"stop", "\n\n"}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->request.stop(), ElementsAre("\n\n"));
}

// --- /v1/completions ---

std::string Completion(const json& extra = json::object()) {
  json body{{"model", "m"}, {"prompt", "Once upon a time"}};
  body.update(extra);
  return body.dump();
}

TEST(ParseCompletionTest, PromptStringOrOneElementArray) {
  absl::StatusOr<ParsedRequest> r = ParseCompletionRequest(Completion());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.prompt(), "Once upon a time");
  EXPECT_EQ(r->request.messages_size(), 0);
  r = ParseCompletionRequest(Completion({{"prompt", {"only"}}, {"max_tokens", 4}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.prompt(), "only");
  EXPECT_EQ(r->request.max_tokens(), 4u);
}

TEST(ParseCompletionTest, RejectsOtherPromptShapes) {
  ExpectCompletionError(Completion({{"prompt", {"a", "b"}}}), "prompt",
                        "only one prompt per request");
  ExpectCompletionError(Completion({{"prompt", {1, 2, 3}}}), "prompt",
                        "token-id prompts are not supported");
  ExpectCompletionError(Completion({{"prompt", {{1, 2}}}}), "prompt", "token-id");
  ExpectCompletionError(Completion({{"prompt", json::array()}}), "prompt", "empty array");
  ExpectCompletionError(Completion({{"prompt", ""}}), "prompt", "must not be empty");
  ExpectCompletionError(Completion({{"prompt", 5}}), "prompt", "expected a string");
  ExpectCompletionError(R"({"model": "m"})", "prompt", "required");
}

TEST(ParseCompletionTest, LegacyLogprobsIsACount) {
  absl::StatusOr<ParsedRequest> r = ParseCompletionRequest(Completion({{"logprobs", 2}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->request.logprobs());
  EXPECT_EQ(r->request.top_logprobs(), 2u);
  r = ParseCompletionRequest(Completion({{"logprobs", 0}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->request.logprobs());
  EXPECT_EQ(r->request.top_logprobs(), 0u);
  r = ParseCompletionRequest(Completion({{"logprobs", nullptr}}));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->request.logprobs());
  ExpectCompletionError(Completion({{"logprobs", true}}), "logprobs", "expected an integer");
  ExpectCompletionError(Completion({{"logprobs", -1}}), "logprobs", "out of range");
}

TEST(ParseCompletionTest, RejectsUnsupportedFeatures) {
  ExpectCompletionError(Completion({{"echo", true}}), "echo", "not supported");
  ExpectCompletionError(Completion({{"suffix", "end"}}), "suffix", "not supported");
  ExpectCompletionError(Completion({{"best_of", 3}}), "best_of", "above 1");
  EXPECT_TRUE(ParseCompletionRequest(Completion({{"echo", false}, {"best_of", 1}})).ok());
}

// --- errors ---

TEST(ErrorTest, MapsCodesToOpenAiErrors) {
  struct Case {
    absl::Status status;
    int http;
    std::string type;
    std::string param;
    std::string code;
  };
  const std::vector<Case> cases = {
      {absl::InvalidArgumentError("messages[0].role: unspecified"), 400, "invalid_request_error",
       "messages[0].role", ""},
      {absl::InvalidArgumentError("sampling.temperature: -1 is out of range"), 400,
       "invalid_request_error", "temperature", ""},
      {absl::InvalidArgumentError("request body: invalid JSON: x"), 400, "invalid_request_error",
       "", ""},
      {absl::NotFoundError("model 'x' is not served"), 404, "invalid_request_error", "model",
       "model_not_found"},
      {absl::UnauthenticatedError("invalid API key"), 401, "invalid_request_error", "",
       "invalid_api_key"},
      {absl::PermissionDeniedError("no"), 403, "invalid_request_error", "", "permission_denied"},
      {absl::ResourceExhaustedError("tenant 't' is over its 5 requests per second"), 429,
       "requests", "", "rate_limit_exceeded"},
      {absl::ResourceExhaustedError("tenant 't' is over its 100 tokens per minute"), 429, "tokens",
       "", "rate_limit_exceeded"},
      {absl::ResourceExhaustedError(
           "prompt (3000 tokens) + max_tokens (10) exceeds the context length of 2048 tokens"),
       400, "invalid_request_error", "messages", "context_length_exceeded"},
      {absl::UnavailableError("no healthy worker"), 503, "server_error", "", "service_unavailable"},
      {absl::DeadlineExceededError("deadline"), 504, "server_error", "", "timeout"},
      {absl::CancelledError("cancelled"), 499, "invalid_request_error", "", "cancelled"},
      {absl::InternalError("boom"), 500, "server_error", "", ""},
      {absl::DataLossError("boom"), 500, "server_error", "", ""},
  };
  for (const Case& c : cases) {
    OpenAiError e = ErrorFromStatus(c.status);
    EXPECT_EQ(e.http_status, c.http) << c.status;
    EXPECT_EQ(e.type, c.type) << c.status;
    EXPECT_EQ(e.param, c.param) << c.status;
    EXPECT_EQ(e.code, c.code) << c.status;
    EXPECT_EQ(e.message, c.status.message());
  }
}

TEST(ErrorTest, JsonShape) {
  OpenAiError e = ErrorFromStatus(absl::NotFoundError("The model 'x' does not exist"));
  json j = ErrorJson(e);
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j.size(), 1u);
  EXPECT_EQ(j["error"]["message"], "The model 'x' does not exist");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "model");
  EXPECT_EQ(j["error"]["code"], "model_not_found");
  j = ErrorJson(ErrorFromStatus(absl::InternalError("x")));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_EQ(j["error"].size(), 4u);
}

TEST(ErrorTest, RetryAfterRoundsUpToWholeSeconds) {
  EXPECT_EQ(RetryAfterSeconds(absl::ZeroDuration()), 1);
  EXPECT_EQ(RetryAfterSeconds(absl::Milliseconds(200)), 1);
  EXPECT_EQ(RetryAfterSeconds(absl::Seconds(1)), 1);
  EXPECT_EQ(RetryAfterSeconds(absl::Milliseconds(1500)), 2);
  EXPECT_EQ(RetryAfterSeconds(absl::Seconds(30)), 30);
}

// --- responses ---

chatpb::TokenLogprob Token(const std::string& text, float logprob, const std::string& bytes = "") {
  chatpb::TokenLogprob t;
  t.set_token(text);
  t.set_logprob(logprob);
  t.set_token_bytes(bytes);
  return t;
}

chatpb::ChatChunk Chunk(uint32_t index, const std::string& delta,
                        chatpb::FinishReason finish = chatpb::FINISH_REASON_UNSPECIFIED) {
  chatpb::ChatChunk c;
  c.set_index(index);
  c.set_delta(delta);
  c.set_finish_reason(finish);
  return c;
}

void SetUsage(chatpb::ChatChunk* c, uint32_t prompt, uint32_t completion) {
  c->mutable_usage()->set_prompt_tokens(prompt);
  c->mutable_usage()->set_completion_tokens(completion);
}

ResponseMeta Meta() { return ResponseMeta{"r1", "fake-model", 1700000000}; }

TEST(AccumulatorTest, ChatCompletionWithTwoInterleavedChoices) {
  ChatAccumulator acc;
  chatpb::ChatChunk first = Chunk(0, "Hel");
  first.set_model("served-model");
  first.set_request_id("r1");
  ASSERT_TRUE(acc.Add(first).ok());
  ASSERT_TRUE(acc.Add(Chunk(1, "Good")).ok());
  ASSERT_TRUE(acc.Add(Chunk(0, "lo", chatpb::FINISH_REASON_STOP)).ok());
  chatpb::ChatChunk last = Chunk(1, "bye", chatpb::FINISH_REASON_LENGTH);
  SetUsage(&last, 7, 5);
  ASSERT_TRUE(acc.Add(last).ok());
  EXPECT_EQ(acc.model(), "served-model");

  json j = acc.ChatCompletion(Meta(), false);
  EXPECT_EQ(j["id"], "chatcmpl-r1");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "fake-model");
  EXPECT_TRUE(j["system_fingerprint"].is_string());
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["message"]["content"], "Goodbye");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], 12);
}

TEST(AccumulatorTest, TextCompletion) {
  ChatAccumulator acc;
  ASSERT_TRUE(acc.Add(Chunk(0, " there")).ok());
  chatpb::ChatChunk last = Chunk(0, " was", chatpb::FINISH_REASON_LENGTH);
  SetUsage(&last, 4, 2);
  ASSERT_TRUE(acc.Add(last).ok());
  json j = acc.TextCompletion(Meta(), false);
  EXPECT_EQ(j["id"], "cmpl-r1");
  EXPECT_EQ(j["object"], "text_completion");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["text"], " there was");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["total_tokens"], 6);
}

TEST(AccumulatorTest, CancelledOrFailedChoicesAreErrors) {
  ChatAccumulator acc;
  ASSERT_TRUE(acc.Add(Chunk(0, "a")).ok());
  absl::Status s = acc.Add(Chunk(0, "", chatpb::FINISH_REASON_CANCELLED));
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(s.message(), HasSubstr("choice 0"));
  s = acc.Add(Chunk(1, "", chatpb::FINISH_REASON_ERROR));
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(s.message(), HasSubstr("choice 1"));
  s = acc.Add(Chunk(99, "x"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("chunk index 99"));
}

chatpb::ChatChunk ChunkWithLogprobs() {
  chatpb::ChatChunk c = Chunk(0, "Hi!");
  chatpb::PositionLogprobs* p = c.add_logprobs();
  *p->mutable_sampled() = Token("Hi", -0.25f);
  *p->add_top() = Token("Hi", -0.25f);
  *p->add_top() = Token("Hello", -1.5f);
  p = c.add_logprobs();
  // A token whose text is shown as U+FFFD but whose bytes are raw.
  *p->mutable_sampled() = Token("!", -std::numeric_limits<float>::infinity(), "!");
  return c;
}

TEST(LogprobsTest, ChatShape) {
  ChatAccumulator acc;
  ASSERT_TRUE(acc.Add(ChunkWithLogprobs()).ok());
  json j = acc.ChatCompletion(Meta(), true);
  json content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "Hi");
  EXPECT_DOUBLE_EQ(content[0]["logprob"].get<double>(), -0.25);
  EXPECT_EQ(content[0]["bytes"], json({72, 105}));
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], "Hello");
  EXPECT_DOUBLE_EQ(content[0]["top_logprobs"][1]["logprob"].get<double>(), -1.5);
  EXPECT_EQ(content[0]["top_logprobs"][1]["bytes"].size(), 5u);
  EXPECT_DOUBLE_EQ(content[1]["logprob"].get<double>(), -9999.0);  // -inf
  EXPECT_EQ(content[1]["bytes"], json({33}));
  EXPECT_TRUE(content[1]["top_logprobs"].is_array());
  EXPECT_TRUE(content[1]["top_logprobs"].empty());
}

TEST(LogprobsTest, LegacyCompletionShape) {
  const chatpb::ChatChunk chunk = ChunkWithLogprobs();
  std::vector<chatpb::PositionLogprobs> positions(chunk.logprobs().begin(), chunk.logprobs().end());
  json j = CompletionLogprobsJson(positions, 10);
  EXPECT_EQ(j["tokens"], json({"Hi", "!"}));
  EXPECT_DOUBLE_EQ(j["token_logprobs"][0].get<double>(), -0.25);
  EXPECT_DOUBLE_EQ(j["token_logprobs"][1].get<double>(), -9999.0);
  EXPECT_EQ(j["text_offset"], json({10, 12}));
  ASSERT_EQ(j["top_logprobs"].size(), 2u);
  EXPECT_DOUBLE_EQ(j["top_logprobs"][0]["Hello"].get<double>(), -1.5);
  EXPECT_TRUE(j["top_logprobs"][1].is_object());
  EXPECT_TRUE(j["top_logprobs"][1].empty());

  ChatAccumulator acc;
  ASSERT_TRUE(acc.Add(ChunkWithLogprobs()).ok());
  json text = acc.TextCompletion(Meta(), true);
  EXPECT_EQ(text["choices"][0]["logprobs"]["text_offset"], json({0, 2}));
}

// --- streaming ---

std::vector<json> EncodeAll(StreamEncoder* encoder, const std::vector<chatpb::ChatChunk>& chunks) {
  std::vector<json> out;
  for (const chatpb::ChatChunk& c : chunks) {
    absl::StatusOr<std::vector<json>> events = encoder->Encode(c);
    EXPECT_TRUE(events.ok()) << events.status();
    if (events.ok()) out.insert(out.end(), events->begin(), events->end());
  }
  return out;
}

TEST(StreamEncoderTest, ChatChunksRoleContentFinishThenUsage) {
  StreamEncoder encoder(Endpoint::kChatCompletions, Meta(), /*include_usage=*/true, false);
  chatpb::ChatChunk last = Chunk(0, "", chatpb::FINISH_REASON_STOP);
  SetUsage(&last, 7, 2);
  std::vector<json> events = EncodeAll(&encoder, {Chunk(0, "Hel"), Chunk(0, "lo"), last});
  ASSERT_EQ(events.size(), 4u);
  for (json e : events) {
    EXPECT_EQ(e["id"], "chatcmpl-r1");
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    EXPECT_EQ(e["created"], 1700000000);
    EXPECT_EQ(e["model"], "fake-model");
    ASSERT_TRUE(e.contains("usage"));
    EXPECT_TRUE(e["usage"].is_null());
    ASSERT_EQ(e["choices"].size(), 1u);
    EXPECT_EQ(e["choices"][0]["index"], 0);
  }
  EXPECT_EQ(events[0]["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(events[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(events[1]["choices"][0]["delta"], json({{"content", "Hel"}}));
  EXPECT_EQ(events[2]["choices"][0]["delta"], json({{"content", "lo"}}));
  EXPECT_EQ(events[3]["choices"][0]["delta"], json::object());
  EXPECT_EQ(events[3]["choices"][0]["finish_reason"], "stop");

  std::vector<json> tail = encoder.Finish();
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0]["choices"], json::array());
  EXPECT_EQ(tail[0]["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(tail[0]["usage"]["completion_tokens"], 2);
  EXPECT_EQ(tail[0]["usage"]["total_tokens"], 9);
}

TEST(StreamEncoderTest, WithoutIncludeUsageNoUsageAnywhere) {
  StreamEncoder encoder(Endpoint::kChatCompletions, Meta(), false, false);
  chatpb::ChatChunk last = Chunk(0, "x", chatpb::FINISH_REASON_LENGTH);
  SetUsage(&last, 1, 1);
  std::vector<json> events = EncodeAll(&encoder, {last});
  ASSERT_EQ(events.size(), 3u);  // role, content, finish
  for (json e : events) EXPECT_FALSE(e.contains("usage"));
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(encoder.Finish().empty());
}

TEST(StreamEncoderTest, RoleChunkPerChoice) {
  StreamEncoder encoder(Endpoint::kChatCompletions, Meta(), false, false);
  std::vector<json> events =
      EncodeAll(&encoder, {Chunk(0, "a"), Chunk(1, "b"), Chunk(0, "c", chatpb::FINISH_REASON_STOP),
                           Chunk(1, "", chatpb::FINISH_REASON_STOP)});
  std::vector<std::string> seen;
  for (json e : events) {
    json c = e["choices"][0];
    std::string what = std::to_string(c["index"].get<int>()) + ":";
    if (c["delta"].contains("role")) what += "role";
    if (c["delta"].contains("content") && !c["delta"].contains("role")) {
      what += c["delta"]["content"].get<std::string>();
    }
    if (!c["finish_reason"].is_null()) what += "finish";
    seen.push_back(what);
  }
  EXPECT_THAT(seen, ElementsAre("0:role", "0:a", "1:role", "1:b", "0:c", "0:finish", "1:finish"));
}

TEST(StreamEncoderTest, ChatLogprobsOnContentChunks) {
  StreamEncoder encoder(Endpoint::kChatCompletions, Meta(), false, /*logprobs=*/true);
  std::vector<json> events = EncodeAll(&encoder, {ChunkWithLogprobs()});
  ASSERT_EQ(events.size(), 2u);
  EXPECT_TRUE(events[0]["choices"][0]["logprobs"].is_null());  // the role chunk
  EXPECT_EQ(events[1]["choices"][0]["logprobs"]["content"].size(), 2u);
}

TEST(StreamEncoderTest, CompletionChunksWithTextOffsets) {
  StreamEncoder encoder(Endpoint::kCompletions, Meta(), true, /*logprobs=*/true);
  chatpb::ChatChunk last = Chunk(0, "", chatpb::FINISH_REASON_LENGTH);
  SetUsage(&last, 3, 4);
  std::vector<json> events = EncodeAll(&encoder, {ChunkWithLogprobs(), ChunkWithLogprobs(), last});
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0]["id"], "cmpl-r1");
  EXPECT_EQ(events[0]["object"], "text_completion");
  EXPECT_EQ(events[0]["choices"][0]["text"], "Hi!");
  EXPECT_EQ(events[0]["choices"][0]["logprobs"]["text_offset"], json({0, 2}));
  EXPECT_EQ(events[1]["choices"][0]["logprobs"]["text_offset"], json({3, 5}));
  EXPECT_EQ(events[2]["choices"][0]["text"], "");
  EXPECT_EQ(events[2]["choices"][0]["finish_reason"], "length");
  std::vector<json> tail = encoder.Finish();
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0]["usage"]["total_tokens"], 7);
}

TEST(StreamEncoderTest, CancelledFinishIsAnError) {
  StreamEncoder encoder(Endpoint::kChatCompletions, Meta(), false, false);
  absl::StatusOr<std::vector<json>> events =
      encoder.Encode(Chunk(0, "", chatpb::FINISH_REASON_CANCELLED));
  ASSERT_FALSE(events.ok());
  EXPECT_EQ(events.status().code(), absl::StatusCode::kCancelled);
  events = encoder.Encode(Chunk(0, "", chatpb::FINISH_REASON_ERROR));
  ASSERT_FALSE(events.ok());
  EXPECT_EQ(events.status().code(), absl::StatusCode::kInternal);
}

TEST(SseTest, EventFraming) {
  EXPECT_EQ(SseEvent(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
  // Invalid UTF-8 never throws; it is replaced.
  EXPECT_EQ(SseEvent(json{{"t", std::string("\xff")}}), "data: {\"t\":\"\xef\xbf\xbd\"}\n\n");
}

TEST(ModelsTest, ListShape) {
  chatpb::ListModelsResponse models;
  chatpb::ModelInfo* m = models.add_models();
  m->set_id("org/model-a");
  m->set_context_length(2048);
  models.add_models()->set_id("model-b");
  json j = ModelListJson(models, 123);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_EQ(j["data"][0]["id"], "org/model-a");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["created"], 123);
  EXPECT_EQ(j["data"][0]["owned_by"], "shardserve");
  EXPECT_EQ(j["data"][0]["max_model_len"], 2048);
  EXPECT_FALSE(j["data"][1].contains("max_model_len"));
}

}  // namespace
}  // namespace shardserve::openai
