#include "hub_sync/mirror.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/http_server.h"
#include "common/json.h"
#include "common/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "hub_sync/cache.h"
#include "hub_sync/repo.h"
#include "tests/integration/subprocess.h"

namespace shardserve::hub {
namespace {

using ::shardserve::testing::FindOnPath;

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

constexpr char kRepo[] = "acme/tiny-model";
constexpr char kCommit[] = "4f1b0cf1a6b4cbd86d3dfd2c27e3e0e1f2a3b4c5";    // refs/main
constexpr char kPrCommit[] = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807";  // refs/pr/1
constexpr char kLfsPath[] = "weights/model.safetensors";

std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr && *base ? base : "/tmp", "/mirror_test_XXXXXX");
  char* made = ::mkdtemp(pattern.data());
  return made == nullptr ? "" : std::string(made);
}

void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

// One commit of the fixture repository: repo path -> content.
using Files = std::map<std::string, std::string>;

Files MainFiles() {
  std::mt19937 rng(5);
  std::string weights(600 * 1024 + 13, '\0');  // > 2 of the mirror's 256 KiB read chunks
  for (char& c : weights) c = static_cast<char>(rng() & 0xff);
  return {{"config.json", "{\"model_type\": \"llama\", \"hidden_size\": 576}\n"},
          {"tokenizer_config.json", "{\"bos_token\": \"<s>\"}\n"},
          {"sub/dir/nested.txt", "nested file\n"},
          {"sub/dir.txt", "dir.txt\n"},
          {"sub/readme.md", "# sub\n"},
          {kLfsPath, weights},
          {"empty.txt", ""}};
}

Files PrFiles() {
  return {{"config.json", "{\"model_type\": \"llama\", \"hidden_size\": 960}\n"},
          {"README.md", "pull request 1\n"}};
}

RepoFile FileOf(const std::string& path, const std::string& content) {
  const bool lfs = path == kLfsPath;
  return RepoFile{path, content.size(), lfs ? Sha256Hex(content) : GitBlobSha1Hex(content), lfs};
}

class MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    ASSERT_FALSE(dir_.empty());
    absl::StatusOr<HubCache> cache = HubCache::Open(dir_ + "/cache");
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::make_unique<HubCache>(*std::move(cache));
    repo_ = *ParseRepoId(kRepo);
    main_ = MainFiles();
    pr_ = PrFiles();
    AddCommit(kCommit, "main", main_, dir_ + "/src/main");
    AddCommit(kPrCommit, "refs/pr/1", pr_, dir_ + "/src/pr");
    ASSERT_TRUE(cache_->MarkMissing(repo_, kCommit, "known_missing.json").ok());
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  // Writes `files` under `source` and into the cache as commit `commit`, named by `ref`.
  void AddCommit(const std::string& commit, const std::string& ref, const Files& files,
                 const std::string& source) {
    RepoSnapshot snapshot{repo_, ref, commit, {}};
    for (const auto& [path, content] : files) {
      WriteFile(absl::StrCat(source, "/", path), content);
      RepoFile file = FileOf(path, content);
      absl::Status added = cache_->AddBlobFromFile(repo_, file, absl::StrCat(source, "/", path));
      ASSERT_TRUE(added.ok()) << added;
      snapshot.files.push_back(file);
    }
    ASSERT_TRUE(cache_->LinkSnapshot(snapshot).ok());
    ASSERT_TRUE(cache_->WriteRef(repo_, ref, commit).ok());
  }

  void StartMirror(MirrorOptions options = {}) {
    server_ = std::make_unique<HttpServer>();
    AddMirrorRoutes(server_.get(), cache_.get(), std::move(options));
    ASSERT_TRUE(server_->Start("127.0.0.1:0").ok());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_url_encode(false);  // requests go out exactly as written
    client_->set_decompress(false);
  }

  std::string Endpoint() const { return absl::StrCat("http://127.0.0.1:", server_->port()); }

  httplib::Result Get(const std::string& path, httplib::Headers headers = {}) {
    return client_->Get(path, headers);
  }
  httplib::Result Head(const std::string& path) { return client_->Head(path); }

  static std::string Resolve(const std::string& revision, const std::string& path) {
    return absl::StrCat("/", kRepo, "/resolve/", revision, "/", path);
  }

  std::string dir_;
  std::unique_ptr<HubCache> cache_;
  RepoId repo_;
  Files main_;
  Files pr_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

