// The cache served back as a read-only Hugging Face Hub: any pod sets HF_ENDPOINT to hub_sync's
// HTTP address and huggingface_hub (hf_hub_download, snapshot_download, HfApi) downloads from the
// shared volume instead of the Internet. Routes and headers are the Hub's as huggingface_hub uses
// them (see ../shared/reference/hub-protocol.md):
//
//   GET       /api/models/{org}/{name}                      model info of "main"
//   GET       /api/models/{org}/{name}/revision/{rev}       model info ("sha", "siblings";
//                                                           ?blobs=true adds size, blobId, lfs)
//   GET       /api/models/{org}/{name}/tree/{rev}[/{path}]  listing (?recursive=true); files and
//                                                           directories with git oids; pages of
//                                                           MirrorOptions::tree_page_size linked
//                                                           by `Link: <...>; rel="next"`
//   HEAD, GET /{org}/{name}/resolve/{rev}/{path}            the file: X-Repo-Commit, ETag and
//                                                           X-Linked-Etag (quoted), X-Linked-Size,
//                                                           Content-Length, Accept-Ranges; Range
//                                                           (bytes=N-, N-M, -N) -> 206 with
//                                                           Content-Range, unsatisfiable -> 416
//
// `rev` is a branch, tag or commit, percent-encoded in one path segment ("refs%2Fpr%2F1").
// A Range the mirror does not serve piecewise (several ranges) gets the whole file with 200; one
// cpp-httplib cannot parse at all (another unit, "bytes=5-2") gets httplib's bare 416 before any
// handler runs.
// Files are streamed from blobs/{etag} with pread in bounded chunks (memory per request does not
// grow with the file), never compressed, never with Xet headers.
//
// Errors are the Hub's: 404 with X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound (the
// last with X-Repo-Commit, so clients record the absence in .no_exist), JSON {"error": "..."};
// a malformed repo id, revision or path (after percent-decoding: "..", NUL, control characters,
// absolute paths; see repo.h) -> 400; any method other than GET / HEAD on these routes -> 405.
// Reads are confined to the repository's blobs/ folder: the snapshot link only names the blob
// (its etag), which is then opened without following symlinks.
//
// Thread-safety: handlers run on the HttpServer's threads and only read the cache (HubCache is
// stateless); fetch_missing is called from those threads, possibly concurrently for the same file.
#ifndef SHARDSERVE_HUB_SYNC_MIRROR_H_
#define SHARDSERVE_HUB_SYNC_MIRROR_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "hub_sync/cache.h"
#include "hub_sync/repo.h"

namespace shardserve::hub {

struct MirrorOptions {
  // Pull-through (off when empty). Called, on the request's thread and blocking it, when a request
  // needs something the cache lacks:
  //   - the repository or the revision is not cached: revision = as asked, path = the requested
  //     file, or "" for API routes (then the whole revision is wanted: the callee makes
  //     refs/{revision} and its snapshot exist, with whatever patterns it applies);
  //   - the revision is cached but the file is not (and not recorded in .no_exist): revision =
  //     the resolved 40-hex commit, path = the file.
  // It fills the cache (HubCache's writer API) and returns OK, and the mirror reads the cache
  // again; or it returns an error, answered as the Hub would: NOT_FOUND -> 404 with the
  // RepoNotFound / RevisionNotFound / EntryNotFound code of what was missing, UNAUTHENTICATED ->
  // 401, PERMISSION_DENIED -> 403 (GatedRepo), RESOURCE_EXHAUSTED -> 429, INVALID_ARGUMENT -> 400,
  // DEADLINE_EXCEEDED -> 504, anything else -> 502. The status message becomes the error text
  // seen by the client: it must not contain a token.
  std::function<absl::Status(const RepoId& repo, absl::string_view revision,
                             absl::string_view path)>
      fetch_missing;

  // Entries per page of /tree listings (the Hub uses 1000).
  size_t tree_page_size = 1000;

  // Optional (may be null; must outlive the server): counts
  //   shardserve_mirror_requests_total{route,code}  route: model_info | revision | tree | resolve
  //   shardserve_mirror_bytes_sent_total            file bytes written to clients
  //   shardserve_mirror_pull_through_total{result}  fetch_missing calls, result: ok | error
  MetricsRegistry* metrics = nullptr;
};

// Registers the mirror's routes on server->server(); call before server->Start. The routes match
// only /api/models/... and /{org}/{name}/resolve/..., so AddProbeRoutes (/metrics, /live, /ready)
// can share the server. `cache` must outlive the server.
void AddMirrorRoutes(HttpServer* server, const HubCache* cache, MirrorOptions options);

// The git-lfs pointer file that git stores for an LFS file of `size` bytes with this sha256. The
// Hub reports its git blob sha1 as the file's "oid" / "blobId" and its length as "pointerSize";
// the mirror does the same, so listings match the Hub's for the same commit.
std::string LfsPointerText(absl::string_view sha256_hex, uint64_t size);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_MIRROR_H_
