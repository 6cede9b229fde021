#include "hub_sync/cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "hub_sync/cache_fs.h"

namespace shardserve::hub {

absl::StatusOr<std::string> DefaultCacheRoot(const char* (*getenv_fn)(const char*)) {
  const auto env = [getenv_fn](const char* name) -> std::string {
    const char* value = getenv_fn != nullptr ? getenv_fn(name) : std::getenv(name);
    return value == nullptr ? "" : value;
  };
  std::string dir = env("SHARDSERVE_CACHE");
  if (!dir.empty()) return dir;
  const std::string home = env("HOME");
  if (home.empty()) {
    return absl::InvalidArgumentError(
        "key 'cache_dir': not set, and neither $SHARDSERVE_CACHE nor $HOME is");
  }
  return home + "/.cache/shardserve";
}

namespace {

using cache_fs::Concat;
using cache_fs::Dir;
using cache_fs::Entry;
using cache_fs::ErrnoError;
using cache_fs::Fd;
using cache_fs::IsTempName;
using cache_fs::Join;
using cache_fs::kIoChunk;
using cache_fs::kMaxRetries;
using cache_fs::ListNames;
using cache_fs::MakeDirs;
using cache_fs::OpenChildDir;
using cache_fs::OpenIfExists;
using cache_fs::OpenSubdirs;
using cache_fs::OpenTrustedDir;
using cache_fs::ReadLinkAt;
using cache_fs::ReadSmallFileAt;
using cache_fs::RemoveIfEmpty;
using cache_fs::RemoveTree;
using cache_fs::SplitPath;
using cache_fs::StatAt;
using cache_fs::TempName;
using cache_fs::TreeBytes;
using cache_fs::Walk;
using cache_fs::WriteAll;
using cache_fs::WriteFileAtomic;

// --- Validation ----------------------------------------------------------------------------

// A remote string for an error message: quoted, escaped, bounded.
std::string Quote(absl::string_view s) {
  constexpr size_t kMax = 160;
  std::string shown = absl::CHexEscape(s.substr(0, kMax));
  return absl::StrCat("\"", shown, s.size() > kMax ? "...\"" : "\"");
}

// Every public function that builds a path re-checks its inputs.

absl::Status CheckRepo(const RepoId& repo) {
  absl::StatusOr<RepoId> parsed = ParseRepoId(repo.ToString());
  if (!parsed.ok()) return parsed.status();
  if (*parsed != repo) {
    return absl::InvalidArgumentError(absl::StrCat("invalid repo id ", Quote(repo.ToString())));
  }
  return absl::OkStatus();
}

absl::Status CheckCommit(absl::string_view commit) {
  if (IsCommitSha(commit)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("commit ", Quote(commit), " is not 40 lowercase hex digits"));
}

absl::Status CheckEtag(absl::string_view etag) {
  if (IsValidEtag(etag)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("etag ", Quote(etag), " is not 40 or 64 lowercase hex digits"));
}

// A scheme names a folder under the artifact's commit: 1-64 of [A-Za-z0-9._-], not starting
// with '.' (folders starting with '.' are not artifacts).
absl::Status CheckScheme(absl::string_view scheme) {
  bool ok = !scheme.empty() && scheme.size() <= 64 && scheme[0] != '.';
  for (char c : scheme) {
    if (!(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) {
      ok = false;
    }
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("quantization scheme ", Quote(scheme),
                                                 " is not 1-64 characters of [A-Za-z0-9._-]"));
}

absl::Status CheckFile(const RepoFile& file) {
  RETURN_IF_ERROR(ValidateRepoPath(file.path));
  RETURN_IF_ERROR(CheckEtag(file.etag));
  if (file.lfs != (file.etag.size() == 64)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file ", Quote(file.path), ": etag ", file.etag, " has ", file.etag.size(),
        " hex digits but lfs is ", file.lfs ? "true (sha256, 64)" : "false (git sha1, 40)"));
  }
  return absl::OkStatus();
}

// Streams the open file through ContentHasher; DATA_LOSS when it is shorter than `size`.
absl::StatusOr<std::string> HashFd(int fd, const std::string& path, const RepoFile& file) {
  ContentHasher hasher(file.lfs, file.size);
  std::string buffer(kIoChunk, '\0');
  uint64_t offset = 0;
  for (;;) {
    ssize_t n = pread(fd, buffer.data(), buffer.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read", path, errno);
    }
    if (n == 0) break;
    hasher.Update(absl::string_view(buffer.data(), static_cast<size_t>(n)));
    offset += static_cast<uint64_t>(n);
  }
  if (offset != file.size) {
    return absl::DataLossError(
        absl::StrCat(path, " (", file.path, "): expected ", file.size, " bytes, read ", offset));
  }
  return hasher.FinishHex();
}

// "../" once per folder between the link and the repo folder, then blobs/{etag}.
std::string LinkTarget(int folder_depth, absl::string_view etag) {
  std::string target;
  for (int i = 0; i < folder_depth + 2; ++i) target += "../";
  absl::StrAppend(&target, "blobs/", etag);
  return target;
}

// The etag a snapshot link at `folder_depth` points to, if it points into the repo's blobs/ (in
// the relative form huggingface_hub writes, or as an absolute path to the same blob).
std::optional<std::string> EtagFromLink(absl::string_view target, int folder_depth,
                                        absl::string_view blobs_dir) {
  std::string prefix = LinkTarget(folder_depth, "");
  absl::string_view etag = target;
  if (!absl::ConsumePrefix(&etag, prefix)) {
    etag = target;
    if (!absl::ConsumePrefix(&etag, absl::StrCat(blobs_dir, "/"))) return std::nullopt;
  }
  if (!IsValidEtag(etag)) return std::nullopt;
  return std::string(etag);
}

// A snapshot link: repo path and the blob it names.
struct Link {
  std::string path;
  std::string etag;
};

// The links of an open snapshot folder that point into blobs/ (not checking that the blob
// exists), sorted by path.
absl::StatusOr<std::vector<Link>> ReadLinks(const Dir& snapshot, absl::string_view blobs_dir) {
  std::vector<Entry> entries;
  RETURN_IF_ERROR(Walk(snapshot, "", 0, &entries));
  std::vector<Link> links;
  for (const Entry& entry : entries) {
    if (!S_ISLNK(entry.st.st_mode) || !ValidateRepoPath(entry.rel).ok()) continue;
    std::optional<std::string> etag = EtagFromLink(entry.link_target, entry.depth, blobs_dir);
    if (etag) links.push_back(Link{entry.rel, *etag});
  }
  return links;
}

// The commit refs/{revision} names; nullopt when the ref does not exist. DATA_LOSS when its
// content is not a commit.
absl::StatusOr<std::optional<std::string>> ReadRef(const Dir& repo_dir,
                                                   absl::string_view revision) {
  auto [dirs, leaf] = SplitPath(revision);
  ASSIGN_OR_RETURN(std::optional<Dir> refs, OpenIfExists(repo_dir, Concat({"refs"}, dirs)));
  if (!refs) return std::nullopt;
  absl::StatusOr<std::string> content = ReadSmallFileAt(*refs, leaf, 128);
  if (absl::IsNotFound(content.status())) return std::nullopt;
  if (absl::IsFailedPrecondition(content.status())) {  // a folder or a symlink
    return absl::DataLossError(absl::StrCat(Join(refs->path, leaf), " is not a ref file"));
  }
  if (!content.ok()) return content.status();
  if (!IsCommitSha(*content)) {
    return absl::DataLossError(
        absl::StrCat(Join(refs->path, leaf), " holds ", Quote(*content), ", not a 40-hex commit"));
  }
  return std::optional<std::string>(*content);
}

// Every ref (relative name under refs/, e.g. "main", "refs/pr/1") and the commit it holds;
// refs whose content is not a commit are skipped.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadAllRefs(const Dir& repo_dir) {
  std::vector<std::pair<std::string, std::string>> refs;
  ASSIGN_OR_RETURN(std::optional<Dir> refs_dir, OpenIfExists(repo_dir, {"refs"}));
  if (!refs_dir) return refs;
  std::vector<Entry> entries;
  RETURN_IF_ERROR(Walk(*refs_dir, "", 0, &entries));
  for (const Entry& entry : entries) {
    if (!S_ISREG(entry.st.st_mode) || !ValidateRevision(entry.rel).ok()) continue;
    absl::StatusOr<std::optional<std::string>> commit = ReadRef(repo_dir, entry.rel);
    if (!commit.ok() && !absl::IsDataLoss(commit.status())) return commit.status();
    if (commit.ok() && commit->has_value()) refs.emplace_back(entry.rel, **commit);
  }
  return refs;
}

