// HubClient against the fault-injecting test Hub (tests/fixtures/hub_server.py, one process for
// the suite, plus one with --cdn-redirect), and against small in-test HTTP servers for what that
// Hub never sends: hostile listings, relative Link URLs, a redirect to another host.
// Runs with cwd = the repository root (ctest does that); needs python3.
#include "hub_sync/hub_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "hub_sync/repo.h"
#include "nlohmann/json.hpp"
#include "tests/integration/subprocess.h"

namespace shardserve::hub {
namespace {

using ::shardserve::testing::FindOnPath;

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::shardserve::testing::Process;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

constexpr char kToken[] = "hf_FullAccessSecretToken0123456789";
constexpr char kNoAccessToken[] = "hf_NoAccessSecretToken9876543210";
constexpr char kWeights[] = "weights/model.safetensors";
constexpr uint64_t kWeightsSize = (uint64_t{3} << 20) + 123;

// --- Helpers ---

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 random(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(random() & 0xff);
  return out;
}

void WriteFile(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string MakeTempDir(const std::string& name) {
  std::string pattern = ::testing::TempDir() + "/hub_client_test_" + name + "_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return pattern;
}

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir == nullptr ? "." : dir;
}

// No error message may carry a token.
void ExpectNoToken(const absl::Status& status) {
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr(kToken)));
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr(kNoAccessToken)));
  EXPECT_THAT(std::string(status.message()), Not(HasSubstr("hf_WrongSecret")));
}

// A repository on disk and the files the Hub should list for it.
struct LocalRepo {
  std::string dir;
  std::map<std::string, std::string> files;  // path -> content

  void Add(const std::string& path, const std::string& content) {
    files[path] = content;
    WriteFile(dir + "/" + path, content);
  }
  RepoFile File(const std::string& path) const {
    const std::string& content = files.at(path);
    const bool lfs = absl::EndsWith(path, ".safetensors");
    return RepoFile{path, content.size(), lfs ? Sha256Hex(content) : GitBlobSha1Hex(content), lfs};
  }
};

// tests/fixtures/hub_server.py as a child process.
class HubServer {
 public:
  static std::unique_ptr<HubServer> Start(const std::vector<std::string>& flags) {
    auto server = std::unique_ptr<HubServer>(new HubServer);
    std::vector<std::string> argv = {FindOnPath("python3"),
                                     SourceDir() + "/tests/fixtures/hub_server.py"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    server->log_ = ::testing::TempDir() + "/hub_client_test_hub.log";
    std::string error;
    server->process_ = Process::Start(argv, server->log_, &error);
    if (server->process_ == nullptr) {
      ADD_FAILURE() << "cannot start the test Hub: " << error;
      return nullptr;
    }
    std::optional<std::string> line = server->process_->ReadLine(60s);
    const std::string prefix = "hub listening on ";
    if (!line.has_value() || !absl::StartsWith(*line, prefix)) {
      ADD_FAILURE() << "the test Hub did not start; log:\n" << ReadFile(server->log_);
      return nullptr;
    }
    server->address_ = line->substr(prefix.size());
    const size_t colon = server->address_.rfind(':');
    server->port_ = std::stoi(server->address_.substr(colon + 1));
    server->control_ = std::make_unique<httplib::Client>("127.0.0.1", server->port_);
    return server;
  }

  std::string endpoint() const { return "http://" + address_; }
  int port() const { return port_; }

  void AddFault(const json& rule) {
    auto result = control_->Post("/_faults", rule.dump(), "application/json");
    ASSERT_TRUE(result) << "POST /_faults failed";
    ASSERT_EQ(result->status, 200) << result->body;
  }
  void Reset() {
    ASSERT_TRUE(control_->Delete("/_faults"));
    ASSERT_TRUE(control_->Delete("/_stats"));
  }
  // Logged requests for paths ending in `suffix`, once at least `at_least` are (the server logs
  // a request when its handler ends, which can be just after the client has its answer, or a
  // little later for a request the client abandoned); gives up waiting after 20 s.
  std::vector<json> Requests(const std::string& method, const std::string& suffix,
                             size_t at_least = 0) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (true) {
      std::vector<json> out;
      auto result = control_->Get("/_stats");
      EXPECT_TRUE(result);
      if (!result) return out;
      const json stats = json::parse(result->body);
      for (const json& r : stats["requests"]) {
        if (r["method"] == method && absl::EndsWith(r["path"].get<std::string>(), suffix)) {
          out.push_back(r);
        }
      }
      if (out.size() >= at_least || absl::Now() > deadline) return out;
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

 private:
  HubServer() = default;
  std::unique_ptr<Process> process_;
  std::string log_;
  std::string address_;
  int port_ = 0;
  std::unique_ptr<httplib::Client> control_;
};

// An in-test HTTP server on 127.0.0.1, port 0.
class LocalServer {
 public:
  LocalServer() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~LocalServer() {
    server_.stop();
    thread_.join();
  }
  httplib::Server& server() { return server_; }
  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

// A bare HTTP/1.1 server on 127.0.0.1, port 0, for answers no library server would give: each
// connection gets `respond(request head)` and is closed.
class CannedServer {
 public:
  explicit CannedServer(std::function<std::string(const std::string&)> respond)
      : respond_(std::move(respond)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    EXPECT_EQ(listen(fd_, 16), 0);
    EXPECT_EQ(getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length), 0);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        const int client = accept(fd_, nullptr, nullptr);
        if (client < 0) return;  // shut down
        std::string head;
        char buffer[4096];
        while (head.find("\r\n\r\n") == std::string::npos) {
          const ssize_t n = read(client, buffer, sizeof(buffer));
          if (n <= 0) break;
          head.append(buffer, static_cast<size_t>(n));
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          heads_.push_back(head);
        }
        const std::string answer = respond_(head);
        for (size_t sent = 0; sent < answer.size();) {
          const ssize_t n = write(client, answer.data() + sent, answer.size() - sent);
          if (n <= 0) break;
          sent += static_cast<size_t>(n);
        }
        close(client);
      }
    });
  }
  ~CannedServer() {
    shutdown(fd_, SHUT_RDWR);
    thread_.join();
    close(fd_);
  }
  std::string endpoint() const { return absl::StrCat("http://127.0.0.1:", port_); }
  std::vector<std::string> heads() {
    std::lock_guard<std::mutex> lock(mu_);
    return heads_;
  }

 private:
  std::function<std::string(const std::string&)> respond_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> heads_;
};

