// One model ready to run: the backend, the model's layers on it, the KV cache memory and its
// block bookkeeping. It runs one StepPlan at a time and knows nothing of requests, sampling or
// threads: the engine loop (engine.h) owns one, and so do in-process tools (`shardserve run`,
// `shardserve perplexity`, the fidelity test).
//
// Not thread-safe: one thread at a time.
#ifndef SHARDSERVE_WORKER_ENGINE_MODEL_RUNNER_H_
#define SHARDSERVE_WORKER_ENGINE_MODEL_RUNNER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/backend/backend.h"
#include "worker/dist/communicator.h"
#include "worker/engine/kv_cache.h"
#include "worker/engine/step_plan.h"
#include "worker/model/config.h"
#include "worker/weights/model_weights.h"

namespace shardserve {

class LlamaModel;

struct RunnerOptions {
  int threads = 0;  // CPU threads; 0: one per core
  ActivationMode activations = ActivationMode::kQ8;
  DType kv_dtype = DType::kF16;
  int kv_block_tokens = 16;
  // Longest sequence (prompt + generated); 0: the model's max_position_embeddings.
  int64_t context_length = 0;
  // KV cache size in tokens over all sequences; 0: 4 x context_length.
  int64_t kv_cache_tokens = 0;
  // Most tokens one step runs (prefill chunk size).
  int max_step_tokens = 512;
  // Memory the plan may use; 0: MemAvailable from /proc/meminfo.
  size_t memory_limit_bytes = 0;
};

// What loading costs, decided before anything large is allocated.
struct MemoryPlan {
  size_t weight_bytes = 0;       // the weights as read (mapped file bytes)
  size_t weight_copy_bytes = 0;  // copies the backend makes (norm vectors, repacking, uploads)
  size_t kv_cache_bytes = 0;
  size_t activation_bytes = 0;  // step buffers for max_step_tokens
  size_t limit_bytes = 0;
  int64_t kv_cache_tokens = 0;
  size_t Total() const {
    return weight_bytes + weight_copy_bytes + kv_cache_bytes + activation_bytes;
  }
  // "weights 98.4 MiB + KV cache 753.0 MiB (32768 tokens, f16) + activations 12.1 MiB =
  //  863.5 MiB of 22.9 GiB available"
  std::string ToString() const;
};

class ModelRunner {
 public:
  // Loads the model onto a new CPU backend. RESOURCE_EXHAUSTED (with the memory plan in the
  // message) when the plan exceeds the limit; INVALID_ARGUMENT for options out of range.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      std::shared_ptr<const ModelWeights> weights, const RunnerOptions& options);
  // With a given backend and communicator (tensor parallel ranks; LocalComm for one).
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(
      std::shared_ptr<const ModelWeights> weights, const RunnerOptions& options,
      std::unique_ptr<Backend> backend, std::unique_ptr<Communicator> comm);
  ~ModelRunner();

  const ModelConfig& config() const;
  const ModelWeights& weights() const { return *weights_; }
  const RunnerOptions& options() const { return options_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  int64_t context_length() const { return context_length_; }
  int vocab_size() const;
  Backend& backend() { return *backend_; }
  KvBlockManager& blocks() { return *blocks_; }

  // Adds to `plan` the tokens [start_position, start_position + tokens.size()) of sequence
  // `seq` (reserving KV blocks for them: RESOURCE_EXHAUSTED when the cache is full, nothing
  // changed then). `logits`: none, the last token's, or every token's next-token logits.
  enum class Logits { kNone, kLast, kAll };
  absl::Status AddToPlan(int64_t seq, int64_t start_position, absl::Span<const int32_t> tokens,
                         Logits logits, StepPlan* plan);

  // Runs the forward pass of `plan`; `logits` gets plan.logit_rows.size() rows of vocab_size()
  // floats on the host.
  absl::Status Step(const StepPlan& plan, std::vector<float>* logits);

  // Teacher forcing: runs `tokens` as a fresh sequence in chunks of max_step_tokens and calls
  // on_logits(i, logits) with the next-token logits after tokens[i], for every i in order. Frees
  // the sequence's blocks at the end. INVALID_ARGUMENT when tokens exceed the context length.
  absl::Status Score(absl::Span<const int32_t> tokens,
                     const std::function<void(int64_t, const float*)>& on_logits);

 private:
  ModelRunner() = default;

  std::shared_ptr<const ModelWeights> weights_;
  RunnerOptions options_;
  MemoryPlan plan_;
  int64_t context_length_ = 0;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<KvCache> kv_cache_;
  std::unique_ptr<KvBlockManager> blocks_;
  std::unique_ptr<LlamaModel> model_;
  int64_t next_scratch_seq_ = -1;  // ids for Score()'s sequences (negative: never a request's)
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ENGINE_MODEL_RUNNER_H_
