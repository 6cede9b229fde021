#include "worker/weights/model_weights.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/weights/dequantize.h"
#include "worker/weights/gguf_test_util.h"

namespace shardserve {
namespace {

using ::shardserve::testing::F32Bytes;
using ::shardserve::testing::GgufBuilder;
using ::shardserve::testing::ModelsDir;
using ::shardserve::testing::SourcePath;
using ::shardserve::testing::WriteTempFile;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Testdata(const std::string& name) {
  return SourcePath("worker/weights/testdata/gguf/" + name);
}

std::unique_ptr<ModelWeights> OpenOk(const std::string& path) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(path);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? std::move(*w) : nullptr;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// Counts elements whose bit patterns differ; reports the first few.
size_t CountMismatches(const std::vector<float>& a, const std::vector<float>& b,
                       const std::string& what) {
  if (a.size() != b.size()) {
    ADD_FAILURE() << what << ": sizes " << a.size() << " vs " << b.size();
    return std::max(a.size(), b.size());
  }
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Bits(a[i]) != Bits(b[i])) {
      if (++bad <= 3) ADD_FAILURE() << what << "[" << i << "]: " << a[i] << " vs " << b[i];
    }
  }
  return bad;
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.num_local_experts, b.num_local_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

// Every tensor of `gguf` dequantizes bit-identically to the same tensor of `hf`.
void ExpectSameWeights(const ModelWeights& gguf, const ModelWeights& hf) {
  ASSERT_EQ(gguf.TensorNames(), hf.TensorNames());
  for (const std::string& name : gguf.TensorNames()) {
    absl::StatusOr<std::vector<float>> a = gguf.DequantizeF32(name);
    absl::StatusOr<std::vector<float>> b = hf.DequantizeF32(name);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(CountMismatches(*a, *b, name), 0u);
    EXPECT_EQ(gguf.View(name)->shape, hf.View(name)->shape) << name;
  }
}

// --- Files written by make_gguf_testdata.py ---------------------------------------------------

TEST(TinyLlamaTest, GgufEqualsHfDirectory) {
  std::unique_ptr<ModelWeights> gguf = OpenOk(Testdata("tiny_llama.gguf"));
  std::unique_ptr<ModelWeights> hf = OpenOk(Testdata("tiny_llama_hf"));
  ASSERT_NE(gguf, nullptr);
  ASSERT_NE(hf, nullptr);
  EXPECT_EQ(gguf->format(), WeightFormat::kGguf);
  EXPECT_EQ(hf->format(), WeightFormat::kSafetensors);
  EXPECT_TRUE(gguf->QkRowsInterleaved());
  EXPECT_FALSE(hf->QkRowsInterleaved());
  EXPECT_NE(gguf->gguf(), nullptr);
  EXPECT_EQ(hf->gguf(), nullptr);
  ExpectSameConfig(gguf->config(), hf->config());
  EXPECT_FALSE(gguf->config().tie_word_embeddings);
  EXPECT_EQ(gguf->TensorNames().size(), 2u * 9 + 3);
  ExpectSameWeights(*gguf, *hf);
}

TEST(TinyLlamaTest, ViewsAreZeroCopyAsStored) {
  std::unique_ptr<ModelWeights> w = OpenOk(Testdata("tiny_llama.gguf"));
  ASSERT_NE(w, nullptr);
  absl::StatusOr<TensorView> q = w->View("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  const TensorView* stored = w->gguf()->Find("blk.0.attn_q.weight");
  ASSERT_NE(stored, nullptr);
  EXPECT_EQ(q->name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q->data, stored->data);
  EXPECT_EQ(q->dtype, DType::kQ8_0);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{32, 32}));
  // As stored, Q rows are permuted: the view dequantizes to something other than HF layout.
  absl::StatusOr<std::vector<float>> raw = DequantizeToF32(*q);
  absl::StatusOr<std::vector<float>> hf = w->DequantizeF32(q->name);
  ASSERT_TRUE(raw.ok() && hf.ok());
  EXPECT_NE(*raw, *hf);
  // Row 1 of the GGUF layout (head 0, pair 0, second element) is HF row head_dim / 2 = 4.
  EXPECT_TRUE(std::equal(raw->begin() + 32, raw->begin() + 64, hf->begin() + 4 * 32));
  // V is not permuted.
  EXPECT_EQ(*DequantizeToF32(*w->View("model.layers.0.self_attn.v_proj.weight")),
            *w->DequantizeF32("model.layers.0.self_attn.v_proj.weight"));