// A port with nothing listening on it (bound once, then closed).
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  close(fd);
  return ntohs(address.sin_port);
}

// --- Pure pieces ---

TEST(RetryDelayTest, GrowsExponentiallyUpToTheCap) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(100);
  policy.max_backoff = absl::Seconds(1);
  policy.multiplier = 2;
  policy.jitter = 0;
  EXPECT_EQ(RetryDelay(policy, 1, 0.3, std::nullopt), absl::Milliseconds(100));
  EXPECT_EQ(RetryDelay(policy, 2, 0.3, std::nullopt), absl::Milliseconds(200));
  EXPECT_EQ(RetryDelay(policy, 4, 0.3, std::nullopt), absl::Milliseconds(800));
  EXPECT_EQ(RetryDelay(policy, 5, 0.3, std::nullopt), absl::Seconds(1));
  EXPECT_EQ(RetryDelay(policy, 1000, 0.3, std::nullopt), absl::Seconds(1));
}

TEST(RetryDelayTest, JitterStaysWithinItsBand) {
  RetryPolicy policy;
  policy.initial_backoff = absl::Milliseconds(100);
  policy.jitter = 0.2;
  EXPECT_EQ(RetryDelay(policy, 1, 0.0, std::nullopt), absl::Milliseconds(80));
  EXPECT_EQ(RetryDelay(policy, 1, 0.5, std::nullopt), absl::Milliseconds(100));
  EXPECT_LE(RetryDelay(policy, 1, 0.9999, std::nullopt), absl::Milliseconds(120));
  EXPECT_GT(RetryDelay(policy, 1, 0.9999, std::nullopt), absl::Milliseconds(119));
}

TEST(RetryDelayTest, RetryAfterIsHonouredUpToItsCap) {
  RetryPolicy policy;
  policy.max_retry_after = absl::Seconds(10);
  EXPECT_EQ(RetryDelay(policy, 3, 0.5, absl::Seconds(4)), absl::Seconds(4));
  EXPECT_EQ(RetryDelay(policy, 1, 0.5, absl::Seconds(3600)), absl::Seconds(10));
  EXPECT_EQ(RetryDelay(policy, 1, 0.5, absl::Seconds(-5)), absl::ZeroDuration());
}

TEST(NextPageUrlTest, FindsTheNextLink) {
  EXPECT_EQ(NextPageUrl(R"(<https://hub/api/x?cursor=abc>; rel="next")"),
            "https://hub/api/x?cursor=abc");
  EXPECT_EQ(NextPageUrl(R"(<https://a/1>; rel="prev", <https://a/3>; rel="next")"), "https://a/3");
  EXPECT_EQ(NextPageUrl(R"(<https://a/1>;rel=next)"), "https://a/1");
  EXPECT_EQ(
      NextPageUrl(
          R"(<https://a/1>; title="a, b; rel=next"; rel="last", <https://a/2>; REL="prev NEXT")"),
      "https://a/2");
  EXPECT_EQ(NextPageUrl(R"(</api/x?cursor=2>; rel="next")"), "/api/x?cursor=2");
  EXPECT_EQ(NextPageUrl(R"(<https://a/1>; rel="last")"), std::nullopt);
  EXPECT_EQ(NextPageUrl(""), std::nullopt);
  EXPECT_EQ(NextPageUrl("<unterminated; rel=next"), std::nullopt);
  EXPECT_EQ(NextPageUrl("garbage ; ; , , ;rel=next"), std::nullopt);
}

const RepoId kAcme{"acme", "public"};

absl::Status ParseOne(const json& entry) {
  std::vector<RepoFile> files;
  return ParseTreePage(json::array({entry}).dump(), kAcme, &files);
}

TEST(ParseTreePageTest, ReadsFilesAndSkipsFolders) {
  const std::string sha1(40, 'a');
  const std::string sha256(64, 'b');
  json page = json::array({
      {{"type", "directory"}, {"oid", sha1}, {"size", 0}, {"path", "sub"}},
      {{"type", "file"}, {"oid", sha1}, {"size", 12}, {"path", "sub/config.json"}},
      {{"type", "file"},
       {"oid", std::string(40, 'c')},
       {"size", 1000},
       {"path", "model.safetensors"},
       {"lfs", {{"oid", sha256}, {"size", 1000}, {"pointerSize", 130}}}},
  });
  std::vector<RepoFile> files;
  ASSERT_TRUE(ParseTreePage(page.dump(), kAcme, &files).ok());
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], (RepoFile{"sub/config.json", 12, sha1, false}));
  EXPECT_EQ(files[1], (RepoFile{"model.safetensors", 1000, sha256, true}));
}