// Holds several locks; released together.
using LockSet = std::vector<FileLock>;

}  // namespace

// --- FileLock --------------------------------------------------------------------------------

namespace {

absl::StatusOr<int> LockFile(const std::string& path, bool wait) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    if (!parent.empty()) RETURN_IF_ERROR(MakeDirs(parent));
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0664);
    if (fd < 0) {
      if (errno == EINTR || errno == ENOENT) continue;  // the folder was removed meanwhile
      return ErrnoError("open lock file", path, errno);
    }
    Fd holder(fd);
    int rc;
    do {
      rc = flock(fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno == EWOULDBLOCK) {
        return absl::UnavailableError(
            absl::StrCat("lock ", path, " is held by another writer (a sync in progress?)"));
      }
      return ErrnoError("lock", path, errno);
    }
    // The holder before us may have removed the lock file (Delete does); a lock on an unlinked
    // file guards nothing, so start over with the file now under that name.
    struct stat held, named;
    if (fstat(fd, &held) != 0) return ErrnoError("stat lock file", path, errno);
    if (held.st_nlink > 0 && stat(path.c_str(), &named) == 0 && named.st_ino == held.st_ino &&
        named.st_dev == held.st_dev) {
      return holder.release();
    }
  }
  return absl::InternalError(absl::StrCat("lock file ", path, " keeps being replaced"));
}

}  // namespace

absl::StatusOr<FileLock> FileLock::Acquire(const std::string& path) {
  ASSIGN_OR_RETURN(int fd, LockFile(path, /*wait=*/true));
  return FileLock(fd);
}

absl::StatusOr<FileLock> FileLock::TryAcquire(const std::string& path) {
  ASSIGN_OR_RETURN(int fd, LockFile(path, /*wait=*/false));
  return FileLock(fd);
}

FileLock::FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

FileLock::~FileLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

// --- HubCache: paths ---------------------------------------------------------------------------

absl::StatusOr<HubCache> HubCache::Open(const std::string& root) {
  if (root.empty()) return absl::InvalidArgumentError("cache root is empty");
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(root, error);
  if (error) {
    return absl::InvalidArgumentError(absl::StrCat("cache root ", root, ": ", error.message()));
  }
  std::string normal = absolute.lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  RETURN_IF_ERROR(MakeDirs(normal));
  RETURN_IF_ERROR(MakeDirs(Join(normal, "hub")));
  return HubCache(normal);
}

std::string HubCache::HubDir() const { return Join(root_, "hub"); }

std::string HubCache::RepoDir(const RepoId& repo) const {
  return Join(HubDir(), repo.CacheFolder());
}

std::string HubCache::BlobPath(const RepoId& repo, absl::string_view etag) const {
  return absl::StrCat(RepoDir(repo), "/blobs/", etag);
}

std::string HubCache::IncompleteBlobPath(const RepoId& repo, absl::string_view etag) const {
  return absl::StrCat(BlobPath(repo, etag), ".incomplete");
}

std::string HubCache::SnapshotDir(const RepoId& repo, absl::string_view commit) const {
  return absl::StrCat(RepoDir(repo), "/snapshots/", commit);
}

std::string HubCache::ArtifactDir(const RepoId& repo, absl::string_view commit,
                                  absl::string_view scheme) const {
  return absl::StrCat(root_, "/shardserve/", repo.ArtifactFolder(), "/", commit, "/", scheme);
}

// --- HubCache: writing ---------------------------------------------------------------------

namespace {

absl::StatusOr<Dir> OpenRepo(const HubCache& cache, const RepoId& repo,
                             const std::vector<std::string>& below, bool create) {
  ASSIGN_OR_RETURN(Dir hub, OpenTrustedDir(cache.HubDir(), create));
  return OpenSubdirs(hub, Concat({repo.CacheFolder()}, below), create);
}

absl::StatusOr<std::optional<Dir>> OpenRepoIfExists(const HubCache& cache, const RepoId& repo,
                                                    const std::vector<std::string>& below) {
  absl::StatusOr<Dir> dir = OpenRepo(cache, repo, below, /*create=*/false);
  if (absl::IsNotFound(dir.status())) return std::nullopt;
  if (!dir.ok()) return dir.status();
  return std::optional<Dir>(std::move(*dir));
}

std::string BlobLockPath(const HubCache& cache, const RepoId& repo, absl::string_view etag) {
  return absl::StrCat(cache.HubDir(), "/.locks/", repo.CacheFolder(), "/", etag, ".lock");
}

std::string ArtifactLockPath(const HubCache& cache, const RepoId& repo, absl::string_view commit,
                             absl::string_view scheme) {
  return absl::StrCat(cache.root(), "/shardserve/.locks/", repo.ArtifactFolder(), "/", commit, ".",
                      scheme, ".lock");
}

// The blob as a regular file of file.size bytes; DATA_LOSS otherwise, NOT_FOUND when missing.
absl::Status CheckBlobStat(const Dir& blobs, const RepoFile& file) {
  std::string path = Join(blobs.path, file.etag);
  ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(blobs, file.etag));
  if (!st) return absl::NotFoundError(absl::StrCat("blob ", path, " is missing"));
  if (!S_ISREG(st->st_mode)) {
    return absl::DataLossError(absl::StrCat("blob ", path, " is not a regular file"));
  }
  if (static_cast<uint64_t>(st->st_size) != file.size) {
    return absl::DataLossError(absl::StrCat("blob ", path, " (", file.path, "): expected ",
                                            file.size, " bytes, found ", st->st_size));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FileLock> HubCache::LockBlob(const RepoId& repo, absl::string_view etag) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckEtag(etag));
  ASSIGN_OR_RETURN(FileLock lock, FileLock::Acquire(BlobLockPath(*this, repo, etag)));
  // The holder's next step is writing blobs/{etag}.incomplete: make sure blobs/ is there (and is
  // a real folder, not a symlink out of the cache).
  RETURN_IF_ERROR(OpenRepo(*this, repo, {"blobs"}, /*create=*/true).status());
  return lock;
}

