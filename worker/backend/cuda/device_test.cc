#include "worker/backend/cuda/device.h"

#include "gtest/gtest.h"

namespace shardserve::cuda {
namespace {

TEST(CudaDeviceTest, ListsDevicesOrSkips) {
  std::string why;
  std::vector<DeviceInfo> devices = ListDevices(&why);
  if (devices.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  for (const DeviceInfo& d : devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GT(d.total_memory_bytes, 0);
    EXPECT_GE(d.compute_major, 5);
  }
}

}  // namespace
}  // namespace shardserve::cuda
