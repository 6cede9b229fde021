#include "gateway/gateway_config.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"
#include "common/yaml_config.h"
#include "yaml-cpp/yaml.h"

namespace shardserve {
namespace {

// A comma-separated list of worker addresses (flag form of `endpoints`).
absl::Status ParseEndpointList(absl::string_view what, absl::string_view key,
                               absl::string_view value, std::vector<std::string>* out) {
  std::vector<std::string> endpoints;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    part = absl::StripAsciiWhitespace(part);
    std::string address;
    RETURN_IF_ERROR(ParseConfigAddress(what, key, part, /*listen=*/false, &address));
    endpoints.push_back(std::move(address));
  }
  *out = std::move(endpoints);
  return absl::OkStatus();
}

absl::Status ParseSha256(absl::string_view what, absl::string_view key, absl::string_view value,
                         std::string* out) {
  std::string lower = absl::AsciiStrToLower(value);
  const bool hex = lower.size() == 64 && std::all_of(lower.begin(), lower.end(), [](char c) {
                     return absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f');
                   });
  if (!hex) {
    return ConfigFieldError(
        what, key, "is not a SHA-256 in hex (64 hex digits; `shardserve hash-key` prints it)");
  }
  *out = std::move(lower);
  return absl::OkStatus();
}

using Setter = std::function<absl::Status(GatewayConfig*, absl::string_view key,
                                          absl::string_view value, absl::string_view what)>;

Setter IntSetter(int GatewayConfig::*field, int64_t min) {
  return [field, min](GatewayConfig* c, absl::string_view k, absl::string_view v,
                      absl::string_view w) { return ParseConfigInt(w, k, v, min, &(c->*field)); };
}

Setter NumberSetter(double GatewayConfig::*field, bool positive) {
  return [field, positive](GatewayConfig* c, absl::string_view k, absl::string_view v,
                           absl::string_view w) {
    return ParseConfigNumber(w, k, v, positive, &(c->*field));
  };
}

Setter AddressSetter(std::string GatewayConfig::*field) {
  return [field](GatewayConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
    return ParseConfigAddress(w, k, v, /*listen=*/true, &(c->*field));
  };
}

const std::map<std::string, std::string>& Help() {
  static const auto* help = new std::map<std::string, std::string>{
      {"grpc_address",
       "host:port of the gRPC API (chat.v1, gateway.v1); port 0 picks one "
       "(default 127.0.0.1:50051)"},
      {"http_address",
       "host:port of the OpenAI-compatible HTTP API, /metrics, /live, /ready; "
       "port 0 picks one (default 127.0.0.1:8000)"},
      {"affinity_margin",
       "load (sequences) by which a conversation's preferred worker may exceed "
       "the least loaded before the least loaded wins (default 4)"},
      {"kv_weight", "load a completely full KV cache adds to a worker (default 4)"},
      {"max_attempts", "workers tried for a request before its first token (default 3)"},
      {"max_in_flight", "requests at once over all models; beyond: 429 (default 4096)"},
      {"request_timeout_seconds", "deadline for requests that set none (default 600)"},
      {"connect_timeout_seconds", "time a connection attempt to a worker is given (default 2)"},
      {"health_interval_seconds", "grpc.health.v1 Check of each worker (default 1)"},
      {"status_interval_seconds", "Worker.Status poll of each worker (default 0.5)"},
      {"dns_refresh_seconds", "re-resolution of models found by DNS (default 5)"},
      {"retry_after_seconds", "Retry-After sent with queue-full 429s (default 1)"},
      {"http_threads", "HTTP connections served at once (default 128)"},
      {"drain_seconds", "on SIGTERM, seconds running streams get to finish (default 10)"},
      {"default_max_tokens",
       "max_tokens for OpenAI requests that set none; 0 = the worker's default"},
      {"cors_allowed_origins",
       "origins allowed by CORS, comma-separated (\"*\" for any); empty: no CORS headers"},
      {"models",
       "model name -> workers: a list of {name, endpoints | dns, max_queued}; flag: "
       "--model NAME=HOST:PORT[,HOST:PORT...] or --model NAME=dns:HOST:PORT"},
      {"api_keys",
       "list of {sha256, tenant}; none: authentication off; flag: "
       "--api-key-sha256 HEX=TENANT"},
      {"tenants", "tenant -> {requests_per_second, request_burst, tokens_per_minute}"},
  };
  return *help;
}

const std::vector<std::pair<std::string, Setter>>& Setters() {
  static const auto* setters = new std::vector<std::pair<std::string, Setter>>{
      {"grpc_address", AddressSetter(&GatewayConfig::grpc_address)},
      {"http_address", AddressSetter(&GatewayConfig::http_address)},
      {"cors_allowed_origins",
       [](GatewayConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         std::vector<std::string> origins;
         for (absl::string_view origin : absl::StrSplit(v, ',', absl::SkipWhitespace())) {
           origin = absl::StripAsciiWhitespace(origin);
           if (absl::StrContains(origin, ' ')) {
             return ConfigFieldError(w, k, absl::StrCat("'", origin, "' is not an origin"));
           }
           origins.emplace_back(origin);
         }
         c->cors_allowed_origins = std::move(origins);
         return absl::OkStatus();
       }},
      {"affinity_margin",
       [](GatewayConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigNumber(w, k, v, /*positive=*/false, &c->router.affinity_margin);
       }},
      {"kv_weight",
       [](GatewayConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigNumber(w, k, v, /*positive=*/false, &c->router.kv_weight);
       }},
      {"max_attempts", IntSetter(&GatewayConfig::max_attempts, 1)},
      {"max_in_flight", IntSetter(&GatewayConfig::max_in_flight, 1)},
      {"request_timeout_seconds", NumberSetter(&GatewayConfig::request_timeout_seconds, true)},
      {"connect_timeout_seconds", NumberSetter(&GatewayConfig::connect_timeout_seconds, true)},
      {"health_interval_seconds", NumberSetter(&GatewayConfig::health_interval_seconds, true)},
      {"status_interval_seconds", NumberSetter(&GatewayConfig::status_interval_seconds, true)},
      {"dns_refresh_seconds", NumberSetter(&GatewayConfig::dns_refresh_seconds, true)},
      {"retry_after_seconds", NumberSetter(&GatewayConfig::retry_after_seconds, true)},
      {"http_threads", IntSetter(&GatewayConfig::http_threads, 1)},
      {"drain_seconds", NumberSetter(&GatewayConfig::drain_seconds, false)},
      {"default_max_tokens", IntSetter(&GatewayConfig::default_max_tokens, 0)},
  };
  return *setters;
}

// ---- YAML (yaml-cpp throws; ParseGatewayConfigYaml catches) ----

// The scalar text of `node` (named `key` at `where`); errors for a missing or nested value.
absl::Status ScalarOf(const YAML::Node& node, absl::string_view where, absl::string_view key,
                      std::string* out) {
  if (!node.IsScalar()) {
    return ConfigFieldError(where, key, node.IsNull() ? "has no value" : "value is not a scalar");
  }
  *out = node.Scalar();
  return absl::OkStatus();
}

absl::Status ParseModelYaml(const YAML::Node& node, absl::string_view what, int index,
                            ModelRoute* model) {
  const std::string prefix = absl::StrCat("models[", index, "]");
  if (!node.IsMap()) {
    return ConfigFieldError(YamlWhere(what, node), prefix,
                            "must be a mapping with name and endpoints or dns");
  }
  for (const auto& entry : node) {
    const std::string where = YamlWhere(what, entry.first);
    const std::string name = entry.first.Scalar();
    const std::string key = absl::StrCat(prefix, ".", name);
    if (name == "endpoints") {
      model->endpoints.clear();
      if (entry.second.IsSequence()) {
        for (size_t i = 0; i < entry.second.size(); ++i) {
          const YAML::Node& item = entry.second[i];
          const std::string item_key = absl::StrCat(key, "[", i, "]");
          std::string text, address;
          RETURN_IF_ERROR(ScalarOf(item, YamlWhere(what, item), item_key, &text));
          RETURN_IF_ERROR(ParseConfigAddress(YamlWhere(what, item), item_key, text,
                                             /*listen=*/false, &address));
          model->endpoints.push_back(std::move(address));
        }
      } else {
        std::string text;
        RETURN_IF_ERROR(ScalarOf(entry.second, where, key, &text));
        RETURN_IF_ERROR(ParseEndpointList(where, key, text, &model->endpoints));
      }
      continue;
    }
    std::string value;
    RETURN_IF_ERROR(ScalarOf(entry.second, where, key, &value));
    if (name == "name") {
      if (absl::StripAsciiWhitespace(value).empty())
        return ConfigFieldError(where, key, "is empty");
      model->name = value;
    } else if (name == "dns") {
      RETURN_IF_ERROR(ParseConfigAddress(where, key, value, /*listen=*/false, &model->dns));
    } else if (name == "max_queued") {
      RETURN_IF_ERROR(ParseConfigInt(where, key, value, 1, &model->max_queued));
    } else {
      return ConfigFieldError(where, key, "unknown key (known: name, endpoints, dns, max_queued)");
    }
  }
  if (model->name.empty())
    return ConfigFieldError(YamlWhere(what, node), prefix + ".name", "is missing");
  return absl::OkStatus();
}

absl::Status ParseModelsYaml(const YAML::Node& node, absl::string_view what,
                             std::vector<ModelRoute>* models) {
  if (!node.IsSequence()) {
    return ConfigFieldError(YamlWhere(what, node), "models",
                            "must be a list of {name, endpoints | dns, max_queued}");
  }
  std::vector<ModelRoute> parsed;
  for (size_t i = 0; i < node.size(); ++i) {
    ModelRoute model;
    RETURN_IF_ERROR(ParseModelYaml(node[i], what, static_cast<int>(i), &model));
    parsed.push_back(std::move(model));
  }
  *models = std::move(parsed);
  return absl::OkStatus();
}

absl::Status ParseApiKeysYaml(const YAML::Node& node, absl::string_view what,
                              std::vector<ApiKeyEntry>* keys) {
  if (!node.IsSequence()) {
    return ConfigFieldError(YamlWhere(what, node), "api_keys",
                            "must be a list of {sha256, tenant}");
  }
  std::vector<ApiKeyEntry> parsed;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node& item = node[i];
    const std::string prefix = absl::StrCat("api_keys[", i, "]");
    if (!item.IsMap()) {
      return ConfigFieldError(YamlWhere(what, item), prefix, "must be a mapping {sha256, tenant}");
    }
    ApiKeyEntry entry;
    for (const auto& field : item) {
      const std::string where = YamlWhere(what, field.first);
      const std::string name = field.first.Scalar();
      const std::string key = absl::StrCat(prefix, ".", name);
      std::string value;
      RETURN_IF_ERROR(ScalarOf(field.second, where, key, &value));
      if (name == "sha256") {
        RETURN_IF_ERROR(ParseSha256(where, key, value, &entry.sha256_hex));
      } else if (name == "tenant") {
        if (absl::StripAsciiWhitespace(value).empty())
          return ConfigFieldError(where, key, "is empty");
        entry.tenant = value;
      } else {
        return ConfigFieldError(where, key, "unknown key (known: sha256, tenant)");
      }
    }
    if (entry.sha256_hex.empty()) {
      return ConfigFieldError(YamlWhere(what, item), prefix + ".sha256", "is missing");
    }
    if (entry.tenant.empty()) {
      return ConfigFieldError(YamlWhere(what, item), prefix + ".tenant", "is missing");
    }
    parsed.push_back(std::move(entry));
  }
  *keys = std::move(parsed);
  return absl::OkStatus();
}

