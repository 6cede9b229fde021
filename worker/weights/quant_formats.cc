#include "worker/weights/quant_formats.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "worker/backend/cpu/fp16.h"
#include "worker/weights/dequantize.h"

// Dequantization is defined as separate float32 operations; the build passes -ffp-contract=off.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

namespace shardserve::quant {
namespace {

static_assert(std::endian::native == std::endian::little,
              "quantized tensors are written as host-order bytes");
static_assert(
    [] {
      for (int i = 0; i < 8; ++i) {
        if (kAwqNibbleOfColumn[kAwqPackOrder[i]] != i) return false;
      }
      return true;
    }(),
    "kAwqNibbleOfColumn must invert kAwqPackOrder");

// Round half to even (torch.round / rint in the default rounding mode) for |x| < 2^22: adding
// and subtracting 1.5 * 2^23 leaves x rounded to an integer by the addition's own rounding (the
// build keeps the two operations separate). Branch-free so that loops vectorize; every caller's
// values are bounded far below 2^22 (|w / scale| <= 127 or 15 by construction).
inline float RoundHalfEven(float x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (x + kMagic) - kMagic;
}

// max |v| over a span of finite floats, as a vectorizable integer reduction (the magnitude bits
// of non-negative floats order like the floats).
inline float MaxAbs(const float* v, int64_t n) {
  uint32_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof(bits));
    bits &= 0x7FFFFFFFu;
    best = bits > best ? bits : best;
  }
  float out;
  std::memcpy(&out, &best, sizeof(out));
  return out;
}

