#include "hub_sync/sync_job.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "hub_sync/gguf_import.h"
#include "hub_sync/quantize/quantize.h"

namespace shardserve::hub {
namespace {

constexpr absl::Duration kRateWindow = absl::Seconds(2);

// The status as a one-line error for SyncProgress.errors: "CODE: message".
std::string ErrorText(const absl::Status& status) {
  return absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
}

absl::Status CheckPatterns(const google::protobuf::RepeatedPtrField<std::string>& patterns,
                           absl::string_view field, std::vector<std::string>* out) {
  for (const std::string& pattern : patterns) {
    if (pattern.empty() || pattern.size() > 1024 ||
        std::any_of(pattern.begin(), pattern.end(),
                    [](char c) { return static_cast<unsigned char>(c) < 0x20; })) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": pattern \"", absl::CHexEscape(pattern.substr(0, 64)),
                       "\" is empty, longer than 1024 bytes or contains a control character"));
    }
    out->push_back(pattern);
  }
  return absl::OkStatus();
}

}  // namespace

std::string SchemeName(v1::QuantScheme scheme) {
  switch (scheme) {
    case v1::QUANT_SCHEME_INT8:
      return "int8";
    case v1::QUANT_SCHEME_INT4:
      return "int4";
    case v1::QUANT_SCHEME_NF4:
      return "nf4";
    case v1::QUANT_SCHEME_FP8:
      return "fp8";
    default:
      return "";
  }
}

v1::QuantScheme SchemeFromName(absl::string_view name) {
  for (v1::QuantScheme scheme :
       {v1::QUANT_SCHEME_INT8, v1::QUANT_SCHEME_INT4, v1::QUANT_SCHEME_NF4, v1::QUANT_SCHEME_FP8}) {
    if (SchemeName(scheme) == name) return scheme;
  }
  return v1::QUANT_SCHEME_UNSPECIFIED;
}

std::string SyncSpec::Key() const {
  return absl::StrCat(repo.ToString(), "\n", revision, "\n", absl::StrJoin(allow_patterns, "\t"),
                      "\n", absl::StrJoin(ignore_patterns, "\t"), "\n", absl::StrJoin(schemes, ","),
                      "\n", verify_existing, "\n", import_gguf);
}

absl::StatusOr<SyncSpec> SyncSpecFromRequest(const v1::SyncRequest& request) {
  SyncSpec spec;
  ASSIGN_OR_RETURN(spec.repo, ParseRepoId(request.repo()));
  if (!request.revision().empty()) spec.revision = request.revision();
  RETURN_IF_ERROR(ValidateRevision(spec.revision));
  RETURN_IF_ERROR(CheckPatterns(request.allow_patterns(), "allow_patterns", &spec.allow_patterns));
  RETURN_IF_ERROR(
      CheckPatterns(request.ignore_patterns(), "ignore_patterns", &spec.ignore_patterns));
  std::set<std::string> schemes;
  for (int scheme : request.quantize()) {
    const std::string name = SchemeName(static_cast<v1::QuantScheme>(scheme));
    if (name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("quantize: ", scheme, " is not a quantization scheme"));
    }
    if (name == "fp8") {
      return absl::InvalidArgumentError(
          "quantize: fp8 artifacts are not written yet (int8, int4 and nf4 are)");
    }
    schemes.insert(name);
  }
  spec.schemes.assign(schemes.begin(), schemes.end());
  spec.verify_existing = request.verify_existing();
  if (!request.import_gguf().empty()) {
    if (request.import_gguf().front() != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("import_gguf: \"", request.import_gguf(),
                       "\" is not an absolute path on hub_sync's machine"));
    }
    if (!request.allow_patterns().empty() || !request.ignore_patterns().empty()) {
      return absl::InvalidArgumentError("import_gguf: patterns do not apply to an import");
    }
    if (IsCommitSha(spec.revision)) {
      return absl::InvalidArgumentError(
          "import_gguf: the revision names a branch to point at the import, not a commit");
    }
    spec.import_gguf = request.import_gguf();
  }
  return spec;
}

SyncJob::SyncJob(std::string id, SyncSpec spec) : id_(std::move(id)), spec_(std::move(spec)) {
  progress_.set_job_id(id_);
  progress_.set_phase(v1::SYNC_PHASE_RESOLVING);
  rate_window_start_ = absl::Now();
}

