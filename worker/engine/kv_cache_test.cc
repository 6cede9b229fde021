#include "worker/engine/kv_cache.h"

#include <algorithm>
#include <random>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

TEST(KvBlockManagerTest, BlocksForRoundsUp) {
  KvBlockManager m(8, 16);
  EXPECT_EQ(m.BlocksFor(0), 0);
  EXPECT_EQ(m.BlocksFor(1), 1);
  EXPECT_EQ(m.BlocksFor(16), 1);
  EXPECT_EQ(m.BlocksFor(17), 2);
  EXPECT_EQ(m.BlocksFor(128), 8);
}

TEST(KvBlockManagerTest, ReserveGrowsAndSlotsMapThroughTheTable) {
  KvBlockManager m(4, 4);
  EXPECT_EQ(m.free_blocks(), 4);
  EXPECT_FALSE(m.Has(7));
  ASSERT_TRUE(m.Reserve(7, 5).ok());
  EXPECT_TRUE(m.Has(7));
  EXPECT_EQ(m.Capacity(7), 8);
  EXPECT_EQ(m.used_blocks(), 2);
  EXPECT_EQ(m.free_blocks(), 2);
  ASSERT_TRUE(m.Reserve(9, 3).ok());
  ASSERT_TRUE(m.Reserve(7, 9).ok());  // third block for 7, after 9's first
  const auto& table = m.BlockTable(7);
  ASSERT_EQ(table.size(), 3u);
  EXPECT_EQ(m.BlockTable(9).size(), 1u);
  for (int64_t pos = 0; pos < m.Capacity(7); ++pos) {
    EXPECT_EQ(m.Slot(7, pos), table[pos / 4] * 4 + pos % 4) << pos;
  }
  // Every block belongs to exactly one sequence.
  std::set<int32_t> all(table.begin(), table.end());
  all.insert(m.BlockTable(9)[0]);
  EXPECT_EQ(all.size(), 4u);
  EXPECT_EQ(m.free_blocks(), 0);
  EXPECT_EQ(m.num_sequences(), 2);
}

TEST(KvBlockManagerTest, ReserveWithinCapacityTakesNothing) {
  KvBlockManager m(4, 4);
  ASSERT_TRUE(m.Reserve(1, 8).ok());
  ASSERT_TRUE(m.Reserve(1, 6).ok());
  ASSERT_TRUE(m.Reserve(1, 8).ok());
  EXPECT_EQ(m.free_blocks(), 2);
  EXPECT_EQ(m.Capacity(1), 8);
  ASSERT_TRUE(m.Reserve(2, 0).ok());  // creates an empty table
  EXPECT_TRUE(m.Has(2));
  EXPECT_EQ(m.Capacity(2), 0);
  EXPECT_EQ(m.free_blocks(), 2);
}

TEST(KvBlockManagerTest, ReserveIsAllOrNothing) {
  KvBlockManager m(4, 16);
  ASSERT_TRUE(m.Reserve(1, 40).ok());  // 3 blocks
  EXPECT_FALSE(m.CanReserve(2, 33));
  absl::Status s = m.Reserve(2, 33);  // 3 blocks, 1 free
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("needs 3 more blocks"));
  EXPECT_THAT(s.message(), HasSubstr("1 of 4 are free"));
  EXPECT_FALSE(m.Has(2));
  EXPECT_EQ(m.free_blocks(), 1);
  // Growing an existing sequence beyond what is free leaves it unchanged too.
  s = m.Reserve(1, 80);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("needs 2 more blocks"));
  EXPECT_EQ(m.Capacity(1), 48);
  EXPECT_EQ(m.free_blocks(), 1);
  EXPECT_TRUE(m.CanReserve(1, 64));
  EXPECT_TRUE(m.Reserve(1, 64).ok());
  EXPECT_EQ(m.free_blocks(), 0);
}

TEST(KvBlockManagerTest, NegativeTokensAreRefused) {
  KvBlockManager m(4, 16);
  absl::Status s = m.Reserve(1, -1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("-1 tokens"));
  EXPECT_FALSE(m.Has(1));
  EXPECT_FALSE(m.CanReserve(1, -1));
}

