// The quantization schemes hub_sync writes and workers read: their exact math and their on-disk
// naming. hub_sync/quantize (the writer) and the worker's reader both use this file; the
// Dequantize* functions here are the reference the worker's kernels are tested against.
//
// A quantized artifact is an HF-style directory: model.safetensors (or shards + index),
// config.json with a "quantization_config", tokenizer files and, written last, manifest.json. A
// linear layer with prefix P (e.g. "model.layers.0.self_attn.q_proj", whose HF weight is
// "P.weight", float [out, in]) is stored as follows; everything not quantized is BF16 under its
// HF name.
//
// int8 (weight-only, symmetric, per output channel; compressed-tensors "int-quantized" naming):
//   P.weight        I8  [out, in]   q
//   P.weight_scale  F32 [out, 1]    scale per output row
//   scale[n] = max_k |w[n,k]| / 127 (float32 division). A row whose scale would be 0 (all zeros,
//   or max|w| so small that max/127 underflows) gets scale 1 (its q are then all 0).
//   q = clamp(rint(w / scale), -127, 127) (float32 division; rint = round half to even, as
//   torch.round). Dequantized: w' = float(q) * scale. |w - w'| <= scale / 2 (up to float32
//   rounding of the quotient and the product: about |q| ulps of scale).
//
// int4 (group-wise asymmetric round-to-nearest, AutoAWQ "GEMM" layout, which vLLM / TGI /
// transformers read). AWQ stores the weight TRANSPOSED relative to HF: input features are rows.
//   P.qweight  I32 [in, out/8]     qweight[k][j] packs q of output columns 8j..8j+7 at input k
//   P.qzeros   I32 [in/G, out/8]   zero points, packed the same way
//   P.scales   F16 [in/G, out]     scales
//   Packing: nibble i (bits 4i..4i+3, i = 0 least significant) of an int32 holds column
//   8j + kAwqPackOrder[i], kAwqPackOrder = {0, 2, 4, 6, 1, 3, 5, 7}; equivalently column c sits at
//   shift 4 * kAwqNibbleOfColumn[c % 8], kAwqNibbleOfColumn = {0, 4, 1, 5, 2, 6, 3, 7}.
//   Group g of output row n covers w[n, gG .. gG+G-1] (G = group size along in_features).
//   Per group: lo = min(min w, 0), hi = max(max w, 0) (the range always holds 0, as GPTQ does;
//   for real weights, whose groups straddle 0, this is AutoAWQ's min/max);
//   scale = the smallest float16 >= max(hi - lo, 1e-5) / 15 (float32 arithmetic; rounding up
//   keeps every value of the group representable); s = that float16 as float32;
//   zero = clamp(rint(-lo / s), 0, 15); q = clamp(rint(w / s) + zero, 0, 15).
//   Dequantized: w' = float(q - zero) * s (exact in float32). |w - w'| <= s / 2 (up to float32
//   rounding of w / s).
//   G: 128 when it divides every quantized layer's in_features, else 64, else 32 (SmolLM2-135M has
//   hidden 576 = 4.5 x 128, so its artifact uses 64); recorded as "group_size" in config.json and
//   the manifest. out must be a multiple of 8.
//
// nf4 (bitsandbytes Params4bit layout, as transformers serializes it):
//   P.weight                                 U8  [(numel+1)/2, 1]  two codes per byte, element
//                                                                  2i in the HIGH nibble, 2i+1 low
//   P.weight.absmax                          F32 [blocks]         (no double quant) absmax per
//   block
//                                            U8  [blocks]         (double quant) 8-bit codes
//   P.weight.quant_map                       F32 [16]             kNf4Codes
//   P.weight.nested_absmax                   F32 [nested blocks]  (double quant only)
//   P.weight.nested_quant_map                F32 [256]            (double quant only)
//   DynamicQuantMap() P.weight.quant_state.bitsandbytes__nf4   U8  [json bytes]     see
//   Nf4QuantStateJson Blocks of 64 over the row-major flattened weight (the last block may be
//   short); absmax[b] = max |w| over the block; codes: Nf4Encode(w * (1 / absmax[b])) (float32: the
//   reciprocal first, as bitsandbytes' kernel), i.e. the nearest of kNf4Codes by bitsandbytes'
//   fixed float32 midpoints, a value exactly on a midpoint taking the LOWER code. A block with
//   absmax 0 gets code 7 (0.0). Dequantized: w' = quant_map[code] * absmax[b] (float32).
//   Double quantization (bitsandbytes compress_statistics): offset = mean(absmax) (float32, summed
//   in double); the values absmax - offset are quantized 8-bit blockwise in nested blocks of 256
//   with DynamicQuantMap(): nested_absmax[j] = max |absmax[i] - offset| over the nested block,
//   code = DynamicEncode(x * (1 / nested_absmax[j])) (a zero nested block gets the code of 0.0);
//   absmax is then resolved as dynamic_map[code] * nested_absmax[i / 256] + offset (float32), and
//   the 4-bit codes are computed against the ORIGINAL float absmax (as bitsandbytes does).
//
// Every Quantize* refuses non-finite weights (INVALID_ARGUMENT naming the element); callers add
// the tensor name. All functions are pure and thread-safe.
#ifndef SHARDSERVE_WORKER_WEIGHTS_QUANT_FORMATS_H_
#define SHARDSERVE_WORKER_WEIGHTS_QUANT_FORMATS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "worker/weights/safetensors_writer.h"