  absl::StatusOr<TensorView> missing = w->View("model.layers.9.mlp.up_proj.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("tiny_llama.gguf: no tensor 'model.layers.9.mlp.up_proj.weight'"));
  EXPECT_EQ(w->DequantizeF32("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(w->Has("lm_head.weight"));
  EXPECT_FALSE(w->Has("nope"));
}

TEST(TinyMixtralTest, StackedExpertsEqualHfDirectory) {
  std::unique_ptr<ModelWeights> gguf = OpenOk(Testdata("tiny_mixtral.gguf"));
  std::unique_ptr<ModelWeights> hf = OpenOk(Testdata("tiny_mixtral_hf"));
  ASSERT_NE(gguf, nullptr);
  ASSERT_NE(hf, nullptr);
  EXPECT_EQ(gguf->config().architecture, Architecture::kMixtral);
  EXPECT_EQ(gguf->config().num_local_experts, 3);
  ExpectSameConfig(gguf->config(), hf->config());
  ExpectSameWeights(*gguf, *hf);

  // Each expert is a zero-copy slice of the stacked tensor.
  const TensorView* down = gguf->gguf()->Find("blk.0.ffn_down_exps.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (std::vector<int64_t>{3, 32, 16}));
  absl::StatusOr<TensorView> w2 = gguf->View("model.layers.0.block_sparse_moe.experts.2.w2.weight");
  ASSERT_TRUE(w2.ok()) << w2.status();
  EXPECT_EQ(w2->data, down->data + 2 * 32 * 16 * 2);
  EXPECT_EQ(w2->shape, (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(w2->row_stride, 32u);
}

TEST(TinyMixtralTest, PerExpertTensorNames) {
  // The older Mixtral layout: blk.N.ffn_{gate,down,up}.E, built from the stacked file's bytes.
  std::unique_ptr<ModelWeights> stacked = OpenOk(Testdata("tiny_mixtral.gguf"));
  ASSERT_NE(stacked, nullptr);
  const GgufFile& src = *stacked->gguf();
  GgufBuilder b;
  b.String("general.architecture", "llama");
  for (const char* key :
       {"llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.vocab_size", "llama.expert_count", "llama.expert_used_count",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"}) {
    b.U32(key, static_cast<uint32_t>(*src.GetUint(key)));
  }
  b.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  b.F32("llama.rope.freq_base", 10000.0f);
  for (const TensorView& t : src.tensors()) {
    const uint32_t type = t.dtype == DType::kF16 ? 1 : 0;
    std::string base = t.name.substr(0, t.name.size() - strlen(".weight"));
    if (absl::EndsWith(base, "_exps")) {
      const std::string kind = base.substr(0, base.size() - strlen("_exps"));  // blk.0.ffn_gate
      const size_t expert_bytes = t.ByteSize() / t.shape[0];
      for (int64_t e = 0; e < t.shape[0]; ++e) {
        std::vector<uint8_t> data(t.data + e * expert_bytes, t.data + (e + 1) * expert_bytes);
        b.Tensor(absl::StrCat(kind, ".", e, ".weight"),
                 {static_cast<uint64_t>(t.shape[2]), static_cast<uint64_t>(t.shape[1])}, type,
                 data);
      }
      continue;
    }
    std::vector<uint64_t> dims(t.shape.rbegin(), t.shape.rend());
    b.Tensor(t.name, dims, type, std::vector<uint8_t>(t.data, t.data + t.ByteSize()));
  }
  const std::string path = WriteTempFile("per_expert.gguf", b.Build());
  std::unique_ptr<ModelWeights> per_expert = OpenOk(path);
  std::unique_ptr<ModelWeights> hf = OpenOk(Testdata("tiny_mixtral_hf"));
  ASSERT_NE(per_expert, nullptr);
  ASSERT_NE(hf, nullptr);
  ExpectSameWeights(*per_expert, *hf);
  std::remove(path.c_str());
}

TEST(GgufNameTest, Mapping) {
  EXPECT_EQ(HfNameForGgufTensor("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(HfNameForGgufTensor("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(HfNameForGgufTensor("output.weight"), "lm_head.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.12.attn_norm.weight"),
            "model.layers.12.input_layernorm.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.attn_q.weight"), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.attn_k.bias"), "model.layers.3.self_attn.k_proj.bias");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.attn_v.weight"), "model.layers.3.self_attn.v_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.attn_output.weight"),
            "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_gate.weight"), "model.layers.3.mlp.gate_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_up.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_gate_inp.weight"),
            "model.layers.3.block_sparse_moe.gate.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_gate.7.weight"),
            "model.layers.3.block_sparse_moe.experts.7.w1.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_down.0.weight"),
            "model.layers.3.block_sparse_moe.experts.0.w2.weight");
  EXPECT_EQ(HfNameForGgufTensor("blk.3.ffn_up.1.weight"),
            "model.layers.3.block_sparse_moe.experts.1.w3.weight");
  for (const char* bad : {"blk.03.attn_q.weight", "blk.-1.attn_q.weight", "blk.x.attn_q.weight",
                          "blk.3.attn_q", "blk.3.attn_qq.weight", "blk.3.ffn_gate.01.weight",
                          "tok_embeddings.weight", "", "blk..attn_q.weight"}) {
    EXPECT_EQ(HfNameForGgufTensor(bad), "") << bad;
  }
}

// --- Validation errors, on small synthetic GGUF files ------------------------------------------

// A complete 2-layer llama in F32: hidden 32, 4 heads, 2 KV heads, ffn 64, vocab 16, tied.
struct TinySpec {
  std::map<std::string, std::vector<int64_t>> shapes;  // GGUF name -> PyTorch-order shape
  std::map<std::string, uint32_t> types;               // GGUF name -> ggml type (default F32)

