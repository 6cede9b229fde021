#include "hub_sync/hub_sync_config.h"

#include <cstdlib>
#include <functional>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/mapped_file.h"
#include "common/status_macros.h"
#include "common/yaml_config.h"
#include "hub_sync/cache.h"
#include "hub_sync/repo.h"
#include "yaml-cpp/yaml.h"

namespace shardserve::hub {
namespace {

using Setter = std::function<absl::Status(HubSyncConfig*, absl::string_view key,
                                          absl::string_view value, absl::string_view what)>;

Setter IntSetter(int HubSyncConfig::*field, int64_t min) {
  return [field, min](HubSyncConfig* c, absl::string_view k, absl::string_view v,
                      absl::string_view w) { return ParseConfigInt(w, k, v, min, &(c->*field)); };
}

Setter NumberSetter(double HubSyncConfig::*field) {
  return [field](HubSyncConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    return ParseConfigNumber(w, k, v, /*positive=*/true, &(c->*field));
  };
}

Setter BoolSetter(bool HubSyncConfig::*field) {
  return [field](HubSyncConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    return ParseConfigBool(w, k, v, &(c->*field));
  };
}

Setter AddressSetter(std::string HubSyncConfig::*field) {
  return [field](HubSyncConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    return ParseConfigAddress(w, k, v, /*listen=*/true, &(c->*field));
  };
}

Setter PathSetter(std::string HubSyncConfig::*field) {
  return [field](HubSyncConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    if (absl::StripAsciiWhitespace(v).empty()) return ConfigFieldError(w, k, "is empty");
    c->*field = std::string(v);
    return absl::OkStatus();
  };
}

// Glob patterns, comma-separated in a flag; each checked for what fnmatch cannot take.
Setter PatternsSetter(std::vector<std::string> HubSyncConfig::*field) {
  return [field](HubSyncConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    std::vector<std::string> patterns;
    for (absl::string_view pattern : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
      pattern = absl::StripAsciiWhitespace(pattern);
      for (char ch : pattern) {
        if (static_cast<unsigned char>(ch) < 0x20) {
          return ConfigFieldError(w, k, "a pattern contains a control character");
        }
      }
      patterns.emplace_back(pattern);
    }
    c->*field = std::move(patterns);
    return absl::OkStatus();
  };
}

absl::Status SetEndpoint(HubSyncConfig* c, absl::string_view k, absl::string_view v,
                         absl::string_view w) {
  absl::string_view endpoint = absl::StripAsciiWhitespace(v);
  if (!absl::StartsWith(endpoint, "http://") && !absl::StartsWith(endpoint, "https://")) {
    return ConfigFieldError(w, k, absl::StrCat("'", endpoint, "' is not an http(s):// URL"));
  }
  while (absl::ConsumeSuffix(&endpoint, "/")) {
  }
  c->endpoint = std::string(endpoint);
  return absl::OkStatus();
}

const std::vector<std::pair<std::string, Setter>>& Setters() {
  static const auto* setters = new std::vector<std::pair<std::string, Setter>>{
      {"cache_dir", PathSetter(&HubSyncConfig::cache_dir)},
      {"endpoint", SetEndpoint},
      {"token_file", PathSetter(&HubSyncConfig::token_file)},
      {"grpc_address", AddressSetter(&HubSyncConfig::grpc_address)},
      {"http_address", AddressSetter(&HubSyncConfig::http_address)},
      {"connections", IntSetter(&HubSyncConfig::connections, 1)},
      {"max_jobs", IntSetter(&HubSyncConfig::max_jobs, 1)},
      {"max_queued_jobs", IntSetter(&HubSyncConfig::max_queued_jobs, 0)},
      {"allow_patterns", PatternsSetter(&HubSyncConfig::allow_patterns)},
      {"ignore_patterns", PatternsSetter(&HubSyncConfig::ignore_patterns)},
      {"retry_max_attempts", IntSetter(&HubSyncConfig::retry_max_attempts, 1)},
      {"retry_initial_backoff_seconds",
       NumberSetter(&HubSyncConfig::retry_initial_backoff_seconds)},
      {"retry_max_backoff_seconds", NumberSetter(&HubSyncConfig::retry_max_backoff_seconds)},
      {"max_retry_after_seconds", NumberSetter(&HubSyncConfig::max_retry_after_seconds)},
      {"pull_through", BoolSetter(&HubSyncConfig::pull_through)},
      {"nf4_double_quant", BoolSetter(&HubSyncConfig::nf4_double_quant)},
      {"keep_embeddings_bf16", BoolSetter(&HubSyncConfig::keep_embeddings_bf16)},
      {"keep_lm_head_bf16", BoolSetter(&HubSyncConfig::keep_lm_head_bf16)},
  };
  return *setters;
}

const std::map<std::string, std::string>& Help() {
  static const auto* help = new std::map<std::string, std::string>{
      {"cache_dir",
       "the shared cache root; the HF-layout cache is its hub/ folder (default "
       "$SHARDSERVE_CACHE, else ~/.cache/shardserve)"},
      {"endpoint", "the upstream Hub (default $HF_ENDPOINT, else https://huggingface.co)"},
      {"token_file", "file holding the Hub token (default: $HF_TOKEN)"},
      {"grpc_address", "host:port of the HubSync gRPC API (default 127.0.0.1:50071)"},
      {"http_address",
       "host:port of the Hub mirror, /metrics, /live, /ready (default 127.0.0.1:8001)"},
      {"connections", "parallel transfers: files, and ranges of large files (default 8)"},
      {"max_jobs", "sync jobs running at once (default 2)"},
      {"max_queued_jobs", "sync jobs waiting for a slot; beyond: RESOURCE_EXHAUSTED (default 16)"},
      {"allow_patterns",
       "globs of files to fetch, comma-separated (default: safetensors, JSON, tokenizer files)"},
      {"ignore_patterns", "globs of files to skip, comma-separated"},
      {"retry_max_attempts", "attempts per request on 5xx, 429 and connection errors (default 5)"},
      {"retry_initial_backoff_seconds", "first retry delay, doubled each time (default 0.5)"},
      {"retry_max_backoff_seconds", "longest retry delay (default 30)"},
      {"max_retry_after_seconds", "longest 429 Retry-After waited for (default 300)"},
      {"pull_through", "the mirror fetches missing files from the endpoint (default false)"},
      {"nf4_double_quant", "nf4 artifacts quantize their absmax too (default false)"},
      {"keep_embeddings_bf16", "quantized artifacts keep the embeddings in bf16 (default true)"},
      {"keep_lm_head_bf16", "quantized artifacts keep the LM head in bf16 (default true)"},
  };
  return *help;
}

}  // namespace

const std::vector<std::string>& HubSyncConfigKeys() {
  static const auto* keys = [] {
    auto* list = new std::vector<std::string>;
    for (const auto& [key, setter] : Setters()) list->push_back(key);
    return list;
  }();
  return *keys;
}

std::string HubSyncConfigKeyHelp(absl::string_view key) {
  auto it = Help().find(std::string(key));
  return it == Help().end() ? "" : it->second;
}

absl::Status SetHubSyncConfigField(HubSyncConfig* config, absl::string_view key,
                                   absl::string_view value, absl::string_view what) {
  for (const auto& [name, setter] : Setters()) {
    if (name == key) return setter(config, key, value, what);
  }
  return ConfigFieldError(what, key, "unknown key");
}

absl::Status ParseHubSyncConfigYaml(absl::string_view yaml, absl::string_view what,
                                    HubSyncConfig* config) {
  HubSyncConfig parsed = *config;
  RETURN_IF_ERROR(ForEachYamlKey(
      yaml, what,
      [&](const std::string& key, const YAML::Node& value,
          const std::string& where) -> absl::Status {
        if (value.IsSequence()) {
          if (key != "allow_patterns" && key != "ignore_patterns") {
            return ConfigFieldError(where, key, "value is a list; a single value is expected");
          }
          std::string joined;
          for (size_t i = 0; i < value.size(); ++i) {
            if (!value[i].IsScalar()) {
              return ConfigFieldError(YamlWhere(what, value[i]), absl::StrCat(key, "[", i, "]"),
                                      "is not a string");
            }
            if (value[i].Scalar().find(',') != std::string::npos) {
              return ConfigFieldError(YamlWhere(what, value[i]), absl::StrCat(key, "[", i, "]"),
                                      "a pattern may not contain ','");
            }
            absl::StrAppend(&joined, i ? "," : "", value[i].Scalar());
          }
          return SetHubSyncConfigField(&parsed, key, joined, where);
        }
        if (!value.IsScalar()) {
          return ConfigFieldError(where, key, value.IsNull() ? "has no value" : "is not a scalar");
        }
        return SetHubSyncConfigField(&parsed, key, value.Scalar(), where);
      }));
  *config = std::move(parsed);
  return absl::OkStatus();
}

absl::Status LoadHubSyncConfigFile(const std::string& path, HubSyncConfig* config) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseHubSyncConfigYaml(text, path, config);
}

