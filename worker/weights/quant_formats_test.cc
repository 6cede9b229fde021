#include "worker/weights/quant_formats.h"

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/weights/dequantize.h"

namespace shardserve::quant {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The definitions below are recomputed here independently of quant_formats.cc (std::nearbyint
// instead of its rounding trick, brute-force searches instead of its decision trees).

// Normal(0, stddev) values; with `bf16`, rounded to bfloat16 as real checkpoints are (which makes
// exact rounding ties w / scale = n + 0.5 common).
std::vector<float> RandomMatrix(int64_t rows, int64_t cols, uint32_t seed, float stddev = 0.05f,
                                bool bf16 = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (float& v : w) v = bf16 ? BF16ToF32(F32ToBF16(dist(rng))) : dist(rng);
  return w;
}

// |w - w'| <= scale / 2 holds for the exact quotient; in float32 the quotient w / scale and the
// product q * scale each round, so the bound holds up to about |q| ulps of the scale.
float ErrorBound(float scale, float q) { return scale / 2 + (std::fabs(q) + 1) * scale * 2.4e-7f; }

template <typename T>
std::span<const uint8_t> Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// The smallest float16 (as bits) whose value is >= x > 0, by binary search over the ordered
// positive half bit patterns.
uint16_t SmallestF16AtLeast(float x) {
  uint32_t lo = 0;
  uint32_t hi = 0x7BFF;  // largest finite half
  while (lo < hi) {
    const uint32_t mid = (lo + hi) / 2;
    if (F16ToF32(static_cast<uint16_t>(mid)) >= x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return static_cast<uint16_t>(lo);
}

constexpr float kNf4Table[16] = {-1.0f,
                                 -0.6961928009986877f,
                                 -0.5250730514526367f,
                                 -0.39491748809814453f,
                                 -0.28444138169288635f,
                                 -0.18477343022823334f,
                                 -0.09105003625154495f,
                                 0.0f,
                                 0.07958029955625534f,
                                 0.16093020141124725f,
                                 0.24611230194568634f,
                                 0.33791524171829224f,
                                 0.44070982933044434f,
                                 0.5626170039176941f,
                                 0.7229568362236023f,
                                 1.0f};

// ---------------------------------------------------------------- naming and parameters

TEST(QuantFormatsTest, SchemeNamesRoundTrip) {
  for (QuantScheme s : {QuantScheme::kInt8, QuantScheme::kInt4, QuantScheme::kNf4}) {
    EXPECT_EQ(ParseScheme(SchemeName(s)), s);
  }
  EXPECT_EQ(SchemeName(QuantScheme::kInt4), "int4");
  EXPECT_FALSE(ParseScheme("fp8").has_value());
  EXPECT_FALSE(ParseScheme("INT8").has_value());
}

TEST(QuantFormatsTest, QuantizableLinearNames) {
  EXPECT_TRUE(IsQuantizableLinearName("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(IsQuantizableLinearName("model.layers.12.self_attn.o_proj.weight"));
  EXPECT_TRUE(IsQuantizableLinearName("model.layers.3.mlp.gate_proj.weight"));
  EXPECT_TRUE(IsQuantizableLinearName("model.layers.3.mlp.down_proj.weight"));
  EXPECT_TRUE(IsQuantizableLinearName("model.layers.1.block_sparse_moe.experts.7.w2.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("model.layers.1.block_sparse_moe.gate.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("model.layers.1.block_sparse_moe.experts.x.w2.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_FALSE(IsQuantizableLinearName("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("model.embed_tokens.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("lm_head.weight"));
  EXPECT_FALSE(IsQuantizableLinearName("model.layers.0.up_proj.weight"));  // not under mlp
  EXPECT_FALSE(IsQuantizableLinearName("q_proj.weight"));
  EXPECT_EQ(LinearPrefix("model.layers.0.mlp.up_proj.weight"), "model.layers.0.mlp.up_proj");
  EXPECT_FALSE(LinearPrefix("model.norm.bias").has_value());
}

TEST(QuantFormatsTest, AwqGroupSizeIsLargestDividingChoice) {
  const std::vector<int64_t> smollm = {576, 576, 576, 1536};  // hidden 576 = 4.5 x 128
  EXPECT_EQ(*ChooseAwqGroupSize(smollm), 64);
  const std::vector<int64_t> llama = {4096, 11008};
  EXPECT_EQ(*ChooseAwqGroupSize(llama), 128);
  const std::vector<int64_t> odd = {96, 4096};
  EXPECT_EQ(*ChooseAwqGroupSize(odd), 32);
  const std::vector<int64_t> bad = {4096, 100};
  absl::StatusOr<int64_t> g = ChooseAwqGroupSize(bad);
  ASSERT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.status().message(), HasSubstr("in_features 100"));
  EXPECT_EQ(ChooseAwqGroupSize({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(QuantFormatsTest, TensorSpecsPerScheme) {
  const std::string p = "model.layers.0.mlp.up_proj";
  auto int8 = QuantizedTensorSpecs(QuantScheme::kInt8, p, 1536, 576, {});
  ASSERT_TRUE(int8.ok()) << int8.status();
  EXPECT_THAT(*int8, ElementsAre(TensorSpec{p + ".weight", DType::kI8, {1536, 576}},
                                 TensorSpec{p + ".weight_scale", DType::kF32, {1536, 1}}));

  auto int4 = QuantizedTensorSpecs(QuantScheme::kInt4, p, 1536, 576, {.group_size = 64});
  ASSERT_TRUE(int4.ok()) << int4.status();
  EXPECT_THAT(*int4, ElementsAre(TensorSpec{p + ".qweight", DType::kI32, {576, 192}},
                                 TensorSpec{p + ".qzeros", DType::kI32, {9, 192}},
                                 TensorSpec{p + ".scales", DType::kF16, {9, 1536}}));

  auto nf4 = QuantizedTensorSpecs(QuantScheme::kNf4, p, 1536, 576, {});
  ASSERT_TRUE(nf4.ok()) << nf4.status();
  const int64_t state_bytes = static_cast<int64_t>(Nf4QuantStateBytes({1536, 576}, false));
  EXPECT_THAT(*nf4, ElementsAre(TensorSpec{p + ".weight", DType::kU8, {1536 * 576 / 2, 1}},
                                TensorSpec{p + ".weight.absmax", DType::kF32, {1536 * 576 / 64}},
                                TensorSpec{p + ".weight.quant_map", DType::kF32, {16}},
                                TensorSpec{p + ".weight.quant_state.bitsandbytes__nf4",
                                           DType::kU8,
                                           {state_bytes}}));

  auto nf4dq = QuantizedTensorSpecs(QuantScheme::kNf4, p, 1536, 576, {.double_quant = true});
  ASSERT_TRUE(nf4dq.ok()) << nf4dq.status();
  const int64_t blocks = 1536 * 576 / 64;  // 13824 -> 54 nested blocks
  const int64_t dq_state = static_cast<int64_t>(Nf4QuantStateBytes({1536, 576}, true));
  EXPECT_THAT(
      *nf4dq,
      ElementsAre(TensorSpec{p + ".weight", DType::kU8, {1536 * 576 / 2, 1}},
                  TensorSpec{p + ".weight.absmax", DType::kU8, {blocks}},
                  TensorSpec{p + ".weight.quant_map", DType::kF32, {16}},
                  TensorSpec{p + ".weight.nested_absmax", DType::kF32, {54}},
                  TensorSpec{p + ".weight.nested_quant_map", DType::kF32, {256}},
                  TensorSpec{p + ".weight.quant_state.bitsandbytes__nf4", DType::kU8, {dq_state}}));
}

TEST(QuantFormatsTest, TensorSpecsRefuseShapesTheSchemeCannotTake) {
  auto not8 = QuantizedTensorSpecs(QuantScheme::kInt4, "m.q_proj", 12, 64, {.group_size = 64});
  ASSERT_EQ(not8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not8.status().message(), HasSubstr("out_features 12 is not a multiple of 8"));
  auto not_g = QuantizedTensorSpecs(QuantScheme::kInt4, "m.q_proj", 16, 96, {.group_size = 64});
  ASSERT_EQ(not_g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_g.status().message(), HasSubstr("in_features 96 is not a multiple of the group"));
  auto bad_g = QuantizedTensorSpecs(QuantScheme::kInt4, "m.q_proj", 16, 96, {.group_size = 48});
  ASSERT_EQ(bad_g.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_g.status().message(), HasSubstr("group size 48"));
  auto empty = QuantizedTensorSpecs(QuantScheme::kInt8, "m.q_proj", 0, 96, {});
  ASSERT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("[0, 96]"));
}

TEST(QuantFormatsTest, QuantizationConfigs) {
  const std::vector<std::string> skip = {"lm_head"};
  nlohmann::json awq = QuantizationConfig(QuantScheme::kInt4, {.group_size = 64}, skip);
  EXPECT_EQ(awq["quant_method"], "awq");
  EXPECT_EQ(awq["bits"], 4);
  EXPECT_EQ(awq["group_size"], 64);
  EXPECT_EQ(awq["zero_point"], true);
  EXPECT_EQ(awq["version"], "gemm");
  EXPECT_EQ(awq["modules_to_not_convert"], nlohmann::json(skip));

  nlohmann::json bnb = QuantizationConfig(QuantScheme::kNf4, {.double_quant = true}, skip);
  EXPECT_EQ(bnb["quant_method"], "bitsandbytes");
  EXPECT_EQ(bnb["load_in_4bit"], true);
  EXPECT_EQ(bnb["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(bnb["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(bnb["bnb_4bit_compute_dtype"], "bfloat16");
  EXPECT_EQ(bnb["llm_int8_skip_modules"], nlohmann::json(skip));

  nlohmann::json ct = QuantizationConfig(QuantScheme::kInt8, {}, skip);
  EXPECT_EQ(ct["quant_method"], "compressed-tensors");
  EXPECT_EQ(ct["format"], "int-quantized");
  const nlohmann::json& weights = ct["config_groups"]["group_0"]["weights"];
  EXPECT_EQ(weights["num_bits"], 8);
  EXPECT_EQ(weights["strategy"], "channel");
  EXPECT_EQ(weights["symmetric"], true);
  EXPECT_EQ(ct["ignore"], nlohmann::json(skip));
}

// ---------------------------------------------------------------- int8

TEST(QuantFormatsTest, Int8MatchesDefinitionOnRandomMatrices) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    const int64_t out = 24, in = 200;
    std::vector<float> w = RandomMatrix(out, in, seed, 0.05f, /*bf16=*/seed > 2);
    for (int64_t k = 0; k < in; ++k) w[5 * in + k] = 0.0f;  // a zero row
    std::vector<int8_t> q(w.size());
    std::vector<float> scales(out);
    ASSERT_TRUE(QuantizeInt8(w, out, in, q, scales).ok());
    std::vector<float> deq(w.size());
    ASSERT_TRUE(DequantizeInt8(Bytes(q), Bytes(scales), out, in, deq).ok());
    for (int64_t n = 0; n < out; ++n) {
      float amax = 0.0f;
      for (int64_t k = 0; k < in; ++k) amax = std::max(amax, std::fabs(w[n * in + k]));
      const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
      ASSERT_EQ(scales[n], scale) << "row " << n;
      for (int64_t k = 0; k < in; ++k) {
        const float v = w[n * in + k];
        const float expect_q = std::clamp(std::nearbyint(v / scale), -127.0f, 127.0f);
        ASSERT_EQ(q[n * in + k], static_cast<int8_t>(expect_q)) << n << "," << k;
        ASSERT_EQ(deq[n * in + k], expect_q * scale);  // exact
        ASSERT_LE(std::fabs(v - deq[n * in + k]), ErrorBound(scale, expect_q));
      }
    }
  }
}

TEST(QuantFormatsTest, Int8HandBuiltRowRoundsHalfToEven) {
  // max 127 -> scale exactly 1; halves round to even as torch.round does.
  const std::vector<float> w = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -127.0f, 3.49f};
  std::vector<int8_t> q(8);
  std::vector<float> scales(1);
  ASSERT_TRUE(QuantizeInt8(w, 1, 8, q, scales).ok());
  EXPECT_EQ(scales[0], 1.0f);
  EXPECT_THAT(q, ElementsAre(127, 0, 2, 2, 0, -2, -127, 3));
}

TEST(QuantFormatsTest, QuantizeRefusesNonFiniteWeights) {
  std::vector<float> w = RandomMatrix(8, 64, 4);
  w[3 * 64 + 7] = std::nanf("");
  for (QuantScheme s : {QuantScheme::kInt8, QuantScheme::kInt4, QuantScheme::kNf4}) {
    auto r = QuantizeLinear(s, "model.layers.0.mlp.up_proj", w, 8, 64, {.group_size = 64});
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << SchemeName(s);
    EXPECT_THAT(r.status().message(), HasSubstr("model.layers.0.mlp.up_proj.weight"));
    EXPECT_THAT(r.status().message(), HasSubstr("non-finite"));
  }
  w[3 * 64 + 7] = INFINITY;
  auto r = QuantizeLinear(QuantScheme::kInt8, "p", w, 8, 64, {});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("[3, 7]"));
}

// ---------------------------------------------------------------- int4

// AutoAWQ nibble order written out by hand: nibble i holds column 8j + kOrder[i].
constexpr int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

uint32_t NibbleOfColumn(uint32_t packed, int col) {
  for (int i = 0; i < 8; ++i) {
    if (kOrder[i] == col) return (packed >> (4 * i)) & 0xF;
  }
  return 99;
}

TEST(QuantFormatsTest, Int4AwqPackingOrderOnHandBuiltMatrix) {
  // Row n: w[n][0] = -n, w[n][1] = 15 - n, the rest 0. The range hi - lo = 15 gives scale
  // exactly 1 and zero = n; q = 0 at k = 0, 15 at k = 1 and n (the zero point) elsewhere.
  const int64_t out = 8, in = 32, g = 32;
  std::vector<float> w(out * in, 0.0f);
  for (int n = 0; n < 8; ++n) {
    w[n * in + 0] = static_cast<float>(-n);
    w[n * in + 1] = static_cast<float>(15 - n);
  }
  std::vector<int32_t> qweight(in), qzeros(1);
  std::vector<uint16_t> scales(out);
  ASSERT_TRUE(QuantizeInt4Awq(w, out, in, g, qweight, qzeros, scales).ok());
  for (int n = 0; n < 8; ++n) EXPECT_EQ(F16ToF32(scales[n]), 1.0f) << n;
  // qzeros holds zero = n for column n: nibbles in order 0,2,4,6,1,3,5,7.
  EXPECT_EQ(static_cast<uint32_t>(qzeros[0]), 0x75316420u);
  // k = 0: q = -n + n = 0 for every column; k = 1: q = 15 everywhere.
  EXPECT_EQ(static_cast<uint32_t>(qweight[0]), 0x00000000u);
  EXPECT_EQ(static_cast<uint32_t>(qweight[1]), 0xFFFFFFFFu);
  // k = 2 (value 0): q = zero = n -> same pattern as the zeros.
  EXPECT_EQ(static_cast<uint32_t>(qweight[2]), 0x75316420u);
  // And the accessor agrees with the hand-written order.
  for (int c = 0; c < 8; ++c) {
    EXPECT_EQ(AwqUnpack(0x75316420u, c), static_cast<uint32_t>(c));
    EXPECT_EQ(NibbleOfColumn(0x75316420u, c), static_cast<uint32_t>(c));
  }
  std::vector<float> deq(w.size());
  ASSERT_TRUE(
      DequantizeInt4Awq(Bytes(qweight), Bytes(qzeros), Bytes(scales), out, in, g, deq).ok());
  EXPECT_EQ(deq, w);  // every value is an integer within the grid: exact
}

TEST(QuantFormatsTest, Int4MatchesDefinitionOnRandomMatrices) {
  struct Case {
    int64_t out, in, g;
    uint32_t seed;
  };
  for (const Case& c :
       {Case{16, 256, 128, 5}, Case{24, 192, 64, 6}, Case{8, 96, 32, 7}, Case{32, 576, 64, 8}}) {
    std::vector<float> w = RandomMatrix(c.out, c.in, c.seed, 0.05f, /*bf16=*/c.seed >= 7);
    // One all-positive group and one all-zero group (the range still holds 0).
    for (int64_t k = 0; k < c.g; ++k) w[1 * c.in + k] = 0.5f + 0.001f * static_cast<float>(k);
    for (int64_t k = 0; k < c.g; ++k) w[2 * c.in + k] = 0.0f;
    const int64_t groups = c.in / c.g, packs = c.out / 8;
    std::vector<int32_t> qweight(c.in * packs), qzeros(groups * packs);
    std::vector<uint16_t> scales(groups * c.out);
    ASSERT_TRUE(QuantizeInt4Awq(w, c.out, c.in, c.g, qweight, qzeros, scales).ok());
    std::vector<float> deq(w.size());
    ASSERT_TRUE(
        DequantizeInt4Awq(Bytes(qweight), Bytes(qzeros), Bytes(scales), c.out, c.in, c.g, deq)
            .ok());
    for (int64_t n = 0; n < c.out; ++n) {
      for (int64_t gi = 0; gi < groups; ++gi) {
        float lo = 0.0f, hi = 0.0f;
        for (int64_t k = gi * c.g; k < (gi + 1) * c.g; ++k) {
          lo = std::min(lo, w[n * c.in + k]);
          hi = std::max(hi, w[n * c.in + k]);
        }
        const uint16_t s_bits = SmallestF16AtLeast(std::max(hi - lo, 1e-5f) / 15.0f);
        const float s = F16ToF32(s_bits);
        const float zero = std::clamp(std::nearbyint(-lo / s), 0.0f, 15.0f);
        ASSERT_EQ(scales[gi * c.out + n], s_bits) << n << "," << gi;
        ASSERT_EQ(NibbleOfColumn(static_cast<uint32_t>(qzeros[gi * packs + n / 8]), n % 8),
                  static_cast<uint32_t>(zero));
        for (int64_t k = gi * c.g; k < (gi + 1) * c.g; ++k) {
          const float v = w[n * c.in + k];
          const float q = std::clamp(std::nearbyint(v / s) + zero, 0.0f, 15.0f);
          ASSERT_EQ(NibbleOfColumn(static_cast<uint32_t>(qweight[k * packs + n / 8]), n % 8),
                    static_cast<uint32_t>(q))
              << n << "," << k;
          ASSERT_EQ(deq[n * c.in + k], (q - zero) * s);  // exact
          ASSERT_LE(std::fabs(v - deq[n * c.in + k]), ErrorBound(s, q - zero)) << n << "," << k;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- nf4

TEST(QuantFormatsTest, Nf4HandBuiltPackingHighNibbleFirst) {
  const std::vector<float> w = {1.0f, -1.0f, 0.0f, 0.5f, -0.25f};  // odd count, one block
  auto r = QuantizeNf4(w, false);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_THAT(r->absmax, ElementsAre(1.0f));
  // codes: 1.0 -> 15, -1.0 -> 0, 0 -> 7, 0.5 -> 12 (0.4407, below the 0.5017 midpoint),
  // -0.25 -> 4 (-0.2844); the padding nibble -> 7.
  EXPECT_THAT(r->packed, ElementsAre(0xF0, 0x7C, 0x47));
}

TEST(QuantFormatsTest, Nf4TiesGoToTheLowerCode) {
  // Exactly on bitsandbytes' float32 threshold between codes 7 and 8: code 7.
  EXPECT_EQ(Nf4Encode(0.03979014977812767f), 7);
  EXPECT_EQ(Nf4Encode(std::nextafter(0.03979014977812767f, 1.0f)), 8);
  EXPECT_EQ(Nf4Encode(-0.8480964004993439f), 0);
  EXPECT_EQ(Nf4Encode(std::nextafter(-0.8480964004993439f, 1.0f)), 1);
  EXPECT_EQ(Nf4Encode(1.0f), 15);
  EXPECT_EQ(Nf4Encode(-1.0f), 0);
  EXPECT_EQ(Nf4Encode(0.0f), 7);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(Nf4Encode(kNf4Table[i]), i);
}

TEST(QuantFormatsTest, Nf4PicksTheNearestCodeOnRandomData) {
  for (uint32_t seed : {8u, 9u}) {
    const int64_t out = 7, in = 75;  // 525 values: 9 blocks, the last short; odd count
    std::vector<float> w = RandomMatrix(out, in, seed);
    for (int64_t i = 64; i < 128; ++i) w[i] = 0.0f;  // an all-zero block
    auto r = QuantizeNf4(w, false);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->absmax.size(), 9u);
    ASSERT_EQ(r->packed.size(), 263u);
    std::vector<float> deq(w.size());
    const std::vector<float> map(std::begin(kNf4Table), std::end(kNf4Table));
    ASSERT_TRUE(DequantizeNf4(r->packed, r->absmax, map, out * in, deq).ok());
    for (size_t i = 0; i < w.size(); ++i) {
      const size_t b = i / 64;
      float amax = 0.0f;
      for (size_t j = b * 64; j < std::min(w.size(), b * 64 + 64); ++j) {
        amax = std::max(amax, std::fabs(w[j]));
      }
      ASSERT_EQ(r->absmax[b], amax);
      const uint8_t code = i % 2 == 0 ? r->packed[i / 2] >> 4 : r->packed[i / 2] & 0xF;
      if (amax == 0.0f) {
        ASSERT_EQ(code, 7);
      } else {
        const float x = w[i] * (1.0f / amax);
        float best = INFINITY;
        for (float c : kNf4Table) best = std::min(best, std::fabs(x - c));
        ASSERT_LE(std::fabs(x - kNf4Table[code]), best + 1e-6f) << i;
      }
      ASSERT_EQ(deq[i], kNf4Table[code] * amax);  // exact
    }
    EXPECT_EQ(r->packed.back() & 0xF, 7);  // padding nibble
  }
}

TEST(QuantFormatsTest, DynamicMapIsBitsandbytesSigned8Bit) {
  const std::array<float, 256>& m = DynamicQuantMap();
  EXPECT_TRUE(std::is_sorted(m.begin(), m.end()));
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  // Largest magnitude below 1: the last midpoint of linspace(0.1, 1, 65) = 1 - 0.9 / 128.
  EXPECT_FLOAT_EQ(m[254], 0.99296875f);
  EXPECT_FLOAT_EQ(m[0], -0.99296875f);
  // Smallest magnitude: 1e-6 * (0.1 + 1) / 2.
  EXPECT_FLOAT_EQ(m[128], 5.5e-7f);
  EXPECT_FLOAT_EQ(m[126], -5.5e-7f);
  for (int i = 0; i < 127; ++i) EXPECT_EQ(m[i], -m[254 - i]) << i;
}

TEST(QuantFormatsTest, DynamicEncodePicksNearestValue) {
  const std::array<float, 256>& m = DynamicQuantMap();
  std::mt19937 rng(10);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int t = 0; t < 20000; ++t) {
    float x = dist(rng);
    if (t % 3 == 0) x *= 1e-3f;
    const uint8_t code = DynamicEncode(m, x);
    float best = INFINITY;
    for (float v : m) best = std::min(best, std::fabs(x - v));
    ASSERT_LE(std::fabs(x - m[code]), best * (1 + 1e-6f) + 1e-12f) << x;
  }
  for (int i = 0; i < 256; ++i) EXPECT_EQ(DynamicEncode(m, m[i]), i);
}

TEST(QuantFormatsTest, Nf4DoubleQuantizationResolvesAbsmax) {
  const int64_t out = 64, in = 520;  // 520 blocks -> 3 nested blocks, the last short
  std::vector<float> w = RandomMatrix(out, in, 11);
  auto r = QuantizeNf4(w, true);
  ASSERT_TRUE(r.ok()) << r.status();
  const int64_t blocks = Nf4Blocks(out * in);
  ASSERT_EQ(r->qabsmax.size(), static_cast<size_t>(blocks));
  ASSERT_EQ(r->nested_absmax.size(), 3u);
  double sum = 0;
  for (float a : r->absmax) sum += a;
  EXPECT_EQ(r->nested_offset, static_cast<float>(sum / blocks));
  const std::array<float, 256>& m = DynamicQuantMap();
  std::vector<float> map(m.begin(), m.end());
  std::vector<float> resolved(blocks);
  ASSERT_TRUE(
      ResolveNf4Absmax(r->qabsmax, Bytes(r->nested_absmax), Bytes(map), r->nested_offset, resolved)
          .ok());
  for (int64_t b = 0; b < blocks; ++b) {
    const float nested = r->nested_absmax[b / 256];
    float nmax = 0.0f;
    for (int64_t j = (b / 256) * 256; j < std::min(blocks, (b / 256) * 256 + 256); ++j) {
      nmax = std::max(nmax, std::fabs(r->absmax[j] - r->nested_offset));
    }
    ASSERT_EQ(nested, nmax);
    ASSERT_EQ(resolved[b], m[r->qabsmax[b]] * nested + r->nested_offset);
    // The 8-bit code is the nearest map value to the centered absmax.
    const float x = (r->absmax[b] - r->nested_offset) * (1.0f / nested);
    float best = INFINITY;
    for (float v : m) best = std::min(best, std::fabs(x - v));
    ASSERT_LE(std::fabs(x - m[r->qabsmax[b]]), best * (1 + 1e-6f) + 1e-12f);
    ASSERT_NEAR(resolved[b], r->absmax[b], 0.01f * r->absmax[b]);
  }
  // The 4-bit codes are those of the exact absmax (double quantization only compresses absmax).
  auto single = QuantizeNf4(w, false);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->packed, r->packed);
}

TEST(QuantFormatsTest, Nf4QuantStateJsonRoundTrips) {
  const std::string plain = Nf4QuantStateJson({576, 576}, false, 0.0f);
  EXPECT_EQ(plain.size(), Nf4QuantStateBytes({576, 576}, false));
  EXPECT_EQ(plain.substr(0, plain.find('}') + 1),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
            "\"shape\": [576, 576]}");
  const float offset = 0.0123456789f;
  const std::string nested = Nf4QuantStateJson({1536, 576}, true, offset);
  EXPECT_EQ(nested.size(), Nf4QuantStateBytes({1536, 576}, true));
  EXPECT_THAT(nested, HasSubstr("\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
                                "\"nested_offset\": "));
  auto st = ParseNf4QuantState({reinterpret_cast<const uint8_t*>(nested.data()), nested.size()});
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->quant_type, "nf4");
  EXPECT_EQ(st->blocksize, 64);
  EXPECT_EQ(st->dtype, "bfloat16");
  EXPECT_THAT(st->shape, ElementsAre(1536, 576));
  EXPECT_TRUE(st->nested);
  EXPECT_EQ(st->nested_blocksize, 256);
  EXPECT_EQ(st->nested_offset, offset);  // 9 significant digits round-trip a float

  const std::string bad = R"({"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16",
                              "shape": [2, 2]})";
  auto e = ParseNf4QuantState({reinterpret_cast<const uint8_t*>(bad.data()), bad.size()});
  ASSERT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("quant_type"));
  const std::string missing = R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16"})";
  e = ParseNf4QuantState({reinterpret_cast<const uint8_t*>(missing.data()), missing.size()});
  ASSERT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("missing \"shape\""));
  const std::string junk = "{not json";
  e = ParseNf4QuantState({reinterpret_cast<const uint8_t*>(junk.data()), junk.size()});
  ASSERT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(e.status().message(), HasSubstr("invalid JSON"));
}

TEST(QuantFormatsTest, QuantizeLinearBuffersMatchSpecsAndDequantize) {
  const int64_t out = 16, in = 128;
  std::vector<float> w = RandomMatrix(out, in, 12);
  for (QuantScheme s : {QuantScheme::kInt8, QuantScheme::kInt4, QuantScheme::kNf4}) {
    for (bool dq : {false, true}) {
      auto r = QuantizeLinear(s, "m.q_proj", w, out, in, {.group_size = 64, .double_quant = dq});
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_EQ(r->specs.size(), r->data.size());
      for (size_t i = 0; i < r->specs.size(); ++i) {
        EXPECT_EQ(r->data[i].size(), *TensorSpecBytes(r->specs[i])) << r->specs[i].name;
      }
      std::vector<float> deq(w.size());
      float worst = 0.0f;
      if (s == QuantScheme::kInt8) {
        ASSERT_TRUE(DequantizeInt8(r->data[0], r->data[1], out, in, deq).ok());
      } else if (s == QuantScheme::kInt4) {
        ASSERT_TRUE(DequantizeInt4Awq(r->data[0], r->data[1], r->data[2], out, in, 64, deq).ok());
      } else {
        auto map = ReadF32Array(r->data[2], 16);
        ASSERT_TRUE(map.ok());
        std::vector<float> absmax(Nf4Blocks(out * in));
        if (dq) {
          auto st = ParseNf4QuantState(r->data[5]);
          ASSERT_TRUE(st.ok()) << st.status();
          ASSERT_TRUE(
              ResolveNf4Absmax(r->data[1], r->data[3], r->data[4], st->nested_offset, absmax).ok());
        } else {
          auto a = ReadF32Array(r->data[1], absmax.size());
          ASSERT_TRUE(a.ok());
          absmax = *a;
        }
        ASSERT_TRUE(DequantizeNf4(r->data[0], absmax, *map, out * in, deq).ok());
      }
      for (size_t i = 0; i < w.size(); ++i) worst = std::max(worst, std::fabs(w[i] - deq[i]));
      // Loose sanity bounds for N(0, 0.05) weights: int8 ~ amax/254, 4-bit ~ range/30.
      EXPECT_LT(worst, s == QuantScheme::kInt8 ? 0.002f : 0.05f) << SchemeName(s);
    }
  }
}

TEST(QuantFormatsTest, DequantizeChecksBufferSizes) {
  std::vector<float> w(16 * 64);
  std::vector<uint8_t> small(3);
  absl::Status s = DequantizeInt8(small, small, 16, 64, w);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("int8 codes"));
  s = DequantizeInt4Awq(small, small, small, 16, 64, 64, w);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("qweight"));
  std::vector<float> absmax(16), map(16);
  s = DequantizeNf4(small, absmax, map, 16 * 64, w);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("packed"));
  auto f = ReadF32Array(small, 1);
  ASSERT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr("3 bytes"));
}

}  // namespace
}  // namespace shardserve::quant
