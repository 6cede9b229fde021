#include "worker/weights/tensor.h"

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace shardserve {
namespace {

// Elements in one outermost row (all inner dimensions; 1 for 0-D and 1-D tensors).
// Products wrap instead of overflowing (readers reject shapes whose products do not fit).
int64_t RowElements(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= static_cast<uint64_t>(shape[i]);
  return static_cast<int64_t>(n);
}

std::string Describe(const TensorView& view) {
  return absl::StrCat(
      "tensor '", view.name, "' ", ShapeString(view.shape), " ",
      absl::string_view(DTypeName(view.dtype).data(), DTypeName(view.dtype).size()));
}

}  // namespace

int64_t TensorView::NumElements() const {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return static_cast<int64_t>(n);
}

int64_t TensorView::Rows() const { return shape.empty() ? 1 : shape[0]; }

size_t TensorView::RowBytes() const {
  // A 1-D tensor of a block type has no whole-block rows; report its elements' bytes per row as
  // 0 so callers that need rows use RowRange (which handles 1-D block tensors by blocks).
  return BytesForElements(dtype, static_cast<uint64_t>(RowElements(shape))).value_or(0);
}

size_t TensorView::ByteSize() const {
  return BytesForElements(dtype, static_cast<uint64_t>(NumElements())).value_or(0);
}

bool TensorView::IsContiguous() const {
  if (IsQuantizedLinear(dtype)) {
    return shape.size() == 2 && quant.col0 == 0 && shape[1] == quant.full_cols;
  }
  if (shape.size() <= 1 || shape[0] <= 1) return true;
  return row_stride == 0 || row_stride == RowBytes();
}

absl::StatusOr<TensorView> TensorView::RowRange(int64_t begin, int64_t end) const {
  if (shape.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(*this), ": row range [", begin, ", ", end, ") of a 0-D tensor"));
  }
  if (begin < 0 || begin > end || end > shape[0]) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(*this), ": row range [", begin, ", ",
                                                   end, ") is outside [0, ", shape[0], ")"));
  }
  TensorView out = *this;
  out.shape[0] = end - begin;
  if (IsQuantizedLinear(dtype)) {
    if (shape.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(Describe(*this), ": a quantized linear weight must be 2-D"));
    }
    out.quant.row0 += begin;
    return out;
  }
  if (shape.size() == 1) {
    // Rows of a 1-D tensor are single elements; for block types the range must cover whole
    // blocks.
    std::optional<size_t> offset = BytesForElements(dtype, static_cast<uint64_t>(begin));
    std::optional<size_t> length = BytesForElements(dtype, static_cast<uint64_t>(end - begin));
    if (!offset || !length) {
      return absl::InvalidArgumentError(absl::StrCat(Describe(*this), ": row range [", begin, ", ",
                                                     end, ") is not aligned to the block size ",
                                                     GetDTypeInfo(dtype).block_elems));
    }
    out.data = data + *offset;
    return out;
  }
  // A view built by hand without row_stride is taken as contiguous.
  const size_t stride = row_stride != 0 ? row_stride : RowBytes();
  out.data = data + static_cast<size_t>(begin) * stride;
  return out;
}

absl::StatusOr<TensorView> TensorView::ColumnRange(int64_t begin, int64_t end) const {
  if (shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(*this), ": column range [", begin, ", ",
                                                   end, ") needs a 2-D tensor"));
  }
  if (begin < 0 || begin > end || end > shape[1]) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(*this), ": column range [", begin, ", ",
                                                   end, ") is outside [0, ", shape[1], ")"));
  }
  if (IsQuantizedLinear(dtype)) {
    TensorView out = *this;
    out.shape[1] = end - begin;
    out.quant.col0 += begin;
    return out;
  }
  std::optional<size_t> offset = BytesForElements(dtype, static_cast<uint64_t>(begin));
  if (!offset || !BytesForElements(dtype, static_cast<uint64_t>(end))) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(*this), ": column range [", begin, ", ",
                                                   end, ") is not aligned to the block size ",
                                                   GetDTypeInfo(dtype).block_elems));
  }
  TensorView out = *this;
  out.row_stride = row_stride != 0 ? row_stride : RowBytes();
  out.shape[1] = end - begin;
  out.data = data + *offset;
  // row_stride stays: the view is strided unless it keeps every column.
  return out;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace shardserve
