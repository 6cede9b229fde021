// The gateway process: gRPC (shardserve.chat.v1.Chat, shardserve.gateway.v1.Gateway,
// grpc.health.v1) on grpc_address and HTTP (the OpenAI API, /metrics, /live, /ready) on
// http_address.
//
// Start-up: both servers bind (port 0 picks a free one), the worker pool starts probing, and
// two lines go to stdout, nothing else ever: `grpc listening on HOST:PORT` and
// `http listening on HOST:PORT`. Logs go to stderr, one JSON object per line. gRPC health
// ("" and "shardserve.chat.v1.Chat") is SERVING while at least one model has a healthy worker,
// like /ready for all models. SIGINT / SIGTERM: health NOT_SERVING, new requests UNAVAILABLE,
// running streams get drain_seconds, then both servers stop and RunGateway returns 0.
#ifndef SHARDSERVE_GATEWAY_SERVER_H_
#define SHARDSERVE_GATEWAY_SERVER_H_

#include <string>

#include "gateway/gateway_config.h"

namespace shardserve {

// Returns the exit code: 0 after a clean shutdown, 1 when an address cannot be bound or the
// config is refused (the reason logged). Call before the process starts other threads (it
// blocks SIGINT / SIGTERM in all threads and waits for them itself).
int RunGateway(const GatewayConfig& config, const std::string& version);

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_SERVER_H_
