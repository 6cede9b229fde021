#include "worker/model/llama.h"

#include <cmath>
#include <numbers>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace shardserve {
namespace {

std::string LayerName(int layer, absl::string_view suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

// This rank's share [begin, end) of `total` items in `world` equal parts.
std::pair<int64_t, int64_t> Share(int64_t total, int rank, int world) {
  const int64_t part = total / world;
  return {part * rank, part * (rank + 1)};
}

struct Split {
  int heads = 0, kv_heads = 0;
  int64_t q_begin = 0, kv_begin = 0;  // first head of this rank
  int64_t inter_begin = 0, inter = 0;
  int64_t vocab_begin = 0, vocab = 0;
};

absl::StatusOr<Split> MakeSplit(const ModelConfig& c, int rank, int world) {
  Split s;
  if (c.num_attention_heads % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads ", c.num_attention_heads,
                                                   " cannot be split over ", world, " ranks"));
  }
  if (c.intermediate_size % world != 0) {
    return absl::InvalidArgumentError(absl::StrCat("intermediate_size ", c.intermediate_size,
                                                   " cannot be split over ", world, " ranks"));
  }
  s.heads = static_cast<int>(c.num_attention_heads / world);
  s.q_begin = s.heads * rank;
  if (c.num_key_value_heads >= world) {
    if (c.num_key_value_heads % world != 0) {
      return absl::InvalidArgumentError(absl::StrCat("num_key_value_heads ", c.num_key_value_heads,
                                                     " cannot be split over ", world, " ranks"));
    }
    s.kv_heads = static_cast<int>(c.num_key_value_heads / world);
    s.kv_begin = s.kv_heads * rank;
  } else {
    // Fewer KV heads than ranks: each rank keeps the one KV head its query heads read.
    const int64_t group = c.num_attention_heads / c.num_key_value_heads;
    if (s.heads > group || group % s.heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat("num_key_value_heads ", c.num_key_value_heads,
                                                     " cannot be replicated over ", world,
                                                     " ranks"));
    }
    s.kv_heads = 1;
    s.kv_begin = s.q_begin / group;
  }
  std::tie(s.inter_begin, std::ignore) = Share(c.intermediate_size, rank, world);
  s.inter = c.intermediate_size / world;
  if (c.vocab_size % world == 0) {
    s.vocab = c.vocab_size / world;
    s.vocab_begin = s.vocab * rank;
  } else {
    s.vocab = c.vocab_size;  // replicated LM head; only rank 0's logits are used
  }
  return s;
}

}  // namespace

absl::StatusOr<RopeSpec> MakeRopeSpec(const ModelConfig& config, const float* rope_freqs,
                                      bool interleaved) {
  RopeSpec rope;
  rope.head_dim = static_cast<int>(config.head_dim);
  rope.rotary_dim = rope.head_dim;
  rope.interleaved = interleaved;
  const int pairs = rope.rotary_dim / 2;
  const RopeScaling& scaling = config.rope_scaling;
  for (int i = 0; i < pairs; ++i) {
    double inv = std::pow(config.rope_theta, -2.0 * i / rope.rotary_dim);
    if (rope_freqs != nullptr) {
      inv /= rope_freqs[i];
    } else if (scaling.type == "llama3") {
      const double old_ctx = static_cast<double>(scaling.original_max_position_embeddings);
      const double low_wavelen = old_ctx / scaling.low_freq_factor;
      const double high_wavelen = old_ctx / scaling.high_freq_factor;
      const double wavelen = 2 * std::numbers::pi / inv;
      if (wavelen > low_wavelen) {
        inv /= scaling.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        inv = (1 - smooth) * inv / scaling.factor + smooth * inv;
      }
    } else if (scaling.type == "linear") {
      inv /= scaling.factor;
    } else if (!scaling.type.empty() && scaling.type != "dynamic") {
      return absl::UnimplementedError(
          absl::StrCat("rope_scaling type '", scaling.type, "' is not supported"));
    }
    rope.inv_freq.push_back(static_cast<float>(inv));
  }
  return rope;
}

