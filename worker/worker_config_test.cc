#include "worker/worker_config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hub_sync/cache.h"
#include "hub_sync/repo.h"

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
cache_dir: /volumes/models
revision: v1.2
quantization: INT4
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
  EXPECT_EQ(config.cache_dir, "/volumes/models");
  EXPECT_EQ(config.revision, "v1.2");
  EXPECT_EQ(config.quantization, "int4");
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
  EXPECT_EQ(WorkerConfigKeys().size(), 17u);
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

TEST(WorkerConfigTest, RepoKeysAreChecked) {
  WorkerConfig config;
  absl::Status status = ParseWorkerConfigYaml("quantization: int3\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("quantization"));
  EXPECT_THAT(status.message(), HasSubstr("int3"));
  status = ParseWorkerConfigYaml("revision: ../../etc\n", "w.yaml", &config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("w.yaml:1"));
  EXPECT_THAT(status.message(), HasSubstr("revision"));
  ASSERT_TRUE(SetWorkerConfigField(&config, "quantization", "int8", "flag").ok());
  ASSERT_TRUE(SetWorkerConfigField(&config, "quantization", "none", "flag").ok());
  EXPECT_EQ(config.quantization, "");
}

// The environment FinalizeWorkerConfig sees (getenv is injected).
std::map<std::string, std::string>& FakeEnv() {
  static auto* env = new std::map<std::string, std::string>;
  return *env;
}
const char* FakeGetenv(const char* name) {
  auto it = FakeEnv().find(name);
  return it == FakeEnv().end() ? nullptr : it->second.c_str();
}

// A shared cache holding org/model at two commits (main -> kCommit, v0 -> kOld), and an int4
// artifact of kCommit; written with hub_sync's own cache writer.
class RepoModelTest : public ::testing::Test {
 protected:
  static constexpr char kCommit[] = "0123456789abcdef0123456789abcdef01234567";
  static constexpr char kOld[] = "89abcdef0123456789abcdef0123456789abcdef";

  void SetUp() override {
    const char* tmp = std::getenv("TEST_TMPDIR");
    root_ = std::string(tmp != nullptr ? tmp : "/tmp") + "/shardserve_" +
            std::to_string(::getpid()) + "_worker_cache";
    std::filesystem::remove_all(root_);
    absl::StatusOr<hub::HubCache> cache = hub::HubCache::Open(root_);
    ASSERT_TRUE(cache.ok()) << cache.status();
    repo_ = *hub::ParseRepoId("org/model");
    AddSnapshot(*cache, kCommit, "main");
    AddSnapshot(*cache, kOld, "v0");
    artifact_ = cache->ArtifactDir(repo_, kCommit, "int4");
    std::filesystem::create_directories(artifact_);
    std::ofstream(artifact_ + "/manifest.json") << "{}";
    snapshot_ = cache->SnapshotDir(repo_, kCommit);
    FakeEnv() = {{"SHARDSERVE_CACHE", root_}, {"HOME", "/home/nobody"}};
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void AddSnapshot(const hub::HubCache& cache, const std::string& commit, const std::string& ref) {
    const std::string content = "{\"model_type\": \"llama\", \"commit\": \"" + commit + "\"}";
    const std::string source = root_ + "/source.json";
    std::ofstream(source) << content;
    hub::RepoFile file{"config.json", content.size(), hub::GitBlobSha1Hex(content), false};
    ASSERT_TRUE(cache.AddBlobFromFile(repo_, file, source).ok());
    hub::RepoSnapshot snapshot{repo_, ref, commit, {file}};
    ASSERT_TRUE(cache.LinkSnapshot(snapshot).ok());
    ASSERT_TRUE(cache.WriteRef(repo_, ref, commit).ok());
    std::filesystem::remove(source);
  }

  WorkerConfig Repo(const std::string& id) {
    WorkerConfig config;
    config.model = id;
    return config;
  }

  std::string root_, snapshot_, artifact_;
  hub::RepoId repo_;
};

TEST_F(RepoModelTest, RepoIdResolvesToTheSnapshotAndServesUnderItsId) {
  WorkerConfig config = Repo("org/model");
  absl::Status status = FinalizeWorkerConfig(&config, FakeGetenv);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(config.cache_dir, root_);  // from $SHARDSERVE_CACHE
  EXPECT_EQ(config.model_path, snapshot_);
  EXPECT_EQ(config.served_model_name, "org/model");
  EXPECT_TRUE(std::filesystem::exists(config.model_path + "/config.json"));

  // A tag and a commit name their snapshots; an explicit cache_dir wins over the environment.
  config = Repo("org/model");
  config.revision = "v0";
  FakeEnv().erase("SHARDSERVE_CACHE");
  config.cache_dir = root_;
  ASSERT_TRUE(FinalizeWorkerConfig(&config, FakeGetenv).ok());
  EXPECT_THAT(config.model_path, ::testing::EndsWith(std::string("/snapshots/") + kOld));
  config = Repo("org/model");
  config.revision = kOld;
  config.cache_dir = root_;
  config.served_model_name = "custom";
  ASSERT_TRUE(FinalizeWorkerConfig(&config, FakeGetenv).ok());
  EXPECT_THAT(config.model_path, ::testing::EndsWith(kOld));
  EXPECT_EQ(config.served_model_name, "custom");
}

TEST_F(RepoModelTest, QuantizationPicksTheArtifact) {
  WorkerConfig config = Repo("org/model");
  config.quantization = "int4";
  ASSERT_TRUE(FinalizeWorkerConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.model_path, artifact_);
  EXPECT_EQ(config.model_path, root_ + "/shardserve/org--model/" + std::string(kCommit) + "/int4");
  EXPECT_EQ(config.served_model_name, "org/model");
}

TEST_F(RepoModelTest, MissingRepoOrRevisionSaysHowToPullIt) {
  WorkerConfig config = Repo("org/other");
  absl::Status status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "repo org/other revision main is not in the cache at " + root_ +
                                  " (run `shardserve pull org/other`)");
  config = Repo("org/model");
  config.revision = "v9";
  status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "repo org/model revision v9 is not in the cache at " + root_ +
                                  " (run `shardserve pull org/model@v9`)");
}

