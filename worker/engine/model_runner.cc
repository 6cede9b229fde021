#include "worker/engine/model_runner.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/model/llama.h"

namespace shardserve {
namespace {

std::string Bytes(size_t bytes) {
  const double b = static_cast<double>(bytes);
  if (b >= 1024.0 * 1024 * 1024) return absl::StrFormat("%.1f GiB", b / (1024.0 * 1024 * 1024));
  return absl::StrFormat("%.1f MiB", b / (1024.0 * 1024));
}

// MemAvailable from /proc/meminfo, 0 when unknown.
size_t AvailableMemory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return 0;
}

}  // namespace

std::string MemoryPlan::ToString() const {
  return absl::StrCat(
      "weights ", Bytes(weight_bytes),
      weight_copy_bytes ? absl::StrCat(" (+", Bytes(weight_copy_bytes), " copied)") : std::string(),
      " + KV cache ", Bytes(kv_cache_bytes), " (", kv_cache_tokens, " tokens) + activations ",
      Bytes(activation_bytes), " = ", Bytes(Total()),
      limit_bytes ? absl::StrCat(" of ", Bytes(limit_bytes), " available") : std::string());
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    std::shared_ptr<const ModelWeights> weights, const RunnerOptions& options) {
  CpuBackendOptions cpu;
  cpu.threads = options.threads;
  cpu.activations = options.activations;
  ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateCpuBackend(cpu));
  return Create(std::move(weights), options, std::move(backend), std::make_unique<LocalComm>());
}

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(
    std::shared_ptr<const ModelWeights> weights, const RunnerOptions& options,
    std::unique_ptr<Backend> backend, std::unique_ptr<Communicator> comm) {
  const ModelConfig& config = weights->config();
  if (options.kv_block_tokens <= 0 || options.kv_block_tokens > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_block_tokens ", options.kv_block_tokens, " (1..1024 allowed)"));
  }
  if (options.max_step_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_step_tokens ", options.max_step_tokens, " must be positive"));
  }
  if (options.kv_dtype != DType::kF16 && options.kv_dtype != DType::kF32) {
    return absl::InvalidArgumentError("kv_dtype must be f16 or f32");
  }
  if (options.context_length < 0 || options.kv_cache_tokens < 0) {
    return absl::InvalidArgumentError("context_length and kv_cache_tokens must not be negative");
  }
  int64_t context = options.context_length;
  const int64_t trained = config.max_position_embeddings;
  if (context == 0) context = trained > 0 ? trained : 4096;
  if (trained > 0 && context > trained) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context_length ", context, " exceeds the model's max_position_embeddings ", trained));
  }
  int64_t kv_tokens = options.kv_cache_tokens > 0 ? options.kv_cache_tokens : 4 * context;
  const int64_t num_blocks64 = (kv_tokens + options.kv_block_tokens - 1) / options.kv_block_tokens;
  if (num_blocks64 > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("kv_cache_tokens ", kv_tokens, " too large"));
  }
  const int num_blocks = static_cast<int>(num_blocks64);

  auto runner = std::unique_ptr<ModelRunner>(new ModelRunner());
  runner->weights_ = std::move(weights);
  runner->options_ = options;
  runner->context_length_ = context;

  // The plan, before anything large is allocated.
  MemoryPlan& plan = runner->plan_;
  plan.weight_bytes = LlamaModel::WeightBytes(*runner->weights_, comm->rank(), comm->world_size());
  plan.activation_bytes =
      LlamaModel::ActivationBytes(config, options.max_step_tokens, comm->world_size());
  KvCacheSpec spec;
  spec.layers = static_cast<int>(config.num_hidden_layers);
  spec.num_blocks = num_blocks;
  spec.block_tokens = options.kv_block_tokens;
  spec.kv_heads =
      static_cast<int>(std::max<int64_t>(1, config.num_key_value_heads / comm->world_size()));
  spec.head_dim = static_cast<int>(config.head_dim);
  spec.dtype = options.kv_dtype;
  plan.kv_cache_bytes = spec.TotalBytes();
  plan.kv_cache_tokens = static_cast<int64_t>(num_blocks) * options.kv_block_tokens;
  plan.limit_bytes = options.memory_limit_bytes ? options.memory_limit_bytes : AvailableMemory();
  if (plan.limit_bytes != 0 && plan.Total() > plan.limit_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(runner->weights_->path(),
                                                     ": the model does not fit: ", plan.ToString(),
                                                     "; lower context_length or kv_cache_tokens"));
  }

  runner->backend_ = std::move(backend);
  runner->comm_ = std::move(comm);
  ASSIGN_OR_RETURN(runner->model_, LlamaModel::Load(*runner->weights_, runner->backend_.get(),
                                                    runner->comm_.get(), options.max_step_tokens));
  plan.weight_copy_bytes = runner->model_->weight_copy_bytes();
  ASSIGN_OR_RETURN(runner->kv_cache_, runner->backend_->CreateKvCache(runner->model_->KvSpec(
                                          num_blocks, options.kv_block_tokens, options.kv_dtype)));
  runner->blocks_ = std::make_unique<KvBlockManager>(num_blocks, options.kv_block_tokens);
  return runner;
}

