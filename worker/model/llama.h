// The Llama decoder (also Mistral: sliding window, and every Llama-family config variant the
// config parser accepts: GQA, Llama-3 rope_scaling, tied or separate LM head, optional biases),
// written once against the backend op interface (worker/backend/backend.h).
//
// Tensor parallel (Megatron): rank r of w holds rows [r, r+1)/w of q/k/v (by heads; KV heads are
// replicated when there are fewer than ranks) and gate/up, the matching columns of o and down,
// and one all-reduce after each of those; the LM head is split by vocabulary rows and its logits
// all-gathered. The embedding table is read whole on every rank (a zero-copy view: only the
// rows looked up are touched). Weights are views into the mapped file: nothing is copied but
// the norm vectors. world_size 1 is the same code.
//
// Not thread-safe: the engine loop (or a single tool thread) calls Forward.
#ifndef SHARDSERVE_WORKER_MODEL_LLAMA_H_
#define SHARDSERVE_WORKER_MODEL_LLAMA_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/backend/backend.h"
#include "worker/dist/communicator.h"
#include "worker/engine/step_plan.h"
#include "worker/model/config.h"
#include "worker/weights/model_weights.h"

namespace shardserve {

// The rotary table of a config: rope_theta, rope_scaling ("llama3", "linear"; "dynamic" acts as
// none within the trained context) and GGUF `rope_freqs` factors (divide the frequencies, as
// llama.cpp does; they replace the llama3 formula when present). `interleaved`: adjacent pairs.
absl::StatusOr<RopeSpec> MakeRopeSpec(const ModelConfig& config, const float* rope_freqs,
                                      bool interleaved);

class LlamaModel {
 public:
  // `backend` and `comm` must outlive the model; `weights` too (views). max_step_tokens bounds
  // the tokens of one Forward. UNIMPLEMENTED for Mixtral; INVALID_ARGUMENT when heads cannot be
  // split over the ranks.
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Load(const ModelWeights& weights,
                                                          Backend* backend, Communicator* comm,
                                                          int max_step_tokens);

  // Bytes of the per-step buffers Load allocates.
  static size_t ActivationBytes(const ModelConfig& config, int max_step_tokens, int world_size);
  // Bytes of this rank's share of the weights as stored (mapped, not copied).
  static size_t WeightBytes(const ModelWeights& weights, int rank, int world_size);

  // The KV cache this rank needs for `num_blocks` blocks.
  KvCacheSpec KvSpec(int num_blocks, int block_tokens, DType dtype) const;
  // Bytes the backend copied (norm vectors, repacked matrices).
  size_t weight_copy_bytes() const { return copy_bytes_; }
  const ModelConfig& config() const { return config_; }

  // Runs `plan` (plan.num_tokens() <= max_step_tokens) and writes the logits of
  // plan.logit_rows to `logits` (host, rows x vocab).
  absl::Status Forward(const StepPlan& plan, KvCache& cache, std::vector<float>* logits);

 private:
  struct Layer {
    std::unique_ptr<BackendMatrix> q, k, v, o, gate, up, down;
    std::unique_ptr<DeviceBuffer> attn_norm, ffn_norm;
    std::unique_ptr<DeviceBuffer> q_bias, k_bias, v_bias, o_bias, gate_bias, up_bias,
        down_bias;  // null without biases; o/down biases only on rank 0
  };
  LlamaModel() = default;
  void AddBias(float* y, const DeviceBuffer* bias, int n, int dim);

  ModelConfig config_;
  Backend* backend_ = nullptr;
  Communicator* comm_ = nullptr;
  int max_step_tokens_ = 0;
  int heads_ = 0;     // this rank's query heads
  int kv_heads_ = 0;  // this rank's KV heads
  int head_dim_ = 0;
  int64_t inter_ = 0;  // this rank's intermediate size
  int64_t vocab_local_ = 0;
  RopeSpec rope_;
  std::unique_ptr<BackendMatrix> embedding_;
  std::unique_ptr<BackendMatrix> lm_head_;
  std::unique_ptr<DeviceBuffer> final_norm_;
  std::vector<Layer> layers_;
  size_t copy_bytes_ = 0;

  // Step buffers, sized for max_step_tokens.
  std::unique_ptr<DeviceBuffer> x_, h_, q_, k_, v_, attn_, o_, gate_, up_, rows_, logits_,
      gathered_;
  std::vector<float> host_logits_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_MODEL_LLAMA_H_