  TinySpec() {
    shapes["token_embd.weight"] = {16, 32};
    shapes["output_norm.weight"] = {32};
    for (int i = 0; i < 2; ++i) {
      const std::string p = absl::StrCat("blk.", i, ".");
      shapes[p + "attn_norm.weight"] = {32};
      shapes[p + "ffn_norm.weight"] = {32};
      shapes[p + "attn_q.weight"] = {32, 32};
      shapes[p + "attn_k.weight"] = {16, 32};
      shapes[p + "attn_v.weight"] = {16, 32};
      shapes[p + "attn_output.weight"] = {32, 32};
      shapes[p + "ffn_gate.weight"] = {64, 32};
      shapes[p + "ffn_up.weight"] = {64, 32};
      shapes[p + "ffn_down.weight"] = {32, 64};
    }
  }

  std::vector<uint8_t> Build() const {
    GgufBuilder b;
    b.String("general.architecture", "llama");
    b.U32("llama.context_length", 64);
    b.U32("llama.embedding_length", 32);
    b.U32("llama.block_count", 2);
    b.U32("llama.feed_forward_length", 64);
    b.U32("llama.attention.head_count", 4);
    b.U32("llama.attention.head_count_kv", 2);
    b.U32("llama.vocab_size", 16);
    b.F32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    for (const auto& [name, shape] : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::vector<float> values(n);
      for (int64_t i = 0; i < n; ++i) values[i] = static_cast<float>(i % 7) - 3;
      std::vector<uint64_t> dims(shape.rbegin(), shape.rend());
      auto t = types.find(name);
      b.Tensor(name, dims, t == types.end() ? 0 : t->second, F32Bytes(values));
    }
    return b.Build();
  }
};

// The weights with the bytes they point into (moving the vector keeps its buffer).
struct Loaded {
  std::vector<uint8_t> bytes;
  absl::StatusOr<std::unique_ptr<ModelWeights>> weights;
  absl::Status status() const { return weights.status(); }
};

Loaded FromSpec(const TinySpec& spec) {
  Loaded out{spec.Build(), absl::UnknownError("unset")};
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(out.bytes, "tiny.gguf");
  if (!file.ok()) {
    out.weights = file.status();
  } else {
    out.weights = ModelWeights::FromGguf(std::move(*file));
  }
  return out;
}

TEST(ModelWeightsValidationTest, ValidSpecOpens) {
  TinySpec spec;
  std::vector<uint8_t> bytes = spec.Build();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(bytes, "tiny.gguf");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::FromGguf(std::move(*file));
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->config().tie_word_embeddings);
  EXPECT_FALSE((*w)->Has("lm_head.weight"));
  EXPECT_EQ((*w)->TensorNames().size(), 20u);
  EXPECT_EQ((*w)->path(), "tiny.gguf");
  // K has 2 heads of 8 rows: HF row 4 (head 0, second half, i = 0) is GGUF row 1.
  absl::StatusOr<std::vector<float>> k =
      (*w)->DequantizeF32("model.layers.0.self_attn.k_proj.weight");
  ASSERT_TRUE(k.ok());
  absl::StatusOr<std::vector<float>> raw =
      DequantizeToF32(*(*w)->View("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_TRUE(std::equal(raw->begin() + 32, raw->begin() + 64, k->begin() + 4 * 32));
  EXPECT_TRUE(std::equal(raw->begin() + 8 * 32, raw->begin() + 9 * 32, k->begin() + 8 * 32));
}

TEST(ModelWeightsValidationTest, MissingTensor) {
  TinySpec spec;
  spec.shapes.erase("blk.1.ffn_up.weight");
  Loaded w = FromSpec(spec);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("tiny.gguf: missing tensor "
                                              "'model.layers.1.mlp.up_proj.weight' (expected "
                                              "shape [64, 32])"));
}

TEST(ModelWeightsValidationTest, WrongShape) {
  TinySpec spec;
  spec.shapes["blk.0.attn_k.weight"] = {32, 32};
  Loaded w = FromSpec(spec);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr("tiny.gguf: tensor 'model.layers.0.self_attn.k_proj.weight' (stored as "
                        "'blk.0.attn_k.weight') has shape [32, 32], expected [16, 32]"));
}

