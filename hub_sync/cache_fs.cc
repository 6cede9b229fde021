#include "hub_sync/cache_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <ctime>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace shardserve::hub::cache_fs {
namespace {

absl::StatusCode CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
      return absl::StatusCode::kNotFound;
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::StatusCode::kPermissionDenied;
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
      return absl::StatusCode::kResourceExhausted;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case ELOOP:
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status ErrnoError(absl::string_view op, absl::string_view path, int err) {
  return absl::Status(CodeForErrno(err), absl::StrCat(op, " ", path, ": ", std::strerror(err)));
}

std::string Join(absl::string_view dir, absl::string_view name) {
  return absl::StrCat(dir, "/", name);
}

// A fresh temporary name: kTempPrefix + pid + 64 random bits.
std::string TempName() {
  uint64_t random = 0;
  if (getrandom(&random, sizeof(random), 0) != sizeof(random)) {
    static std::atomic<uint64_t> counter{0};
    random = (static_cast<uint64_t>(time(nullptr)) << 20) ^ counter.fetch_add(1);
  }
  return absl::StrCat(kTempPrefix, getpid(), "-", absl::Hex(random, absl::kZeroPad16));
}

bool IsTempName(absl::string_view name) { return absl::StartsWith(name, kTempPrefix); }

// mkdir -p for a trusted path (the cache root, lock folders): tolerant of another process
// creating the same folders at the same time; follows symlinks (an operator may link a volume).
absl::Status MakeDirs(const std::string& path) {
  // Each prefix ending before a '/' (and the whole path), shortest first.
  for (size_t end = path.find('/', 1);; end = path.find('/', end + 1)) {
    const std::string prefix = path.substr(0, end);
    if (!prefix.empty() && mkdir(prefix.c_str(), 0755) != 0) {
      int err = errno;
      struct stat st;
      bool is_dir = stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
      if (err == EEXIST && !is_dir) {
        return absl::FailedPreconditionError(absl::StrCat(prefix, " exists and is not a folder"));
      }
      if (!is_dir) return ErrnoError("create folder", prefix, err);
    }
    if (end == std::string::npos) break;
  }
  return absl::OkStatus();
}

absl::StatusOr<Dir> OpenTrustedDir(const std::string& path, bool create) {
  if (create) RETURN_IF_ERROR(MakeDirs(path));
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open folder", path, errno);
  return Dir{Fd(fd), path};
}

namespace {

// Why `name` in `dir` could not be opened as a folder without following a symlink.
absl::Status NotAFolderError(const Dir& dir, const std::string& name) {
  std::string path = Join(dir.path, name);
  struct stat st;
  if (fstatat(dir.fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
    char target[PATH_MAX];
    ssize_t n = readlinkat(dir.fd.get(), name.c_str(), target, sizeof(target) - 1);
    std::string shown = n >= 0 ? std::string(target, n) : std::string("?");
    return absl::FailedPreconditionError(absl::StrCat(path, " is a symlink (to \"",
                                                      absl::CHexEscape(shown),
                                                      "\"), not a folder; refusing to follow it"));
  }
  return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a folder"));
}

}  // namespace

// Opens `name` inside `dir` as a folder without following symlinks, creating it when `create`
// (EEXIST races tolerated; the parent is fsync'ed after a creation so the entry is durable).
// NOT_FOUND when missing and !create; FAILED_PRECONDITION when it is a symlink or a file.
absl::StatusOr<Dir> OpenChildDir(const Dir& dir, const std::string& name, bool create) {
  std::string path = Join(dir.path, name);
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    int fd = openat(dir.fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd >= 0) return Dir{Fd(fd), path};
    int err = errno;
    if (err == EINTR) continue;
    if (err == ELOOP || err == ENOTDIR) return NotAFolderError(dir, name);
    if (err != ENOENT || !create) return ErrnoError("open folder", path, err);
    if (mkdirat(dir.fd.get(), name.c_str(), 0755) == 0) {
      fsync(dir.fd.get());
    } else if (errno != EEXIST) {
      return ErrnoError("create folder", path, errno);
    }
  }
  return absl::InternalError(absl::StrCat("folder ", path, " keeps disappearing"));
}

absl::StatusOr<Dir> OpenSubdirs(const Dir& base, const std::vector<std::string>& components,
                                bool create) {
  Dir current{Fd(dup(base.fd.get())), base.path};
  if (current.fd.get() < 0) return ErrnoError("dup folder", base.path, errno);
  for (const std::string& component : components) {
    ASSIGN_OR_RETURN(current, OpenChildDir(current, component, create));
  }
  return current;
}

// Splits a validated relative path into its folder components and its last name.
std::pair<std::vector<std::string>, std::string> SplitPath(absl::string_view path) {
  std::vector<std::string> parts = absl::StrSplit(path, '/');
  std::string leaf = std::move(parts.back());
  parts.pop_back();
  return {std::move(parts), std::move(leaf)};
}

std::vector<std::string> Concat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// lstat of `name` in `dir`; nullopt when it does not exist.
absl::StatusOr<std::optional<struct stat>> StatAt(const Dir& dir, const std::string& name) {
  struct stat st;
  if (fstatat(dir.fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return st;
  if (errno == ENOENT) return std::nullopt;
  return ErrnoError("stat", Join(dir.path, name), errno);
}

absl::Status WriteAll(int fd, absl::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// Reads at most `limit` bytes of a small file (a ref) without following a symlink.
absl::StatusOr<std::string> ReadSmallFileAt(const Dir& dir, const std::string& name, size_t limit) {
  std::string path = Join(dir.path, name);
  int fd = openat(dir.fd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return ErrnoError("open", path, errno);
  Fd holder(fd);
  std::string out(limit, '\0');
  size_t got = 0;
  while (got < limit) {
    ssize_t n = read(fd, out.data() + got, limit - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("read", path, errno);
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

// Writes `content` to dir/name through a temporary file in the same folder: write, fsync,
// rename(2), fsync the folder. A reader sees the old content or the new, never a part.
absl::Status WriteFileAtomic(const Dir& dir, const std::string& name, absl::string_view content) {
  std::string final_path = Join(dir.path, name);
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    std::string temp = TempName();
    std::string temp_path = Join(dir.path, temp);
    int fd = openat(dir.fd.get(), temp.c_str(),
                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (errno == EEXIST || errno == EINTR) continue;
      return ErrnoError("create", temp_path, errno);
    }
    Fd holder(fd);
    absl::Status status = WriteAll(fd, content, temp_path);
    if (status.ok() && fsync(fd) != 0) status = ErrnoError("fsync", temp_path, errno);
    holder.Reset();
    if (status.ok() && renameat(dir.fd.get(), temp.c_str(), dir.fd.get(), name.c_str()) != 0) {
      status = ErrnoError(absl::StrCat("rename ", temp_path, " to"), final_path, errno);
    }
    if (!status.ok()) {
      unlinkat(dir.fd.get(), temp.c_str(), 0);
      return status;
    }
    if (fsync(dir.fd.get()) != 0) return ErrnoError("fsync folder", dir.path, errno);
    return absl::OkStatus();
  }
  return absl::InternalError(absl::StrCat("no free temporary name next to ", final_path));
}

absl::StatusOr<std::string> ReadLinkAt(const Dir& dir, const std::string& name) {
  char buffer[PATH_MAX];
  ssize_t n = readlinkat(dir.fd.get(), name.c_str(), buffer, sizeof(buffer));
  if (n < 0) return ErrnoError("read link", Join(dir.path, name), errno);
  return std::string(buffer, static_cast<size_t>(std::min<ssize_t>(n, sizeof(buffer))));
}

// The names in a folder (not "." and ".."), sorted.
absl::StatusOr<std::vector<std::string>> ListNames(const Dir& dir) {
  int list_fd = dup(dir.fd.get());
  if (list_fd < 0) return ErrnoError("dup", dir.path, errno);
  DIR* listing = fdopendir(list_fd);
  if (listing == nullptr) {
    close(list_fd);
    return ErrnoError("list", dir.path, errno);
  }
  std::vector<std::string> names;
  while (struct dirent* entry = readdir(listing)) {
    absl::string_view name = entry->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
  }
  closedir(listing);
  std::sort(names.begin(), names.end());
  return names;
}

// Removes `name` in `dir`: a file or a symlink is unlinked (a symlink is never followed), a folder
// is emptied through descriptors opened with O_NOFOLLOW and removed. Adds the bytes of the regular
// files removed to *regular_bytes when not null. A name that vanishes meanwhile is not an error.
absl::Status RemoveTree(const Dir& dir, const std::string& name, uint64_t* regular_bytes,
                        int depth) {
  std::string path = Join(dir.path, name);
  ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(dir, name));
  if (!st) return absl::OkStatus();
  if (!S_ISDIR(st->st_mode)) {
    if (unlinkat(dir.fd.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
      return ErrnoError("remove", path, errno);
    }
    if (regular_bytes != nullptr && S_ISREG(st->st_mode)) {
      *regular_bytes += static_cast<uint64_t>(st->st_size);
    }
    return absl::OkStatus();
  }
  if (depth > kMaxDepth) return absl::FailedPreconditionError(absl::StrCat(path, ": too deep"));
  for (int attempt = 0; attempt < kMaxRetries; ++attempt) {
    absl::StatusOr<Dir> child = OpenChildDir(dir, name, /*create=*/false);
    if (absl::IsNotFound(child.status())) return absl::OkStatus();
    if (!child.ok()) return child.status();
    ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(*child));
    for (const std::string& entry_name : names) {
      RETURN_IF_ERROR(RemoveTree(*child, entry_name, regular_bytes, depth + 1));
    }
    if (unlinkat(dir.fd.get(), name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) {
      return absl::OkStatus();
    }
    if (errno != ENOTEMPTY && errno != EEXIST) return ErrnoError("remove folder", path, errno);
    // Something was created inside meanwhile (a lock file): list again.
  }
  return absl::InternalError(absl::StrCat("folder ", path, " keeps being refilled"));
}

// rmdir that succeeds only on an empty folder; true when removed.
bool RemoveIfEmpty(const Dir& dir, const std::string& name) {
  return unlinkat(dir.fd.get(), name.c_str(), AT_REMOVEDIR) == 0;
}

// Lists `dir` recursively without following symlinks (a symlinked folder is reported as an
// entry, never entered). Entries whose name starts with kTempPrefix are skipped. Visits folders
// too; sorted by rel path.
absl::Status Walk(const Dir& dir, const std::string& rel_prefix, int depth,
                  std::vector<Entry>* out) {
  if (depth > kMaxDepth) return absl::FailedPreconditionError(absl::StrCat(dir.path, ": too deep"));
  ASSIGN_OR_RETURN(std::vector<std::string> names, ListNames(dir));
  for (const std::string& name : names) {
    if (IsTempName(name)) continue;
    ASSIGN_OR_RETURN(std::optional<struct stat> st, StatAt(dir, name));
    if (!st) continue;  // removed meanwhile
    Entry entry{rel_prefix.empty() ? name : absl::StrCat(rel_prefix, "/", name), depth, *st, ""};
    if (S_ISLNK(st->st_mode)) {
      absl::StatusOr<std::string> target = ReadLinkAt(dir, name);
      if (absl::IsNotFound(target.status())) continue;
      if (!target.ok()) return target.status();
      entry.link_target = std::move(*target);
    }
    out->push_back(entry);
    if (S_ISDIR(st->st_mode)) {
      absl::StatusOr<Dir> child = OpenChildDir(dir, name, /*create=*/false);
      if (absl::IsNotFound(child.status())) continue;
      if (!child.ok()) return child.status();
      RETURN_IF_ERROR(Walk(*child, entry.rel, depth + 1, out));
    }
  }
  return absl::OkStatus();
}

// Like OpenSubdirs without creating; nullopt when some component does not exist.
absl::StatusOr<std::optional<Dir>> OpenIfExists(const Dir& base,
                                                const std::vector<std::string>& components) {
  absl::StatusOr<Dir> dir = OpenSubdirs(base, components, /*create=*/false);
  if (absl::IsNotFound(dir.status())) return std::nullopt;
  if (!dir.ok()) return dir.status();
  return std::optional<Dir>(std::move(*dir));
}

// Regular files under an artifact folder, summed.
absl::StatusOr<uint64_t> TreeBytes(const Dir& dir) {
  std::vector<Entry> entries;
  RETURN_IF_ERROR(Walk(dir, "", 0, &entries));
  uint64_t bytes = 0;
  for (const Entry& entry : entries) {
    if (S_ISREG(entry.st.st_mode)) bytes += static_cast<uint64_t>(entry.st.st_size);
  }
  return bytes;
}

}  // namespace shardserve::hub::cache_fs
