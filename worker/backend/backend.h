// The op interface the model is written against. One implementation per device family:
// backend/cpu (the reference every other backend is tested against, op by op) and later
// backend/cuda. The model (worker/model) never touches memory or kernels directly.
//
// Memory: activations live in buffers from Allocate() ("device memory": host memory on the CPU
// backend, GPU memory on CUDA). Op arguments named `x`, `y`, `out`, ... are pointers into such
// buffers; row-major, rows contiguous. Integer metadata of a step (token ids, positions, cache
// slots, block tables) is passed as host pointers / host structs: a device backend uploads it
// itself. Ops are issued from one thread (the engine loop); they may run asynchronously and
// Synchronize() waits for all of them. Hot-path ops return void: shapes are checked once, when a
// matrix or cache is prepared, and an op called outside its contract is a programming error.
#ifndef SHARDSERVE_WORKER_BACKEND_BACKEND_H_
#define SHARDSERVE_WORKER_BACKEND_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "worker/weights/dtype.h"
#include "worker/weights/tensor.h"

namespace shardserve {

// How a matmul with GGML block-quantized weights (Q8_0, Q4_0, Q4_1) treats its activations.
// Other weight types, hub_sync's int8 / int4 / nf4 artifacts included, always multiply f32
// activations (kF32's arithmetic) in either mode.
enum class ActivationMode {
  // f32 activations times weights dequantized on the fly, f32 accumulation: the arithmetic of
  // HF transformers in f32 on the dequantized weights.
  kF32,
  // Activations quantized per block of 32 as llama.cpp does (Q8_1 for Q4_1 weights, Q8_0 for
  // Q4_0 and Q8_0 weights), integer dot products per block, f32 accumulation across blocks: the
  // arithmetic of llama.cpp's CPU backend, and the fast path.
  kQ8,
};

// RAII memory in the backend's address space.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
  float* f32() { return static_cast<float*>(data()); }
};

// A 2-D weight [rows = out_features, cols = in_features] prepared for Matmul / Embedding. On CPU
// it is the (possibly strided) view into the mmap'd file, or a repacked copy; it must not outlive
// the file the view came from.
class BackendMatrix {
 public:
  virtual ~BackendMatrix() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t cols() const = 0;
  virtual DType dtype() const = 0;
  // Bytes the prepared weight occupies in device memory (0 when it is the mapped file itself).
  virtual size_t device_bytes() const = 0;
};

// Paged KV cache for all layers: per layer K and V, each [num_blocks, block_tokens, kv_heads,
// head_dim]. Cache slot s of a layer is token (s % block_tokens) of block (s / block_tokens).
struct KvCacheSpec {
  int layers = 0;
  int num_blocks = 0;
  int block_tokens = 16;
  int kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF16;  // kF16 or kF32

  size_t BytesPerBlock() const;  // K and V, all layers
  size_t TotalBytes() const { return BytesPerBlock() * static_cast<size_t>(num_blocks); }
};

class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual const KvCacheSpec& spec() const = 0;
};

// Rotary embedding, precomputed once per model: inv_freq[i] for i in [0, rotary_dim / 2), with
// rope_theta, Llama-3 rope_scaling and GGUF rope_freqs already applied. The angle of pair i at
// position p is p * inv_freq[i] (computed in double, then cos/sin to float).
struct RopeSpec {
  int head_dim = 0;
  int rotary_dim = 0;  // == head_dim for Llama / Mistral
  // true: pairs are adjacent elements (2i, 2i+1) (GGUF's permuted Q/K rows, llama.cpp mode 0);
  // false: pairs are (i, i + rotary_dim/2) (HF "rotate_half", NeoX).
  bool interleaved = false;
  std::vector<float> inv_freq;
  float attention_scaling = 1.0f;  // multiplies cos and sin (1 for Llama / Mistral)
};

