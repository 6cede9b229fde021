#include "worker/weights/quantized_linear.h"

#include <span>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/weights/dequantize.h"

namespace shardserve {
namespace {

absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Finds and checks one stored tensor of the layer.
class Parts {
 public:
  Parts(absl::string_view prefix, const StoredTensorLookup& lookup, absl::string_view what,
        quant::QuantScheme scheme)
      : prefix_(prefix), lookup_(lookup), what_(what), scheme_(scheme) {}

  absl::StatusOr<const TensorView*> Get(std::string_view suffix, DType dtype) {
    std::string name = absl::StrCat(prefix_, Sv(suffix));
    const TensorView* t = lookup_(name);
    if (t == nullptr) {
      return absl::NotFoundError(absl::StrCat(what_, ": ", Sv(quant::SchemeName(scheme_)),
                                              " layer '", prefix_, "' has no tensor '", name, "'"));
    }
    if (t->dtype != dtype) {
      return Error(*t, absl::StrCat("has dtype ", Sv(DTypeName(t->dtype)), ", expected ",
                                    Sv(DTypeName(dtype))));
    }
    if (!t->IsContiguous() || (t->NumElements() > 0 && t->data == nullptr)) {
      return Error(*t, "is not a contiguous stored tensor");
    }
    names_.push_back(std::move(name));
    return t;
  }

  // `t` must have exactly `shape`.
  absl::Status Shape(const TensorView& t, const std::vector<int64_t>& shape) const {
    if (t.shape == shape) return absl::OkStatus();
    return Error(
        t, absl::StrCat("has shape ", ShapeString(t.shape), ", expected ", ShapeString(shape)));
  }

  absl::Status Error(const TensorView& t, absl::string_view why) const {
    return absl::InvalidArgumentError(
        absl::StrCat(what_, ": ", Sv(quant::SchemeName(scheme_)), " tensor '", t.name, "' ", why));
  }

  std::vector<std::string> TakeNames() { return std::move(names_); }