v1::SyncProgress SyncJob::Snapshot(uint64_t* version) const {
  absl::MutexLock lock(&mu_);
  if (version != nullptr) *version = version_;
  return progress_;
}

v1::SyncProgress SyncJob::WaitForChange(uint64_t seen, absl::Duration timeout,
                                        uint64_t* version) const {
  absl::MutexLock lock(&mu_);
  auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return version_ > seen; };
  mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  if (version != nullptr) *version = version_;
  return progress_;
}

bool SyncJob::Finished() const {
  absl::MutexLock lock(&mu_);
  return progress_.phase() == v1::SYNC_PHASE_DONE || progress_.phase() == v1::SYNC_PHASE_FAILED;
}

absl::Status SyncJob::result() const {
  absl::MutexLock lock(&mu_);
  return result_;
}

void SyncJob::Cancel() { cancelled_.store(true); }

bool SyncJob::cancelled() const { return cancelled_.load(); }

void SyncJob::Update(const std::function<void(v1::SyncProgress*)>& change) {
  absl::MutexLock lock(&mu_);
  change(&progress_);
  ++version_;
}

void SyncJob::AddBytes(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  progress_.set_bytes_done(progress_.bytes_done() + bytes);
  const absl::Time now = absl::Now();
  const absl::Duration elapsed = now - rate_window_start_;
  if (elapsed >= kRateWindow) {
    progress_.set_bytes_per_second(
        static_cast<double>(progress_.bytes_done() - rate_window_bytes_) /
        absl::ToDoubleSeconds(elapsed));
    rate_window_start_ = now;
    rate_window_bytes_ = progress_.bytes_done();
  } else if (progress_.bytes_per_second() == 0 && elapsed > absl::Milliseconds(200)) {
    progress_.set_bytes_per_second(
        static_cast<double>(progress_.bytes_done() - rate_window_bytes_) /
        absl::ToDoubleSeconds(elapsed));
  }
  ++version_;
}

void SyncJob::AddError(const std::string& error) {
  Update([&](v1::SyncProgress* p) { p->add_errors(error); });
}

void SyncJob::Run(HubClient* client, const HubCache* cache, const SyncJobOptions& options,
                  MetricsRegistry* metrics) {
  const absl::Time start = absl::Now();
  LogJsonLine({{"event", "sync_start"},
               {"job", id_},
               {"repo", spec_.repo.ToString()},
               {"revision", spec_.revision},
               {"import_gguf", spec_.import_gguf},
               {"quantize", spec_.schemes}});
  absl::Status status = Execute(client, cache, options, metrics);
  v1::SyncProgress final_progress;
  Update([&](v1::SyncProgress* p) {
    if (status.ok()) {
      p->set_phase(v1::SYNC_PHASE_DONE);
      p->clear_current_file();
      p->set_scheme(v1::QUANT_SCHEME_UNSPECIFIED);
    } else {
      result_ = status;
      p->set_phase(v1::SYNC_PHASE_FAILED);
      // The cause first, then what was retried on the way.
      p->mutable_errors()->Add(ErrorText(status));
      std::rotate(p->mutable_errors()->begin(), p->mutable_errors()->end() - 1,
                  p->mutable_errors()->end());
    }
    final_progress = *p;
  });
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  if (metrics != nullptr) {
    metrics->Counter("shardserve_hub_sync_jobs_total", "Sync jobs finished, by result", {"result"})
        ->Add({status.ok() ? "done" : absl::StatusCodeToString(status.code())}, 1);
    metrics
        ->Histogram("shardserve_hub_sync_job_duration_seconds", "Duration of sync jobs", {},
                    MetricsRegistry::LatencyBuckets())
        ->Observe({}, seconds);
  }
  LogJsonLine({{"event", "sync_end"},
               {"job", id_},
               {"repo", spec_.repo.ToString()},
               {"commit", final_progress.commit()},
               {"ok", status.ok()},
               {"error", status.ok() ? "" : ErrorText(status)},
               {"files", final_progress.files_total()},
               {"bytes", final_progress.bytes_total()},
               {"seconds", seconds}});
}

