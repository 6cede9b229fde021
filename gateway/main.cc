// The gateway binary: `gateway --config gateway.yaml [--key value ...] [--model NAME=ADDRS ...]
// [--api-key-sha256 HEX=TENANT ...]`. Every scalar config key is also a flag (`http_address` ->
// `--http-address`) that overrides the file; see gateway_config.h. Everything else is RunGateway
// (server.h).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gateway/gateway_config.h"
#include "gateway/server.h"

namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "gateway: %s\n", status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "shardserve gateway: the cluster's front door (gRPC shardserve.chat.v1.Chat and "
      "shardserve.gateway.v1.Gateway, the OpenAI-compatible HTTP API, /metrics, /live, /ready)"};
  app.set_version_flag("--version", std::string("shardserve gateway ") + SHARDSERVE_VERSION);
  std::string config_file;
  app.add_option("--config", config_file, "YAML config file (flags override its keys)");
  std::vector<std::string> model_flags, key_flags;
  app.add_option("--model", model_flags,
                 "NAME=HOST:PORT[,HOST:PORT...] or NAME=dns:HOST:PORT (repeatable; replaces the "
                 "file's model of that name)");
  app.add_option("--api-key-sha256", key_flags,
                 "HEX=TENANT: an API key's lowercase hex SHA-256 and its tenant (repeatable)");
  std::map<std::string, std::string> values;
  std::map<std::string, CLI::Option*> flags;
  for (const std::string& key : shardserve::GatewayConfigKeys()) {
    const std::string flag = "--" + absl::StrReplaceAll(key, {{"_", "-"}});
    flags[key] =
        app.add_option(flag, values[key], shardserve::GatewayConfigKeyHelp(key) + " [" + key + "]");
  }
  CLI11_PARSE(app, argc, argv);

  shardserve::GatewayConfig config;
  if (!config_file.empty()) {
    if (absl::Status s = shardserve::LoadGatewayConfigFile(config_file, &config); !s.ok()) {
      return Fail(s);
    }
  }
  for (const auto& [key, option] : flags) {
    if (option->count() == 0) continue;
    absl::Status s = shardserve::SetGatewayConfigField(
        &config, key, values[key], absl::StrCat("flag --", absl::StrReplaceAll(key, {{"_", "-"}})));
    if (!s.ok()) return Fail(s);
  }
  for (const std::string& text : model_flags) {
    if (absl::Status s = shardserve::AddModelFlag(&config, text); !s.ok()) return Fail(s);
  }
  for (const std::string& text : key_flags) {
    if (absl::Status s = shardserve::AddApiKeyFlag(&config, text); !s.ok()) return Fail(s);
  }
  if (absl::Status s = shardserve::FinalizeGatewayConfig(&config); !s.ok()) return Fail(s);
  return shardserve::RunGateway(config, SHARDSERVE_VERSION);
}