void ExpectHubError(const httplib::Result& r, int status, const std::string& code) {
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, status) << r->body;
  EXPECT_EQ(r->get_header_value("X-Error-Code"), code) << r->body;
  if (r->body.empty() && r->has_header("X-Error-Message")) return;  // HEAD: headers only
  absl::StatusOr<json> body = ParseJson(r->body, "error body");
  ASSERT_TRUE(body.ok()) << r->body;
  EXPECT_TRUE(body->contains("error") && (*body)["error"].is_string()) << r->body;
}

TEST_F(MirrorTest, HeadCarriesTheHubsHeaders) {
  StartMirror();
  for (const auto& [path, content] : main_) {
    SCOPED_TRACE(path);
    httplib::Result r = Head(Resolve("main", path));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    const std::string etag = path == kLfsPath ? Sha256Hex(content) : GitBlobSha1Hex(content);
    EXPECT_EQ(etag.size(), path == kLfsPath ? 64u : 40u);
    EXPECT_EQ(r->get_header_value("X-Repo-Commit"), kCommit);
    EXPECT_EQ(r->get_header_value("ETag"), absl::StrCat("\"", etag, "\""));
    EXPECT_EQ(r->get_header_value("X-Linked-Etag"), absl::StrCat("\"", etag, "\""));
    EXPECT_EQ(r->get_header_value("X-Linked-Size"), absl::StrCat(content.size()));
    EXPECT_EQ(r->get_header_value("Content-Length"), absl::StrCat(content.size()));
    EXPECT_EQ(r->get_header_value_count("Content-Length"), 1u);
    EXPECT_EQ(r->get_header_value("Accept-Ranges"), "bytes");
    EXPECT_EQ(r->get_header_value_count("Accept-Ranges"), 1u);
    EXPECT_FALSE(r->has_header("Content-Encoding"));
    EXPECT_FALSE(r->has_header("X-Xet-Hash"));
    EXPECT_FALSE(r->has_header("Transfer-Encoding"));
    EXPECT_TRUE(r->body.empty());
  }
  // The git blob sha1 of the empty file, as git computes it.
  EXPECT_EQ(Head(Resolve("main", "empty.txt"))->get_header_value("X-Linked-Etag"),
            "\"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391\"");
}

TEST_F(MirrorTest, GetServesEveryFileByBranchAndCommit) {
  StartMirror();
  for (const std::string revision : {"main", kCommit}) {
    for (const auto& [path, content] : main_) {
      SCOPED_TRACE(absl::StrCat(revision, " ", path));
      // A client that accepts gzip still gets the bytes as stored.
      httplib::Result r = Get(Resolve(revision, path), {{"Accept-Encoding", "gzip, br"}});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, 200);
      EXPECT_EQ(r->body, content);
      EXPECT_EQ(r->get_header_value("Content-Length"), absl::StrCat(content.size()));
      EXPECT_FALSE(r->has_header("Content-Encoding"));
      EXPECT_EQ(r->get_header_value("X-Repo-Commit"), kCommit);
    }
  }
}

