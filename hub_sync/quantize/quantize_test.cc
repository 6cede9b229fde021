#include "hub_sync/quantize/quantize.h"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hub_sync/repo.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/safetensors.h"
#include "worker/weights/safetensors_writer.h"

namespace shardserve::hub {
namespace {

namespace fs = std::filesystem;
using quant::QuantScheme;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteText(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

absl::string_view AsSV(std::span<const uint8_t> b) {
  return absl::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// A tiny Llama-shaped checkpoint: hidden 64, intermediate 192, vocab 40, two layers, an lm_head;
// F32, F16 and BF16 tensors mixed. Values are random normal (stddev 0.05).
struct TinyModel {
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Tensor> tensors;

  static TinyModel Make(uint32_t seed, bool with_int_tensor = false) {
    TinyModel m;
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    auto add = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      Tensor t{name, dtype, shape, {}};
      for (int64_t i = 0; i < n; ++i) {
        const float v = dist(rng);
        if (dtype == DType::kF32) {
          const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
          t.bytes.insert(t.bytes.end(), p, p + 4);
        } else {
          uint16_t h = dtype == DType::kBF16 ? F32ToBF16(v) : 0;
          if (dtype == DType::kF16) {
            // a half with roughly this value: sign, then a small exponent/mantissa
            h = static_cast<uint16_t>((v < 0 ? 0x8000 : 0) | (0x2000 + (rng() & 0x0FFF)));
          }
          t.bytes.push_back(static_cast<uint8_t>(h));
          t.bytes.push_back(static_cast<uint8_t>(h >> 8));
        }
      }
      m.tensors.push_back(std::move(t));
    };
    add("model.embed_tokens.weight", DType::kBF16, {40, 64});
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", DType::kF32, {64});
      add(p + "self_attn.q_proj.weight", DType::kBF16, {64, 64});
      add(p + "self_attn.k_proj.weight", DType::kF32, {32, 64});
      add(p + "self_attn.v_proj.weight", DType::kF16, {32, 64});
      add(p + "self_attn.o_proj.weight", DType::kBF16, {64, 64});
      add(p + "post_attention_layernorm.weight", DType::kF32, {64});
      add(p + "mlp.gate_proj.weight", DType::kBF16, {192, 64});
      add(p + "mlp.up_proj.weight", DType::kF32, {192, 64});
      add(p + "mlp.down_proj.weight", DType::kBF16, {64, 192});
    }
    add("model.norm.weight", DType::kBF16, {64});
    add("lm_head.weight", DType::kF16, {40, 64});
    if (with_int_tensor) {
      m.tensors.push_back(
          {"model.rotary.inv_freq_steps", DType::kI32, {4}, std::vector<uint8_t>(16)});
    }
    return m;
  }

  void WriteTo(const fs::path& dir) const {
    fs::create_directories(dir);
    std::vector<TensorSpec> specs;
    for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
    auto w =
        SafetensorsWriter::Create((dir / "model.safetensors").string(), specs, {{"format", "pt"}});
    ASSERT_TRUE(w.ok()) << w.status();
    for (const Tensor& t : tensors) ASSERT_TRUE((*w)->Write(t.name, t.bytes).ok());
    ASSERT_TRUE((*w)->Finish().ok());
    WriteText(dir / "config.json",
              R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
                  "torch_dtype": "float32", "tie_word_embeddings": false})");
    WriteText(dir / "tokenizer.json", R"({"version": "1.0", "model": {"type": "BPE"}})");
    WriteText(dir / "generation_config.json", R"({"bos_token_id": 1})");
  }
};

std::vector<float> SourceFloats(const TinyModel::Tensor& t) {
  std::vector<float> out;
  const size_t n = t.bytes.size() / (t.dtype == DType::kF32 ? 4 : 2);
  for (size_t i = 0; i < n; ++i) {
    if (t.dtype == DType::kF32) {
      float f;
      std::memcpy(&f, t.bytes.data() + 4 * i, 4);
      out.push_back(f);
    } else {
      const uint16_t h = static_cast<uint16_t>(t.bytes[2 * i] | (t.bytes[2 * i + 1] << 8));
      out.push_back(t.dtype == DType::kBF16 ? BF16ToF32(h) : F16ToF32(h));
    }
  }
  return out;
}

class QuantizeSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("quantize_" + std::to_string(getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    src_ = root_ / "snapshot";
    dest_root_ = root_ / "shardserve" / "org--tiny" / std::string(40, 'a');
  }
  void TearDown() override { fs::remove_all(root_); }

  std::vector<std::string> Siblings() const {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dest_root_, ec)) {
      names.push_back(e.path().filename());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path root_, src_, dest_root_;
};

// Checks an artifact against the source model: manifest, checksums, kept tensors bit-exact bf16,
// quantized tensors byte-identical to QuantizeLinear of the source values.
void CheckArtifact(const fs::path& dest, const TinyModel& model, QuantScheme scheme,
                   const quant::QuantParams& params, const QuantizeOptions& options) {
  auto manifest = ParseJsonFile((dest / "manifest.json").string());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  const nlohmann::json& m = *manifest;
  EXPECT_EQ(m["format"], "shardserve-quantized");
  EXPECT_EQ(m["format_version"], 1);
  EXPECT_EQ(m["scheme"], std::string(quant::SchemeName(scheme)));
  EXPECT_EQ(m["tool"], "shardserve hub_sync");
  EXPECT_EQ(m["tool_version"], "0.1.0");
  EXPECT_EQ(m["source"]["repo"], "org/tiny");
  EXPECT_EQ(m["source"]["commit"], std::string(40, 'c'));
  for (const char* name : {"config.json", "model.safetensors", "tokenizer.json"}) {
    ASSERT_TRUE(m["source"]["files"].contains(name)) << name;
  }
  // Source hashes are the sha256 of the snapshot files.
  auto src_sha = HashFileHex((dest.parent_path().parent_path().parent_path().parent_path() /
                              "snapshot" / "model.safetensors")
                                 .string(),
                             true);
  ASSERT_TRUE(src_sha.ok());
  EXPECT_EQ(m["source"]["files"]["model.safetensors"], *src_sha);

  // Every file listed with its size and sha256; manifest.json itself is not in the list.
  std::vector<std::string> listed;
  for (const auto& [name, info] : m["files"].items()) {
    listed.push_back(name);
    auto sha = HashFileHex((dest / name).string(), true);
    ASSERT_TRUE(sha.ok());
    EXPECT_EQ(info["sha256"], *sha) << name;
    EXPECT_EQ(info["size"].get<uint64_t>(), fs::file_size(dest / name)) << name;
  }
  EXPECT_THAT(listed, Contains("config.json"));
  EXPECT_THAT(listed, Contains("tokenizer.json"));
  EXPECT_THAT(listed, Contains("generation_config.json"));
  EXPECT_THAT(listed, Not(Contains("manifest.json")));
  EXPECT_TRUE(fs::exists(dest / "tokenizer.json"));
  EXPECT_EQ(ReadAll(dest / "tokenizer.json"),
            ReadAll(dest.parent_path().parent_path().parent_path().parent_path() / "snapshot" /
                    "tokenizer.json"));

  auto config = ParseJsonFile((dest / "config.json").string());
  ASSERT_TRUE(config.ok());
  EXPECT_EQ((*config)["torch_dtype"], "bfloat16");
  EXPECT_EQ((*config)["hidden_size"], 64);
  EXPECT_EQ((*config)["quantization_config"],
            nlohmann::json::parse(quant::QuantizationConfig(scheme, params, {"lm_head"}).dump()));

  auto ckpt = SafetensorsCheckpoint::Open(dest.string());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const std::vector<std::string> names = (*ckpt)->TensorNames();
  std::vector<std::string> manifest_names;
  for (const auto& [name, info] : m["tensors"].items()) manifest_names.push_back(name);
  std::sort(manifest_names.begin(), manifest_names.end());
  EXPECT_EQ(manifest_names, names);
  for (const std::string& name : names) {
    auto view = (*ckpt)->Get(name);
    ASSERT_TRUE(view.ok());
    const nlohmann::json& info = m["tensors"][name];
    EXPECT_EQ(info["dtype"], std::string(DTypeName(view->dtype))) << name;
    EXPECT_EQ(info["shape"].get<std::vector<int64_t>>(), view->shape) << name;
    EXPECT_EQ(info["sha256"], Sha256Hex(AsSV({view->data, view->ByteSize()}))) << name;
  }

  std::vector<std::string> kept = m["kept_bf16"].get<std::vector<std::string>>();
  for (const TinyModel::Tensor& t : model.tensors) {
    const bool quantized = quant::IsQuantizableLinearName(t.name) ||
                           (t.name == "model.embed_tokens.weight" && !options.keep_embeddings_bf16);
    const std::vector<float> values = SourceFloats(t);
    if (!quantized) {
      EXPECT_THAT(kept, Contains(t.name));
      auto view = (*ckpt)->Get(t.name);
      ASSERT_TRUE(view.ok()) << t.name;
      ASSERT_EQ(view->dtype, DType::kBF16) << t.name;
      ASSERT_EQ(view->shape, t.shape);
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, view->data + 2 * i, 2);
        ASSERT_EQ(h, F32ToBF16(values[i])) << t.name << "[" << i << "]";
      }
      continue;
    }
    EXPECT_THAT(kept, Not(Contains(t.name)));
    const std::string prefix = *quant::LinearPrefix(t.name);
    auto q = quant::QuantizeLinear(scheme, prefix, values, t.shape[0], t.shape[1], params);
    ASSERT_TRUE(q.ok()) << q.status();
    for (size_t k = 0; k < q->specs.size(); ++k) {
      auto view = (*ckpt)->Get(q->specs[k].name);
      ASSERT_TRUE(view.ok()) << q->specs[k].name;
      EXPECT_EQ(view->dtype, q->specs[k].dtype);
      EXPECT_EQ(view->shape, q->specs[k].shape);
      ASSERT_EQ(view->ByteSize(), q->data[k].size());
      EXPECT_EQ(std::memcmp(view->data, q->data[k].data(), q->data[k].size()), 0)
          << q->specs[k].name;
    }
  }
}