TEST_F(RepoModelTest, MissingSchemeSaysHowToQuantize) {
  WorkerConfig config = Repo("org/model");
  config.quantization = "nf4";
  absl::Status status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "repo org/model revision main (commit " + std::string(kCommit) +
                                  ") has no nf4 artifact in the cache at " + root_ +
                                  " (run `shardserve pull org/model --quantize nf4`)");
  // An artifact folder without its manifest (unfinished) does not count.
  std::filesystem::remove(artifact_ + "/manifest.json");
  config = Repo("org/model");
  config.quantization = "int4";
  status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("has no int4 artifact"));
  EXPECT_THAT(status.message(), HasSubstr("--quantize int4"));
}

TEST_F(RepoModelTest, MissingCacheIsNotFoundAndNotCreated) {
  const std::string missing = root_ + "/nowhere";
  WorkerConfig config = Repo("org/model");
  config.cache_dir = missing;
  absl::Status status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("is not in the cache at " + missing));
  EXPECT_FALSE(std::filesystem::exists(missing));
}

TEST_F(RepoModelTest, DefaultCacheDirComesFromTheEnvironment) {
  FakeEnv() = {{"HOME", "/home/someone"}};
  absl::StatusOr<std::string> dir = hub::DefaultCacheRoot(FakeGetenv);
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(*dir, "/home/someone/.cache/shardserve");
  FakeEnv() = {{"SHARDSERVE_CACHE", "/vol"}, {"HOME", "/home/someone"}};
  EXPECT_EQ(*hub::DefaultCacheRoot(FakeGetenv), "/vol");
  FakeEnv().clear();
  dir = hub::DefaultCacheRoot(FakeGetenv);
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dir.status().message(), HasSubstr("$SHARDSERVE_CACHE"));
  WorkerConfig config = Repo("org/model");
  EXPECT_EQ(FinalizeWorkerConfig(&config, FakeGetenv).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RepoModelTest, PathsStayPathsAndRefuseRepoOnlyKeys) {
  // An existing directory named like a repo id is a path.
  WorkerConfig config = Repo(snapshot_);
  ASSERT_TRUE(FinalizeWorkerConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.model_path, snapshot_);
  EXPECT_EQ(config.served_model_name, "org/model");  // from the HF cache path, as before
  config = Repo("models/missing.gguf");
  ASSERT_TRUE(FinalizeWorkerConfig(&config, FakeGetenv).ok());
  EXPECT_EQ(config.model_path, "models/missing.gguf");
  config = Repo(snapshot_);
  config.quantization = "int4";
  absl::Status status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'quantization'"));
  config = Repo(snapshot_);
  config.revision = "v0";
  status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("key 'revision'"));
  config = Repo("org/bad name");
  status = FinalizeWorkerConfig(&config, FakeGetenv);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("neither a file nor a valid repo id"));
}

}  // namespace
}  // namespace shardserve
