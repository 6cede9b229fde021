// The engine loop: one thread that owns a ModelRunner (model, KV cache, batch) and turns queued
// generation requests into streamed outputs. Other threads (gRPC reactors, the CLI) call
// Submit / Cancel / Stats; results come back through each request's callback, invoked on the
// engine thread (it must not block).
//
// Each step the loop admits waiting requests while KV blocks allow (prefill in chunks of
// max_step_tokens), then advances every running sequence by one token (all in one StepPlan),
// samples, detokenizes, applies stop strings / EOS / max_tokens, and delivers outputs.
// A cancelled request stops before the next step and its blocks are freed.
#ifndef SHARDSERVE_WORKER_ENGINE_ENGINE_H_
#define SHARDSERVE_WORKER_ENGINE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/engine/model_runner.h"
#include "worker/engine/sampler.h"
#include "worker/text/tokenizer.h"

namespace shardserve {

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };

// "stop", "length", "cancelled", "error", "none" (OpenAI's finish_reason words).
const char* FinishReasonName(FinishReason reason);

struct GenerationRequest {
  std::string id;  // unique among live requests
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
  int max_tokens = 0;  // 0: until EOS, a stop string or the context length
  std::vector<std::string> stop;
  bool ignore_eos = false;
  absl::Time deadline = absl::InfiniteFuture();
};

struct GenerationTimings {
  double queue_seconds = 0;
  double time_to_first_token_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// One event of a request's stream. The last event has finish != kNone (and, for kError, a
// non-OK error); usage and timings are filled on it.
struct GenerationOutput {
  std::string text;                    // new text (may be empty while a stop string is pending)
  std::vector<int32_t> token_ids;      // new tokens
  std::vector<SampleResult> logprobs;  // per new token when sampling.logprobs
  FinishReason finish = FinishReason::kNone;
  absl::Status error;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  GenerationTimings timings;
};

using OutputCallback = std::function<void(GenerationOutput)>;

// One model step of the loop, as EngineOptions::on_step sees it.
struct StepInfo {
  double seconds = 0;      // wall time of the forward pass (ModelRunner::Step)
  int prefill_tokens = 0;  // prompt tokens in the step (recomputed ones after a preemption too)
  int decode_tokens = 0;   // sequences advancing by one generated token
  int sequences = 0;       // sequences in the step
  bool ok = true;          // false when the forward pass failed (its sequences end with kError)
};

struct EngineOptions {
  int max_running = 8;    // sequences decoding at once
  int max_waiting = 256;  // queued requests beyond which Submit is RESOURCE_EXHAUSTED
  // Called on the engine thread after every model step (not the warm-up in Start), before the
  // step's outputs are delivered. It must be cheap and must not block or call into the engine
  // (the worker records its metrics here). May be null.
  std::function<void(const StepInfo&)> on_step;
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int kv_block_tokens = 0;
  double decode_tokens_per_second = 0;  // recent average
  double prefill_tokens_per_second = 0;
  uint64_t steps = 0;
  uint64_t preemptions = 0;  // sequences evicted from the cache to be recomputed later
  double last_step_seconds = 0;
};

class Engine {
 public:
  // `tokenizer` must outlive the engine. `eos_ids` end generation (unless ignore_eos).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<ModelRunner> runner,
                                                        const Tokenizer* tokenizer,
                                                        std::vector<int32_t> eos_ids,
                                                        const EngineOptions& options);
  // Stops the loop; requests still live end with kCancelled.
  ~Engine();

  // Runs one step on a dummy sequence (the first step touches every weight page) and starts the
  // loop thread. Call once, before Submit.
  absl::Status Start();

  // Validates and queues. INVALID_ARGUMENT naming the field (empty prompt, bad sampling option,
  // negative max_tokens, duplicate id), RESOURCE_EXHAUSTED when prompt + max_tokens exceeds the
  // context length (the message gives the numbers) or the queue is full, FAILED_PRECONDITION
  // when not started. On error the callback is never called.
  absl::Status Submit(GenerationRequest request, OutputCallback on_output);
  // Ends the request with kCancelled within one step (no-op for an unknown or finished id).
  void Cancel(const std::string& id);

  EngineStats Stats() const;
  int64_t context_length() const;
  const ModelRunner& runner() const { return *runner_; }

 private:
  struct Sequence;
  Engine() = default;
  void Loop();

  std::unique_ptr<ModelRunner> runner_;
  const Tokenizer* tokenizer_ = nullptr;
  std::vector<int32_t> eos_ids_;
  EngineOptions options_;

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::unique_ptr<Sequence>> incoming_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> cancelled_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> live_ids_ ABSL_GUARDED_BY(mu_);
  EngineStats stats_ ABSL_GUARDED_BY(mu_);

  // Engine-thread state.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  int64_t next_seq_id_ = 1;
  uint64_t step_ = 0;

  std::thread thread_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_ENGINE_H_