TEST_F(QuantizeSnapshotTest, EachSchemeWritesACompleteArtifact) {
  const TinyModel model = TinyModel::Make(1);
  model.WriteTo(src_);
  struct Case {
    QuantScheme scheme;
    bool double_quant;
    int64_t group;
  };
  for (const Case& c : {Case{QuantScheme::kInt8, false, 0}, Case{QuantScheme::kInt4, false, 64},
                        Case{QuantScheme::kNf4, false, 64}, Case{QuantScheme::kNf4, true, 64}}) {
    SCOPED_TRACE(std::string(quant::SchemeName(c.scheme)) + (c.double_quant ? "-dq" : ""));
    const fs::path dest =
        dest_root_ / (std::string(quant::SchemeName(c.scheme)) + (c.double_quant ? "-dq" : ""));
    QuantizeOptions options;
    options.scheme = c.scheme;
    options.nf4_double_quant = c.double_quant;
    options.source_repo = "org/tiny";
    options.source_commit = std::string(40, 'c');
    uint64_t last_done = 0, last_total = 0;
    int calls = 0;
    auto result = QuantizeSnapshot(src_.string(), dest.string(), options,
                                   [&](absl::string_view, uint64_t done, uint64_t total) {
                                     EXPECT_GE(done, last_done);
                                     last_done = done;
                                     last_total = total;
                                     ++calls;
                                   });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_FALSE(result->reused);
    EXPECT_EQ(result->group_size, c.group);
    EXPECT_EQ(result->quantized_tensors, 14);
    EXPECT_EQ(result->kept_tensors, 7);
    EXPECT_EQ(last_done, last_total);
    EXPECT_EQ(last_total, result->source_bytes);
    EXPECT_EQ(calls, 1 + 21);
    quant::QuantParams params;
    params.group_size = c.group == 0 ? 128 : c.group;
    params.double_quant = c.double_quant;
    CheckArtifact(dest, model, c.scheme, params, options);
    auto manifest = ParseJsonFile((dest / "manifest.json").string());
    ASSERT_TRUE(manifest.ok());
    if (c.scheme == QuantScheme::kInt4) {
      EXPECT_EQ((*manifest)["group_size"], 64);
    }
    if (c.scheme == QuantScheme::kNf4) {
      EXPECT_EQ((*manifest)["block_size"], 64);
      EXPECT_EQ((*manifest)["double_quant"], c.double_quant);
    }
  }
  // Only the final directories: no temporary siblings left behind.
  EXPECT_THAT(Siblings(), ElementsAre("int4", "int8", "nf4", "nf4-dq"));
}