absl::StatusOr<FileLock> HubCache::LockArtifact(const RepoId& repo, absl::string_view commit,
                                                absl::string_view scheme) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckCommit(commit));
  RETURN_IF_ERROR(CheckScheme(scheme));
  return FileLock::Acquire(ArtifactLockPath(*this, repo, commit, scheme));
}

absl::StatusOr<bool> HubCache::HasBlob(const RepoId& repo, const RepoFile& file,
                                       bool verify_hash) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckFile(file));
  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenRepoIfExists(*this, repo, {"blobs"}));
  if (!blobs) return false;
  absl::Status stat_status = CheckBlobStat(*blobs, file);
  if (absl::IsNotFound(stat_status)) return false;
  RETURN_IF_ERROR(stat_status);
  if (!verify_hash) return true;
  std::string path = Join(blobs->path, file.etag);
  int fd = openat(blobs->fd.get(), file.etag.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return false;
    return ErrnoError("open", path, errno);
  }
  Fd holder(fd);
  ASSIGN_OR_RETURN(std::string found, HashFd(fd, path, file));
  if (found != file.etag) {
    return absl::DataLossError(
        absl::StrCat("blob ", path, " (", file.path, ") hashes to ", found, ", not to its name"));
  }
  return true;
}

absl::Status HubCache::RemoveBlob(const RepoId& repo, absl::string_view etag) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckEtag(etag));
  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenRepoIfExists(*this, repo, {"blobs"}));
  if (!blobs) return absl::OkStatus();
  std::string name(etag);
  if (unlinkat(blobs->fd.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
    return ErrnoError("remove blob", Join(blobs->path, name), errno);
  }
  if (fsync(blobs->fd.get()) != 0) return ErrnoError("fsync folder", blobs->path, errno);
  return absl::OkStatus();
}

absl::Status HubCache::CommitIncompleteBlob(const RepoId& repo, const RepoFile& file,
                                            bool verify_hash) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckFile(file));
  const std::string incomplete = absl::StrCat(file.etag, ".incomplete");
  absl::StatusOr<Dir> blobs_or = OpenRepo(*this, repo, {"blobs"}, /*create=*/false);
  if (absl::IsNotFound(blobs_or.status())) {
    return absl::NotFoundError(
        absl::StrCat(IncompleteBlobPath(repo, file.etag), " does not exist"));
  }
  if (!blobs_or.ok()) return blobs_or.status();
  const Dir& blobs = *blobs_or;
  const std::string incomplete_path = Join(blobs.path, incomplete);
  const std::string final_path = Join(blobs.path, file.etag);
  int fd = openat(blobs.fd.get(), incomplete.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", incomplete_path, errno);
  Fd holder(fd);
  auto discard = [&](absl::Status status) {
    holder.Reset();
    unlinkat(blobs.fd.get(), incomplete.c_str(), 0);
    return status;
  };
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoError("stat", incomplete_path, errno);
  if (!S_ISREG(st.st_mode)) {
    return discard(absl::DataLossError(absl::StrCat(incomplete_path, " is not a regular file")));
  }
  if (static_cast<uint64_t>(st.st_size) != file.size) {
    return discard(
        absl::DataLossError(absl::StrCat(incomplete_path, " (", file.path, "): expected ",
                                         file.size, " bytes, found ", st.st_size, "; removed")));
  }
  absl::StatusOr<std::string> found = verify_hash ? HashFd(fd, incomplete_path, file) : file.etag;
  if (absl::IsDataLoss(found.status())) return discard(found.status());
  if (!found.ok()) return found.status();
  if (*found != file.etag) {
    return discard(absl::DataLossError(absl::StrCat(
        incomplete_path, " (", file.path, "): expected ", file.lfs ? "sha256 " : "git blob sha1 ",
        file.etag, ", found ", *found, "; removed")));
  }
  // The data must be on disk before the name says it is complete.
  if (fsync(fd) != 0) return ErrnoError("fsync", incomplete_path, errno);
  holder.Reset();
  if (renameat(blobs.fd.get(), incomplete.c_str(), blobs.fd.get(), file.etag.c_str()) != 0) {
    return ErrnoError(absl::StrCat("rename ", incomplete_path, " to"), final_path, errno);
  }
  if (fsync(blobs.fd.get()) != 0) return ErrnoError("fsync folder", blobs.path, errno);
  return absl::OkStatus();
}

