#include "hub_sync/service.h"

#include <chrono>
#include <cstdio>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/host_port.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/stop_signals.h"
#include "grpcpp/grpcpp.h"
#include "hub_sync/hub_client.h"
#include "hub_sync/mirror.h"
#include "worker/rpc/chat_validation.h"
#include "worker/rpc/health_service.h"

namespace shardserve::hub {
namespace {

constexpr const char* kHealthServices[] = {"", "shardserve.hub.v1.HubSync"};

// How long Sync waits for a change before looking at the client again.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(250);

// Glob characters in a literal path, escaped so that fnmatch matches exactly that path.
std::string GlobEscape(absl::string_view path) {
  std::string out;
  for (char c : path) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

grpc::Status HubSyncService::Sync(grpc::ServerContext* context, const v1::SyncRequest* request,
                                  grpc::ServerWriter<v1::SyncProgress>* writer) {
  absl::StatusOr<SyncSpec> spec = SyncSpecFromRequest(*request);
  if (!spec.ok()) return ToGrpcStatus(spec.status());
  absl::StatusOr<std::shared_ptr<SyncJob>> started = jobs_->Start(*spec);
  if (!started.ok()) return ToGrpcStatus(started.status());
  std::shared_ptr<SyncJob> job = *std::move(started);

  uint64_t sent_version = 0;
  absl::Time last_write = absl::InfinitePast();
  while (true) {
    uint64_t version = 0;
    v1::SyncProgress progress = job->WaitForChange(sent_version, kCancelPoll, &version);
    if (context->IsCancelled()) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    const bool last =
        progress.phase() == v1::SYNC_PHASE_DONE || progress.phase() == v1::SYNC_PHASE_FAILED;
    if (version == sent_version && !last) continue;
    // Throttled: one event per interval is plenty for a progress bar.
    const absl::Time now = absl::Now();
    if (!last && now - last_write < progress_interval_) {
      absl::SleepFor(progress_interval_ - (now - last_write));
      continue;
    }
    if (!writer->Write(progress)) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
    }
    sent_version = version;
    last_write = now;
    if (last) {
      if (progress.phase() == v1::SYNC_PHASE_DONE) return grpc::Status::OK;
      return ToGrpcStatus(job->result());
    }
  }
}

grpc::Status HubSyncService::List(grpc::ServerContext* context, const v1::ListRequest* request,
                                  v1::ListResponse* response) {
  absl::StatusOr<std::vector<RepoInfo>> repos = cache_->List(request->repo_prefix());
  if (!repos.ok()) return ToGrpcStatus(repos.status());
  for (const RepoInfo& info : *repos) {
    v1::CachedRepo* repo = response->add_repos();
    repo->set_repo(info.repo.ToString());
    repo->set_size_bytes(info.size_bytes);
    for (const RevisionInfo& revision_info : info.revisions) {
      v1::CachedRevision* revision = repo->add_revisions();
      revision->set_commit(revision_info.commit);
      for (const std::string& ref : revision_info.refs) revision->add_refs(ref);
      revision->set_files(revision_info.files);
      revision->set_size_bytes(revision_info.size_bytes);
      revision->set_modified_unix_seconds(revision_info.modified_unix_seconds);
      for (const ArtifactInfo& artifact_info : revision_info.artifacts) {
        v1::CachedArtifact* artifact = revision->add_artifacts();
        artifact->set_scheme(SchemeFromName(artifact_info.scheme));
        artifact->set_size_bytes(artifact_info.size_bytes);
        artifact->set_tool_version(artifact_info.tool_version);
      }
    }
  }
  return grpc::Status::OK;
}

grpc::Status HubSyncService::Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                                    v1::DeleteResponse* response) {
  absl::StatusOr<RepoId> repo = ParseRepoId(request->repo());
  if (!repo.ok()) return ToGrpcStatus(repo.status());
  if (!request->revision().empty()) {
    if (absl::Status valid = ValidateRevision(request->revision()); !valid.ok()) {
      return ToGrpcStatus(valid);
    }
  }
  std::string scheme;
  if (request->scheme() != v1::QUANT_SCHEME_UNSPECIFIED) {
    scheme = SchemeName(request->scheme());
    if (scheme.empty() || request->revision().empty()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          scheme.empty() ? "scheme: not a quantization scheme"
                                         : "scheme: deleting an artifact needs a revision");
    }
  }
  absl::StatusOr<DeleteResult> result = cache_->Delete(*repo, request->revision(), scheme);
  if (!result.ok()) return ToGrpcStatus(result.status());
  response->set_freed_bytes(result->freed_bytes);
  for (const std::string& path : result->removed) response->add_removed(path);
  LogJsonLine({{"event", "delete"},
               {"repo", repo->ToString()},
               {"revision", request->revision()},
               {"scheme", scheme},
               {"freed_bytes", result->freed_bytes}});
  return grpc::Status::OK;
}