absl::Status CheckFinite(std::span<const float> w, int64_t cols) {
  // Branch-free scan first (an all-ones exponent is Inf or NaN), the position only on failure.
  uint32_t any = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &w[i], sizeof(bits));
    any |= (bits & 0x7F800000u) == 0x7F800000u ? 1u : 0u;
  }
  if (any == 0) return absl::OkStatus();
  for (size_t i = 0; i < w.size(); ++i) {
    if (!std::isfinite(w[i])) {
      const int64_t r = static_cast<int64_t>(i) / cols;
      const int64_t c = static_cast<int64_t>(i) % cols;
      return absl::InvalidArgumentError(absl::StrCat("non-finite weight ", w[i], " at [", r, ", ",
                                                     c, "]; quantization needs finite values"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDims(int64_t out, int64_t in, size_t values) {
  if (out <= 0 || in <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("linear weight shape [", out, ", ", in, "] must have positive dimensions"));
  }
  if (in > std::numeric_limits<int64_t>::max() / out || static_cast<uint64_t>(out * in) != values) {
    return absl::InvalidArgumentError(absl::StrCat("linear weight shape [", out, ", ", in,
                                                   "] does not match ", values, " values"));
  }
  return absl::OkStatus();
}

absl::Status CheckSize(absl::string_view what, size_t got, uint64_t want) {
  if (got != want) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", got, " elements/bytes given, ", want, " expected"));
  }
  return absl::OkStatus();
}

inline float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}
inline uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
std::vector<uint8_t> ToBytes(const std::vector<T>& v) {
  std::vector<uint8_t> out(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// The smallest float16 >= x for finite x > 0; nullopt when that is not finite.
std::optional<uint16_t> F16RoundUp(float x) {
  uint16_t h = cpu::F32ToF16Bits(x);
  if (F16ToF32(h) < x) ++h;  // positive halves are ordered like their bit patterns
  if ((h & 0x7C00u) == 0x7C00u) return std::nullopt;
  return h;
}

// Python's json.dumps of a list of ints: "[576, 576]".
std::string JsonIntList(const std::vector<int64_t>& v) {
  return absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

std::string Nf4QuantStateJsonUnpadded(const std::vector<int64_t>& shape, bool double_quant,
                                      const std::string& offset_text) {
  std::string s = absl::StrCat("{\"quant_type\": \"nf4\", \"blocksize\": ", kNf4BlockSize,
                               ", \"dtype\": \"bfloat16\", \"shape\": ", JsonIntList(shape));
  if (double_quant) {
    absl::StrAppend(&s, ", \"nested_blocksize\": ", kNf4NestedBlockSize,
                    ", \"nested_dtype\": \"float32\", \"nested_offset\": ", offset_text);
  }
  s += "}";
  return s;
}

// The longest text "%.9g" produces for a float.
constexpr char kLongestOffsetText[] = "-1.23456789e-38";

}  // namespace

std::string_view SchemeName(QuantScheme scheme) {
  switch (scheme) {
    case QuantScheme::kInt8:
      return "int8";
    case QuantScheme::kInt4:
      return "int4";
    case QuantScheme::kNf4:
      return "nf4";
  }
  return "unknown";
}

std::optional<QuantScheme> ParseScheme(std::string_view name) {
  if (name == "int8") return QuantScheme::kInt8;
  if (name == "int4") return QuantScheme::kInt4;
  if (name == "nf4") return QuantScheme::kNf4;
  return std::nullopt;
}

bool IsQuantizableLinearName(std::string_view name) {
  constexpr std::string_view kWeight = ".weight";
  if (name.size() <= kWeight.size() || !name.ends_with(kWeight)) return false;
  const std::string_view module = name.substr(0, name.size() - kWeight.size());
  // Split off the last component and its parent.
  const size_t dot = module.rfind('.');
  if (dot == std::string_view::npos) return false;  // a bare "q_proj.weight" has no layer
  const std::string_view leaf = module.substr(dot + 1);
  const std::string_view parent_path = module.substr(0, dot);
  const size_t pdot = parent_path.rfind('.');
  const std::string_view parent =
      pdot == std::string_view::npos ? parent_path : parent_path.substr(pdot + 1);
  if (leaf == "q_proj" || leaf == "k_proj" || leaf == "v_proj" || leaf == "o_proj") return true;
  if (leaf == "gate_proj" || leaf == "up_proj" || leaf == "down_proj") return parent == "mlp";
  if (leaf == "w1" || leaf == "w2" || leaf == "w3") {
    // *.experts.{e}.w1: parent is the expert index, grandparent "experts".
    if (parent.empty() ||
        !std::all_of(parent.begin(), parent.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    if (pdot == std::string_view::npos) return false;
    const std::string_view gp_path = parent_path.substr(0, pdot);
    const size_t gdot = gp_path.rfind('.');
    const std::string_view grandparent =
        gdot == std::string_view::npos ? gp_path : gp_path.substr(gdot + 1);
    return grandparent == "experts";
  }
  return false;
}

std::optional<std::string> LinearPrefix(std::string_view weight_name) {
  constexpr std::string_view kWeight = ".weight";
  if (weight_name.size() <= kWeight.size() || !weight_name.ends_with(kWeight)) {
    return std::nullopt;
  }
  return std::string(weight_name.substr(0, weight_name.size() - kWeight.size()));
}

const std::array<float, 256>& DynamicQuantMap() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
  // 2^i + 1 boundaries evenly spaced over [0.1, 1], their 2^i midpoints scaled by 10^(i-6), with
  // both signs; then 0 and 1. 127 + 127 + 2 = 256 values. Computed in double and rounded once to
  // float32 (bitsandbytes builds it with torch float32 ops, which may differ in the last bit; the
  // map written into each artifact is the one every reader uses).
  static const std::array<float, 256> map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const int boundaries = (1 << i) + 1;
      const double scale = std::pow(10.0, i - 6);
      for (int j = 0; j + 1 < boundaries; ++j) {
        const double lo = 0.1 + 0.9 * j / (boundaries - 1);
        const double hi = 0.1 + 0.9 * (j + 1) / (boundaries - 1);
        const double mean = (lo + hi) / 2.0;
        data.push_back(static_cast<float>(scale * mean));
        data.push_back(static_cast<float>(-scale * mean));
      }
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    std::sort(data.begin(), data.end());
    std::array<float, 256> out{};
    std::copy(data.begin(), data.end(), out.begin());
    return out;
  }();
  return map;
}

absl::StatusOr<int64_t> ChooseAwqGroupSize(std::span<const int64_t> in_features) {
  if (in_features.empty()) {
    return absl::InvalidArgumentError("no quantized layer to choose an int4 group size for");
  }
  for (int64_t g : kAwqGroupSizeChoices) {
    if (std::all_of(in_features.begin(), in_features.end(),
                    [g](int64_t in) { return in > 0 && in % g == 0; })) {
      return g;
    }
  }
  for (int64_t in : in_features) {
    if (in <= 0 || in % kAwqGroupSizeChoices.back() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "in_features ", in, " is not a multiple of 32: no int4 group size (128, 64, 32) fits"));
    }
  }
  return absl::InternalError("no int4 group size found");  // unreachable
}

absl::StatusOr<std::vector<TensorSpec>> QuantizedTensorSpecs(QuantScheme scheme,
                                                             absl::string_view prefix, int64_t out,
                                                             int64_t in,
                                                             const QuantParams& params) {
  if (out <= 0 || in <= 0 || in > std::numeric_limits<int64_t>::max() / out) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ": linear weight shape [", out, ", ", in, "] cannot be quantized"));
  }
  const std::string p(prefix);
  switch (scheme) {
    case QuantScheme::kInt8:
      return std::vector<TensorSpec>{
          {p + std::string(kInt8WeightSuffix), DType::kI8, {out, in}},
          {p + std::string(kInt8ScaleSuffix), DType::kF32, {out, 1}},
      };
    case QuantScheme::kInt4: {
      const int64_t g = params.group_size;
      if (std::find(kAwqGroupSizeChoices.begin(), kAwqGroupSizeChoices.end(), g) ==
          kAwqGroupSizeChoices.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, ": int4 group size ", g, " is not 128, 64 or 32"));
      }
      if (out % kAwqPackFactor != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            prefix, ": out_features ", out, " is not a multiple of 8 (AWQ packs 8 outputs)"));
      }
      if (in % g != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, ": in_features ", in, " is not a multiple of the group size ", g));
      }
      return std::vector<TensorSpec>{
          {p + std::string(kAwqQweightSuffix), DType::kI32, {in, out / kAwqPackFactor}},
          {p + std::string(kAwqQzerosSuffix), DType::kI32, {in / g, out / kAwqPackFactor}},
          {p + std::string(kAwqScalesSuffix), DType::kF16, {in / g, out}},
      };
    }
    case QuantScheme::kNf4: {
      const int64_t numel = out * in;
      const int64_t blocks = Nf4Blocks(numel);
      std::vector<TensorSpec> specs = {
          {p + std::string(kNf4WeightSuffix), DType::kU8, {(numel + 1) / 2, 1}},
          {p + std::string(kNf4AbsmaxSuffix),
           params.double_quant ? DType::kU8 : DType::kF32,
           {blocks}},
          {p + std::string(kNf4QuantMapSuffix), DType::kF32, {16}},
      };
      if (params.double_quant) {
        specs.push_back(
            {p + std::string(kNf4NestedAbsmaxSuffix), DType::kF32, {Nf4NestedBlocks(blocks)}});
        specs.push_back({p + std::string(kNf4NestedQuantMapSuffix), DType::kF32, {256}});
      }
      specs.push_back({p + std::string(kNf4QuantStateSuffix),
                       DType::kU8,
                       {static_cast<int64_t>(Nf4QuantStateBytes({out, in}, params.double_quant))}});
      return specs;
    }
  }
  return absl::InvalidArgumentError("unknown quantization scheme");
}

