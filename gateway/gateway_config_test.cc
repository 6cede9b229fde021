#include "gateway/gateway_config.h"

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kHash[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

TEST(GatewayConfigTest, DefaultsWhenEmpty) {
  GatewayConfig config;
  ASSERT_TRUE(ParseGatewayConfigYaml("", "g.yaml", &config).ok());
  EXPECT_EQ(config.grpc_address, "127.0.0.1:50051");
  EXPECT_EQ(config.http_address, "127.0.0.1:8000");
  EXPECT_EQ(config.max_attempts, 3);
  EXPECT_TRUE(config.models.empty());
  // Nothing to route to: Finalize says so.
  absl::Status status = FinalizeGatewayConfig(&config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'models': no model configured"));
}

TEST(GatewayConfigTest, ParsesEveryKey) {
  GatewayConfig config;
  absl::Status status =
      ParseGatewayConfigYaml(absl::StrCat(R"(
grpc_address: 0.0.0.0:0
http_address: "[::1]:8080"
models:
  - name: org/a
    endpoints: [10.0.0.1:50061, "worker-b:50062"]
    max_queued: 5
  - name: b
    dns: workers.default.svc.cluster.local:50061
  - name: c
    endpoints: h1:1, h2:2
api_keys:
  - sha256: )",
                                          kHash, R"(
    tenant: team-a
  - {sha256: )",
                                          std::string(64, 'A'), R"(, tenant: team-b}
tenants:
  team-a: {requests_per_second: 5, request_burst: 10, tokens_per_minute: 100000}
  team-b: {tokens_per_minute: 1.5}
cors_allowed_origins: ["https://a.example", "*"]
affinity_margin: 2.5
kv_weight: 0
max_attempts: 1
max_in_flight: 9
request_timeout_seconds: 30
connect_timeout_seconds: 0.25
health_interval_seconds: 0.1
status_interval_seconds: 0.2
dns_refresh_seconds: 3
retry_after_seconds: 2
http_threads: 4
drain_seconds: 0
default_max_tokens: 77
)"),
                             "g.yaml", &config);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config.grpc_address, "0.0.0.0:0");
  EXPECT_EQ(config.http_address, "[::1]:8080");
  ASSERT_EQ(config.models.size(), 3u);
  EXPECT_EQ(config.models[0].name, "org/a");
  EXPECT_THAT(config.models[0].endpoints, ElementsAre("10.0.0.1:50061", "worker-b:50062"));
  EXPECT_EQ(config.models[0].max_queued, 5);
  EXPECT_EQ(config.models[1].dns, "workers.default.svc.cluster.local:50061");
  EXPECT_TRUE(config.models[1].endpoints.empty());
  EXPECT_EQ(config.models[1].max_queued, 64);
  EXPECT_THAT(config.models[2].endpoints, ElementsAre("h1:1", "h2:2"));
  ASSERT_EQ(config.api_keys.size(), 2u);
  EXPECT_EQ(config.api_keys[0].sha256_hex, kHash);
  EXPECT_EQ(config.api_keys[0].tenant, "team-a");
  EXPECT_EQ(config.api_keys[1].sha256_hex, std::string(64, 'a'));  // lowercased
  ASSERT_EQ(config.tenants.size(), 2u);
  EXPECT_DOUBLE_EQ(config.tenants["team-a"].requests_per_second, 5);
  EXPECT_DOUBLE_EQ(config.tenants["team-a"].request_burst, 10);
  EXPECT_DOUBLE_EQ(config.tenants["team-a"].tokens_per_minute, 100000);
  EXPECT_DOUBLE_EQ(config.tenants["team-b"].tokens_per_minute, 1.5);
  EXPECT_DOUBLE_EQ(config.tenants["team-b"].requests_per_second, 0);
  EXPECT_THAT(config.cors_allowed_origins, ElementsAre("https://a.example", "*"));
  EXPECT_DOUBLE_EQ(config.router.affinity_margin, 2.5);
  EXPECT_DOUBLE_EQ(config.router.kv_weight, 0);
  EXPECT_EQ(config.max_attempts, 1);
  EXPECT_EQ(config.max_in_flight, 9);
  EXPECT_DOUBLE_EQ(config.request_timeout_seconds, 30);
  EXPECT_DOUBLE_EQ(config.connect_timeout_seconds, 0.25);
  EXPECT_DOUBLE_EQ(config.health_interval_seconds, 0.1);
  EXPECT_DOUBLE_EQ(config.status_interval_seconds, 0.2);
  EXPECT_DOUBLE_EQ(config.dns_refresh_seconds, 3);
  EXPECT_DOUBLE_EQ(config.retry_after_seconds, 2);
  EXPECT_EQ(config.http_threads, 4);
  EXPECT_DOUBLE_EQ(config.drain_seconds, 0);
  EXPECT_EQ(config.default_max_tokens, 77);
  status = FinalizeGatewayConfig(&config);
  EXPECT_TRUE(status.ok()) << status;

  for (const std::string& key : GatewayConfigKeys()) {
    EXPECT_FALSE(GatewayConfigKeyHelp(key).empty()) << key;
  }
  EXPECT_FALSE(GatewayConfigKeyHelp("models").empty());
  EXPECT_EQ(GatewayConfigKeyHelp("no_such_key"), "");
}

