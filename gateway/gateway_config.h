// The gateway's configuration: one YAML file (`gateway --config gateway.yaml`, example in
// deploy/gateway.yaml) whose scalar keys a flag of the same name overrides (`--http-address` for
// `http_address`), plus repeatable flags for the lists (`--model NAME=HOST:PORT,HOST:PORT`,
// `--model NAME=dns:HOST:PORT`, `--api-key-sha256 HEX=TENANT`).
//
// YAML shape:
//   grpc_address: 127.0.0.1:50051
//   http_address: 127.0.0.1:8000
//   models:
//     - name: HuggingFaceTB/SmolLM2-135M-Instruct
//       endpoints: [127.0.0.1:50061, 127.0.0.1:50062]   # static list, or:
//       dns: smollm-workers.default.svc.cluster.local:50061  # re-resolved every
//       dns_refresh_seconds max_queued: 64         # requests waiting for their first token;
//       beyond: 429
//   api_keys:                  # none: authentication off, every caller is tenant "default"
//     - sha256: 9f86d08...     # lowercase hex SHA-256 of the key (`shardserve hash-key` prints it)
//       tenant: team-a
//   tenants:
//     team-a: {requests_per_second: 5, request_burst: 10, tokens_per_minute: 100000}
//   cors_allowed_origins: ["*"]
//   ... scalars listed by GatewayConfigKeys().
//
// Pure data and parsing (yaml-cpp's exceptions are caught here): tested on its own. Errors name the
// file (or flag), the key (with the line for YAML) and the reason.
#ifndef SHARDSERVE_GATEWAY_GATEWAY_CONFIG_H_
#define SHARDSERVE_GATEWAY_GATEWAY_CONFIG_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "gateway/admission.h"
#include "gateway/router.h"

namespace shardserve {

struct ModelRoute {
  std::string name;                    // what clients put in `model`
  std::vector<std::string> endpoints;  // static "host:port" list, or empty when `dns` is set
  std::string dns;                     // "host:port": every address the name resolves to
  int max_queued = 64;                 // requests waiting for their first token
};

struct GatewayConfig {
  std::string grpc_address = "127.0.0.1:50051";
  std::string http_address = "127.0.0.1:8000";
  std::vector<ModelRoute> models;  // at least one
  std::vector<ApiKeyEntry> api_keys;
  std::map<std::string, TenantQuota> tenants;
  std::vector<std::string> cors_allowed_origins;  // empty: no CORS headers

  RouterConfig router;                   // keys affinity_margin, kv_weight
  int max_attempts = 3;                  // workers tried before the first token (1: no retry)
  int max_in_flight = 4096;              // requests at once over all models; beyond: 429
  double request_timeout_seconds = 600;  // deadline for requests that set none
  double connect_timeout_seconds = 2;    // a connection attempt to a worker
  double health_interval_seconds = 1;    // grpc.health.v1 Check per worker
  double status_interval_seconds = 0.5;  // Worker.Status poll per worker
  double dns_refresh_seconds = 5;        // re-resolution of `dns` models
  double retry_after_seconds = 1;        // Retry-After on queue-full 429s
  int http_threads = 128;                // HTTP connections served at once
  double drain_seconds = 10;             // on SIGTERM: time streams get to finish
  int default_max_tokens = 0;            // for OpenAI requests without max_tokens; 0: worker's
};

// The scalar keys (also flags), in the order deploy/gateway.yaml lists them.
const std::vector<std::string>& GatewayConfigKeys();
// One line on what `key` means (for --help); "" for an unknown key.
std::string GatewayConfigKeyHelp(absl::string_view key);

// Sets scalar field `key` from its text. INVALID_ARGUMENT naming `what` ("gateway.yaml:3",
// "flag --http-address"), the key and the reason.
absl::Status SetGatewayConfigField(GatewayConfig* config, absl::string_view key,
                                   absl::string_view value, absl::string_view what);

// `--model` flag text: "NAME=HOST:PORT[,HOST:PORT...]" or "NAME=dns:HOST:PORT". Replaces a
// model of the same name from the file.
absl::Status AddModelFlag(GatewayConfig* config, absl::string_view text);
// `--api-key-sha256` flag text: "HEX=TENANT".
absl::Status AddApiKeyFlag(GatewayConfig* config, absl::string_view text);

// Parses YAML on top of `config`. Errors give `what`, the line, the key and the reason.
absl::Status ParseGatewayConfigYaml(absl::string_view yaml, absl::string_view what,
                                    GatewayConfig* config);
// Reads and parses `path`. NOT_FOUND when the file cannot be read.
absl::Status LoadGatewayConfigFile(const std::string& path, GatewayConfig* config);

// What no single field can check: at least one model, each with endpoints xor dns, valid
// host:port everywhere, unique model names, tenants of keys exist when quotas are given, ...
absl::Status FinalizeGatewayConfig(GatewayConfig* config);

}  // namespace shardserve

#endif  // SHARDSERVE_GATEWAY_GATEWAY_CONFIG_H_
