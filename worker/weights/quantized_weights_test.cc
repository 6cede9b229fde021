// hub_sync artifacts through ModelWeights: each quantized linear is one logical tensor whose
// DequantizeF32 equals quant_formats' Dequantize* bit for bit (windows included), everything else
// reads as stored, and malformed artifacts are refused with the reason.
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/weights/dequantize.h"
#include "worker/weights/model_weights.h"
#include "worker/weights/quantized_test_util.h"

namespace shardserve {
namespace {

using testing::BuildArtifactTensors;
using testing::FloatModel;
using testing::FreshTempDir;
using ::testing::HasSubstr;
using testing::MinimalManifest;
using testing::RandomTinyLlama;
using testing::StoredTensor;
using testing::TinyLlamaConfig;
using testing::WriteArtifact;

struct Case {
  const char* label;
  quant::QuantScheme scheme;
  quant::QuantParams params;
  DType dtype;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

std::vector<Case> Cases() {
  return {{"int8", quant::QuantScheme::kInt8, {}, DType::kInt8Channel},
          {"int4_g64", quant::QuantScheme::kInt4, {64, false}, DType::kAwqInt4},
          {"int4_g32", quant::QuantScheme::kInt4, {32, false}, DType::kAwqInt4},
          {"nf4", quant::QuantScheme::kNf4, {128, false}, DType::kNf4},
          {"nf4_dq", quant::QuantScheme::kNf4, {128, true}, DType::kNf4}};
}

void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) != 0 && bad++ < 3) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " != " << want[i];
    }
  }
  EXPECT_EQ(bad, 0u) << what;
}

class QuantizedWeightsTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    dir_ = FreshTempDir(absl::StrCat("quantized_weights_", GetParam().label));
    model_ = RandomTinyLlama(7);
    ASSERT_TRUE(
        BuildArtifactTensors(model_, GetParam().scheme, GetParam().params, &stored_, &expected_)
            .ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::StatusOr<std::unique_ptr<ModelWeights>> Write(const nlohmann::json& config,
                                                      const nlohmann::json& manifest) {
    absl::Status st =
        WriteArtifact(dir_, config, GetParam().scheme, GetParam().params, stored_, manifest);
    if (!st.ok()) return st;
    return ModelWeights::Open(dir_);
  }
  absl::StatusOr<std::unique_ptr<ModelWeights>> Write() {
    return Write(TinyLlamaConfig(), MinimalManifest(GetParam().scheme, GetParam().params));
  }
  void Drop(const std::string& name) {
    std::erase_if(stored_, [&](const StoredTensor& t) { return t.spec.name == name; });
  }

  std::string dir_;
  FloatModel model_;
  FloatModel expected_;  // what a reader must see
  std::vector<StoredTensor> stored_;
};

TEST_P(QuantizedWeightsTest, EveryTensorDequantizesAsTheReference) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->quantization(), quant::SchemeName(GetParam().scheme));
  std::vector<std::string> names;
  for (const auto& [name, t] : expected_) names.push_back(name);
  EXPECT_EQ((*w)->TensorNames(), names);
  int quantized = 0;
  for (const auto& [name, t] : expected_) {
    absl::StatusOr<TensorView> view = (*w)->View(name);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->shape, t.shape) << name;
    if (quant::IsQuantizableLinearName(name)) {
      EXPECT_EQ(view->dtype, GetParam().dtype) << name;
      ++quantized;
    } else {
      EXPECT_EQ(view->dtype, DType::kBF16) << name;
    }
    absl::StatusOr<std::vector<float>> values = (*w)->DequantizeF32(name);
    ASSERT_TRUE(values.ok()) << values.status();
    ExpectSameBits(*values, t.values, name);
  }
  EXPECT_EQ(quantized, 14);
}

// Tensor-parallel slices move the window: rows of q_proj, columns of down_proj.
TEST_P(QuantizedWeightsTest, RowAndColumnWindowsDequantizeTheirPart) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  ASSERT_TRUE(w.ok()) << w.status();
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  const std::string down = "model.layers.0.mlp.down_proj.weight";
  absl::StatusOr<TensorView> rows = (*w)->View(q)->RowRange(16, 48);
  ASSERT_TRUE(rows.ok()) << rows.status();
  absl::StatusOr<std::vector<float>> got = DequantizeToF32(*rows);
  ASSERT_TRUE(got.ok()) << got.status();
  const std::vector<float>& full_q = expected_[q].values;
  ExpectSameBits(*got, std::vector<float>(full_q.begin() + 16 * 64, full_q.begin() + 48 * 64),
                 "q rows [16, 48)");

  absl::StatusOr<TensorView> cols = (*w)->View(down)->ColumnRange(64, 128);
  ASSERT_TRUE(cols.ok()) << cols.status();
  absl::StatusOr<TensorView> both = cols->RowRange(8, 24);
  ASSERT_TRUE(both.ok()) << both.status();
  got = DequantizeToF32(*both);
  ASSERT_TRUE(got.ok()) << got.status();
  std::vector<float> want;
  for (int r = 8; r < 24; ++r) {
    const float* row = expected_[down].values.data() + r * 128;
    want.insert(want.end(), row + 64, row + 128);
  }
  ExpectSameBits(*got, want, "down rows [8, 24) x cols [64, 128)");
}

TEST_P(QuantizedWeightsTest, QuantizationConfigWithoutManifestIsRefused) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write(TinyLlamaConfig(), nullptr);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr(dir_));
  EXPECT_THAT(w.status().message(), HasSubstr("no manifest.json"));
}