TEST(GatewayConfigTest, ErrorsNameFileLineKeyAndReason) {
  struct Case {
    std::string yaml;
    std::string message;
  };
  const Case cases[] = {
      {"max_attempts: 1\nmax_attempts: lots\n",
       "g.yaml:2: key 'max_attempts': 'lots' is not an integer"},
      {"max_attempts: 0\n", "g.yaml:1: key 'max_attempts': 0 is out of range (at least 1)"},
      {"grcp_address: a:1\n", "g.yaml:1: key 'grcp_address': unknown key (known: grpc_address"},
      {"http_address: localhost\n", "g.yaml:1: key 'http_address': 'localhost' is not host:port"},
      {"http_address: h:70000\n", "key 'http_address': 'h:70000' has no port in [0, 65535]"},
      {"http_address: ::1:80\n", "an IPv6 host goes in brackets"},
      {"health_interval_seconds: 0\n", "key 'health_interval_seconds': 0 is not positive"},
      {"drain_seconds: -1\n", "key 'drain_seconds': -1 is negative"},
      {"drain_seconds: nan\n", "key 'drain_seconds': 'nan' is not a number"},
      {"kv_weight:\n", "g.yaml:1: key 'kv_weight': has no value"},
      {"kv_weight: [1]\n", "key 'kv_weight': value is not a scalar"},
      {"models: x\n", "g.yaml:1: key 'models': must be a list"},
      {"models:\n  - name: a\n    endpoints: [h:0]\n",
       "g.yaml:3: key 'models[0].endpoints[0]': 'h:0' has no port in [1, 65535]"},
      {"models:\n  - name: a\n    endpoints: [h:1]\n  - name: b\n    dns: nohost\n",
       "g.yaml:5: key 'models[1].dns': 'nohost' is not host:port"},
      {"models:\n  - endpoints: [h:1]\n", "g.yaml:2: key 'models[0].name': is missing"},
      {"models:\n  - name: a\n    replicas: 2\n",
       "g.yaml:3: key 'models[0].replicas': unknown key (known: name, endpoints, dns, max_queued)"},
      {"models:\n  - name: a\n    max_queued: 0\n",
       "key 'models[0].max_queued': 0 is out of range (at least 1)"},
      {"api_keys:\n  - sha256: abc\n    tenant: t\n",
       "g.yaml:2: key 'api_keys[0].sha256': is not a SHA-256 in hex"},
      {absl::StrCat("api_keys:\n  - sha256: ", kHash, "\n"),
       "g.yaml:2: key 'api_keys[0].tenant': is missing"},
      {"tenants:\n  t: {requests_per_second: -2}\n",
       "g.yaml:2: key 'tenants.t.requests_per_second': -2 is negative"},
      {"tenants:\n  t: {rps: 2}\n", "key 'tenants.t.rps': unknown key"},
      {"tenants: [a]\n", "key 'tenants': must be a mapping"},
      {"- a\n- b\n", "g.yaml: the document must be a mapping"},
      {"models: [\n", "g.yaml:2:1: invalid YAML"},
  };
  for (const Case& c : cases) {
    GatewayConfig config;
    absl::Status status = ParseGatewayConfigYaml(c.yaml, "g.yaml", &config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.yaml;
    EXPECT_THAT(status.message(), HasSubstr(c.message)) << c.yaml;
  }
}

TEST(GatewayConfigTest, FailedParseLeavesConfigUnchanged) {
  GatewayConfig config;
  ASSERT_TRUE(ParseGatewayConfigYaml("max_attempts: 5\n", "g.yaml", &config).ok());
  absl::Status status =
      ParseGatewayConfigYaml("max_attempts: 2\nhttp_threads: 0\n", "g.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.max_attempts, 5);
}

TEST(GatewayConfigTest, FlagsOverrideTheFile) {
  GatewayConfig config;
  ASSERT_TRUE(ParseGatewayConfigYaml(
                  "http_address: 127.0.0.1:8000\nmodels:\n  - {name: a, endpoints: [h:1], "
                  "max_queued: 3}\n",
                  "g.yaml", &config)
                  .ok());
  ASSERT_TRUE(
      SetGatewayConfigField(&config, "http_address", " 127.0.0.1:0 ", "flag --http-address").ok());
  EXPECT_EQ(config.http_address, "127.0.0.1:0");
  ASSERT_TRUE(
      SetGatewayConfigField(&config, "cors_allowed_origins", "https://x, https://y", "flag").ok());
  EXPECT_THAT(config.cors_allowed_origins, ElementsAre("https://x", "https://y"));

  // Same name: replaces the file's workers (the queue bound stays); new name: added.
  ASSERT_TRUE(AddModelFlag(&config, "a=h2:2,h3:3").ok());
  ASSERT_TRUE(AddModelFlag(&config, "org/b=dns:workers.svc:50061").ok());
  ASSERT_EQ(config.models.size(), 2u);
  EXPECT_THAT(config.models[0].endpoints, ElementsAre("h2:2", "h3:3"));
  EXPECT_EQ(config.models[0].max_queued, 3);
  EXPECT_EQ(config.models[1].name, "org/b");
  EXPECT_EQ(config.models[1].dns, "workers.svc:50061");
  EXPECT_TRUE(config.models[1].endpoints.empty());

  ASSERT_TRUE(AddApiKeyFlag(&config, absl::StrCat(kHash, "=team-a")).ok());
  ASSERT_EQ(config.api_keys.size(), 1u);
  EXPECT_EQ(config.api_keys[0].tenant, "team-a");
  EXPECT_TRUE(FinalizeGatewayConfig(&config).ok());

  absl::Status status =
      SetGatewayConfigField(&config, "max_in_flight", "-1", "flag --max-in-flight");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --max-in-flight: key 'max_in_flight': -1 is out"));

  status = AddModelFlag(&config, "just-a-name");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --model: 'just-a-name' is not NAME=HOST:PORT"));
  status = AddModelFlag(&config, "=h:1");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("is not NAME=HOST:PORT"));
  status = AddModelFlag(&config, "m=h:1,nohost");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --model m: key 'endpoints': 'nohost' is not"));
  status = AddModelFlag(&config, "m=dns:svc");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --model m: key 'dns': 'svc' is not host:port"));

  status = AddApiKeyFlag(&config, "abc=t");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --api-key-sha256: key 'sha256': is not a SHA-256"));
  status = AddApiKeyFlag(&config, kHash);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("expected HEX=TENANT"));
  status = AddApiKeyFlag(&config, absl::StrCat(kHash, "="));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("the tenant after '=' is empty"));
}