TEST(ParseTreePageTest, RefusesHostileEntries) {
  const std::string sha1(40, 'a');
  auto file = [&](const json& path) {
    return json{{"type", "file"}, {"oid", sha1}, {"size", 1}, {"path", path}};
  };
  struct Case {
    json entry;
    std::string expected;  // in the message
  };
  std::vector<Case> cases = {
      {file("../../etc/passwd"), "../../etc/passwd"},
      {file("a/../../b"), "a/../../b"},
      {file("/etc/passwd"), "/etc/passwd"},
      {file(std::string("a\0b", 3)), "a\\x00"},
      {file("line\nbreak"), "line\\nbreak"},
      {file("back\\slash"), "back\\\\slash"},
      {file("dir/"), "dir/"},
      {file(""), "entry 0"},
      {file(42), "\"path\""},
      {json{{"type", "file"}, {"oid", sha1}, {"path", "nosize"}}, "size"},
      {json{{"type", "file"}, {"oid", sha1}, {"size", -1}, {"path", "neg"}}, "size"},
      {json{{"type", "file"}, {"oid", sha1}, {"size", 1.5}, {"path", "frac"}}, "size"},
      {json{{"type", "file"}, {"oid", std::string(40, 'A')}, {"size", 1}, {"path", "upper"}},
       "oid"},
      {json{{"type", "file"}, {"oid", "../x"}, {"size", 1}, {"path", "oid"}}, "oid"},
      {json{{"type", "file"}, {"size", 1}, {"path", "nooid"}}, "oid"},
      {json{{"type", "file"},
            {"oid", sha1},
            {"size", 1},
            {"path", "m.safetensors"},
            {"lfs", {{"oid", sha1}, {"size", 1}}}},
       "lfs.oid"},
      {json{{"type", "file"},
            {"oid", sha1},
            {"size", 1},
            {"path", "m.safetensors"},
            {"lfs", {{"oid", std::string(64, 'f')}}}},
       "lfs.size"},
      {json{{"type", "symlink"}, {"oid", sha1}, {"size", 1}, {"path", "s"}}, "symlink"},
      {json{{"oid", sha1}, {"size", 1}, {"path", "notype"}}, "type"},
      {json("a string"), "not an object"},
  };
  for (const Case& c : cases) {
    absl::Status status = ParseOne(c.entry);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.entry.dump();
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.expected)) << c.entry.dump();
    EXPECT_THAT(std::string(status.message()), HasSubstr("acme/public")) << c.entry.dump();
  }
  std::vector<RepoFile> files;
  absl::Status status = ParseTreePage(R"({"not": "a list"})", kAcme, &files);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not a JSON array"));
  status = ParseTreePage("[{", kAcme, &files);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
}

TEST(FinishListingTest, SortsAndRefusesDuplicatesAndFileFolderClashes) {
  const std::string sha1(40, 'a');
  std::vector<RepoFile> files = {{"b", 1, sha1, false}, {"a/x", 1, sha1, false}};
  ASSERT_TRUE(FinishListing(kAcme, &files).ok());
  EXPECT_EQ(files[0].path, "a/x");

  files = {{"a", 1, sha1, false}, {"b", 1, sha1, false}, {"a", 2, sha1, false}};
  absl::Status status = FinishListing(kAcme, &files);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("\"a\" twice"));

  files = {{"a/b", 1, sha1, false}, {"a/b.txt", 1, sha1, false}, {"a/b/c", 1, sha1, false}};
  status = FinishListing(kAcme, &files);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("\"a/b\" both as a file and as the folder"));
}

