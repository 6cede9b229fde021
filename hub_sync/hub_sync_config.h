// hub_sync's configuration: one YAML file (`hub_sync --config hub_sync.yaml`, example in
// deploy/hub_sync.yaml) whose keys a flag of the same name overrides (`--cache-dir` for
// `cache_dir`; list keys take a comma-separated flag value).
//
// Defaults that come from the environment, as huggingface_hub's do: `cache_dir` from
// $SHARDSERVE_CACHE (else ~/.cache/shardserve), `endpoint` from $HF_ENDPOINT (else
// https://huggingface.co), the token from $HF_TOKEN (else $HUGGING_FACE_HUB_TOKEN) unless
// `token_file` names a file. The token is never logged or echoed in an error.
#ifndef SHARDSERVE_HUB_SYNC_HUB_SYNC_CONFIG_H_
#define SHARDSERVE_HUB_SYNC_HUB_SYNC_CONFIG_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace shardserve::hub {

struct HubSyncConfig {
  std::string cache_dir;   // "" until FinalizeHubSyncConfig: $SHARDSERVE_CACHE, ~/.cache/shardserve
  std::string endpoint;    // "" until FinalizeHubSyncConfig: $HF_ENDPOINT, https://huggingface.co
  std::string token_file;  // a file holding the Hub token; "" = $HF_TOKEN
  std::string grpc_address = "127.0.0.1:50071";
  std::string http_address = "127.0.0.1:8001";  // the mirror, /metrics, /live, /ready
  int connections = 8;                      // parallel transfers (files and ranges of large files)
  int max_jobs = 2;                         // sync jobs running at once
  int max_queued_jobs = 16;                 // jobs waiting for a slot; beyond: RESOURCE_EXHAUSTED
  std::vector<std::string> allow_patterns;  // empty: DefaultAllowPatterns()
  std::vector<std::string> ignore_patterns;
  int retry_max_attempts = 5;
  double retry_initial_backoff_seconds = 0.5;
  double retry_max_backoff_seconds = 30;
  double max_retry_after_seconds = 300;  // longest 429 Retry-After honoured before giving up
  bool pull_through = false;             // the mirror fetches what it lacks from `endpoint` first
  bool nf4_double_quant = false;
  bool keep_embeddings_bf16 = true;
  bool keep_lm_head_bf16 = true;

  // Not a key: read by FinalizeHubSyncConfig from token_file or the environment.
  std::string token;
};

// The keys (also flags), in the order deploy/hub_sync.yaml lists them.
const std::vector<std::string>& HubSyncConfigKeys();
// One line on what `key` means (for --help); "" for an unknown key.
std::string HubSyncConfigKeyHelp(absl::string_view key);

// Sets field `key` from its text (a list key from a comma-separated string). INVALID_ARGUMENT
// naming `what` ("hub_sync.yaml:3", "flag --connections"), the key and the reason.
absl::Status SetHubSyncConfigField(HubSyncConfig* config, absl::string_view key,
                                   absl::string_view value, absl::string_view what);

// Parses a YAML document (list keys may also be YAML sequences). On error `config` is unchanged.
absl::Status ParseHubSyncConfigYaml(absl::string_view yaml, absl::string_view what,
                                    HubSyncConfig* config);
absl::Status LoadHubSyncConfigFile(const std::string& path, HubSyncConfig* config);

// Fills the environment defaults and reads the token. `getenv` is injectable for tests.
absl::Status FinalizeHubSyncConfig(HubSyncConfig* config,
                                   const char* (*getenv_fn)(const char*) = nullptr);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_HUB_SYNC_CONFIG_H_
