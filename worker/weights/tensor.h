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

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  // Outermost dimension first (the PyTorch / numpy order; GGUF's reversed dims are put in this
  // order by its reader). A Linear weight is {out_features, in_features}.
  std::vector<int64_t> shape;
  // First byte of element [0, 0, ...].
  const uint8_t* data = nullptr;
  // Bytes from the start of one outermost row to the next. Equals RowBytes() for a contiguous
  // tensor; larger for a column slice of a 2-D tensor. Unused for 0-D tensors.
  size_t row_stride = 0;

  int64_t NumElements() const;
  // Rows along the outermost dimension (1 for a 0-D tensor).
  int64_t Rows() const;
  // Bytes of one outermost row as stored (all inner dims; blocks for GGML types).
  size_t RowBytes() const;
  // Total bytes covered by the view when contiguous.
  size_t ByteSize() const;
  bool IsContiguous() const;

  // Rows [begin, end) of the outermost dimension: contiguous, zero-copy. The slice a rank takes
  // of a column-parallel weight (q/k/v, gate/up) or a vocab-parallel embedding.
  absl::StatusOr<TensorView> RowRange(int64_t begin, int64_t end) const;
  // Columns [begin, end) of a 2-D tensor: a strided zero-copy view (row_stride unchanged). The
  // slice a rank takes of a row-parallel weight (o_proj, down_proj). For block types `begin` and
  // `end` must be multiples of the block size.
  absl::StatusOr<TensorView> ColumnRange(int64_t begin, int64_t end) const;
};

// "[576, 49152]"
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_TENSOR_H_
