// The worker process: serves shardserve.worker.v1.Worker, shardserve.chat.v1.Chat and
// grpc.health.v1.Health on one address, for one model.
//
// Start-up order: the server binds first (health NOT_SERVING for "", "shardserve.worker.v1.Worker"
// and "shardserve.chat.v1.Chat"; requests get UNAVAILABLE) and prints one line
// `listening on HOST:PORT` to stdout (the chosen port when the config says port 0); then the
// model loads (the memory plan is logged), the engine runs its warm-up step, health turns
// SERVING and a second line `serving MODEL_NAME` goes to stdout (for scripts without a gRPC
// client). Nothing else is printed to stdout. SIGINT / SIGTERM: health NOT_SERVING, new requests
// UNAVAILABLE, running streams get drain_seconds to finish and are then cancelled, the engine
// stops, and RunWorker returns 0.
//
// Logs go to stderr, one JSON object per line (start-up events and one line per request).
#ifndef SHARDSERVE_WORKER_SERVER_H_
#define SHARDSERVE_WORKER_SERVER_H_

#include <string>

#include "worker/worker_config.h"

namespace shardserve {

// Runs until SIGINT / SIGTERM. Returns the process exit code: 0 after a clean shutdown, 1 when
// the address cannot be bound or the model cannot be loaded (the reason logged). Must be called
// before the process starts any other thread (it blocks SIGINT / SIGTERM in all threads and
// waits for them on its own).
int RunWorker(const WorkerConfig& config, const std::string& version);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_SERVER_H_
