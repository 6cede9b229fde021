// The worker process: serves shardserve.worker.v1.Worker, shardserve.chat.v1.Chat and
// grpc.health.v1.Health on one address, for one model, and (unless http_address is "") plain
// HTTP on a second address: GET /metrics (Prometheus text format, shardserve_worker_*; see
// worker_service.h for the request metrics, server.cc for the engine's), /live (200 while the
// process runs) and /ready (200 while serving; 503 while loading or draining).
//
// Start-up order: the gRPC server and the HTTP server bind first (health NOT_SERVING for "",
// "shardserve.worker.v1.Worker" and "shardserve.chat.v1.Chat"; requests get UNAVAILABLE; /ready
// 503), then stdout gets, in this order and nothing else ever:
//   listening on HOST:PORT         the gRPC address (the chosen port when the config says 0)
//   http listening on HOST:PORT    the HTTP address; absent when http_address is ""
// then the model loads (the memory plan is logged), the engine runs its warm-up step, health
// turns SERVING, /ready 200, and the last line follows (for scripts without a gRPC client):
//   serving MODEL_NAME
// SIGINT / SIGTERM: health NOT_SERVING and /ready 503, new requests UNAVAILABLE, running streams
// get drain_seconds to finish and are then cancelled, the HTTP server stops, the engine stops,
// and RunWorker returns 0.
//
// Logs go to stderr, one JSON object per line (start-up events — "listening" carries "address"
// and "http_address" — and one line per request).
#ifndef SHARDSERVE_WORKER_SERVER_H_
#define SHARDSERVE_WORKER_SERVER_H_

#include <string>

#include "worker/worker_config.h"

namespace shardserve {

// Runs until SIGINT / SIGTERM. Returns the process exit code: 0 after a clean shutdown, 1 when
// an address cannot be bound or the model cannot be loaded (the reason logged). Must be called
// before the process starts any other thread (it blocks SIGINT / SIGTERM in all threads and
// waits for them on its own).
int RunWorker(const WorkerConfig& config, const std::string& version);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_SERVER_H_