absl::Status ParseTenantsYaml(const YAML::Node& node, absl::string_view what,
                              std::map<std::string, TenantQuota>* tenants) {
  if (!node.IsMap()) {
    return ConfigFieldError(YamlWhere(what, node), "tenants",
                            "must be a mapping of tenant -> {requests_per_second, request_burst, "
                            "tokens_per_minute}");
  }
  std::map<std::string, TenantQuota> parsed;
  for (const auto& entry : node) {
    const std::string tenant = entry.first.Scalar();
    const std::string prefix = absl::StrCat("tenants.", tenant);
    if (!entry.second.IsMap()) {
      return ConfigFieldError(YamlWhere(what, entry.first), prefix,
                              "must be a mapping {requests_per_second, request_burst, "
                              "tokens_per_minute}");
    }
    TenantQuota quota;
    for (const auto& field : entry.second) {
      const std::string where = YamlWhere(what, field.first);
      const std::string name = field.first.Scalar();
      const std::string key = absl::StrCat(prefix, ".", name);
      std::string value;
      RETURN_IF_ERROR(ScalarOf(field.second, where, key, &value));
      double* target = nullptr;
      if (name == "requests_per_second") {
        target = &quota.requests_per_second;
      } else if (name == "request_burst") {
        target = &quota.request_burst;
      } else if (name == "tokens_per_minute") {
        target = &quota.tokens_per_minute;
      } else {
        return ConfigFieldError(
            where, key,
            "unknown key (known: requests_per_second, request_burst, tokens_per_minute)");
      }
      RETURN_IF_ERROR(ParseConfigNumber(where, key, value, /*positive=*/false, target));
    }
    parsed[tenant] = quota;
  }
  *tenants = std::move(parsed);
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& GatewayConfigKeys() {
  static const auto* keys = [] {
    auto* k = new std::vector<std::string>;
    for (const auto& [key, setter] : Setters()) k->push_back(key);
    return k;
  }();
  return *keys;
}

std::string GatewayConfigKeyHelp(absl::string_view key) {
  auto it = Help().find(std::string(key));
  return it == Help().end() ? "" : it->second;
}

absl::Status SetGatewayConfigField(GatewayConfig* config, absl::string_view key,
                                   absl::string_view value, absl::string_view what) {
  for (const auto& [name, setter] : Setters()) {
    if (name == key) return setter(config, key, absl::StripAsciiWhitespace(value), what);
  }
  std::string known;
  for (const auto& [name, setter] : Setters()) {
    absl::StrAppend(&known, known.empty() ? "" : ", ", name);
  }
  return ConfigFieldError(
      what, key, absl::StrCat("unknown key (known: ", known, ", models, api_keys, tenants)"));
}

absl::Status AddModelFlag(GatewayConfig* config, absl::string_view text) {
  const size_t eq = text.rfind('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flag --model: '", text, "' is not NAME=HOST:PORT[,HOST:PORT...] or NAME=dns:HOST:PORT"));
  }
  ModelRoute model;
  model.name = std::string(absl::StripAsciiWhitespace(text.substr(0, eq)));
  absl::string_view target = absl::StripAsciiWhitespace(text.substr(eq + 1));
  const std::string what = absl::StrCat("flag --model ", model.name);
  if (model.name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("flag --model: '", text, "' has no name"));
  }
  if (absl::ConsumePrefix(&target, "dns:")) {
    RETURN_IF_ERROR(ParseConfigAddress(what, "dns", target, /*listen=*/false, &model.dns));
  } else {
    RETURN_IF_ERROR(ParseEndpointList(what, "endpoints", target, &model.endpoints));
  }
  for (ModelRoute& existing : config->models) {
    if (existing.name == model.name) {
      model.max_queued = existing.max_queued;  // the file's bound stays
      existing = std::move(model);
      return absl::OkStatus();
    }
  }
  config->models.push_back(std::move(model));
  return absl::OkStatus();
}