absl::Status HubCache::AddBlobFromFile(const RepoId& repo, const RepoFile& file,
                                       const std::string& source_path) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckFile(file));
  int source_fd = open(source_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (source_fd < 0) return ErrnoError("open", source_path, errno);
  Fd source(source_fd);
  struct stat source_stat;
  if (fstat(source_fd, &source_stat) != 0) return ErrnoError("stat", source_path, errno);
  if (!S_ISREG(source_stat.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(source_path, " is not a regular file"));
  }
  if (static_cast<uint64_t>(source_stat.st_size) != file.size) {
    return absl::DataLossError(absl::StrCat(source_path, " (", file.path, "): expected ", file.size,
                                            " bytes, found ", source_stat.st_size));
  }

  ASSIGN_OR_RETURN(FileLock lock, LockBlob(repo, file.etag));
  absl::StatusOr<bool> present = HasBlob(repo, file, /*verify_hash=*/true);
  if (present.ok() && *present) return absl::OkStatus();
  if (!present.ok()) {
    if (!absl::IsDataLoss(present.status())) return present.status();
    // A wrong blob under the final name (not written by us): replace it.
    RETURN_IF_ERROR(RemoveBlob(repo, file.etag));
  }

  ASSIGN_OR_RETURN(Dir blobs, OpenRepo(*this, repo, {"blobs"}, /*create=*/true));
  const std::string incomplete = absl::StrCat(file.etag, ".incomplete");
  const std::string incomplete_path = Join(blobs.path, incomplete);
  int out_fd = openat(blobs.fd.get(), incomplete.c_str(),
                      O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (out_fd < 0) return ErrnoError("create", incomplete_path, errno);
  Fd out(out_fd);
  absl::Status status;
  std::string buffer(kIoChunk, '\0');
  for (;;) {
    ssize_t n = read(source_fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoError("read", source_path, errno);
      break;
    }
    if (n == 0) break;
    status =
        WriteAll(out_fd, absl::string_view(buffer.data(), static_cast<size_t>(n)), incomplete_path);
    if (!status.ok()) break;
  }
  out.Reset();
  if (status.ok()) status = CommitIncompleteBlob(repo, file);
  if (!status.ok()) unlinkat(blobs.fd.get(), incomplete.c_str(), 0);
  return status;
}

absl::Status HubCache::LinkSnapshot(const RepoSnapshot& snapshot) const {
  const RepoId& repo = snapshot.repo;
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckCommit(snapshot.commit));
  std::set<std::string> paths;
  for (const RepoFile& file : snapshot.files) {
    RETURN_IF_ERROR(CheckFile(file));
    if (!paths.insert(file.path).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("snapshot ", snapshot.commit, " lists ", Quote(file.path), " twice"));
    }
  }
  // Every blob first: a snapshot is linked only when all of its content is in the cache.
  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenRepoIfExists(*this, repo, {"blobs"}));
  for (const RepoFile& file : snapshot.files) {
    absl::Status status =
        blobs
            ? CheckBlobStat(*blobs, file)
            : absl::NotFoundError(absl::StrCat("blob ", BlobPath(repo, file.etag), " is missing"));
    if (absl::IsNotFound(status) || absl::IsDataLoss(status)) {
      return absl::FailedPreconditionError(absl::StrCat("cannot link ", Quote(file.path), " of ",
                                                        repo.ToString(), "@", snapshot.commit, ": ",
                                                        status.message()));
    }
    RETURN_IF_ERROR(status);
  }

  ASSIGN_OR_RETURN(Dir snapshot_dir,
                   OpenRepo(*this, repo, {"snapshots", snapshot.commit}, /*create=*/true));
  ASSIGN_OR_RETURN(std::optional<Dir> no_exist,
                   OpenRepoIfExists(*this, repo, {".no_exist", snapshot.commit}));
  std::map<std::string, Dir> folders;  // by folder path relative to the snapshot; fsync'ed last
  for (const RepoFile& file : snapshot.files) {
    auto [dirs, leaf] = SplitPath(file.path);
    const std::string folder_key = absl::StrJoin(dirs, "/");
    auto it = folders.find(folder_key);
    if (it == folders.end()) {
      ASSIGN_OR_RETURN(Dir folder, OpenSubdirs(snapshot_dir, dirs, /*create=*/true));
      it = folders.emplace(folder_key, std::move(folder)).first;
    }
    const Dir& folder = it->second;
    const std::string target = LinkTarget(static_cast<int>(dirs.size()), file.etag);
    const std::string link_path = Join(folder.path, leaf);

    absl::StatusOr<std::string> existing = ReadLinkAt(folder, leaf);
    if (existing.ok() && *existing == target) continue;
    // Under the blob lock, so Delete cannot remove the blob between our check and the link.
    ASSIGN_OR_RETURN(FileLock lock, LockBlob(repo, file.etag));
    absl::Status blob_status = CheckBlobStat(*blobs, file);
    if (!blob_status.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot link ", Quote(file.path), ": ", blob_status.message()));
    }
    bool linked = false;
    for (int attempt = 0; attempt < kMaxRetries && !linked; ++attempt) {
      const std::string temp = TempName();
      if (symlinkat(target.c_str(), folder.fd.get(), temp.c_str()) != 0) {
        if (errno == EEXIST || errno == EINTR) continue;
        return ErrnoError("create link", Join(folder.path, temp), errno);
      }
      if (renameat(folder.fd.get(), temp.c_str(), folder.fd.get(), leaf.c_str()) != 0) {
        int err = errno;
        unlinkat(folder.fd.get(), temp.c_str(), 0);
        return ErrnoError(absl::StrCat("rename link to"), link_path, err);
      }
      linked = true;
    }
    if (!linked) return absl::InternalError(absl::StrCat("no free temporary name for ", link_path));
    if (no_exist) {
      // A file that exists is no longer known-missing (huggingface_hub checks .no_exist first).
      absl::StatusOr<std::optional<Dir>> marker_dir = OpenIfExists(*no_exist, dirs);
      if (marker_dir.ok() && marker_dir->has_value()) {
        unlinkat((*marker_dir)->fd.get(), leaf.c_str(), 0);
      }
    }
  }
  for (const auto& [key, folder] : folders) {
    if (fsync(folder.fd.get()) != 0) return ErrnoError("fsync folder", folder.path, errno);
  }
  return absl::OkStatus();
}

absl::Status HubCache::WriteRef(const RepoId& repo, absl::string_view revision,
                                absl::string_view commit) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(ValidateRevision(revision));
  RETURN_IF_ERROR(CheckCommit(commit));
  if (revision == commit) return absl::OkStatus();
  if (IsCommitSha(revision)) {
    return absl::InvalidArgumentError(absl::StrCat("refusing ref ", Quote(revision), " -> ", commit,
                                                   ": a commit cannot name another"));
  }
  // A ref must never name a snapshot readers cannot find.
  ASSIGN_OR_RETURN(std::optional<Dir> snapshot,
                   OpenRepoIfExists(*this, repo, {"snapshots", std::string(commit)}));
  if (!snapshot) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot point ", repo.ToString(), " ref ", Quote(revision), " at ", commit,
                     ": snapshot ", SnapshotDir(repo, commit), " does not exist"));
  }
  auto [dirs, leaf] = SplitPath(revision);
  ASSIGN_OR_RETURN(Dir refs, OpenRepo(*this, repo, Concat({"refs"}, dirs), /*create=*/true));
  absl::StatusOr<std::string> current = ReadSmallFileAt(refs, leaf, 128);
  if (current.ok() && *current == commit) return absl::OkStatus();
  return WriteFileAtomic(refs, leaf, commit);
}

absl::Status HubCache::MarkMissing(const RepoId& repo, absl::string_view commit,
                                   absl::string_view path) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckCommit(commit));
  RETURN_IF_ERROR(ValidateRepoPath(path));
  auto [dirs, leaf] = SplitPath(path);
  ASSIGN_OR_RETURN(Dir folder,
                   OpenRepo(*this, repo, Concat({".no_exist", std::string(commit)}, dirs),
                            /*create=*/true));
  int fd = openat(folder.fd.get(), leaf.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", Join(folder.path, leaf), errno);
  close(fd);
  return absl::OkStatus();
}

// --- HubCache: reading -------------------------------------------------------------------------

absl::StatusOr<std::string> HubCache::ResolveRevision(const RepoId& repo,
                                                      absl::string_view revision) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(ValidateRevision(revision));
  ASSIGN_OR_RETURN(std::optional<Dir> repo_dir, OpenRepoIfExists(*this, repo, {}));
  if (repo_dir) {
    if (IsCommitSha(revision)) {
      ASSIGN_OR_RETURN(std::optional<Dir> snapshot,
                       OpenIfExists(*repo_dir, {"snapshots", std::string(revision)}));
      if (snapshot) return std::string(revision);
    }
    ASSIGN_OR_RETURN(std::optional<std::string> commit, ReadRef(*repo_dir, revision));
    if (commit) return *commit;
  }
  return absl::NotFoundError(
      absl::StrCat("revision ", Quote(revision), " of ", repo.ToString(), " is not in the cache"));
}

