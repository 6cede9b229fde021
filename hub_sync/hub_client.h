// The Hugging Face Hub's HTTP API as hub_sync uses it, over libcurl: resolve a revision to a
// commit and its file listing, and download one file of a commit into a local path, resumably,
// in parallel ranges for large files, verified against its size and hash.
//
// Routes (see ../shared/reference/hub-protocol.md; huggingface_hub is the judge):
//   GET  {endpoint}/api/models/{org}/{name}/revision/{rev}        -> "sha" (rev percent-encoded)
//   GET  {endpoint}/api/models/{org}/{name}/tree/{commit}?recursive=true
//                                                                 -> files; Link rel="next" pages
//   GET  {endpoint}/{org}/{name}/resolve/{commit}/{path}          -> bytes (Range; redirects)
//   HEAD {endpoint}/{org}/{name}/resolve/{rev}/{path}             -> X-Repo-Commit, etag, size
//
// Errors (never containing the token):
//   401 -> UNAUTHENTICATED: the repo needs a token with access (private or gated; set HF_TOKEN),
//          or the token given was refused;  403 -> PERMISSION_DENIED naming the repo (GatedRepo:
//          access must be requested and accepted on the Hub);  404 -> NOT_FOUND naming the repo
//          (RepoNotFound), the revision (RevisionNotFound) or the file (EntryNotFound);
//   429 after the retries -> RESOURCE_EXHAUSTED with the Retry-After;  5xx, connection errors,
//          timeouts and short reads after the retries -> UNAVAILABLE naming the endpoint and the
//          last error;  malformed answers (listing entries, commit ids) -> INVALID_ARGUMENT naming
//          the entry;  a server whose Content-Length / Content-Range size differs from the
//          listing's -> FAILED_PRECONDITION;  a file whose content does not match its hash
//          twice -> DATA_LOSS;  disk full -> RESOURCE_EXHAUSTED naming the path.
// The Hub's own message (X-Error-Message, or the JSON body's "error") is appended when present.
//
// Thread-safety: a HubClient is safe to use from many threads at once. At most
// `HubClientOptions::connections` HTTP transfers run at any moment across all calls (each call
// waits for a free slot per request); curl handles are pooled, so connections are kept alive and
// reused between requests.
#ifndef SHARDSERVE_HUB_SYNC_HUB_CLIENT_H_
#define SHARDSERVE_HUB_SYNC_HUB_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "hub_sync/repo.h"

namespace shardserve::hub {

// When and how often a failed request is tried again. Retried: 5xx, 408, 429, connection errors,
// timeouts and short reads. Never retried: other 4xx, malformed answers, local I/O errors.
struct RetryPolicy {
  // Attempts per request (1: no retry). For a download, an attempt that made progress (received
  // bytes that were kept) does not use up the budget: only attempts in a row without progress do.
  int max_attempts = 5;
  absl::Duration initial_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  double multiplier = 2.0;
  double jitter = 0.2;  // each delay is scaled by a uniform factor in [1 - jitter, 1 + jitter]
  // A Retry-After (429, 503) is honoured instead of the backoff, up to this long.
  absl::Duration max_retry_after = absl::Seconds(60);
};

// The delay before retry number `retry` (1 = the first retry): Retry-After (capped by
// max_retry_after) when the server sent one, else initial_backoff * multiplier^(retry-1) capped by
// max_backoff and jittered with `unit_random` in [0, 1). Pure; exposed for tests.
absl::Duration RetryDelay(const RetryPolicy& policy, int retry, double unit_random,
                          std::optional<absl::Duration> retry_after);

struct HubClientOptions {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT; a trailing '/' is dropped
  std::string token;  // sent as "Authorization: Bearer"; never logged or put in an error
  // Parallel transfers: the bound on concurrent HTTP requests of this client, and the number of
  // ranges one large file is split into.
  int connections = 8;
  // Files larger than this are fetched as min(connections, ceil(size / range_split_bytes))
  // parallel ranges.
  uint64_t range_split_bytes = uint64_t{64} << 20;
  absl::Duration connect_timeout = absl::Seconds(10);
  // A transfer slower than low_speed_limit_bytes per second for low_speed_time is abandoned (and
  // retried, resuming where it stopped).
  int64_t low_speed_limit_bytes = 1024;
  absl::Duration low_speed_time = absl::Seconds(30);
  // Total time limit of one API request (revision, tree page, HEAD); downloads have none.
  absl::Duration api_timeout = absl::Seconds(60);
  RetryPolicy retry;
  std::string user_agent = "shardserve-hub-sync/1.0";
  // Called before each retry (on the thread of the failed request) with the error that caused it,
  // the attempt that failed (1-based) and the delay about to be waited. Optional; for logs and
  // metrics. Must be thread-safe.
  std::function<void(const absl::Status& cause, int attempt, absl::Duration delay)> on_retry;
};

// Byte deltas of a download as they are written (negative when kept bytes are discarded: a
// retry from zero after a hash mismatch). On start, the bytes already present from an earlier
// attempt are reported once. Calls for one Download never overlap but may come from different
// threads.
using ProgressFn = std::function<void(int64_t delta_bytes)>;

// What a HEAD of a file says (huggingface_hub's get_hf_file_metadata).
struct FileMetadata {
  std::string commit;    // X-Repo-Commit, 40 hex
  std::string etag;      // X-Linked-Etag, else ETag; quotes and W/ removed; validated
  uint64_t size = 0;     // X-Linked-Size, else Content-Length
  bool lfs = false;      // the etag is a sha256 (64 hex)
  std::string location;  // where the bytes are: the absolute redirect target, else the URL asked
};

class HubClient {
 public:
  // INVALID_ARGUMENT when the endpoint is not an http(s) URL, a token or user agent holds a
  // control character, or a count is out of range.
  static absl::StatusOr<std::unique_ptr<HubClient>> Create(HubClientOptions options);
  ~HubClient();
  HubClient(const HubClient&) = delete;
  HubClient& operator=(const HubClient&) = delete;