int RunHubSync(const HubSyncConfig& config, const std::string& version) {
  StopSignals stop_signals;  // first, so every thread inherits the blocked signals
  auto fail = [](const std::string& error) {
    LogJsonLine({{"event", "error"}, {"error", error}});
    return 1;
  };
  absl::StatusOr<HubCache> opened = HubCache::Open(config.cache_dir);
  if (!opened.ok()) return fail(absl::StrCat("cache_dir: ", opened.status().ToString()));
  const HubCache cache = *std::move(opened);

  HubClientOptions client_options;
  client_options.endpoint = config.endpoint;
  client_options.token = config.token;
  client_options.connections = config.connections;
  client_options.retry.max_attempts = config.retry_max_attempts;
  client_options.retry.initial_backoff = absl::Seconds(config.retry_initial_backoff_seconds);
  client_options.retry.max_backoff = absl::Seconds(config.retry_max_backoff_seconds);
  client_options.retry.max_retry_after = absl::Seconds(config.max_retry_after_seconds);
  client_options.user_agent = absl::StrCat("shardserve-hub_sync/", version);
  absl::StatusOr<std::unique_ptr<HubClient>> created_client = HubClient::Create(client_options);
  if (!created_client.ok()) return fail(created_client.status().ToString());
  std::unique_ptr<HubClient> client = *std::move(created_client);

  MetricsRegistry metrics;
  SyncJobOptions job_options;
  job_options.connections = config.connections;
  job_options.default_allow_patterns = config.allow_patterns;
  job_options.nf4_double_quant = config.nf4_double_quant;
  job_options.keep_embeddings_bf16 = config.keep_embeddings_bf16;
  job_options.keep_lm_head_bf16 = config.keep_lm_head_bf16;
  auto jobs = std::make_unique<SyncJobs>(client.get(), &cache, job_options, config.max_jobs,
                                         config.max_queued_jobs, &metrics);
  HubSyncService service(jobs.get(), &cache);

  HealthService health;
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(config.grpc_address, grpc::InsecureServerCredentials(), &grpc_port);
  builder.RegisterService(&health);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> grpc_server = builder.BuildAndStart();
  if (grpc_server == nullptr || grpc_port == 0) {
    return fail(absl::StrCat("grpc_address: cannot listen on ", config.grpc_address));
  }

  auto http = std::make_unique<HttpServer>();
  MirrorOptions mirror_options;
  mirror_options.metrics = &metrics;
  if (config.pull_through) {
    SyncJobs* jobs_ptr = jobs.get();
    const std::vector<std::string> ignore = config.ignore_patterns;
    mirror_options.fetch_missing = [jobs_ptr, ignore](const RepoId& repo,
                                                      absl::string_view revision,
                                                      absl::string_view path) -> absl::Status {
      SyncSpec spec;
      spec.repo = repo;
      spec.revision = std::string(revision);
      // One file exactly, or the default selection for a whole revision.
      if (!path.empty()) spec.allow_patterns = {GlobEscape(path)};
      spec.ignore_patterns = path.empty() ? ignore : std::vector<std::string>{};
      absl::StatusOr<std::shared_ptr<SyncJob>> job = jobs_ptr->Start(spec);
      if (!job.ok()) return job.status();
      uint64_t version = 0;
      while (!(*job)->Finished()) (*job)->WaitForChange(version, absl::Seconds(1), &version);
      return (*job)->result();
    };
  }
  AddMirrorRoutes(http.get(), &cache, mirror_options);
  AddProbeRoutes(http.get(), &metrics, nullptr, [] { return absl::OkStatus(); });
  if (absl::Status started = http->Start(config.http_address); !started.ok()) {
    grpc_server->Shutdown(std::chrono::system_clock::now());
    grpc_server->Wait();
    return fail(absl::StrCat("http_address: ", started.ToString()));
  }
  for (const char* name : kHealthServices) health.SetServing(name, true);

  std::string grpc_host;
  int ignored_port = 0;
  const std::string grpc_address =
      SplitHostPort(config.grpc_address, &grpc_host, &ignored_port).ok()
          ? JoinHostPort(grpc_host, grpc_port)
          : config.grpc_address;
  std::printf("grpc listening on %s\n", grpc_address.c_str());
  std::printf("http listening on %s\n", http->address().c_str());
  std::fflush(stdout);
  LogJsonLine({{"event", "listening"},
               {"grpc_address", grpc_address},
               {"http_address", http->address()},
               {"cache_dir", config.cache_dir},
               {"endpoint", config.endpoint},
               {"token", config.token.empty() ? "none" : "set"},
               {"pull_through", config.pull_through},
               {"version", version}});

  stop_signals.received().WaitForNotification();

  health.Shutdown();
  LogJsonLine({{"event", "draining"}, {"active_jobs", jobs->active()}});
  jobs->Shutdown();  // running jobs stop at their next step; downloads resume on the next start
  http->Stop();
  grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc_server->Wait();
  jobs.reset();
  LogJsonLine({{"event", "stopped"}});
  return 0;
}

}  // namespace shardserve::hub