namespace shardserve::quant {

enum class QuantScheme : uint8_t { kInt8, kInt4, kNf4 };

// "int8", "int4", "nf4" (the artifact folder name and manifest "scheme").
std::string_view SchemeName(QuantScheme scheme);
// Inverse of SchemeName; nullopt for anything else.
std::optional<QuantScheme> ParseScheme(std::string_view name);

// --- Artifact files ---
inline constexpr std::string_view kManifestFileName = "manifest.json";
inline constexpr std::string_view kManifestFormat = "shardserve-quantized";  // manifest "format"
inline constexpr int kManifestFormatVersion = 1;                             // "format_version"

// True for the HF tensors hub_sync quantizes: 2-D tensors (checked by the caller) named
// *.self_attn.{q,k,v,o}_proj.weight / *.{q,k,v,o}_proj.weight, *.mlp.{gate,up,down}_proj.weight
// and Mixtral experts *.experts.{e}.{w1,w2,w3}.weight. Embeddings and lm_head are quantized only
// when the caller asks (QuantizeOptions), norms and 1-D tensors never.
bool IsQuantizableLinearName(std::string_view name);

// "P.weight" -> "P"; nullopt when `weight_name` does not end in ".weight".
std::optional<std::string> LinearPrefix(std::string_view weight_name);

// --- Tensor name suffixes, appended to the layer prefix P ---
inline constexpr std::string_view kInt8WeightSuffix = ".weight";             // I8 [out, in]
inline constexpr std::string_view kInt8ScaleSuffix = ".weight_scale";        // F32 [out, 1]
inline constexpr std::string_view kAwqQweightSuffix = ".qweight";            // I32 [in, out/8]
inline constexpr std::string_view kAwqQzerosSuffix = ".qzeros";              // I32 [in/G, out/8]
inline constexpr std::string_view kAwqScalesSuffix = ".scales";              // F16 [in/G, out]
inline constexpr std::string_view kNf4WeightSuffix = ".weight";              // U8 [(numel+1)/2, 1]
inline constexpr std::string_view kNf4AbsmaxSuffix = ".weight.absmax";       // F32 or U8 [blocks]
inline constexpr std::string_view kNf4QuantMapSuffix = ".weight.quant_map";  // F32 [16]
inline constexpr std::string_view kNf4NestedAbsmaxSuffix = ".weight.nested_absmax";  // F32
inline constexpr std::string_view kNf4NestedQuantMapSuffix =
    ".weight.nested_quant_map";  // F32 [256]
inline constexpr std::string_view kNf4QuantStateSuffix =
    ".weight.quant_state.bitsandbytes__nf4";  // U8 [json bytes]

// --- Parameters ---
inline constexpr int64_t kAwqPackFactor = 8;  // 4-bit values per int32
inline constexpr std::array<int, 8> kAwqPackOrder = {0, 2, 4, 6, 1, 3, 5, 7};
inline constexpr std::array<int, 8> kAwqNibbleOfColumn = {0, 4, 1, 5, 2, 6, 3, 7};
inline constexpr std::array<int64_t, 3> kAwqGroupSizeChoices = {128, 64, 32};
inline constexpr int64_t kNf4BlockSize = 64;
inline constexpr int64_t kNf4NestedBlockSize = 256;

// The 16 NF4 code values (bitsandbytes' get_4bit_type("nf4"), as float32), code i = index i.
inline constexpr std::array<float, 16> kNf4Codes = {-1.0f,
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

// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8) as float32,
// sorted ascending (the "nested_quant_map" of double quantization).
const std::array<float, 256>& DynamicQuantMap();

struct QuantParams {
  int64_t group_size = 128;   // int4 only: G, one of kAwqGroupSizeChoices
  bool double_quant = false;  // nf4 only
};

// The largest of 128, 64, 32 that divides every value of `in_features`; INVALID_ARGUMENT (listing
// the offending size) when none does or the list is empty.
absl::StatusOr<int64_t> ChooseAwqGroupSize(std::span<const int64_t> in_features);

// The tensors (name, dtype, shape) that the linear weight "P.weight" of shape [out, in] becomes,
// in the order they are written. INVALID_ARGUMENT when the shape does not fit the scheme (int4:
// out % 8, in % G; out, in > 0).
absl::StatusOr<std::vector<TensorSpec>> QuantizedTensorSpecs(QuantScheme scheme,
                                                             absl::string_view prefix, int64_t out,
                                                             int64_t in, const QuantParams& params);

// One quantized linear weight: `specs` as QuantizedTensorSpecs and data[i] the little-endian
// bytes of specs[i], ready for SafetensorsWriter::Write.
struct QuantizedTensors {
  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> data;
};

// Quantizes `w` (row-major float [out, in]) with `scheme`.
absl::StatusOr<QuantizedTensors> QuantizeLinear(QuantScheme scheme, absl::string_view prefix,
                                                std::span<const float> w, int64_t out, int64_t in,
                                                const QuantParams& params);

// config.json "quantization_config" for the scheme. `not_converted` lists module prefixes kept in
// bf16 that transformers would otherwise treat as quantized linears (e.g. "lm_head").
//   int8: {"quant_method": "compressed-tensors", "format": "int-quantized",
//          "quantization_status": "compressed", "config_groups": {"group_0": {"targets":
//          ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy":
//          "channel", "group_size": null, "dynamic": false, "observer": "minmax"},
//          "input_activations": null, "output_activations": null}}, "ignore": not_converted,
//          "kv_cache_scheme": null}
//   int4: {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": true, "version":
//          "gemm", "modules_to_not_convert": not_converted}
//   nf4:  {"quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": false,
//          "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": double_quant,
//          "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
//          "llm_int8_skip_modules": not_converted}
nlohmann::json QuantizationConfig(QuantScheme scheme, const QuantParams& params,
                                  const std::vector<std::string>& not_converted);

// ============================ int8 ============================

// q: out*in values, scales: out values.
absl::Status QuantizeInt8(std::span<const float> w, int64_t out, int64_t in, std::span<int8_t> q,
                          std::span<float> scales);
// From the stored bytes (q: I8 [out, in]; scales: F32 LE [out]; no alignment needed) to float
// [out, in] in `w`. INVALID_ARGUMENT when a span has the wrong size.
absl::Status DequantizeInt8(std::span<const uint8_t> q, std::span<const uint8_t> scales,
                            int64_t out, int64_t in, std::span<float> w);

// ============================ int4 (AWQ GEMM) ============================

// Buffers sized in*out/8, (in/G)*(out/8), (in/G)*out. scales are float16 bit patterns.
absl::Status QuantizeInt4Awq(std::span<const float> w, int64_t out, int64_t in, int64_t group_size,
                             std::span<int32_t> qweight, std::span<int32_t> qzeros,
                             std::span<uint16_t> scales);
// From the stored bytes (qweight I32 LE [in, out/8], qzeros I32 LE [in/G, out/8], scales F16 LE
// [in/G, out]) to float [out, in] (HF orientation) in `w`.
absl::Status DequantizeInt4Awq(std::span<const uint8_t> qweight, std::span<const uint8_t> qzeros,
                               std::span<const uint8_t> scales, int64_t out, int64_t in,
                               int64_t group_size, std::span<float> w);
// The 4-bit value of output column `col` in a packed int32 (qweight or qzeros element).
inline uint32_t AwqUnpack(uint32_t packed, int64_t col) {
  return (packed >> (4 * kAwqNibbleOfColumn[col % 8])) & 0xFu;
}

// ============================ nf4 (bitsandbytes) ============================

// The NF4 code of a value already divided by its block's absmax (bitsandbytes dQuantizeNF4).
uint8_t Nf4Encode(float x);
// The index into `map` (sorted ascending, 256 values) of the value nearest x, as bitsandbytes'
// 8-bit blockwise quantizer finds it (binary search, then the nearer neighbour).
uint8_t DynamicEncode(const std::array<float, 256>& map, float x);

inline int64_t Nf4Blocks(int64_t numel) { return (numel + kNf4BlockSize - 1) / kNf4BlockSize; }
inline int64_t Nf4NestedBlocks(int64_t blocks) {
  return (blocks + kNf4NestedBlockSize - 1) / kNf4NestedBlockSize;
}

struct Nf4Quantized {
  std::vector<uint8_t> packed;  // (numel+1)/2 bytes, element 2i high nibble
  std::vector<float> absmax;    // Nf4Blocks(numel), the exact float absmax
  // Double quantization only:
  std::vector<uint8_t> qabsmax;      // Nf4Blocks(numel) codes into DynamicQuantMap()
  std::vector<float> nested_absmax;  // Nf4NestedBlocks(blocks)
  float nested_offset = 0.0f;
};
absl::StatusOr<Nf4Quantized> QuantizeNf4(std::span<const float> w, bool double_quant);

// The absmax a reader uses: with double quantization map[qabsmax[i]] * nested_absmax[i / 256] +
// offset (float32); `absmax` must hold qabsmax.size() values. Stored F32 arrays are LE bytes.
absl::Status ResolveNf4Absmax(std::span<const uint8_t> qabsmax,
                              std::span<const uint8_t> nested_absmax,
                              std::span<const uint8_t> nested_quant_map, float nested_offset,
                              std::span<float> absmax);
// w[i] = quant_map[code_i] * absmax[i / 64] for numel values. packed: (numel+1)/2 bytes;
// quant_map: 16 values; absmax: Nf4Blocks(numel) values.
absl::Status DequantizeNf4(std::span<const uint8_t> packed, std::span<const float> absmax,
                           std::span<const float> quant_map, int64_t numel, std::span<float> w);

// The JSON stored in P.weight.quant_state.bitsandbytes__nf4, as bitsandbytes'
// QuantState.as_dict(packed=True) writes it (json.dumps separators):
//   {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out, in]}
// and with double quantization, appended: "nested_blocksize": 256, "nested_dtype": "float32",
// "nested_offset": <float, printed with 9 significant digits>. Padded with trailing spaces to
// Nf4QuantStateBytes(shape, double_quant) so the size is known before quantizing (JSON parsers
// accept trailing whitespace).
std::string Nf4QuantStateJson(const std::vector<int64_t>& shape, bool double_quant,
                              float nested_offset);
size_t Nf4QuantStateBytes(const std::vector<int64_t>& shape, bool double_quant);

struct Nf4QuantState {
  std::string quant_type;  // "nf4"
  int64_t blocksize = 0;
  std::string dtype;  // "bfloat16"
  std::vector<int64_t> shape;
  bool nested = false;
  int64_t nested_blocksize = 0;
  float nested_offset = 0.0f;
};
// Parses the quant_state bytes. INVALID_ARGUMENT naming the field for malformed JSON, a missing
// or mistyped field, quant_type other than "nf4", or a blocksize other than 64 (or nested 256).
absl::StatusOr<Nf4QuantState> ParseNf4QuantState(std::span<const uint8_t> bytes);

// F32 little-endian bytes -> floats (no alignment needed); INVALID_ARGUMENT unless
// bytes.size() == 4 * count.
absl::StatusOr<std::vector<float>> ReadF32Array(std::span<const uint8_t> bytes, size_t count);

}  // namespace shardserve::quant

#endif  // SHARDSERVE_WORKER_WEIGHTS_QUANT_FORMATS_H_