TEST(GatewayConfigTest, FinalizeChecksAcrossFields) {
  auto finalize = [](const std::string& yaml) {
    GatewayConfig config;
    absl::Status status = ParseGatewayConfigYaml(yaml, "g.yaml", &config);
    if (!status.ok()) return status;
    return FinalizeGatewayConfig(&config);
  };
  absl::Status status = finalize("models:\n  - {name: a}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("models[0] (a)': needs endpoints (a host:port list) or dns"));

  status = finalize("models:\n  - {name: a, endpoints: [h:1], dns: d:1}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("has both endpoints and dns; set one"));

  status = finalize("models:\n  - {name: a, endpoints: [h:1]}\n  - {name: a, dns: d:1}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("models[1] (a)': the model name is configured twice"));

  status = finalize("models:\n  - {name: a, endpoints: [h:1, h:1]}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("endpoint h:1 is listed twice"));

  const std::string model = "models:\n  - {name: a, endpoints: [h:1]}\n";
  status = finalize(model + "tenants:\n  team-a: {requests_per_second: 1}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("key 'tenants.team-a': authentication is off (no api_keys)"));
  EXPECT_TRUE(finalize(model + "tenants:\n  default: {requests_per_second: 1}\n").ok());

  const std::string keys = absl::StrCat("api_keys:\n  - {sha256: ", kHash, ", tenant: team-a}\n");
  status = finalize(model + keys + "tenants:\n  team-b: {requests_per_second: 1}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("key 'tenants.team-b': has a quota but no API key maps to it"));
  EXPECT_TRUE(finalize(model + keys + "tenants:\n  team-a: {requests_per_second: 1}\n").ok());

  status = finalize(model + keys + absl::StrCat("  - {sha256: ", kHash, ", tenant: team-b}\n"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("key 'api_keys': the key hash 9f86d081884c... is listed"));

  status = finalize(model + "grpc_address: 127.0.0.1:9000\nhttp_address: 127.0.0.1:9000\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'http_address': is the same as grpc_address"));
  EXPECT_TRUE(finalize(model + "grpc_address: 127.0.0.1:0\nhttp_address: 127.0.0.1:0\n").ok());

  // Built in code, not parsed: Finalize still checks the addresses.
  GatewayConfig config;
  ModelRoute route;
  route.name = "a";
  route.endpoints = {"no-port"};
  config.models.push_back(route);
  status = FinalizeGatewayConfig(&config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'no-port' is not host:port"));
}

TEST(GatewayConfigTest, LoadsTheDeployExample) {
  const std::string path = SourceDir() + "/deploy/gateway.yaml";
  GatewayConfig config;
  absl::Status status = LoadGatewayConfigFile(path, &config);
  ASSERT_TRUE(status.ok()) << status;
  status = FinalizeGatewayConfig(&config);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_FALSE(config.models.empty());
  EXPECT_FALSE(config.models[0].endpoints.empty());

  // The example lists every key, uncommented, in GatewayConfigKeys() order.
  absl::StatusOr<std::string> text = ReadFileToString(path);
  ASSERT_TRUE(text.ok()) << text.status();
  size_t last = 0;
  for (const std::string& key : GatewayConfigKeys()) {
    const size_t at = text->find("\n" + key + ":");
    ASSERT_NE(at, std::string::npos) << key << " is not in deploy/gateway.yaml";
    EXPECT_GT(at, last) << key << " is out of order";
    last = at;
  }
  for (const char* key : {"\nmodels:", "\napi_keys:", "\ntenants:"}) {
    EXPECT_NE(text->find(key), std::string::npos) << key;
  }
}

TEST(GatewayConfigTest, MissingFileIsNotFound) {
  GatewayConfig config;
  absl::Status status = LoadGatewayConfigFile("/nonexistent/gateway.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("config file /nonexistent/gateway.yaml: cannot be read"));
}

}  // namespace
}  // namespace shardserve
