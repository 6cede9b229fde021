// The shared cache volume: exactly huggingface_hub's cache layout under $CACHE/hub, plus derived
// artifacts under $CACHE/shardserve (see ARCHITECTURE.md "The shared cache").
//
//   hub/models--{org}--{name}/blobs/{etag}                    content, named by its etag
//   hub/models--{org}--{name}/blobs/{etag}.incomplete         a download in progress (resumable)
//   hub/models--{org}--{name}/snapshots/{commit}/{path}       relative symlink to
//   ../../blobs/{etag} hub/models--{org}--{name}/refs/{revision}                 40-hex commit, no
//   newline hub/models--{org}--{name}/.no_exist/{commit}/{path}       empty: known-missing file
//   hub/.locks/models--{org}--{name}/{etag}.lock              per-blob lock (flock)
//   shardserve/{org}--{name}/{commit}/{scheme}/               quantized artifact (manifest.json
//   last)
//
// Invariants every writer keeps, so readers (huggingface_hub with HF_HUB_OFFLINE=1, transformers,
// vLLM, our workers) never see a partial state:
//   - a file appears under blobs/{etag} only by rename(2) after its size and hash were verified;
//   - a snapshot link is created as a temporary link and renamed over its final name;
//   - refs/{revision} is written to a temporary file and renamed, and only after every file of
//     the snapshot is linked;
//   - writers of one blob are serialised by its flock; several processes (replicas on the volume)
//     syncing the same repository end with one correct copy and no error.
// Every remote string is validated (repo.h) before it becomes a path. Thread-safe: the object
// holds only the root path; concurrency is handled on the file system.
#ifndef SHARDSERVE_HUB_SYNC_CACHE_H_
#define SHARDSERVE_HUB_SYNC_CACHE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "hub_sync/repo.h"

namespace shardserve::hub {

// An exclusive advisory lock on a lock file (flock), held until destruction. Movable.
class FileLock {
 public:
  // Creates the lock file (and its parent folders) if needed and blocks until the lock is held.
  static absl::StatusOr<FileLock> Acquire(const std::string& path);
  // As Acquire, but returns UNAVAILABLE at once when another holder has it.
  static absl::StatusOr<FileLock> TryAcquire(const std::string& path);

  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// A quantized artifact found in the cache (it has a manifest.json).
struct ArtifactInfo {
  std::string scheme;  // "int8", "int4", "nf4", "fp8"
  uint64_t size_bytes = 0;
  std::string tool_version;  // from manifest.json
};

struct RevisionInfo {
  std::string commit;
  std::vector<std::string> refs;  // refs/ entries pointing at this commit, sorted
  uint32_t files = 0;
  uint64_t size_bytes = 0;  // bytes of the blobs its snapshot links to
  std::vector<ArtifactInfo> artifacts;
  int64_t modified_unix_seconds = 0;  // newest mtime in the snapshot folder
};

struct RepoInfo {
  RepoId repo;
  std::vector<RevisionInfo> revisions;  // sorted by commit
  uint64_t size_bytes = 0;              // all blobs of the repo + all its artifacts
};

struct DeleteResult {
  uint64_t freed_bytes = 0;
  std::vector<std::string> removed;  // paths relative to the cache root, sorted
};

// The cache root when none is configured, as every service finds it: $SHARDSERVE_CACHE, else
// $HOME/.cache/shardserve; INVALID_ARGUMENT when neither is set. `getenv_fn` is injectable for
// tests (nullptr: std::getenv).
absl::StatusOr<std::string> DefaultCacheRoot(const char* (*getenv_fn)(const char*) = nullptr);

class HubCache {
 public:
  // `root` is $CACHE (created if missing); the HF cache is root/hub, artifacts root/shardserve.
  static absl::StatusOr<HubCache> Open(const std::string& root);

  const std::string& root() const { return root_; }
  std::string HubDir() const;                     // root/hub
  std::string RepoDir(const RepoId& repo) const;  // root/hub/models--org--name
  std::string BlobPath(const RepoId& repo, absl::string_view etag) const;
  std::string IncompleteBlobPath(const RepoId& repo, absl::string_view etag) const;
  std::string SnapshotDir(const RepoId& repo, absl::string_view commit) const;
  // root/shardserve/org--name/{commit}/{scheme}
  std::string ArtifactDir(const RepoId& repo, absl::string_view commit,
                          absl::string_view scheme) const;

