#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/dist/communicator.h"

namespace shardserve {

absl::Status LocalComm::AllReduceSum(float* /*data*/, size_t /*count*/) { return absl::OkStatus(); }

absl::Status LocalComm::AllGather(const float* send, size_t count, float* recv) {
  if (send != recv) std::memmove(recv, send, count * sizeof(float));
  return absl::OkStatus();
}

absl::Status LocalComm::Broadcast(void* /*data*/, size_t /*bytes*/, int root) {
  if (root != 0) {
    return absl::InvalidArgumentError(absl::StrCat("broadcast root ", root, " in a group of 1"));
  }
  return absl::OkStatus();
}

}  // namespace shardserve
