// `shardserve run`: generation in-process, as llama.cpp's llama-cli.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "worker/engine/engine.h"
#include "worker/engine/model_runner.h"
#include "worker/text/model_text.h"
#include "worker/weights/model_weights.h"

namespace shardserve::cli {

namespace {

constexpr int kDefaultMaxTokens = 512;

absl::StatusOr<ActivationMode> ParseActivations(const std::string& name) {
  if (name == "q8") return ActivationMode::kQ8;
  if (name == "f32") return ActivationMode::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("--activations: '", name, "' is not one of q8, f32"));
}

// The conversation: --messages (a list, or an object with "messages"), else --prompt as the
// user turn; --system first in either case.
absl::StatusOr<nlohmann::ordered_json> Conversation(const RunOptions& options) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  if (!options.system.empty()) {
    messages.push_back({{"role", "system"}, {"content", options.system}});
  }
  if (!options.messages_file.empty()) {
    absl::StatusOr<std::string> raw = ReadFileToString(options.messages_file);
    if (!raw.ok()) return raw.status();
    nlohmann::ordered_json doc;
    try {
      doc = nlohmann::ordered_json::parse(*raw);
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.messages_file, ": invalid JSON: ", e.what()));
    }
    if (doc.is_object() && doc.contains("messages")) doc = doc["messages"];
    if (!doc.is_array() || doc.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(options.messages_file,
                       ": expected a non-empty list of {\"role\", \"content\"} "
                       "messages or an object with \"messages\""));
    }
    for (const auto& m : doc) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(options.messages_file, ": every message needs a string \"role\""));
      }
      messages.push_back(m);
    }
  } else {
    messages.push_back({{"role", "user"}, {"content", options.prompt}});
  }
  return messages;
}

double Rate(double count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

}  // namespace

