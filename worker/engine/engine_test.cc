// The runner and the engine loop on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
#include "worker/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/model_runner.h"
#include "worker/text/model_text.h"
#include "worker/weights/gguf_test_util.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

std::string ModelPath() {
  return shardserve::testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::shared_ptr<const ModelWeights> LoadWeights() {
  static std::shared_ptr<const ModelWeights> weights = [] {
    absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(ModelPath());
    EXPECT_TRUE(w.ok()) << w.status() << " — " << ModelPath() << shardserve::testing::kRunSetup;
    return w.ok() ? std::shared_ptr<const ModelWeights>(std::move(*w)) : nullptr;
  }();
  return weights;
}

const ModelText& Text() {
  static ModelText* text = [] {
    absl::StatusOr<ModelText> t = LoadModelText(ModelPath());
    EXPECT_TRUE(t.ok()) << t.status();
    return new ModelText(std::move(*t));
  }();
  return *text;
}

RunnerOptions SmallOptions() {
  RunnerOptions options;
  options.threads = 2;
  options.context_length = 1024;
  options.kv_cache_tokens = 2048;
  options.max_step_tokens = 256;
  return options;
}

std::vector<int32_t> ChatPrompt(const std::string& question) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  messages.push_back({{"role", "user"}, {"content", question}});
  absl::StatusOr<std::string> rendered = Text().RenderChat(messages, true);
  EXPECT_TRUE(rendered.ok()) << rendered.status();
  return Text().tokenizer->Encode(*rendered, false);
}

float Cosine(const float* a, const float* b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; ++i) {
    ab += double{a[i]} * b[i];
    aa += double{a[i]} * a[i];
    bb += double{b[i]} * b[i];
  }
  return static_cast<float>(ab / std::sqrt(aa * bb));
}

int Argmax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

