// Which worker serves a request: a pure policy over snapshots of the workers (no sockets, no
// threads), so every decision is unit-tested.
//
// Only workers that are up, healthy and serving the requested model are candidates; workers the
// request already failed on are skipped (retry before the first token). Among candidates:
//   - the conversation's prefix picks a preferred worker by rendezvous (highest-random-weight)
//     hashing of (prefix key, worker id): the same conversation goes to the same worker while
//     the set of workers is stable, so its KV cache can be reused, and when a worker leaves only
//     the conversations it held move;
//   - the preferred worker is taken unless its load exceeds the least loaded candidate's by more
//     than `affinity_margin`; then the least loaded wins (ties: the lowest id).
// Load = running + waiting sequences, plus kv_weight x the fraction of KV blocks in use.
#ifndef SHARDSERVE_GATEWAY_ROUTER_H_
#define SHARDSERVE_GATEWAY_ROUTER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace shardserve {

struct WorkerSnapshot {
  std::string id;        // "host:port"
  bool up = false;       // reachable (not marked down after a failure)
  bool healthy = false;  // grpc.health.v1 SERVING
  std::vector<std::string> models;
  int running = 0;
  int waiting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
};

struct RouteRequest {
  std::string model;
  // Identifies the conversation's prefix (PrefixKey); 0: no preference.
  uint64_t prefix_key = 0;
  // Worker ids this request already failed on.
  std::vector<std::string> exclude;
};

struct RouterConfig {
  double affinity_margin = 4.0;  // in load units (sequences)
  double kv_weight = 4.0;        // load added by a full KV cache
};

// The load the policy compares (see above).
double WorkerLoad(const WorkerSnapshot& worker, const RouterConfig& config);

// Index into `workers` of the chosen one. NOT_FOUND when no worker lists the model (the message
// names it); UNAVAILABLE when some do but none is up, healthy and not excluded (the message says
// how many serve it and why none can take it).
absl::StatusOr<size_t> PickWorker(absl::Span<const WorkerSnapshot> workers,
                                  const RouteRequest& request, const RouterConfig& config);

// A stable 64-bit key for a conversation prefix (the same on every gateway replica and build):
// FNV-1a over the model name and each message's role and content, every message but the last;
// 0 (no preference) when there is only one message.
uint64_t PrefixKey(absl::string_view model,
                   absl::Span<const std::pair<std::string, std::string>> role_content);

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_ROUTER_H_