absl::Status SyncJob::Execute(HubClient* client, const HubCache* cache,
                              const SyncJobOptions& options, MetricsRegistry* metrics) {
  if (cancelled()) return absl::CancelledError("hub_sync is shutting down");
  RepoSnapshot snapshot;
  if (!spec_.import_gguf.empty()) {
    ASSIGN_OR_RETURN(snapshot, Import(cache));
  } else {
    ASSIGN_OR_RETURN(RepoSnapshot resolved, client->Resolve(spec_.repo, spec_.revision));
    const std::vector<std::string>& allow = !spec_.allow_patterns.empty() ? spec_.allow_patterns
                                            : !options.default_allow_patterns.empty()
                                                ? options.default_allow_patterns
                                                : DefaultAllowPatterns();
    snapshot.repo = resolved.repo;
    snapshot.revision = resolved.revision;
    snapshot.commit = resolved.commit;
    for (RepoFile& file : resolved.files) {
      if (PathSelected(file.path, allow, spec_.ignore_patterns)) {
        snapshot.files.push_back(std::move(file));
      }
    }
    if (snapshot.files.empty()) {
      return absl::NotFoundError(absl::StrCat("no file of ", spec_.repo.ToString(), " at ",
                                              snapshot.commit, " matches the allow patterns (",
                                              absl::StrJoin(allow, ", "), ")"));
    }
    uint64_t total = 0;
    for (const RepoFile& file : snapshot.files) total += file.size;
    Update([&](v1::SyncProgress* p) {
      p->set_commit(snapshot.commit);
      p->set_files_total(static_cast<uint32_t>(snapshot.files.size()));
      p->set_bytes_total(total);
      p->set_phase(v1::SYNC_PHASE_DOWNLOADING);
    });
    RETURN_IF_ERROR(Download(client, cache, snapshot, options, metrics));
    Update([&](v1::SyncProgress* p) {
      p->set_phase(v1::SYNC_PHASE_VERIFYING);
      p->clear_current_file();
    });
    // Every blob is verified and in place: now the snapshot, then the ref.
    RETURN_IF_ERROR(cache->LinkSnapshot(snapshot));
    RETURN_IF_ERROR(cache->WriteRef(spec_.repo, spec_.revision, snapshot.commit));
  }
  if (cancelled()) return absl::CancelledError("hub_sync is shutting down");
  return Quantize(cache, snapshot, options);
}

absl::StatusOr<RepoSnapshot> SyncJob::Import(const HubCache* cache) {
  Update([&](v1::SyncProgress* p) { p->set_current_file(spec_.import_gguf); });
  // Converted next to the cache (same file system) in a private folder, then added blob by blob.
  const std::string staging_root = absl::StrCat(cache->root(), "/shardserve/.staging");
  std::error_code error;
  std::filesystem::create_directories(staging_root, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create ", staging_root, ": ", error.message()));
  }
  const std::string staging = absl::StrCat(staging_root, "/import-", getpid(), "-", id_);
  std::filesystem::remove_all(staging, error);
  struct Cleanup {
    std::string path;
    ~Cleanup() {
      std::error_code ignored;
      std::filesystem::remove_all(path, ignored);
    }
  } cleanup{staging};

  RETURN_IF_ERROR(ImportGguf(spec_.import_gguf, staging, GgufImportOptions{}));
  ASSIGN_OR_RETURN(std::vector<RepoFile> files, ListImportedFiles(staging));
  RepoSnapshot snapshot;
  snapshot.repo = spec_.repo;
  snapshot.revision = spec_.revision;
  snapshot.commit = SyntheticCommit(files);
  uint64_t total = 0;
  for (const RepoFile& file : files) total += file.size;
  Update([&](v1::SyncProgress* p) {
    p->set_commit(snapshot.commit);
    p->set_files_total(static_cast<uint32_t>(files.size()));
    p->set_bytes_total(total);
    p->set_phase(v1::SYNC_PHASE_VERIFYING);
  });
  for (const RepoFile& file : files) {
    Update([&](v1::SyncProgress* p) { p->set_current_file(file.path); });
    RETURN_IF_ERROR(cache->AddBlobFromFile(spec_.repo, file, staging + "/" + file.path));
    AddBytes(file.size);
    Update([&](v1::SyncProgress* p) { p->set_files_done(p->files_done() + 1); });
  }
  snapshot.files = std::move(files);
  RETURN_IF_ERROR(cache->LinkSnapshot(snapshot));
  RETURN_IF_ERROR(cache->WriteRef(spec_.repo, spec_.revision, snapshot.commit));
  return snapshot;
}