absl::StatusOr<QuantizedTensors> QuantizeLinear(QuantScheme scheme, absl::string_view prefix,
                                                std::span<const float> w, int64_t out, int64_t in,
                                                const QuantParams& params) {
  QuantizedTensors result;
  ASSIGN_OR_RETURN(result.specs, QuantizedTensorSpecs(scheme, prefix, out, in, params));
  auto with_prefix = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(prefix, ".weight: ", s.message()));
  };
  switch (scheme) {
    case QuantScheme::kInt8: {
      std::vector<int8_t> q(static_cast<size_t>(out * in));
      std::vector<float> scales(static_cast<size_t>(out));
      if (absl::Status s = QuantizeInt8(w, out, in, q, scales); !s.ok()) return with_prefix(s);
      result.data.push_back(ToBytes(q));
      result.data.push_back(ToBytes(scales));
      break;
    }
    case QuantScheme::kInt4: {
      const int64_t g = params.group_size;
      std::vector<int32_t> qweight(static_cast<size_t>(in * (out / kAwqPackFactor)));
      std::vector<int32_t> qzeros(static_cast<size_t>((in / g) * (out / kAwqPackFactor)));
      std::vector<uint16_t> scales(static_cast<size_t>((in / g) * out));
      if (absl::Status s = QuantizeInt4Awq(w, out, in, g, qweight, qzeros, scales); !s.ok()) {
        return with_prefix(s);
      }
      result.data.push_back(ToBytes(qweight));
      result.data.push_back(ToBytes(qzeros));
      result.data.push_back(ToBytes(scales));
      break;
    }
    case QuantScheme::kNf4: {
      if (absl::Status s = CheckDims(out, in, w.size()); !s.ok()) return with_prefix(s);
      absl::StatusOr<Nf4Quantized> nf4 = QuantizeNf4(w, params.double_quant);
      if (!nf4.ok()) return with_prefix(nf4.status());
      result.data.push_back(std::move(nf4->packed));
      if (params.double_quant) {
        result.data.push_back(std::move(nf4->qabsmax));
      } else {
        result.data.push_back(ToBytes(nf4->absmax));
      }
      result.data.push_back(ToBytes(std::vector<float>(kNf4Codes.begin(), kNf4Codes.end())));
      if (params.double_quant) {
        result.data.push_back(ToBytes(nf4->nested_absmax));
        const auto& map = DynamicQuantMap();
        result.data.push_back(ToBytes(std::vector<float>(map.begin(), map.end())));
      }
      const std::string state =
          Nf4QuantStateJson({out, in}, params.double_quant, nf4->nested_offset);
      result.data.emplace_back(state.begin(), state.end());
      break;
    }
  }
  // Every buffer must have exactly the size its spec promises (the writer checks it again).
  for (size_t i = 0; i < result.specs.size(); ++i) {
    ASSIGN_OR_RETURN(uint64_t bytes, TensorSpecBytes(result.specs[i]));
    if (result.data[i].size() != bytes) {
      return absl::InternalError(absl::StrCat(result.specs[i].name, ": ", result.data[i].size(),
                                              " bytes produced, ", bytes, " expected"));
    }
  }
  return result;
}

