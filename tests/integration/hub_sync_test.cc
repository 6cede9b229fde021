// hub_sync end to end: the real hub_sync binary against the fault-injecting test Hub
// (tests/fixtures/hub_server.py), driven by the real CLI (`shardserve pull` / `models`), its cache
// read by the official huggingface_hub client offline and through hub_sync's mirror, and a
// worker serving a synced int4 artifact through the gateway.
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "tests/integration/chat_stream.h"
#include "tests/integration/subprocess.h"
#include "tests/integration/test_util.h"

namespace shardserve::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

constexpr char kSharded[] = "test-org/sharded";
constexpr char kSmol[] = "HuggingFaceTB/SmolLM2-135M-Instruct";
constexpr char kGated[] = "test-org/gated";
constexpr char kToken[] = "hf_test_token_never_printed";

std::string Python() { return FindOnPath("python3"); }

// "host:port" after `prefix` in the next lines of `process`, or "".
std::string WaitForLine(Process* process, const std::string& prefix, int timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() + seconds(timeout_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<std::string> line = process->ReadLine(milliseconds(500));
    if (!line) continue;
    if (absl::StartsWith(*line, prefix)) return line->substr(prefix.size());
  }
  return "";
}

// The test Hub, serving the fixture repositories, shared by every test of the suite.
class TestHub {
 public:
  bool Start(std::string* error) {
    root_ = MakeTempDir("hub_sync_test_repos");
    RunResult made = RunProgram({Python(), "tests/fixtures/make_hub_repos.py", root_});
    if (made.exit_code != 0) {
      *error = "make_hub_repos.py failed: " + made.err;
      return false;
    }
    log_ = root_ + "/hub_server.log";
    process_ = Process::Start({Python(), "tests/fixtures/hub_server.py", "--repo",
                               absl::StrCat(kSharded, "=", root_, "/sharded"), "--repo",
                               absl::StrCat(kSmol, "=", root_, "/smollm2"), "--repo",
                               absl::StrCat(kGated, "=", root_, "/sharded"), "--gated", kGated,
                               "--token", kToken, "--port", "0"},
                              log_, error);
    if (process_ == nullptr) return false;
    address_ = WaitForLine(process_.get(), "hub listening on ", 60);
    if (address_.empty()) *error = "the test Hub did not start: " + Tail(log_);
    return !address_.empty();
  }
  void Stop() {
    process_.reset();
    RemoveTree(root_);
  }
  std::string endpoint() const { return "http://" + address_; }
  std::string repo_dir(const std::string& name) const { return root_ + "/" + name; }

  // POST /_faults with `rule`, or DELETE /_faults when it is null.
  void Fault(const nlohmann::json& rule) {
    httplib::Client client(address_);
    auto result = rule.is_null() ? client.Delete("/_faults")
                                 : client.Post("/_faults", rule.dump(), "application/json");
    ASSERT_TRUE(result) << "fault control";
    ASSERT_EQ(result->status, 200) << result->body;
  }
  // Requests seen so far, as GET /_stats lists them.
  nlohmann::json Requests() {
    httplib::Client client(address_);
    auto result = client.Get("/_stats");
    if (!result || result->status != 200) return nlohmann::json::array();
    return nlohmann::json::parse(result->body)["requests"];
  }

 private:
  std::string root_;
  std::string log_;
  std::unique_ptr<Process> process_;
  std::string address_;
};

TestHub* hub = nullptr;

struct HubSyncProcess {
  std::unique_ptr<Process> process;
  std::string grpc_address;
  std::string http_address;
  std::string log;
};

class HubSyncTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hub = new TestHub;
    std::string error;
    if (!hub->Start(&error)) {
      delete hub;
      hub = nullptr;
      FAIL() << error;
    }
  }
  static void TearDownTestSuite() {
    if (hub != nullptr) hub->Stop();
    delete hub;
    hub = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(hub, nullptr) << "the test Hub did not start";
    hub->Fault(nullptr);
    cache_ = MakeTempDir("hub_sync_test_cache");
  }
  void TearDown() override {
    if (!HasFailure()) RemoveTree(cache_);
  }

  // Starts hub_sync on free ports over `cache_`, pointed at the test Hub.
  HubSyncProcess StartHubSync(const std::string& name, std::vector<std::string> extra = {}) {
    HubSyncProcess hub_sync;
    hub_sync.log = absl::StrCat(cache_, "/", name, ".log");
    std::vector<std::string> argv = {SHARDSERVE_HUB_SYNC_PATH,
                                     "--cache-dir",
                                     cache_,
                                     "--endpoint",
                                     hub->endpoint(),
                                     "--grpc-address",
                                     "127.0.0.1:0",
                                     "--http-address",
                                     "127.0.0.1:0",
                                     "--retry-initial-backoff-seconds",
                                     "0.05",
                                     "--retry-max-backoff-seconds",
                                     "0.2"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string error;
    hub_sync.process = Process::Start(argv, hub_sync.log, &error);
    if (hub_sync.process == nullptr) {
      ADD_FAILURE() << error;
      return hub_sync;
    }
    hub_sync.grpc_address = WaitForLine(hub_sync.process.get(), "grpc listening on ", 30);
    hub_sync.http_address = WaitForLine(hub_sync.process.get(), "http listening on ", 30);
    EXPECT_FALSE(hub_sync.http_address.empty()) << Tail(hub_sync.log);
    return hub_sync;
  }

  RunResult Pull(const HubSyncProcess& hub_sync, std::vector<std::string> args) {
    std::vector<std::string> argv = {SHARDSERVE_CLI_PATH, "pull", "--target",
                                     hub_sync.grpc_address};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProgram(argv);
  }

  std::string RepoCacheDir(const std::string& repo) const {
    std::string folder = "models--" + repo;
    folder.replace(folder.find('/'), 1, "--");
    return absl::StrCat(cache_, "/hub/", folder);
  }

  // Files under blobs/ whose names end with `suffix`.
  std::vector<std::string> Blobs(const std::string& repo, const std::string& suffix) const {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(RepoCacheDir(repo) + "/blobs", ec)) {
      const std::string name = entry.path().filename().string();
      if (absl::EndsWith(name, suffix)) names.push_back(name);
    }
    return names;
  }

  // The official client, offline, on our cache: every file of the snapshot equals the source.
  void ExpectOfflineReadable(const std::string& repo, const std::string& source_dir) {
    const std::string commit = ReadFile(RepoCacheDir(repo) + "/refs/main");
    const std::string snapshot = absl::StrCat(RepoCacheDir(repo), "/snapshots/", commit);
    std::vector<std::string> argv = {"/usr/bin/env",
                                     "HF_HUB_OFFLINE=1",
                                     "HF_HUB_CACHE=" + cache_ + "/hub",
                                     Python(),
                                     "tests/fixtures/hf_offline_check.py",
                                     cache_ + "/hub",
                                     repo,
                                     commit};
    std::error_code ec;
    for (const auto& entry : fs::recursive_directory_iterator(snapshot, ec)) {
      if (!entry.is_symlink()) continue;
      const std::string path = entry.path().lexically_relative(snapshot).string();
      argv.push_back(absl::StrCat(path, "=", source_dir, "/", path));
    }
    ASSERT_GT(argv.size(), 8u) << "empty snapshot " << snapshot;
    RunResult r = RunProgram(argv);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  }

  std::string cache_;
};

// The commit a successful pull printed ("REPO@REV COMMIT (...)").
std::string PulledCommit(const RunResult& r) {
  std::vector<std::string> words = absl::StrSplit(r.out, ' ');
  return words.size() > 1 ? words[1] : "";
}

