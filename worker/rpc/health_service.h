// grpc.health.v1.Health for the worker, holding every service NOT_SERVING from the moment the
// port opens until the server says otherwise. (gRPC's built-in health service starts with ""
// SERVING, which would let a probe see a worker as ready before its model is loaded.)
//
// Check answers the named service's status (NOT_FOUND for a name never set); Watch streams the
// status now and on every change until the client goes away or Shutdown() is called.
// Thread-safe.
#ifndef SHARDSERVE_WORKER_RPC_HEALTH_SERVICE_H_
#define SHARDSERVE_WORKER_RPC_HEALTH_SERVICE_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace shardserve {

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  void SetServing(const std::string& service, bool serving);
  // Ends every Watch stream (call before grpc::Server::Shutdown).
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;
  Status StatusLocked(const std::string& service) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Status> statuses_ ABSL_GUARDED_BY(mu_);
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;  // bumped on every change
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_RPC_HEALTH_SERVICE_H_