TEST(ModelWeightsValidationTest, UnknownAndUnexpectedTensors) {
  TinySpec unknown;
  unknown.shapes["pos_embd.weight"] = {4};
  Loaded w = FromSpec(unknown);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr("tiny.gguf: tensor 'pos_embd.weight' has no Hugging Face equivalent"));

  TinySpec extra_layer;
  extra_layer.shapes["blk.2.attn_norm.weight"] = {32};
  w = FromSpec(extra_layer);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr("tiny.gguf: unexpected tensor 'model.layers.2.input_layernorm.weight' "
                        "(stored as 'blk.2.attn_norm.weight') with shape [32]"));

  TinySpec bias;
  bias.shapes["blk.0.attn_q.bias"] = {32};
  w = FromSpec(bias);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("unexpected tensor "
                                              "'model.layers.0.self_attn.q_proj.bias'"));

  TinySpec stacked_and_dense;  // a dense model with a stray expert tensor
  stacked_and_dense.shapes["blk.0.ffn_up_exps.weight"] = {2, 64, 32};
  w = FromSpec(stacked_and_dense);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr("unexpected tensor 'model.layers.0.block_sparse_moe.experts.0.w3.weight' "
                        "(stored as 'blk.0.ffn_up_exps.weight[0]')"));

  TinySpec flat_experts;
  flat_experts.shapes["blk.0.ffn_up_exps.weight"] = {64, 32};
  w = FromSpec(flat_experts);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("tensor 'blk.0.ffn_up_exps.weight' has shape "
                                              "[64, 32], expected 3-D"));

  TinySpec twice;  // stacked and per-expert names for the same expert
  twice.shapes["blk.0.ffn_up_exps.weight"] = {1, 64, 32};
  twice.shapes["blk.0.ffn_up.0.weight"] = {64, 32};
  w = FromSpec(twice);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("both map to "
                                              "'model.layers.0.block_sparse_moe.experts.0.w3."
                                              "weight'"));
}