int RunGenerate(const RunOptions& options) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "shardserve run: " << status.message() << "\n";
    return 1;
  };
  if (options.prompt.empty() == options.messages_file.empty()) {
    return fail(absl::InvalidArgumentError("give exactly one of --prompt and --messages"));
  }
  absl::StatusOr<ActivationMode> activations = ParseActivations(options.activations);
  if (!activations.ok()) return fail(activations.status());
  if (options.logprobs > 20) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--logprobs: ", options.logprobs, " alternatives (at most 20)")));
  }
  if (options.context < 0) {
    return fail(absl::InvalidArgumentError("--context: must not be negative"));
  }

  // Model, tokenizer and template.
  const absl::Time load_start = absl::Now();
  absl::StatusOr<ModelText> text = LoadModelText(options.model);
  if (!text.ok()) return fail(text.status());
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights = ModelWeights::Open(options.model);
  if (!weights.ok()) return fail(weights.status());

  // The prompt's tokens: the rendered template (which writes any BOS itself) tokenized without
  // special tokens, as transformers' apply_chat_template; without a template, the raw prompt
  // with the tokenizer's special tokens.
  std::vector<int32_t> prompt;
  if (text->chat_template.has_value()) {
    absl::StatusOr<nlohmann::ordered_json> messages = Conversation(options);
    if (!messages.ok()) return fail(messages.status());
    absl::StatusOr<std::string> rendered =
        text->RenderChat(*messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return fail(rendered.status());
    prompt = text->tokenizer->Encode(*rendered, /*add_special_tokens=*/false);
  } else {
    if (!options.messages_file.empty() || !options.system.empty()) {
      return fail(absl::FailedPreconditionError(
          absl::StrCat(options.model, " has no chat template: use --prompt alone")));
    }
    prompt = text->tokenizer->Encode(options.prompt, /*add_special_tokens=*/true);
  }
  if (prompt.empty()) return fail(absl::InvalidArgumentError("the prompt has no tokens"));

  // One sequence at a time: the KV cache holds exactly one context.
  RunnerOptions runner_options;
  runner_options.threads = options.threads;
  runner_options.activations = *activations;
  runner_options.context_length = options.context;
  if (options.context == 0) {
    const int64_t trained = (*weights)->config().max_position_embeddings;
    runner_options.context_length = trained > 0 ? trained : 4096;
  }
  runner_options.kv_cache_tokens = runner_options.context_length;
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(std::shared_ptr<const ModelWeights>(std::move(*weights)), runner_options);
  if (!runner.ok()) return fail(runner.status());
  const int64_t context = (*runner)->context_length();
  const std::string memory = (*runner)->memory_plan().ToString();

  GenerationRequest request;
  request.id = "run";
  request.prompt = prompt;
  const int64_t room = context - static_cast<int64_t>(prompt.size());
  if (options.max_tokens < 0) {
    if (room <= 0) {
      return fail(absl::ResourceExhaustedError(absl::StrCat(
          "the prompt (", prompt.size(), " tokens) fills the context of ", context, " tokens")));
    }
    request.max_tokens = static_cast<int>(std::min<int64_t>(kDefaultMaxTokens, room));
  } else {
    request.max_tokens = options.max_tokens;
  }
  request.stop = options.stop;
  SamplingOptions& sampling = request.sampling;
  sampling.temperature = options.temperature;
  sampling.top_k = options.top_k;
  sampling.top_p = options.top_p;
  sampling.min_p = options.min_p;
  sampling.repetition_penalty = options.repetition_penalty;
  const uint64_t seed = options.seed >= 0
                            ? static_cast<uint64_t>(options.seed)
                            : (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  sampling.seed = seed;
  sampling.logprobs = options.logprobs >= 0;
  sampling.top_logprobs = std::max(0, options.logprobs);

  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*std::move(runner), text->tokenizer.get(), text->eos_ids, EngineOptions{});
  if (!engine.ok()) return fail(engine.status());
  if (absl::Status st = (*engine)->Start(); !st.ok()) return fail(st);
  const double load_seconds = absl::ToDoubleSeconds(absl::Now() - load_start);

  // Outputs arrive on the engine thread; this thread waits for the last one.
  std::string all_text;
  std::vector<int32_t> ids;
  std::vector<SampleResult> logprobs;
  GenerationOutput last;
  absl::Notification done;
  const bool stream = !options.json;
  absl::Status submitted = (*engine)->Submit(request, [&](GenerationOutput out) {
    all_text += out.text;
    ids.insert(ids.end(), out.token_ids.begin(), out.token_ids.end());
    logprobs.insert(logprobs.end(), out.logprobs.begin(), out.logprobs.end());
    if (stream && !out.text.empty()) {
      std::fwrite(out.text.data(), 1, out.text.size(), stdout);
      std::fflush(stdout);
    }
    if (out.finish != FinishReason::kNone) {
      last = std::move(out);
      done.Notify();
    }
  });
  if (!submitted.ok()) return fail(submitted);
  done.WaitForNotification();
  engine->reset();

  const GenerationTimings& t = last.timings;
  const double prefill_rate = Rate(last.prompt_tokens, t.prefill_seconds);
  // The first token comes from the prefill; the others from decode steps.
  const double decode_rate = Rate(std::max(0, last.completion_tokens - 1), t.decode_seconds);
  if (options.json) {
    nlohmann::ordered_json out;
    out["text"] = all_text;
    out["token_ids"] = ids;
    out["finish_reason"] = FinishReasonName(last.finish);
    if (!last.error.ok()) out["error"] = std::string(last.error.message());
    out["seed"] = seed;
    out["usage"] = {{"prompt_tokens", last.prompt_tokens},
                    {"completion_tokens", last.completion_tokens},
                    {"total_tokens", last.prompt_tokens + last.completion_tokens}};
    out["timings"] = {{"load_seconds", load_seconds},
                      {"time_to_first_token_seconds", t.time_to_first_token_seconds},
                      {"prefill_seconds", t.prefill_seconds},
                      {"decode_seconds", t.decode_seconds},
                      {"prefill_tokens_per_second", prefill_rate},
                      {"decode_tokens_per_second", decode_rate}};
    if (sampling.logprobs) {
      nlohmann::ordered_json lp = nlohmann::ordered_json::array();
      for (const SampleResult& r : logprobs) {
        nlohmann::ordered_json top = nlohmann::ordered_json::array();
        for (const TokenLogprob& alt : r.top) {
          top.push_back({{"token", alt.token},
                         {"text", text->tokenizer->Decode({alt.token}, false)},
                         {"logprob", alt.logprob}});
        }
        lp.push_back({{"token", r.token},
                      {"text", text->tokenizer->Decode({r.token}, false)},
                      {"logprob", r.logprob},
                      {"top_logprobs", std::move(top)}});
      }
      out["logprobs"] = std::move(lp);
    }
    // The decoded text may hold invalid UTF-8 only if a piece does; replace rather than throw.
    std::cout << out.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "\n";
    std::cout.flush();
    if (sampling.logprobs) {
      for (const SampleResult& r : logprobs) {
        std::cerr << absl::StrFormat("%6d %-16s %8.4f", r.token,
                                     DumpJson(text->tokenizer->Decode({r.token}, false)),
                                     r.logprob);
        for (const TokenLogprob& alt : r.top) {
          std::cerr << absl::StrFormat(
              "  %s %.4f", DumpJson(text->tokenizer->Decode({alt.token}, false)), alt.logprob);
        }
        std::cerr << "\n";
      }
    }
  }
  std::cerr << absl::StrFormat(
      "[%s] prompt %d tokens, generated %d, prefill %.1f tok/s, decode %.1f tok/s, "
      "load %.2f s, seed %u (%s)\n",
      FinishReasonName(last.finish), last.prompt_tokens, last.completion_tokens, prefill_rate,
      decode_rate, load_seconds, seed, memory);
  if (last.finish == FinishReason::kError) return fail(last.error);
  return 0;
}

}  // namespace shardserve::cli