nlohmann::json QuantizationConfig(QuantScheme scheme, const QuantParams& params,
                                  const std::vector<std::string>& not_converted) {
  using nlohmann::json;
  switch (scheme) {
    case QuantScheme::kInt8:
      return json{
          {"quant_method", "compressed-tensors"},
          {"format", "int-quantized"},
          {"quantization_status", "compressed"},
          {"config_groups",
           {{"group_0",
             {{"targets", json::array({"Linear"})},
              {"weights",
               {{"num_bits", 8},
                {"type", "int"},
                {"symmetric", true},
                {"strategy", "channel"},
                {"group_size", nullptr},
                {"dynamic", false},
                {"observer", "minmax"}}},
              {"input_activations", nullptr},
              {"output_activations", nullptr}}}}},
          {"ignore", not_converted},
          {"kv_cache_scheme", nullptr},
      };
    case QuantScheme::kInt4:
      return json{
          {"quant_method", "awq"}, {"bits", 4},         {"group_size", params.group_size},
          {"zero_point", true},    {"version", "gemm"}, {"modules_to_not_convert", not_converted},
      };
    case QuantScheme::kNf4:
      return json{
          {"quant_method", "bitsandbytes"},
          {"load_in_4bit", true},
          {"load_in_8bit", false},
          {"bnb_4bit_quant_type", "nf4"},
          {"bnb_4bit_use_double_quant", params.double_quant},
          {"bnb_4bit_compute_dtype", "bfloat16"},
          {"bnb_4bit_quant_storage", "uint8"},
          {"llm_int8_skip_modules", not_converted},
      };
  }
  return json::object();
}

// ============================ int8 ============================

absl::Status QuantizeInt8(std::span<const float> w, int64_t out, int64_t in, std::span<int8_t> q,
                          std::span<float> scales) {
  RETURN_IF_ERROR(CheckDims(out, in, w.size()));
  RETURN_IF_ERROR(CheckSize("int8 codes", q.size(), w.size()));
  RETURN_IF_ERROR(CheckSize("int8 scales", scales.size(), static_cast<uint64_t>(out)));
  RETURN_IF_ERROR(CheckFinite(w, in));
  for (int64_t n = 0; n < out; ++n) {
    const float* row = w.data() + n * in;
    const float amax = MaxAbs(row, in);
    float scale = amax / 127.0f;
    if (!(scale > 0.0f)) scale = 1.0f;
    scales[n] = scale;
    int8_t* qrow = q.data() + n * in;
    for (int64_t k = 0; k < in; ++k) {
      const float r = RoundHalfEven(row[k] / scale);
      qrow[k] = static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
    }
  }
  return absl::OkStatus();
}