TEST(HubClientCreateTest, RefusesBadOptions) {
  auto create = [](auto change) {
    HubClientOptions options;
    change(options);
    return HubClient::Create(options).status();
  };
  absl::Status status = create([](HubClientOptions& o) { o.endpoint = "ftp://example.com"; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("ftp://example.com"));
  status = create([](HubClientOptions& o) { o.endpoint = "huggingface.co"; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  status = create([](HubClientOptions& o) { o.token = "hf_WrongSecret\r\nX-Evil: 1"; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("token"));
  ExpectNoToken(status);
  status = create([](HubClientOptions& o) { o.connections = 0; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("connections"));
  status = create([](HubClientOptions& o) { o.retry.max_attempts = 0; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(create([](HubClientOptions& o) { o.endpoint = "http://127.0.0.1:1/"; }).ok());
}

TEST(HubClientDownloadTest, RefusesBadArguments) {
  auto client = HubClient::Create(HubClientOptions{});
  ASSERT_TRUE(client.ok());
  const std::string dest = MakeTempDir("args") + "/out";
  RepoFile file{"config.json", 3, std::string(40, 'a'), false};
  absl::Status status = (*client)->Download(kAcme, "main", file, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("not a commit"));
  file.path = "../escape";
  status = (*client)->Download(kAcme, std::string(40, 'c'), file, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  file = RepoFile{"model.safetensors", 3, std::string(40, 'a'), true};
  status = (*client)->Download(kAcme, std::string(40, 'c'), file, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("sha256"));
  EXPECT_FALSE(fs::exists(dest));
}

// --- Against the test Hub ---

class HubClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new std::string(MakeTempDir("repos"));
    public_ = new LocalRepo{*root_ + "/public", {}};
    public_->Add("config.json", R"({"architectures": ["LlamaForCausalLM"]})");
    public_->Add("tokenizer.json", RandomBytes(20000, 1));
    public_->Add("generation_config.json", R"({"do_sample": false})");
    public_->Add("sub/dir/nested.json", R"({"nested": true})");
    public_->Add("sub/name with spaces #1.txt", "spaces and a hash");
    public_->Add("empty.txt", "");
    public_->Add(kWeights, RandomBytes(kWeightsSize, 2));
    private_ = new LocalRepo{*root_ + "/private", {}};
    private_->Add("config.json", R"({"private": true})");
    gated_ = new LocalRepo{*root_ + "/gated", {}};
    gated_->Add("config.json", R"({"gated": true})");
    gated_->Add("model.safetensors", RandomBytes(1000, 3));
    hub_ = HubServer::Start({"--repo", "acme/public=" + public_->dir, "--repo",
                             "acme/private=" + private_->dir, "--private", "acme/private", "--repo",
                             "acme/gated=" + gated_->dir, "--gated", "acme/gated", "--token",
                             kToken, "--token-no-access", kNoAccessToken, "--page-size", "3"})
               .release();
  }
  static void TearDownTestSuite() {
    delete hub_;
    delete public_;
    delete private_;
    delete gated_;
    fs::remove_all(*root_);
    delete root_;
  }

  void SetUp() override {
    ASSERT_NE(hub_, nullptr) << "the test Hub is not running";
    hub_->Reset();
    dest_dir_ = MakeTempDir("dest");
  }
  void TearDown() override { fs::remove_all(dest_dir_); }

  // Fast retries so that tests take little time.
  HubClientOptions Options(const std::string& token = "") {
    HubClientOptions options;
    options.endpoint = hub_->endpoint();
    options.token = token;
    options.retry.initial_backoff = absl::Milliseconds(10);
    options.retry.max_backoff = absl::Milliseconds(50);
    options.retry.max_retry_after = absl::Seconds(2);
    options.on_retry = [this](const absl::Status& cause, int, absl::Duration delay) {
      std::lock_guard<std::mutex> lock(retries_mu_);
      retries_.push_back({cause, delay});
      ExpectNoToken(cause);
    };
    return options;
  }
  std::unique_ptr<HubClient> Client(const HubClientOptions& options) {
    auto client = HubClient::Create(options);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? std::move(*client) : nullptr;
  }
  std::string Commit() {
    auto client = Client(Options());
    auto snapshot = client->Resolve(kAcme, "main");
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    hub_->Reset();
    return snapshot.ok() ? snapshot->commit : std::string(40, '0');
  }
  std::string Dest(const std::string& name = "blob.incomplete") { return dest_dir_ + "/" + name; }

  static std::string* root_;
  static LocalRepo* public_;
  static LocalRepo* private_;
  static LocalRepo* gated_;
  static HubServer* hub_;
  std::string dest_dir_;
  std::mutex retries_mu_;
  std::vector<std::pair<absl::Status, absl::Duration>> retries_;
};

std::string* HubClientTest::root_ = nullptr;
LocalRepo* HubClientTest::public_ = nullptr;
LocalRepo* HubClientTest::private_ = nullptr;
LocalRepo* HubClientTest::gated_ = nullptr;
HubServer* HubClientTest::hub_ = nullptr;

TEST_F(HubClientTest, ResolvesBranchToCommitAndListsEveryPage) {
  auto client = Client(Options());
  auto snapshot = client->Resolve(kAcme, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_TRUE(IsCommitSha(snapshot->commit));
  EXPECT_EQ(snapshot->revision, "main");
  EXPECT_EQ(snapshot->repo, kAcme);
  std::vector<RepoFile> expected;
  for (const auto& [path, content] : public_->files) expected.push_back(public_->File(path));
  EXPECT_EQ(snapshot->files, expected);  // sorted by path, nested paths, LFS sha256 etags
  // 7 files and 4 folders at 3 entries a page: 4 pages, each at the resolved commit.
  std::vector<json> pages = hub_->Requests("GET", "/tree/" + snapshot->commit, 4);
  EXPECT_EQ(pages.size(), 4u);
  for (const json& page : pages)
    EXPECT_THAT(page["query"].get<std::string>(), HasSubstr("recursive=true"));

  // A commit resolves to itself, with the same files.
  auto again = client->Resolve(kAcme, snapshot->commit);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->commit, snapshot->commit);
  EXPECT_EQ(again->revision, snapshot->commit);
  EXPECT_EQ(again->files, expected);
}

TEST_F(HubClientTest, UnknownRevisionIsNotFound) {
  auto client = Client(Options());
  for (const std::string revision : {"v9.9", "refs/pr/1"}) {
    auto snapshot = client->Resolve(kAcme, revision);
    EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kNotFound) << revision;
    EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr(revision));
    EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("acme/public"));
  }
  auto bad = client->Resolve(kAcme, "../main");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HubClientTest, HeadFileReportsCommitEtagAndSize) {
  const std::string commit = Commit();
  auto client = Client(Options());
  auto weights = client->HeadFile(kAcme, "main", kWeights);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->commit, commit);
  EXPECT_EQ(weights->etag, public_->File(kWeights).etag);
  EXPECT_EQ(weights->size, kWeightsSize);
  EXPECT_TRUE(weights->lfs);
  auto config = client->HeadFile(kAcme, commit, "sub/name with spaces #1.txt");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->etag, public_->File("sub/name with spaces #1.txt").etag);
  EXPECT_FALSE(config->lfs);
  EXPECT_THAT(config->location,
              HasSubstr("/resolve/" + commit + "/sub/name%20with%20spaces%20%231.txt"));
  auto missing = client->HeadFile(kAcme, "main", "nope.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope.json"));
}

TEST_F(HubClientTest, DownloadsEveryFileVerified) {
  auto client = Client(Options());
  auto snapshot = client->Resolve(kAcme, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  for (const RepoFile& file : snapshot->files) {
    const std::string dest = Dest(file.etag);
    int64_t progress = 0;
    absl::Status status = client->Download(kAcme, snapshot->commit, file, dest,
                                           [&](int64_t delta) { progress += delta; });
    ASSERT_TRUE(status.ok()) << file.path << ": " << status;
    EXPECT_EQ(ReadFile(dest), public_->files.at(file.path)) << file.path;
    EXPECT_EQ(progress, static_cast<int64_t>(file.size)) << file.path;
  }
  // Small files in one request each, no Range.
  std::vector<json> gets = hub_->Requests("GET", "/config.json", 1);
  ASSERT_EQ(gets.size(), 1u);
  EXPECT_TRUE(gets[0]["range"].is_null());
}

TEST_F(HubClientTest, DownloadsLargeFileInParallelRanges) {
  const std::string commit = Commit();
  HubClientOptions options = Options();
  options.connections = 3;
  options.range_split_bytes = 1 << 20;
  auto client = Client(options);
  const std::string dest = Dest();
  std::atomic<int64_t> progress{0};
  absl::Status status = client->Download(kAcme, commit, public_->File(kWeights), dest,
                                         [&](int64_t delta) { progress += delta; });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at(kWeights));
  EXPECT_EQ(progress.load(), static_cast<int64_t>(kWeightsSize));
  // min(3 connections, ceil(3 MiB + 123 / 1 MiB) = 4) = 3 ranges, bounded, covering the file.
  std::vector<json> gets = hub_->Requests("GET", kWeights, 3);
  ASSERT_EQ(gets.size(), 3u);
  std::vector<std::string> ranges;
  for (const json& get : gets) {
    EXPECT_EQ(get["status"], 206);
    ranges.push_back(get["range"].get<std::string>());
  }
  std::sort(ranges.begin(), ranges.end());
  const uint64_t a = kWeightsSize / 3, b = kWeightsSize * 2 / 3;
  EXPECT_THAT(ranges, ::testing::UnorderedElementsAre(absl::StrCat("bytes=0-", a - 1),
                                                      absl::StrCat("bytes=", a, "-", b - 1),
                                                      absl::StrCat("bytes=", b, "-")));
  EXPECT_EQ(std::distance(fs::directory_iterator(dest_dir_), fs::directory_iterator()), 1)
      << "part files left behind";
}