absl::Status AddApiKeyFlag(GatewayConfig* config, absl::string_view text) {
  const size_t eq = text.find('=');
  if (eq == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "flag --api-key-sha256: expected HEX=TENANT (the key's SHA-256 in hex, then its tenant)");
  }
  ApiKeyEntry entry;
  RETURN_IF_ERROR(ParseSha256("flag --api-key-sha256", "sha256",
                              absl::StripAsciiWhitespace(text.substr(0, eq)), &entry.sha256_hex));
  entry.tenant = std::string(absl::StripAsciiWhitespace(text.substr(eq + 1)));
  if (entry.tenant.empty()) {
    return absl::InvalidArgumentError("flag --api-key-sha256: the tenant after '=' is empty");
  }
  config->api_keys.push_back(std::move(entry));
  return absl::OkStatus();
}

absl::Status ParseGatewayConfigYaml(absl::string_view yaml, absl::string_view what,
                                    GatewayConfig* config) {
  // Built in a copy so that a failed parse leaves `config` as it was.
  GatewayConfig parsed = *config;
  RETURN_IF_ERROR(ForEachYamlKey(
      yaml, what,
      [&](const std::string& key, const YAML::Node& value,
          const std::string& where) -> absl::Status {
        if (key == "models") return ParseModelsYaml(value, what, &parsed.models);
        if (key == "api_keys") {
          if (value.IsNull()) {
            parsed.api_keys.clear();
            return absl::OkStatus();
          }
          return ParseApiKeysYaml(value, what, &parsed.api_keys);
        }
        if (key == "tenants") {
          if (value.IsNull()) {
            parsed.tenants.clear();
            return absl::OkStatus();
          }
          return ParseTenantsYaml(value, what, &parsed.tenants);
        }
        if (key == "cors_allowed_origins" && value.IsSequence()) {
          std::vector<std::string> origins;
          for (size_t i = 0; i < value.size(); ++i) {
            std::string origin;
            RETURN_IF_ERROR(ScalarOf(value[i], YamlWhere(what, value[i]),
                                     absl::StrCat(key, "[", i, "]"), &origin));
            origins.push_back(std::move(origin));
          }
          return SetGatewayConfigField(&parsed, key, absl::StrJoin(origins, ","), where);
        }
        std::string text;
        RETURN_IF_ERROR(ScalarOf(value, where, key, &text));
        return SetGatewayConfigField(&parsed, key, text, where);
      }));
  *config = std::move(parsed);
  return absl::OkStatus();
}

