#include <cuda_runtime.h>

#include "worker/backend/cuda/device.h"

namespace shardserve::cuda {

std::vector<DeviceInfo> ListDevices(std::string* why) {
  std::vector<DeviceInfo> devices;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    if (why != nullptr) *why = cudaGetErrorString(err);
    cudaGetLastError();  // Clear the sticky-free error so later calls start clean.
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    devices.push_back(DeviceInfo{i, prop.name, prop.major, prop.minor,
                                 static_cast<int64_t>(prop.totalGlobalMem),
                                 prop.multiProcessorCount});
  }
  if (devices.empty() && why != nullptr) *why = "no CUDA device";
  return devices;
}

}  // namespace shardserve::cuda