absl::Status DequantizeInt8(std::span<const uint8_t> q, std::span<const uint8_t> scales,
                            int64_t out, int64_t in, std::span<float> w) {
  RETURN_IF_ERROR(CheckDims(out, in, w.size()));
  RETURN_IF_ERROR(CheckSize("int8 codes", q.size(), w.size()));
  RETURN_IF_ERROR(CheckSize("int8 scales", scales.size(), static_cast<uint64_t>(out) * 4));
  for (int64_t n = 0; n < out; ++n) {
    const float scale = LoadF32(scales.data() + 4 * n);
    const uint8_t* qrow = q.data() + n * in;
    float* row = w.data() + n * in;
    for (int64_t k = 0; k < in; ++k) {
      row[k] = static_cast<float>(static_cast<int8_t>(qrow[k])) * scale;
    }
  }
  return absl::OkStatus();
}

// ============================ int4 (AWQ GEMM) ============================

absl::Status QuantizeInt4Awq(std::span<const float> w, int64_t out, int64_t in, int64_t group_size,
                             std::span<int32_t> qweight, std::span<int32_t> qzeros,
                             std::span<uint16_t> scales) {
  RETURN_IF_ERROR(CheckDims(out, in, w.size()));
  const int64_t g = group_size;
  if (g <= 0 || in % g != 0 || out % kAwqPackFactor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("int4 needs out % 8 == 0 and in % group == 0; ",
                                                   "got [", out, ", ", in, "], group ", g));
  }
  const int64_t groups = in / g;
  const int64_t packs = out / kAwqPackFactor;
  RETURN_IF_ERROR(CheckSize("int4 qweight", qweight.size(), static_cast<uint64_t>(in * packs)));
  RETURN_IF_ERROR(CheckSize("int4 qzeros", qzeros.size(), static_cast<uint64_t>(groups * packs)));
  RETURN_IF_ERROR(CheckSize("int4 scales", scales.size(), static_cast<uint64_t>(groups * out)));
  RETURN_IF_ERROR(CheckFinite(w, in));

  // Eight output rows at a time: each int32 of qweight / qzeros is then built whole.
  std::vector<float> s8(static_cast<size_t>(8 * groups));
  std::vector<float> z8(static_cast<size_t>(8 * groups));
  std::vector<uint8_t> q8(static_cast<size_t>(8 * in));
  for (int64_t j = 0; j < packs; ++j) {
    for (int c = 0; c < 8; ++c) {
      const int64_t n = 8 * j + c;
      const float* row = w.data() + n * in;
      for (int64_t gi = 0; gi < groups; ++gi) {
        float lo = 0.0f;
        float hi = 0.0f;
        for (int64_t k = gi * g; k < (gi + 1) * g; ++k) {
          lo = std::min(lo, row[k]);
          hi = std::max(hi, row[k]);
        }
        const float raw = std::max(hi - lo, 1e-5f) / 15.0f;
        const std::optional<uint16_t> h = F16RoundUp(raw);
        if (!h.has_value()) {
          return absl::InvalidArgumentError(
              absl::StrCat("row ", n, ", group ", gi, ": value range ", hi - lo,
                           " needs an int4 scale beyond float16's range"));
        }
        const float s = F16ToF32(*h);
        const float zero = std::clamp(RoundHalfEven(-lo / s), 0.0f, 15.0f);
        scales[gi * out + n] = *h;
        s8[c * groups + gi] = s;
        z8[c * groups + gi] = zero;
      }
    }
    for (int64_t gi = 0; gi < groups; ++gi) {
      uint32_t packed_zero = 0;
      for (int i = 0; i < 8; ++i) {
        const int c = kAwqPackOrder[i];
        packed_zero |= static_cast<uint32_t>(z8[c * groups + gi]) << (4 * i);
      }
      qzeros[gi * packs + j] = static_cast<int32_t>(packed_zero);
    }
    // q row by row (contiguous, vectorizable), then eight rows' nibbles into each int32.
    for (int c = 0; c < 8; ++c) {
      const float* row = w.data() + (8 * j + c) * in;
      uint8_t* qrow = q8.data() + c * in;
      for (int64_t gi = 0; gi < groups; ++gi) {
        const float s = s8[c * groups + gi];
        const float zero = z8[c * groups + gi];
        for (int64_t k = gi * g; k < (gi + 1) * g; ++k) {
          qrow[k] = static_cast<uint8_t>(std::clamp(RoundHalfEven(row[k] / s) + zero, 0.0f, 15.0f));
        }
      }
    }
    for (int64_t k = 0; k < in; ++k) {
      uint32_t packed = 0;
      for (int i = 0; i < 8; ++i) {
        packed |= static_cast<uint32_t>(q8[kAwqPackOrder[i] * in + k]) << (4 * i);
      }
      qweight[k * packs + j] = static_cast<int32_t>(packed);
    }
  }
  return absl::OkStatus();
}

