#include "worker/rpc/chat_conversion.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/text/unicode.h"

namespace shardserve {
namespace {

namespace chatpb = ::shardserve::chat::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kModel[] = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

class ChatConversionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<ModelText> text = LoadModelText(kModel);
    ASSERT_TRUE(text.ok()) << text.status();
    text_ = new ModelText(*std::move(text));
  }
  static void TearDownTestSuite() {
    delete text_;
    text_ = nullptr;
  }

  static chatpb::ChatRequest Request(const std::string& prompt) {
    chatpb::ChatRequest request;
    request.set_model("smol");
    chatpb::Message* m = request.add_messages();
    m->set_role(chatpb::ROLE_USER);
    m->set_content(prompt);
    return request;
  }

  PrepareOptions Options() const {
    PrepareOptions o;
    o.served_model_name = "smol";
    o.context_length = 2048;
    o.random_seed = [] { return uint64_t{42}; };
    return o;
  }

  absl::Status Prepare(const chatpb::ChatRequest& request) const {
    return PrepareGeneration(request, *text_, Options()).status();
  }

  static ModelText* text_;
};

ModelText* ChatConversionTest::text_ = nullptr;

TEST_F(ChatConversionTest, RendersTheTemplateAndTokenizesWithoutSpecialTokens) {
  chatpb::ChatRequest request = Request("What is 2+2?");
  absl::StatusOr<GenerationRequest> g = PrepareGeneration(request, *text_, Options());
  ASSERT_TRUE(g.ok()) << g.status();
  nlohmann::ordered_json messages = {{{"role", "user"}, {"content", "What is 2+2?"}}};
  absl::StatusOr<std::string> prompt = text_->RenderChat(messages, true);
  ASSERT_TRUE(prompt.ok());
  EXPECT_THAT(*prompt, HasSubstr("<|im_start|>assistant\n"));
  EXPECT_EQ(g->prompt, text_->tokenizer->Encode(*prompt, false));
  EXPECT_EQ(g->max_tokens, 0);
  // Unset sampling: the documented defaults, and the injected seed.
  EXPECT_FLOAT_EQ(g->sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(g->sampling.top_p, 1.0f);
  EXPECT_EQ(g->sampling.top_k, 0);
  EXPECT_EQ(g->sampling.seed, 42u);
  EXPECT_FALSE(g->sampling.logprobs);

  request.set_add_generation_prompt(false);
  g = PrepareGeneration(request, *text_, Options());
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->prompt, text_->tokenizer->Encode(*text_->RenderChat(messages, false), false));
}

TEST_F(ChatConversionTest, RawPromptIsTokenizedWithoutTheTemplate) {
  chatpb::ChatRequest request;
  request.set_model("smol");
  request.set_prompt("Once upon a time");
  absl::StatusOr<GenerationRequest> g = PrepareGeneration(request, *text_, Options());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->prompt, text_->tokenizer->Encode("Once upon a time", true));

  request.add_messages()->set_role(chatpb::ROLE_USER);
  absl::Status both = Prepare(request);
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(both.message(), HasSubstr("prompt: set together with messages"));
}

