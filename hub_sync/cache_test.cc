#include "hub_sync/cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hub_sync/repo.h"
#include "tests/integration/subprocess.h"

namespace shardserve::hub {
namespace {

using ::shardserve::testing::FindOnPath;

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kCommit[] = "0123456789abcdef0123456789abcdef01234567";
constexpr char kCommit2[] = "89abcdef0123456789abcdef0123456789abcdef";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

void WriteFile(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

std::string ReadLink(const std::string& path) {
  std::error_code error;
  fs::path target = fs::read_symlink(path, error);
  return error ? std::string("<not a link>") : target.string();
}

bool Exists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

ino_t Inode(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Every path under `dir` (relative, sorted), symlinks not followed.
std::vector<std::string> Tree(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code error;
  for (auto it = fs::recursive_directory_iterator(dir, error);
       !error && it != fs::recursive_directory_iterator(); it.increment(error)) {
    out.push_back(fs::relative(it->path(), dir).string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

RepoFile MakeFile(const std::string& path, const std::string& content, bool lfs) {
  return RepoFile{path, content.size(), lfs ? Sha256Hex(content) : GitBlobSha1Hex(content), lfs};
}

class CacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/hub_cache_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    tmp_ = pattern;
    absl::StatusOr<HubCache> cache = HubCache::Open(tmp_ + "/cache");
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_.emplace(std::move(*cache));
    repo_ = *ParseRepoId("org/model");
  }
  void TearDown() override { fs::remove_all(tmp_); }

  HubCache& cache() { return *cache_; }

  // Puts `content` into the cache as a verified blob (through AddBlobFromFile).
  void AddBlob(const RepoId& repo, const RepoFile& file, const std::string& content) {
    std::string source = absl::StrCat(tmp_, "/src-", file.etag);
    WriteFile(source, content);
    absl::Status status = cache().AddBlobFromFile(repo, file, source);
    ASSERT_TRUE(status.ok()) << status;
  }

  // Blobs, links and the ref "main" for a snapshot of `contents` (path -> content).
  RepoSnapshot AddSnapshot(const RepoId& repo, const std::string& commit,
                           const std::vector<std::pair<std::string, std::string>>& contents,
                           const std::string& ref = "main") {
    RepoSnapshot snapshot{repo, ref.empty() ? commit : ref, commit, {}};
    for (const auto& [path, content] : contents) {
      RepoFile file = MakeFile(path, content, absl::EndsWith(path, ".safetensors"));
      AddBlob(repo, file, content);
      snapshot.files.push_back(file);
    }
    absl::Status status = cache().LinkSnapshot(snapshot);
    EXPECT_TRUE(status.ok()) << status;
    if (!ref.empty()) {
      status = cache().WriteRef(repo, ref, commit);
      EXPECT_TRUE(status.ok()) << status;
    }
    return snapshot;
  }

  std::string tmp_;
  std::optional<HubCache> cache_;
  RepoId repo_;
};

TEST_F(CacheTest, LayoutPaths) {
  const std::string root = tmp_ + "/cache";
  EXPECT_EQ(cache().root(), root);
  EXPECT_EQ(cache().HubDir(), root + "/hub");
  EXPECT_EQ(cache().RepoDir(repo_), root + "/hub/models--org--model");
  EXPECT_EQ(cache().BlobPath(repo_, "ab"), root + "/hub/models--org--model/blobs/ab");
  EXPECT_EQ(cache().IncompleteBlobPath(repo_, "ab"),
            root + "/hub/models--org--model/blobs/ab.incomplete");
  EXPECT_EQ(cache().SnapshotDir(repo_, kCommit),
            absl::StrCat(root, "/hub/models--org--model/snapshots/", kCommit));
  EXPECT_EQ(cache().ArtifactDir(repo_, kCommit, "int4"),
            absl::StrCat(root, "/shardserve/org--model/", kCommit, "/int4"));
  EXPECT_TRUE(fs::is_directory(root + "/hub"));

  // Relative root: made absolute.
  std::string cwd = fs::current_path();
  fs::current_path(tmp_);
  absl::StatusOr<HubCache> relative = HubCache::Open("rel/./cache/");
  fs::current_path(cwd);
  ASSERT_TRUE(relative.ok()) << relative.status();
  EXPECT_EQ(relative->root(), tmp_ + "/rel/cache");
  EXPECT_EQ(HubCache::Open("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CacheTest, LinksAreRelativeWithOneDotDotPerFolder) {
  RepoSnapshot snapshot = AddSnapshot(repo_, kCommit,
                                      {{"config.json", "{}"},
                                       {"a/b/weights.safetensors", "tensor bytes"},
                                       {"tok/tokenizer.json", "{\"v\":1}"}});
  const std::string dir = cache().SnapshotDir(repo_, kCommit);
  EXPECT_EQ(ReadLink(dir + "/config.json"), "../../blobs/" + snapshot.files[0].etag);
  EXPECT_EQ(ReadLink(dir + "/a/b/weights.safetensors"),
            "../../../../blobs/" + snapshot.files[1].etag);
  EXPECT_EQ(ReadLink(dir + "/tok/tokenizer.json"), "../../../blobs/" + snapshot.files[2].etag);
  EXPECT_EQ(ReadFile(dir + "/a/b/weights.safetensors"), "tensor bytes");
  EXPECT_EQ(ReadFile(dir + "/tok/tokenizer.json"), "{\"v\":1}");
  EXPECT_EQ(snapshot.files[1].etag.size(), 64u);                        // LFS: sha256
  EXPECT_EQ(snapshot.files[0].etag.size(), 40u);                        // git blob sha1
  EXPECT_EQ(ReadFile(cache().RepoDir(repo_) + "/refs/main"), kCommit);  // no newline
  // No temporary names left anywhere.
  for (const std::string& path : Tree(cache().root())) {
    EXPECT_FALSE(absl::StrContains(path, "tmp")) << path;
    EXPECT_FALSE(absl::StrContains(path, ".incomplete")) << path;
  }
}

TEST_F(CacheTest, CommitVerifiesAndRenames) {
  const std::string content = "hello blob";
  RepoFile file = MakeFile("model.safetensors", content, /*lfs=*/true);
  absl::StatusOr<FileLock> lock = cache().LockBlob(repo_, file.etag);
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_TRUE(
      Exists(absl::StrCat(cache().HubDir(), "/.locks/models--org--model/", file.etag, ".lock")));
  EXPECT_TRUE(fs::is_directory(cache().RepoDir(repo_) + "/blobs"));  // ready for .incomplete

  // No .incomplete yet.
  absl::Status status = cache().CommitIncompleteBlob(repo_, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr(".incomplete"));

  WriteFile(cache().IncompleteBlobPath(repo_, file.etag), content);
  EXPECT_EQ(*cache().HasBlob(repo_, file, true), false);
  status = cache().CommitIncompleteBlob(repo_, file);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_FALSE(Exists(cache().IncompleteBlobPath(repo_, file.etag)));
  EXPECT_EQ(ReadFile(cache().BlobPath(repo_, file.etag)), content);
  EXPECT_EQ(*cache().HasBlob(repo_, file, true), true);

  // git blob sha1 (non-LFS) too.
  RepoFile small = MakeFile("config.json", "{\"a\": 1}", /*lfs=*/false);
  WriteFile(cache().IncompleteBlobPath(repo_, small.etag), "{\"a\": 1}");
  ASSERT_TRUE(cache().CommitIncompleteBlob(repo_, small).ok());
  EXPECT_EQ(*cache().HasBlob(repo_, small, true), true);
}

TEST_F(CacheTest, CommitRefusesWrongSizeOrHash) {
  RepoFile file = MakeFile("model.safetensors", "right content", /*lfs=*/true);
  const std::string incomplete = cache().IncompleteBlobPath(repo_, file.etag);
  const std::string final_path = cache().BlobPath(repo_, file.etag);

  WriteFile(incomplete, "short");
  absl::Status status = cache().CommitIncompleteBlob(repo_, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr(incomplete));
  EXPECT_THAT(status.message(), HasSubstr("expected 13 bytes, found 5"));
  EXPECT_FALSE(Exists(incomplete));
  EXPECT_FALSE(Exists(final_path));

  WriteFile(incomplete, "wrong content");  // same size, other bytes
  status = cache().CommitIncompleteBlob(repo_, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("expected sha256 " + file.etag));
  EXPECT_THAT(status.message(), HasSubstr("found " + Sha256Hex("wrong content")));
  EXPECT_FALSE(Exists(incomplete));
  EXPECT_FALSE(Exists(final_path));

  RepoFile git = MakeFile("config.json", "abc", /*lfs=*/false);
  WriteFile(cache().IncompleteBlobPath(repo_, git.etag), "abd");
  status = cache().CommitIncompleteBlob(repo_, git);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("expected git blob sha1 " + git.etag));
  EXPECT_FALSE(Exists(cache().BlobPath(repo_, git.etag)));

  // lfs must match the etag's length.
  RepoFile mixed = file;
  mixed.lfs = false;
  status = cache().CommitIncompleteBlob(repo_, mixed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("lfs"));
}

TEST_F(CacheTest, HasBlobReportsAWrongBlobUnderTheFinalName) {
  RepoFile file = MakeFile("model.safetensors", "0123456789", /*lfs=*/true);
  EXPECT_EQ(*cache().HasBlob(repo_, file, false), false);
  WriteFile(cache().BlobPath(repo_, file.etag), "9876543210");  // same size, wrong bytes
  EXPECT_EQ(*cache().HasBlob(repo_, file, false), true);        // size only
  absl::StatusOr<bool> verified = cache().HasBlob(repo_, file, true);
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(verified.status().message(), HasSubstr(cache().BlobPath(repo_, file.etag)));
  WriteFile(cache().BlobPath(repo_, file.etag), "short");
  absl::StatusOr<bool> sized = cache().HasBlob(repo_, file, false);
  EXPECT_EQ(sized.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(sized.status().message(), HasSubstr("expected 10 bytes, found 5"));
  ASSERT_TRUE(cache().RemoveBlob(repo_, file.etag).ok());
  EXPECT_EQ(*cache().HasBlob(repo_, file, true), false);
  EXPECT_TRUE(cache().RemoveBlob(repo_, file.etag).ok());  // already gone
}

TEST_F(CacheTest, AddBlobFromFile) {
  const std::string content(3 << 20, 'x');  // several I/O chunks
  RepoFile file = MakeFile("big.safetensors", content, /*lfs=*/true);
  const std::string source = tmp_ + "/source.bin";
  WriteFile(source, content);
  ASSERT_TRUE(cache().AddBlobFromFile(repo_, file, source).ok());
  const std::string blob = cache().BlobPath(repo_, file.etag);
  EXPECT_EQ(ReadFile(blob), content);
  ino_t inode = Inode(blob);
  ASSERT_TRUE(cache().AddBlobFromFile(repo_, file, source).ok());
  EXPECT_EQ(Inode(blob), inode);  // a valid blob is kept, not copied again

  // A corrupt blob under the final name is replaced.
  WriteFile(blob, std::string(content.size(), 'y'));
  ASSERT_TRUE(cache().AddBlobFromFile(repo_, file, source).ok());
  EXPECT_EQ(ReadFile(blob), content);

  // A source with the wrong bytes leaves nothing behind.
  RepoFile other = MakeFile("other.safetensors", "expected!", /*lfs=*/true);
  WriteFile(source, "different");
  absl::Status status = cache().AddBlobFromFile(repo_, other, source);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_FALSE(Exists(cache().BlobPath(repo_, other.etag)));
  EXPECT_FALSE(Exists(cache().IncompleteBlobPath(repo_, other.etag)));
  WriteFile(source, "too long source");
  status = cache().AddBlobFromFile(repo_, other, source);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss) << status;
  EXPECT_THAT(status.message(), HasSubstr("expected 9 bytes, found 15"));

  status = cache().AddBlobFromFile(repo_, other, tmp_ + "/no-such-file");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("no-such-file"));
}

TEST_F(CacheTest, LinkSnapshotRefusesMissingBlobs) {
  RepoFile present = MakeFile("config.json", "{}", false);
  RepoFile absent = MakeFile("model.safetensors", "not downloaded", true);
  AddBlob(repo_, present, "{}");
  RepoSnapshot snapshot{repo_, "main", kCommit, {present, absent}};
  absl::Status status = cache().LinkSnapshot(snapshot);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(status.message(), HasSubstr("missing"));
  EXPECT_FALSE(Exists(cache().SnapshotDir(repo_, kCommit)));
  // And the ref cannot be written without the snapshot.
  status = cache().WriteRef(repo_, "main", kCommit);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("does not exist"));
  EXPECT_FALSE(Exists(cache().RepoDir(repo_) + "/refs/main"));

  // A blob of the wrong size is not linked either.
  WriteFile(cache().BlobPath(repo_, absent.etag), "short");
  status = cache().LinkSnapshot(snapshot);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("expected 14 bytes"));

  // A path listed twice is refused.
  RepoSnapshot twice{repo_, "main", kCommit, {present, present}};
  status = cache().LinkSnapshot(twice);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("twice"));
}

TEST_F(CacheTest, LinkSnapshotIsIdempotentAndRepairs) {
  RepoSnapshot snapshot =
      AddSnapshot(repo_, kCommit, {{"config.json", "{}"}, {"sub/model.safetensors", "w"}});
  const std::string dir = cache().SnapshotDir(repo_, kCommit);
  ino_t config_inode = Inode(dir + "/config.json");
  ASSERT_TRUE(cache().LinkSnapshot(snapshot).ok());
  EXPECT_EQ(Inode(dir + "/config.json"), config_inode);  // left alone

  // A wrong link and a plain file are replaced by the right links.
  fs::remove(dir + "/config.json");
  fs::create_symlink("../../blobs/0000000000000000000000000000000000000000", dir + "/config.json");
  fs::remove(dir + "/sub/model.safetensors");
  WriteFile(dir + "/sub/model.safetensors", "stale copy");
  ASSERT_TRUE(cache().LinkSnapshot(snapshot).ok());
  EXPECT_EQ(ReadLink(dir + "/config.json"), "../../blobs/" + snapshot.files[0].etag);
  EXPECT_EQ(ReadLink(dir + "/sub/model.safetensors"), "../../../blobs/" + snapshot.files[1].etag);
  EXPECT_EQ(ReadFile(dir + "/sub/model.safetensors"), "w");

  // A folder where a file belongs is an error, not silently replaced.
  RepoFile clash = MakeFile("folder", "x", false);
  AddBlob(repo_, clash, "x");
  fs::create_directories(dir + "/folder/inner");
  absl::Status status = cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {clash}});
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(status.message(), HasSubstr(dir + "/folder"));
}

