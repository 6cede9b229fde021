// End-to-end CPU engine benchmark: prefill tokens/s of one prompt and decode tokens/s at batch 1,
// on the real model through ModelRunner (what the worker runs), printed as one JSON object.
// bench/cpu_bench.py runs it next to llama.cpp on the same file, threads and tokens.
//
//   engine_bench [--model PATH] [--threads N] [--tokens-file F] [--prompt-tokens 512]
//                [--decode-tokens 128] [--runs 5] [--activations q8|f32] [--no-bandwidth]
//
// Each run: a fresh sequence; the prompt in one step (prefill time: AddToPlan + Step of all
// prompt tokens, last-token logits to the host); then decode-tokens steps of one token each,
// greedy (argmax) — decode time covers the steps and the argmax. One warm-up run is not counted;
// the JSON reports the median of the runs and every run.
//
// Roofline figures: weight bytes a decode step reads (every matrix once; the tied embedding is
// the LM head, so it is read whole), KV-cache bytes read at the mean decode context, and the
// machine's streaming-read bandwidth (sum of 64-bit words over a buffer, best of 3), for a buffer
// of the model's size and for 1 GiB.
//
// Default tokens: the first prompt-tokens ids of the long_context prompt of
// tests/fixtures/fidelity/goldens.json (a chat-templated English text), repeated if shorter.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "worker/engine/model_runner.h"
#include "worker/weights/model_weights.h"

namespace shardserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Args {
  std::string model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  std::string tokens_file;
  int threads = 2;
  int prompt_tokens = 512;
  int decode_tokens = 128;
  int runs = 5;
  ActivationMode activations = ActivationMode::kQ8;
  bool bandwidth = true;
};

[[noreturn]] void Usage(const char* message) {
  std::fprintf(stderr,
               "%s\nusage: engine_bench [--model PATH] [--threads N] [--tokens-file F] "
               "[--prompt-tokens N] [--decode-tokens N] [--runs N] [--activations q8|f32] "
               "[--no-bandwidth]\n",
               message);
  std::exit(2);
}

Args ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(("missing value for " + flag).c_str());
      return argv[++i];
    };
    auto number = [&]() {
      int n = 0;
      const std::string v = value();
      if (!absl::SimpleAtoi(v, &n) || n < 1)
        Usage((flag + ": not a positive number: " + v).c_str());
      return n;
    };
    if (flag == "--model") {
      args.model = value();
    } else if (flag == "--tokens-file") {
      args.tokens_file = value();
    } else if (flag == "--threads") {
      args.threads = number();
    } else if (flag == "--prompt-tokens") {
      args.prompt_tokens = number();
    } else if (flag == "--decode-tokens") {
      args.decode_tokens = number();
    } else if (flag == "--runs") {
      args.runs = number();
    } else if (flag == "--activations") {
      const std::string v = value();
      if (v == "q8") {
        args.activations = ActivationMode::kQ8;
      } else if (v == "f32") {
        args.activations = ActivationMode::kF32;
      } else {
        Usage(("--activations: q8 or f32, not " + v).c_str());
      }
    } else if (flag == "--no-bandwidth") {
      args.bandwidth = false;
    } else {
      Usage(("unknown flag " + flag).c_str());
    }
  }
  return args;
}

// The prompt: a JSON array of ids (--tokens-file), or the fidelity fixture's long prompt.
absl::StatusOr<std::vector<int32_t>> PromptTokens(const Args& args) {
  std::vector<int32_t> ids;
  try {
    if (!args.tokens_file.empty()) {
      ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonFile(args.tokens_file));
      ids = j.get<std::vector<int32_t>>();
    } else {
      ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonFile("tests/fixtures/fidelity/goldens.json"));
      for (const nlohmann::json& p : j.at("prompts")) {
        if (p.at("name") == "long_context") ids = p.at("prompt_ids").get<std::vector<int32_t>>();
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("prompt tokens: ", e.what()));
  }
  if (ids.empty()) return absl::InvalidArgumentError("prompt tokens: none found");
  std::vector<int32_t> out;
  while (static_cast<int>(out.size()) < args.prompt_tokens) {
    out.push_back(ids[out.size() % ids.size()]);
  }
  return out;
}

