#include "worker/weights/dequantize.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"

// Values must be rounded exactly as ggml and numpy round them: d * q + m is two roundings, never
// one fused multiply-add. The build passes -ffp-contract=off; clang also honours the pragma.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

namespace shardserve {
namespace {

constexpr int kQK = 32;    // values per block of the Q4/Q5/Q8 types
constexpr int kQKK = 256;  // values per super-block of the K-quants

absl::string_view Name(DType dtype) {
  std::string_view name = DTypeName(dtype);
  return absl::string_view(name.data(), name.size());
}

uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<uint16_t>(p[1]) << 8));
}
uint32_t LoadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
float LoadF16(const uint8_t* p) { return F16ToF32(LoadU16(p)); }
float LoadF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, sizeof(f));
  return f;
}
float BitsToF32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// --- 32-value blocks (ggml dequantize_row_q4_0 ... q8_0) ---

void DequantQ4_0(const uint8_t* b, float* y) {  // f16 d; u8 qs[16]
  const float d = LoadF16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void DequantQ4_1(const uint8_t* b, float* y) {  // f16 d; f16 m; u8 qs[16]
  const float d = LoadF16(b);
  const float m = LoadF16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void DequantQ5_0(const uint8_t* b, float* y) {  // f16 d; u32 qh; u8 qs[16]
  const float d = LoadF16(b);
  const uint32_t qh = LoadU32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int h0 = static_cast<int>((qh >> j) & 1) << 4;
    const int h1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>(((qs[j] & 0x0F) | h0) - 16) * d;
    y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | h1) - 16) * d;
  }
}

void DequantQ5_1(const uint8_t* b, float* y) {  // f16 d; f16 m; u32 qh; u8 qs[16]
  const float d = LoadF16(b);
  const float m = LoadF16(b + 2);
  const uint32_t qh = LoadU32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int h0 = static_cast<int>((qh >> j) & 1) << 4;
    const int h1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>((qs[j] & 0x0F) | h0) * d + m;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | h1) * d + m;
  }
}

void DequantQ8_0(const uint8_t* b, float* y) {  // f16 d; i8 qs[32]
  const float d = LoadF16(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

// --- 256-value super-blocks (ggml dequantize_row_q2_K ... q6_K) ---

void DequantQ2_K(const uint8_t* b, float* y) {  // u8 scales[16]; u8 qs[64]; f16 d; f16 dmin
  const uint8_t* scales = b;
  const uint8_t* q = b + 16;
  const float d = LoadF16(b + 80);
  const float dmin = LoadF16(b + 82);
  int is = 0;
  for (int n = 0; n < kQKK; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const uint8_t sc = scales[is++];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = 0; l < 16; ++l) {
          *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
        }
      }
    }
    q += 32;
  }
}

void DequantQ3_K(const uint8_t* b, float* y) {  // u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const uint8_t* packed = b + 96;
  const float d_all = LoadF16(b + 108);
  // 16 six-bit scales: low 4 bits in packed[0..7] (two per byte), high 2 bits in packed[8..11].
  int8_t scales[16];
  for (int i = 0; i < 16; ++i) {
    const int low = (packed[i % 8] >> (4 * (i / 8))) & 0x0F;
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    scales[i] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < kQKK; n += 128) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d_all * static_cast<float>(scales[is++]);
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const int v = ((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4);
          *y++ = dl * static_cast<float>(v);
        }
      }
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

// Scale and min j (0..7) of a Q4_K / Q5_K super-block: six bits each, packed in 12 bytes.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void DequantQ4_K(const uint8_t* b, float* y) {  // f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
  const float d = LoadF16(b);
  const float dmin = LoadF16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  for (int is = 0; is < 8; is += 2) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
  }
}

// f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
void DequantQ5_K(const uint8_t* b, float* y) {
  const float d = LoadF16(b);
  const float dmin = LoadF16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int is = 0; is < 8; is += 2) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      *y++ = d1 * static_cast<float>((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
    }
    ql += 32;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void DequantQ6_K(const uint8_t* b, float* y) {  // u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = LoadF16(b + 208);
  for (int n = 0; n < kQKK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn BlockFunction(DType dtype) {
  switch (dtype) {
    case DType::kQ4_0:
      return DequantQ4_0;
    case DType::kQ4_1:
      return DequantQ4_1;
    case DType::kQ5_0:
      return DequantQ5_0;
    case DType::kQ5_1:
      return DequantQ5_1;
    case DType::kQ8_0:
      return DequantQ8_0;
    case DType::kQ2_K:
      return DequantQ2_K;
    case DType::kQ3_K:
      return DequantQ3_K;
    case DType::kQ4_K:
      return DequantQ4_K;
    case DType::kQ5_K:
      return DequantQ5_K;
    case DType::kQ6_K:
      return DequantQ6_K;
    default:
      return nullptr;
  }
}

bool IsPlainFloat(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF8E4M3:
    case DType::kF8E5M2:
      return true;
    default:
      return false;
  }
}

}  // namespace

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float32.
    const float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exp == 0x1F) return BitsToF32(sign | 0x7F800000u | (mant << 13));  // inf / NaN
  return BitsToF32(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

float BF16ToF32(uint16_t b) { return BitsToF32(static_cast<uint32_t>(b) << 16); }

uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: force quiet
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  }
  const uint64_t rounded = static_cast<uint64_t>(bits) + 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

