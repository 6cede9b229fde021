// The HubSync gRPC service (proto/shardserve/hub/v1/hub_sync.proto) over SyncJobs and the cache,
// and RunHubSync: the hub_sync process (gRPC API, the mirror with /metrics and probes on the
// HTTP port, drain on SIGTERM).
#ifndef SHARDSERVE_HUB_SYNC_SERVICE_H_
#define SHARDSERVE_HUB_SYNC_SERVICE_H_

#include <string>

#include "absl/time/time.h"
#include "hub_sync/cache.h"
#include "hub_sync/hub_sync_config.h"
#include "hub_sync/sync_job.h"
#include "shardserve/hub/v1/hub_sync.grpc.pb.h"

namespace shardserve::hub {

// Sync streams a job's progress: an event when something changed, at most every
// `progress_interval`, always the last one (DONE, or FAILED followed by the job's error as the
// call's status). List and Delete read and change the cache.
class HubSyncService final : public v1::HubSync::Service {
 public:
  HubSyncService(SyncJobs* jobs, const HubCache* cache,
                 absl::Duration progress_interval = absl::Milliseconds(100))
      : jobs_(jobs), cache_(cache), progress_interval_(progress_interval) {}

  grpc::Status Sync(grpc::ServerContext* context, const v1::SyncRequest* request,
                    grpc::ServerWriter<v1::SyncProgress>* writer) override;
  grpc::Status List(grpc::ServerContext* context, const v1::ListRequest* request,
                    v1::ListResponse* response) override;
  grpc::Status Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                      v1::DeleteResponse* response) override;

 private:
  SyncJobs* const jobs_;
  const HubCache* const cache_;
  const absl::Duration progress_interval_;
};

// Runs hub_sync until SIGINT / SIGTERM. Prints "grpc listening on HOST:PORT" and
// "http listening on HOST:PORT" on stdout once both serve. Returns the exit status.
int RunHubSync(const HubSyncConfig& config, const std::string& version);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_SERVICE_H_