// Best of 3 streaming reads of `bytes` with `threads` threads, in GB/s.
double ReadBandwidth(size_t bytes, int threads) {
  std::vector<uint64_t> buf(bytes / 8);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
  std::vector<uint64_t> sums(threads * 8);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    const size_t per = buf.size() / threads;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const uint64_t* p = buf.data() + t * per;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i + 4 <= per; i += 4) {
          s0 += p[i];
          s1 += p[i + 1];
          s2 += p[i + 2];
          s3 += p[i + 3];
        }
        sums[t * 8] += s0 + s1 + s2 + s3;
      });
    }
    for (std::thread& t : pool) t.join();
    best = std::max(best, static_cast<double>(per * threads * 8) / Seconds(t0, Clock::now()) / 1e9);
  }
  return best;
}

int32_t Argmax(const std::vector<float>& x) {
  return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
}

absl::Status Run(const Args& args) {
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(args));
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> opened, ModelWeights::Open(args.model));
  std::shared_ptr<const ModelWeights> weights(std::move(opened));

  RunnerOptions options;
  options.threads = args.threads;
  options.activations = args.activations;
  options.context_length = args.prompt_tokens + args.decode_tokens;
  options.kv_cache_tokens = options.context_length;
  options.max_step_tokens = args.prompt_tokens;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelRunner> runner, ModelRunner::Create(weights, options));

  // One run: prefill seconds, decode seconds.
  auto run_once = [&](int64_t seq) -> absl::StatusOr<std::pair<double, double>> {
    std::vector<float> logits;
    StepPlan plan;
    const auto t0 = Clock::now();
    RETURN_IF_ERROR(runner->AddToPlan(seq, 0, prompt, ModelRunner::Logits::kLast, &plan));
    RETURN_IF_ERROR(runner->Step(plan, &logits));
    const auto t1 = Clock::now();
    int32_t token = Argmax(logits);
    for (int i = 0; i < args.decode_tokens; ++i) {
      StepPlan step;
      RETURN_IF_ERROR(runner->AddToPlan(seq, args.prompt_tokens + i, {&token, 1},
                                        ModelRunner::Logits::kLast, &step));
      RETURN_IF_ERROR(runner->Step(step, &logits));
      token = Argmax(logits);
    }
    const auto t2 = Clock::now();
    runner->blocks().Free(seq);
    return std::make_pair(Seconds(t0, t1), Seconds(t1, t2));
  };

  RETURN_IF_ERROR(run_once(1).status());  // warm-up: faults in every weight page
  std::vector<double> prefill, decode;
  for (int r = 0; r < args.runs; ++r) {
    ASSIGN_OR_RETURN(auto t, run_once(2 + r));
    prefill.push_back(args.prompt_tokens / t.first);
    decode.push_back(args.decode_tokens / t.second);
  }

  // Bytes a decode step reads: every weight once (norm vectors included).
  size_t weight_bytes = 0;
  for (const std::string& name : weights->TensorNames()) {
    ASSIGN_OR_RETURN(TensorView v, weights->View(name));
    weight_bytes += v.ByteSize();
  }
  const ModelConfig& config = runner->config();
  const double mean_context = args.prompt_tokens + args.decode_tokens / 2.0;
  const double kv_bytes = 2.0 * config.num_hidden_layers * config.num_key_value_heads *
                          config.head_dim * 2 /* f16 */ * mean_context;

  nlohmann::json out;
  out["engine"] = "shardserve";
  out["backend"] = runner->backend().Name();
  out["activations"] = args.activations == ActivationMode::kQ8 ? "q8" : "f32";
  out["model"] = args.model;
  out["threads"] = args.threads;
  out["prompt_tokens"] = args.prompt_tokens;
  out["decode_tokens"] = args.decode_tokens;
  out["runs"] = args.runs;
  out["prefill_tok_s"] = Median(prefill);
  out["decode_tok_s"] = Median(decode);
  out["prefill_tok_s_runs"] = prefill;
  out["decode_tok_s_runs"] = decode;
  out["weight_bytes_per_token"] = weight_bytes;
  out["kv_bytes_per_token_at_mean_context"] = kv_bytes;
  out["memory_plan"] = runner->memory_plan().ToString();
  if (args.bandwidth) {
    out["read_bandwidth_gb_s_model_size"] = ReadBandwidth(weight_bytes, args.threads);
    out["read_bandwidth_gb_s_1gib"] = ReadBandwidth(size_t{1} << 30, args.threads);
  }
  std::printf("%s\n", out.dump(1).c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace shardserve

int main(int argc, char** argv) {
  const shardserve::Args args = shardserve::ParseArgs(argc, argv);
  const absl::Status status = shardserve::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