TEST_P(QuantizedWeightsTest, ManifestMustBeOurs) {
  nlohmann::json manifest = MinimalManifest(GetParam().scheme, GetParam().params);
  manifest["format"] = "something-else";
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write(TinyLlamaConfig(), manifest);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("manifest.json"));
  EXPECT_THAT(w.status().message(), HasSubstr("'something-else'"));

  manifest = MinimalManifest(GetParam().scheme, GetParam().params);
  manifest["format_version"] = 2;
  w = Write(TinyLlamaConfig(), manifest);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(), HasSubstr("format_version 2"));

  manifest = MinimalManifest(GetParam().scheme, GetParam().params);
  manifest["scheme"] = "fp8";
  w = Write(TinyLlamaConfig(), manifest);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(w.status().message(), HasSubstr("scheme 'fp8' is not supported"));

  manifest = MinimalManifest(GetParam().scheme, GetParam().params);
  manifest["scheme"] = GetParam().scheme == quant::QuantScheme::kInt8 ? "nf4" : "int8";
  w = Write(TinyLlamaConfig(), manifest);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("quant_method"));
}

TEST_P(QuantizedWeightsTest, MissingCompanionTensorIsNamed) {
  std::string dropped;
  switch (GetParam().scheme) {
    case quant::QuantScheme::kInt8:
      dropped = "model.layers.1.mlp.up_proj.weight";
      break;
    case quant::QuantScheme::kInt4:
      dropped = "model.layers.1.mlp.up_proj.qzeros";
      break;
    case quant::QuantScheme::kNf4:
      dropped = "model.layers.1.mlp.up_proj.weight.absmax";
      break;
  }
  Drop(dropped);
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(), HasSubstr("'model.layers.1.mlp.up_proj'"));
  EXPECT_THAT(w.status().message(), HasSubstr("'" + dropped + "'"));
}

TEST_P(QuantizedWeightsTest, CompanionOfTheWrongShapeIsRefused) {
  // The first companion after the codes: the scale / scales / absmax, one row or value short.
  const std::string prefix = "model.layers.0.self_attn.k_proj";
  std::string name;
  switch (GetParam().scheme) {
    case quant::QuantScheme::kInt8:
      name = prefix + ".weight_scale";
      break;
    case quant::QuantScheme::kInt4:
      name = prefix + ".qzeros";
      break;
    case quant::QuantScheme::kNf4:
      name = prefix + ".weight.absmax";
      break;
  }
  for (StoredTensor& t : stored_) {
    if (t.spec.name != name) continue;
    const size_t row_bytes = t.bytes.size() / static_cast<size_t>(t.spec.shape[0]);
    t.spec.shape[0] -= 1;
    t.bytes.resize(t.bytes.size() - row_bytes);
  }
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = Write();
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("'" + name + "'"));
  EXPECT_THAT(w.status().message(), HasSubstr("expected"));
}

INSTANTIATE_TEST_SUITE_P(Schemes, QuantizedWeightsTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.label); });

TEST(QuantizedWeightsInt4Test, GroupSizeMustMatchTheTensors) {
  const std::string dir = FreshTempDir("quantized_weights_group");
  std::vector<StoredTensor> stored;
  FloatModel expected;
  const quant::QuantParams params{64, false};
  ASSERT_TRUE(BuildArtifactTensors(RandomTinyLlama(3), quant::QuantScheme::kInt4, params, &stored,
                                   &expected)
                  .ok());
  // config.json says 32 while the tensors hold groups of 64.
  ASSERT_TRUE(WriteArtifact(dir, TinyLlamaConfig(), quant::QuantScheme::kInt4, {32, false}, stored,
                            MinimalManifest(quant::QuantScheme::kInt4, params))
                  .ok());
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("group_size is 32"));
  std::filesystem::remove_all(dir);
}

TEST(QuantizedWeightsNf4Test, MalformedQuantStateIsRefused) {
  const std::string dir = FreshTempDir("quantized_weights_state");
  std::vector<StoredTensor> stored;
  FloatModel expected;
  const quant::QuantParams params{128, false};
  ASSERT_TRUE(
      BuildArtifactTensors(RandomTinyLlama(3), quant::QuantScheme::kNf4, params, &stored, &expected)
          .ok());
  const std::string name = "model.layers.0.mlp.gate_proj.weight.quant_state.bitsandbytes__nf4";
  for (StoredTensor& t : stored) {
    if (t.spec.name != name) continue;
    const std::string bad = "{\"quant_type\": \"fp4\"}";
    t.bytes.assign(bad.begin(), bad.end());
    t.spec.shape = {static_cast<int64_t>(bad.size())};
  }
  ASSERT_TRUE(WriteArtifact(dir, TinyLlamaConfig(), quant::QuantScheme::kNf4, params, stored,
                            MinimalManifest(quant::QuantScheme::kNf4, params))
                  .ok());
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr(name));
  EXPECT_THAT(w.status().message(), HasSubstr("quant_type"));
  std::filesystem::remove_all(dir);
}

TEST(QuantizedWeightsPlainTest, ManifestWithoutQuantizationConfigIsRefused) {
  const std::string dir = FreshTempDir("quantized_weights_plain");
  ASSERT_TRUE(testing::WriteF32Model(dir, TinyLlamaConfig(), RandomTinyLlama(1)).ok());
  // A plain directory opens as before.
  absl::StatusOr<std::unique_ptr<ModelWeights>> w = ModelWeights::Open(dir);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->quantization(), "");
  ASSERT_TRUE(testing::WriteText(dir + "/manifest.json",
                                 MinimalManifest(quant::QuantScheme::kInt8, {}).dump())
                  .ok());
  w = ModelWeights::Open(dir);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("no quantization_config"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace shardserve