float F8E4M3ToF32(uint8_t v) {
  const bool negative = (v & 0x80) != 0;
  const int exp = (v >> 3) & 0x0F;
  const int mant = v & 0x07;
  float magnitude;
  if (exp == 0x0F && mant == 0x07) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mant), exp - 7 - 3);
  }
  return negative ? -magnitude : magnitude;
}

// E5M2 is the top byte of an IEEE half.
float F8E5M2ToF32(uint8_t v) { return F16ToF32(static_cast<uint16_t>(v) << 8); }

bool CanDequantize(DType dtype) {
  return IsPlainFloat(dtype) || BlockFunction(dtype) != nullptr || IsQuantizedLinear(dtype);
}

float Nf4Absmax(const QuantParts& q, int64_t block) {
  if (q.nested_code == nullptr) return LoadF32(q.absmax + 4 * block);
  const float code = LoadF32(q.nested_code + 4 * static_cast<int64_t>(q.absmax[block]));
  const float scale = LoadF32(q.nested_absmax + 4 * (block / q.nested_group));
  return code * scale + q.nested_offset;
}

void DequantizeQuantizedRow(DType dtype, const uint8_t* data, const QuantParts& q, int64_t row,
                            int64_t cols, float* dst) {
  const int64_t r = q.row0 + row;
  switch (dtype) {
    case DType::kInt8Channel: {
      const float scale = LoadF32(q.scales + 4 * r);
      const int8_t* codes = reinterpret_cast<const int8_t*>(data + r * q.full_cols + q.col0);
      for (int64_t k = 0; k < cols; ++k) dst[k] = static_cast<float>(codes[k]) * scale;
      return;
    }
    case DType::kAwqInt4: {
      const int64_t words = q.full_rows / 8;  // int32 per qweight / qzeros row
      const int shift = 4 * kAwqNibble[r % 8];
      for (int64_t k = 0; k < cols; ++k) {
        const int64_t in = q.col0 + k;
        const int64_t g = in / q.group;
        const int w = static_cast<int>((LoadU32(data + 4 * (in * words + r / 8)) >> shift) & 15u);
        const int z = static_cast<int>((LoadU32(q.zeros + 4 * (g * words + r / 8)) >> shift) & 15u);
        const float s = LoadF16(q.scales + 2 * (g * q.full_rows + r));
        dst[k] = static_cast<float>(w - z) * s;
      }
      return;
    }
    case DType::kNf4: {
      float code[16];
      for (int i = 0; i < 16; ++i) code[i] = LoadF32(q.code + 4 * i);
      int64_t block = -1;
      float absmax = 0.0f;
      for (int64_t k = 0; k < cols; ++k) {
        const int64_t e = r * q.full_cols + q.col0 + k;
        if (e / q.group != block) {
          block = e / q.group;
          absmax = Nf4Absmax(q, block);
        }
        const uint8_t byte = data[e / 2];
        const int nibble = (e % 2 == 0) ? byte >> 4 : byte & 15;
        dst[k] = code[nibble] * absmax;
      }
      return;
    }
    default:
      return;
  }
}

absl::Status CheckQuantParts(const TensorView& view) {
  const absl::string_view name(view.name);
  auto fail = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", name, "' (", Name(view.dtype), "): ", why));
  };
  if (!IsQuantizedLinear(view.dtype)) return fail("not a quantized linear type");
  const QuantParts& q = view.quant;
  if (view.shape.size() != 2)
    return fail(absl::StrCat("shape ", ShapeString(view.shape), " is not 2-D"));
  if (q.full_rows <= 0 || q.full_cols <= 0 || q.row0 < 0 || q.col0 < 0 || view.shape[0] < 0 ||
      view.shape[1] < 0 || q.row0 + view.shape[0] > q.full_rows ||
      q.col0 + view.shape[1] > q.full_cols) {
    return fail(absl::StrCat("window [", q.row0, "+", view.shape[0], ", ", q.col0, "+",
                             view.shape[1], "] is outside the stored [", q.full_rows, ", ",
                             q.full_cols, "]"));
  }
  if (view.data == nullptr) return fail("no codes");
  switch (view.dtype) {
    case DType::kInt8Channel:
      if (q.scales == nullptr) return fail("no scales");
      break;
    case DType::kAwqInt4:
      if (q.scales == nullptr || q.zeros == nullptr) return fail("no scales or zeros");
      if (q.full_rows % 8 != 0) {
        return fail(absl::StrCat(q.full_rows, " output features are not a multiple of 8"));
      }
      if (q.group <= 0 || q.full_cols % q.group != 0) {
        return fail(absl::StrCat("group size ", q.group, " does not divide ", q.full_cols,
                                 " input features"));
      }
      break;
    default:  // kNf4
      if (q.code == nullptr || q.absmax == nullptr) return fail("no quant_map or absmax");
      if (q.group <= 0) return fail(absl::StrCat("block size ", q.group));
      if (q.nested_code != nullptr && (q.nested_absmax == nullptr || q.nested_group <= 0)) {
        return fail("double quantization without nested_absmax or nested block size");
      }
      break;
  }
  return absl::OkStatus();
}