size_t LlamaModel::ActivationBytes(const ModelConfig& c, int max_step_tokens, int world_size) {
  const size_t t = static_cast<size_t>(max_step_tokens);
  const size_t hidden = static_cast<size_t>(c.hidden_size);
  const size_t q = static_cast<size_t>(c.num_attention_heads * c.head_dim) / world_size;
  const size_t kv =
      static_cast<size_t>(std::max<int64_t>(1, c.num_key_value_heads / world_size) * c.head_dim);
  const size_t inter = static_cast<size_t>(c.intermediate_size) / world_size;
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  // x, h, o, rows; q, attn; k, v; gate, up; logits (local + gathered).
  const size_t floats = t * (4 * hidden + 2 * q + 2 * kv + 2 * inter) +
                        t * (vocab / world_size + (world_size > 1 ? vocab : 0));
  return floats * sizeof(float);
}

size_t LlamaModel::WeightBytes(const ModelWeights& weights, int /*rank*/, int world_size) {
  size_t total = 0;
  for (const std::string& name : weights.TensorNames()) {
    absl::StatusOr<TensorView> view = weights.View(name);
    if (view.ok()) total += view->ByteSize();
  }
  return world_size > 1 ? total / world_size : total;
}

KvCacheSpec LlamaModel::KvSpec(int num_blocks, int block_tokens, DType dtype) const {
  KvCacheSpec spec;
  spec.layers = static_cast<int>(config_.num_hidden_layers);
  spec.num_blocks = num_blocks;
  spec.block_tokens = block_tokens;
  spec.kv_heads = kv_heads_;
  spec.head_dim = head_dim_;
  spec.dtype = dtype;
  return spec;
}