absl::StatusOr<std::vector<RepoFile>> HubCache::SnapshotFiles(const RepoId& repo,
                                                              absl::string_view commit) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  RETURN_IF_ERROR(CheckCommit(commit));
  ASSIGN_OR_RETURN(std::optional<Dir> snapshot,
                   OpenRepoIfExists(*this, repo, {"snapshots", std::string(commit)}));
  if (!snapshot) {
    return absl::NotFoundError(
        absl::StrCat("snapshot ", commit, " of ", repo.ToString(), " is not in the cache"));
  }
  const std::string blobs_path = absl::StrCat(RepoDir(repo), "/blobs");
  ASSIGN_OR_RETURN(std::vector<Link> links, ReadLinks(*snapshot, blobs_path));
  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenRepoIfExists(*this, repo, {"blobs"}));
  std::vector<RepoFile> files;
  if (!blobs) return files;
  for (const Link& link : links) {
    ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(*blobs, link.etag));
    if (!st || !S_ISREG(st->st_mode)) continue;
    files.push_back(
        RepoFile{link.path, static_cast<uint64_t>(st->st_size), link.etag, link.etag.size() == 64});
  }
  return files;
}

bool HubCache::IsMarkedMissing(const RepoId& repo, absl::string_view commit,
                               absl::string_view path) const {
  if (!CheckRepo(repo).ok() || !IsCommitSha(commit) || !ValidateRepoPath(path).ok()) return false;
  auto [dirs, leaf] = SplitPath(path);
  absl::StatusOr<std::optional<Dir>> folder =
      OpenRepoIfExists(*this, repo, Concat({".no_exist", std::string(commit)}, dirs));
  if (!folder.ok() || !folder->has_value()) return false;
  absl::StatusOr<std::optional<struct stat>> st = StatAt(**folder, leaf);
  return st.ok() && st->has_value() && S_ISREG((*st)->st_mode);
}

namespace {

// The artifacts of one commit folder under shardserve/org--name (only those with a manifest).
absl::StatusOr<std::vector<ArtifactInfo>> ListArtifacts(const Dir& commit_dir) {
  std::vector<ArtifactInfo> artifacts;
  ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(commit_dir));
  for (const std::string& scheme : names) {
    if (!CheckScheme(scheme).ok()) continue;  // also skips names starting with '.'

    absl::StatusOr<Dir> dir = OpenChildDir(commit_dir, scheme, /*create=*/false);
    if (!dir.ok()) continue;  // a file, a symlink, or removed meanwhile: not an artifact
    ASSIGN_OR_RETURN(std::optional<struct stat> manifest, StatAt(*dir, "manifest.json"));
    if (!manifest || !S_ISREG(manifest->st_mode)) continue;
    ArtifactInfo info;
    info.scheme = scheme;
    ASSIGN_OR_RETURN(info.size_bytes, TreeBytes(*dir));
    absl::StatusOr<nlohmann::json> json = ParseJsonFile(Join(dir->path, "manifest.json"));
    if (json.ok() && json->is_object()) {
      auto it = json->find("tool_version");
      if (it != json->end() && it->is_string()) info.tool_version = it->get<std::string>();
    }
    artifacts.push_back(std::move(info));
  }
  return artifacts;
}

absl::StatusOr<std::optional<Dir>> OpenArtifactsIfExists(const HubCache& cache, const RepoId& repo,
                                                         const std::vector<std::string>& below) {
  absl::StatusOr<Dir> base = OpenTrustedDir(Join(cache.root(), "shardserve"), /*create=*/false);
  if (absl::IsNotFound(base.status())) return std::nullopt;
  if (!base.ok()) return base.status();
  return OpenIfExists(*base, Concat({repo.ArtifactFolder()}, below));
}

absl::StatusOr<RepoInfo> ListRepo(const HubCache& cache, const RepoId& repo, const Dir& repo_dir) {
  RepoInfo info;
  info.repo = repo;
  std::map<std::string, RevisionInfo> revisions;

  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenIfExists(repo_dir, {"blobs"}));
  if (blobs) {
    ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*blobs));
    for (const std::string& name : names) {
      if (!IsValidEtag(name)) continue;
      ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(*blobs, name));
      if (st && S_ISREG(st->st_mode)) info.size_bytes += static_cast<uint64_t>(st->st_size);
    }
  }

  ASSIGN_OR_RETURN(std::optional<Dir> snapshots, OpenIfExists(repo_dir, {"snapshots"}));
  if (snapshots) {
    ASSIGN_OR_RETURN(std::vector<std::string> commits, ListNames(*snapshots));
    for (const std::string& commit : commits) {
      if (!IsCommitSha(commit)) continue;
      absl::StatusOr<Dir> snapshot = OpenChildDir(*snapshots, commit, /*create=*/false);
      if (!snapshot.ok()) continue;  // not a folder, or removed meanwhile
      RevisionInfo& revision = revisions[commit];
      revision.commit = commit;
      struct stat st;
      if (fstat(snapshot->fd.get(), &st) == 0) revision.modified_unix_seconds = st.st_mtime;
      std::vector<Entry> entries;
      RETURN_IF_ERROR(Walk(*snapshot, "", 0, &entries));
      for (const Entry& entry : entries) {
        revision.modified_unix_seconds =
            std::max<int64_t>(revision.modified_unix_seconds, entry.st.st_mtime);
      }
      ASSIGN_OR_RETURN(std::vector<RepoFile> files, cache.SnapshotFiles(repo, commit));
      std::set<std::string> counted;
      revision.files = static_cast<uint32_t>(files.size());
      for (const RepoFile& file : files) {
        if (counted.insert(file.etag).second) revision.size_bytes += file.size;
      }
    }
  }

  ASSIGN_OR_RETURN(std::optional<Dir> artifacts, OpenArtifactsIfExists(cache, repo, {}));
  if (artifacts) {
    ASSIGN_OR_RETURN(std::vector<std::string> commits, ListNames(*artifacts));
    for (const std::string& commit : commits) {
      if (!IsCommitSha(commit)) continue;
      absl::StatusOr<Dir> commit_dir = OpenChildDir(*artifacts, commit, /*create=*/false);
      if (!commit_dir.ok()) continue;
      ASSIGN_OR_RETURN(std::vector<ArtifactInfo> found, ListArtifacts(*commit_dir));
      if (found.empty()) continue;
      RevisionInfo& revision = revisions[commit];
      revision.commit = commit;
      for (ArtifactInfo& artifact : found) {
        info.size_bytes += artifact.size_bytes;
        revision.artifacts.push_back(std::move(artifact));
      }
    }
  }

  ASSIGN_OR_RETURN(auto refs, ReadAllRefs(repo_dir));
  for (const auto& [name, commit] : refs) {
    auto it = revisions.find(commit);
    if (it != revisions.end()) it->second.refs.push_back(name);
  }
  for (auto& [commit, revision] : revisions) {
    std::sort(revision.refs.begin(), revision.refs.end());
    info.revisions.push_back(std::move(revision));
  }
  return info;
}

}  // namespace

