#include "worker/backend/backend.h"

namespace shardserve {

size_t KvCacheSpec::BytesPerBlock() const {
  const size_t elem = dtype == DType::kF32 ? 4 : 2;
  return static_cast<size_t>(layers) * 2 * static_cast<size_t>(block_tokens) *
         static_cast<size_t>(kv_heads) * static_cast<size_t>(head_dim) * elem;
}

}  // namespace shardserve