absl::Status DequantizeInt4Awq(std::span<const uint8_t> qweight, std::span<const uint8_t> qzeros,
                               std::span<const uint8_t> scales, int64_t out, int64_t in,
                               int64_t group_size, std::span<float> w) {
  RETURN_IF_ERROR(CheckDims(out, in, w.size()));
  const int64_t g = group_size;
  if (g <= 0 || in % g != 0 || out % kAwqPackFactor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("int4 needs out % 8 == 0 and in % group == 0; ",
                                                   "got [", out, ", ", in, "], group ", g));
  }
  const int64_t groups = in / g;
  const int64_t packs = out / kAwqPackFactor;
  RETURN_IF_ERROR(
      CheckSize("int4 qweight bytes", qweight.size(), static_cast<uint64_t>(in * packs) * 4));
  RETURN_IF_ERROR(
      CheckSize("int4 qzeros bytes", qzeros.size(), static_cast<uint64_t>(groups * packs) * 4));
  RETURN_IF_ERROR(
      CheckSize("int4 scales bytes", scales.size(), static_cast<uint64_t>(groups * out) * 2));
  for (int64_t k = 0; k < in; ++k) {
    const int64_t gi = k / g;
    for (int64_t j = 0; j < packs; ++j) {
      const uint32_t packed = LoadU32(qweight.data() + 4 * (k * packs + j));
      const uint32_t zeros = LoadU32(qzeros.data() + 4 * (gi * packs + j));
      for (int c = 0; c < 8; ++c) {
        const int64_t n = 8 * j + c;
        const int q = static_cast<int>(AwqUnpack(packed, c));
        const int z = static_cast<int>(AwqUnpack(zeros, c));
        const float s = F16ToF32(LoadU16(scales.data() + 2 * (gi * out + n)));
        w[n * in + k] = static_cast<float>(q - z) * s;
      }
    }
  }
  return absl::OkStatus();
}

// ============================ nf4 ============================

uint8_t Nf4Encode(float x) {
  // bitsandbytes' dQuantizeNF4 is a binary decision tree over the float32 midpoints of
  // neighbouring codes with "x > threshold" at every node; its result is the number of
  // thresholds x exceeds, which is what this counts (branch-free, so loops vectorize). A value
  // exactly on a midpoint takes the LOWER code; NaN exceeds none and gets code 0, as in the tree.
  static constexpr float kThresholds[15] = {
      -0.8480964004993439f,  -0.6106329262256622f,  -0.4599952697753906f,   -0.33967943489551544f,
      -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
      0.1202552504837513f,   0.2035212516784668f,   0.2920137718319893f,    0.3893125355243683f,
      0.5016634166240692f,   0.6427869200706482f,   0.8614784181118011f};
  int code = 0;
  for (float t : kThresholds) code += x > t ? 1 : 0;
  return static_cast<uint8_t>(code);
}

uint8_t DynamicEncode(const std::array<float, 256>& map, float x) {
  // bitsandbytes dQuantize<0>: a 7-step binary search from the middle, then the nearer of the
  // final pivot and the neighbour on x's side (midpoint ties stay at the pivot).
  int pivot = 127;
  int upper_pivot = 255;
  int lower_pivot = 0;
  float lower = -1.0f;
  float upper = 1.0f;
  float val = map[pivot];
  for (int step = 64; step > 0; step >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += step;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= step;
    }
    val = map[pivot];
  }
  if (upper_pivot == 255) upper = map[upper_pivot];
  if (lower_pivot == 0) lower = map[lower_pivot];
  if (x > val) {
    const float midpoint = (upper + val) * 0.5f;
    return static_cast<uint8_t>(x > midpoint ? upper_pivot : pivot);
  }
  const float midpoint = (lower + val) * 0.5f;
  return static_cast<uint8_t>(x < midpoint ? lower_pivot : pivot);
}