TEST(KvBlockManagerTest, FreeReturnsEveryBlockAndForgetsTheSequence) {
  KvBlockManager m(6, 2);
  ASSERT_TRUE(m.Reserve(1, 5).ok());
  ASSERT_TRUE(m.Reserve(2, 6).ok());
  EXPECT_EQ(m.free_blocks(), 0);
  const std::vector<int32_t> blocks_of_1 = m.BlockTable(1);
  m.Free(1);
  EXPECT_FALSE(m.Has(1));
  EXPECT_EQ(m.Capacity(1), 0);
  EXPECT_THAT(m.BlockTable(1), IsEmpty());
  EXPECT_EQ(m.free_blocks(), 3);
  m.Free(1);   // no-op
  m.Free(42);  // unknown: no-op
  EXPECT_EQ(m.free_blocks(), 3);
  // The freed blocks are the ones handed out next, in the same order.
  ASSERT_TRUE(m.Reserve(3, 6).ok());
  EXPECT_EQ(m.BlockTable(3), blocks_of_1);
  m.Free(2);
  m.Free(3);
  EXPECT_EQ(m.free_blocks(), 6);
  EXPECT_EQ(m.num_sequences(), 0);
}

TEST(KvBlockManagerTest, FirstBlocksGoOutInOrder) {
  KvBlockManager m(3, 1);
  ASSERT_TRUE(m.Reserve(5, 3).ok());
  EXPECT_THAT(m.BlockTable(5), ElementsAre(0, 1, 2));
  EXPECT_EQ(m.Slot(5, 2), 2);
}

TEST(KvBlockManagerTest, ZeroBlocksRefusesEverything) {
  KvBlockManager m(0, 16);
  EXPECT_EQ(m.free_blocks(), 0);
  EXPECT_TRUE(m.CanReserve(1, 0));
  EXPECT_FALSE(m.CanReserve(1, 1));
  EXPECT_EQ(m.Reserve(1, 1).code(), absl::StatusCode::kResourceExhausted);
}

// Random grow / free traffic: blocks are never shared, never lost, and counts always add up.
TEST(KvBlockManagerTest, RandomTrafficKeepsTheBooks) {
  constexpr int kBlocks = 64, kBlockTokens = 8;
  KvBlockManager m(kBlocks, kBlockTokens);
  std::mt19937_64 rng(1234);
  std::vector<int64_t> live;
  for (int iter = 0; iter < 5000; ++iter) {
    const int op = static_cast<int>(rng() % 3);
    if (op < 2) {
      const int64_t seq = static_cast<int64_t>(rng() % 16);
      const int64_t tokens = m.Capacity(seq) + static_cast<int64_t>(rng() % 40);
      const int free_before = m.free_blocks();
      const int64_t cap_before = m.Capacity(seq);
      const bool can = m.CanReserve(seq, tokens);
      absl::Status s = m.Reserve(seq, tokens);
      ASSERT_EQ(s.ok(), can);
      if (s.ok()) {
        ASSERT_GE(m.Capacity(seq), tokens);
        ASSERT_LT(m.Capacity(seq) - tokens, kBlockTokens);
        if (std::find(live.begin(), live.end(), seq) == live.end()) live.push_back(seq);
      } else {
        ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
        ASSERT_EQ(m.free_blocks(), free_before);
        ASSERT_EQ(m.Capacity(seq), cap_before);
      }
    } else if (!live.empty()) {
      const size_t i = rng() % live.size();
      m.Free(live[i]);
      live.erase(live.begin() + i);
    }
    std::vector<int> owner(kBlocks, 0);
    int used = 0;
    for (int64_t seq : live) {
      for (int32_t b : m.BlockTable(seq)) {
        ASSERT_GE(b, 0);
        ASSERT_LT(b, kBlocks);
        ASSERT_EQ(owner[b]++, 0) << "block " << b << " owned twice";
        ++used;
      }
    }
    ASSERT_EQ(used, m.used_blocks());
    ASSERT_EQ(m.num_sequences(), static_cast<int>(live.size()));
  }
}

}  // namespace
}  // namespace shardserve