  const HubClientOptions& options() const;

  // Resolves `revision` (branch, tag, "refs/pr/N" or commit) to its commit and lists the commit's
  // files (recursively, every page), sorted by path. Each entry is validated (ValidateRepoPath,
  // IsValidEtag, size present, no duplicates, no file that is also a folder): one bad entry
  // refuses the whole listing with INVALID_ARGUMENT naming it. etag = lfs.oid for LFS files, else
  // the git oid.
  absl::StatusOr<RepoSnapshot> Resolve(const RepoId& repo, absl::string_view revision);

  // Downloads `file` of `commit` (40 hex) to `dest_path` (its folder must exist) and verifies its
  // size and hash; OK means dest_path holds exactly the file. Resumable: bytes already in
  // dest_path (an earlier broken attempt, a killed process) are kept and the rest is fetched with
  // Range requests. A file larger than range_split_bytes is fetched in parallel ranges: the first
  // range goes to dest_path itself, range K starting at byte S to "dest_path.partS"; when all are
  // complete the parts are appended to dest_path in order and removed. So dest_path is always a
  // prefix of the file (what huggingface_hub also assumes of a .incomplete blob), and a restart
  // after a kill finds every range's progress in the file sizes. On a hash mismatch, dest_path and
  // its parts are deleted and the file is fetched once more from zero; a second mismatch is
  // DATA_LOSS. Other failures leave the partial data for a later call to resume.
  // `cancelled`, when given and set, stops the download (CANCELLED) within about 100 ms.
  // The caller serialises downloads to the same dest_path (HubCache::LockBlob).
  absl::Status Download(const RepoId& repo, absl::string_view commit, const RepoFile& file,
                        const std::string& dest_path, ProgressFn on_bytes = nullptr,
                        const std::atomic<bool>* cancelled = nullptr);

  // HEAD of a file at `revision` (branch, tag or commit): its commit, etag and size. Relative
  // redirects (renamed repos) are followed; an absolute one (a CDN) is reported as `location`.
  absl::StatusOr<FileMetadata> HeadFile(const RepoId& repo, absl::string_view revision,
                                        absl::string_view path);

 private:
  struct Impl;
  explicit HubClient(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

// --- Pieces exposed for tests ---

// Parses one page of a tree listing (a JSON array) and appends its files to `files` (directories
// are skipped). INVALID_ARGUMENT naming the repo and the entry (index and path) when an entry is
// not an object, has no valid type, path, size or oid, or fails ValidateRepoPath / IsValidEtag.
absl::Status ParseTreePage(absl::string_view body, const RepoId& repo,
                           std::vector<RepoFile>* files);
// Sorts a complete listing by path; INVALID_ARGUMENT naming the path when one appears twice or a
// file's path is also a folder of another file.
absl::Status FinishListing(const RepoId& repo, std::vector<RepoFile>* files);
// The URL of the rel="next" link of an RFC 8288 Link header value, if any.
std::optional<std::string> NextPageUrl(absl::string_view link_header);
// The part file of the range starting at byte `start` (> 0) of a download to `dest_path`.
std::string PartFilePath(const std::string& dest_path, uint64_t start);
// Deletes `dest_path` and every part file of it (missing ones are fine): for giving up on a
// partial download for good. INTERNAL naming the path on an I/O error.
absl::Status RemovePartialDownload(const std::string& dest_path);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_HUB_CLIENT_H_