TEST_F(HubClientTest, ResumesAfterDroppedConnection) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "drop"}, {"path", kWeights}, {"after_bytes", 1000000}, {"times", 1}});
  auto client = Client(Options());
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, public_->File(kWeights), dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at(kWeights));
  std::vector<json> gets = hub_->Requests("GET", kWeights, 2);
  ASSERT_EQ(gets.size(), 2u);
  EXPECT_TRUE(gets[0]["range"].is_null());
  EXPECT_EQ(gets[0]["fault"], "drop");
  // The retry asks for the rest, from where the connection broke.
  const std::string range = gets[1]["range"].get<std::string>();
  ASSERT_TRUE(absl::StartsWith(range, "bytes=") && absl::EndsWith(range, "-")) << range;
  const uint64_t start = std::stoull(range.substr(6));
  EXPECT_GT(start, 0u);
  EXPECT_LE(start, 1000000u);
  EXPECT_EQ(gets[1]["status"], 206);
  ASSERT_EQ(retries_.size(), 1u);
  EXPECT_EQ(retries_[0].first.code(), absl::StatusCode::kUnavailable);
}

TEST_F(HubClientTest, ServerThatAlwaysDropsStillCompletesByResuming) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "drop"}, {"path", kWeights}, {"after_bytes", 1 << 20}, {"times", -1}});
  HubClientOptions options = Options();
  options.retry.max_attempts = 1;  // progress-making attempts do not use up the budget
  auto client = Client(options);
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, public_->File(kWeights), dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at(kWeights));
  EXPECT_EQ(hub_->Requests("GET", kWeights, 4).size(), 4u);
}

TEST_F(HubClientTest, ResumesPartialFileLeftByAKilledProcess) {
  const std::string commit = Commit();
  const std::string dest = Dest();
  const std::string& content = public_->files.at(kWeights);
  const size_t kept = (1 << 20) + 7;
  WriteFile(dest, content.substr(0, kept));
  auto client = Client(Options());
  std::vector<int64_t> deltas;
  absl::Status status = client->Download(kAcme, commit, public_->File(kWeights), dest,
                                         [&](int64_t delta) { deltas.push_back(delta); });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), content);
  ASSERT_FALSE(deltas.empty());
  EXPECT_EQ(deltas[0], static_cast<int64_t>(kept));  // what was there, reported first
  std::vector<json> gets = hub_->Requests("GET", kWeights, 1);
  ASSERT_EQ(gets.size(), 1u);
  EXPECT_EQ(gets[0]["range"], absl::StrCat("bytes=", kept, "-"));
  EXPECT_EQ(gets[0]["bytes"], kWeightsSize - kept);
}

TEST_F(HubClientTest, CompleteFileIsOnlyVerified) {
  const std::string commit = Commit();
  const std::string dest = Dest();
  WriteFile(dest, public_->files.at(kWeights));
  auto client = Client(Options());
  ASSERT_TRUE(client->Download(kAcme, commit, public_->File(kWeights), dest).ok());
  EXPECT_TRUE(hub_->Requests("GET", kWeights).empty());
}

TEST_F(HubClientTest, ParallelRangesResumeAfterAnInterruptedRun) {
  const std::string commit = Commit();
  HubClientOptions options = Options();
  options.connections = 3;
  options.range_split_bytes = 1 << 20;
  auto client = Client(options);
  const std::string dest = Dest();
  // Slow bodies (64 KiB every 50 ms) so the run can be stopped part-way, as a kill would.
  hub_->AddFault({{"kind", "slow"}, {"path", kWeights}, {"delay", 0.05}, {"times", -1}});
  std::atomic<bool> cancelled{false};
  std::atomic<int64_t> first_run{0};
  absl::Status status = client->Download(
      kAcme, commit, public_->File(kWeights), dest,
      [&](int64_t delta) {
        if ((first_run += delta) >= (512 << 10)) {
          cancelled = true;
        }
      },
      &cancelled);
  ASSERT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  // dest holds a prefix of range 0; the other ranges are in their part files.
  const uint64_t a = kWeightsSize / 3, b = kWeightsSize * 2 / 3;
  ASSERT_TRUE(fs::exists(PartFilePath(dest, a)));
  ASSERT_TRUE(fs::exists(PartFilePath(dest, b)));
  const std::string& content = public_->files.at(kWeights);
  const std::string head = ReadFile(dest);
  EXPECT_GT(head.size(), 0u);
  EXPECT_LT(head.size(), a);
  EXPECT_EQ(head, content.substr(0, head.size()));
  const std::string part = ReadFile(PartFilePath(dest, a));
  EXPECT_EQ(part, content.substr(a, part.size()));
  const uint64_t present = head.size() + part.size() + fs::file_size(PartFilePath(dest, b));
  // The abandoned requests end on the server before the log is cleared for the second run.
  ASSERT_EQ(hub_->Requests("GET", kWeights, 3).size(), 3u);

  hub_->Reset();
  std::vector<int64_t> deltas;
  std::mutex deltas_mu;
  status = client->Download(kAcme, commit, public_->File(kWeights), dest, [&](int64_t delta) {
    std::lock_guard<std::mutex> lock(deltas_mu);
    deltas.push_back(delta);
  });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), content);
  EXPECT_FALSE(fs::exists(PartFilePath(dest, a)));
  EXPECT_FALSE(fs::exists(PartFilePath(dest, b)));
  ASSERT_FALSE(deltas.empty());
  EXPECT_EQ(deltas[0], static_cast<int64_t>(present));
  // Only the missing bytes were fetched, each range from where it stopped.
  uint64_t fetched = 0;
  for (const json& get : hub_->Requests("GET", kWeights, 3)) {
    fetched += get["bytes"].get<uint64_t>();
    EXPECT_EQ(get["status"], 206);
  }
  EXPECT_EQ(fetched, kWeightsSize - present);
}