absl::Status LoadGatewayConfigFile(const std::string& path, GatewayConfig* config) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseGatewayConfigYaml(text, path, config);
}

absl::Status FinalizeGatewayConfig(GatewayConfig* config) {
  if (config->models.empty()) {
    return absl::InvalidArgumentError(
        "key 'models': no model configured (add `models:` to the config file, or "
        "--model NAME=HOST:PORT)");
  }
  std::set<std::string> names;
  for (size_t i = 0; i < config->models.size(); ++i) {
    const ModelRoute& model = config->models[i];
    const std::string key = absl::StrCat("models[", i, "] (", model.name, ")");
    if (model.name.empty()) return ConfigFieldError("config", key, "has no name");
    if (!names.insert(model.name).second) {
      return ConfigFieldError("config", key, "the model name is configured twice");
    }
    if (model.endpoints.empty() == model.dns.empty()) {
      return ConfigFieldError("config", key,
                              model.dns.empty() ? "needs endpoints (a host:port list) or dns"
                                                : "has both endpoints and dns; set one");
    }
    std::string checked;
    if (!model.dns.empty()) {
      RETURN_IF_ERROR(
          ParseConfigAddress("config", key + ".dns", model.dns, /*listen=*/false, &checked));
    }
    std::set<std::string> seen;
    for (const std::string& endpoint : model.endpoints) {
      RETURN_IF_ERROR(
          ParseConfigAddress("config", key + ".endpoints", endpoint, /*listen=*/false, &checked));
      if (!seen.insert(endpoint).second) {
        return ConfigFieldError("config", key,
                                absl::StrCat("endpoint ", endpoint, " is listed twice"));
      }
    }
    if (model.max_queued < 1)
      return ConfigFieldError("config", key, "max_queued must be at least 1");
  }

  std::set<std::string> hashes, key_tenants;
  for (const ApiKeyEntry& entry : config->api_keys) {
    if (!hashes.insert(entry.sha256_hex).second) {
      return ConfigFieldError(
          "config", "api_keys",
          absl::StrCat("the key hash ", entry.sha256_hex.substr(0, 12), "... is listed twice"));
    }
    key_tenants.insert(entry.tenant);
  }
  for (const auto& [tenant, quota] : config->tenants) {
    const std::string key = absl::StrCat("tenants.", tenant);
    if (config->api_keys.empty() && tenant != "default") {
      return ConfigFieldError("config", key,
                              "authentication is off (no api_keys), so every caller is tenant "
                              "'default' and this quota would never apply");
    }
    if (!config->api_keys.empty() && !key_tenants.contains(tenant)) {
      return ConfigFieldError("config", key, "has a quota but no API key maps to it");
    }
    if (quota.requests_per_second < 0 || quota.request_burst < 0 || quota.tokens_per_minute < 0) {
      return ConfigFieldError("config", key, "a quota is negative");
    }
  }

  std::string checked;
  RETURN_IF_ERROR(ParseConfigAddress("config", "grpc_address", config->grpc_address,
                                     /*listen=*/true, &checked));
  RETURN_IF_ERROR(ParseConfigAddress("config", "http_address", config->http_address,
                                     /*listen=*/true, &checked));
  if (config->grpc_address == config->http_address && !absl::EndsWith(config->grpc_address, ":0")) {
    return ConfigFieldError(
        "config", "http_address",
        absl::StrCat("is the same as grpc_address (", config->grpc_address, ")"));
  }
  return absl::OkStatus();
}

}  // namespace shardserve
