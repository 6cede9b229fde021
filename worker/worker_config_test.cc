#include "worker/worker_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

TEST(WorkerConfigTest, DefaultsWhenEmpty) {
  WorkerConfig config;
  ASSERT_TRUE(ParseWorkerConfigYaml("", "w.yaml", &config).ok());
  EXPECT_EQ(config.address, "127.0.0.1:50061");
  EXPECT_EQ(config.http_address, "127.0.0.1:9090");
  EXPECT_EQ(config.activations, "q8");
  EXPECT_EQ(config.kv_dtype, "f16");
  EXPECT_EQ(config.max_running, 8);
}

TEST(WorkerConfigTest, ParsesEveryKey) {
  WorkerConfig config;
  absl::Status status = ParseWorkerConfigYaml(R"(
model: models/x.gguf
served_model_name: org/x
address: 0.0.0.0:0
http_address: 0.0.0.0:9100
threads: 2
context_length: 1024
kv_cache_tokens: 4096
activations: F32
kv_dtype: f32
max_running: 3
max_waiting: 7
default_max_tokens: 64
max_step_tokens: 128
drain_seconds: 0.5
)",
                                              "w.yaml", &config);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config.model, "models/x.gguf");
  EXPECT_EQ(config.served_model_name, "org/x");
  EXPECT_EQ(config.address, "0.0.0.0:0");
  EXPECT_EQ(config.http_address, "0.0.0.0:9100");
  EXPECT_EQ(config.threads, 2);
  EXPECT_EQ(config.context_length, 1024);
  EXPECT_EQ(config.kv_cache_tokens, 4096);
  EXPECT_EQ(config.activations, "f32");
  EXPECT_EQ(config.kv_dtype, "f32");
  EXPECT_EQ(config.max_running, 3);
  EXPECT_EQ(config.max_waiting, 7);
  EXPECT_EQ(config.default_max_tokens, 64);
  EXPECT_EQ(config.max_step_tokens, 128);
  EXPECT_DOUBLE_EQ(config.drain_seconds, 0.5);
  EXPECT_EQ(WorkerConfigKeys().size(), 14u);
  for (const std::string& key : WorkerConfigKeys()) {
    EXPECT_FALSE(WorkerConfigKeyHelp(key).empty()) << key;
  }
}

TEST(WorkerConfigTest, ErrorsNameFileLineKeyAndReason) {
  WorkerConfig config;
  absl::Status status = ParseWorkerConfigYaml("model: a\nthreads: lots\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("w.yaml:2: key 'threads': 'lots' is not an integer"));

  status = ParseWorkerConfigYaml("modle: a\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("w.yaml:1: key 'modle': unknown key"));

  status = ParseWorkerConfigYaml("activations: q4\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'activations': 'q4' is not q8 or f32"));

  status = ParseWorkerConfigYaml("max_running: 0\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'max_running': 0 is out of range"));

  status = ParseWorkerConfigYaml("address: localhost\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'address': 'localhost' is not host:port"));

  status = ParseWorkerConfigYaml("http_address: 127.0.0.1:http\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(),
              HasSubstr("key 'http_address': '127.0.0.1:http' has no port in [0, 65535]"));

  status = ParseWorkerConfigYaml("drain_seconds: -1\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'drain_seconds': -1 is negative"));

  status = ParseWorkerConfigYaml("address: \"::1:50061\"\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("an IPv6 host goes in brackets"));

  status = ParseWorkerConfigYaml("threads:\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'threads': has no value"));

  status = ParseWorkerConfigYaml("threads: [1, 2]\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'threads': value is not a scalar"));

  status = ParseWorkerConfigYaml("- a\n- b\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("w.yaml: the document must be a mapping"));
}

TEST(WorkerConfigTest, MalformedYamlIsAnErrorNotAnException) {
  WorkerConfig config;
  absl::Status status = ParseWorkerConfigYaml("model: [unclosed\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("w.yaml:"));
  EXPECT_THAT(status.message(), HasSubstr("invalid YAML"));
}

TEST(WorkerConfigTest, FlagsOverrideTheFile) {
  WorkerConfig config;
  ASSERT_TRUE(ParseWorkerConfigYaml("model: a.gguf\nthreads: 4\n", "w.yaml", &config).ok());
  ASSERT_TRUE(SetWorkerConfigField(&config, "threads", "1", "flag --threads").ok());
  EXPECT_EQ(config.threads, 1);
  absl::Status status = SetWorkerConfigField(&config, "threads", "-1", "flag --threads");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --threads: key 'threads': -1 is out of range"));
}

TEST(WorkerConfigTest, EmptyHttpAddressDisablesHttp) {
  WorkerConfig config;
  ASSERT_TRUE(ParseWorkerConfigYaml("http_address: \"\"\n", "w.yaml", &config).ok());
  EXPECT_EQ(config.http_address, "");
  ASSERT_TRUE(SetWorkerConfigField(&config, "http_address", "127.0.0.1:0", "flag").ok());
  EXPECT_EQ(config.http_address, "127.0.0.1:0");
  ASSERT_TRUE(SetWorkerConfigField(&config, "http_address", "", "flag --http-address").ok());
  EXPECT_EQ(config.http_address, "");
  // The gRPC address cannot be empty.
  absl::Status status = SetWorkerConfigField(&config, "address", "", "flag --address");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("flag --address: key 'address'"));
}

TEST(WorkerConfigTest, MissingFileIsNotFound) {
  WorkerConfig config;
  absl::Status status = LoadWorkerConfigFile("/nonexistent/worker.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("/nonexistent/worker.yaml"));
}

TEST(WorkerConfigTest, FinalizeRequiresModelAndDerivesTheName) {
  WorkerConfig config;
  absl::Status status = FinalizeWorkerConfig(&config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'model': required"));
  config.model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  ASSERT_TRUE(FinalizeWorkerConfig(&config).ok());
  EXPECT_EQ(config.served_model_name, "SmolLM2-135M-Instruct");
}

TEST(WorkerConfigTest, ServedModelNames) {
  EXPECT_EQ(ServedModelNameFromPath("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct");
  EXPECT_EQ(ServedModelNameFromPath("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf"),
            "Meta-Llama-3.1-8B-Instruct");
  EXPECT_EQ(ServedModelNameFromPath("/m/mistral-7b.IQ2_XS.gguf"), "mistral-7b");
  EXPECT_EQ(ServedModelNameFromPath("/m/tiny.gguf"), "tiny");
  EXPECT_EQ(ServedModelNameFromPath("/m/Llama-3.1-8B.gguf"), "Llama-3.1-8B");
  EXPECT_EQ(ServedModelNameFromPath("models/SmolLM2-135M-Instruct/"), "SmolLM2-135M-Instruct");
  EXPECT_EQ(ServedModelNameFromPath(
                "/cache/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/abc123"),
            "HuggingFaceTB/SmolLM2-135M-Instruct");
}

TEST(WorkerConfigTest, TheExampleConfigParses) {
  WorkerConfig config;
  absl::Status status = LoadWorkerConfigFile("deploy/worker.yaml", &config);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config.model, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(config.address, "127.0.0.1:50061");
  EXPECT_EQ(config.http_address, "127.0.0.1:9090");
  ASSERT_TRUE(FinalizeWorkerConfig(&config).ok());
  EXPECT_EQ(config.served_model_name, "SmolLM2-135M-Instruct");
}

}  // namespace
}  // namespace shardserve