absl::Status SyncJob::Download(HubClient* client, const HubCache* cache,
                               const RepoSnapshot& snapshot, const SyncJobOptions& options,
                               MetricsRegistry* metrics) {
  MetricFamily* downloaded_bytes =
      metrics == nullptr ? nullptr
                         : metrics->Counter("shardserve_hub_sync_downloaded_bytes_total",
                                            "Bytes downloaded from the upstream Hub");
  MetricFamily* downloaded_files =
      metrics == nullptr ? nullptr
                         : metrics->Counter("shardserve_hub_sync_downloaded_files_total",
                                            "Files downloaded and verified, by result", {"result"});
  // Largest first, so that one big file does not start last and run alone.
  std::vector<const RepoFile*> order;
  for (const RepoFile& file : snapshot.files) order.push_back(&file);
  std::stable_sort(order.begin(), order.end(),
                   [](const RepoFile* a, const RepoFile* b) { return a->size > b->size; });

  std::atomic<size_t> next{0};
  absl::Mutex error_mu;
  absl::Status first_error;
  auto failed = [&] {
    absl::MutexLock lock(&error_mu);
    return !first_error.ok();
  };
  auto fetch_one = [&](const RepoFile& file) -> absl::Status {
    absl::StatusOr<bool> present = cache->HasBlob(spec_.repo, file, spec_.verify_existing);
    if (!present.ok() && present.status().code() == absl::StatusCode::kDataLoss) {
      AddError(absl::StrCat("re-fetching a corrupt cached file: ", present.status().message()));
      RETURN_IF_ERROR(cache->RemoveBlob(spec_.repo, file.etag));
      present = false;
    }
    RETURN_IF_ERROR(present.status());
    if (*present) {
      AddBytes(file.size);
      if (downloaded_files != nullptr) downloaded_files->Add({"cached"}, 1);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(FileLock lock, cache->LockBlob(spec_.repo, file.etag));
    // Another process may have finished it while we waited for the lock.
    ASSIGN_OR_RETURN(present, cache->HasBlob(spec_.repo, file, /*verify_hash=*/false));
    if (*present) {
      AddBytes(file.size);
      if (downloaded_files != nullptr) downloaded_files->Add({"cached"}, 1);
      return absl::OkStatus();
    }
    Update([&](v1::SyncProgress* p) { p->set_current_file(file.path); });
    uint64_t counted = 0;
    absl::Status status = client->Download(
        spec_.repo, snapshot.commit, file, cache->IncompleteBlobPath(spec_.repo, file.etag),
        [&](int64_t delta) {
          // Bytes re-sent after a retry may make a file count more than its size: capped.
          const uint64_t add = std::min<uint64_t>(delta > 0 ? delta : 0, file.size - counted);
          counted += add;
          AddBytes(add);
          if (downloaded_bytes != nullptr && delta > 0) {
            downloaded_bytes->Add({}, static_cast<double>(delta));
          }
        },
        &cancelled_);
    // Download verified size and hash of what it wrote, under the lock we still hold.
    if (status.ok()) status = cache->CommitIncompleteBlob(spec_.repo, file, /*verify_hash=*/false);
    if (!status.ok()) {
      if (downloaded_files != nullptr) downloaded_files->Add({"failed"}, 1);
      return status;
    }
    AddBytes(file.size - counted);  // a resumed file's earlier bytes
    if (downloaded_files != nullptr) downloaded_files->Add({"downloaded"}, 1);
    return absl::OkStatus();
  };
  auto worker = [&] {
    while (!failed() && !cancelled()) {
      const size_t index = next.fetch_add(1);
      if (index >= order.size()) return;
      absl::Status status = fetch_one(*order[index]);
      if (!status.ok()) {
        absl::MutexLock lock(&error_mu);
        if (first_error.ok()) first_error = status;
        return;
      }
      Update([&](v1::SyncProgress* p) { p->set_files_done(p->files_done() + 1); });
    }
  };
  const int threads = std::max(1, std::min<int>(options.connections, order.size()));
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (std::thread& thread : pool) thread.join();
  if (cancelled()) return absl::CancelledError("hub_sync is shutting down");
  return first_error;
}

absl::Status SyncJob::Quantize(const HubCache* cache, const RepoSnapshot& snapshot,
                               const SyncJobOptions& options) {
  for (const std::string& scheme : spec_.schemes) {
    if (cancelled()) return absl::CancelledError("hub_sync is shutting down");
    Update([&](v1::SyncProgress* p) {
      p->set_phase(v1::SYNC_PHASE_QUANTIZING);
      p->set_scheme(SchemeFromName(scheme));
      p->clear_current_file();
      p->set_bytes_done(0);
      p->set_bytes_total(0);
      p->set_bytes_per_second(0);
    });
    const std::string dest = cache->ArtifactDir(spec_.repo, snapshot.commit, scheme);
    ASSIGN_OR_RETURN(FileLock lock, cache->LockArtifact(spec_.repo, snapshot.commit, scheme));
    if (std::filesystem::exists(dest + "/manifest.json")) continue;
    std::optional<quant::QuantScheme> parsed = quant::ParseScheme(scheme);
    if (!parsed) return absl::InvalidArgumentError(absl::StrCat("no quantizer for ", scheme));
    QuantizeOptions quantize;
    quantize.scheme = *parsed;
    quantize.keep_embeddings_bf16 = options.keep_embeddings_bf16;
    quantize.keep_lm_head_bf16 = options.keep_lm_head_bf16;
    quantize.nf4_double_quant = options.nf4_double_quant;
    quantize.source_repo = spec_.repo.ToString();
    quantize.source_commit = snapshot.commit;
    quantize.cancel = &cancelled_;
    ASSIGN_OR_RETURN(
        QuantizeResult result,
        QuantizeSnapshot(cache->SnapshotDir(spec_.repo, snapshot.commit), dest, quantize,
                         [&](absl::string_view tensor, uint64_t done, uint64_t total) {
                           Update([&](v1::SyncProgress* p) {
                             p->set_current_file(std::string(tensor));
                             p->set_bytes_done(done);
                             p->set_bytes_total(total);
                           });
                         }));
    LogJsonLine({{"event", "quantized"},
                 {"job", id_},
                 {"repo", spec_.repo.ToString()},
                 {"commit", snapshot.commit},
                 {"scheme", scheme},
                 {"reused", result.reused},
                 {"source_bytes", result.source_bytes},
                 {"artifact_bytes", result.artifact_bytes},
                 {"group_size", result.group_size}});
  }
  return absl::OkStatus();
}

SyncJobs::SyncJobs(HubClient* client, const HubCache* cache, SyncJobOptions options, int max_jobs,
                   int max_queued, MetricsRegistry* metrics)
    : client_(client),
      cache_(cache),
      options_(std::move(options)),
      max_queued_(max_queued),
      metrics_(metrics) {
  for (int i = 0; i < std::max(1, max_jobs); ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

SyncJobs::~SyncJobs() {
  Shutdown();
  for (std::thread& worker : workers_) worker.join();
}

void SyncJobs::Shutdown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
  for (auto& [key, job] : active_) job->Cancel();
}

int SyncJobs::active() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(active_.size());
}

absl::StatusOr<std::shared_ptr<SyncJob>> SyncJobs::Start(const SyncSpec& spec) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return absl::UnavailableError("hub_sync is shutting down");
  const std::string key = spec.Key();
  if (auto it = active_.find(key); it != active_.end()) return it->second;
  if (static_cast<int>(queue_.size()) >= max_queued_ &&
      static_cast<int>(active_.size()) >= static_cast<int>(workers_.size())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "hub_sync is busy: ", active_.size(), " sync jobs are running or queued (", workers_.size(),
        " run at once, ", max_queued_, " may wait); try again later"));
  }
  auto job = std::make_shared<SyncJob>(absl::StrCat("job-", next_id_++), spec);
  active_[key] = job;
  queue_.push_back(job);
  if (metrics_ != nullptr) {
    metrics_->Gauge("shardserve_hub_sync_jobs_active", "Sync jobs running or queued")
        ->Set({}, static_cast<double>(active_.size()));
  }
  return job;
}

void SyncJobs::WorkerLoop() {
  while (true) {
    std::shared_ptr<SyncJob> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // shut down
      job = queue_.front();
      queue_.pop_front();
      if (shutdown_) job->Cancel();
    }
    job->Run(client_, cache_, options_, metrics_);
    absl::MutexLock lock(&mu_);
    active_.erase(job->spec().Key());
    if (metrics_ != nullptr) {
      metrics_->Gauge("shardserve_hub_sync_jobs_active", "Sync jobs running or queued")
          ->Set({}, static_cast<double>(active_.size()));
    }
  }
}

}  // namespace shardserve::hub
