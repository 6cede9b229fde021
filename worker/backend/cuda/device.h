// CUDA devices visible to this process. Built only when the CUDA toolkit is found
// (SHARDSERVE_CUDA=AUTO|ON); works, and reports zero devices, on a machine without a GPU.
#ifndef SHARDSERVE_WORKER_BACKEND_CUDA_DEVICE_H_
#define SHARDSERVE_WORKER_BACKEND_CUDA_DEVICE_H_

#include <cstdint>
#include <string>
#include <vector>

namespace shardserve::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int64_t total_memory_bytes = 0;
  int multiprocessors = 0;
};

// Every device the CUDA runtime reports; empty when there is no driver or no device (the
// reason is in `*why` when given).
std::vector<DeviceInfo> ListDevices(std::string* why = nullptr);

}  // namespace shardserve::cuda

#endif  // SHARDSERVE_WORKER_BACKEND_CUDA_DEVICE_H_