 private:
  std::string prefix_;
  const StoredTensorLookup& lookup_;
  absl::string_view what_;
  quant::QuantScheme scheme_;
  std::vector<std::string> names_;
};

absl::StatusOr<QuantizedLinear> AssembleInt8(Parts& parts, TensorView view) {
  ASSIGN_OR_RETURN(const TensorView* w, parts.Get(quant::kInt8WeightSuffix, DType::kI8));
  if (w->shape.size() != 2 || w->shape[0] <= 0 || w->shape[1] <= 0) {
    return parts.Error(
        *w, absl::StrCat("has shape ", ShapeString(w->shape), ", expected 2-D [out, in]"));
  }
  const int64_t out = w->shape[0], in = w->shape[1];
  ASSIGN_OR_RETURN(const TensorView* scale, parts.Get(quant::kInt8ScaleSuffix, DType::kF32));
  if (scale->shape != std::vector<int64_t>{out, 1} && scale->shape != std::vector<int64_t>{out}) {
    return parts.Error(
        *scale, absl::StrCat("has shape ", ShapeString(scale->shape), ", expected [", out, ", 1]"));
  }
  view.dtype = DType::kInt8Channel;
  view.shape = {out, in};
  view.data = w->data;
  view.quant.full_rows = out;
  view.quant.full_cols = in;
  view.quant.scales = scale->data;
  return QuantizedLinear{std::move(view), parts.TakeNames()};
}

absl::StatusOr<QuantizedLinear> AssembleInt4(Parts& parts, TensorView view, int64_t group_size) {
  ASSIGN_OR_RETURN(const TensorView* qweight, parts.Get(quant::kAwqQweightSuffix, DType::kI32));
  if (qweight->shape.size() != 2 || qweight->shape[0] <= 0 || qweight->shape[1] <= 0) {
    return parts.Error(*qweight, absl::StrCat("has shape ", ShapeString(qweight->shape),
                                              ", expected 2-D [in, out / 8]"));
  }
  const int64_t in = qweight->shape[0];
  const int64_t out = qweight->shape[1] * quant::kAwqPackFactor;
  ASSIGN_OR_RETURN(const TensorView* scales, parts.Get(quant::kAwqScalesSuffix, DType::kF16));
  if (scales->shape.size() != 2 || scales->shape[0] <= 0) {
    return parts.Error(*scales, absl::StrCat("has shape ", ShapeString(scales->shape),
                                             ", expected 2-D [in / group, out]"));
  }
  const int64_t groups = scales->shape[0];
  if (in % groups != 0) {
    return parts.Error(*scales, absl::StrCat("has ", groups, " groups, which do not divide ", in,
                                             " input features"));
  }
  const int64_t g = in / groups;
  if (group_size > 0 && group_size != g) {
    return parts.Error(*scales,
                       absl::StrCat("has ", groups, " groups of ", g,
                                    " inputs, but config.json's group_size is ", group_size));
  }
  RETURN_IF_ERROR(parts.Shape(*scales, {groups, out}));
  ASSIGN_OR_RETURN(const TensorView* qzeros, parts.Get(quant::kAwqQzerosSuffix, DType::kI32));
  RETURN_IF_ERROR(parts.Shape(*qzeros, {groups, out / quant::kAwqPackFactor}));
  view.dtype = DType::kAwqInt4;
  view.shape = {out, in};
  view.data = qweight->data;
  view.quant.full_rows = out;
  view.quant.full_cols = in;
  view.quant.group = g;
  view.quant.scales = scales->data;
  view.quant.zeros = qzeros->data;
  return QuantizedLinear{std::move(view), parts.TakeNames()};
}

absl::StatusOr<QuantizedLinear> AssembleNf4(Parts& parts, TensorView view) {
  ASSIGN_OR_RETURN(const TensorView* state_bytes,
                   parts.Get(quant::kNf4QuantStateSuffix, DType::kU8));
  absl::StatusOr<quant::Nf4QuantState> state = quant::ParseNf4QuantState(
      std::span<const uint8_t>(state_bytes->data, state_bytes->ByteSize()));
  if (!state.ok()) return parts.Error(*state_bytes, state.status().message());
  if (state->shape.size() != 2) {
    return parts.Error(*state_bytes, absl::StrCat("gives shape ", ShapeString(state->shape),
                                                  ", expected 2-D [out, in]"));
  }
  const int64_t out = state->shape[0], in = state->shape[1];
  if (out > (int64_t{1} << 40) / in) {
    return parts.Error(*state_bytes,
                       absl::StrCat("gives shape ", ShapeString(state->shape), ", too large"));
  }
  const int64_t numel = out * in;
  const int64_t blocks = quant::Nf4Blocks(numel);
  ASSIGN_OR_RETURN(const TensorView* w, parts.Get(quant::kNf4WeightSuffix, DType::kU8));
  if (w->NumElements() != (numel + 1) / 2 || w->shape.empty()) {
    return parts.Error(
        *w, absl::StrCat("has shape ", ShapeString(w->shape), ", expected ", (numel + 1) / 2,
                         " bytes for the quant_state's shape ", ShapeString(state->shape)));
  }
  ASSIGN_OR_RETURN(const TensorView* code, parts.Get(quant::kNf4QuantMapSuffix, DType::kF32));
  RETURN_IF_ERROR(parts.Shape(*code, {16}));
  view.quant.code = code->data;
  if (state->nested) {
    ASSIGN_OR_RETURN(const TensorView* absmax, parts.Get(quant::kNf4AbsmaxSuffix, DType::kU8));
    RETURN_IF_ERROR(parts.Shape(*absmax, {blocks}));
    ASSIGN_OR_RETURN(const TensorView* nested_absmax,
                     parts.Get(quant::kNf4NestedAbsmaxSuffix, DType::kF32));
    RETURN_IF_ERROR(parts.Shape(*nested_absmax, {quant::Nf4NestedBlocks(blocks)}));
    ASSIGN_OR_RETURN(const TensorView* nested_code,
                     parts.Get(quant::kNf4NestedQuantMapSuffix, DType::kF32));
    RETURN_IF_ERROR(parts.Shape(*nested_code, {256}));
    view.quant.absmax = absmax->data;
    view.quant.nested_absmax = nested_absmax->data;
    view.quant.nested_code = nested_code->data;
    view.quant.nested_group = state->nested_blocksize;
    view.quant.nested_offset = state->nested_offset;
  } else {
    ASSIGN_OR_RETURN(const TensorView* absmax, parts.Get(quant::kNf4AbsmaxSuffix, DType::kF32));
    RETURN_IF_ERROR(parts.Shape(*absmax, {blocks}));
    view.quant.absmax = absmax->data;
  }
  view.dtype = DType::kNf4;
  view.shape = {out, in};
  view.data = w->data;
  view.quant.full_rows = out;
  view.quant.full_cols = in;
  view.quant.group = state->blocksize;
  return QuantizedLinear{std::move(view), parts.TakeNames()};
}

}  // namespace

absl::string_view QuantizedLinearMarkerSuffix(quant::QuantScheme scheme) {
  switch (scheme) {
    case quant::QuantScheme::kInt8:
      return Sv(quant::kInt8ScaleSuffix);
    case quant::QuantScheme::kInt4:
      return Sv(quant::kAwqQweightSuffix);
    case quant::QuantScheme::kNf4:
      return Sv(quant::kNf4QuantStateSuffix);
  }
  return "";
}

absl::StatusOr<QuantizedLinear> AssembleQuantizedLinear(quant::QuantScheme scheme,
                                                        absl::string_view prefix,
                                                        const StoredTensorLookup& lookup,
                                                        int64_t group_size,
                                                        absl::string_view what) {
  Parts parts(prefix, lookup, what, scheme);
  TensorView view;
  view.name = absl::StrCat(prefix, ".weight");
  absl::StatusOr<QuantizedLinear> result;
  switch (scheme) {
    case quant::QuantScheme::kInt8:
      result = AssembleInt8(parts, std::move(view));
      break;
    case quant::QuantScheme::kInt4:
      result = AssembleInt4(parts, std::move(view), group_size);
      break;
    case quant::QuantScheme::kNf4:
      result = AssembleNf4(parts, std::move(view));
      break;
  }
  if (!result.ok()) return result.status();
  absl::Status check = CheckQuantParts(result->view);
  if (!check.ok()) return absl::InvalidArgumentError(absl::StrCat(what, ": ", check.message()));
  return result;
}

}  // namespace shardserve