absl::StatusOr<Nf4Quantized> QuantizeNf4(std::span<const float> w, bool double_quant) {
  const int64_t numel = static_cast<int64_t>(w.size());
  if (numel == 0) return absl::InvalidArgumentError("nf4: empty weight");
  RETURN_IF_ERROR(CheckFinite(w, numel));
  const int64_t blocks = Nf4Blocks(numel);
  Nf4Quantized r;
  r.packed.assign(static_cast<size_t>((numel + 1) / 2), 0);
  r.absmax.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kNf4BlockSize;
    const int64_t end = std::min(numel, begin + kNf4BlockSize);
    const float amax = MaxAbs(w.data() + begin, end - begin);
    r.absmax[b] = amax;
    const float recip = 1.0f / amax;
    // Codes of the block (zero-padded to an even count: padding 0.0 gets code 7, as in
    // bitsandbytes), then two per byte with the even element in the high nibble.
    uint8_t codes[kNf4BlockSize];
    const int64_t len = end - begin;
    if (amax > 0.0f) {
      for (int64_t i = 0; i < len; ++i) codes[i] = Nf4Encode(w[begin + i] * recip);
    } else {
      for (int64_t i = 0; i < len; ++i) codes[i] = 7;
    }
    if (len % 2 == 1) codes[len] = 7;
    uint8_t* out = r.packed.data() + begin / 2;
    for (int64_t i = 0; i < (len + 1) / 2; ++i) {
      out[i] = static_cast<uint8_t>((codes[2 * i] << 4) | codes[2 * i + 1]);
    }
  }
  if (!double_quant) return r;

  double sum = 0.0;
  for (float a : r.absmax) sum += a;
  r.nested_offset = static_cast<float>(sum / static_cast<double>(blocks));
  const std::array<float, 256>& map = DynamicQuantMap();
  const uint8_t zero_code =
      static_cast<uint8_t>(std::find(map.begin(), map.end(), 0.0f) - map.begin());
  const int64_t nested = Nf4NestedBlocks(blocks);
  r.qabsmax.resize(static_cast<size_t>(blocks));
  r.nested_absmax.resize(static_cast<size_t>(nested));
  std::vector<float> centered(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) centered[b] = r.absmax[b] - r.nested_offset;
  for (int64_t nb = 0; nb < nested; ++nb) {
    const int64_t begin = nb * kNf4NestedBlockSize;
    const int64_t end = std::min(blocks, begin + kNf4NestedBlockSize);
    const float amax = MaxAbs(centered.data() + begin, end - begin);
    r.nested_absmax[nb] = amax;
    const float recip = 1.0f / amax;
    for (int64_t i = begin; i < end; ++i) {
      r.qabsmax[i] = amax > 0.0f ? DynamicEncode(map, centered[i] * recip) : zero_code;
    }
  }
  return r;
}

