// The hub_sync binary: `hub_sync --config hub_sync.yaml [--key value ...]`. Every config key is
// also a flag (`cache_dir` -> `--cache-dir`; list keys comma-separated) that overrides the file;
// see hub_sync_config.h. Everything else is RunHubSync (service.h).
#include <signal.h>

#include <cstdio>
#include <map>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "hub_sync/hub_sync_config.h"
#include "hub_sync/service.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "hub_sync: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  namespace hub = shardserve::hub;
  CLI::App app{
      "shardserve hub_sync: mirrors Hugging Face Hub repositories into the shared cache, verifies "
      "and quantizes them, and serves the cache as a Hub mirror (gRPC shardserve.hub.v1.HubSync, "
      "HTTP Hub routes, /metrics, /live, /ready)"};
  app.set_version_flag("--version", std::string("shardserve hub_sync ") + SHARDSERVE_VERSION);
  std::string config_file;
  app.add_option("--config", config_file, "YAML config file (flags override its keys)");
  std::map<std::string, std::string> values;
  std::map<std::string, CLI::Option*> flags;
  for (const std::string& key : hub::HubSyncConfigKeys()) {
    const std::string flag = "--" + absl::StrReplaceAll(key, {{"_", "-"}});
    flags[key] =
        app.add_option(flag, values[key], hub::HubSyncConfigKeyHelp(key) + " [" + key + "]");
  }
  CLI11_PARSE(app, argc, argv);

  hub::HubSyncConfig config;
  if (!config_file.empty()) {
    if (absl::Status s = hub::LoadHubSyncConfigFile(config_file, &config); !s.ok()) return Fail(s);
  }
  for (const auto& [key, option] : flags) {
    if (option->count() == 0) continue;
    absl::Status s = hub::SetHubSyncConfigField(
        &config, key, values[key], absl::StrCat("flag --", absl::StrReplaceAll(key, {{"_", "-"}})));
    if (!s.ok()) return Fail(s);
  }
  if (absl::Status s = hub::FinalizeHubSyncConfig(&config); !s.ok()) return Fail(s);
  // A peer closing a connection must not kill the process (libcurl runs with CURLOPT_NOSIGNAL).
  signal(SIGPIPE, SIG_IGN);
  return hub::RunHubSync(config, SHARDSERVE_VERSION);
}
