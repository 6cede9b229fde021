#include "gateway/router.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

WorkerSnapshot Worker(const std::string& id, int running, bool healthy = true) {
  WorkerSnapshot w;
  w.id = id;
  w.up = true;
  w.healthy = healthy;
  w.models = {"smol"};
  w.running = running;
  return w;
}

RouteRequest Request(uint64_t prefix_key = 0) {
  RouteRequest r;
  r.model = "smol";
  r.prefix_key = prefix_key;
  return r;
}

TEST(RouterTest, LeastLoadedHealthyWorkerWithoutPrefix) {
  std::vector<WorkerSnapshot> workers = {Worker("a:1", 3), Worker("b:1", 1),
                                         Worker("c:1", 0, false)};
  absl::StatusOr<size_t> pick = PickWorker(workers, Request(), RouterConfig{});
  ASSERT_TRUE(pick.ok()) << pick.status();
  EXPECT_EQ(*pick, 1u);  // c is idle but not healthy
}

TEST(RouterTest, KvUseCountsAsLoadAndTiesGoToTheLowestId) {
  std::vector<WorkerSnapshot> workers = {Worker("b:1", 1), Worker("a:1", 1)};
  EXPECT_EQ(*PickWorker(workers, Request(), RouterConfig{}), 1u);
  workers[1].kv_blocks_used = 90;
  workers[1].kv_blocks_total = 100;
  EXPECT_EQ(*PickWorker(workers, Request(), RouterConfig{}), 0u);
}

TEST(RouterTest, SamePrefixSameWorkerUnlessTooBusy) {
  std::vector<WorkerSnapshot> workers = {Worker("a:1", 0), Worker("b:1", 0), Worker("c:1", 0)};
  // Different prefixes spread over the workers; each prefix always lands on one.
  std::map<size_t, int> spread;
  for (uint64_t key = 1; key <= 300; ++key) {
    const size_t first = *PickWorker(workers, Request(key), RouterConfig{});
    EXPECT_EQ(*PickWorker(workers, Request(key), RouterConfig{}), first);
    ++spread[first];
  }
  ASSERT_EQ(spread.size(), 3u);
  for (const auto& [worker, count] : spread) EXPECT_GT(count, 50) << worker;

  const uint64_t key = 42;
  const size_t preferred = *PickWorker(workers, Request(key), RouterConfig{});
  RouterConfig config;
  config.affinity_margin = 4;
  workers[preferred].running = 4;  // 4 busier than the idle ones: within the margin
  EXPECT_EQ(*PickWorker(workers, Request(key), config), preferred);
  workers[preferred].running = 5;  // beyond it: the least loaded takes it
  EXPECT_NE(*PickWorker(workers, Request(key), config), preferred);
}

TEST(RouterTest, AWorkerLeavingMovesOnlyItsConversations) {
  std::vector<WorkerSnapshot> workers = {Worker("a:1", 0), Worker("b:1", 0), Worker("c:1", 0)};
  std::vector<std::string> before;
  for (uint64_t key = 1; key <= 200; ++key) {
    before.push_back(workers[*PickWorker(workers, Request(key), RouterConfig{})].id);
  }
  workers[2].up = false;  // c marked down
  for (uint64_t key = 1; key <= 200; ++key) {
    const std::string now = workers[*PickWorker(workers, Request(key), RouterConfig{})].id;
    if (before[key - 1] != "c:1") EXPECT_EQ(now, before[key - 1]) << key;
    EXPECT_NE(now, "c:1");
  }
}

TEST(RouterTest, RetriesSkipTheWorkersThatFailed) {
  std::vector<WorkerSnapshot> workers = {Worker("a:1", 0), Worker("b:1", 5)};
  RouteRequest request = Request();
  request.exclude = {"a:1"};
  EXPECT_EQ(*PickWorker(workers, request, RouterConfig{}), 1u);
  request.exclude = {"a:1", "b:1"};
  absl::StatusOr<size_t> none = PickWorker(workers, request, RouterConfig{});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(none.status().message(), HasSubstr("2 serve it, 0 down or not healthy, 2 already"));
}

TEST(RouterTest, UnknownModelIsNotFoundAndNoHealthyWorkerIsUnavailable) {
  std::vector<WorkerSnapshot> workers = {Worker("a:1", 0, false)};
  RouteRequest request = Request();
  request.model = "llama";
  absl::StatusOr<size_t> pick = PickWorker(workers, request, RouterConfig{});
  EXPECT_EQ(pick.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(pick.status().message(), HasSubstr("'llama' is not served"));
  pick = PickWorker(workers, Request(), RouterConfig{});
  EXPECT_EQ(pick.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(pick.status().message(), HasSubstr("1 down or not healthy"));
}

TEST(RouterTest, PrefixKeyFollowsEverythingButTheLastMessage) {
  using Turns = std::vector<std::pair<std::string, std::string>>;
  const Turns first = {{"user", "hi"}};
  const Turns second = {{"user", "hi"}, {"assistant", "hello"}, {"user", "how are you?"}};
  const Turns other_last = {{"user", "hi"}, {"assistant", "hello"}, {"user", "bye"}};
  const Turns other_prefix = {{"user", "hey"}, {"assistant", "hello"}, {"user", "bye"}};
  EXPECT_EQ(PrefixKey("smol", first), 0u);
  EXPECT_NE(PrefixKey("smol", second), 0u);
  EXPECT_EQ(PrefixKey("smol", second), PrefixKey("smol", other_last));
  EXPECT_NE(PrefixKey("smol", second), PrefixKey("smol", other_prefix));
  EXPECT_NE(PrefixKey("smol", second), PrefixKey("llama", second));
  // Field boundaries count: ("ab", "c") is not ("a", "bc").
  EXPECT_NE(PrefixKey("m", Turns{{"ab", "c"}, {"user", "x"}}),
            PrefixKey("m", Turns{{"a", "bc"}, {"user", "x"}}));
}

}  // namespace
}  // namespace shardserve
