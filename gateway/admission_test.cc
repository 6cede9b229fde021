#include "gateway/admission.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

TEST(TokenBucketTest, RefillsAtItsRateUpToTheBurst) {
  TokenBucket bucket(/*rate_per_second=*/2, /*burst=*/3, kStart);
  absl::Duration retry;
  EXPECT_TRUE(bucket.TryTake(3, kStart, &retry));
  EXPECT_FALSE(bucket.TryTake(1, kStart, &retry));
  EXPECT_EQ(retry, absl::Milliseconds(500));
  EXPECT_TRUE(bucket.TryTake(1, kStart + absl::Milliseconds(500), &retry));
  EXPECT_DOUBLE_EQ(bucket.Available(kStart + absl::Seconds(100)), 3);  // capped at the burst
  bucket.Charge(5, kStart + absl::Seconds(100));
  EXPECT_DOUBLE_EQ(bucket.Available(kStart + absl::Seconds(100)), -2);
}

TEST(Sha256HexTest, KnownVector) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(AdmissionTest, KeysMapToTenantsAndWrongOrMissingKeysAreUnauthenticated) {
  auto admission = Admission::Create(
      {{Sha256Hex("secret-a"), "team-a"}, {Sha256Hex("secret-b"), "team-b"}}, {}, kStart);
  ASSERT_TRUE(admission.ok()) << admission.status();
  EXPECT_EQ(*(*admission)->Authenticate("secret-b"), "team-b");
  absl::StatusOr<std::string> missing = (*admission)->Authenticate("");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(missing.status().message(), HasSubstr("missing API key"));
  absl::StatusOr<std::string> wrong = (*admission)->Authenticate("secret-c");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(wrong.status().message(), HasSubstr("invalid API key"));
}

TEST(AdmissionTest, WithoutKeysEveryoneIsTheDefaultTenant) {
  auto admission = Admission::Create({}, {}, kStart);
  ASSERT_TRUE(admission.ok());
  EXPECT_FALSE((*admission)->authentication_enabled());
  EXPECT_EQ(*(*admission)->Authenticate(""), "default");
}

TEST(AdmissionTest, RequestRateIsLimitedWithRetryAfter) {
  TenantQuota quota;
  quota.requests_per_second = 2;
  auto admission = Admission::Create({}, {{"default", quota}}, kStart);
  ASSERT_TRUE(admission.ok());
  absl::Duration retry;
  EXPECT_TRUE((*admission)->Admit("default", 10, kStart, &retry).ok());
  EXPECT_TRUE((*admission)->Admit("default", 10, kStart, &retry).ok());
  absl::Status third = (*admission)->Admit("default", 10, kStart, &retry);
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(third.message(), HasSubstr("2 requests per second"));
  EXPECT_EQ(retry, absl::Milliseconds(500));
  EXPECT_TRUE((*admission)->Admit("default", 10, kStart + retry, &retry).ok());
  // Tenants without a quota are not limited (and hold no state).
  for (int i = 0; i < 100; ++i) EXPECT_TRUE((*admission)->Admit("other", 1, kStart, &retry).ok());
}

TEST(AdmissionTest, TokensPerMinuteCountPromptAndGeneratedTokens) {
  TenantQuota quota;
  quota.tokens_per_minute = 600;  // 10 per second
  auto admission = Admission::Create({}, {{"t", quota}}, kStart);
  ASSERT_TRUE(admission.ok());
  absl::Duration retry;
  EXPECT_TRUE((*admission)->Admit("t", 500, kStart, &retry).ok());
  (*admission)->Charge("t", 200, kStart);  // generated: now 100 over
  absl::Status over = (*admission)->Admit("t", 1, kStart, &retry);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr("600 tokens per minute"));
  EXPECT_GE(retry, absl::Seconds(10));
  EXPECT_TRUE((*admission)->Admit("t", 1, kStart + retry, &retry).ok());
}

TEST(AdmissionTest, BadConfigIsRefusedWithTheReason) {
  auto bad_hash = Admission::Create({{"not-a-hash", "t"}}, {}, kStart);
  EXPECT_EQ(bad_hash.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_hash.status().message(), HasSubstr("64 lowercase hex digits"));
  TenantQuota negative;
  negative.requests_per_second = -1;
  auto bad_quota = Admission::Create({}, {{"t", negative}}, kStart);
  EXPECT_EQ(bad_quota.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_quota.status().message(), HasSubstr("quota of tenant 't'"));
}

}  // namespace
}  // namespace shardserve