TEST(ModelWeightsValidationTest, RopeFreqsIsKept) {
  TinySpec spec;
  spec.shapes["rope_freqs.weight"] = {4};
  Loaded w = FromSpec(spec);
  ASSERT_TRUE(w.weights.ok()) << w.status();
  EXPECT_TRUE((*w.weights)->Has("rope_freqs.weight"));
  EXPECT_EQ((*w.weights)->View("rope_freqs.weight")->shape, std::vector<int64_t>{4});
}

TEST(ModelWeightsValidationTest, TypeThatCannotBeDequantized) {
  TinySpec spec;
  spec.types["output_norm.weight"] = 26;  // GGML I32
  Loaded w = FromSpec(spec);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(), HasSubstr("tiny.gguf: tensor 'model.norm.weight' (stored as "
                                              "'output_norm.weight') has type I32"));
}

TEST(ModelWeightsValidationTest, BadConfig) {
  GgufBuilder b;
  b.String("general.architecture", "falcon");
  std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<std::unique_ptr<ModelWeights>> w =
      ModelWeights::FromGguf(*GgufFile::FromBytes(bytes, "falcon.gguf"));
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("falcon.gguf"));
  EXPECT_THAT(w.status().message(), HasSubstr("'falcon' is not supported"));
}

// --- HF directories ---------------------------------------------------------------------------

// Writes a safetensors file holding `tensors` (F32).
void WriteSafetensors(
    const std::string& path,
    const std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::vector<uint8_t> data;
  for (const auto& [name, t] : tensors) {
    const size_t begin = data.size();
    std::vector<uint8_t> bytes = F32Bytes(t.second);
    data.insert(data.end(), bytes.begin(), bytes.end());
    header[name] = {{"dtype", "F32"}, {"shape", t.first}, {"data_offsets", {begin, data.size()}}};
  }
  std::string json = header.dump();
  while (json.size() % 8 != 0) json += ' ';
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = json.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(json.data(), json.size());
  out.write(reinterpret_cast<const char*>(data.data()), data.size());
}

class HfDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = WriteTempFile("hf_dir", {});
    std::remove(dir_.c_str());
    ASSERT_EQ(::mkdir(dir_.c_str(), 0755), 0);
    std::ifstream in(Testdata("tiny_llama_hf/config.json"));
    std::ofstream out(dir_ + "/config.json");
    out << in.rdbuf();
    std::unique_ptr<ModelWeights> ref = OpenOk(Testdata("tiny_llama_hf"));
    ASSERT_NE(ref, nullptr);
    for (const std::string& name : ref->TensorNames()) {
      tensors_[name] = {ref->View(name)->shape, *ref->DequantizeF32(name)};
    }
  }
  void TearDown() override {
    std::remove((dir_ + "/config.json").c_str());
    std::remove((dir_ + "/model.safetensors").c_str());
    ::rmdir(dir_.c_str());
  }
  absl::StatusOr<std::unique_ptr<ModelWeights>> Write() {
    WriteSafetensors(dir_ + "/model.safetensors", tensors_);
    return ModelWeights::Open(dir_);
  }

  std::string dir_;
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors_;
};