TEST_F(QuantizeSnapshotTest, EmbeddingsQuantizedWhenNotKept) {
  const TinyModel model = TinyModel::Make(2);
  model.WriteTo(src_);
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt8;
  options.keep_embeddings_bf16 = false;
  options.source_repo = "org/tiny";
  options.source_commit = std::string(40, 'c');
  const fs::path dest = dest_root_ / "int8";
  auto result = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->quantized_tensors, 15);
  CheckArtifact(dest, model, QuantScheme::kInt8, {}, options);
  auto ckpt = SafetensorsCheckpoint::Open(dest.string());
  ASSERT_TRUE(ckpt.ok());
  EXPECT_TRUE((*ckpt)->Get("model.embed_tokens.weight_scale").ok());
}

TEST_F(QuantizeSnapshotTest, RerunIsIdempotentAndRebuildIsByteIdentical) {
  TinyModel::Make(3).WriteTo(src_);
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt4;
  const fs::path dest = dest_root_ / "int4";
  auto first = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string weights = ReadAll(dest / "model.safetensors");
  const std::string manifest = ReadAll(dest / "manifest.json");
  const auto mtime = fs::last_write_time(dest / "model.safetensors");

  auto second = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->reused);
  EXPECT_EQ(second->artifact_bytes, first->artifact_bytes);
  EXPECT_EQ(fs::last_write_time(dest / "model.safetensors"), mtime);  // not rewritten

  // Without its manifest the artifact does not exist: it is rebuilt, byte for byte the same.
  fs::remove(dest / "manifest.json");
  auto third = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(third->reused);
  EXPECT_EQ(ReadAll(dest / "model.safetensors"), weights);
  EXPECT_EQ(ReadAll(dest / "manifest.json"), manifest);

  // Different options (nothing kept differently here, but another scheme parameter) rebuild.
  options.keep_lm_head_bf16 = false;
  auto fourth = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_FALSE(fourth->reused);
  EXPECT_EQ(fourth->quantized_tensors, 15);  // lm_head [40, 64] now int4 too
  EXPECT_THAT(Siblings(), ElementsAre("int4"));
}