ModelRunner::~ModelRunner() = default;

const ModelConfig& ModelRunner::config() const { return weights_->config(); }

int ModelRunner::vocab_size() const { return static_cast<int>(weights_->config().vocab_size); }

absl::Status ModelRunner::AddToPlan(int64_t seq, int64_t start_position,
                                    absl::Span<const int32_t> tokens, Logits logits,
                                    StepPlan* plan) {
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to add to the step");
  const int64_t end = start_position + static_cast<int64_t>(tokens.size());
  if (start_position < 0 || end > context_length_) {
    return absl::InvalidArgumentError(absl::StrCat("positions [", start_position, ", ", end,
                                                   ") outside the context of ", context_length_));
  }
  if (plan->num_tokens() + static_cast<int64_t>(tokens.size()) > options_.max_step_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("step would exceed max_step_tokens ", options_.max_step_tokens));
  }
  RETURN_IF_ERROR(blocks_->Reserve(seq, end));
  const std::vector<int32_t>& table = blocks_->BlockTable(seq);

  if (plan->seq_start.empty()) plan->seq_start.push_back(0);
  const int first = plan->num_tokens();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t position = start_position + static_cast<int64_t>(i);
    plan->token_ids.push_back(tokens[i]);
    plan->positions.push_back(static_cast<int32_t>(position));
    plan->slots.push_back(blocks_->Slot(seq, position));
  }
  plan->seq_ids.push_back(seq);
  plan->seq_start.push_back(plan->num_tokens());
  plan->context_len.push_back(static_cast<int32_t>(end));

  // Block tables are a dense [num_seqs x max_blocks_per_seq] matrix: widen it when needed.
  const int needed = blocks_->BlocksFor(end);
  const int seqs_before = plan->num_seqs() - 1;
  if (needed > plan->max_blocks_per_seq) {
    std::vector<int32_t> wider(static_cast<size_t>(seqs_before) * needed, -1);
    for (int s = 0; s < seqs_before; ++s) {
      std::copy_n(plan->block_tables.begin() + s * plan->max_blocks_per_seq,
                  plan->max_blocks_per_seq, wider.begin() + s * needed);
    }
    plan->block_tables = std::move(wider);
    plan->max_blocks_per_seq = needed;
  }
  for (int b = 0; b < plan->max_blocks_per_seq; ++b) {
    plan->block_tables.push_back(b < needed ? table[b] : -1);
  }

  if (logits == Logits::kLast) {
    plan->logit_rows.push_back(plan->num_tokens() - 1);
  } else if (logits == Logits::kAll) {
    for (int t = first; t < plan->num_tokens(); ++t) plan->logit_rows.push_back(t);
  }
  return absl::OkStatus();
}

absl::Status ModelRunner::Step(const StepPlan& plan, std::vector<float>* logits) {
  return model_->Forward(plan, *kv_cache_, logits);
}

absl::Status ModelRunner::Score(absl::Span<const int32_t> tokens,
                                const std::function<void(int64_t, const float*)>& on_logits) {
  if (static_cast<int64_t>(tokens.size()) > context_length_) {
    return absl::InvalidArgumentError(
        absl::StrCat(tokens.size(), " tokens exceed the context of ", context_length_));
  }
  const int64_t seq = next_scratch_seq_--;
  absl::Status status;
  std::vector<float> logits;
  const int vocab = vocab_size();
  for (size_t start = 0; start < tokens.size() && status.ok(); start += options_.max_step_tokens) {
    const size_t count = std::min<size_t>(options_.max_step_tokens, tokens.size() - start);
    StepPlan plan;
    status = AddToPlan(seq, static_cast<int64_t>(start), tokens.subspan(start, count), Logits::kAll,
                       &plan);
    if (!status.ok()) break;
    status = Step(plan, &logits);
    if (!status.ok()) break;
    for (size_t i = 0; i < count; ++i) {
      on_logits(static_cast<int64_t>(start + i), logits.data() + i * vocab);
    }
  }
  blocks_->Free(seq);
  return status;
}

}  // namespace shardserve