TEST_F(HubClientTest, FlippedByteIsDetectedAndRefetchedOnce) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "flip"}, {"path", kWeights}, {"after_bytes", 12345}, {"times", 1}});
  auto client = Client(Options());
  const std::string dest = Dest();
  int64_t progress = 0;
  absl::Status status = client->Download(kAcme, commit, public_->File(kWeights), dest,
                                         [&](int64_t delta) { progress += delta; });
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at(kWeights));
  EXPECT_EQ(progress, static_cast<int64_t>(kWeightsSize));  // the bad copy was taken back
  std::vector<json> gets = hub_->Requests("GET", kWeights, 2);
  ASSERT_EQ(gets.size(), 2u) << json(gets).dump();
  EXPECT_TRUE(gets[1]["range"].is_null());  // from zero
  ASSERT_EQ(retries_.size(), 1u);
  EXPECT_EQ(retries_[0].first.code(), absl::StatusCode::kDataLoss);
}

TEST_F(HubClientTest, AlwaysFlippedIsDataLoss) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "flip"}, {"path", "config.json"}, {"after_bytes", 3}, {"times", -1}});
  auto client = Client(Options());
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, public_->File("config.json"), dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("config.json"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("acme/public"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("twice"));
  EXPECT_FALSE(fs::exists(dest));  // nothing wrong is left to resume from
  EXPECT_EQ(hub_->Requests("GET", "/config.json", 2).size(), 2u);
}

TEST_F(HubClientTest, ServerErrorsAreRetried) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "status"}, {"path", "config.json"}, {"status", 500}, {"times", 2}});
  hub_->AddFault({{"kind", "status"}, {"route", "api"}, {"status", 502}, {"times", 1}});
  auto client = Client(Options());
  auto snapshot = client->Resolve(kAcme, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, public_->File("config.json"), dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at("config.json"));
  std::vector<json> gets = hub_->Requests("GET", "/config.json", 3);
  ASSERT_EQ(gets.size(), 3u);
  EXPECT_EQ(gets[0]["status"], 500);
  EXPECT_EQ(gets[2]["status"], 200);
  ASSERT_EQ(retries_.size(), 3u);
  EXPECT_THAT(std::string(retries_[0].first.message()), HasSubstr("502"));
  EXPECT_THAT(std::string(retries_[1].first.message()), HasSubstr("500"));
}

TEST_F(HubClientTest, PersistentServerErrorIsUnavailable) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "status"}, {"path", "config.json"}, {"status", 503}, {"times", -1}});
  HubClientOptions options = Options();
  options.retry.max_attempts = 3;
  auto client = Client(options);
  absl::Status status = client->Download(kAcme, commit, public_->File("config.json"), Dest());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr(hub_->endpoint()));
  EXPECT_THAT(std::string(status.message()), HasSubstr("503"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("config.json"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("injected fault"));  // the Hub's message
  EXPECT_EQ(hub_->Requests("GET", "/config.json", 3).size(), 3u);
}

TEST_F(HubClientTest, RateLimitHonoursRetryAfter) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "status"},
                  {"path", "config.json"},
                  {"status", 429},
                  {"retry_after", 1},
                  {"times", 1}});
  hub_->AddFault(
      {{"kind", "status"}, {"route", "api"}, {"status", 429}, {"retry_after", 3600}, {"times", 1}});
  HubClientOptions options = Options();
  options.retry.max_retry_after = absl::Milliseconds(100);  // caps the 3600 s
  auto client = Client(options);
  ASSERT_TRUE(client->Resolve(kAcme, "main").ok());
  options.retry.max_retry_after = absl::Seconds(5);
  client = Client(options);
  absl::Status status = client->Download(kAcme, commit, public_->File("config.json"), Dest());
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_EQ(retries_.size(), 2u);
  EXPECT_EQ(retries_[0].second, absl::Milliseconds(100));
  EXPECT_EQ(retries_[1].second, absl::Seconds(1));  // Retry-After, not the 10 ms backoff
  EXPECT_EQ(retries_[1].first.code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(HubClientTest, PersistentRateLimitIsResourceExhausted) {
  hub_->AddFault(
      {{"kind", "status"}, {"route", "api"}, {"status", 429}, {"retry_after", 7}, {"times", -1}});
  HubClientOptions options = Options();
  options.retry.max_attempts = 2;
  options.retry.max_retry_after = absl::Milliseconds(20);
  auto client = Client(options);
  auto snapshot = client->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("Retry-After: 7 s"));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("acme/public"));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("2 attempts"));
}

TEST_F(HubClientTest, ClientErrorsAreNotRetried) {
  hub_->AddFault({{"kind", "status"}, {"route", "api"}, {"status", 400}, {"times", -1}});
  auto client = Client(Options());
  auto snapshot = client->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("400"));
  EXPECT_TRUE(retries_.empty());
}

TEST_F(HubClientTest, PrivateRepoNeedsAToken) {
  const RepoId repo{"acme", "private"};
  for (const std::string token : {"", "hf_WrongSecret_0000"}) {
    auto client = Client(Options(token));
    auto snapshot = client->Resolve(repo, "main");
    EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kUnauthenticated) << token;
    EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("acme/private"));
    EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("needs a token with access"));
    EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("HF_TOKEN"));
    ExpectNoToken(snapshot.status());
  }
  auto client = Client(Options(kToken));
  auto snapshot = client->Resolve(repo, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_EQ(snapshot->files.size(), 1u);
  const std::string dest = Dest();
  ASSERT_TRUE(client->Download(repo, snapshot->commit, snapshot->files[0], dest).ok());
  EXPECT_EQ(ReadFile(dest), private_->files.at("config.json"));
}

TEST_F(HubClientTest, TokenWithoutAccessIsPermissionDenied) {
  auto client = Client(Options(kNoAccessToken));
  auto snapshot = client->Resolve(RepoId{"acme", "private"}, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("acme/private"));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("no access"));
  ExpectNoToken(snapshot.status());
}

