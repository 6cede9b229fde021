// A zero-copy view of one tensor inside a mapped weight file, and the slices a tensor-parallel
// rank takes of it. Views never own memory: they stay valid while the file that made them
// (SafetensorsFile, GgufFile, ...) is alive.
#ifndef SHARDSERVE_WORKER_WEIGHTS_TENSOR_H_
#define SHARDSERVE_WORKER_WEIGHTS_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/weights/dtype.h"

namespace shardserve {

// Where a quantized linear weight (IsQuantizedLinear(dtype): hub_sync's int8 / int4 / nf4
// artifacts) keeps what its codes need, zero-copy: every pointer is into the same mapping as
// TensorView::data, unaligned. The stored weight is the whole [full_rows = out_features,
// full_cols = in_features] matrix; a view is the window [row0, row0 + shape[0]) x [col0, col0 +
// shape[1]) of it. RowRange / ColumnRange move the window and never the pointers, so `data` and
// the pointers below always address the whole stored weight.
//
//   kInt8Channel: data = I8 codes [out, in] row-major; scales = F32 [out].
//                 value = float(code) * scale[r].
//   kAwqInt4:     data = qweight I32 [in, out / 8]; zeros = qzeros I32 [in / group, out / 8];
//                 scales = F16 [in / group, out]. Each int32 holds 8 outputs' 4-bit codes, output
//                 8j + i in nibble kAwqNibble[i] (AutoAWQ's order 0, 2, 4, 6, 1, 3, 5, 7 read
//                 back). value = float(q - z) * scale (scale as f32).
//   kNf4:         data = U8 [ceil(out * in / 2)], the row-major values two per byte (even element
//                 in the high nibble); code = F32 [16] (quant_map); absmax per `group` (blocksize)
//                 consecutive values: F32 [blocks], or, double-quantized (nested_code set), U8
//                 [blocks] decoded as nested_code[u8] * nested_absmax[b / nested_group] +
//                 nested_offset. value = code[q] * absmax[e / group].
struct QuantParts {
  int64_t full_rows = 0;
  int64_t full_cols = 0;
  int64_t row0 = 0;
  int64_t col0 = 0;
  int64_t group = 0;  // kAwqInt4: inputs per group; kNf4: values per absmax block
  const uint8_t* scales = nullptr;
  const uint8_t* zeros = nullptr;
  const uint8_t* code = nullptr;
  const uint8_t* absmax = nullptr;
  const uint8_t* nested_code = nullptr;    // F32 [256]; nullptr: absmax is F32
  const uint8_t* nested_absmax = nullptr;  // F32 [ceil(blocks / nested_group)]
  int64_t nested_group = 0;
  float nested_offset = 0.0f;
};

// Nibble of output 8j + i inside AWQ's int32 word j: AutoAWQ packs outputs in the order
// 0, 2, 4, 6, 1, 3, 5, 7, so output i sits in nibble kAwqNibble[i].
inline constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  // Outermost dimension first (the PyTorch / numpy order; GGUF's reversed dims are put in this
  // order by its reader). A Linear weight is {out_features, in_features}.
  std::vector<int64_t> shape;
  // First byte of element [0, 0, ...].
  const uint8_t* data = nullptr;
  // Bytes from the start of one outermost row to the next. Equals RowBytes() for a contiguous
  // tensor; larger for a column slice of a 2-D tensor. Unused for 0-D tensors and for quantized
  // linear types (0; see `quant`).
  size_t row_stride = 0;
  // Quantized linear types only (IsQuantizedLinear(dtype)): the companion tensors and the window.
  QuantParts quant;

  int64_t NumElements() const;
  // Rows along the outermost dimension (1 for a 0-D tensor).
  int64_t Rows() const;
  // Bytes of one outermost row as stored (all inner dims; blocks for GGML types).
  size_t RowBytes() const;
  // Total bytes covered by the view when contiguous.
  size_t ByteSize() const;
  bool IsContiguous() const;

  // Rows [begin, end) of the outermost dimension: contiguous, zero-copy. The slice a rank takes
  // of a column-parallel weight (q/k/v, gate/up) or a vocab-parallel embedding. Quantized linear
  // types move their window (any range; kernels are fastest on whole groups / blocks).
  absl::StatusOr<TensorView> RowRange(int64_t begin, int64_t end) const;
  // Columns [begin, end) of a 2-D tensor: a strided zero-copy view (row_stride unchanged). The
  // slice a rank takes of a row-parallel weight (o_proj, down_proj). For block types `begin` and
  // `end` must be multiples of the block size (quantized linear types: any range, as RowRange).
  absl::StatusOr<TensorView> ColumnRange(int64_t begin, int64_t end) const;
};

// "[576, 49152]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_TENSOR_H_
