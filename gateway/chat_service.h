// The gateway's gRPC fronts over the Dispatcher (dispatcher.h):
//   shardserve.chat.v1.Chat     Chat (one ServerWriteReactor per stream) and ListModels;
//   shardserve.gateway.v1.Gateway  ClusterStatus (the operator view).
//
// The API key comes from the metadata `authorization: Bearer KEY` (or `x-api-key: KEY`); the
// client's gRPC deadline is the request's deadline. Each Chat stream queues the dispatcher's
// chunks and writes one at a time, coalescing chunks that queued meanwhile when they belong to
// the same choice (index). A client that cancels or disconnects (OnCancel, a failed write)
// cancels the request and with it the worker stream. Errors are the dispatcher's statuses;
// RESOURCE_EXHAUSTED and UNAVAILABLE carry the trailing metadata `retry-after` (whole seconds).
// ListModels and ClusterStatus need a valid key too when keys are configured.
//
// Threads: gRPC's callback threads only; nothing blocks. The Dispatcher is not owned and must
// outlive the grpc::Server that runs these services.
#ifndef SHARDSERVE_GATEWAY_CHAT_SERVICE_H_
#define SHARDSERVE_GATEWAY_CHAT_SERVICE_H_

#include <map>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "gateway/dispatcher.h"
#include "grpcpp/grpcpp.h"

namespace shardserve {

struct GatewayServicesOptions {
  std::string version;  // ClusterStatusResponse.version
  // `retry-after` for a RESOURCE_EXHAUSTED / UNAVAILABLE that ends a started stream (the
  // dispatcher reports its own for errors at start).
  absl::Duration retry_after = absl::Seconds(1);
};

class GatewayServices {
 public:
  GatewayServices(Dispatcher* dispatcher, GatewayServicesOptions options);
  ~GatewayServices();
  GatewayServices(const GatewayServices&) = delete;
  GatewayServices& operator=(const GatewayServices&) = delete;

  grpc::Service* chat_service();     // shardserve.chat.v1.Chat
  grpc::Service* gateway_service();  // shardserve.gateway.v1.Gateway

 private:
  class ChatReactor;
  class ChatImpl;
  class GatewayImpl;

  Dispatcher* const dispatcher_;
  const GatewayServicesOptions options_;
  std::unique_ptr<ChatImpl> chat_impl_;
  std::unique_ptr<GatewayImpl> gateway_impl_;
};

// The API key a client sent: `authorization: Bearer KEY` (scheme case-insensitive), else
// `x-api-key`; "" when neither.
std::string ApiKeyFromMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata);

// Whole seconds for a `retry-after` header or trailer (at least 1).
int RetryAfterSeconds(absl::Duration retry_after);

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_CHAT_SERVICE_H_