absl::StatusOr<std::vector<RepoInfo>> HubCache::List(absl::string_view repo_prefix) const {
  std::vector<RepoInfo> repos;
  absl::StatusOr<Dir> hub = OpenTrustedDir(HubDir(), /*create=*/false);
  if (absl::IsNotFound(hub.status())) return repos;
  if (!hub.ok()) return hub.status();
  ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*hub));
  for (const std::string& name : names) {
    if (!absl::StartsWith(name, "models--")) continue;
    absl::StatusOr<RepoId> repo = RepoIdFromCacheFolder(name);
    if (!repo.ok() || repo->CacheFolder() != name) continue;
    if (!absl::StartsWith(repo->ToString(), repo_prefix)) continue;
    absl::StatusOr<Dir> repo_dir = OpenChildDir(*hub, name, /*create=*/false);
    if (!repo_dir.ok()) continue;  // a file, a symlink, or removed meanwhile
    absl::StatusOr<RepoInfo> info = ListRepo(*this, *repo, *repo_dir);
    if (absl::IsNotFound(info.status())) continue;  // deleted while we listed it
    if (!info.ok()) return info.status();
    repos.push_back(std::move(*info));
  }
  std::sort(repos.begin(), repos.end(),
            [](const RepoInfo& a, const RepoInfo& b) { return a.repo < b.repo; });
  return repos;
}

// --- HubCache: Delete --------------------------------------------------------------------------

namespace {

// Relative to the cache root, for DeleteResult::removed.
std::string Relative(const HubCache& cache, const std::string& path) {
  absl::string_view rel = path;
  if (absl::ConsumePrefix(&rel, cache.root())) absl::ConsumePrefix(&rel, "/");
  return std::string(rel);
}

absl::Status TryLockAll(const std::vector<std::string>& paths, LockSet* locks,
                        absl::string_view what) {
  for (const std::string& path : paths) {
    absl::StatusOr<FileLock> lock = FileLock::TryAcquire(path);
    if (absl::IsUnavailable(lock.status())) {
      return absl::UnavailableError(
          absl::StrCat("cannot delete ", what, " now: ", lock.status().message()));
    }
    if (!lock.ok()) return lock.status();
    locks->push_back(std::move(*lock));
  }
  return absl::OkStatus();
}

// Locks every artifact folder under shardserve/org--name/{commit}/ (all commits when commit is
// empty).
absl::Status LockArtifacts(const HubCache& cache, const RepoId& repo, const std::string& commit,
                           LockSet* locks, absl::string_view what) {
  ASSIGN_OR_RETURN(std::optional<Dir> base, OpenArtifactsIfExists(cache, repo, {}));
  if (!base) return absl::OkStatus();
  std::vector<std::string> commits;
  if (commit.empty()) {
    ASSIGN_OR_RETURN(commits, ListNames(*base));
  } else {
    commits.push_back(commit);
  }
  std::vector<std::string> paths;
  for (const std::string& c : commits) {
    if (!IsCommitSha(c)) continue;
    ASSIGN_OR_RETURN(std::optional<Dir> commit_dir, OpenIfExists(*base, {c}));
    if (!commit_dir) continue;
    ASSIGN_OR_RETURN(std::vector<std::string> schemes, ListNames(*commit_dir));
    for (const std::string& scheme : schemes) {
      if (CheckScheme(scheme).ok()) paths.push_back(ArtifactLockPath(cache, repo, c, scheme));
    }
  }
  return TryLockAll(paths, locks, what);
}

absl::StatusOr<DeleteResult> DeleteRepo(const HubCache& cache, const RepoId& repo) {
  DeleteResult result;
  const std::string what = repo.ToString();
  ASSIGN_OR_RETURN(Dir hub, OpenTrustedDir(cache.HubDir(), /*create=*/true));
  ASSIGN_OR_RETURN(std::optional<struct stat> repo_stat, StatAt(hub, repo.CacheFolder()));
  absl::StatusOr<Dir> artifacts_base =
      OpenTrustedDir(Join(cache.root(), "shardserve"), /*create=*/false);
  if (!artifacts_base.ok() && !absl::IsNotFound(artifacts_base.status())) {
    return artifacts_base.status();
  }
  std::optional<struct stat> artifacts_stat;
  if (artifacts_base.ok()) {
    ASSIGN_OR_RETURN(artifacts_stat, StatAt(*artifacts_base, repo.ArtifactFolder()));
  }
  if (!repo_stat && !artifacts_stat) {
    return absl::NotFoundError(absl::StrCat(what, " is not in the cache"));
  }

  LockSet locks;
  std::vector<std::string> lock_paths;
  ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenRepoIfExists(cache, repo, {"blobs"}));
  if (blobs) {
    ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*blobs));
    std::set<std::string> etags;
    for (absl::string_view name : names) {
      absl::ConsumeSuffix(&name, ".incomplete");
      if (IsValidEtag(name)) etags.insert(std::string(name));
    }
    // Also the blobs a writer has locked but not started yet.
    absl::StatusOr<Dir> lock_dir =
        OpenTrustedDir(absl::StrCat(cache.HubDir(), "/.locks/", repo.CacheFolder()), false);
    if (lock_dir.ok()) {
      ASSIGN_OR_RETURN(std::vector<std::string> lock_names, ListNames(*lock_dir));
      for (absl::string_view name : lock_names) {
        if (absl::ConsumeSuffix(&name, ".lock") && IsValidEtag(name)) {
          etags.insert(std::string(name));
        }
      }
    }
    for (const std::string& etag : etags) lock_paths.push_back(BlobLockPath(cache, repo, etag));
  }
  RETURN_IF_ERROR(TryLockAll(lock_paths, &locks, what));
  RETURN_IF_ERROR(LockArtifacts(cache, repo, "", &locks, what));

  if (repo_stat) {
    // refs first, then snapshots: a reader sees the repository or nothing usable, never a ref
    // to a missing snapshot.
    ASSIGN_OR_RETURN(std::optional<Dir> repo_dir, OpenRepoIfExists(cache, repo, {}));
    if (repo_dir) {
      RETURN_IF_ERROR(RemoveTree(*repo_dir, "refs", nullptr));
      RETURN_IF_ERROR(RemoveTree(*repo_dir, "snapshots", nullptr));
      if (blobs) {
        uint64_t blob_bytes = 0;
        RETURN_IF_ERROR(RemoveTree(*repo_dir, "blobs", &blob_bytes));
        result.freed_bytes += blob_bytes;
      }
    }
    RETURN_IF_ERROR(RemoveTree(hub, repo.CacheFolder(), nullptr));
    result.removed.push_back(Relative(cache, Join(hub.path, repo.CacheFolder())));
  }
  absl::StatusOr<std::optional<Dir>> hub_locks = OpenIfExists(hub, {".locks"});
  if (hub_locks.ok() && hub_locks->has_value()) {
    ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(**hub_locks, repo.CacheFolder()));
    if (st) {
      RETURN_IF_ERROR(RemoveTree(**hub_locks, repo.CacheFolder(), nullptr));
      result.removed.push_back(Relative(cache, Join((*hub_locks)->path, repo.CacheFolder())));
    }
  }
  if (artifacts_base.ok()) {
    if (artifacts_stat) {
      uint64_t artifact_bytes = 0;
      RETURN_IF_ERROR(RemoveTree(*artifacts_base, repo.ArtifactFolder(), &artifact_bytes));
      result.freed_bytes += artifact_bytes;
      result.removed.push_back(Relative(cache, Join(artifacts_base->path, repo.ArtifactFolder())));
    }
    absl::StatusOr<std::optional<Dir>> artifact_locks = OpenIfExists(*artifacts_base, {".locks"});
    if (artifact_locks.ok() && artifact_locks->has_value()) {
      ASSIGN_OR_RETURN(std::optional<struct stat> st,
                       StatAt(**artifact_locks, repo.ArtifactFolder()));
      if (st) {
        RETURN_IF_ERROR(RemoveTree(**artifact_locks, repo.ArtifactFolder(), nullptr));
        result.removed.push_back(
            Relative(cache, Join((*artifact_locks)->path, repo.ArtifactFolder())));
      }
    }
  }
  std::sort(result.removed.begin(), result.removed.end());
  return result;
}