TEST_F(CacheTest, RefusesHostileNames) {
  RepoFile good = MakeFile("config.json", "{}", false);
  AddBlob(repo_, good, "{}");
  const std::vector<std::string> bad_paths = {"../x",
                                              "/etc/passwd",
                                              "a/../../b",
                                              std::string("a\0b", 3),
                                              "a\x01"
                                              "b",
                                              "a\x7f",
                                              "a/./b",
                                              "a//b",
                                              "a/",
                                              "",
                                              "..",
                                              "a\\b",
                                              std::string(1100, 'a'),
                                              absl::StrCat(std::string(256, 'b'), "/c")};
  for (const std::string& path : bad_paths) {
    SCOPED_TRACE(absl::CHexEscape(path));
    RepoFile file = good;
    file.path = path;
    absl::Status status = cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    status = cache().MarkMissing(repo_, kCommit, path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_FALSE(cache().IsMarkedMissing(repo_, kCommit, path));
  }
  for (const std::string& etag :
       {std::string("../../../../etc/passwd"), std::string("ABCD"), std::string(40, 'A'),
        std::string(40, 'g'), std::string(41, 'a')}) {
    SCOPED_TRACE(etag);
    RepoFile file = good;
    file.etag = etag;
    EXPECT_EQ(cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().LockBlob(repo_, etag).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().RemoveBlob(repo_, etag).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().CommitIncompleteBlob(repo_, file).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().HasBlob(repo_, file, false).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (const std::string& revision :
       {std::string("../main"), std::string("/abs"), std::string("a\0b", 3), std::string(""),
        std::string("refs/../x"), std::string("a\nb"), std::string(300, 'r')}) {
    SCOPED_TRACE(absl::CHexEscape(revision));
    EXPECT_EQ(cache().WriteRef(repo_, revision, kCommit).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().ResolveRevision(repo_, revision).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (const std::string& commit :
       {std::string("../../x"), std::string("main"), std::string(40, 'A'), std::string("")}) {
    SCOPED_TRACE(commit);
    EXPECT_EQ(cache().SnapshotFiles(repo_, commit).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().LinkSnapshot(RepoSnapshot{repo_, "main", commit, {good}}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().WriteRef(repo_, "main", commit).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().LockArtifact(repo_, commit, "int4").status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (const std::string& scheme :
       {std::string("../x"), std::string(".hidden"), std::string("a/b"), std::string(65, 's')}) {
    SCOPED_TRACE(scheme);
    EXPECT_EQ(cache().LockArtifact(repo_, kCommit, scheme).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().Delete(repo_, kCommit, scheme).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  for (const RepoId& repo : {RepoId{"..", "x"}, RepoId{"org", "../../x"}, RepoId{"a/b", "c"},
                             RepoId{"", "x"}, RepoId{"org", "a--b"}}) {
    SCOPED_TRACE(repo.ToString());
    EXPECT_EQ(cache().HasBlob(repo, good, false).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().Delete(repo, "", "").status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().LinkSnapshot(RepoSnapshot{repo, "main", kCommit, {good}}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(cache().ResolveRevision(repo, "main").status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // A scheme without a revision is refused.
  EXPECT_EQ(cache().Delete(repo_, "", "int4").status().code(), absl::StatusCode::kInvalidArgument);
  // Nothing was written outside the cache root, and no snapshot was made.
  EXPECT_FALSE(Exists(cache().SnapshotDir(repo_, kCommit)));
  EXPECT_THAT(Tree(tmp_), ::testing::Each(::testing::Not(HasSubstr("etc"))));
}

TEST_F(CacheTest, RefusesSymlinkedSnapshotFolders) {
  const std::string outside = tmp_ + "/outside";
  fs::create_directories(outside);
  RepoFile file = MakeFile("sub/config.json", "{}", false);
  AddBlob(repo_, file, "{}");
  const std::string snapshot_dir = cache().SnapshotDir(repo_, kCommit);
  fs::create_directories(snapshot_dir);
  fs::create_directory_symlink(outside, snapshot_dir + "/sub");
  absl::Status status = cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr(snapshot_dir + "/sub is a symlink"));
  EXPECT_THAT(Tree(outside), IsEmpty());
  status = cache().MarkMissing(repo_, kCommit, "sub/x");
  EXPECT_TRUE(status.ok()) << status;  // .no_exist is a different folder

  // The snapshot folder itself.
  fs::remove_all(snapshot_dir);
  fs::create_directory_symlink(outside, snapshot_dir);
  status = cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}});
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("symlink"));
  EXPECT_THAT(Tree(outside), IsEmpty());

  // refs/ as a symlink.
  fs::create_directory_symlink(outside, cache().RepoDir(repo_) + "/refs");
  fs::remove(snapshot_dir);
  ASSERT_TRUE(cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}}).ok());
  status = cache().WriteRef(repo_, "main", kCommit);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(status.message(), HasSubstr("refs is a symlink"));
  EXPECT_THAT(Tree(outside), IsEmpty());
}

TEST_F(CacheTest, ResolveRevision) {
  AddSnapshot(repo_, kCommit, {{"config.json", "{}"}});
  AddSnapshot(repo_, kCommit2, {{"config.json", "{\"v\": 2}"}}, "refs/pr/1");
  EXPECT_EQ(*cache().ResolveRevision(repo_, "main"), kCommit);
  EXPECT_EQ(*cache().ResolveRevision(repo_, "refs/pr/1"), kCommit2);
  EXPECT_EQ(*cache().ResolveRevision(repo_, kCommit2), kCommit2);
  EXPECT_EQ(ReadFile(cache().RepoDir(repo_) + "/refs/refs/pr/1"), kCommit2);

  absl::StatusOr<std::string> missing = cache().ResolveRevision(repo_, "v1.0");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("org/model"));
  EXPECT_THAT(missing.status().message(), HasSubstr("v1.0"));
  const std::string unknown = "ffffffffffffffffffffffffffffffffffffffff";
  EXPECT_EQ(cache().ResolveRevision(repo_, unknown).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache().ResolveRevision(*ParseRepoId("other/repo"), "main").status().code(),
            absl::StatusCode::kNotFound);

  // Moving a ref; a corrupt ref is DATA_LOSS.
  ASSERT_TRUE(cache().WriteRef(repo_, "main", kCommit2).ok());
  EXPECT_EQ(*cache().ResolveRevision(repo_, "main"), kCommit2);
  WriteFile(cache().RepoDir(repo_) + "/refs/broken", "not a commit\n");
  absl::StatusOr<std::string> broken = cache().ResolveRevision(repo_, "broken");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(broken.status().message(), HasSubstr("refs/broken"));

  // revision == commit writes nothing; a commit cannot name another commit.
  ASSERT_TRUE(cache().WriteRef(repo_, kCommit, kCommit).ok());
  EXPECT_FALSE(Exists(absl::StrCat(cache().RepoDir(repo_), "/refs/", kCommit)));
  EXPECT_EQ(cache().WriteRef(repo_, kCommit2, kCommit).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CacheTest, SnapshotFiles) {
  RepoSnapshot snapshot =
      AddSnapshot(repo_, kCommit,
                  {{"z.json", "zz"}, {"a/b/model.safetensors", "weights"}, {"config.json", "{}"}});
  absl::StatusOr<std::vector<RepoFile>> files = cache().SnapshotFiles(repo_, kCommit);
  ASSERT_TRUE(files.ok()) << files.status();
  std::vector<RepoFile> expected = snapshot.files;
  std::sort(expected.begin(), expected.end(),
            [](const RepoFile& a, const RepoFile& b) { return a.path < b.path; });
  EXPECT_EQ(*files, expected);
  EXPECT_TRUE((*files)[0].lfs);  // a/b/model.safetensors

  // Links to missing blobs and non-links are skipped.
  const std::string dir = cache().SnapshotDir(repo_, kCommit);
  fs::create_symlink("../../blobs/1111111111111111111111111111111111111111", dir + "/gone.json");
  fs::create_symlink("/etc/passwd", dir + "/escape.json");
  WriteFile(dir + "/plain.txt", "plain");
  files = cache().SnapshotFiles(repo_, kCommit);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), 3u);

  absl::StatusOr<std::vector<RepoFile>> none = cache().SnapshotFiles(repo_, kCommit2);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr(kCommit2));
}

TEST_F(CacheTest, MarkMissing) {
  EXPECT_FALSE(cache().IsMarkedMissing(repo_, kCommit, "sub/missing.json"));
  ASSERT_TRUE(cache().MarkMissing(repo_, kCommit, "sub/missing.json").ok());
  ASSERT_TRUE(cache().MarkMissing(repo_, kCommit, "sub/missing.json").ok());  // idempotent
  const std::string marker =
      absl::StrCat(cache().RepoDir(repo_), "/.no_exist/", kCommit, "/sub/missing.json");
  EXPECT_TRUE(fs::is_regular_file(marker));
  EXPECT_EQ(fs::file_size(marker), 0u);
  EXPECT_TRUE(cache().IsMarkedMissing(repo_, kCommit, "sub/missing.json"));
  EXPECT_FALSE(cache().IsMarkedMissing(repo_, kCommit2, "sub/missing.json"));

  // Linking the file at that commit clears the marker (huggingface_hub checks .no_exist first).
  RepoFile file = MakeFile("sub/missing.json", "{}", false);
  AddBlob(repo_, file, "{}");
  ASSERT_TRUE(cache().LinkSnapshot(RepoSnapshot{repo_, "main", kCommit, {file}}).ok());
  EXPECT_FALSE(cache().IsMarkedMissing(repo_, kCommit, "sub/missing.json"));
}

// A fake quantized artifact: files plus (when `manifest`) a manifest.json.
uint64_t AddArtifact(const std::string& dir, bool manifest) {
  WriteFile(dir + "/model.safetensors", std::string(1000, 'q'));
  if (!manifest) return 1000;
  const std::string json = "{\"tool_version\": \"shardserve 0.1.0\", \"scheme\": \"x\"}";
  WriteFile(dir + "/manifest.json", json);
  return 1000 + json.size();
}

TEST_F(CacheTest, List) {
  AddSnapshot(repo_, kCommit, {{"config.json", "{}"}, {"model.safetensors", "abcdef"}});
  AddSnapshot(repo_, kCommit2, {{"config.json", "{}"}, {"sub/extra.json", "[1]"}}, "refs/pr/1");
  ASSERT_TRUE(cache().WriteRef(repo_, "v1", kCommit).ok());
  RepoId other = *ParseRepoId("zeta/small");
  AddSnapshot(other, kCommit, {{"config.json", "{\"other\": 1}"}});

  uint64_t int4 = AddArtifact(cache().ArtifactDir(repo_, kCommit, "int4"), true);
  AddArtifact(cache().ArtifactDir(repo_, kCommit, "nf4"), false);       // no manifest: absent
  AddArtifact(cache().ArtifactDir(repo_, kCommit, ".tmp-int8"), true);  // hidden: absent
  // Junk that does not parse as a repository is ignored.
  fs::create_directories(cache().HubDir() + "/models--bad");
  fs::create_directories(cache().HubDir() + "/datasets--org--data/snapshots");
  fs::create_directories(cache().HubDir() + "/.locks");
  WriteFile(cache().HubDir() + "/version.txt", "1");

  absl::StatusOr<std::vector<RepoInfo>> repos = cache().List("");
  ASSERT_TRUE(repos.ok()) << repos.status();
  ASSERT_EQ(repos->size(), 2u);
  const RepoInfo& info = (*repos)[0];
  EXPECT_EQ(info.repo, repo_);
  EXPECT_EQ((*repos)[1].repo, other);
  ASSERT_EQ(info.revisions.size(), 2u);
  const RevisionInfo& first = info.revisions[0];
  EXPECT_EQ(first.commit, kCommit);
  EXPECT_THAT(first.refs, ElementsAre("main", "v1"));
  EXPECT_EQ(first.files, 2u);
  EXPECT_EQ(first.size_bytes, 2u + 6u);
  EXPECT_GT(first.modified_unix_seconds, 0);
  ASSERT_EQ(first.artifacts.size(), 1u);
  EXPECT_EQ(first.artifacts[0].scheme, "int4");
  EXPECT_EQ(first.artifacts[0].tool_version, "shardserve 0.1.0");
  EXPECT_EQ(first.artifacts[0].size_bytes, int4);
  const RevisionInfo& second = info.revisions[1];
  EXPECT_EQ(second.commit, kCommit2);
  EXPECT_THAT(second.refs, ElementsAre("refs/pr/1"));
  EXPECT_EQ(second.files, 2u);
  EXPECT_EQ(second.size_bytes, 2u + 3u);
  EXPECT_THAT(second.artifacts, IsEmpty());
  // "{}" is shared by both revisions: counted once.
  EXPECT_EQ(info.size_bytes, 2u + 6u + 3u + int4);

  repos = cache().List("zeta/");
  ASSERT_TRUE(repos.ok()) << repos.status();
  ASSERT_EQ(repos->size(), 1u);
  EXPECT_EQ((*repos)[0].repo, other);
  EXPECT_THAT(*cache().List("nobody"), IsEmpty());
}

TEST_F(CacheTest, DeleteArtifactOnly) {
  AddSnapshot(repo_, kCommit, {{"config.json", "{}"}});
  uint64_t int4 = AddArtifact(cache().ArtifactDir(repo_, kCommit, "int4"), true);
  uint64_t nf4 = AddArtifact(cache().ArtifactDir(repo_, kCommit, "nf4"), true);

  absl::StatusOr<DeleteResult> result = cache().Delete(repo_, "main", "int4");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->freed_bytes, int4);
  EXPECT_THAT(result->removed,
              ElementsAre(absl::StrCat("shardserve/org--model/", kCommit, "/int4")));
  EXPECT_FALSE(Exists(cache().ArtifactDir(repo_, kCommit, "int4")));
  EXPECT_TRUE(Exists(cache().ArtifactDir(repo_, kCommit, "nf4")));
  EXPECT_TRUE(Exists(cache().SnapshotDir(repo_, kCommit)));

  absl::StatusOr<DeleteResult> again = cache().Delete(repo_, "main", "int4");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(again.status().message(), HasSubstr("int4"));

  // The last artifact of a commit takes its empty parents with it.
  result = cache().Delete(repo_, kCommit, "nf4");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->freed_bytes, nf4);
  EXPECT_THAT(result->removed,
              ElementsAre("shardserve/org--model", absl::StrCat("shardserve/org--model/", kCommit),
                          absl::StrCat("shardserve/org--model/", kCommit, "/nf4")));

  // Being built (its lock held): UNAVAILABLE.
  AddArtifact(cache().ArtifactDir(repo_, kCommit, "int8"), false);
  absl::StatusOr<FileLock> lock = cache().LockArtifact(repo_, kCommit, "int8");
  ASSERT_TRUE(lock.ok()) << lock.status();
  absl::StatusOr<DeleteResult> busy = cache().Delete(repo_, kCommit, "int8");
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(busy.status().message(), HasSubstr("int8"));
}

TEST_F(CacheTest, DeleteRevisionKeepsSharedBlobs) {
  RepoSnapshot one =
      AddSnapshot(repo_, kCommit, {{"config.json", "{}"}, {"model.safetensors", "old weights"}});
  RepoSnapshot two = AddSnapshot(
      repo_, kCommit2, {{"config.json", "{}"}, {"model.safetensors", "new weights!"}}, "v2");
  ASSERT_TRUE(cache().WriteRef(repo_, "refs/pr/7", kCommit).ok());
  ASSERT_TRUE(cache().MarkMissing(repo_, kCommit, "missing.json").ok());
  uint64_t int4 = AddArtifact(cache().ArtifactDir(repo_, kCommit, "int4"), true);
  WriteFile(absl::StrCat(cache().RepoDir(repo_), "/trees/", kCommit, ".json"), "{}");

  absl::StatusOr<DeleteResult> result = cache().Delete(repo_, "main", "");
  ASSERT_TRUE(result.ok()) << result.status();
  const std::string repo_rel = "hub/models--org--model";
  const std::string old_weights = one.files[1].etag;
  EXPECT_EQ(result->freed_bytes, std::string("old weights").size() + int4);
  EXPECT_THAT(
      result->removed,
      ElementsAre(
          absl::StrCat(repo_rel, "/.no_exist"), absl::StrCat(repo_rel, "/.no_exist/", kCommit),
          absl::StrCat(repo_rel, "/blobs/", old_weights), absl::StrCat(repo_rel, "/refs/main"),
          absl::StrCat(repo_rel, "/refs/refs"), absl::StrCat(repo_rel, "/refs/refs/pr"),
          absl::StrCat(repo_rel, "/refs/refs/pr/7"), absl::StrCat(repo_rel, "/snapshots/", kCommit),
          absl::StrCat(repo_rel, "/trees"), absl::StrCat(repo_rel, "/trees/", kCommit, ".json"),
          "shardserve/org--model", absl::StrCat("shardserve/org--model/", kCommit)));
  // The shared config blob and the other revision are intact.
  EXPECT_TRUE(Exists(cache().BlobPath(repo_, one.files[0].etag)));
  EXPECT_EQ(*cache().ResolveRevision(repo_, "v2"), kCommit2);
  absl::StatusOr<std::vector<RepoFile>> files = cache().SnapshotFiles(repo_, kCommit2);
  ASSERT_TRUE(files.ok());
  EXPECT_EQ(files->size(), 2u);
  EXPECT_EQ(cache().ResolveRevision(repo_, "main").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<DeleteResult> again = cache().Delete(repo_, kCommit, "");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(again.status().message(), HasSubstr(kCommit));
  EXPECT_EQ(cache().Delete(repo_, "main", "").status().code(), absl::StatusCode::kNotFound);

  // A blob being written by someone else: UNAVAILABLE, nothing removed.
  absl::StatusOr<FileLock> lock = cache().LockBlob(repo_, two.files[1].etag);
  ASSERT_TRUE(lock.ok());
  absl::StatusOr<DeleteResult> busy = cache().Delete(repo_, "v2", "");
  EXPECT_EQ(busy.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(busy.status().message(), HasSubstr(two.files[1].etag));
  EXPECT_TRUE(Exists(cache().SnapshotDir(repo_, kCommit2)));
  lock = absl::UnavailableError("released");  // destroys the FileLock: released

  // The last revision takes the repository folder with it.
  result = cache().Delete(repo_, "v2", "");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->freed_bytes, 2u + std::string("new weights!").size());
  EXPECT_FALSE(Exists(cache().RepoDir(repo_)));
  EXPECT_THAT(result->removed, ::testing::Contains(repo_rel));
}

TEST_F(CacheTest, DeleteRepositoryNeverFollowsSymlinksOut) {
  AddSnapshot(repo_, kCommit, {{"config.json", "{}"}, {"model.safetensors", "weights"}});
  uint64_t int4 = AddArtifact(cache().ArtifactDir(repo_, kCommit, "int4"), true);
  WriteFile(cache().IncompleteBlobPath(repo_, std::string(64, 'a')), "part");
  const std::string outside = tmp_ + "/outside";
  WriteFile(outside + "/precious.txt", "keep me");
  fs::create_directory_symlink(outside, cache().SnapshotDir(repo_, kCommit) + "/evil");
  fs::create_directory_symlink(outside, cache().ArtifactDir(repo_, kCommit, "int4") + "/evil");
  fs::create_symlink(outside + "/precious.txt", cache().RepoDir(repo_) + "/blobs/evil");

  RepoId other = *ParseRepoId("org/model2");
  AddSnapshot(other, kCommit, {{"config.json", "{}"}});

  absl::StatusOr<DeleteResult> result = cache().Delete(repo_, "", "");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->freed_bytes, 2u + 7u + 4u + int4);
  EXPECT_THAT(result->removed,
              ElementsAre("hub/.locks/models--org--model", "hub/models--org--model",
                          "shardserve/.locks/org--model", "shardserve/org--model"));
  EXPECT_FALSE(Exists(cache().RepoDir(repo_)));
  EXPECT_FALSE(Exists(cache().root() + "/shardserve/org--model"));
  EXPECT_EQ(ReadFile(outside + "/precious.txt"), "keep me");
  // The other repository (same prefix) is intact.
  EXPECT_EQ(*cache().ResolveRevision(other, "main"), kCommit);
  EXPECT_EQ(cache().Delete(repo_, "", "").status().code(), absl::StatusCode::kNotFound);
}

// Runs `body` in a forked child; returns its exit status (0 = success).
template <typename Body>
int RunInChild(Body body) {
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

TEST_F(CacheTest, FileLockIsExclusiveAcrossProcesses) {
  const std::string path = tmp_ + "/locks/sub/a.lock";
  absl::StatusOr<FileLock> held = FileLock::Acquire(path);
  ASSERT_TRUE(held.ok()) << held.status();
  // Another process cannot take it...
  EXPECT_EQ(RunInChild([&] {
              absl::StatusOr<FileLock> lock = FileLock::TryAcquire(path);
              if (lock.status().code() != absl::StatusCode::kUnavailable) return 1;
              return absl::StrContains(lock.status().message(), path) ? 0 : 2;
            }),
            0);
  // ...until it is released (moved-from objects release nothing).
  FileLock moved = std::move(*held);
  held = absl::UnavailableError("moved");
  EXPECT_NE(RunInChild([&] { return FileLock::TryAcquire(path).ok() ? 0 : 1; }), 0);
  { FileLock released = std::move(moved); }
  EXPECT_EQ(RunInChild([&] { return FileLock::TryAcquire(path).ok() ? 0 : 1; }), 0);

  // Acquire blocks until the holder lets go: the child holds the lock and waits for our byte.
  int to_child[2], from_child[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(from_child), 0);
  fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    absl::StatusOr<FileLock> lock = FileLock::Acquire(path);
    char byte = lock.ok() ? 'L' : 'E';
    if (write(from_child[1], &byte, 1) != 1) _exit(1);
    if (read(to_child[0], &byte, 1) != 1) _exit(1);
    _exit(0);  // releases the lock
  }
  char byte = 0;
  ASSERT_EQ(read(from_child[0], &byte, 1), 1);
  ASSERT_EQ(byte, 'L');
  EXPECT_EQ(FileLock::TryAcquire(path).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(write(to_child[1], "x", 1), 1);
  absl::StatusOr<FileLock> after = FileLock::Acquire(path);  // returns once the child exits
  EXPECT_TRUE(after.ok()) << after.status();
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  for (int fd : {to_child[0], to_child[1], from_child[0], from_child[1]}) close(fd);

  // A lock file removed while held (Delete does that) is not a lock anyone still shares.
  fs::remove(path);
  absl::StatusOr<FileLock> fresh = FileLock::TryAcquire(path);
  EXPECT_TRUE(fresh.ok()) << fresh.status();
}

// Two processes sync the same repository 20 times at once: the same blobs (shared ones plus one
// new per round), one snapshot per round, and refs; both finish without error and the cache
// holds one correct copy.
TEST_F(CacheTest, TwoProcessesSyncTheSameRepository) {
  constexpr int kRounds = 20;
  const std::vector<std::pair<std::string, std::string>> shared = {
      {"config.json", "{\"hidden\": 576}"},
      {"model.safetensors", std::string(300000, 'w')},
      {"nested/dir/tokenizer.json", "{\"vocab\": {}}"}};
  auto commit_of = [](int round) {
    return absl::StrCat(absl::Hex(0xc0ffee00 + round, absl::kZeroPad8), std::string(32, 'a'));
  };
  auto files_of = [&](int round) {
    std::vector<std::pair<std::string, std::string>> files = shared;
    files.emplace_back(absl::StrCat("round/", round, ".safetensors"),
                       std::string(50000 + round, static_cast<char>('a' + round)));
    return files;
  };

  const std::string config_source = tmp_ + "/config.json";
  WriteFile(config_source, shared[0].second);

  // One sync as hub_sync does it: lock, check, write .incomplete, commit; link; refs.
  auto sync = [&](int worker) -> int {
    for (int round = 0; round < kRounds; ++round) {
      RepoSnapshot snapshot{repo_, "main", commit_of(round), {}};
      for (const auto& [path, content] : files_of(round)) {
        RepoFile file = MakeFile(path, content, absl::EndsWith(path, ".safetensors"));
        snapshot.files.push_back(file);
        if (worker == 1 && path == "config.json") {  // the other way in, taking the lock itself
          if (!cache().AddBlobFromFile(repo_, file, config_source).ok()) return 18;
          continue;
        }
        absl::StatusOr<FileLock> lock = cache().LockBlob(repo_, file.etag);
        if (!lock.ok()) return 10;
        absl::StatusOr<bool> present = cache().HasBlob(repo_, file, /*verify_hash=*/false);
        if (!present.ok()) return 11;
        if (*present) continue;
        std::string incomplete = cache().IncompleteBlobPath(repo_, file.etag);
        int fd = open(incomplete.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
          fs::create_directories(fs::path(incomplete).parent_path());
          fd = open(incomplete.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        }
        if (fd < 0) return 12;
        // Written in two halves, as a download would.
        size_t half = content.size() / 2;
        if (write(fd, content.data(), half) != static_cast<ssize_t>(half)) return 13;
        if (write(fd, content.data() + half, content.size() - half) !=
            static_cast<ssize_t>(content.size() - half)) {
          return 13;
        }
        close(fd);
        if (!cache().CommitIncompleteBlob(repo_, file).ok()) return 14;
      }
      if (absl::Status s = cache().LinkSnapshot(snapshot); !s.ok()) {
        std::fprintf(stderr, "worker %d round %d: %s\n", worker, round, s.ToString().c_str());
        return 15;
      }
      if (!cache().WriteRef(repo_, absl::StrCat("refs/pr/", round), snapshot.commit).ok()) {
        return 16;
      }
      if (!cache().WriteRef(repo_, "main", commit_of(0)).ok()) return 17;
    }
    return 0;
  };

  int start[2];
  ASSERT_EQ(pipe(start), 0);
  std::vector<pid_t> children;
  fflush(nullptr);
  for (int worker = 0; worker < 2; ++worker) {
    pid_t pid = fork();
    if (pid == 0) {
      char byte;
      close(start[1]);
      if (read(start[0], &byte, 1) != 0) _exit(2);  // wait for the start: EOF
      _exit(sync(worker));
    }
    children.push_back(pid);
  }
  close(start[0]);
  close(start[1]);  // both start now
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 0) << "see the worker's stderr; exit code names the step";
  }

  // One correct copy.
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(round);
    absl::StatusOr<std::vector<RepoFile>> files = cache().SnapshotFiles(repo_, commit_of(round));
    ASSERT_TRUE(files.ok()) << files.status();
    ASSERT_EQ(files->size(), 4u);
    for (const auto& [path, content] : files_of(round)) {
      EXPECT_EQ(ReadFile(cache().SnapshotDir(repo_, commit_of(round)) + "/" + path), content);
      RepoFile file = MakeFile(path, content, absl::EndsWith(path, ".safetensors"));
      EXPECT_EQ(*cache().HasBlob(repo_, file, /*verify_hash=*/true), true);
    }
    EXPECT_EQ(*cache().ResolveRevision(repo_, absl::StrCat("refs/pr/", round)), commit_of(round));
  }
  EXPECT_EQ(*cache().ResolveRevision(repo_, "main"), commit_of(0));
  for (const std::string& path : Tree(cache().RepoDir(repo_))) {
    EXPECT_FALSE(absl::StrContains(path, ".shardserve-tmp")) << path;
    EXPECT_FALSE(absl::StrContains(path, ".incomplete")) << path;
  }
  std::vector<std::string> blobs = Tree(cache().RepoDir(repo_) + "/blobs");
  EXPECT_EQ(blobs.size(), 3u + kRounds);
}