TEST_F(MirrorTest, EncodedRevisionAndPathSegments) {
  StartMirror();
  httplib::Result r = Get(Resolve("refs%2Fpr%2F1", "config.json"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, pr_["config.json"]);
  EXPECT_EQ(r->get_header_value("X-Repo-Commit"), kPrCommit);
  // '/' encoded inside the file path is still a folder separator of the repo path.
  r = Get(Resolve("main", "sub%2Fdir%2Fnested.txt"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, main_["sub/dir/nested.txt"]);
}

TEST_F(MirrorTest, RangesAnswer206WithContentRange) {
  StartMirror();
  const std::string& data = main_[kLfsPath];
  const uint64_t size = data.size();
  struct Case {
    std::string range;
    uint64_t first, last;
  };
  const std::vector<Case> cases = {
      {"bytes=100-", 100, size - 1},
      {"bytes=10-19", 10, 19},
      {"bytes=-50", size - 50, size - 1},
      {"bytes=200000-500000", 200000, 500000},  // crosses read chunks
      {"bytes=0-99999999", 0, size - 1},        // clipped to the end
      {"bytes=-99999999", 0, size - 1},         // suffix longer than the file
      {absl::StrCat("bytes=", size - 1, "-"), size - 1, size - 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.range);
    httplib::Result r = Get(Resolve("main", kLfsPath), {{"Range", c.range}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 206);
    EXPECT_EQ(r->body, data.substr(c.first, c.last - c.first + 1));
    EXPECT_EQ(r->get_header_value("Content-Range"),
              absl::StrCat("bytes ", c.first, "-", c.last, "/", size));
    EXPECT_EQ(r->get_header_value("Content-Length"), absl::StrCat(c.last - c.first + 1));
    EXPECT_EQ(r->get_header_value("X-Linked-Size"), absl::StrCat(size));
  }
}

TEST_F(MirrorTest, UnsatisfiableRangesAnswer416) {
  StartMirror();
  const uint64_t size = main_[kLfsPath].size();
  for (const std::string& range :
       {absl::StrCat("bytes=", size, "-"), absl::StrCat("bytes=", size + 1000, "-", size + 2000),
        std::string("bytes=-0")}) {
    SCOPED_TRACE(range);
    httplib::Result r = Get(Resolve("main", kLfsPath), {{"Range", range}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 416);
    EXPECT_EQ(r->get_header_value("Content-Range"), absl::StrCat("bytes */", size));
    EXPECT_THAT(r->body, Not(HasSubstr(main_[kLfsPath].substr(0, 16))));
  }
  // Numbers beyond 64 bits: refused, and the server still serves.
  httplib::Result huge =
      Get(Resolve("main", kLfsPath), {{"Range", "bytes=99999999999999999999999999-"}});
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 416);
  // Every range of an empty file is unsatisfiable.
  httplib::Result r = Get(Resolve("main", "empty.txt"), {{"Range", "bytes=0-"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 416);
  EXPECT_EQ(r->get_header_value("Content-Range"), "bytes */0");
}

TEST_F(MirrorTest, IgnoredRangesServeTheWholeFile) {
  StartMirror();
  // Multiple ranges are not served piecewise: the whole file, 200. (A Range header that
  // cpp-httplib cannot parse, e.g. "items=0-5", gets its bare 416 before any handler runs.)
  for (const char* range : {"bytes=0-1,5-6", "bytes=0-1, 2-3"}) {
    SCOPED_TRACE(range);
    httplib::Result r = Get(Resolve("main", "config.json"), {{"Range", range}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, main_["config.json"]);
    EXPECT_FALSE(r->has_header("Content-Range"));
  }
}

TEST_F(MirrorTest, MissingRepoRevisionAndFileAreHubErrors) {
  StartMirror();
  ExpectHubError(Head("/acme/no-such-model/resolve/main/config.json"), 404, "RepoNotFound");
  ExpectHubError(Get("/acme/no-such-model/resolve/main/config.json"), 404, "RepoNotFound");
  ExpectHubError(Get("/api/models/acme/no-such-model/revision/main"), 404, "RepoNotFound");
  ExpectHubError(Get("/api/models/acme/no-such-model/tree/main"), 404, "RepoNotFound");
  ExpectHubError(Get(Resolve("no-such-branch", "config.json")), 404, "RevisionNotFound");
  ExpectHubError(Get(Resolve("0000000000000000000000000000000000000000", "config.json")), 404,
                 "RevisionNotFound");
  ExpectHubError(Get(absl::StrCat("/api/models/", kRepo, "/revision/v9")), 404, "RevisionNotFound");
  for (const std::string path :
       {"no_such_file.json", "sub/none.txt", "known_missing.json", "sub/dir"}) {
    SCOPED_TRACE(path);
    httplib::Result r = Get(Resolve("main", path));
    ExpectHubError(r, 404, "EntryNotFound");
    EXPECT_EQ(r->get_header_value("X-Repo-Commit"), kCommit);
  }
  ExpectHubError(Get(absl::StrCat("/api/models/", kRepo, "/tree/main/nowhere")), 404,
                 "EntryNotFound");
}

TEST_F(MirrorTest, TraversalAttemptsNeverReadOutsideTheCache) {
  // A file the mirror must never serve, beside the cache.
  const std::string secret = "TOP-SECRET-BYTES";
  WriteFile(dir_ + "/secret.txt", secret);
  StartMirror();
  const std::vector<std::string> targets = {
      Resolve("main", "../../../../secret.txt"),
      Resolve("main", "sub/../../../secret.txt"),
      Resolve("main", "%2e%2e/%2e%2e/%2e%2e/%2e%2e/secret.txt"),
      Resolve("main", "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fsecret.txt"),
      Resolve("main", "..%2f..%2f..%2f..%2fsecret.txt"),
      Resolve("..%2F..%2F..%2F..", "secret.txt"),
      Resolve("main", "/etc/passwd"),
      Resolve("main", "%2Fetc%2Fpasswd"),
      Resolve("main", "config.json%00.txt"),
      Resolve("main", "config.json%0a"),
      Resolve("main", "bad%zzescape"),
      Resolve("main", "a//b"),
      "/..%2F..%2Fsecret/x/resolve/main/config.json",
      "/acme/..%2F..%2F../resolve/main/secret.txt",
      absl::StrCat("/api/models/", kRepo, "/tree/main/..%2F..%2F.."),
      absl::StrCat("/api/models/", kRepo, "/revision/..%2F..%2Fsecret.txt"),
  };
  for (const std::string& target : targets) {
    SCOPED_TRACE(target);
    httplib::Result r = Get(target);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->status == 400 || r->status == 404) << r->status;
    EXPECT_THAT(r->body, Not(HasSubstr(secret)));
    EXPECT_THAT(r->body, Not(HasSubstr("root:")));
  }
  // Links the mirror did not write: one pointing outside under a valid etag name, one naming the
  // secret, and a blob that is itself a symlink. Each is served as missing.
  const std::string outside_etag(64, 'a');
  WriteFile(dir_ + "/elsewhere/" + outside_etag, secret);
  const std::string snapshot = cache_->SnapshotDir(repo_, kCommit);
  ASSERT_EQ(
      ::symlink((dir_ + "/elsewhere/" + outside_etag).c_str(), (snapshot + "/outside.bin").c_str()),
      0);
  ASSERT_EQ(::symlink((dir_ + "/secret.txt").c_str(), (snapshot + "/secret.txt").c_str()), 0);
  const std::string linked_etag(64, 'b');
  ASSERT_EQ(::symlink((dir_ + "/secret.txt").c_str(), cache_->BlobPath(repo_, linked_etag).c_str()),
            0);
  ASSERT_EQ(::symlink(("../../blobs/" + linked_etag).c_str(), (snapshot + "/linked.bin").c_str()),
            0);
  for (const std::string path : {"outside.bin", "secret.txt", "linked.bin"}) {
    SCOPED_TRACE(path);
    httplib::Result r = Get(Resolve("main", path));
    ExpectHubError(r, 404, "EntryNotFound");
    EXPECT_THAT(r->body, Not(HasSubstr(secret)));
  }
}

TEST_F(MirrorTest, OverlongTargetsAreRefused) {
  StartMirror();
  for (size_t n : {300u, 5000u, 8000u, 100000u}) {
    SCOPED_TRACE(n);
    httplib::Client client("127.0.0.1", server_->port());
    httplib::Result r = client.Get(Resolve("main", std::string(n, 'a')));
    if (r) {  // a target past httplib's limit may get no answer at all
      EXPECT_TRUE(r->status == 400 || r->status == 404 || r->status == 414) << r->status;
    }
  }
  httplib::Result r = Get(Resolve("main", "config.json"));  // still serving
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, main_["config.json"]);
}

TEST_F(MirrorTest, OnlyGetAndHeadAreAllowed) {
  StartMirror();
  for (const std::string& target :
       {Resolve("main", "config.json"), absl::StrCat("/api/models/", kRepo, "/revision/main")}) {
    SCOPED_TRACE(target);
    httplib::Result put = client_->Put(target, "x", "text/plain");
    httplib::Result post = client_->Post(target, "x", "text/plain");
    httplib::Result del = client_->Delete(target);
    for (const httplib::Result* r : {&put, &post, &del}) {
      ASSERT_TRUE(*r);
      EXPECT_EQ((*r)->status, 405);
      EXPECT_EQ((*r)->get_header_value("Allow"), "GET, HEAD");
    }
  }
  httplib::Result r = Get(Resolve("main", "config.json"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->body, main_["config.json"]);
}

TEST_F(MirrorTest, RevisionInfoListsSiblings) {
  StartMirror();
  httplib::Result r = Get(absl::StrCat("/api/models/", kRepo, "/revision/main?blobs=true"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  absl::StatusOr<json> info = ParseJson(r->body, "revision info");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ((*info)["id"], kRepo);
  EXPECT_EQ((*info)["sha"], kCommit);
  ASSERT_EQ((*info)["siblings"].size(), main_.size());
  for (const json& s : (*info)["siblings"]) {
    const std::string path = s["rfilename"];
    ASSERT_TRUE(main_.count(path)) << path;
    const std::string& content = main_[path];
    EXPECT_EQ(s["size"], content.size());
    if (path == kLfsPath) {
      const std::string pointer = LfsPointerText(Sha256Hex(content), content.size());
      EXPECT_EQ(s["blobId"], GitBlobSha1Hex(pointer));
      EXPECT_EQ(s["lfs"]["sha256"], Sha256Hex(content));
      EXPECT_EQ(s["lfs"]["size"], content.size());
      EXPECT_EQ(s["lfs"]["pointerSize"], pointer.size());
    } else {
      EXPECT_EQ(s["blobId"], GitBlobSha1Hex(content));
      EXPECT_FALSE(s.contains("lfs"));
    }
  }
  // Without blobs=true: names only. A ref in one encoded segment; the model route is "main".
  r = Get(absl::StrCat("/api/models/", kRepo, "/revision/refs%2Fpr%2F1"));
  ASSERT_TRUE(r);
  info = ParseJson(r->body, "revision info");
  ASSERT_TRUE(info.ok()) << r->body;
  EXPECT_EQ((*info)["sha"], kPrCommit);
  EXPECT_EQ((*info)["siblings"], json::parse(R"([{"rfilename": "README.md"},
                                                 {"rfilename": "config.json"}])"));
  r = Get(absl::StrCat("/api/models/", kRepo));
  ASSERT_TRUE(r);
  info = ParseJson(r->body, "model info");
  ASSERT_TRUE(info.ok()) << r->body;
  EXPECT_EQ((*info)["sha"], kCommit);
  // The pointer format git-lfs writes (134 bytes for a 9-digit size, as the Hub reports).
  EXPECT_EQ(LfsPointerText(std::string(64, 'f'), 497764107).size(), 134u);
}

// Reads every page of a tree listing, following Link rel="next".
std::vector<json> ReadTree(httplib::Client* client, const std::string& endpoint, std::string target,
                           int* pages) {
  std::vector<json> entries;
  *pages = 0;
  for (;;) {
    httplib::Result r = client->Get(target);
    if (!r || r->status != 200) {
      ADD_FAILURE() << target << ": " << (r ? r->body : httplib::to_string(r.error()));
      return entries;
    }
    ++*pages;
    absl::StatusOr<json> page = ParseJson(r->body, "tree page");
    EXPECT_TRUE(page.ok() && page->is_array()) << r->body;
    if (!page.ok()) return entries;
    for (json& e : *page) entries.push_back(std::move(e));
    const std::string link = r->get_header_value("Link");
    if (link.empty()) return entries;
    const size_t open = link.find('<');
    const size_t close = link.find('>');
    EXPECT_THAT(link, HasSubstr("rel=\"next\""));
    std::string next = link.substr(open + 1, close - open - 1);
    EXPECT_EQ(next.rfind(endpoint, 0), 0u) << next;  // absolute, on this mirror
    target = next.substr(endpoint.size());
    if (*pages > 100) return entries;
  }
}

TEST_F(MirrorTest, TreeListsFilesAndFoldersWithGitOids) {
  StartMirror();
  int pages = 0;
  std::vector<json> entries =
      ReadTree(client_.get(), Endpoint(),
               absl::StrCat("/api/models/", kRepo, "/tree/main?recursive=true"), &pages);
  EXPECT_EQ(pages, 1);
  std::map<std::string, json> by_path;
  for (const json& e : entries) by_path[e["path"]] = e;
  ASSERT_EQ(by_path.size(), main_.size() + 3) << DumpJson(entries);  // + sub, sub/dir, weights
  for (const auto& [path, content] : main_) {
    SCOPED_TRACE(path);
    const json& e = by_path[path];
    EXPECT_EQ(e["type"], "file");
    EXPECT_EQ(e["size"], content.size());
    if (path == kLfsPath) {
      EXPECT_EQ(e["lfs"]["oid"], Sha256Hex(content));
      EXPECT_EQ(e["lfs"]["size"], content.size());
      EXPECT_EQ(e["oid"], GitBlobSha1Hex(LfsPointerText(Sha256Hex(content), content.size())));
    } else {
      EXPECT_EQ(e["oid"], GitBlobSha1Hex(content));
    }
  }
  // Folder oids as git computes them (`git mktree` over the same blobs; "dir.txt" sorts before
  // the folder "dir" in git's order).
  EXPECT_EQ(by_path["sub/dir"]["type"], "directory");
  EXPECT_EQ(by_path["sub/dir"]["oid"], "ffd768cc02140d4a0d756f1b46c8834fe658a0fd");
  EXPECT_EQ(by_path["sub"]["oid"], "4c08fec1986a36c22537d1500dc02a0b982413b8");
  EXPECT_EQ(by_path["weights"]["type"], "directory");

  // Not recursive: direct children only; a sub-folder given as one encoded segment.
  entries = ReadTree(client_.get(), Endpoint(),
                     absl::StrCat("/api/models/", kRepo, "/tree/", kCommit, "/sub"), &pages);
  std::vector<std::string> paths;
  for (const json& e : entries) paths.push_back(e["path"]);
  EXPECT_THAT(paths, ::testing::UnorderedElementsAre("sub/dir", "sub/dir.txt", "sub/readme.md"));
  entries = ReadTree(client_.get(), Endpoint(),
                     absl::StrCat("/api/models/", kRepo, "/tree/main/sub%2Fdir"), &pages);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0]["path"], "sub/dir/nested.txt");
}

TEST_F(MirrorTest, TreeListingsPaginateWithLinkHeaders) {
  MirrorOptions options;
  options.tree_page_size = 3;
  StartMirror(std::move(options));
  int pages = 0;
  std::vector<json> entries =
      ReadTree(client_.get(), Endpoint(),
               absl::StrCat("/api/models/", kRepo, "/tree/main?recursive=true"), &pages);
  EXPECT_EQ(pages, 4);  // 10 entries, 3 a page
  std::vector<std::string> paths;
  for (const json& e : entries) paths.push_back(e["path"]);
  EXPECT_EQ(paths.size(), main_.size() + 3);
  EXPECT_THAT(paths, ::testing::Contains("sub/dir/nested.txt"));
  EXPECT_THAT(paths, ::testing::Contains("weights"));
  ExpectHubError(Get(absl::StrCat("/api/models/", kRepo, "/tree/main?cursor=x")), 400, "");
}

TEST_F(MirrorTest, PullThroughFetchesAMissingFileOnce) {
  struct Call {
    std::string repo, revision, path;
  };
  auto calls = std::make_shared<std::vector<Call>>();
  const std::string extra = "{\"pulled\": true}\n";
  WriteFile(dir_ + "/upstream/extra.json", extra);
  MirrorOptions options;
  HubCache* cache = cache_.get();
  const std::string upstream = dir_ + "/upstream/extra.json";
  options.fetch_missing = [calls, cache, extra, upstream](const RepoId& repo,
                                                          absl::string_view revision,
                                                          absl::string_view path) -> absl::Status {
    calls->push_back({repo.ToString(), std::string(revision), std::string(path)});
    if (repo.name == "gated-model") return absl::PermissionDeniedError("gated: ask for access");
    if (repo.name != "tiny-model") return absl::NotFoundError("upstream: no such repository");
    if (revision == "v2") return cache->WriteRef(repo, "v2", kPrCommit);
    if (path != "extra.json") return absl::OkStatus();  // fetched nothing: still missing
    RepoFile file = FileOf("extra.json", extra);
    absl::Status added = cache->AddBlobFromFile(repo, file, upstream);
    if (!added.ok()) return added;
    return cache->LinkSnapshot(RepoSnapshot{repo, std::string(revision), kCommit, {file}});
  };
  MetricsRegistry metrics;
  options.metrics = &metrics;
  StartMirror(std::move(options));

  httplib::Result head = Head(Resolve("main", "extra.json"));  // as hf_hub_download: HEAD, GET
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->get_header_value("X-Linked-Etag"),
            absl::StrCat("\"", GitBlobSha1Hex(extra), "\""));
  for (int i = 0; i < 2; ++i) {
    httplib::Result r = Get(Resolve("main", "extra.json"));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, extra);
  }
  ASSERT_EQ(calls->size(), 1u);
  EXPECT_EQ((*calls)[0].repo, kRepo);
  EXPECT_EQ((*calls)[0].revision, kCommit);  // the resolved commit: the snapshot being served
  EXPECT_EQ((*calls)[0].path, "extra.json");

  // Cached files and files known missing (.no_exist) never call out.
  EXPECT_EQ(Get(Resolve("main", "config.json"))->status, 200);
  ExpectHubError(Get(Resolve("main", "known_missing.json")), 404, "EntryNotFound");
  EXPECT_EQ(calls->size(), 1u);

  // Fetched nothing: still EntryNotFound. A revision pulled through, then served.
  ExpectHubError(Get(Resolve("main", "nothing.json")), 404, "EntryNotFound");
  httplib::Result v2 = Get(Resolve("v2", "config.json"));
  ASSERT_TRUE(v2);
  EXPECT_EQ(v2->status, 200);
  EXPECT_EQ(v2->body, pr_["config.json"]);
  EXPECT_EQ(calls->back().revision, "v2");

  // Upstream errors become the Hub's.
  ExpectHubError(Get("/acme/other-model/resolve/main/config.json"), 404, "RepoNotFound");
  ExpectHubError(Get("/api/models/acme/other-model/revision/main"), 404, "RepoNotFound");
  EXPECT_EQ(calls->back().path, "");  // API routes ask for the whole revision
  ExpectHubError(Get("/acme/gated-model/resolve/main/config.json"), 403, "GatedRepo");

  const std::string text = metrics.Render();
  EXPECT_THAT(text, HasSubstr("shardserve_mirror_requests_total{route=\"resolve\",code=\"200\"}"));
  EXPECT_THAT(text, HasSubstr("shardserve_mirror_requests_total{route=\"resolve\",code=\"404\"}"));
  EXPECT_THAT(text, HasSubstr("shardserve_mirror_pull_through_total{result=\"ok\"}"));
  EXPECT_THAT(text, HasSubstr("shardserve_mirror_bytes_sent_total"));
}

TEST_F(MirrorTest, ConcurrentDownloadsAreComplete) {
  StartMirror();
  const std::string& data = main_[kLfsPath];
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      httplib::Client client("127.0.0.1", server_->port());
      const uint64_t first = static_cast<uint64_t>(t) * 50000;
      httplib::Result r = t % 2 == 0 ? client.Get(Resolve("main", kLfsPath))
                                     : client.Get(Resolve("main", kLfsPath),
                                                  {{"Range", absl::StrCat("bytes=", first, "-")}});
      if (r && (t % 2 == 0 ? r->body == data : r->body == data.substr(first))) ++good;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(good.load(), 8);
}

TEST_F(MirrorTest, LargeBlobRangesPastFourGiB) {
  // A sparse 5 GiB blob, linked as the cache would link it: sizes and offsets are 64-bit and
  // nothing reads the whole file (the test would take minutes and 5 GiB of memory otherwise).
  const uint64_t size = (5ull << 30) + 3;
  const std::string etag(64, 'c');
  const std::string blob = cache_->BlobPath(repo_, etag);
  const int fd = ::open(blob.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ASSERT_EQ(::pwrite(fd, "END", 3, static_cast<off_t>(size - 3)), 3);
  ::close(fd);
  ASSERT_EQ(::symlink(("../../blobs/" + etag).c_str(),
                      (cache_->SnapshotDir(repo_, kCommit) + "/huge.bin").c_str()),
            0);
  StartMirror();
  httplib::Result head = Head(Resolve("main", "huge.bin"));
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->get_header_value("X-Linked-Size"), absl::StrCat(size));
  EXPECT_EQ(head->get_header_value("Content-Length"), absl::StrCat(size));
  httplib::Result tail = Get(Resolve("main", "huge.bin"), {{"Range", "bytes=-5"}});
  ASSERT_TRUE(tail);
  EXPECT_EQ(tail->status, 206);
  EXPECT_EQ(tail->body, std::string("\0\0END", 5));
  EXPECT_EQ(tail->get_header_value("Content-Range"),
            absl::StrCat("bytes ", size - 5, "-", size - 1, "/", size));
}

// Peak resident memory of this process (server and client), KiB.
int64_t PeakRssKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atoll(line.c_str() + 6);
  }
  return -1;
}

TEST_F(MirrorTest, StreamsWithoutHoldingTheFile) {
  // 256 MiB (sparse) served whole to a client that discards it: the process's peak memory must
  // not grow by anything near the file's size.
  const uint64_t size = 256ull << 20;
  const std::string etag(64, 'd');
  const int fd = ::open(cache_->BlobPath(repo_, etag).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  ::close(fd);
  ASSERT_EQ(::symlink(("../../blobs/" + etag).c_str(),
                      (cache_->SnapshotDir(repo_, kCommit) + "/big.bin").c_str()),
            0);
  StartMirror();
  const int64_t before = PeakRssKiB();
  uint64_t received = 0;
  httplib::Result r = client_->Get(Resolve("main", "big.bin"), [&](const char*, size_t n) {
    received += n;
    return true;
  });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(received, size);
  EXPECT_LT(PeakRssKiB() - before, 64 << 10) << "KiB";
}

TEST_F(MirrorTest, HuggingfaceHubDownloadsFromTheMirror) {
  MirrorOptions options;
  options.tree_page_size = 4;  // the client follows Link pages too
  StartMirror(std::move(options));
  for (const std::string mode : {"env", "arg"}) {
    SCOPED_TRACE(mode);
    shardserve::testing::RunResult r =
        shardserve::testing::RunProgram({FindOnPath("python3"),
                                         "tests/fixtures/mirror_check.py",
                                         "--endpoint",
                                         Endpoint(),
                                         "--repo",
                                         kRepo,
                                         "--commit",
                                         kCommit,
                                         "--source",
                                         dir_ + "/src/main",
                                         "--lfs",
                                         kLfsPath,
                                         "--pr-ref",
                                         "refs/pr/1",
                                         "--pr-commit",
                                         kPrCommit,
                                         "--pr-source",
                                         dir_ + "/src/pr",
                                         "--mode",
                                         mode});
    std::printf("%s", r.out.c_str());
    EXPECT_EQ(r.exit_code, 0) << "stdout:\n" << r.out << "\nstderr:\n" << r.err;
    EXPECT_THAT(r.out, HasSubstr("ok snapshot_full"));
    EXPECT_THAT(r.out, HasSubstr("ok missing_repo"));
    EXPECT_THAT(r.out, Not(HasSubstr("FAIL")));
  }
}

}  // namespace
}  // namespace shardserve::hub