TEST_F(HubClientTest, GatedRepoSaysAccessMustBeRequested) {
  const RepoId repo{"acme", "gated"};
  auto client = Client(Options(kNoAccessToken));
  auto snapshot = client->Resolve(repo, "main");  // listing a gated repo is allowed
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_EQ(snapshot->files.size(), 2u);
  absl::Status status = client->Download(repo, snapshot->commit, snapshot->files[1], Dest());
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(status.message()), HasSubstr("acme/gated is gated"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("request access"));
  ExpectNoToken(status);

  auto anonymous = Client(Options());
  status = anonymous->Download(repo, snapshot->commit, snapshot->files[1], Dest());
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(status.message()), HasSubstr("acme/gated"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("HF_TOKEN"));

  auto allowed = Client(Options(kToken));
  ASSERT_TRUE(allowed->Download(repo, snapshot->commit, snapshot->files[1], Dest()).ok());
  EXPECT_TRUE(retries_.empty());
}

TEST_F(HubClientTest, MissingRepoRevisionAndFileAreNotFound) {
  auto client = Client(Options(kToken));
  auto repo = client->Resolve(RepoId{"acme", "missing"}, "main");
  EXPECT_EQ(repo.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(repo.status().message()), HasSubstr("repo acme/missing not found"));
  ExpectNoToken(repo.status());

  auto revision = client->Resolve(kAcme, "no-such-branch");
  EXPECT_EQ(revision.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(revision.status().message()), HasSubstr("\"no-such-branch\" not found"));

  const std::string commit = Commit();
  RepoFile ghost{"sub/ghost.json", 10, std::string(40, 'a'), false};
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, ghost, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("\"sub/ghost.json\" not found"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("acme/public"));
  ExpectNoToken(status);
  EXPECT_FALSE(fs::exists(dest));  // nothing created for an error answer
  EXPECT_TRUE(retries_.empty());
}

TEST_F(HubClientTest, UnreachableEndpointIsUnavailable) {
  HubClientOptions options = Options();
  options.endpoint = absl::StrCat("http://127.0.0.1:", ClosedPort());
  options.retry.max_attempts = 2;
  auto client = Client(options);
  auto snapshot = client->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr(options.endpoint));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("2 attempts"));
  EXPECT_EQ(retries_.size(), 1u);
}

TEST_F(HubClientTest, StalledTransfersTimeOutAndAreRetried) {
  const std::string commit = Commit();
  // generation_config.json: no other test counts its requests (the stalled one ends late).
  hub_->AddFault(
      {{"kind", "slow"}, {"path", "generation_config.json"}, {"delay", 3}, {"times", 1}});
  hub_->AddFault({{"kind", "slow"},
                  {"route", "api"},
                  {"path", "*/revision/main"},
                  {"delay", 3},
                  {"times", 1}});
  HubClientOptions options = Options();
  options.low_speed_time = absl::Seconds(1);
  options.api_timeout = absl::Milliseconds(500);
  auto client = Client(options);
  ASSERT_TRUE(client->Resolve(kAcme, "main").ok());
  const std::string dest = Dest();
  absl::Status status =
      client->Download(kAcme, commit, public_->File("generation_config.json"), dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at("generation_config.json"));
  ASSERT_EQ(retries_.size(), 2u);
  EXPECT_EQ(retries_[0].first.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(retries_[0].first.message()), HasSubstr("revision \"main\""));
  EXPECT_THAT(std::string(retries_[0].first.message()), HasSubstr("timed out"));
  EXPECT_EQ(retries_[1].first.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(retries_[1].first.message()), HasSubstr("generation_config.json"));
  EXPECT_THAT(std::string(retries_[1].first.message()), HasSubstr("too slow"));
}

TEST_F(HubClientTest, CancelledDownloadStops) {
  const std::string commit = Commit();
  hub_->AddFault({{"kind", "slow"}, {"path", kWeights}, {"delay", 0.05}, {"times", -1}});
  auto client = Client(Options());
  std::atomic<bool> cancelled{true};
  absl::Status status =
      client->Download(kAcme, commit, public_->File(kWeights), Dest(), nullptr, &cancelled);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(status.message()), HasSubstr(kWeights));
}

TEST_F(HubClientTest, ManyDownloadsAtOnceShareTheConnectionBound) {
  const std::string commit = Commit();
  HubClientOptions options = Options();
  options.connections = 2;
  options.range_split_bytes = 1 << 20;
  auto client = Client(options);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(public_->files.size());
  size_t i = 0;
  for (const auto& [path, content] : public_->files) {
    threads.emplace_back([&, i, path = path] {
      results[i] = client->Download(kAcme, commit, public_->File(path), Dest(absl::StrCat(i)));
    });
    ++i;
  }
  for (std::thread& t : threads) t.join();
  i = 0;
  for (const auto& [path, content] : public_->files) {
    EXPECT_TRUE(results[i].ok()) << path << ": " << results[i];
    EXPECT_EQ(ReadFile(Dest(absl::StrCat(i))), content) << path;
    ++i;
  }
}

TEST_F(HubClientTest, FollowsCdnRedirects) {
  auto cdn_hub = HubServer::Start(
      {"--repo", "acme/public=" + public_->dir, "--cdn-redirect", "--token", kToken});
  ASSERT_NE(cdn_hub, nullptr);
  HubClientOptions options = Options(kToken);
  options.endpoint = cdn_hub->endpoint();
  options.connections = 2;
  options.range_split_bytes = 1 << 20;
  auto client = Client(options);
  auto snapshot = client->Resolve(kAcme, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  const std::string dest = Dest();
  ASSERT_TRUE(client->Download(kAcme, snapshot->commit, public_->File(kWeights), dest).ok());
  EXPECT_EQ(ReadFile(dest), public_->files.at(kWeights));
  const std::string sha256 = public_->File(kWeights).etag;
  std::vector<json> cdn = cdn_hub->Requests("GET", "/cdn/" + sha256, 2);
  EXPECT_EQ(cdn.size(), 2u);  // one per range, each with its Range kept across the redirect
  for (const json& get : cdn) EXPECT_EQ(get["status"], 206);

  auto head = client->HeadFile(kAcme, "main", kWeights);
  ASSERT_TRUE(head.ok()) << head.status();
  EXPECT_EQ(head->etag, sha256);
  EXPECT_EQ(head->size, kWeightsSize);
  EXPECT_EQ(head->commit, snapshot->commit);
}

TEST_F(HubClientTest, AuthorizationIsDroppedWhenARedirectLeavesTheHost) {
  const std::string commit = Commit();
  const std::string target = hub_->endpoint();
  LocalServer front;  // another port: another origin
  std::atomic<int> authorized{0};
  front.server().Get(".*", [&](const httplib::Request& request, httplib::Response& response) {
    if (request.has_header("Authorization")) ++authorized;
    response.status = 302;
    response.set_header("Location", target + request.path);
  });
  HubClientOptions options = Options(kToken);
  options.endpoint = front.endpoint();
  auto client = Client(options);
  const std::string dest = Dest();
  absl::Status status = client->Download(kAcme, commit, public_->File("config.json"), dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), public_->files.at("config.json"));
  EXPECT_EQ(authorized.load(), 1);  // sent to the endpoint
  std::vector<json> gets = hub_->Requests("GET", "/config.json", 1);
  ASSERT_EQ(gets.size(), 1u);
  EXPECT_EQ(gets[0]["auth"], false);  // not to the other host
}