TEST(ModelRunnerTest, MemoryPlanRefusesWhatDoesNotFit) {
  RunnerOptions options = SmallOptions();
  options.memory_limit_bytes = 64 << 20;  // less than the weights alone
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(LoadWeights(), options);
  ASSERT_EQ(runner.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(runner.status().message(), HasSubstr("does not fit"));
  EXPECT_THAT(runner.status().message(), HasSubstr("KV cache"));
}

TEST(ModelRunnerTest, RefusesContextBeyondTheModel) {
  RunnerOptions options = SmallOptions();
  options.context_length = 1 << 20;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(LoadWeights(), options);
  ASSERT_EQ(runner.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(runner.status().message(), HasSubstr("max_position_embeddings 8192"));
}

TEST(ModelRunnerTest, MemoryPlanCountsWeightsAndCache) {
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(LoadWeights(), SmallOptions());
  ASSERT_TRUE(runner.ok()) << runner.status();
  const MemoryPlan& plan = (*runner)->memory_plan();
  EXPECT_GT(plan.weight_bytes, size_t{90} << 20);
  // 30 layers x (K + V) x 3 heads x 64 x 2 bytes per token, 2048 tokens.
  EXPECT_EQ(plan.kv_cache_bytes, size_t{30} * 2 * 3 * 64 * 2 * 2048);
  EXPECT_EQ(plan.kv_cache_tokens, 2048);
  EXPECT_THAT(plan.ToString(), HasSubstr("2048 tokens"));
}

// Two sequences in one step, prompts chunked over several steps, and a sequence alone must
// give the same logits: the paged cache and the plan are consistent.
TEST(ModelRunnerTest, BatchedAndChunkedStepsMatchOneSequenceAlone) {
  absl::StatusOr<std::unique_ptr<ModelRunner>> made =
      ModelRunner::Create(LoadWeights(), SmallOptions());
  ASSERT_TRUE(made.ok()) << made.status();
  ModelRunner& runner = **made;
  const int vocab = runner.vocab_size();
  const std::vector<int32_t> a = ChatPrompt("What is the capital of France?");
  const std::vector<int32_t> b = ChatPrompt("Write a haiku about the sea, please.");

  std::vector<float> alone_a, alone_b;
  ASSERT_TRUE(runner
                  .Score(a,
                         [&](int64_t i, const float* l) {
                           if (i + 1 == static_cast<int64_t>(a.size()))
                             alone_a.assign(l, l + vocab);
                         })
                  .ok());
  ASSERT_TRUE(runner
                  .Score(b,
                         [&](int64_t i, const float* l) {
                           if (i + 1 == static_cast<int64_t>(b.size()))
                             alone_b.assign(l, l + vocab);
                         })
                  .ok());
  EXPECT_EQ(runner.blocks().used_blocks(), 0);

  // b in two chunks: the first chunk alone, then its tail batched with all of a.
  const size_t split = b.size() / 2;
  StepPlan first;
  ASSERT_TRUE(runner
                  .AddToPlan(2, 0, absl::MakeConstSpan(b).subspan(0, split),
                             ModelRunner::Logits::kNone, &first)
                  .ok());
  std::vector<float> logits;
  ASSERT_TRUE(runner.Step(first, &logits).ok());
  EXPECT_TRUE(logits.empty());
  StepPlan second;
  ASSERT_TRUE(runner.AddToPlan(1, 0, a, ModelRunner::Logits::kLast, &second).ok());
  ASSERT_TRUE(runner
                  .AddToPlan(2, split, absl::MakeConstSpan(b).subspan(split),
                             ModelRunner::Logits::kLast, &second)
                  .ok());
  ASSERT_TRUE(runner.Step(second, &logits).ok());
  ASSERT_THAT(logits, SizeIs(2 * vocab));
  EXPECT_GT(Cosine(logits.data(), alone_a.data(), vocab), 0.99999f);
  EXPECT_GT(Cosine(logits.data() + vocab, alone_b.data(), vocab), 0.99999f);
  EXPECT_EQ(Argmax(logits.data(), vocab), Argmax(alone_a.data(), vocab));
  EXPECT_EQ(Argmax(logits.data() + vocab, vocab), Argmax(alone_b.data(), vocab));
  runner.blocks().Free(1);
  runner.blocks().Free(2);
  EXPECT_EQ(runner.blocks().used_blocks(), 0);
}

TEST(ModelRunnerTest, ScoreRefusesMoreThanTheContext) {
  RunnerOptions options = SmallOptions();
  options.context_length = 64;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(LoadWeights(), options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  std::vector<int32_t> tokens(65, 1);
  absl::Status status = (*runner)->Score(tokens, [](int64_t, const float*) {});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("65 tokens exceed the context of 64"));
}

// Collects one request's stream.
struct Collected {
  absl::Mutex mu;
  std::string text;
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  absl::Status error;
  int events = 0;
  int completion_tokens = 0;
  absl::Notification done;

  OutputCallback Callback() {
    return [this](GenerationOutput out) {
      {
        absl::MutexLock lock(&mu);
        ++events;
        text += out.text;
        tokens.insert(tokens.end(), out.token_ids.begin(), out.token_ids.end());
        if (out.finish == FinishReason::kNone) return;
        finish = out.finish;
        error = out.error;
        completion_tokens = out.completion_tokens;
      }
      done.Notify();  // last: the waiter may destroy this object right after
    };
  }
};

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override { engine_ = MakeEngine(EngineOptions{}); }

  std::unique_ptr<Engine> MakeEngine(const EngineOptions& options) {
    absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
        ModelRunner::Create(LoadWeights(), SmallOptions());
    EXPECT_TRUE(runner.ok()) << runner.status();
    if (!runner.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<Engine>> engine =
        Engine::Create(std::move(*runner), Text().tokenizer.get(), Text().eos_ids, options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return nullptr;
    EXPECT_TRUE((*engine)->Start().ok());
    return std::move(*engine);
  }

  GenerationRequest Greedy(const std::string& id, const std::string& question, int max_tokens) {
    GenerationRequest request;
    request.id = id;
    request.prompt = ChatPrompt(question);
    request.sampling.temperature = 0;
    request.max_tokens = max_tokens;
    return request;
  }

  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, GreedyIsDeterministicAndConcurrentRequestsMatchSoloRuns) {
  ASSERT_NE(engine_, nullptr);
  const std::vector<std::string> questions = {"What is the capital of France?",
                                              "Name three colors.", "What is 2 + 2?"};
  std::vector<std::string> solo;
  for (size_t i = 0; i < questions.size(); ++i) {
    Collected c;
    ASSERT_TRUE(
        engine_->Submit(Greedy("solo" + std::to_string(i), questions[i], 24), c.Callback()).ok());
    c.done.WaitForNotification();
    EXPECT_EQ(c.error, absl::OkStatus());
    EXPECT_FALSE(c.text.empty());
    solo.push_back(c.text);
  }
  std::vector<std::unique_ptr<Collected>> together;
  for (size_t i = 0; i < questions.size(); ++i) {
    together.push_back(std::make_unique<Collected>());
    ASSERT_TRUE(engine_
                    ->Submit(Greedy("together" + std::to_string(i), questions[i], 24),
                             together.back()->Callback())
                    .ok());
  }
  for (size_t i = 0; i < questions.size(); ++i) {
    together[i]->done.WaitForNotification();
    EXPECT_EQ(together[i]->text, solo[i]) << questions[i];
  }
}

TEST_F(EngineTest, MaxTokensEndsWithLength) {
  ASSERT_NE(engine_, nullptr);
  Collected c;
  GenerationRequest request = Greedy("len", "Tell me a long story about a dragon.", 5);
  ASSERT_TRUE(engine_->Submit(std::move(request), c.Callback()).ok());
  c.done.WaitForNotification();
  EXPECT_EQ(c.finish, FinishReason::kLength);
  EXPECT_THAT(c.tokens, SizeIs(5));
  EXPECT_EQ(c.completion_tokens, 5);
}

TEST_F(EngineTest, StopStringIsNeverEmitted) {
  ASSERT_NE(engine_, nullptr);
  Collected full;
  ASSERT_TRUE(
      engine_->Submit(Greedy("full", "What is the capital of France?", 24), full.Callback()).ok());
  full.done.WaitForNotification();
  // Stop at the second word of the greedy answer.
  const size_t space = full.text.find(' ', 1);
  ASSERT_NE(space, std::string::npos) << full.text;
  const std::string word = full.text.substr(space, full.text.find(' ', space + 1) - space);
  Collected stopped;
  GenerationRequest request = Greedy("stop", "What is the capital of France?", 24);
  request.stop = {word};
  ASSERT_TRUE(engine_->Submit(std::move(request), stopped.Callback()).ok());
  stopped.done.WaitForNotification();
  EXPECT_EQ(stopped.finish, FinishReason::kStop);
  EXPECT_EQ(stopped.text, full.text.substr(0, full.text.find(word)));
}

TEST_F(EngineTest, CancelStopsAndFreesTheCache) {
  ASSERT_NE(engine_, nullptr);
  absl::Notification first_token;
  Collected c;
  OutputCallback inner = c.Callback();
  GenerationRequest request = Greedy("cancel", "Write a very long essay about rivers.", 400);
  request.ignore_eos = true;
  ASSERT_TRUE(engine_
                  ->Submit(std::move(request),
                           [&](GenerationOutput out) {
                             if (!first_token.HasBeenNotified()) first_token.Notify();
                             inner(std::move(out));
                           })
                  .ok());
  first_token.WaitForNotification();
  engine_->Cancel("cancel");
  c.done.WaitForNotification();
  EXPECT_EQ(c.finish, FinishReason::kCancelled);
  EXPECT_LT(c.tokens.size(), 400u);
  // The loop publishes stats after the step that ended the request.
  for (int i = 0; i < 1000 && engine_->Stats().kv_blocks_used != 0; ++i) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  EXPECT_EQ(engine_->Stats().kv_blocks_used, 0);
  EXPECT_EQ(engine_->Stats().running, 0);
}

TEST_F(EngineTest, BadRequestsAreRefusedWithTheirReason) {
  ASSERT_NE(engine_, nullptr);
  auto submit = [&](GenerationRequest r) { return engine_->Submit(std::move(r), [](auto) {}); };

  GenerationRequest too_long = Greedy("long", "Hi", 2000);
  absl::Status s = submit(too_long);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("exceeds the context length of 1024"));

  GenerationRequest empty = Greedy("empty", "Hi", 4);
  empty.prompt.clear();
  s = submit(empty);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("prompt"));

  GenerationRequest bad_token = Greedy("tok", "Hi", 4);
  bad_token.prompt.push_back(1 << 20);
  s = submit(bad_token);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("outside the vocabulary"));

  GenerationRequest bad_temp = Greedy("temp", "Hi", 4);
  bad_temp.sampling.temperature = -1;
  s = submit(bad_temp);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("temperature"));

  GenerationRequest negative = Greedy("neg", "Hi", -3);
  s = submit(negative);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_tokens"));
}