// While a writer process keeps replacing a snapshot file (a plain copy, then the link) and moving
// a ref between two commits, a reader never finds the name missing or the ref partial.
TEST_F(CacheTest, ReadersNeverSeeAMissingLinkOrAPartialRef) {
  RepoSnapshot one = AddSnapshot(repo_, kCommit, {{"config.json", "{\"a\": 1}"}});
  AddSnapshot(repo_, kCommit2, {{"config.json", "{\"a\": 1}"}}, "");
  const std::string link = cache().SnapshotDir(repo_, kCommit) + "/config.json";
  const std::string ref = cache().RepoDir(repo_) + "/refs/main";
  const std::string copy = tmp_ + "/copy";

  fflush(nullptr);
  pid_t writer = fork();
  if (writer == 0) {
    for (int i = 0; i < 300; ++i) {
      // A plain copy renamed over the link (as a client without symlink support leaves it)...
      WriteFile(copy, "{\"a\": 1}");
      if (rename(copy.c_str(), link.c_str()) != 0) _exit(1);
      // ...which LinkSnapshot replaces with the link.
      if (!cache().LinkSnapshot(one).ok()) _exit(2);
      if (!cache().WriteRef(repo_, "main", i % 2 ? kCommit : kCommit2).ok()) _exit(3);
    }
    _exit(0);
  }
  int missing = 0, partial = 0, reads = 0, status = 0;
  while (waitpid(writer, &status, WNOHANG) == 0) {
    ++reads;
    if (access(link.c_str(), R_OK) != 0) ++missing;
    std::string content = ReadFile(ref);
    if (content != kCommit && content != kCommit2) ++partial;
  }
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(missing, 0) << "of " << reads << " reads";
  EXPECT_EQ(partial, 0) << "of " << reads << " reads";
  EXPECT_EQ(ReadLink(link), "../../blobs/" + one.files[0].etag);
}