// --- Against in-test servers: what the test Hub never sends ---

TEST(HubClientListingTest, HostileListingIsRefusedAndRelativeLinksAreFollowed) {
  const std::string commit(40, 'd');
  const std::string sha1(40, 'a');
  LocalServer hub;
  std::atomic<bool> hostile{false};
  hub.server().Get("/api/models/acme/public/revision/main",
                   [&](const httplib::Request&, httplib::Response& response) {
                     response.set_content(json{{"sha", commit}}.dump(), "application/json");
                   });
  hub.server().Get("/api/models/acme/public/tree/" + commit, [&](const httplib::Request& request,
                                                                 httplib::Response& response) {
    json page;
    if (!request.has_param("cursor")) {
      page = json::array({{{"type", "file"}, {"oid", sha1}, {"size", 1}, {"path", "config.json"}}});
      response.set_header("Link", "</api/models/acme/public/tree/" + commit +
                                      "?recursive=true&cursor=2>; rel=\"next\"");
    } else {
      page = json::array({{{"type", "file"},
                           {"oid", sha1},
                           {"size", 1},
                           {"path", hostile ? "../../etc/passwd" : "b.json"}}});
    }
    response.set_content(page.dump(), "application/json");
  });
  HubClientOptions options;
  options.endpoint = hub.endpoint();
  auto client = HubClient::Create(options);
  ASSERT_TRUE(client.ok());
  auto snapshot = (*client)->Resolve(kAcme, "main");
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(snapshot->commit, commit);
  ASSERT_EQ(snapshot->files.size(), 2u);
  EXPECT_EQ(snapshot->files[1].path, "config.json");

  hostile = true;
  snapshot = (*client)->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("\"../../etc/passwd\""));
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("acme/public"));
}

TEST(HubClientListingTest, MalformedCommitAndEndlessPagesAreRefused) {
  LocalServer hub;
  std::atomic<bool> bad_sha{true};
  const std::string commit(40, 'e');
  hub.server().Get("/api/models/acme/public/revision/main", [&](const httplib::Request&,
                                                                httplib::Response& response) {
    response.set_content(json{{"sha", bad_sha ? "../../x" : commit}}.dump(), "application/json");
  });
  hub.server().Get("/api/models/acme/public/tree/" + commit,
                   [&](const httplib::Request&, httplib::Response& response) {
                     response.set_header("Link", "</api/models/acme/public/tree/" + commit +
                                                     "?recursive=true>; rel=\"next\"");
                     response.set_content("[]", "application/json");
                   });
  HubClientOptions options;
  options.endpoint = hub.endpoint();
  auto client = HubClient::Create(options);
  ASSERT_TRUE(client.ok());
  auto snapshot = (*client)->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("no valid commit"));
  bad_sha = false;
  snapshot = (*client)->Resolve(kAcme, "main");
  EXPECT_EQ(snapshot.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(snapshot.status().message()), HasSubstr("links to itself"));
}

TEST(HubClientRangeTest, ServerIgnoringRangeIsSkippedNotAppended) {
  const std::string content = RandomBytes(1000, 4);
  CannedServer server([&](const std::string&) {
    return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
                        content);
  });
  HubClientOptions options;
  options.endpoint = server.endpoint();
  auto client = HubClient::Create(options);
  ASSERT_TRUE(client.ok());
  const std::string dest = MakeTempDir("ignored_range") + "/f.bin.incomplete";
  WriteFile(dest, content.substr(0, 100));
  const RepoFile file{"f.bin", 1000, GitBlobSha1Hex(content), false};
  absl::Status status = (*client)->Download(kAcme, std::string(40, 'c'), file, dest);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(ReadFile(dest), content);
  ASSERT_EQ(server.heads().size(), 1u);
  EXPECT_THAT(server.heads()[0], HasSubstr("Range: bytes=100-"));
  EXPECT_THAT(server.heads()[0],
              HasSubstr("GET /acme/public/resolve/" + std::string(40, 'c') + "/f.bin HTTP/1.1"));
}

TEST(HubClientRangeTest, ContentRangeOfAnotherSizeIsRefused) {
  CannedServer server([&](const std::string&) {
    return std::string(
               "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-999/2000\r\n"
               "Content-Length: 900\r\nConnection: close\r\n\r\n") +
           std::string(900, 'x');
  });
  HubClientOptions options;
  options.endpoint = server.endpoint();
  auto client = HubClient::Create(options);
  ASSERT_TRUE(client.ok());
  const std::string dest = MakeTempDir("bad_range") + "/f.bin.incomplete";
  WriteFile(dest, std::string(100, 'x'));
  const RepoFile file{"f.bin", 1000, std::string(40, 'a'), false};
  absl::Status status = (*client)->Download(kAcme, std::string(40, 'c'), file, dest);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("2000 bytes but the listing says 1000"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("f.bin"));
  EXPECT_EQ(ReadFile(dest), std::string(100, 'x'));  // kept for a later attempt
}

}  // namespace
}  // namespace shardserve::hub