// What one attention call covers: the step's tokens grouped by sequence (host memory).
// Token t of sequence s has absolute position positions[t] and was written to the cache slot
// slots[t] (WriteKv runs before Attention). Sequence s covers tokens [seq_start[s],
// seq_start[s+1]) of the step and, after this step, context_len[s] tokens in the cache, in the
// blocks block_tables[s * max_blocks_per_seq + 0 ..]. Token t attends to cache positions
// [max(0, positions[t] - window + 1), positions[t]] of its sequence (window 0 = unlimited).
struct AttentionBatch {
  int num_tokens = 0;
  const int32_t* positions = nullptr;
  int num_seqs = 0;
  const int32_t* seq_start = nullptr;     // [num_seqs + 1]
  const int32_t* context_len = nullptr;   // [num_seqs]
  const int32_t* block_tables = nullptr;  // [num_seqs * max_blocks_per_seq]
  int max_blocks_per_seq = 0;
  int sliding_window = 0;
};

// One output of a fused matmul: y[n, w.rows()] = x[n, w.cols()] · wᵀ.
struct MatmulOutput {
  const BackendMatrix* w = nullptr;
  float* y = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu (avx512, 2 threads)".
  virtual std::string Name() const = 0;

  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> Allocate(size_t bytes) = 0;
  virtual void CopyToDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void CopyToHost(void* dst, const void* src, size_t bytes) = 0;
  virtual void Synchronize() = 0;

  // Prepares a 2-D weight. INVALID_ARGUMENT naming the tensor for a shape that is not 2-D and
  // UNIMPLEMENTED for a dtype the backend cannot multiply.
  virtual absl::StatusOr<std::unique_ptr<BackendMatrix>> PrepareMatrix(const TensorView& w) = 0;
  // A 1-D f32 copy of a vector weight (norms), in device memory. Any dtype DequantizeRow reads.
  virtual absl::StatusOr<std::unique_ptr<DeviceBuffer>> PrepareVector(const TensorView& v) = 0;
  // RESOURCE_EXHAUSTED when the memory cannot be had.
  virtual absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheSpec& spec) = 0;

  // out[i, :] = row ids[i] of `table` as f32 (dequantized exactly).
  virtual void Embedding(const BackendMatrix& table, const int32_t* ids, int n, float* out) = 0;

  // For each output o: o.y[n, o.w->rows()] = x[n, cols] · o.w ᵀ. All outputs share x (and its
  // quantization in ActivationMode::kQ8) and have cols == x's row length.
  virtual void Matmul(const float* x, int n, absl::Span<const MatmulOutput> outputs) = 0;

  // y[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) * weight (sum of squares in double, as
  // llama.cpp). y may equal x.
  virtual void RmsNorm(const float* x, const float* weight, int n, int dim, float eps,
                       float* y) = 0;

  // Rotates in place the first rotary_dim elements of each head: x is [n, heads, head_dim],
  // token i at positions[i].
  virtual void Rope(float* x, int n, int heads, const int32_t* positions, const RopeSpec& rope) = 0;

  // Stores k, v ([n, kv_heads, head_dim] each) of `layer` at cache slots slots[0..n).
  virtual void WriteKv(KvCache& cache, int layer, const float* k, const float* v, int n,
                       const int32_t* slots) = 0;

  // Causal grouped-query attention of q ([num_tokens, heads, head_dim]) over the cache of
  // `layer`: out[t, h, :] = Σ_j softmax_j(scale · q[t,h]·K[j,g]) V[j,g], g = h / (heads /
  // kv_heads). With an f16 cache, q and the probabilities are rounded to f16 before their dot
  // products, as llama.cpp does; softmax in f32.
  virtual void Attention(const KvCache& cache, int layer, const float* q, int heads, float scale,
                         const AttentionBatch& batch, float* out) = 0;

  // out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + e^-x). out may alias gate or up.
  virtual void SiluMul(const float* gate, const float* up, int64_t count, float* out) = 0;

  // out[i] = a[i] + b[i]. out may alias a or b.
  virtual void Add(const float* a, const float* b, int64_t count, float* out) = 0;

  // out[i, :] = x[rows[i], :] for i in [0, n): selects the rows whose logits are wanted.
  virtual void GatherRows(const float* x, const int32_t* rows, int n, int dim, float* out) = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_BACKEND_BACKEND_H_
