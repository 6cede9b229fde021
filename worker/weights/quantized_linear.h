// One quantized linear weight of a hub_sync artifact, assembled from its stored tensors (names,
// dtypes and layouts: quant_formats.h) into the single logical TensorView the engine multiplies:
// the HF name "P.weight", shape [out, in], dtype kInt8Channel / kAwqInt4 / kNf4, and
// TensorView::quant pointing into the stored tensors (zero-copy; see tensor.h's QuantParts).
//
// Every stored tensor is checked against the scheme before a view is made (dtype, shape, sizes of
// the companions, the nf4 quant_state), so the kernels may trust the view. Pure functions.
#ifndef SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_LINEAR_H_
#define SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_LINEAR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/weights/quant_formats.h"
#include "worker/weights/tensor.h"

namespace shardserve {

// The stored tensor called `name`, or nullptr when there is none. Views must outlive the result.
using StoredTensorLookup = std::function<const TensorView*(absl::string_view name)>;

struct QuantizedLinear {
  TensorView view;                 // view.name == prefix + ".weight"
  std::vector<std::string> parts;  // the stored tensors it is made of
};

// The stored tensor whose presence marks a linear layer quantized with `scheme`, as a suffix of
// its prefix P: ".weight_scale" (int8), ".qweight" (int4), ".weight.quant_state.bitsandbytes__nf4"
// (nf4).
absl::string_view QuantizedLinearMarkerSuffix(quant::QuantScheme scheme);

// Assembles layer `prefix` ("model.layers.0.self_attn.q_proj"). `group_size` is int4's G from
// config.json (0: take it from the stored shapes); ignored by the other schemes. Errors name
// `what` (the checkpoint) and the tensor: NOT_FOUND for a missing companion tensor,
// INVALID_ARGUMENT for a wrong dtype or shape, a size that does not match the scheme, a G that
// disagrees with the tensors, or a malformed nf4 quant_state.
absl::StatusOr<QuantizedLinear> AssembleQuantizedLinear(quant::QuantScheme scheme,
                                                        absl::string_view prefix,
                                                        const StoredTensorLookup& lookup,
                                                        int64_t group_size, absl::string_view what);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WEIGHTS_QUANTIZED_LINEAR_H_
