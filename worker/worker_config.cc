#include "worker/worker_config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
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
#include "hub_sync/cache.h"
#include "hub_sync/repo.h"
#include "yaml-cpp/yaml.h"

namespace shardserve {
namespace {

absl::Status ParseString(absl::string_view what, absl::string_view key, absl::string_view value,
                         std::string* out) {
  if (value.empty()) return ConfigFieldError(what, key, "is empty");
  *out = std::string(value);
  return absl::OkStatus();
}

using Setter = std::function<absl::Status(WorkerConfig*, absl::string_view key,
                                          absl::string_view value, absl::string_view what)>;

const std::map<std::string, std::string>& Help() {
  static const auto* help = new std::map<std::string, std::string>{
      {"model",
       "GGUF file, HF model directory, or a repo id org/name in the shared cache (required)"},
      {"served_model_name",
       "name clients use in ChatRequest.model (default: the repo id, or from the model path)"},
      {"cache_dir",
       "shared cache root for repo ids (default $SHARDSERVE_CACHE, else ~/.cache/shardserve)"},
      {"revision", "branch, tag or commit of a repo id (default main)"},
      {"quantization",
       "serve a repo id's hub_sync artifact: int8, int4 or nf4 (default: the snapshot as is)"},
      {"address", "host:port to listen on; port 0 picks a free port (default 127.0.0.1:50061)"},
      {"http_address",
       "host:port for /metrics, /live and /ready; port 0 picks a free port; \"\" disables "
       "(default 127.0.0.1:9090)"},
      {"threads", "CPU threads; 0 = one per core"},
      {"context_length", "longest sequence in tokens; 0 = the model's maximum"},
      {"kv_cache_tokens", "KV cache size in tokens; 0 = 4 x context_length"},
      {"activations", "matmul activations: q8 (default) or f32"},
      {"kv_dtype", "KV cache type: f16 (default) or f32"},
      {"max_running", "sequences decoding at once (default 8)"},
      {"max_waiting", "queued requests before RESOURCE_EXHAUSTED (default 256)"},
      {"default_max_tokens", "max_tokens for requests that leave it 0; 0 = up to the context"},
      {"max_step_tokens", "most tokens per engine step / prefill chunk (default 512)"},
      {"drain_seconds",
       "on SIGINT/SIGTERM, seconds streams may finish before being cancelled (default 5)"},
  };
  return *help;
}

const std::vector<std::pair<std::string, Setter>>& Setters() {
  static const auto* setters = new std::vector<std::pair<std::string, Setter>>{
      {"model", [](WorkerConfig* c, absl::string_view k, absl::string_view v,
                   absl::string_view w) { return ParseString(w, k, v, &c->model); }},
      {"served_model_name",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseString(w, k, v, &c->served_model_name);
       }},
      {"cache_dir", [](WorkerConfig* c, absl::string_view k, absl::string_view v,
                       absl::string_view w) { return ParseString(w, k, v, &c->cache_dir); }},
      {"revision",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         RETURN_IF_ERROR(ParseString(w, k, v, &c->revision));
         absl::Status valid = hub::ValidateRevision(c->revision);
         if (!valid.ok()) return ConfigFieldError(w, k, valid.message());
         return absl::OkStatus();
       }},
      {"quantization",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         if (v.empty() || absl::AsciiStrToLower(v) == "none") {
           c->quantization.clear();
           return absl::OkStatus();
         }
         return ParseConfigChoice(w, k, v, {"int8", "int4", "nf4"}, &c->quantization);
       }},
      {"address",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigAddress(w, k, v, /*listen=*/true, &c->address);
       }},
      {"http_address",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         if (v.empty()) {  // no HTTP side
           c->http_address.clear();
           return absl::OkStatus();
         }
         return ParseConfigAddress(w, k, v, /*listen=*/true, &c->http_address);
       }},
      {"threads", [](WorkerConfig* c, absl::string_view k, absl::string_view v,
                     absl::string_view w) { return ParseConfigInt(w, k, v, 0, &c->threads); }},
      {"context_length",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 0, &c->context_length);
       }},
      {"kv_cache_tokens",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 0, &c->kv_cache_tokens);
       }},
      {"activations",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigChoice(w, k, v, {"q8", "f32"}, &c->activations);
       }},
      {"kv_dtype",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigChoice(w, k, v, {"f16", "f32"}, &c->kv_dtype);
       }},
      {"max_running",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 1, &c->max_running);
       }},
      {"max_waiting",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 0, &c->max_waiting);
       }},
      {"default_max_tokens",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 0, &c->default_max_tokens);
       }},
      {"max_step_tokens",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigInt(w, k, v, 1, &c->max_step_tokens);
       }},
      {"drain_seconds",
       [](WorkerConfig* c, absl::string_view k, absl::string_view v, absl::string_view w) {
         return ParseConfigNumber(w, k, v, /*positive=*/false, &c->drain_seconds);
       }},
  };
  return *setters;
}

}  // namespace

