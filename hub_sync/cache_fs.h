// File-system helpers for the cache writer (internal to hub_cache; not a public API).
//
// Everything below a trusted base folder (the cache root) is reached through descriptors opened
// one component at a time with O_NOFOLLOW, and changed with the *at() calls, so a symlink planted
// in the cache (or swapped in meanwhile) is refused or removed, never followed out of the cache.
// Folder creation has mkdir -p semantics that tolerate another process creating the same folder
// at the same time. Errors name the path and the errno text.
#ifndef SHARDSERVE_HUB_SYNC_CACHE_FS_H_
#define SHARDSERVE_HUB_SYNC_CACHE_FS_H_

#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve::hub::cache_fs {

// Temporary names (links, refs) start with this; walks skip them, and they never collide with
// another writer's (pid + 64 random bits, created with O_EXCL / symlinkat, which fail on an
// existing name).
inline constexpr absl::string_view kTempPrefix = ".shardserve-tmp-";
// Read/write buffer for copies and hashing.
inline constexpr size_t kIoChunk = size_t{1} << 20;
// Folder nesting followed when walking or removing a tree.
inline constexpr int kMaxDepth = 512;
// Attempts when a name keeps appearing / disappearing under a concurrent writer.
inline constexpr int kMaxRetries = 100;

// "`op` `path`: strerror(err)" with a code for the errno (NOT_FOUND for ENOENT,
// PERMISSION_DENIED, RESOURCE_EXHAUSTED for ENOSPC, FAILED_PRECONDITION for ELOOP / ENOTDIR ...).
absl::Status ErrnoError(absl::string_view op, absl::string_view path, int err);

// An owned file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }

  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// An open folder and the path it was opened as (for messages and child paths).
struct Dir {
  Fd fd;
  std::string path;
};

std::string Join(absl::string_view dir, absl::string_view name);
// A fresh temporary name: kTempPrefix + pid + 64 random bits.
std::string TempName();
bool IsTempName(absl::string_view name);

// Splits a validated relative path ("a/b/c") into its folders ({"a", "b"}) and last name ("c").
std::pair<std::vector<std::string>, std::string> SplitPath(absl::string_view path);
std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b);

// mkdir -p for a trusted path (the cache root, lock folders); follows symlinks (an operator may
// link a volume there).
absl::Status MakeDirs(const std::string& path);
// Opens a trusted folder (following symlinks), creating it first when `create`.
absl::StatusOr<Dir> OpenTrustedDir(const std::string& path, bool create);
// Opens `name` inside `dir` as a folder without following a symlink, creating it when `create`
// (the parent is fsync'ed after a creation). NOT_FOUND when missing and !create;
// FAILED_PRECONDITION naming the path when it is a symlink (and its target) or not a folder.
absl::StatusOr<Dir> OpenChildDir(const Dir& dir, const std::string& name, bool create);
// OpenChildDir for each component in turn.
absl::StatusOr<Dir> OpenSubdirs(const Dir& base, const std::vector<std::string>& components,
                                bool create);
// OpenSubdirs without creating; nullopt when a component does not exist.
absl::StatusOr<std::optional<Dir>> OpenIfExists(const Dir& base,
                                                const std::vector<std::string>& components);

// lstat of `name` in `dir`; nullopt when it does not exist.
absl::StatusOr<std::optional<struct stat>> StatAt(const Dir& dir, const std::string& name);
absl::StatusOr<std::string> ReadLinkAt(const Dir& dir, const std::string& name);
// The names in a folder except "." and "..", sorted.
absl::StatusOr<std::vector<std::string>> ListNames(const Dir& dir);

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path);
// At most `limit` bytes of dir/name, not following a symlink.
absl::StatusOr<std::string> ReadSmallFileAt(const Dir& dir, const std::string& name, size_t limit);
// dir/name = content through a temporary file in the same folder: write, fsync, rename(2),
// fsync the folder. A reader sees the old content or the new, never a part.
absl::Status WriteFileAtomic(const Dir& dir, const std::string& name, absl::string_view content);

// Removes dir/name: a file or symlink is unlinked (never followed); a folder is emptied through
// O_NOFOLLOW descriptors and removed (listed again if something appears in it meanwhile). Adds
// the sizes of the regular files removed to *regular_bytes when not null. A name that vanishes
// meanwhile is not an error.
absl::Status RemoveTree(const Dir& dir, const std::string& name, uint64_t* regular_bytes,
                        int depth = 0);
// rmdir of an empty folder; false when it is not empty or cannot be removed.
bool RemoveIfEmpty(const Dir& dir, const std::string& name);

// One entry of a walk: its path relative to the walk's root, its lstat and, for a symlink, its
// target.
struct Entry {
  std::string rel;
  int depth = 0;  // folders between the walk's root and the entry
  struct stat st;
  std::string link_target;
};
// Lists `dir` recursively, sorted, without following symlinks (a symlinked folder is an entry,
// never entered); names starting with kTempPrefix are skipped. Folders are entries too.
absl::Status Walk(const Dir& dir, const std::string& rel_prefix, int depth,
                  std::vector<Entry>* out);
// The sizes of the regular files under `dir`, summed.
absl::StatusOr<uint64_t> TreeBytes(const Dir& dir);

}  // namespace shardserve::hub::cache_fs

#endif  // SHARDSERVE_HUB_SYNC_CACHE_FS_H_
