#include "worker/dist/communicator.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LocalCommTest, OneRankCollectives) {
  LocalComm comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);
  std::vector<float> data = {1, 2, 3};
  ASSERT_TRUE(comm.AllReduceSum(data.data(), data.size()).ok());
  EXPECT_THAT(data, ElementsAre(1, 2, 3));
  std::vector<float> gathered(3);
  ASSERT_TRUE(comm.AllGather(data.data(), data.size(), gathered.data()).ok());
  EXPECT_THAT(gathered, ElementsAre(1, 2, 3));
  int value = 7;
  EXPECT_TRUE(comm.Broadcast(&value, sizeof(value), 0).ok());
  absl::Status bad = comm.Broadcast(&value, sizeof(value), 1);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("root 1"));
}

}  // namespace
}  // namespace shardserve