// The step hook sees every model step before that step's outputs: one request's prompt is
// prefilled once (one chunk; the prompt is shorter than max_step_tokens) and each token after
// the first comes from a decode step.
TEST_F(EngineTest, StepHookCountsEveryStepsTokens) {
  struct Steps {
    absl::Mutex mu;
    int steps = 0, prefill = 0, decode = 0, failed = 0;
    double min_seconds = 1e9;
  } steps;
  EngineOptions options;
  options.on_step = [&steps](const StepInfo& info) {
    absl::MutexLock lock(&steps.mu);
    ++steps.steps;
    steps.prefill += info.prefill_tokens;
    steps.decode += info.decode_tokens;
    if (!info.ok) ++steps.failed;
    steps.min_seconds = std::min(steps.min_seconds, info.seconds);
    EXPECT_EQ(info.sequences, 1);
  };
  std::unique_ptr<Engine> engine = MakeEngine(options);
  ASSERT_NE(engine, nullptr);
  {
    absl::MutexLock lock(&steps.mu);
    EXPECT_EQ(steps.steps, 0) << "the warm-up step is not reported";
  }
  GenerationRequest request = Greedy("hooked", "Tell me a long story about a dragon.", 7);
  request.ignore_eos = true;
  const int prompt_tokens = static_cast<int>(request.prompt.size());
  ASSERT_LT(prompt_tokens, SmallOptions().max_step_tokens);
  Collected c;
  ASSERT_TRUE(engine->Submit(std::move(request), c.Callback()).ok());
  c.done.WaitForNotification();
  ASSERT_EQ(c.finish, FinishReason::kLength);
  absl::MutexLock lock(&steps.mu);
  EXPECT_EQ(steps.steps, 7);  // one prefill step (samples the first token) + six decode steps
  EXPECT_EQ(steps.prefill, prompt_tokens);
  EXPECT_EQ(steps.decode, 6);
  EXPECT_EQ(steps.failed, 0);
  EXPECT_GT(steps.min_seconds, 0);
}