// Etags linked by every snapshot of the repo except `commit`.
absl::StatusOr<std::set<std::string>> EtagsOfOtherSnapshots(const HubCache& cache,
                                                            const RepoId& repo,
                                                            const std::string& commit) {
  std::set<std::string> etags;
  ASSIGN_OR_RETURN(std::optional<Dir> snapshots, OpenRepoIfExists(cache, repo, {"snapshots"}));
  if (!snapshots) return etags;
  const std::string blobs_path = absl::StrCat(cache.RepoDir(repo), "/blobs");
  ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*snapshots));
  for (const std::string& name : names) {
    if (name == commit || IsTempName(name)) continue;
    absl::StatusOr<Dir> other = OpenChildDir(*snapshots, name, /*create=*/false);
    if (!other.ok()) continue;
    ASSIGN_OR_RETURN(std::vector<Link> links, ReadLinks(*other, blobs_path));
    for (const Link& link : links) etags.insert(link.etag);
  }
  return etags;
}

// Removes the folders of `rel_dirs` (deepest first) below `base` while they are empty.
void RemoveEmptyChain(const Dir& base, std::vector<std::string> rel_dirs, const HubCache& cache,
                      DeleteResult* result) {
  while (!rel_dirs.empty()) {
    std::string leaf = rel_dirs.back();
    rel_dirs.pop_back();
    absl::StatusOr<std::optional<Dir>> parent = OpenIfExists(base, rel_dirs);
    if (!parent.ok() || !parent->has_value()) return;
    if (!RemoveIfEmpty(**parent, leaf)) return;
    result->removed.push_back(Relative(cache, Join((*parent)->path, leaf)));
  }
}