const std::vector<std::string>& WorkerConfigKeys() {
  static const auto* keys = [] {
    auto* k = new std::vector<std::string>;
    for (const auto& [key, setter] : Setters()) k->push_back(key);
    return k;
  }();
  return *keys;
}

std::string WorkerConfigKeyHelp(absl::string_view key) {
  auto it = Help().find(std::string(key));
  return it == Help().end() ? "" : it->second;
}

absl::Status SetWorkerConfigField(WorkerConfig* config, absl::string_view key,
                                  absl::string_view value, absl::string_view what) {
  for (const auto& [name, setter] : Setters()) {
    if (name == key) return setter(config, key, absl::StripAsciiWhitespace(value), what);
  }
  std::string known;
  for (const auto& [name, setter] : Setters())
    absl::StrAppend(&known, known.empty() ? "" : ", ", name);
  return ConfigFieldError(what, key, absl::StrCat("unknown key (known: ", known, ")"));
}

absl::Status ParseWorkerConfigYaml(absl::string_view yaml, absl::string_view what,
                                   WorkerConfig* config) {
  return ForEachYamlKey(yaml, what,
                        [config](const std::string& key, const YAML::Node& value,
                                 const std::string& where) -> absl::Status {
                          if (!value.IsScalar()) {
                            return ConfigFieldError(
                                where, key,
                                value.IsNull() ? "has no value" : "value is not a scalar");
                          }
                          return SetWorkerConfigField(config, key, value.Scalar(), where);
                        });
}

absl::Status LoadWorkerConfigFile(const std::string& path, WorkerConfig* config) {
  ASSIGN_OR_RETURN(std::string text, ReadConfigFile(path));
  return ParseWorkerConfigYaml(text, path, config);
}

namespace {

// A value that names an existing file or directory, starts with '/' or '.', or ends in .gguf is
// a path; anything else that parses as "org/name" is a repo id.
bool LooksLikePath(const std::string& model) {
  std::error_code ec;
  if (std::filesystem::exists(model, ec)) return true;
  return absl::StartsWith(model, "/") || absl::StartsWith(model, ".") ||
         absl::EndsWith(absl::AsciiStrToLower(model), ".gguf");
}

absl::Status ResolveRepoModel(WorkerConfig* config, const hub::RepoId& repo,
                              const char* (*getenv_fn)(const char*)) {
  if (config->cache_dir.empty()) {
    ASSIGN_OR_RETURN(config->cache_dir, hub::DefaultCacheRoot(getenv_fn));
  }
  const std::string id = repo.ToString();
  const std::string pull =
      config->revision == "main" ? id : absl::StrCat(id, "@", config->revision);
  auto not_cached = [&]() {
    return absl::NotFoundError(absl::StrCat("repo ", id, " revision ", config->revision,
                                            " is not in the cache at ", config->cache_dir,
                                            " (run `shardserve pull ", pull, "`)"));
  };
  // Reading only: a missing cache is not created here.
  std::error_code ec;
  if (!std::filesystem::is_directory(std::filesystem::path(config->cache_dir) / "hub", ec)) {
    return not_cached();
  }
  ASSIGN_OR_RETURN(hub::HubCache cache, hub::HubCache::Open(config->cache_dir));
  absl::StatusOr<std::string> commit = cache.ResolveRevision(repo, config->revision);
  if (absl::IsNotFound(commit.status())) return not_cached();
  if (!commit.ok()) return commit.status();
  if (config->quantization.empty()) {
    config->model_path = cache.SnapshotDir(repo, *commit);
    if (!std::filesystem::is_directory(config->model_path, ec)) return not_cached();
  } else {
    config->model_path = cache.ArtifactDir(repo, *commit, config->quantization);
    // An artifact without its manifest (written last) does not exist.
    if (!std::filesystem::exists(std::filesystem::path(config->model_path) / "manifest.json", ec)) {
      return absl::NotFoundError(absl::StrCat(
          "repo ", id, " revision ", config->revision, " (commit ", *commit, ") has no ",
          config->quantization, " artifact in the cache at ", config->cache_dir,
          " (run `shardserve pull ", pull, " --quantize ", config->quantization, "`)"));
    }
  }
  if (config->served_model_name.empty()) config->served_model_name = id;
  return absl::OkStatus();
}

}  // namespace