TEST_F(QuantizeSnapshotTest, CancelledMidwayLeavesNoArtifact) {
  TinyModel::Make(4).WriteTo(src_);
  std::atomic<bool> cancel{false};
  QuantizeOptions options;
  options.scheme = QuantScheme::kNf4;
  options.cancel = &cancel;
  const fs::path dest = dest_root_ / "nf4";
  int tensors = 0;
  auto result = QuantizeSnapshot(src_.string(), dest.string(), options,
                                 [&](absl::string_view name, uint64_t, uint64_t) {
                                   if (!name.empty() && ++tensors == 5) cancel = true;
                                 });
  ASSERT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(result.status().message(), HasSubstr("cancelled before"));
  EXPECT_EQ(tensors, 5);
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_THAT(Siblings(), IsEmpty());  // the temporary directory is gone too

  // A failed rebuild leaves the previous artifact intact.
  cancel = false;
  ASSERT_TRUE(QuantizeSnapshot(src_.string(), dest.string(), options).ok());
  const std::string before = ReadAll(dest / "model.safetensors");
  options.nf4_double_quant = true;  // a different artifact: it must be rebuilt
  tensors = 0;
  result = QuantizeSnapshot(src_.string(), dest.string(), options,
                            [&](absl::string_view name, uint64_t, uint64_t) {
                              if (!name.empty() && ++tensors == 3) cancel = true;
                            });
  ASSERT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(ReadAll(dest / "model.safetensors"), before);
  EXPECT_TRUE(fs::exists(dest / "manifest.json"));
  EXPECT_THAT(Siblings(), ElementsAre("nf4"));
}

TEST_F(QuantizeSnapshotTest, NonFloatSourceTensorIsRefused) {
  TinyModel::Make(5, /*with_int_tensor=*/true).WriteTo(src_);
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt8;
  const fs::path dest = dest_root_ / "int8";
  auto result = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("model.rotary.inv_freq_steps"));
  EXPECT_THAT(result.status().message(), HasSubstr("dtype I32"));
  EXPECT_THAT(result.status().message(), HasSubstr("model.safetensors"));
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_THAT(Siblings(), IsEmpty());
}

TEST_F(QuantizeSnapshotTest, NonFiniteWeightFailsWithoutLeavingFiles) {
  TinyModel model = TinyModel::Make(6);
  // A NaN in the last layer's down_proj (bf16 0x7FC0), found after earlier tensors were written.
  for (auto& t : model.tensors) {
    if (t.name == "model.layers.1.mlp.down_proj.weight") {
      t.bytes[200] = 0xC0;
      t.bytes[201] = 0x7F;
    }
  }
  model.WriteTo(src_);
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt4;
  const fs::path dest = dest_root_ / "int4";
  auto result = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("model.layers.1.mlp.down_proj.weight"));
  EXPECT_THAT(result.status().message(), HasSubstr("non-finite"));
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_THAT(Siblings(), IsEmpty());
}

