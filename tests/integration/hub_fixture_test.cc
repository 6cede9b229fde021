// The test Hub (tests/fixtures/hub_server.py) is faithful: the official huggingface_hub client
// downloads both fixture repositories from it (tests/fixtures/make_hub_repos.py), sees its 401 /
// 403 / 404s as it sees the Hub's, and resumes and retries through its injected faults
// (tests/fixtures/hub_client_check.py, one "ok CASE" line per case). The C++ Hub client's tests
// rely on this server; this test is what says the server can be trusted.
// Runs with cwd = the repository root (ctest does that); needs models/SmolLM2-135M-Instruct
// (scripts/setup.sh) and huggingface_hub (tests/requirements.txt).
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/subprocess.h"

namespace shardserve {
namespace {

using ::shardserve::testing::FindOnPath;

using ::shardserve::testing::Process;
using ::shardserve::testing::RunProgram;
using ::shardserve::testing::RunResult;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

// The repository ids, tokens and page size hub_client_check.py expects (see its docstring).
constexpr char kSmolLM2[] = "HuggingFaceTB/SmolLM2-135M-Instruct";
constexpr char kSharded[] = "shardserve-test/tiny-llama-sharded";
constexpr char kPrivate[] = "shardserve-test/private-sharded";
constexpr char kGated[] = "shardserve-test/gated-sharded";
constexpr char kToken[] = "hf_test_full_access";
constexpr char kNoAccessToken[] = "hf_test_no_access";

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class HubFixtureTest : public ::testing::Test {
 protected:
  // One set of repositories and one server for the suite: hashing SmolLM2 (270 MB) once is
  // enough.
  static void SetUpTestSuite() {
    work_dir_ = new std::string(absl::StrCat(::testing::TempDir(), "hub_fixture_test_", getpid()));
    server_log_ = new std::string(absl::StrCat(*work_dir_, ".server.log"));
    std::filesystem::remove_all(*work_dir_);
    std::filesystem::create_directories(*work_dir_);
    make_repos_ = new RunResult(RunProgram(
        {FindOnPath("python3"), SourceDir() + "/tests/fixtures/make_hub_repos.py", RepoDir()}));
    if (make_repos_->exit_code != 0) return;
    const std::string sharded = RepoDir() + "/sharded";
    std::vector<std::string> argv = {FindOnPath("python3"),
                                     SourceDir() + "/tests/fixtures/hub_server.py",
                                     "--repo",
                                     absl::StrCat(kSmolLM2, "=", RepoDir(), "/smollm2"),
                                     "--repo",
                                     absl::StrCat(kSharded, "=", sharded),
                                     "--repo",
                                     absl::StrCat(kPrivate, "=", sharded),
                                     "--private",
                                     kPrivate,
                                     "--repo",
                                     absl::StrCat(kGated, "=", sharded),
                                     "--gated",
                                     kGated,
                                     "--token",
                                     kToken,
                                     "--token-no-access",
                                     kNoAccessToken,
                                     "--page-size",
                                     "7",
                                     "--port",
                                     "0"};
    std::string error;
    server_ = Process::Start(argv, *server_log_, &error).release();
    if (server_ == nullptr) {
      start_error_ = new std::string(error);
      return;
    }
    std::optional<std::string> line = server_->ReadLine(60s);
    constexpr absl::string_view kPrefix = "hub listening on ";
    if (line && absl::StartsWith(*line, kPrefix)) {
      endpoint_ = new std::string(absl::StrCat("http://", line->substr(kPrefix.size())));
    } else {
      start_error_ =
          new std::string(absl::StrCat("hub_server.py printed ", line ? *line : "nothing",
                                       "; its log:\n", ReadFile(*server_log_)));
    }
  }

  static void TearDownTestSuite() {
    delete server_;  // kills and reaps it
    server_ = nullptr;
    std::error_code ignored;
    std::filesystem::remove_all(*work_dir_, ignored);
    std::filesystem::remove(*server_log_, ignored);  // failure messages already quote it
    delete work_dir_;
    delete server_log_;
    delete make_repos_;
    delete endpoint_;
    delete start_error_;
    endpoint_ = start_error_ = nullptr;
  }

  void SetUp() override {
    ASSERT_EQ(make_repos_->exit_code, 0)
        << "make_hub_repos.py failed (models/SmolLM2-135M-Instruct comes from scripts/setup.sh):\n"
        << make_repos_->err;
    ASSERT_NE(endpoint_, nullptr) << (start_error_ != nullptr ? *start_error_ : "");
  }

  static std::string RepoDir() { return *work_dir_ + "/repos"; }

  static std::string* work_dir_;
  static std::string* server_log_;
  static RunResult* make_repos_;
  static Process* server_;
  static std::string* endpoint_;
  static std::string* start_error_;
};

std::string* HubFixtureTest::work_dir_ = nullptr;
std::string* HubFixtureTest::server_log_ = nullptr;
RunResult* HubFixtureTest::make_repos_ = nullptr;
Process* HubFixtureTest::server_ = nullptr;
std::string* HubFixtureTest::endpoint_ = nullptr;
std::string* HubFixtureTest::start_error_ = nullptr;

TEST_F(HubFixtureTest, MakeHubReposPrintsBothRepositoriesAndIsIdempotent) {
  EXPECT_EQ(make_repos_->out, absl::StrCat(RepoDir(), "/smollm2\n", RepoDir(), "/sharded\n"));
  RunResult again = RunProgram(
      {FindOnPath("python3"), SourceDir() + "/tests/fixtures/make_hub_repos.py", RepoDir()});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out, make_repos_->out);
  EXPECT_TRUE(std::filesystem::is_regular_file(RepoDir() + "/sharded/data/large_blob.dat"));
  EXPECT_GT(std::filesystem::file_size(RepoDir() + "/sharded/data/large_blob.dat"),
            10u * 1024 * 1024);  // LFS by size
}

TEST_F(HubFixtureTest, HuggingFaceHubClientPassesEveryCase) {
  RunResult r =
      RunProgram({FindOnPath("python3"), SourceDir() + "/tests/fixtures/hub_client_check.py",
                  *endpoint_, *work_dir_ + "/client_cache", "--repos-dir", RepoDir()});
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.exit_code, 0) << "stdout:\n"
                            << r.out << "\nstderr:\n"
                            << r.err << "\nserver log:\n"
                            << ReadFile(*server_log_);
  EXPECT_THAT(r.out, Not(HasSubstr("FAIL ")));
  for (const char* name : {"snapshot_smollm2",
                           "snapshot_sharded_all",
                           "snapshot_allow_patterns",
                           "snapshot_ignore_patterns",
                           "download_single_file",
                           "download_nested_and_odd_names",
                           "download_by_commit",
                           "missing_file",
                           "missing_revision",
                           "missing_repo",
                           "private_repo",
                           "gated_repo",
                           "invalid_token",
                           "api_listing",
                           "resume_after_drop",
                           "retry_429_retry_after",
                           "retry_500_on_head",
                           "api_drop_is_retried",
                           "slow_response_completes",
                           "flip_changes_one_byte",
                           "ranges_and_headers",
                           "cdn_redirect"}) {
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("\nok ", name, "\n"))) << name;
  }
}

}  // namespace
}  // namespace shardserve