absl::StatusOr<std::unique_ptr<LlamaModel>> LlamaModel::Load(const ModelWeights& weights,
                                                             Backend* backend, Communicator* comm,
                                                             int max_step_tokens) {
  const ModelConfig& c = weights.config();
  if (c.architecture == Architecture::kMixtral) {
    return absl::UnimplementedError(
        absl::StrCat(weights.path(), ": Mixtral (mixture of experts) is not supported yet"));
  }
  if (max_step_tokens <= 0) {
    return absl::InvalidArgumentError("max_step_tokens must be positive");
  }
  const int rank = comm->rank();
  const int world = comm->world_size();
  ASSIGN_OR_RETURN(Split split, MakeSplit(c, rank, world));

  auto model = std::unique_ptr<LlamaModel>(new LlamaModel());
  model->config_ = c;
  model->backend_ = backend;
  model->comm_ = comm;
  model->max_step_tokens_ = max_step_tokens;
  model->heads_ = split.heads;
  model->kv_heads_ = split.kv_heads;
  model->head_dim_ = static_cast<int>(c.head_dim);
  model->inter_ = split.inter;
  model->vocab_local_ = split.vocab;
  const int64_t hd = c.head_dim;

  auto view = [&](const std::string& name) { return weights.View(name); };
  auto matrix = [&](const TensorView& v) -> absl::StatusOr<std::unique_ptr<BackendMatrix>> {
    return backend->PrepareMatrix(v);
  };
  auto vector = [&](const TensorView& v) -> absl::StatusOr<std::unique_ptr<DeviceBuffer>> {
    ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buffer, backend->PrepareVector(v));
    model->copy_bytes_ += buffer->bytes();
    return buffer;
  };
  // Rows [begin, end) of a 1-D or 2-D tensor (column-parallel slice), whole when world == 1.
  auto rows = [&](const std::string& name, int64_t begin,
                  int64_t end) -> absl::StatusOr<TensorView> {
    ASSIGN_OR_RETURN(TensorView v, view(name));
    if (world == 1) return v;
    return v.RowRange(begin, end);
  };
  auto columns = [&](const std::string& name, int64_t begin,
                     int64_t end) -> absl::StatusOr<TensorView> {
    ASSIGN_OR_RETURN(TensorView v, view(name));
    if (world == 1) return v;
    return v.ColumnRange(begin, end);
  };

  const int64_t q_begin = split.q_begin * hd, q_end = (split.q_begin + split.heads) * hd;
  const int64_t kv_begin = split.kv_begin * hd, kv_end = (split.kv_begin + split.kv_heads) * hd;
  const int64_t i_begin = split.inter_begin, i_end = split.inter_begin + split.inter;

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    Layer layer;
    ASSIGN_OR_RETURN(TensorView q, rows(LayerName(l, "self_attn.q_proj.weight"), q_begin, q_end));
    ASSIGN_OR_RETURN(layer.q, matrix(q));
    ASSIGN_OR_RETURN(TensorView k, rows(LayerName(l, "self_attn.k_proj.weight"), kv_begin, kv_end));
    ASSIGN_OR_RETURN(layer.k, matrix(k));
    ASSIGN_OR_RETURN(TensorView v, rows(LayerName(l, "self_attn.v_proj.weight"), kv_begin, kv_end));
    ASSIGN_OR_RETURN(layer.v, matrix(v));
    ASSIGN_OR_RETURN(TensorView o,
                     columns(LayerName(l, "self_attn.o_proj.weight"), q_begin, q_end));
    ASSIGN_OR_RETURN(layer.o, matrix(o));
    ASSIGN_OR_RETURN(TensorView gate, rows(LayerName(l, "mlp.gate_proj.weight"), i_begin, i_end));
    ASSIGN_OR_RETURN(layer.gate, matrix(gate));
    ASSIGN_OR_RETURN(TensorView up, rows(LayerName(l, "mlp.up_proj.weight"), i_begin, i_end));
    ASSIGN_OR_RETURN(layer.up, matrix(up));
    ASSIGN_OR_RETURN(TensorView down,
                     columns(LayerName(l, "mlp.down_proj.weight"), i_begin, i_end));
    ASSIGN_OR_RETURN(layer.down, matrix(down));
    ASSIGN_OR_RETURN(TensorView attn_norm, view(LayerName(l, "input_layernorm.weight")));
    ASSIGN_OR_RETURN(layer.attn_norm, vector(attn_norm));
    ASSIGN_OR_RETURN(TensorView ffn_norm, view(LayerName(l, "post_attention_layernorm.weight")));
    ASSIGN_OR_RETURN(layer.ffn_norm, vector(ffn_norm));
    if (c.attention_bias) {
      ASSIGN_OR_RETURN(TensorView qb, rows(LayerName(l, "self_attn.q_proj.bias"), q_begin, q_end));
      ASSIGN_OR_RETURN(layer.q_bias, vector(qb));
      ASSIGN_OR_RETURN(TensorView kb,
                       rows(LayerName(l, "self_attn.k_proj.bias"), kv_begin, kv_end));
      ASSIGN_OR_RETURN(layer.k_bias, vector(kb));
      ASSIGN_OR_RETURN(TensorView vb,
                       rows(LayerName(l, "self_attn.v_proj.bias"), kv_begin, kv_end));
      ASSIGN_OR_RETURN(layer.v_bias, vector(vb));
      if (rank == 0) {
        ASSIGN_OR_RETURN(TensorView ob, view(LayerName(l, "self_attn.o_proj.bias")));
        ASSIGN_OR_RETURN(layer.o_bias, vector(ob));
      }
    }
    if (c.mlp_bias) {
      ASSIGN_OR_RETURN(TensorView gb, rows(LayerName(l, "mlp.gate_proj.bias"), i_begin, i_end));
      ASSIGN_OR_RETURN(layer.gate_bias, vector(gb));
      ASSIGN_OR_RETURN(TensorView ub, rows(LayerName(l, "mlp.up_proj.bias"), i_begin, i_end));
      ASSIGN_OR_RETURN(layer.up_bias, vector(ub));
      if (rank == 0) {
        ASSIGN_OR_RETURN(TensorView db, view(LayerName(l, "mlp.down_proj.bias")));
        ASSIGN_OR_RETURN(layer.down_bias, vector(db));
      }
    }
    model->layers_.push_back(std::move(layer));
  }

  ASSIGN_OR_RETURN(TensorView embedding, view("model.embed_tokens.weight"));
  ASSIGN_OR_RETURN(model->embedding_, matrix(embedding));
  ASSIGN_OR_RETURN(TensorView final_norm, view("model.norm.weight"));
  ASSIGN_OR_RETURN(model->final_norm_, vector(final_norm));
  const std::string head_name = c.tie_word_embeddings || !weights.Has("lm_head.weight")
                                    ? "model.embed_tokens.weight"
                                    : "lm_head.weight";
  ASSIGN_OR_RETURN(TensorView head_all, view(head_name));
  TensorView head = head_all;
  if (world > 1 && split.vocab != c.vocab_size) {
    ASSIGN_OR_RETURN(head, head_all.RowRange(split.vocab_begin, split.vocab_begin + split.vocab));
  }
  ASSIGN_OR_RETURN(model->lm_head_, matrix(head));

  std::vector<float> rope_freqs;
  if (weights.Has("rope_freqs.weight")) {
    ASSIGN_OR_RETURN(rope_freqs, weights.DequantizeF32("rope_freqs.weight"));
    if (static_cast<int64_t>(rope_freqs.size()) != c.head_dim / 2) {
      return absl::InvalidArgumentError(absl::StrCat(weights.path(), ": rope_freqs.weight has ",
                                                     rope_freqs.size(), " values, expected ",
                                                     c.head_dim / 2));
    }
  }
  ASSIGN_OR_RETURN(model->rope_, MakeRopeSpec(c, rope_freqs.empty() ? nullptr : rope_freqs.data(),
                                              weights.QkRowsInterleaved()));

  for (const Layer& layer : model->layers_) {
    for (const BackendMatrix* m : {layer.q.get(), layer.k.get(), layer.v.get(), layer.o.get(),
                                   layer.gate.get(), layer.up.get(), layer.down.get()}) {
      model->copy_bytes_ += m->device_bytes();
    }
  }
  model->copy_bytes_ += model->embedding_->device_bytes() + model->lm_head_->device_bytes();

  // Step buffers.
  const size_t t = static_cast<size_t>(max_step_tokens);
  auto alloc = [&](size_t floats) { return backend->Allocate(std::max<size_t>(1, floats) * 4); };
  const size_t hidden = static_cast<size_t>(c.hidden_size);
  ASSIGN_OR_RETURN(model->x_, alloc(t * hidden));
  ASSIGN_OR_RETURN(model->h_, alloc(t * hidden));
  ASSIGN_OR_RETURN(model->o_, alloc(t * hidden));
  ASSIGN_OR_RETURN(model->rows_, alloc(t * hidden));
  ASSIGN_OR_RETURN(model->q_, alloc(t * split.heads * hd));
  ASSIGN_OR_RETURN(model->attn_, alloc(t * split.heads * hd));
  ASSIGN_OR_RETURN(model->k_, alloc(t * split.kv_heads * hd));
  ASSIGN_OR_RETURN(model->v_, alloc(t * split.kv_heads * hd));
  ASSIGN_OR_RETURN(model->gate_, alloc(t * split.inter));
  ASSIGN_OR_RETURN(model->up_, alloc(t * split.inter));
  ASSIGN_OR_RETURN(model->logits_, alloc(t * split.vocab));
  if (world > 1) {
    ASSIGN_OR_RETURN(model->gathered_, alloc(t * c.vocab_size));
  }
  return model;
}

