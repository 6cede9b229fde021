// Sync jobs: what one `HubSync.Sync` call asks for, run once however many callers ask for it.
//
// A job resolves the revision (or imports a GGUF file), downloads the selected files into the
// cache (up to `connections` at once, each verified and renamed into blobs/), links the snapshot,
// points the ref at it, then builds the requested quantized artifacts. Its progress is one
// SyncProgress message that every caller reads; a caller that joins late sees the current state
// and everything after it.
//
// SyncJobs bounds the work: `max_jobs` run at once, `max_queued` more wait; beyond that a new
// job is refused with RESOURCE_EXHAUSTED. Identical requests (same repo, revision, patterns,
// schemes, verify flag and import file) share one job while it runs. A job keeps running when its
// callers go away: downloads resume anyway, and the next caller finds the cache filled.
#ifndef SHARDSERVE_HUB_SYNC_SYNC_JOB_H_
#define SHARDSERVE_HUB_SYNC_SYNC_JOB_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "hub_sync/cache.h"
#include "hub_sync/hub_client.h"
#include "hub_sync/repo.h"
#include "shardserve/hub/v1/hub_sync.pb.h"

namespace shardserve::hub {

// A validated SyncRequest.
struct SyncSpec {
  RepoId repo;
  std::string revision = "main";
  std::vector<std::string> allow_patterns;  // empty: the configured default
  std::vector<std::string> ignore_patterns;
  std::vector<std::string> schemes;  // "int8", "int4", "nf4"; sorted, unique
  bool verify_existing = false;
  std::string import_gguf;  // a GGUF path: import instead of downloading

  // The identity under which identical requests share a job.
  std::string Key() const;
};

// Checks a request (repo id, revision, patterns, schemes, import path) and fills the defaults.
// INVALID_ARGUMENT naming the field and the problem.
absl::StatusOr<SyncSpec> SyncSpecFromRequest(const v1::SyncRequest& request);

// The scheme's name in artifact folders ("int4"), or "" for none.
std::string SchemeName(v1::QuantScheme scheme);
v1::QuantScheme SchemeFromName(absl::string_view name);

struct SyncJobOptions {
  int connections = 8;
  std::vector<std::string> default_allow_patterns;  // empty: DefaultAllowPatterns()
  bool nf4_double_quant = false;
  bool keep_embeddings_bf16 = true;
  bool keep_lm_head_bf16 = true;
};

// One running job: its progress, observable by many callers.
class SyncJob {
 public:
  SyncJob(std::string id, SyncSpec spec);

  const std::string& id() const { return id_; }
  const SyncSpec& spec() const { return spec_; }

  // The progress as of now, and a version that grows with every change.
  v1::SyncProgress Snapshot(uint64_t* version) const;
  // Blocks until the version exceeds `seen` or `timeout` passes; returns the current progress.
  v1::SyncProgress WaitForChange(uint64_t seen, absl::Duration timeout, uint64_t* version) const;
  // True once the job is DONE or FAILED.
  bool Finished() const;
  // How the job ended (OK while it runs).
  absl::Status result() const;

  // Runs the job on the calling thread (SyncJobs calls it). Never fails: an error ends the job
  // in FAILED with the cause first in `errors`.
  void Run(HubClient* client, const HubCache* cache, const SyncJobOptions& options,
           MetricsRegistry* metrics);

  // Cancels a running job at its next step (used at shutdown); it ends FAILED / CANCELLED.
  void Cancel();

 private:
  absl::Status Execute(HubClient* client, const HubCache* cache, const SyncJobOptions& options,
                       MetricsRegistry* metrics);
  absl::StatusOr<RepoSnapshot> Import(const HubCache* cache);
  absl::Status Download(HubClient* client, const HubCache* cache, const RepoSnapshot& snapshot,
                        const SyncJobOptions& options, MetricsRegistry* metrics);
  absl::Status Quantize(const HubCache* cache, const RepoSnapshot& snapshot,
                        const SyncJobOptions& options);

  // Applies `change` to the progress under the lock and wakes the waiters.
  void Update(const std::function<void(v1::SyncProgress*)>& change);
  void AddBytes(uint64_t bytes);
  void AddError(const std::string& error);
  bool cancelled() const;

  const std::string id_;
  const SyncSpec spec_;
  mutable absl::Mutex mu_;
  v1::SyncProgress progress_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> cancelled_{false};
  absl::Status result_ ABSL_GUARDED_BY(mu_);
  // Transfer rate: bytes done at the start of the current window.
  absl::Time rate_window_start_ ABSL_GUARDED_BY(mu_);
  uint64_t rate_window_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

class SyncJobs {
 public:
  SyncJobs(HubClient* client, const HubCache* cache, SyncJobOptions options, int max_jobs,
           int max_queued, MetricsRegistry* metrics);
  ~SyncJobs();  // cancels running jobs and joins their threads

  // The running or queued job for `spec`, or a new one. RESOURCE_EXHAUSTED when `max_jobs` run
  // and `max_queued` wait; UNAVAILABLE after Shutdown.
  absl::StatusOr<std::shared_ptr<SyncJob>> Start(const SyncSpec& spec);

  // Jobs running or queued.
  int active() const;
  void Shutdown();

 private:
  void WorkerLoop();

  HubClient* const client_;
  const HubCache* const cache_;
  const SyncJobOptions options_;
  const int max_queued_;
  MetricsRegistry* const metrics_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<SyncJob>> active_ ABSL_GUARDED_BY(mu_);  // by Key()
  std::deque<std::shared_ptr<SyncJob>> queue_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::vector<std::thread> workers_;
};

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_SYNC_JOB_H_