  // --- Writing (callers validate RepoFile paths/etags with repo.h; these re-check) ---

  // Holds hub/.locks/models--org--name/{etag}.lock. Take it before touching the blob's
  // .incomplete file; after acquiring, check HasBlob again (another writer may have finished).
  // Also creates the repo's blobs/ folder (refusing one that is a symlink), so the .incomplete
  // file can be opened right away. Never call LinkSnapshot or AddBlobFromFile of the same repo
  // while holding it: they take blob locks themselves, and flock is per open file.
  absl::StatusOr<FileLock> LockBlob(const RepoId& repo, absl::string_view etag) const;
  // Lock for building one artifact: root/shardserve/.locks/org--name/{commit}.{scheme}.lock.
  absl::StatusOr<FileLock> LockArtifact(const RepoId& repo, absl::string_view commit,
                                        absl::string_view scheme) const;

  // True when blobs/{etag} exists with file.size bytes and, when `verify_hash`, hashes to
  // file.etag. A wrong blob under the final name is an error (DATA_LOSS naming it), never
  // silently kept: the caller deletes and re-fetches it with RemoveBlob.
  absl::StatusOr<bool> HasBlob(const RepoId& repo, const RepoFile& file, bool verify_hash) const;
  absl::Status RemoveBlob(const RepoId& repo, absl::string_view etag) const;

  // Verifies blobs/{etag}.incomplete against `file` (size, then hash) and renames it to
  // blobs/{etag}. On a mismatch the .incomplete file is deleted and DATA_LOSS names the path,
  // expected and found values. Call while holding LockBlob. `verify_hash` false skips the hash
  // (never the size) for a caller that has just verified it itself, still holding the lock
  // (HubClient::Download hashes what it wrote): a large model is then read once, not twice.
  absl::Status CommitIncompleteBlob(const RepoId& repo, const RepoFile& file,
                                    bool verify_hash = true) const;

  // Copies a local file into blobs/{etag} (through .incomplete + verify + rename), taking the
  // blob lock itself; OK without copying when a valid blob is already there.
  absl::Status AddBlobFromFile(const RepoId& repo, const RepoFile& file,
                               const std::string& source_path) const;

  // Links snapshots/{commit}/{path} -> ../../blobs/{etag} (one more ../ per folder level) for every
  // file of the snapshot; each blob must already exist (FAILED_PRECONDITION otherwise). A link
  // that exists with the right target is left alone; a wrong one is replaced atomically.
  absl::Status LinkSnapshot(const RepoSnapshot& snapshot) const;

  // refs/{revision} = commit (temp file + rename). No-op when revision == commit.
  absl::Status WriteRef(const RepoId& repo, absl::string_view revision,
                        absl::string_view commit) const;

  // Empty file .no_exist/{commit}/{path}.
  absl::Status MarkMissing(const RepoId& repo, absl::string_view commit,
                           absl::string_view path) const;

  // --- Reading ---

  // The commit for `revision`: itself when it is a commit whose snapshot folder exists, else the
  // content of refs/{revision}. NOT_FOUND naming repo and revision otherwise.
  absl::StatusOr<std::string> ResolveRevision(const RepoId& repo, absl::string_view revision) const;
  // The files of a snapshot, from its links (etag = link target's name, size = blob size,
  // lfs = etag has 64 hex digits), sorted by path. Links that do not point at an existing blob of
  // the repo are skipped. NOT_FOUND when the snapshot does not exist.
  absl::StatusOr<std::vector<RepoFile>> SnapshotFiles(const RepoId& repo,
                                                      absl::string_view commit) const;
  bool IsMarkedMissing(const RepoId& repo, absl::string_view commit, absl::string_view path) const;

  // Repositories whose "org/name" starts with `repo_prefix`, sorted by id.
  absl::StatusOr<std::vector<RepoInfo>> List(absl::string_view repo_prefix) const;

  // Removes, under the locks above:
  //   revision "" : the whole repository (hub folder, its .locks and all its artifacts);
  //   revision set, scheme "" : that revision's snapshot, refs naming it, .no_exist entry,
  //     artifacts, and the blobs no other snapshot links to;
  //   revision and scheme set : only that artifact.
  // `revision` may be a ref or a commit. NOT_FOUND when nothing matches.
  absl::StatusOr<DeleteResult> Delete(const RepoId& repo, absl::string_view revision,
                                      absl::string_view scheme) const;

 private:
  explicit HubCache(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_CACHE_H_