TEST_F(QuantizeSnapshotTest, LargeOutputIsShardedWithAnIndex) {
  const TinyModel model = TinyModel::Make(7);
  model.WriteTo(src_);
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt8;
  options.max_shard_bytes = 20000;
  options.source_repo = "org/tiny";
  options.source_commit = std::string(40, 'c');
  const fs::path dest = dest_root_ / "int8";
  auto result = QuantizeSnapshot(src_.string(), dest.string(), options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(fs::exists(dest / "model.safetensors"));
  ASSERT_TRUE(fs::exists(dest / "model.safetensors.index.json"));
  auto index = ParseJsonFile((dest / "model.safetensors.index.json").string());
  ASSERT_TRUE(index.ok());
  std::set<std::string> shard_files;
  for (const auto& [name, file] : (*index)["weight_map"].items()) {
    shard_files.insert(file.get<std::string>());
  }
  EXPECT_GT(shard_files.size(), 2u);
  EXPECT_TRUE(shard_files.count("model-00001-of-" + absl::StrFormat("%05d", shard_files.size()) +
                                ".safetensors"));
  uint64_t data_bytes = 0;
  for (const std::string& f : shard_files) {
    auto file = SafetensorsFile::Open((dest / f).string());
    ASSERT_TRUE(file.ok()) << file.status();
    for (const TensorView& v : (*file)->tensors()) data_bytes += v.ByteSize();
  }
  EXPECT_EQ((*index)["metadata"]["total_size"].get<uint64_t>(), data_bytes);
  // A quantized layer's parts share a shard.
  EXPECT_EQ((*index)["weight_map"]["model.layers.0.mlp.up_proj.weight"],
            (*index)["weight_map"]["model.layers.0.mlp.up_proj.weight_scale"]);
  CheckArtifact(dest, model, QuantScheme::kInt8, {}, options);
}

TEST_F(QuantizeSnapshotTest, StaleTemporarySiblingsAreRemoved) {
  TinyModel::Make(8).WriteTo(src_);
  fs::create_directories(dest_root_ / "int8.tmp-99999-deadbeef");
  WriteText(dest_root_ / "int8.tmp-99999-deadbeef" / "model.safetensors", "partial");
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt8;
  ASSERT_TRUE(QuantizeSnapshot(src_.string(), (dest_root_ / "int8").string(), options).ok());
  EXPECT_THAT(Siblings(), ElementsAre("int8"));
}

TEST_F(QuantizeSnapshotTest, MissingSourceFilesAreNotFound) {
  QuantizeOptions options;
  auto no_config = QuantizeSnapshot(src_.string(), (dest_root_ / "int4").string(), options);
  ASSERT_EQ(no_config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_config.status().message(), HasSubstr("no config.json"));
  fs::create_directories(src_);
  WriteText(src_ / "config.json", "{}");
  auto no_weights = QuantizeSnapshot(src_.string(), (dest_root_ / "int4").string(), options);
  ASSERT_EQ(no_weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(no_weights.status().message(), HasSubstr("model.safetensors"));
  WriteText(src_ / "config.json", "[1, 2]");
  auto bad_config = QuantizeSnapshot(src_.string(), (dest_root_ / "int4").string(), options);
  ASSERT_EQ(bad_config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_config.status().message(), HasSubstr("not an object"));
  EXPECT_FALSE(fs::exists(dest_root_ / "int4"));
}

TEST_F(QuantizeSnapshotTest, ShapeTheSchemeCannotTakeIsRefused) {
  // in_features 48 is not a multiple of 32: no int4 group size fits.
  fs::create_directories(src_);
  auto w = SafetensorsWriter::Create(
      (src_ / "model.safetensors").string(),
      {{"model.layers.0.self_attn.q_proj.weight", DType::kF32, {16, 48}}}, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(
      (*w)->Write("model.layers.0.self_attn.q_proj.weight", std::vector<uint8_t>(16 * 48 * 4, 0))
          .ok());
  ASSERT_TRUE((*w)->Finish().ok());
  WriteText(src_ / "config.json", "{}");
  QuantizeOptions options;
  options.scheme = QuantScheme::kInt4;
  auto result = QuantizeSnapshot(src_.string(), (dest_root_ / "int4").string(), options);
  ASSERT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), HasSubstr("in_features 48"));
  // int8 takes any shape.
  options.scheme = QuantScheme::kInt8;
  EXPECT_TRUE(QuantizeSnapshot(src_.string(), (dest_root_ / "int8").string(), options).ok());
}

}  // namespace
}  // namespace shardserve::hub