absl::Status ResolveNf4Absmax(std::span<const uint8_t> qabsmax,
                              std::span<const uint8_t> nested_absmax,
                              std::span<const uint8_t> nested_quant_map, float nested_offset,
                              std::span<float> absmax) {
  const uint64_t blocks = qabsmax.size();
  RETURN_IF_ERROR(CheckSize("nf4 absmax", absmax.size(), blocks));
  RETURN_IF_ERROR(CheckSize("nf4 nested_quant_map bytes", nested_quant_map.size(), 256 * 4));
  const uint64_t nested = (blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize;
  RETURN_IF_ERROR(CheckSize("nf4 nested_absmax bytes", nested_absmax.size(), nested * 4));
  for (uint64_t i = 0; i < blocks; ++i) {
    const float code = LoadF32(nested_quant_map.data() + 4 * qabsmax[i]);
    const float scale = LoadF32(nested_absmax.data() + 4 * (i / kNf4NestedBlockSize));
    absmax[i] = code * scale + nested_offset;
  }
  return absl::OkStatus();
}

absl::Status DequantizeNf4(std::span<const uint8_t> packed, std::span<const float> absmax,
                           std::span<const float> quant_map, int64_t numel, std::span<float> w) {
  if (numel <= 0) return absl::InvalidArgumentError("nf4: numel must be positive");
  RETURN_IF_ERROR(CheckSize("nf4 values", w.size(), static_cast<uint64_t>(numel)));
  RETURN_IF_ERROR(
      CheckSize("nf4 packed bytes", packed.size(), static_cast<uint64_t>((numel + 1) / 2)));
  RETURN_IF_ERROR(CheckSize("nf4 absmax", absmax.size(), static_cast<uint64_t>(Nf4Blocks(numel))));
  RETURN_IF_ERROR(CheckSize("nf4 quant_map", quant_map.size(), 16));
  for (int64_t i = 0; i < numel; ++i) {
    const uint8_t byte = packed[i / 2];
    const uint8_t code = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
    w[i] = quant_map[code] * absmax[i / kNf4BlockSize];
  }
  return absl::OkStatus();
}

std::string Nf4QuantStateJson(const std::vector<int64_t>& shape, bool double_quant,
                              float nested_offset) {
  char offset_text[32];
  std::snprintf(offset_text, sizeof(offset_text), "%.9g", static_cast<double>(nested_offset));
  std::string s = Nf4QuantStateJsonUnpadded(shape, double_quant, offset_text);
  s.resize(Nf4QuantStateBytes(shape, double_quant), ' ');
  return s;
}

size_t Nf4QuantStateBytes(const std::vector<int64_t>& shape, bool double_quant) {
  return Nf4QuantStateJsonUnpadded(shape, double_quant, kLongestOffsetText).size();
}

absl::StatusOr<Nf4QuantState> ParseNf4QuantState(std::span<const uint8_t> bytes) {
  constexpr absl::string_view kWhat = "nf4 quant_state";
  ASSIGN_OR_RETURN(
      nlohmann::json j,
      ParseJson(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                kWhat));
  if (!j.is_object()) return absl::InvalidArgumentError("nf4 quant_state: not a JSON object");
  Nf4QuantState st;
  auto field = [&](const char* key) -> absl::StatusOr<const nlohmann::json*> {
    auto it = j.find(key);
    if (it == j.end()) {
      return absl::InvalidArgumentError(absl::StrCat("nf4 quant_state: missing \"", key, "\""));
    }
    return &*it;
  };
  auto bad = [&](const char* key, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("nf4 quant_state: \"", key, "\" ", why));
  };
  ASSIGN_OR_RETURN(const nlohmann::json* qt, field("quant_type"));
  if (!qt->is_string()) return bad("quant_type", "must be a string");
  st.quant_type = qt->get<std::string>();
  if (st.quant_type != "nf4") return bad("quant_type", absl::StrCat("is ", st.quant_type));
  ASSIGN_OR_RETURN(const nlohmann::json* bs, field("blocksize"));
  if (!bs->is_number_integer()) return bad("blocksize", "must be an integer");
  st.blocksize = bs->get<int64_t>();
  if (st.blocksize != kNf4BlockSize) return bad("blocksize", "must be 64");
  ASSIGN_OR_RETURN(const nlohmann::json* dt, field("dtype"));
  if (!dt->is_string()) return bad("dtype", "must be a string");
  st.dtype = dt->get<std::string>();
  ASSIGN_OR_RETURN(const nlohmann::json* sh, field("shape"));
  if (!sh->is_array() || sh->empty()) return bad("shape", "must be a non-empty array");
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || d.get<int64_t>() <= 0) {
      return bad("shape", "must hold positive integers");
    }
    st.shape.push_back(d.get<int64_t>());
  }
  if (j.contains("nested_offset") || j.contains("nested_blocksize")) {
    st.nested = true;
    ASSIGN_OR_RETURN(const nlohmann::json* nbs, field("nested_blocksize"));
    if (!nbs->is_number_integer()) return bad("nested_blocksize", "must be an integer");
    st.nested_blocksize = nbs->get<int64_t>();
    if (st.nested_blocksize != kNf4NestedBlockSize) return bad("nested_blocksize", "must be 256");
    ASSIGN_OR_RETURN(const nlohmann::json* off, field("nested_offset"));
    if (!off->is_number()) return bad("nested_offset", "must be a number");
    st.nested_offset = static_cast<float>(off->get<double>());
    if (!std::isfinite(st.nested_offset)) return bad("nested_offset", "must be finite");
  }
  return st;
}

absl::StatusOr<std::vector<float>> ReadF32Array(std::span<const uint8_t> bytes, size_t count) {
  if (count > bytes.size() / 4 || bytes.size() != count * 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("F32 array: ", bytes.size(), " bytes given, ", count, " values expected"));
  }
  std::vector<float> out(count);
  if (count > 0) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

}  // namespace shardserve::quant
