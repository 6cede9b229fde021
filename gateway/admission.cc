#include "gateway/admission.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardserve {

TokenBucket::TokenBucket(double rate_per_second, double burst, absl::Time now)
    : rate_(rate_per_second), burst_(burst), tokens_(burst), last_(now) {}

void TokenBucket::Refill(absl::Time now) {
  if (now > last_) {
    tokens_ = std::min(burst_, tokens_ + rate_ * absl::ToDoubleSeconds(now - last_));
    last_ = now;
  }
}

bool TokenBucket::TryTake(double n, absl::Time now, absl::Duration* retry_after) {
  Refill(now);
  if (tokens_ >= n) {
    tokens_ -= n;
    return true;
  }
  if (retry_after != nullptr) {
    *retry_after = rate_ > 0 ? absl::Seconds((n - tokens_) / rate_) : absl::InfiniteDuration();
  }
  return false;
}

void TokenBucket::Charge(double n, absl::Time now) {
  Refill(now);
  tokens_ -= n;
}

double TokenBucket::Available(absl::Time now) {
  Refill(now);
  return tokens_;
}

std::string Sha256Hex(absl::string_view key) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

absl::StatusOr<std::unique_ptr<Admission>> Admission::Create(
    std::vector<ApiKeyEntry> keys, std::map<std::string, TenantQuota> quotas, absl::Time now) {
  for (const ApiKeyEntry& key : keys) {
    const bool hex = key.sha256_hex.size() == 64 &&
                     std::all_of(key.sha256_hex.begin(), key.sha256_hex.end(), [](char c) {
                       return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f');
                     });
    if (!hex) {
      return absl::InvalidArgumentError(absl::StrCat("api key for tenant '", key.tenant,
                                                     "': sha256 must be 64 lowercase hex digits"));
    }
    if (key.tenant.empty()) return absl::InvalidArgumentError("api key: empty tenant");
  }
  auto admission = std::unique_ptr<Admission>(new Admission());
  admission->keys_ = std::move(keys);
  absl::MutexLock lock(&admission->mu_);
  for (auto& [name, quota] : quotas) {
    if (quota.requests_per_second < 0 || quota.request_burst < 0 || quota.tokens_per_minute < 0 ||
        !std::isfinite(quota.requests_per_second) || !std::isfinite(quota.tokens_per_minute)) {
      return absl::InvalidArgumentError(
          absl::StrCat("quota of tenant '", name, "': rates must be finite and not negative"));
    }
    Tenant tenant;
    tenant.quota = quota;
    if (quota.requests_per_second > 0) {
      const double burst =
          quota.request_burst > 0 ? quota.request_burst : std::max(1.0, quota.requests_per_second);
      tenant.requests = std::make_unique<TokenBucket>(quota.requests_per_second, burst, now);
    }
    if (quota.tokens_per_minute > 0) {
      tenant.tokens =
          std::make_unique<TokenBucket>(quota.tokens_per_minute / 60, quota.tokens_per_minute, now);
    }
    admission->tenants_.emplace(name, std::move(tenant));
  }
  return admission;
}

absl::StatusOr<std::string> Admission::Authenticate(absl::string_view key) const {
  if (keys_.empty()) return std::string("default");
  if (key.empty()) return absl::UnauthenticatedError("missing API key");
  const std::string hash = Sha256Hex(key);
  const std::string* tenant = nullptr;
  for (const ApiKeyEntry& entry : keys_) {
    // Constant time per comparison, and every entry is compared.
    if (CRYPTO_memcmp(entry.sha256_hex.data(), hash.data(), hash.size()) == 0) {
      tenant = &entry.tenant;
    }
  }
  if (tenant == nullptr) return absl::UnauthenticatedError("invalid API key");
  return *tenant;
}

absl::Status Admission::Admit(const std::string& tenant, int64_t prompt_tokens, absl::Time now,
                              absl::Duration* retry_after) {
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return absl::OkStatus();
  Tenant& t = it->second;
  absl::Duration wait = absl::ZeroDuration();
  if (t.tokens != nullptr && t.tokens->Available(now) <= 0) {
    *retry_after = absl::Seconds(-t.tokens->Available(now) / (t.quota.tokens_per_minute / 60) + 1);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant '%s' is over its %g tokens per minute", tenant, t.quota.tokens_per_minute));
  }
  if (t.requests != nullptr && !t.requests->TryTake(1, now, &wait)) {
    *retry_after = wait;
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant '%s' is over its %g requests per second", tenant, t.quota.requests_per_second));
  }
  if (t.tokens != nullptr) t.tokens->Charge(static_cast<double>(prompt_tokens), now);
  return absl::OkStatus();
}

void Admission::Charge(const std::string& tenant, int64_t tokens, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(tenant);
  if (it != tenants_.end() && it->second.tokens != nullptr) {
    it->second.tokens->Charge(static_cast<double>(tokens), now);
  }
}

}  // namespace shardserve