absl::StatusOr<DeleteResult> DeleteRevision(const HubCache& cache, const RepoId& repo,
                                            const std::string& commit, absl::string_view revision) {
  DeleteResult result;
  const std::string what = absl::StrCat(repo.ToString(), "@", revision);
  ASSIGN_OR_RETURN(std::optional<Dir> repo_dir, OpenRepoIfExists(cache, repo, {}));
  const std::string blobs_path = absl::StrCat(cache.RepoDir(repo), "/blobs");

  std::optional<Dir> snapshot;
  std::vector<std::string> refs_to_remove;
  std::optional<struct stat> no_exist_stat, tree_stat;
  if (repo_dir) {
    ASSIGN_OR_RETURN(snapshot, OpenIfExists(*repo_dir, {"snapshots", commit}));
    ASSIGN_OR_RETURN(auto refs, ReadAllRefs(*repo_dir));
    for (const auto& [name, ref_commit] : refs) {
      if (ref_commit == commit) refs_to_remove.push_back(name);
    }
    ASSIGN_OR_RETURN(std::optional<Dir> no_exist, OpenIfExists(*repo_dir, {".no_exist"}));
    if (no_exist) {
      ASSIGN_OR_RETURN(no_exist_stat, StatAt(*no_exist, commit));
    }
    ASSIGN_OR_RETURN(std::optional<Dir> trees, OpenIfExists(*repo_dir, {"trees"}));
    if (trees) {
      ASSIGN_OR_RETURN(tree_stat, StatAt(*trees, absl::StrCat(commit, ".json")));
    }
  }
  ASSIGN_OR_RETURN(std::optional<Dir> artifacts, OpenArtifactsIfExists(cache, repo, {}));
  std::optional<struct stat> artifact_stat;
  if (artifacts) {
    ASSIGN_OR_RETURN(artifact_stat, StatAt(*artifacts, commit));
  }
  if (!snapshot && refs_to_remove.empty() && !no_exist_stat && !tree_stat && !artifact_stat) {
    return absl::NotFoundError(absl::StrCat("revision ", Quote(revision), " (commit ", commit,
                                            ") of ", repo.ToString(), " is not in the cache"));
  }

  // Blobs only this snapshot links to, decided again under their locks: a concurrent
  // LinkSnapshot links a blob only while holding its lock.
  std::vector<std::string> candidates;
  if (snapshot) {
    ASSIGN_OR_RETURN(std::vector<Link> links, ReadLinks(*snapshot, blobs_path));
    ASSIGN_OR_RETURN(std::set<std::string> others, EtagsOfOtherSnapshots(cache, repo, commit));
    std::set<std::string> mine;
    for (const Link& link : links) {
      if (!others.count(link.etag)) mine.insert(link.etag);
    }
    candidates.assign(mine.begin(), mine.end());
  }
  LockSet locks;
  std::vector<std::string> lock_paths;
  for (const std::string& etag : candidates) lock_paths.push_back(BlobLockPath(cache, repo, etag));
  RETURN_IF_ERROR(TryLockAll(lock_paths, &locks, what));
  RETURN_IF_ERROR(LockArtifacts(cache, repo, commit, &locks, what));
  if (!candidates.empty()) {
    ASSIGN_OR_RETURN(std::set<std::string> others, EtagsOfOtherSnapshots(cache, repo, commit));
    std::erase_if(candidates, [&](const std::string& etag) { return others.count(etag) > 0; });
  }

  if (repo_dir) {
    for (const std::string& ref : refs_to_remove) {
      auto [dirs, leaf] = SplitPath(ref);
      ASSIGN_OR_RETURN(std::optional<Dir> folder, OpenIfExists(*repo_dir, Concat({"refs"}, dirs)));
      if (!folder) continue;
      // Re-read: another writer may have moved the ref to a new commit meanwhile.
      absl::StatusOr<std::string> content = ReadSmallFileAt(*folder, leaf, 128);
      if (!content.ok() || *content != commit) continue;
      if (unlinkat(folder->fd.get(), leaf.c_str(), 0) != 0 && errno != ENOENT) {
        return ErrnoError("remove ref", Join(folder->path, leaf), errno);
      }
      result.removed.push_back(Relative(cache, Join(folder->path, leaf)));
      RemoveEmptyChain(*repo_dir, Concat({"refs"}, dirs), cache, &result);
    }
    if (snapshot) {
      ASSIGN_OR_RETURN(Dir snapshots, OpenChildDir(*repo_dir, "snapshots", /*create=*/false));
      RETURN_IF_ERROR(RemoveTree(snapshots, commit, nullptr));
      result.removed.push_back(Relative(cache, Join(snapshots.path, commit)));
    }
    if (!candidates.empty()) {
      ASSIGN_OR_RETURN(Dir blobs, OpenChildDir(*repo_dir, "blobs", /*create=*/false));
      for (const std::string& etag : candidates) {
        ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(blobs, etag));
        if (!st) continue;
        if (unlinkat(blobs.fd.get(), etag.c_str(), 0) != 0) {
          if (errno == ENOENT) continue;
          return ErrnoError("remove blob", Join(blobs.path, etag), errno);
        }
        if (S_ISREG(st->st_mode)) result.freed_bytes += static_cast<uint64_t>(st->st_size);
        result.removed.push_back(Relative(cache, Join(blobs.path, etag)));
      }
    }
    if (no_exist_stat) {
      ASSIGN_OR_RETURN(Dir no_exist, OpenChildDir(*repo_dir, ".no_exist", /*create=*/false));
      RETURN_IF_ERROR(RemoveTree(no_exist, commit, nullptr));
      result.removed.push_back(Relative(cache, Join(no_exist.path, commit)));
      RemoveEmptyChain(*repo_dir, {".no_exist"}, cache, &result);
    }
    if (tree_stat) {
      // huggingface_hub's cached listing of this commit (newer clients write it).
      ASSIGN_OR_RETURN(Dir trees, OpenChildDir(*repo_dir, "trees", /*create=*/false));
      RETURN_IF_ERROR(RemoveTree(trees, absl::StrCat(commit, ".json"), nullptr));
      result.removed.push_back(Relative(cache, Join(trees.path, absl::StrCat(commit, ".json"))));
      RemoveEmptyChain(*repo_dir, {"trees"}, cache, &result);
    }
    // With no snapshot left and no blob, the repository folder goes too (huggingface_hub's
    // scan_cache_dir reports a repo folder without snapshots/ as corrupted, so snapshots/ stays
    // as long as anything else does).
    ASSIGN_OR_RETURN(std::optional<Dir> snapshots, OpenIfExists(*repo_dir, {"snapshots"}));
    ASSIGN_OR_RETURN(std::optional<Dir> blobs, OpenIfExists(*repo_dir, {"blobs"}));
    bool snapshots_empty = true, blobs_empty = true;
    if (snapshots) {
      ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*snapshots));
      snapshots_empty = names.empty();
    }
    if (blobs) {
      ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*blobs));
      blobs_empty = names.empty();
    }
    if (snapshots_empty && blobs_empty) {
      RemoveEmptyChain(*repo_dir, {"refs"}, cache, &result);
      RemoveEmptyChain(*repo_dir, {"blobs"}, cache, &result);
      RemoveEmptyChain(*repo_dir, {"snapshots"}, cache, &result);
      ASSIGN_OR_RETURN(Dir hub, OpenTrustedDir(cache.HubDir(), /*create=*/false));
      RemoveEmptyChain(hub, {repo.CacheFolder()}, cache, &result);
    }
  }
  if (artifact_stat) {
    uint64_t bytes = 0;
    RETURN_IF_ERROR(RemoveTree(*artifacts, commit, &bytes));
    result.freed_bytes += bytes;
    result.removed.push_back(Relative(cache, Join(artifacts->path, commit)));
    ASSIGN_OR_RETURN(Dir base, OpenTrustedDir(Join(cache.root(), "shardserve"), false));
    RemoveEmptyChain(base, {repo.ArtifactFolder()}, cache, &result);
  }
  std::sort(result.removed.begin(), result.removed.end());
  return result;
}

absl::StatusOr<DeleteResult> DeleteArtifact(const HubCache& cache, const RepoId& repo,
                                            const std::string& commit, const std::string& scheme,
                                            absl::string_view revision) {
  DeleteResult result;
  ASSIGN_OR_RETURN(std::optional<Dir> commit_dir, OpenArtifactsIfExists(cache, repo, {commit}));
  std::optional<struct stat> st;
  if (commit_dir) {
    ASSIGN_OR_RETURN(st, StatAt(*commit_dir, scheme));
  }
  if (!st) {
    return absl::NotFoundError(absl::StrCat("no ", scheme, " artifact of ", repo.ToString(), "@",
                                            revision, " (commit ", commit, ") in the cache"));
  }
  LockSet locks;
  RETURN_IF_ERROR(
      TryLockAll({ArtifactLockPath(cache, repo, commit, scheme)}, &locks,
                 absl::StrCat(scheme, " artifact of ", repo.ToString(), "@", revision)));
  uint64_t bytes = 0;
  RETURN_IF_ERROR(RemoveTree(*commit_dir, scheme, &bytes));
  result.freed_bytes = bytes;
  result.removed.push_back(Relative(cache, Join(commit_dir->path, scheme)));
  ASSIGN_OR_RETURN(Dir base, OpenTrustedDir(Join(cache.root(), "shardserve"), false));
  RemoveEmptyChain(base, {repo.ArtifactFolder(), commit}, cache, &result);
  std::sort(result.removed.begin(), result.removed.end());
  return result;
}

}  // namespace

absl::StatusOr<DeleteResult> HubCache::Delete(const RepoId& repo, absl::string_view revision,
                                              absl::string_view scheme) const {
  RETURN_IF_ERROR(CheckRepo(repo));
  if (revision.empty()) {
    if (!scheme.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("deleting the ", Quote(scheme), " artifact needs a revision"));
    }
    return DeleteRepo(*this, repo);
  }
  RETURN_IF_ERROR(ValidateRevision(revision));
  if (!scheme.empty()) RETURN_IF_ERROR(CheckScheme(scheme));
  std::string commit;
  if (IsCommitSha(revision)) {
    commit = std::string(revision);
  } else {
    ASSIGN_OR_RETURN(std::optional<Dir> repo_dir, OpenRepoIfExists(*this, repo, {}));
    std::optional<std::string> ref;
    if (repo_dir) {
      ASSIGN_OR_RETURN(ref, ReadRef(*repo_dir, revision));
    }
    if (!ref) {
      return absl::NotFoundError(absl::StrCat("revision ", Quote(revision), " of ", repo.ToString(),
                                              " is not in the cache"));
    }
    commit = *ref;
  }
  if (!scheme.empty()) return DeleteArtifact(*this, repo, commit, std::string(scheme), revision);
  return DeleteRevision(*this, repo, commit, revision);
}

}  // namespace shardserve::hub