TEST(ValidateChatRequestTest, TheGatewayAllowsUpToSixteenChoices) {
  chatpb::ChatRequest request;
  chatpb::Message* m = request.add_messages();
  m->set_role(chatpb::ROLE_USER);
  m->set_content("hi");
  request.set_n(4);
  EXPECT_TRUE(ValidateChatRequest(request, kMaxChoices).ok());
  absl::Status worker = ValidateChatRequest(request, 1);
  EXPECT_EQ(worker.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(worker.message(), HasSubstr("n: 4 choices requested; this worker generates 1"));
  request.set_n(17);
  absl::Status gateway = ValidateChatRequest(request, kMaxChoices);
  EXPECT_THAT(gateway.message(), HasSubstr("n: 17 choices requested; at most 16"));
  request.set_n(1);
  request.mutable_sampling()->set_top_p(0);
  EXPECT_THAT(ValidateChatRequest(request, kMaxChoices).message(), HasSubstr("sampling.top_p"));
  request.clear_sampling();
  request.mutable_messages(0)->set_role(chatpb::ROLE_UNSPECIFIED);
  EXPECT_THAT(ValidateChatRequest(request, kMaxChoices).message(),
              HasSubstr("messages[0].role: unspecified"));
}

TEST(FromGrpcStatusTest, KeepsCodeAndMessage) {
  absl::Status s = FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "gone");
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST_F(ChatConversionTest, CopiesSamplingStopLogprobsAndMaxTokens) {
  chatpb::ChatRequest request = Request("hi");
  request.set_model("");  // empty: the served model
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_top_k(5);
  request.mutable_sampling()->set_top_p(0.5f);
  request.mutable_sampling()->set_min_p(0.1f);
  request.mutable_sampling()->set_repetition_penalty(1.1f);
  request.mutable_sampling()->set_frequency_penalty(0.5f);
  request.mutable_sampling()->set_presence_penalty(-0.5f);
  request.mutable_sampling()->set_seed(7);
  request.set_logprobs(true);
  request.set_top_logprobs(3);
  request.add_stop("\n\n");
  request.set_max_tokens(12);
  absl::StatusOr<GenerationRequest> g = PrepareGeneration(request, *text_, Options());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_FLOAT_EQ(g->sampling.temperature, 0.0f);
  EXPECT_EQ(g->sampling.top_k, 5);
  EXPECT_FLOAT_EQ(g->sampling.top_p, 0.5f);
  EXPECT_FLOAT_EQ(g->sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(g->sampling.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(g->sampling.frequency_penalty, 0.5f);
  EXPECT_FLOAT_EQ(g->sampling.presence_penalty, -0.5f);
  EXPECT_EQ(g->sampling.seed, 7u);
  EXPECT_TRUE(g->sampling.logprobs);
  EXPECT_EQ(g->sampling.top_logprobs, 3);
  EXPECT_THAT(g->stop, ElementsAre("\n\n"));
  EXPECT_EQ(g->max_tokens, 12);
}

TEST_F(ChatConversionTest, DefaultMaxTokensIsCappedByTheContext) {
  PrepareOptions options = Options();
  options.default_max_tokens = 100000;
  absl::StatusOr<GenerationRequest> g = PrepareGeneration(Request("hi"), *text_, options);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->max_tokens, 2048 - static_cast<int>(g->prompt.size()));
  options.default_max_tokens = 16;
  g = PrepareGeneration(Request("hi"), *text_, options);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->max_tokens, 16);
}

TEST_F(ChatConversionTest, BadRequestsNameTheField) {
  chatpb::ChatRequest request = Request("hi");
  request.set_model("other");
  absl::Status s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("model: 'other'"));

  request = Request("hi");
  request.clear_messages();
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("messages:"));

  request = Request("hi");
  request.add_messages()->set_content("no role");
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("messages[1].role: unspecified"));

  request = Request("hi");
  request.mutable_messages(0)->set_role(static_cast<chatpb::Role>(9));
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("messages[0].role: unknown value 9"));

  request = Request("hi");
  request.set_n(2);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("n: 2"));

  request = Request("hi");
  for (int i = 0; i < 17; ++i) request.add_stop("x");
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stop: 17 strings; at most 16"));

  request = Request("hi");
  request.add_stop("");
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("stop[0]: empty"));

  request = Request("hi");
  request.set_logprobs(true);
  request.set_top_logprobs(21);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("top_logprobs: 21"));

  request = Request("hi");
  request.set_top_logprobs(2);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("top_logprobs: requires logprobs"));

  request = Request("hi");
  request.mutable_sampling()->set_temperature(-1);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sampling.temperature"));

  request = Request("hi");
  request.mutable_sampling()->set_top_p(0);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sampling.top_p"));

  request = Request("hi");
  request.mutable_sampling()->set_presence_penalty(3);
  s = Prepare(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sampling.presence_penalty"));
}