TEST_F(HfDirectoryTest, RoundTripAndIgnoredBuffers) {
  tensors_["model.layers.0.self_attn.rotary_emb.inv_freq"] = {{4}, {1, 2, 3, 4}};
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_FALSE((*w)->Has("model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_EQ((*w)->TensorNames().size(), 21u);
}

TEST_F(HfDirectoryTest, Errors) {
  tensors_["model.extra.weight"] = {{2}, {1, 2}};
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(dir_ + ": unexpected tensor 'model.extra.weight' "
                                                     "with shape [2]"));
  tensors_.erase("model.extra.weight");

  tensors_["model.norm.weight"] = {{31}, std::vector<float>(31)};
  w = Write();
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr(dir_ + ": tensor 'model.norm.weight' has shape [31], expected [32]"));

  tensors_.erase("model.norm.weight");
  w = Write();
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("missing tensor 'model.norm.weight'"));

  std::remove((dir_ + "/config.json").c_str());
  w = ModelWeights::Open(dir_);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr(dir_ + "/config.json"));
}

TEST(ModelWeightsOpenTest, MissingPath) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open("/nonexistent/model");
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("/nonexistent/model"));
}

// --- The real default model in its three forms ---------------------------------------------------

TEST(RealModelTest, GgufEqualsConvertedF32AndBf16Exactly) {
  const std::string dir = ModelsDir();
  const std::string gguf_path = dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  const std::string bf16_dir = dir + "/SmolLM2-135M-Instruct";
  const std::string f32_dir = dir + "/SmolLM2-135M-Instruct-f32";
  struct stat st;
  for (const std::string& p :
       {gguf_path, bf16_dir + "/model.safetensors", f32_dir + "/model.safetensors"}) {
    ASSERT_EQ(::stat(p.c_str(), &st), 0) << p << testing::kRunSetup;
  }
  std::unique_ptr<ModelWeights> gguf = OpenOk(gguf_path);
  std::unique_ptr<ModelWeights> f32 = OpenOk(f32_dir);
  std::unique_ptr<ModelWeights> bf16 = OpenOk(bf16_dir);
  ASSERT_TRUE(gguf && f32 && bf16);
  ExpectSameConfig(gguf->config(), f32->config());
  ExpectSameConfig(gguf->config(), bf16->config());
  EXPECT_EQ(gguf->config().hidden_size, 576);
  EXPECT_TRUE(gguf->config().tie_word_embeddings);
  ASSERT_EQ(gguf->TensorNames(), f32->TensorNames());
  ASSERT_EQ(gguf->TensorNames(), bf16->TensorNames());
  EXPECT_EQ(gguf->TensorNames().size(), 30u * 9 + 2);

  for (const std::string& name : gguf->TensorNames()) {
    absl::StatusOr<std::vector<float>> g = gguf->DequantizeF32(name);
    absl::StatusOr<std::vector<float>> f = f32->DequantizeF32(name);
    absl::StatusOr<std::vector<float>> b = bf16->DequantizeF32(name);
    ASSERT_TRUE(g.ok() && f.ok() && b.ok()) << name;
    EXPECT_EQ(f32->View(name)->dtype, DType::kF32) << name;
    EXPECT_EQ(bf16->View(name)->dtype, DType::kBF16) << name;
    EXPECT_EQ(CountMismatches(*g, *f, name + " (gguf vs f32)"), 0u);
    for (float& v : *g) v = BF16ToF32(F32ToBF16(v));
    EXPECT_EQ(CountMismatches(*g, *b, name + " (gguf rounded to bf16 vs bf16)"), 0u);
  }
}

}  // namespace
}  // namespace shardserve