absl::Status FinalizeHubSyncConfig(HubSyncConfig* config, const char* (*getenv_fn)(const char*)) {
  const auto env = [getenv_fn](const char* name) -> std::string {
    const char* value = getenv_fn != nullptr ? getenv_fn(name) : std::getenv(name);
    return value == nullptr ? "" : value;
  };
  if (config->cache_dir.empty()) {
    ASSIGN_OR_RETURN(config->cache_dir, DefaultCacheRoot(getenv_fn));
  }
  if (config->endpoint.empty()) {
    const std::string endpoint = env("HF_ENDPOINT");
    RETURN_IF_ERROR(SetEndpoint(config, "endpoint",
                                endpoint.empty() ? "https://huggingface.co" : endpoint,
                                "environment HF_ENDPOINT"));
  }
  if (!config->token_file.empty()) {
    absl::StatusOr<std::string> token = ReadFileToString(config->token_file);
    if (!token.ok()) {
      // The message names the file, never its content.
      return ConfigFieldError("config", "token_file",
                              absl::StrCat("cannot read ", config->token_file));
    }
    config->token = std::string(absl::StripAsciiWhitespace(*token));
  } else {
    config->token = env("HF_TOKEN");
    if (config->token.empty()) config->token = env("HUGGING_FACE_HUB_TOKEN");
  }
  for (char ch : config->token) {
    if (static_cast<unsigned char>(ch) < 0x21 || static_cast<unsigned char>(ch) > 0x7e) {
      return absl::InvalidArgumentError(
          "the Hub token contains a space or a non-printable character (check HF_TOKEN or "
          "token_file)");
    }
  }
  if (config->retry_max_backoff_seconds < config->retry_initial_backoff_seconds) {
    return ConfigFieldError("config", "retry_max_backoff_seconds",
                            "is smaller than retry_initial_backoff_seconds");
  }
  return absl::OkStatus();
}

}  // namespace shardserve::hub