TEST_F(ChatConversionTest, TokenLogprobTextAndBytes) {
  const Tokenizer& tok = *text_->tokenizer;
  const std::vector<int32_t> hello = tok.Encode(" Hello", false);
  ASSERT_EQ(hello.size(), 1u);
  chatpb::TokenLogprob lp;
  FillTokenLogprob(tok, hello[0], -0.5f, &lp);
  EXPECT_EQ(lp.token_id(), hello[0]);
  EXPECT_EQ(lp.token(), " Hello");
  EXPECT_EQ(lp.token_bytes(), " Hello");
  EXPECT_FLOAT_EQ(lp.logprob(), -0.5f);

  // A token that is part of a multi-byte character: its text is lossy, its bytes are exact.
  int32_t partial = -1;
  std::string raw;
  for (int32_t id = 0; id < tok.vocab_size() && partial < 0; ++id) {
    std::optional<std::string> piece = tok.IdToToken(id);
    if (!piece || tok.IsSpecial(id)) continue;
    std::string bytes;
    bool ok = true;
    for (size_t pos = 0; pos < piece->size();) {
      int b = text::CharToByte(text::NextCodepoint(*piece, &pos));
      if (b < 0) ok = false;
      bytes.push_back(static_cast<char>(b));
    }
    if (ok && !text::IsValidUtf8(bytes)) partial = id, raw = bytes;
  }
  ASSERT_GE(partial, 0);
  FillTokenLogprob(tok, partial, -1.0f, &lp);
  EXPECT_EQ(lp.token_bytes(), raw);
  EXPECT_THAT(lp.token(), HasSubstr("\xEF\xBF\xBD"));  // U+FFFD

  // Special tokens are shown as their text.
  const std::optional<int32_t> im_end = tok.TokenToId("<|im_end|>");
  ASSERT_TRUE(im_end.has_value());
  FillTokenLogprob(tok, *im_end, 0.0f, &lp);
  EXPECT_EQ(lp.token(), "<|im_end|>");
  EXPECT_EQ(lp.token_bytes(), "<|im_end|>");
}

TEST_F(ChatConversionTest, ChunksCarryFinishUsageAndTimingsOnlyAtTheEnd) {
  GenerationOutput out;
  out.text = "Hel";
  out.token_ids = {10, 11};
  chatpb::ChatChunk a = ToChatChunk(out, *text_->tokenizer);
  EXPECT_EQ(a.delta(), "Hel");
  EXPECT_THAT(a.token_ids(), ElementsAre(10, 11));
  EXPECT_EQ(a.finish_reason(), chatpb::FINISH_REASON_UNSPECIFIED);
  EXPECT_FALSE(a.has_usage());
  EXPECT_FALSE(a.has_timings());

  GenerationOutput last;
  last.text = "lo";
  last.token_ids = {12};
  SampleResult r;
  r.token = 12;
  r.logprob = -0.25f;
  r.top = {{12, -0.25f}, {13, -2.0f}};
  last.logprobs = {r};
  last.finish = FinishReason::kLength;
  last.prompt_tokens = 5;
  last.completion_tokens = 3;
  last.timings.time_to_first_token_seconds = 0.5;
  chatpb::ChatChunk b = ToChatChunk(last, *text_->tokenizer);
  EXPECT_EQ(b.finish_reason(), chatpb::FINISH_REASON_LENGTH);
  EXPECT_EQ(b.usage().prompt_tokens(), 5u);
  EXPECT_EQ(b.usage().completion_tokens(), 3u);
  EXPECT_DOUBLE_EQ(b.timings().time_to_first_token_seconds(), 0.5);
  ASSERT_EQ(b.logprobs_size(), 1);
  EXPECT_EQ(b.logprobs(0).sampled().token_id(), 12);
  ASSERT_EQ(b.logprobs(0).top_size(), 2);
  EXPECT_EQ(b.logprobs(0).top(1).token_id(), 13);

  a.set_request_id("r1");
  MergeChatChunk(&a, std::move(b));
  EXPECT_EQ(a.delta(), "Hello");
  EXPECT_THAT(a.token_ids(), ElementsAre(10, 11, 12));
  EXPECT_EQ(a.logprobs_size(), 1);
  EXPECT_EQ(a.finish_reason(), chatpb::FINISH_REASON_LENGTH);
  EXPECT_EQ(a.usage().completion_tokens(), 3u);
  EXPECT_EQ(a.request_id(), "r1");
}

TEST(ToGrpcStatusTest, KeepsCodeAndMessage) {
  grpc::Status s = ToGrpcStatus(absl::ResourceExhaustedError("queue full"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(s.error_message(), "queue full");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("m")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("d")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
}

}  // namespace
}  // namespace shardserve