absl::Status FinalizeWorkerConfig(WorkerConfig* config, const char* (*getenv_fn)(const char*)) {
  if (config->model.empty()) {
    return absl::InvalidArgumentError(
        "key 'model': required (a GGUF file, an HF model directory or a repo id org/name in the "
        "cache; --model or the config file)");
  }
  if (!LooksLikePath(config->model)) {
    absl::StatusOr<hub::RepoId> repo = hub::ParseRepoId(config->model);
    if (repo.ok()) return ResolveRepoModel(config, *repo, getenv_fn);
    if (absl::StrContains(config->model, '/') &&
        std::count(config->model.begin(), config->model.end(), '/') == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("key 'model': '", config->model,
                       "' is neither a file nor a valid repo id: ", repo.status().message()));
    }
  }
  if (!config->quantization.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key 'quantization': applies to a repo id in the cache, but model '",
                     config->model, "' is a path (point model at the artifact directory instead)"));
  }
  if (config->revision != "main") {
    return absl::InvalidArgumentError(
        absl::StrCat("key 'revision': applies to a repo id in the cache, but model '",
                     config->model, "' is a path"));
  }
  config->model_path = config->model;
  if (config->served_model_name.empty()) {
    config->served_model_name = ServedModelNameFromPath(config->model);
  }
  return absl::OkStatus();
}

std::string ServedModelNameFromPath(absl::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  // Hugging Face cache: .../models--org--name/snapshots/<commit>
  const size_t snap = path.rfind("/snapshots/");
  if (snap != absl::string_view::npos) {
    absl::string_view repo = path.substr(0, snap);
    repo = repo.substr(repo.rfind('/') + 1);  // npos + 1 == 0
    if (absl::ConsumePrefix(&repo, "models--")) {
      std::vector<std::string> parts = absl::StrSplit(repo, "--");
      return absl::StrJoin(parts, "/");
    }
  }
  absl::string_view base = path.substr(path.rfind('/') + 1);
  if (absl::ConsumeSuffix(&base, ".gguf") || absl::ConsumeSuffix(&base, ".GGUF")) {
    // A trailing quantization tag after '.' or '-': Q4_1, Q4_K_M, IQ2_XS, F16, BF16, F32.
    const size_t cut = base.find_last_of(".-");
    if (cut != absl::string_view::npos && cut > 0) {
      std::string tag = absl::AsciiStrToUpper(base.substr(cut + 1));
      absl::string_view t = tag;
      absl::ConsumePrefix(&t, "I");
      const bool quant = (t.size() >= 2 && t[0] == 'Q' && absl::ascii_isdigit(t[1])) ||
                         tag == "F16" || tag == "BF16" || tag == "F32";
      if (quant) base = base.substr(0, cut);
    }
  }
  return std::string(base);
}

}  // namespace shardserve
