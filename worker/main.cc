// The worker binary: `worker --config worker.yaml [--key value ...]`. Every config key is also a
// flag (`kv_cache_tokens` -> `--kv-cache-tokens`) that overrides the file; see worker_config.h.
// Everything else is RunWorker (server.h).
#include <cstdio>
#include <map>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/server.h"
#include "worker/worker_config.h"

int main(int argc, char** argv) {
  CLI::App app{
      "shardserve worker: serves one model over gRPC (shardserve.worker.v1.Worker, "
      "shardserve.chat.v1.Chat, grpc.health.v1.Health) and HTTP (/metrics, /live, /ready)"};
  app.set_version_flag("--version", std::string("shardserve worker ") + SHARDSERVE_VERSION);
  std::string config_file;
  app.add_option("--config", config_file, "YAML config file (flags override its keys)");
  std::map<std::string, std::string> values;
  std::map<std::string, CLI::Option*> flags;
  for (const std::string& key : shardserve::WorkerConfigKeys()) {
    const std::string flag = "--" + absl::StrReplaceAll(key, {{"_", "-"}});
    flags[key] =
        app.add_option(flag, values[key], shardserve::WorkerConfigKeyHelp(key) + " [" + key + "]");
  }
  CLI11_PARSE(app, argc, argv);

  shardserve::WorkerConfig config;
  if (!config_file.empty()) {
    absl::Status status = shardserve::LoadWorkerConfigFile(config_file, &config);
    if (!status.ok()) {
      std::fprintf(stderr, "worker: %s\n", status.ToString().c_str());
      return 1;
    }
  }
  for (const auto& [key, option] : flags) {
    if (option->count() == 0) continue;
    absl::Status status = shardserve::SetWorkerConfigField(
        &config, key, values[key], absl::StrCat("flag --", absl::StrReplaceAll(key, {{"_", "-"}})));
    if (!status.ok()) {
      std::fprintf(stderr, "worker: %s\n", status.ToString().c_str());
      return 1;
    }
  }
  if (absl::Status status = shardserve::FinalizeWorkerConfig(&config); !status.ok()) {
    std::fprintf(stderr, "worker: %s\n", status.ToString().c_str());
    return 1;
  }
  return shardserve::RunWorker(config, SHARDSERVE_VERSION);
}