// A cache too small for all requests at once: the newest are preempted and recomputed, and
// every request still gets exactly the tokens it gets alone.
TEST(EnginePreemptionTest, SmallCachePreemptsAndRecomputesWithoutChangingTokens) {
  RunnerOptions options = SmallOptions();
  options.context_length = 128;
  options.kv_cache_tokens = 160;  // 10 blocks; three requests need ~18
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Create(LoadWeights(), options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  absl::StatusOr<std::unique_ptr<Engine>> made =
      Engine::Create(std::move(*runner), Text().tokenizer.get(), Text().eos_ids, EngineOptions{});
  ASSERT_TRUE(made.ok()) << made.status();
  Engine& engine = **made;
  ASSERT_TRUE(engine.Start().ok());
  const std::vector<std::string> questions = {"Describe a forest.", "Describe the ocean.",
                                              "Describe a city at night."};
  auto request = [&](const std::string& id, const std::string& question) {
    GenerationRequest r;
    r.id = id;
    r.prompt = ChatPrompt(question);
    r.sampling.temperature = 0;
    r.max_tokens = 60;
    r.ignore_eos = true;
    return r;
  };
  std::vector<std::vector<int32_t>> solo;
  for (size_t i = 0; i < questions.size(); ++i) {
    Collected c;
    ASSERT_TRUE(
        engine.Submit(request("solo" + std::to_string(i), questions[i]), c.Callback()).ok());
    c.done.WaitForNotification();
    ASSERT_EQ(c.finish, FinishReason::kLength);
    solo.push_back(c.tokens);
  }
  std::vector<std::unique_ptr<Collected>> together;
  for (size_t i = 0; i < questions.size(); ++i) {
    together.push_back(std::make_unique<Collected>());
    ASSERT_TRUE(
        engine.Submit(request("t" + std::to_string(i), questions[i]), together.back()->Callback())
            .ok());
  }
  for (size_t i = 0; i < questions.size(); ++i) {
    together[i]->done.WaitForNotification();
    EXPECT_EQ(together[i]->finish, FinishReason::kLength);
    EXPECT_EQ(together[i]->tokens, solo[i]) << questions[i];
  }
  EXPECT_EQ(engine.Stats().kv_blocks_total, 10);
  EXPECT_GT(engine.Stats().preemptions, 0u);
}

TEST(EngineQueueTest, RefusesBeyondTheQueueBoundAndBeforeStart) {
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(LoadWeights(), SmallOptions());
  ASSERT_TRUE(runner.ok()) << runner.status();
  EngineOptions options;
  options.max_waiting = 0;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(std::move(*runner), Text().tokenizer.get(), Text().eos_ids, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerationRequest request;
  request.id = "early";
  request.prompt = ChatPrompt("Hi");
  absl::Status s = (*engine)->Submit(request, [](auto) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*engine)->Start().ok());
  s = (*engine)->Submit(request, [](auto) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("queue is full"));
}

}  // namespace
}  // namespace shardserve