TEST_F(HubSyncTest, FullSyncIsReadByHuggingFaceHubOfflineAndThroughTheMirror) {
  HubSyncProcess hub_sync = StartHubSync("hub_sync");
  ASSERT_FALSE(hub_sync.grpc_address.empty());
  RunResult r = Pull(hub_sync, {kSharded});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << Tail(hub_sync.log);
  const std::string commit = PulledCommit(r);
  EXPECT_EQ(commit.size(), 40u) << r.out;
  EXPECT_TRUE(Blobs(kSharded, ".incomplete").empty());
  // Default patterns: weights, JSON and tokenizer files; not .bin / .gguf.
  const std::string snapshot = absl::StrCat(RepoCacheDir(kSharded), "/snapshots/", commit);
  EXPECT_TRUE(fs::is_symlink(snapshot + "/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(snapshot + "/model-00001-of-00003.safetensors"));
  for (const auto& entry : fs::recursive_directory_iterator(snapshot)) {
    const std::string name = entry.path().string();
    EXPECT_FALSE(absl::EndsWith(name, ".bin") || absl::EndsWith(name, ".gguf")) << name;
  }
  EXPECT_EQ(ReadFile(RepoCacheDir(kSharded) + "/refs/main"), commit);
  ExpectOfflineReadable(kSharded, hub->repo_dir("sharded"));

  // A second pull finds everything in the cache: no file is downloaded again.
  const size_t requests_before = hub->Requests().size();
  r = Pull(hub_sync, {kSharded});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t downloads = 0;
  nlohmann::json requests = hub->Requests();
  for (size_t i = requests_before; i < requests.size(); ++i) {
    if (absl::StrContains(requests[i]["path"].get<std::string>(), "/resolve/")) ++downloads;
  }
  EXPECT_EQ(downloads, 0u);

  // `shardserve models` lists it.
  RunResult listed = RunProgram({SHARDSERVE_CLI_PATH, "models", "--target", hub_sync.grpc_address});
  EXPECT_EQ(listed.exit_code, 0) << listed.err;
  EXPECT_THAT(listed.out, HasSubstr(kSharded));
  EXPECT_THAT(listed.out, HasSubstr(commit.substr(0, 12)));

  // The mirror: huggingface_hub (HF_ENDPOINT = hub_sync's HTTP port) downloads the snapshot, and
  // every file equals the source.
  const std::string client_cache = cache_ + "/client";
  RunResult mirrored =
      RunProgram({"/usr/bin/env", "HF_ENDPOINT=http://" + hub_sync.http_address,
                  "HF_HUB_CACHE=" + client_cache, "HF_HUB_DISABLE_TELEMETRY=1", Python(), "-c", R"(
import filecmp, os, sys
import huggingface_hub
repo, commit, source = sys.argv[1:4]
path = huggingface_hub.snapshot_download(repo)
assert os.path.basename(path) == commit, (path, commit)
names = []
for folder, _, files in os.walk(path):
    for name in files:
        rel = os.path.relpath(os.path.join(folder, name), path)
        assert filecmp.cmp(os.path.join(path, rel), os.path.join(source, rel), shallow=False), rel
        names.append(rel)
assert "model.safetensors.index.json" in names, names
meta = huggingface_hub.get_hf_file_metadata(
    huggingface_hub.hf_hub_url(repo, "model-00001-of-00003.safetensors"))
assert meta.commit_hash == commit and meta.size > 0, meta
print("ok", len(names), "files")
)",
                  kSharded, commit, hub->repo_dir("sharded")});
  EXPECT_EQ(mirrored.exit_code, 0) << mirrored.out << mirrored.err;
  EXPECT_THAT(mirrored.out, HasSubstr("ok "));
}

TEST_F(HubSyncTest, RetriesFaultsAndExplainsRefusals) {
  HubSyncProcess hub_sync = StartHubSync("hub_sync");
  ASSERT_FALSE(hub_sync.grpc_address.empty());
  hub->Fault({{"kind", "status"}, {"status", 500}, {"path", "config.json"}, {"times", 2}});
  hub->Fault({{"kind", "status"}, {"status", 429}, {"retry_after", 1}, {"path", "*.safetensors"}});
  hub->Fault(
      {{"kind", "drop"}, {"path", "model-00002-of-00003.safetensors"}, {"after_bytes", 1000}});
  hub->Fault({{"kind", "flip"}, {"path", "model-00003-of-00003.safetensors"}, {"after_bytes", 10}});
  hub->Fault({{"kind", "status"}, {"status", 503}, {"route", "api"}, {"times", 1}});
  RunResult r = Pull(hub_sync, {kSharded});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << Tail(hub_sync.log);
  ExpectOfflineReadable(kSharded, hub->repo_dir("sharded"));
  // The dropped file was resumed with a Range request past its first bytes.
  bool resumed = false;
  for (const auto& request : hub->Requests()) {
    if (absl::StrContains(request["path"].get<std::string>(), "model-00002-of-00003") &&
        request["range"].is_string() &&
        absl::StartsWith(request["range"].get<std::string>(), "bytes=") &&
        !absl::StartsWith(request["range"].get<std::string>(), "bytes=0-")) {
      resumed = true;
    }
  }
  EXPECT_TRUE(resumed);

  // Gated: no token → the repo is named and a token is asked for; the token never shows.
  r = Pull(hub_sync, {kGated});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(kGated));
  EXPECT_THAT(r.err, HasSubstr("token"));
  // Without a token the Hub answers 401 for a missing repo as for a private one.
  r = Pull(hub_sync, {"test-org/missing"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("does not exist"));
  EXPECT_THAT(r.err, HasSubstr("test-org/missing"));
  r = Pull(hub_sync, {"../etc"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("INVALID_ARGUMENT"));

  // With the token (from a file, as a Kubernetes secret), the gated repo syncs; the token is in
  // no log line and no error.
  const std::string token_file = cache_ + "/token";
  {
    std::ofstream out(token_file);
    out << kToken << "\n";
  }
  HubSyncProcess with_token = StartHubSync("hub_sync_token", {"--token-file", token_file});
  ASSERT_FALSE(with_token.grpc_address.empty());
  r = Pull(with_token, {kGated});
  EXPECT_EQ(r.exit_code, 0) << r.err << Tail(with_token.log);
  for (const std::string& log : {hub_sync.log, with_token.log}) {
    EXPECT_THAT(ReadFile(log), ::testing::Not(HasSubstr(kToken))) << log;
  }
}

TEST_F(HubSyncTest, KilledMidDownloadResumesAndNeverShowsAHalfFile) {
  // The 10.5 MiB LFS file (data/large_blob.dat) is served slowly so that hub_sync is killed in the
  // middle of it.
  hub->Fault({{"kind", "slow"}, {"path", "data/*"}, {"delay", 0.02}, {"times", -1}});
  HubSyncProcess hub_sync = StartHubSync("hub_sync");
  ASSERT_FALSE(hub_sync.grpc_address.empty());
  std::string error;
  std::unique_ptr<Process> pull =
      Process::Start({SHARDSERVE_CLI_PATH, "pull", "--target", hub_sync.grpc_address, "-q",
                      kSharded, "--include", "data/*"},
                     cache_ + "/pull.log", &error);
  ASSERT_NE(pull, nullptr) << error;
  // Wait until a good part of the file has arrived, then kill hub_sync.
  uint64_t partial = 0;
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  while (partial < (2u << 20) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(50));
    partial = 0;
    for (const std::string& name : Blobs(kSharded, ".incomplete")) {
      std::error_code ec;
      partial =
          std::max<uint64_t>(partial, fs::file_size(RepoCacheDir(kSharded) + "/blobs/" + name, ec));
    }
  }
  ASSERT_GE(partial, 2u << 20) << Tail(hub_sync.log);
  hub_sync.process->Signal(SIGKILL);
  hub_sync.process->Wait(seconds(10));
  EXPECT_NE(pull->Wait(seconds(30)).value_or(0), 0);
  // Nothing under a final blob name but complete, verified files.
  for (const std::string& name : Blobs(kSharded, "")) {
    if (absl::StrContains(name, ".")) continue;  // .incomplete, .part
    ADD_FAILURE() << "a final blob appeared before its download finished: " << name;
  }

  hub->Fault(nullptr);
  HubSyncProcess restarted = StartHubSync("hub_sync_restarted");
  ASSERT_FALSE(restarted.grpc_address.empty());
  const size_t requests_before = hub->Requests().size();
  RunResult r = Pull(restarted, {kSharded, "--include", "data/*"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << Tail(restarted.log);
  nlohmann::json requests = hub->Requests();
  bool resumed = false;
  for (size_t i = requests_before; i < requests.size(); ++i) {
    const nlohmann::json& request = requests[i];
    if (request["range"].is_string()) {
      const std::string text = request["range"].get<std::string>();
      absl::string_view range = text;
      uint64_t start = 0;
      absl::ConsumePrefix(&range, "bytes=");
      if (absl::SimpleAtoi(range.substr(0, range.find('-')), &start) && start >= partial / 2) {
        resumed = true;
      }
    }
  }
  EXPECT_TRUE(resumed) << "the restarted download did not continue where it stopped";
  EXPECT_TRUE(Blobs(kSharded, ".incomplete").empty());
  ExpectOfflineReadable(kSharded, hub->repo_dir("sharded"));
}

TEST_F(HubSyncTest, TwoHubSyncsOnOneCacheEndWithOneCorrectCopy) {
  // Every file a little slow, config.json for 1.5 s: the jobs overlap for sure.
  hub->Fault({{"kind", "slow"}, {"path", "config.json"}, {"delay", 1.5}, {"times", -1}});
  hub->Fault({{"kind", "slow"}, {"path", "*"}, {"delay", 0.002}, {"times", -1}});
  HubSyncProcess a = StartHubSync("hub_sync_a");
  HubSyncProcess b = StartHubSync("hub_sync_b");
  ASSERT_FALSE(a.grpc_address.empty());
  ASSERT_FALSE(b.grpc_address.empty());
  std::string error;
  std::unique_ptr<Process> pull_a =
      Process::Start({SHARDSERVE_CLI_PATH, "pull", "-q", "--target", a.grpc_address, kSharded},
                     cache_ + "/pull_a.log", &error);
  ASSERT_NE(pull_a, nullptr) << error;
  // Once hub_sync A runs the job, the same request again joins it, and B races A on the cache.
  const auto deadline = std::chrono::steady_clock::now() + seconds(30);
  while (!absl::StrContains(ReadFile(a.log), "\"sync_start\"") &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  std::unique_ptr<Process> pull_a2 =
      Process::Start({SHARDSERVE_CLI_PATH, "pull", "-q", "--target", a.grpc_address, kSharded},
                     cache_ + "/pull_a2.log", &error);
  std::unique_ptr<Process> pull_b =
      Process::Start({SHARDSERVE_CLI_PATH, "pull", "-q", "--target", b.grpc_address, kSharded},
                     cache_ + "/pull_b.log", &error);
  ASSERT_NE(pull_b, nullptr);
  ASSERT_NE(pull_a2, nullptr);
  EXPECT_EQ(pull_a->Wait(seconds(120)).value_or(-1), 0) << Tail(cache_ + "/pull_a.log");
  EXPECT_EQ(pull_b->Wait(seconds(120)).value_or(-1), 0) << Tail(cache_ + "/pull_b.log");
  EXPECT_EQ(pull_a2->Wait(seconds(120)).value_or(-1), 0) << Tail(cache_ + "/pull_a2.log");
  const std::string log_a = ReadFile(a.log);
  size_t jobs = 0;
  for (size_t at = log_a.find("\"sync_start\""); at != std::string::npos;
       at = log_a.find("\"sync_start\"", at + 1)) {
    ++jobs;
  }
  EXPECT_EQ(jobs, 1u) << "two identical requests to one hub_sync ran as " << jobs << " jobs";
  EXPECT_TRUE(Blobs(kSharded, ".incomplete").empty());
  ExpectOfflineReadable(kSharded, hub->repo_dir("sharded"));
}

TEST_F(HubSyncTest, ImportsAGgufAsTheSameCommitEveryTime) {
  HubSyncProcess hub_sync = StartHubSync("hub_sync");
  ASSERT_FALSE(hub_sync.grpc_address.empty());
  RunResult first = Pull(
      hub_sync, {"--from-file", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--as", "test-org/tiny"});
  ASSERT_EQ(first.exit_code, 0) << first.err << Tail(hub_sync.log);
  RunResult second = Pull(
      hub_sync, {"--from-file", "models/SmolLM2-135M-Instruct.Q4_1.gguf", "--as", "test-org/tiny"});
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(PulledCommit(first), PulledCommit(second));
  const std::string snapshot =
      absl::StrCat(RepoCacheDir("test-org/tiny"), "/snapshots/", PulledCommit(first));
  for (const char* file :
       {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::exists(absl::StrCat(snapshot, "/", file))) << file;
  }
  RunResult missing = Pull(hub_sync, {"--from-file", "/nonexistent.gguf", "--as", "a/b"});
  EXPECT_EQ(missing.exit_code, 1);
}

TEST_F(HubSyncTest, MirrorPullsThroughWhatTheCacheLacks) {
  HubSyncProcess hub_sync = StartHubSync("hub_sync", {"--pull-through", "true"});
  ASSERT_FALSE(hub_sync.http_address.empty());
  // Nothing is cached: huggingface_hub asks the mirror, which fetches from the test Hub first.
  RunResult r = RunProgram({"/usr/bin/env", "HF_ENDPOINT=http://" + hub_sync.http_address,
                            "HF_HUB_CACHE=" + cache_ + "/client", "HF_HUB_DISABLE_TELEMETRY=1",
                            Python(), "-c", R"(
import filecmp, os, sys
import huggingface_hub
repo, source = sys.argv[1:3]
path = huggingface_hub.hf_hub_download(repo, "subdir/deeper/notes.txt")
assert filecmp.cmp(path, os.path.join(source, "subdir/deeper/notes.txt"), shallow=False)
path = huggingface_hub.hf_hub_download(repo, "config.json")
assert filecmp.cmp(path, os.path.join(source, "config.json"), shallow=False)
try:
    huggingface_hub.hf_hub_download(repo, "no/such/file.txt")
    raise SystemExit("a missing file was served")
except huggingface_hub.errors.EntryNotFoundError:
    pass
print("ok pull-through")
)",
                            kSharded, hub->repo_dir("sharded")});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err << Tail(hub_sync.log);
  EXPECT_THAT(r.out, HasSubstr("ok pull-through"));
  // And the files are now in hub_sync's cache.
  EXPECT_FALSE(Blobs(kSharded, "").empty());
}

// The issue's last integration case: a worker serving the synced int4 model through the gateway.
TEST_F(HubSyncTest, WorkerServesTheSyncedInt4ModelThroughTheGateway) {
  HubSyncProcess hub_sync = StartHubSync("hub_sync");
  ASSERT_FALSE(hub_sync.grpc_address.empty());
  RunResult r = Pull(hub_sync, {kSmol, "--quantize", "int4"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << Tail(hub_sync.log);
  RunResult listed = RunProgram({SHARDSERVE_CLI_PATH, "models", "--target", hub_sync.grpc_address});
  EXPECT_THAT(listed.out, HasSubstr("int4"));

  std::string error;
  const std::string worker_log = cache_ + "/worker.log";
  std::unique_ptr<Process> worker =
      Process::Start({SHARDSERVE_WORKER_PATH, "--model", kSmol, "--cache-dir", cache_,
                      "--quantization", "int4", "--address", "127.0.0.1:0", "--http-address", "",
                      "--threads", "1", "--context-length", "512"},
                     worker_log, &error);
  ASSERT_NE(worker, nullptr) << error;
  const std::string worker_address = WaitForLine(worker.get(), "listening on ", 60);
  ASSERT_FALSE(worker_address.empty()) << Tail(worker_log);
  ASSERT_FALSE(WaitForLine(worker.get(), "serving ", 300).empty()) << Tail(worker_log);

  const std::string gateway_log = cache_ + "/gateway.log";
  std::unique_ptr<Process> gateway =
      Process::Start({SHARDSERVE_GATEWAY_PATH, "--grpc-address", "127.0.0.1:0", "--http-address",
                      "127.0.0.1:0", "--model", absl::StrCat(kSmol, "=", worker_address)},
                     gateway_log, &error);
  ASSERT_NE(gateway, nullptr) << error;
  const std::string gateway_address = WaitForLine(gateway.get(), "grpc listening on ", 30);
  ASSERT_FALSE(gateway_address.empty()) << Tail(gateway_log);
  RunResult chat =
      RunProgram({SHARDSERVE_CLI_PATH, "chat", "--target", gateway_address, "--wait", "60",
                  "--temperature", "0", "--max-tokens", "24", "What is the capital of France?"});
  ASSERT_EQ(chat.exit_code, 0) << chat.err << Tail(gateway_log) << Tail(worker_log);
  EXPECT_THAT(chat.out, HasSubstr("Paris"));
}

}  // namespace
}  // namespace shardserve::testing
