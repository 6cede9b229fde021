#include "common/host_port.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

TEST(SplitHostPortTest, ParsesAndRejects) {
  std::string host;
  int port = -1;
  ASSERT_TRUE(SplitHostPort("127.0.0.1:8000", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 8000);
  ASSERT_TRUE(SplitHostPort("[::1]:0", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 0);
  absl::Status s = SplitHostPort("localhost", &host, &port);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("expected host:port"));
  s = SplitHostPort("localhost:99999", &host, &port);
  EXPECT_THAT(s.message(), HasSubstr("port is not a number"));
}

TEST(JoinHostPortTest, BracketsIpv6Hosts) {
  EXPECT_EQ(JoinHostPort("127.0.0.1", 8000), "127.0.0.1:8000");
  EXPECT_EQ(JoinHostPort("::1", 0), "[::1]:0");
}

}  // namespace
}  // namespace shardserve
