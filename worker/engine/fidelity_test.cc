// Fidelity of the CPU engine against two independent implementations on the default model
// (SmolLM2-135M-Instruct, Q4_1 GGUF), with the goldens of tests/fixtures/fidelity (see the README
// there for what they hold and how they were made). Each of the engine's two arithmetics is held
// to the reference that computes the same thing:
//   - ActivationMode::kF32 with an f32 KV cache against HF transformers in f32 on the same
//     (dequantized) weights, reference_hf.bin: the thresholds — per teacher-forced
//     position cosine of logits >= 0.999, top-1 agreement >= 99% over all positions, greedy
//     identical for >= 32 tokens on >= 7 of 8 prompts;
//   - ActivationMode::kQ8 with an f16 KV cache against llama.cpp (llama-cpp-python),
//     reference.bin. llama.cpp's int8 activations make this model chaotic: llama.cpp's own
//     decode-time rows disagree with its own batch rows (min cosine 0.987, top-1 96.9%), so this
//     comparison is held to bounds at llama.cpp's own variation (below), not the issue's.
// For each of the 8 committed conversations our template + tokenizer must also give the
// reference's prompt ids. Each test prints a per-prompt table (the figures the fidelity report
// quotes).
//
// Neither reference's full logits are stored: each row is recomputed from the reference's final
// hidden state (after the output norm) times the tied output matrix, and checked against the
// stored exact top-64 logits and row norm of the reference. For llama.cpp the state is stored
// already quantized to Q8_0 as llama.cpp quantizes it, and the product is llama.cpp's
// vec_dot_q8_0_q8_0 in plain scalar code; for transformers it is the f32 product with the
// dequantized matrix.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/backend/cpu/cpu_backend.h"
#include "worker/engine/model_runner.h"
#include "worker/text/model_text.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/gguf_test_util.h"
#include "worker/weights/model_weights.h"