absl::Status DequantizeRow(DType dtype, const uint8_t* src, int64_t n, float* dst) {
  if (IsQuantizedLinear(dtype)) {
    return absl::UnimplementedError(absl::StrCat("dequantization of ", Name(dtype),
                                                 " needs its scales (DequantizeQuantizedRow)"));
  }
  if (!CanDequantize(dtype)) {
    return absl::UnimplementedError(
        absl::StrCat("dequantization of ", Name(dtype), " to F32 is not supported"));
  }
  const DTypeInfo& info = GetDTypeInfo(dtype);
  if (n < 0 || n % static_cast<int64_t>(info.block_elems) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cannot dequantize ", n, " values of ",
                                                   Name(dtype), ": not a multiple of its ",
                                                   info.block_elems, "-value block"));
  }
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(LoadU16(src + 2 * i));
      return absl::OkStatus();
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = BF16ToF32(LoadU16(src + 2 * i));
      return absl::OkStatus();
    case DType::kF8E4M3:
      for (int64_t i = 0; i < n; ++i) dst[i] = F8E4M3ToF32(src[i]);
      return absl::OkStatus();
    case DType::kF8E5M2:
      for (int64_t i = 0; i < n; ++i) dst[i] = F8E5M2ToF32(src[i]);
      return absl::OkStatus();
    default:
      break;
  }
  const BlockFn fn = BlockFunction(dtype);
  const int64_t blocks = n / static_cast<int64_t>(info.block_elems);
  for (int64_t i = 0; i < blocks; ++i) {
    fn(src + i * static_cast<int64_t>(info.block_bytes), dst + i * info.block_elems);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> DequantizeToF32(const TensorView& view) {
  const absl::string_view name(view.name);
  if (!CanDequantize(view.dtype)) {
    return absl::UnimplementedError(absl::StrCat("tensor '", name, "': dequantization of ",
                                                 Name(view.dtype), " to F32 is not supported"));
  }
  // Elements of the whole tensor and of one outermost row, with overflow checks (views come from
  // validated files, but this function must not trust them blindly).
  int64_t total = 1;
  int64_t inner = 1;
  for (size_t i = 0; i < view.shape.size(); ++i) {
    const int64_t d = view.shape[i];
    if (d < 0 || (d > 0 && total > std::numeric_limits<int64_t>::max() / d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': invalid shape ", ShapeString(view.shape)));
    }
    total *= d;
    if (i > 0) inner *= d;
  }
  if (total == 0) return std::vector<float>();
  if (view.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': no data"));
  }
  if (static_cast<uint64_t>(total) > std::vector<float>().max_size()) {
    return absl::ResourceExhaustedError(absl::StrCat("tensor '", name, "': too large"));
  }
  std::vector<float> out(static_cast<size_t>(total));
  if (IsQuantizedLinear(view.dtype)) {
    RETURN_IF_ERROR(CheckQuantParts(view));
    for (int64_t r = 0; r < view.shape[0]; ++r) {
      DequantizeQuantizedRow(view.dtype, view.data, view.quant, r, view.shape[1],
                             out.data() + r * view.shape[1]);
    }
    return out;
  }
  const std::optional<size_t> row_bytes = BytesForElements(view.dtype, inner);
  // A hand-built view with row_stride 0 is taken as contiguous (as TensorView does).
  const bool contiguous = view.shape.size() <= 1 || view.shape[0] <= 1 || view.row_stride == 0 ||
                          (row_bytes.has_value() && view.row_stride == *row_bytes);
  if (contiguous) {
    absl::Status status = DequantizeRow(view.dtype, view.data, total, out.data());
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("tensor '", name, "': ", status.message()));
    }
    return out;
  }
  if (!row_bytes.has_value() || view.row_stride < *row_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "': row stride ", view.row_stride, " bytes is too small for ", inner,
        " values of ", Name(view.dtype), " per row"));
  }
  const int64_t rows = view.shape[0];
  for (int64_t r = 0; r < rows; ++r) {
    absl::Status status =
        DequantizeRow(view.dtype, view.data + r * view.row_stride, inner, out.data() + r * inner);
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat("tensor '", name, "': ", status.message()));
    }
  }
  return out;
}

}  // namespace shardserve
