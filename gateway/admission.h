// Admission control at the gateway: API keys (stored as SHA-256 hashes) map to tenants, and each
// tenant has token buckets for requests per second and generated + prompt tokens per minute.
// Time is passed in (never read here), so every decision is unit-tested without sleeping.
//
// Thread-safe: RPC threads call Authenticate / Admit / Charge concurrently. Memory is bounded
// by the configured tenants: state exists only for tenants with a quota.
#ifndef SHARDSERVE_GATEWAY_ADMISSION_H_
#define SHARDSERVE_GATEWAY_ADMISSION_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace shardserve {

// A bucket of `burst` tokens refilled at `rate` per second. Charge may take it below zero (work
// whose cost is known only afterwards); TryTake needs the tokens to be there.
class TokenBucket {
 public:
  TokenBucket(double rate_per_second, double burst, absl::Time now);
  // Takes n tokens if available; otherwise sets *retry_after to when they will be.
  bool TryTake(double n, absl::Time now, absl::Duration* retry_after);
  // Takes n tokens unconditionally (may go negative).
  void Charge(double n, absl::Time now);
  double Available(absl::Time now);

 private:
  void Refill(absl::Time now);
  double rate_;
  double burst_;
  double tokens_;
  absl::Time last_;
};

struct TenantQuota {
  double requests_per_second = 0;  // 0: unlimited
  double request_burst = 0;        // 0: = max(1, requests_per_second)
  double tokens_per_minute = 0;    // prompt + generated tokens; 0: unlimited
};

struct ApiKeyEntry {
  std::string sha256_hex;  // lowercase hex of SHA-256(key)
  std::string tenant;
};

// Lowercase hex SHA-256 of `key` (how keys are written in the config).
std::string Sha256Hex(absl::string_view key);

class Admission {
 public:
  // No keys: authentication is off and every caller is tenant "default" (limited by the quota
  // of "default" if there is one). A tenant without a quota entry is unlimited. INVALID_ARGUMENT
  // for a hash that is not 64 lowercase hex digits, an empty tenant, or a negative quota.
  static absl::StatusOr<std::unique_ptr<Admission>> Create(
      std::vector<ApiKeyEntry> keys, std::map<std::string, TenantQuota> quotas, absl::Time now);

  // The caller's tenant. UNAUTHENTICATED ("missing API key" / "invalid API key") when keys are
  // configured and `key` is empty or matches none (compared in constant time).
  absl::StatusOr<std::string> Authenticate(absl::string_view key) const;

  // Admits one request of `tenant` that will use about `prompt_tokens` now. RESOURCE_EXHAUSTED
  // naming the limit, with *retry_after set, when the tenant is over a rate.
  absl::Status Admit(const std::string& tenant, int64_t prompt_tokens, absl::Time now,
                     absl::Duration* retry_after);
  // Charges generated tokens after the fact (tokens per minute).
  void Charge(const std::string& tenant, int64_t tokens, absl::Time now);

  bool authentication_enabled() const { return !keys_.empty(); }

 private:
  struct Tenant {
    TenantQuota quota;
    std::unique_ptr<TokenBucket> requests;  // null: unlimited
    std::unique_ptr<TokenBucket> tokens;
  };
  Admission() = default;

  std::vector<ApiKeyEntry> keys_;  // immutable after Create
  mutable absl::Mutex mu_;
  std::map<std::string, Tenant> tenants_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_ADMISSION_H_
