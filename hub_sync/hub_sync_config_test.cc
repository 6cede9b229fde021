#include "hub_sync/hub_sync_config.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve::hub {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

std::map<std::string, std::string>* fake_env = nullptr;

const char* FakeGetenv(const char* name) {
  auto it = fake_env->find(name);
  return it == fake_env->end() ? nullptr : it->second.c_str();
}

class HubSyncConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { fake_env = &env_; }
  void TearDown() override { fake_env = nullptr; }
  std::map<std::string, std::string> env_;
};

TEST_F(HubSyncConfigTest, ParsesYamlAndFlags) {
  HubSyncConfig config;
  ASSERT_TRUE(ParseHubSyncConfigYaml(R"(
cache_dir: /models
endpoint: http://hub.internal:8080/
connections: 4
allow_patterns: ["*.safetensors", "*.json"]
ignore_patterns: onnx/, *.md
pull_through: yes
)",
                                     "hub_sync.yaml", &config)
                  .ok());
  EXPECT_EQ(config.cache_dir, "/models");
  EXPECT_EQ(config.endpoint, "http://hub.internal:8080");  // trailing slash dropped
  EXPECT_EQ(config.connections, 4);
  EXPECT_THAT(config.allow_patterns, ElementsAre("*.safetensors", "*.json"));
  EXPECT_THAT(config.ignore_patterns, ElementsAre("onnx/", "*.md"));
  EXPECT_TRUE(config.pull_through);
  EXPECT_EQ(config.grpc_address, "127.0.0.1:50071");
  EXPECT_EQ(config.http_address, "127.0.0.1:8001");
  ASSERT_TRUE(SetHubSyncConfigField(&config, "connections", "16", "flag --connections").ok());
  EXPECT_EQ(config.connections, 16);
}

TEST_F(HubSyncConfigTest, ErrorsNameTheSourceKeyAndReason) {
  HubSyncConfig config;
  absl::Status status = ParseHubSyncConfigYaml("connections: 0\n", "hub_sync.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("hub_sync.yaml:1"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("connections"));
  status = ParseHubSyncConfigYaml("cache_dri: /x\n", "hub_sync.yaml", &config);
  EXPECT_THAT(std::string(status.message()), HasSubstr("unknown key"));
  status = ParseHubSyncConfigYaml("endpoint: ftp://x\n", "f.yaml", &config);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not an http(s):// URL"));
  status = ParseHubSyncConfigYaml("pull_through: maybe\n", "f.yaml", &config);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not true or false"));
  status = ParseHubSyncConfigYaml("connections: [1, 2]\n", "f.yaml", &config);
  EXPECT_THAT(std::string(status.message()), HasSubstr("a single value is expected"));
  status = SetHubSyncConfigField(&config, "grpc_address", "nohost", "flag --grpc-address");
  EXPECT_THAT(std::string(status.message()), HasSubstr("flag --grpc-address"));
  EXPECT_EQ(config.connections, 8);  // failed parses change nothing
}

TEST_F(HubSyncConfigTest, EnvironmentDefaultsLikeHuggingFaceHub) {
  env_ = {{"HOME", "/home/u"}, {"HF_TOKEN", "hf_secret"}};
  HubSyncConfig config;
  ASSERT_TRUE(FinalizeHubSyncConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.cache_dir, "/home/u/.cache/shardserve");
  EXPECT_EQ(config.endpoint, "https://huggingface.co");
  EXPECT_EQ(config.token, "hf_secret");

  env_ = {{"SHARDSERVE_CACHE", "/vol"},
          {"HF_ENDPOINT", "http://mirror:8001/"},
          {"HUGGING_FACE_HUB_TOKEN", "old_name"}};
  config = HubSyncConfig();
  ASSERT_TRUE(FinalizeHubSyncConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.cache_dir, "/vol");
  EXPECT_EQ(config.endpoint, "http://mirror:8001");
  EXPECT_EQ(config.token, "old_name");
}

TEST_F(HubSyncConfigTest, TokenFileIsReadAndNeverEchoed) {
  const std::string path = ::testing::TempDir() + "/hub_sync_token";
  {
    std::ofstream out(path);
    out << "hf_from_file\n";
  }
  env_ = {{"HOME", "/h"}, {"HF_TOKEN", "hf_env"}};
  HubSyncConfig config;
  config.token_file = path;
  ASSERT_TRUE(FinalizeHubSyncConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.token, "hf_from_file");

  {
    std::ofstream out(path);
    out << "bad token with spaces";
  }
  config = HubSyncConfig();
  config.token_file = path;
  absl::Status status = FinalizeHubSyncConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("bad token")));

  config = HubSyncConfig();
  config.token_file = path + ".missing";
  status = FinalizeHubSyncConfig(&config, FakeGetenv);
  EXPECT_THAT(std::string(status.message()), HasSubstr(".missing"));
  std::remove(path.c_str());
}

}  // namespace
}  // namespace shardserve::hub
