// Collectives between the tensor-parallel ranks of one worker group. One implementation per
// transport: LocalComm (one rank, no-op), later GlooComm (CPU ranks over TCP) and NcclComm
// (GPUs). Buffers are the backend's device memory (host memory for CPU backends). Every rank
// calls the same collectives in the same order; the engine loop is the only caller.
#ifndef SHARDSERVE_WORKER_DIST_COMMUNICATOR_H_
#define SHARDSERVE_WORKER_DIST_COMMUNICATOR_H_

#include <cstddef>

#include "absl/status/status.h"

namespace shardserve {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // data[0..count) = Σ over ranks of data[0..count), in place.
  virtual absl::Status AllReduceSum(float* data, size_t count) = 0;
  // recv[r * count .. (r+1) * count) = send of rank r.
  virtual absl::Status AllGather(const float* send, size_t count, float* recv) = 0;
  // bytes from rank `root` to every rank's data.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;
};

// The degenerate group of one rank: reductions and broadcasts are no-ops, all-gather copies.
class LocalComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(float* data, size_t count) override;
  absl::Status AllGather(const float* send, size_t count, float* recv) override;
  absl::Status Broadcast(void* data, size_t bytes, int root) override;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_DIST_COMMUNICATOR_H_