void LlamaModel::AddBias(float* y, const DeviceBuffer* bias, int n, int dim) {
  if (bias == nullptr) return;
  const float* b = static_cast<const float*>(const_cast<DeviceBuffer*>(bias)->data());
  for (int i = 0; i < n; ++i)
    backend_->Add(y + static_cast<int64_t>(i) * dim, b, dim, y + static_cast<int64_t>(i) * dim);
}

absl::Status LlamaModel::Forward(const StepPlan& plan, KvCache& cache, std::vector<float>* logits) {
  const int n = plan.num_tokens();
  if (n == 0 || n > max_step_tokens_) {
    return absl::InvalidArgumentError(
        absl::StrCat("step of ", n, " tokens (1..", max_step_tokens_, " allowed)"));
  }
  const int rows = static_cast<int>(plan.logit_rows.size());
  for (int32_t row : plan.logit_rows) {
    if (row < 0 || row >= n) {
      return absl::InvalidArgumentError(absl::StrCat("logit row ", row, " outside the step"));
    }
  }
  for (int32_t id : plan.token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " outside the vocabulary of ", config_.vocab_size));
    }
  }
  const int hidden = static_cast<int>(config_.hidden_size);
  const int q_dim = heads_ * head_dim_;
  const int kv_dim = kv_heads_ * head_dim_;
  const int inter = static_cast<int>(inter_);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim_));
  float* x = x_->f32();
  float* h = h_->f32();
  float* q = q_->f32();
  float* k = k_->f32();
  float* v = v_->f32();
  float* attn = attn_->f32();
  float* o = o_->f32();
  float* gate = gate_->f32();
  float* up = up_->f32();

  AttentionBatch batch;
  batch.num_tokens = n;
  batch.positions = plan.positions.data();
  batch.num_seqs = plan.num_seqs();
  batch.seq_start = plan.seq_start.data();
  batch.context_len = plan.context_len.data();
  batch.block_tables = plan.block_tables.data();
  batch.max_blocks_per_seq = plan.max_blocks_per_seq;
  batch.sliding_window = static_cast<int>(config_.sliding_window);

  backend_->Embedding(*embedding_, plan.token_ids.data(), n, x);
  for (size_t l = 0; l < layers_.size(); ++l) {
    Layer& layer = layers_[l];
    backend_->RmsNorm(x, layer.attn_norm->f32(), n, hidden, eps, h);
    const MatmulOutput qkv[] = {{layer.q.get(), q}, {layer.k.get(), k}, {layer.v.get(), v}};
    backend_->Matmul(h, n, qkv);
    AddBias(q, layer.q_bias.get(), n, q_dim);
    AddBias(k, layer.k_bias.get(), n, kv_dim);
    AddBias(v, layer.v_bias.get(), n, kv_dim);
    backend_->Rope(q, n, heads_, plan.positions.data(), rope_);
    backend_->Rope(k, n, kv_heads_, plan.positions.data(), rope_);
    backend_->WriteKv(cache, static_cast<int>(l), k, v, n, plan.slots.data());
    backend_->Attention(cache, static_cast<int>(l), q, heads_, scale, batch, attn);
    const MatmulOutput out[] = {{layer.o.get(), o}};
    backend_->Matmul(attn, n, out);
    RETURN_IF_ERROR(comm_->AllReduceSum(o, static_cast<size_t>(n) * hidden));
    AddBias(o, layer.o_bias.get(), n, hidden);
    backend_->Add(x, o, static_cast<int64_t>(n) * hidden, x);

    backend_->RmsNorm(x, layer.ffn_norm->f32(), n, hidden, eps, h);
    const MatmulOutput gate_up[] = {{layer.gate.get(), gate}, {layer.up.get(), up}};
    backend_->Matmul(h, n, gate_up);
    AddBias(gate, layer.gate_bias.get(), n, inter);
    AddBias(up, layer.up_bias.get(), n, inter);
    backend_->SiluMul(gate, up, static_cast<int64_t>(n) * inter, gate);
    const MatmulOutput down[] = {{layer.down.get(), o}};
    backend_->Matmul(gate, n, down);
    RETURN_IF_ERROR(comm_->AllReduceSum(o, static_cast<size_t>(n) * hidden));
    AddBias(o, layer.down_bias.get(), n, hidden);
    backend_->Add(x, o, static_cast<int64_t>(n) * hidden, x);
  }

  logits->clear();
  if (rows == 0) {
    backend_->Synchronize();
    return absl::OkStatus();
  }
  float* selected = rows_->f32();
  backend_->GatherRows(x, plan.logit_rows.data(), rows, hidden, selected);
  backend_->RmsNorm(selected, final_norm_->f32(), rows, hidden, eps, selected);
  const MatmulOutput head[] = {{lm_head_.get(), logits_->f32()}};
  backend_->Matmul(selected, rows, head);

  const int64_t vocab = config_.vocab_size;
  logits->resize(static_cast<size_t>(rows) * vocab);
  const int world = comm_->world_size();
  if (world == 1 || vocab_local_ == vocab) {
    backend_->CopyToHost(logits->data(), logits_->data(), logits->size() * sizeof(float));
  } else {
    // gathered is [world][rows][vocab_local]; logits rows are [rows][vocab].
    const size_t local = static_cast<size_t>(rows) * vocab_local_;
    RETURN_IF_ERROR(comm_->AllGather(logits_->f32(), local, gathered_->f32()));
    host_logits_.resize(local * world);
    backend_->CopyToHost(host_logits_.data(), gathered_->data(), local * world * sizeof(float));
    for (int r = 0; r < world; ++r) {
      for (int i = 0; i < rows; ++i) {
        std::copy_n(host_logits_.data() + r * local + i * vocab_local_, vocab_local_,
                    logits->data() + i * vocab + r * vocab_local_);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace shardserve