// huggingface_hub itself (offline) reads what we wrote: hf_hub_download, snapshot_download,
// try_to_load_from_cache (.no_exist) and scan_cache_dir without warnings.
TEST_F(CacheTest, HuggingfaceHubReadsTheCacheOffline) {
  const std::vector<std::pair<std::string, std::string>> contents = {
      {"config.json", "{\"model_type\": \"llama\"}"},
      {"model.safetensors", std::string(100000, 'm')},
      {"nested/deeper/tokenizer.json", "{\"version\": \"1.0\"}"}};
  AddSnapshot(repo_, kCommit, contents);
  ASSERT_TRUE(cache().WriteRef(repo_, "refs/pr/1", kCommit).ok());
  ASSERT_TRUE(cache().MarkMissing(repo_, kCommit, "model.safetensors.index.json").ok());
  // An older revision that stays cached beside it.
  AddSnapshot(repo_, kCommit2, {{"config.json", "{}"}}, "old");

  std::vector<std::string> argv = {FindOnPath("python3"), "tests/fixtures/hf_offline_check.py",
                                   cache().HubDir(), repo_.ToString(), kCommit};
  for (const auto& [path, content] : contents) {
    std::string expected = absl::StrCat(tmp_, "/expected-", argv.size());
    WriteFile(expected, content);
    argv.push_back(absl::StrCat(path, "=", expected));
  }
  for (const char* flag : {"--ref", "refs/pr/1", "--missing", "model.safetensors.index.json"}) {
    argv.push_back(flag);
  }
  setenv("HF_HUB_OFFLINE", "1", 1);
  setenv("HF_HUB_CACHE", cache().HubDir().c_str(), 1);
  setenv("HF_HOME", (tmp_ + "/hf_home").c_str(), 1);
  setenv("HF_HUB_DISABLE_TELEMETRY", "1", 1);
  shardserve::testing::RunResult r = shardserve::testing::RunProgram(argv);
  std::printf("%s", r.out.c_str());
  EXPECT_EQ(r.exit_code, 0) << "stdout:\n" << r.out << "\nstderr:\n" << r.err;
  EXPECT_THAT(r.out, HasSubstr("ok hf_hub_download nested/deeper/tokenizer.json"));
  EXPECT_THAT(r.out, HasSubstr("ok snapshot_download"));
  EXPECT_THAT(r.out, HasSubstr("ok missing model.safetensors.index.json"));
  EXPECT_THAT(r.out, HasSubstr("ok scan_cache_dir"));
  EXPECT_THAT(r.err, ::testing::Not(HasSubstr("Warning")));
}

}  // namespace
}  // namespace shardserve::hub