namespace shardserve {
namespace {

// One reference and what the engine must reach against it.
struct Spec {
  const char* name;
  const char* goldens;    // per-prompt generated ids and checks
  const char* reference;  // the rows (SSFIDEL1)
  bool q8_logits;         // rows rebuilt as llama.cpp's Q8_0 x Q8_0 product, else f32 E . h
  ActivationMode activations;
  DType kv_dtype;
  double min_cosine;       // at every teacher-forced position
  double min_mean_cosine;  // per prompt
  double min_top1;         // over all teacher-forced positions
  int greedy_prefix;       // identical greedy tokens ...
  int greedy_prompts;      // ... on at least this many prompts
};

// The thresholds.
constexpr Spec kTransformers = {"HF transformers f32",
                                "goldens_hf.json",
                                "reference_hf.bin",
                                false,
                                ActivationMode::kF32,
                                DType::kF32,
                                0.999,
                                0.999,
                                0.99,
                                32,
                                7};
// llama.cpp against itself (decode-time vs batch rows, goldens.json checks): min cosine 0.987,
// per-prompt mean cosine >= 0.99910, top-1 496/512 = 96.9%, and its greedy run with the prompt
// fed differently keeps >= 32 identical tokens on 2 to 7 of 8 prompts (README). The engine is
// held to that band: no further from llama.cpp than llama.cpp is from itself.
constexpr Spec kLlamaCpp = {"llama.cpp (llama-cpp-python 0.3.36)",
                            "goldens.json",
                            "reference.bin",
                            true,
                            ActivationMode::kQ8,
                            DType::kF16,
                            0.98,
                            0.998,
                            0.965,
                            32,
                            4};

constexpr char kMagic[8] = {'S', 'S', 'F', 'I', 'D', 'E', 'L', '1'};
constexpr int kBlock = 32;  // Q8_0 block

std::string FixturePath(const std::string& name) {
  return shardserve::testing::SourcePath("tests/fixtures/fidelity/" + name);
}
std::string ModelPath() {
  return shardserve::testing::ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// One position of reference.bin.
struct ReferenceRow {
  std::vector<float> hidden;     // final hidden state (after the output norm)
  std::vector<uint16_t> xd;      // its Q8_0 block scales (f16 bits)
  std::vector<int8_t> xq;        // its Q8_0 values
  std::vector<int32_t> top_ids;  // llama.cpp's top-k, highest first
  std::vector<float> top_logits;
  float norm = 0;  // L2 norm of llama.cpp's full logits row
  float mean = 0;
};

struct ReferencePrompt {
  std::string name;
  nlohmann::json messages;
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> generated_ids;
  int eos_index = -1;
  double llama_decode_vs_batch_min_cosine = 0;  // llama.cpp against itself (see README)
  int llama_decode_vs_batch_top1 = 0;
  // [0]: teacher forced (one batch); [1]: as the greedy run computed them (one token per decode).
  std::vector<ReferenceRow> rows[2];
};

struct Reference {
  int positions = 0;
  int hidden = 0;
  int top_k = 0;
  int vocab = 0;
  std::vector<ReferencePrompt> prompts;
};

// Little-endian reader over reference.bin that refuses to read past the end.
class Reader {
 public:
  explicit Reader(const std::string& bytes) : bytes_(bytes) {}
  bool Read(void* out, size_t n) {
    if (n > bytes_.size() - pos_) return false;
    std::memcpy(out, bytes_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  template <typename T>
  bool ReadVector(std::vector<T>* v, size_t count) {
    v->resize(count);
    return Read(v->data(), count * sizeof(T));
  }
  bool AtEnd() const { return pos_ == bytes_.size(); }

 private:
  const std::string& bytes_;
  size_t pos_ = 0;
};

// Loads goldens.json, prompts.json and reference.bin; fails the test (and returns nullptr) on any
// inconsistency.
// Prompt ids always come from goldens.json (both references ran the same ids).
const Reference* LoadReference(const Spec& spec) {
  static std::map<std::string, const Reference*>* cache =
      new std::map<std::string, const Reference*>();
  if (auto it = cache->find(spec.reference); it != cache->end()) return it->second;
  const Reference* loaded = [&]() -> const Reference* {
    auto goldens = ParseJsonFile(FixturePath(spec.goldens));
    auto ids = ParseJsonFile(FixturePath("goldens.json"));
    auto prompts = ParseJsonFile(FixturePath("prompts.json"));
    auto bytes = ReadFileToString(FixturePath(spec.reference));
    EXPECT_TRUE(goldens.ok()) << goldens.status();
    EXPECT_TRUE(ids.ok()) << ids.status();
    EXPECT_TRUE(prompts.ok()) << prompts.status();
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    if (!goldens.ok() || !ids.ok() || !prompts.ok() || !bytes.ok()) return nullptr;
    auto ref = std::make_unique<Reference>();
    try {
      ref->positions = goldens->at("generated_tokens").get<int>();
      ref->hidden = goldens->at("hidden_size").get<int>();
      ref->top_k = goldens->at("top_k").get<int>();
      ref->vocab = goldens->at("vocab_size").get<int>();
      const nlohmann::json& gp = goldens->at("prompts");
      const nlohmann::json& pp = prompts->at("prompts");
      EXPECT_EQ(gp.size(), pp.size()) << "goldens.json and prompts.json list different prompts";
      if (gp.size() != pp.size()) return nullptr;
      for (size_t i = 0; i < gp.size(); ++i) {
        ReferencePrompt p;
        p.name = gp[i].at("name").get<std::string>();
        EXPECT_EQ(p.name, pp[i].at("name").get<std::string>()) << "prompt " << i;
        p.messages = pp[i].at("messages");
        p.prompt_ids = ids->at("prompts").at(i).at("prompt_ids").get<std::vector<int32_t>>();
        p.generated_ids = gp[i].at("generated_ids").get<std::vector<int32_t>>();
        if (!gp[i].at("eos_index").is_null()) p.eos_index = gp[i].at("eos_index").get<int>();
        const nlohmann::json& checks = gp[i].at("checks");
        p.llama_decode_vs_batch_min_cosine = checks.at("greedy_vs_forced_min_cosine").get<double>();
        p.llama_decode_vs_batch_top1 = checks.at("forced_argmax_equals_greedy").get<int>();
        EXPECT_EQ(static_cast<int>(p.generated_ids.size()), ref->positions) << p.name;
        ref->prompts.push_back(std::move(p));
      }
    } catch (const nlohmann::json::exception& e) {
      ADD_FAILURE() << "goldens.json / prompts.json: " << e.what();
      return nullptr;
    }

    Reader reader(*bytes);
    char magic[8];
    uint32_t header[5];
    if (!reader.Read(magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(magic)) != 0 ||
        !reader.Read(header, sizeof(header))) {
      ADD_FAILURE() << spec.reference << ": bad header";
      return nullptr;
    }
    EXPECT_EQ(header[0], ref->prompts.size());
    EXPECT_EQ(header[1], 2u);
    EXPECT_EQ(header[2], static_cast<uint32_t>(ref->positions));
    EXPECT_EQ(header[3], static_cast<uint32_t>(ref->hidden));
    EXPECT_EQ(header[4], static_cast<uint32_t>(ref->top_k));
    if (header[0] != ref->prompts.size() || header[1] != 2 ||
        header[2] != static_cast<uint32_t>(ref->positions) ||
        header[3] != static_cast<uint32_t>(ref->hidden) ||
        header[4] != static_cast<uint32_t>(ref->top_k)) {
      return nullptr;
    }
    for (ReferencePrompt& p : ref->prompts) {
      for (auto& set : p.rows) {
        for (int i = 0; i < ref->positions; ++i) {
          ReferenceRow row;
          float stats[2];
          if (!reader.ReadVector(&row.hidden, ref->hidden) ||
              !reader.ReadVector(&row.xd, ref->hidden / kBlock) ||
              !reader.ReadVector(&row.xq, ref->hidden) ||
              !reader.ReadVector(&row.top_ids, ref->top_k) ||
              !reader.ReadVector(&row.top_logits, ref->top_k) || !reader.Read(stats, 8)) {
            ADD_FAILURE() << spec.reference << ": truncated in prompt " << p.name;
            return nullptr;
          }
          row.norm = stats[0];
          row.mean = stats[1];
          set.push_back(std::move(row));
        }
      }
    }
    EXPECT_TRUE(reader.AtEnd()) << spec.reference << ": trailing bytes";
    return ref.release();
  }();
  (*cache)[spec.reference] = loaded;
  return loaded;
}

std::shared_ptr<const ModelWeights> Weights() {
  static std::shared_ptr<const ModelWeights> weights = [] {
    absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(ModelPath());
    EXPECT_TRUE(w.ok()) << w.status() << " — " << ModelPath() << shardserve::testing::kRunSetup;
    return w.ok() ? std::shared_ptr<const ModelWeights>(std::move(*w)) : nullptr;
  }();
  return weights;
}

// llama.cpp's logits for a set of rows: Σ_blocks d_w·d_x·(q_w·q_x) over the GGUF's Q8_0 output
// matrix (token_embd, tied), in double. Plain scalar code, independent of the backend.
std::vector<float> ReconstructLogits(const TensorView& table, const std::vector<ReferenceRow>& rows,
                                     int threads) {
  const int64_t vocab = table.shape[0];
  const int64_t dim = table.shape[1];
  const int64_t blocks = dim / kBlock;
  const size_t n = rows.size();
  std::vector<float> x_scale(n * blocks);
  for (size_t r = 0; r < n; ++r) {
    for (int64_t b = 0; b < blocks; ++b) x_scale[r * blocks + b] = F16ToF32(rows[r].xd[b]);
  }
  std::vector<float> out(n * vocab);
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<double> w_scale(blocks);
    for (int64_t v = begin; v < end; ++v) {
      const uint8_t* row = table.data + v * table.row_stride;
      for (int64_t b = 0; b < blocks; ++b) {
        uint16_t bits;
        std::memcpy(&bits, row + b * (2 + kBlock), 2);
        w_scale[b] = F16ToF32(bits);
      }
      for (size_t r = 0; r < n; ++r) {
        const int8_t* xq = rows[r].xq.data();
        double sum = 0;
        for (int64_t b = 0; b < blocks; ++b) {
          const int8_t* wq = reinterpret_cast<const int8_t*>(row + b * (2 + kBlock) + 2);
          int32_t isum = 0;
          for (int j = 0; j < kBlock; ++j) isum += int32_t{wq[j]} * int32_t{xq[b * kBlock + j]};
          sum += w_scale[b] * static_cast<double>(x_scale[r * blocks + b]) * isum;
        }
        out[r * vocab + v] = static_cast<float>(sum);
      }
    }
  };
  std::vector<std::thread> pool;
  const int64_t chunk = (vocab + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back(work, t * chunk, std::min(vocab, (t + 1) * chunk));
  }
  for (std::thread& t : pool) t.join();
  return out;
}

// transformers' logits for a set of rows: the f32 product of the hidden states with the output
// matrix as dequantized (exactly the values transformers loaded), on the CPU backend's kF32
// matmul (checked against transformers' own top-64 logits and norms below).
std::vector<float> ReconstructLogitsF32(const TensorView& table,
                                        const std::vector<ReferenceRow>& rows) {
  CpuBackendOptions options;
  options.threads = 2;
  options.activations = ActivationMode::kF32;
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCpuBackend(options);
  EXPECT_TRUE(backend.ok()) << backend.status();
  absl::StatusOr<std::unique_ptr<BackendMatrix>> matrix = (*backend)->PrepareMatrix(table);
  EXPECT_TRUE(matrix.ok()) << matrix.status();
  const int64_t vocab = table.shape[0];
  const int64_t dim = table.shape[1];
  std::vector<float> x;
  for (const ReferenceRow& row : rows) x.insert(x.end(), row.hidden.begin(), row.hidden.end());
  EXPECT_EQ(x.size(), rows.size() * dim);
  std::vector<float> out(rows.size() * vocab);
  const MatmulOutput outputs[] = {{matrix->get(), out.data()}};
  (*backend)->Matmul(x.data(), static_cast<int>(rows.size()), outputs);
  return out;
}

std::vector<float> Reconstruct(const Spec& spec, const TensorView& table,
                               const std::vector<ReferenceRow>& rows) {
  return spec.q8_logits ? ReconstructLogits(table, rows, 2) : ReconstructLogitsF32(table, rows);
}

double Cosine(const float* a, const float* b, int n) {
  double ab = 0, aa = 0, bb = 0;
  for (int i = 0; i < n; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

int32_t Argmax(const float* x, int n) {
  return static_cast<int32_t>(std::max_element(x, x + n) - x);  // lowest id on a tie
}

RunnerOptions FidelityOptions(const Spec& spec) {
  RunnerOptions options;
  options.threads = 2;
  options.activations = spec.activations;
  options.kv_dtype = spec.kv_dtype;
  options.context_length = 2048;
  options.kv_cache_tokens = 4096;
  options.max_step_tokens = 2048;  // a whole prompt per step, as both references ran it
  return options;
}

// Our template and tokenizer (from the GGUF) give the ids the reference rendered with Jinja2 and
// tokenized with HF `tokenizers`.
TEST(FidelityTest, PromptIdsMatchReference) {
  const Reference* ref = LoadReference(kLlamaCpp);
  ASSERT_NE(ref, nullptr);
  absl::StatusOr<ModelText> text = LoadModelText(ModelPath());
  ASSERT_TRUE(text.ok()) << text.status();
  for (const ReferencePrompt& p : ref->prompts) {
    absl::StatusOr<std::string> rendered =
        text->RenderChat(nlohmann::ordered_json(p.messages), /*add_generation_prompt=*/true);
    ASSERT_TRUE(rendered.ok()) << p.name << ": " << rendered.status();
    EXPECT_EQ(text->tokenizer->Encode(*rendered, /*add_special_tokens=*/false), p.prompt_ids)
        << p.name;
  }
}

// The reconstruction of each reference's logits agrees with the exact values its golden stores.
void CheckReconstruction(const Spec& spec) {
  const Reference* ref = LoadReference(spec);
  ASSERT_NE(ref, nullptr);
  std::shared_ptr<const ModelWeights> weights = Weights();
  ASSERT_NE(weights, nullptr);
  absl::StatusOr<TensorView> table = weights->View("model.embed_tokens.weight");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->dtype, DType::kQ8_0);
  ASSERT_EQ(table->shape, (std::vector<int64_t>{ref->vocab, ref->hidden}));
  // Two prompts (one long) are enough to hold the reconstruction to the stored values.
  for (int pi : {0, 2}) {
    const ReferencePrompt& p = ref->prompts[pi];
    for (const auto& set : p.rows) {
      std::vector<float> logits = Reconstruct(spec, *table, set);
      for (size_t r = 0; r < set.size(); ++r) {
        const float* row = logits.data() + r * ref->vocab;
        double sq = 0;
        for (int v = 0; v < ref->vocab; ++v) sq += static_cast<double>(row[v]) * row[v];
        EXPECT_NEAR(std::sqrt(sq), set[r].norm, 1e-5 * set[r].norm)
            << spec.name << " " << p.name << " row " << r;
        for (int k = 0; k < ref->top_k; ++k) {
          ASSERT_NEAR(row[set[r].top_ids[k]], set[r].top_logits[k], 1e-4)
              << p.name << " row " << r << " top " << k;
        }
      }
    }
  }
}

TEST(FidelityTest, LlamaCppLogitsReconstruction) { CheckReconstruction(kLlamaCpp); }
TEST(FidelityTest, TransformersLogitsReconstruction) { CheckReconstruction(kTransformers); }

struct PromptResult {
  std::string name;
  int prompt_tokens = 0;
  double min_cos = 1, mean_cos = 0;
  int worst = 0;  // position of min_cos
  int top1 = 0;
  double decode_min_cos = 1, decode_mean_cos = 0;  // against llama.cpp's decode-time rows
  int greedy_prefix = 0;
};

void CheckFidelity(const Spec& spec) {
  const Reference* ref = LoadReference(spec);
  ASSERT_NE(ref, nullptr);
  std::shared_ptr<const ModelWeights> weights = Weights();
  ASSERT_NE(weights, nullptr);
  absl::StatusOr<TensorView> table = weights->View("model.embed_tokens.weight");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->dtype, DType::kQ8_0);
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(weights, FidelityOptions(spec));
  ASSERT_TRUE(runner.ok()) << runner.status();
  ModelRunner& model = **runner;
  const int vocab = model.vocab_size();
  ASSERT_EQ(vocab, ref->vocab);
  const int n = ref->positions;

  std::vector<PromptResult> results;
  for (const ReferencePrompt& p : ref->prompts) {
    PromptResult res;
    res.name = p.name;
    res.prompt_tokens = static_cast<int>(p.prompt_ids.size());

    // Teacher forcing over prompt + the first n - 1 generated tokens.
    std::vector<int32_t> tokens = p.prompt_ids;
    tokens.insert(tokens.end(), p.generated_ids.begin(), p.generated_ids.end() - 1);
    const int64_t first = static_cast<int64_t>(p.prompt_ids.size()) - 1;
    std::vector<float> ours(static_cast<size_t>(n) * vocab);
    ASSERT_TRUE(model
                    .Score(tokens,
                           [&](int64_t i, const float* logits) {
                             if (i >= first) {
                               std::memcpy(&ours[(i - first) * vocab], logits,
                                           sizeof(float) * vocab);
                             }
                           })
                    .ok())
        << p.name;

    std::vector<float> forced = Reconstruct(spec, *table, p.rows[0]);
    std::vector<float> decoded = Reconstruct(spec, *table, p.rows[1]);
    for (int i = 0; i < n; ++i) {
      const float* mine = &ours[static_cast<size_t>(i) * vocab];
      const double c = Cosine(mine, &forced[static_cast<size_t>(i) * vocab], vocab);
      const double d = Cosine(mine, &decoded[static_cast<size_t>(i) * vocab], vocab);
      res.mean_cos += c / n;
      res.decode_min_cos = std::min(res.decode_min_cos, d);
      res.decode_mean_cos += d / n;
      res.top1 += Argmax(mine, vocab) == p.rows[0][i].top_ids[0];
      if (c < res.min_cos) {
        res.min_cos = c;
        res.worst = i;
      }
    }
    EXPECT_GE(res.min_cos, spec.min_cosine)
        << spec.name << " " << p.name << ": worst at generated position " << res.worst;
    EXPECT_GE(res.mean_cos, spec.min_mean_cosine) << spec.name << " " << p.name;

    // Free-running greedy: the prompt in one step, then one token per step.
    const int64_t seq = 1000 + static_cast<int64_t>(results.size());
    std::vector<int32_t> generated;
    std::vector<int32_t> next = p.prompt_ids;
    int64_t position = 0;
    while (static_cast<int>(generated.size()) < n) {
      StepPlan plan;
      ASSERT_TRUE(model.AddToPlan(seq, position, next, ModelRunner::Logits::kLast, &plan).ok());
      std::vector<float> logits;
      ASSERT_TRUE(model.Step(plan, &logits).ok()) << p.name;
      ASSERT_EQ(logits.size(), static_cast<size_t>(vocab));
      position += static_cast<int64_t>(next.size());
      generated.push_back(Argmax(logits.data(), vocab));
      next = {generated.back()};
    }
    model.blocks().Free(seq);
    while (res.greedy_prefix < n &&
           generated[res.greedy_prefix] == p.generated_ids[res.greedy_prefix]) {
      ++res.greedy_prefix;
    }
    results.push_back(res);
  }

  // The table the fidelity report quotes.
  int top1_total = 0, greedy_ok = 0;
  std::printf("\nFidelity vs %s, %d teacher-forced positions per prompt\n", spec.name, n);
  std::printf("%-13s %6s | %10s %10s %6s | %12s %12s | %6s | %s\n", "prompt", "tokens", "cos min",
              "cos mean", "top-1", "vs dec. min", "vs dec. mean", "greedy",
              "reference decode vs batch: cos min, top-1");
  for (size_t i = 0; i < results.size(); ++i) {
    const PromptResult& r = results[i];
    const ReferencePrompt& p = ref->prompts[i];
    top1_total += r.top1;
    greedy_ok += r.greedy_prefix >= spec.greedy_prefix;
    std::printf("%-13s %6d | %10.8f %10.8f %3d/%d | %12.8f %12.8f | %3d/%d | %.6f, %d/%d\n",
                r.name.c_str(), r.prompt_tokens, r.min_cos, r.mean_cos, r.top1, n, r.decode_min_cos,
                r.decode_mean_cos, r.greedy_prefix, n, p.llama_decode_vs_batch_min_cosine,
                p.llama_decode_vs_batch_top1, n);
  }
  const int total = n * static_cast<int>(results.size());
  std::printf("top-1 agreement %d/%d = %.2f%%; greedy identical for >= %d tokens on %d/%zu\n",
              top1_total, total, 100.0 * top1_total / total, spec.greedy_prefix, greedy_ok,
              results.size());
  std::fflush(stdout);

  EXPECT_GE(static_cast<double>(top1_total) / total, spec.min_top1) << spec.name;
  EXPECT_GE(greedy_ok, spec.greedy_prompts) << spec.name;
}

TEST(FidelityTest, F32MatchesTransformers) { CheckFidelity(kTransformers); }
TEST(FidelityTest, Q8StaysWithinLlamaCppsOwnVariation) { CheckFidelity(kLlamaCpp); }

}  // namespace
}  // namespace shardserve
