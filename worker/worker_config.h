// The worker's configuration: one YAML file (`worker --config worker.yaml`) whose every field a
// command-line flag of the same name can override (`--kv-cache-tokens 8192` for
// `kv_cache_tokens`). Both go through SetWorkerConfigField, so a key means the same thing in
// either place and is checked the same way. See deploy/worker.yaml for a commented example.
//
// Pure data and parsing: no engine, no gRPC, so it is tested on its own.
#ifndef SHARDSERVE_WORKER_WORKER_CONFIG_H_
#define SHARDSERVE_WORKER_WORKER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardserve {

struct WorkerConfig {
  // GGUF file, HF model directory, or a Hugging Face repo id "org/name" found in the shared cache
  // (`cache_dir`, `revision`, `quantization`). Required. A value naming an existing file or
  // directory, starting with '/' or '.', or ending in ".gguf" is a path; otherwise a repo id.
  std::string model;
  // Name clients put in ChatRequest.model; "" derives it from `model` (ServedModelNameFromPath;
  // for a repo id, the repo id).
  std::string served_model_name;
  // The shared cache root (hub_sync's): the HF cache is its hub/ folder, quantized artifacts are
  // under shardserve/. "": $SHARDSERVE_CACHE, else ~/.cache/shardserve. Repo ids only.
  std::string cache_dir;
  // Branch, tag or commit of a repo id (resolved through the cache's refs/).
  std::string revision = "main";
  // "" serves the snapshot as it is; "int8", "int4", "nf4" serve hub_sync's artifact
  // $CACHE/shardserve/{org}--{name}/{commit}/{scheme}/. Repo ids only.
  std::string quantization;
  // host:port to listen on; port 0 picks a free port (printed as "listening on HOST:PORT").
  std::string address = "127.0.0.1:50061";
  // host:port of the plain-HTTP side: /metrics (Prometheus), /live and /ready (Kubernetes
  // probes); port 0 picks a free port (printed as "http listening on HOST:PORT"); "" serves no
  // HTTP. Several workers on one host need distinct ports (tests pass 127.0.0.1:0).
  std::string http_address = "127.0.0.1:9090";
  // CPU threads for the kernels; 0: one per core.
  int threads = 0;
  // Longest sequence (prompt + generated) in tokens; 0: the model's max_position_embeddings.
  int64_t context_length = 0;
  // KV cache size in tokens over all sequences; 0: 4 x context_length.
  int64_t kv_cache_tokens = 0;
  // Activation precision of the CPU matmuls: "q8" (llama.cpp's choice) or "f32".
  std::string activations = "q8";
  // KV cache element type: "f16" or "f32".
  std::string kv_dtype = "f16";
  // Sequences decoding at once.
  int max_running = 8;
  // Queued requests beyond which new ones get RESOURCE_EXHAUSTED.
  int max_waiting = 256;
  // max_tokens for requests that leave it 0; 0: up to the context length.
  int default_max_tokens = 0;
  // Most tokens one engine step runs (prefill chunk size).
  int max_step_tokens = 512;
  // On SIGINT/SIGTERM: how long running streams may go on before they are cancelled.
  double drain_seconds = 5.0;

  // Not a key: set by FinalizeWorkerConfig to what is loaded — `model` itself for a path, the
  // snapshot or artifact directory for a repo id.
  std::string model_path;
};

// The config keys, in the order the example file lists them.
const std::vector<std::string>& WorkerConfigKeys();
// One line on what `key` means (for --help); "" for an unknown key.
std::string WorkerConfigKeyHelp(absl::string_view key);

// Sets field `key` from its text form. `what` names the source in errors ("worker.yaml:3",
// "flag --threads"). INVALID_ARGUMENT naming `what`, the key and the reason for an unknown key
// or a value that does not parse or is out of range.
absl::Status SetWorkerConfigField(WorkerConfig* config, absl::string_view key,
                                  absl::string_view value, absl::string_view what);

// Parses a YAML mapping of keys to scalars on top of `config` (an empty document changes
// nothing). `what` names the file in errors, which give the line, the key and the reason.
// yaml-cpp's exceptions are caught here and nowhere else.
absl::Status ParseWorkerConfigYaml(absl::string_view yaml, absl::string_view what,
                                   WorkerConfig* config);
// Reads and parses `path` on top of `config`. NOT_FOUND when the file cannot be read.
absl::Status LoadWorkerConfigFile(const std::string& path, WorkerConfig* config);

// Checks what a single field cannot (model present), resolves `model` to model_path and fills
// served_model_name when empty. A repo id is looked up in the cache (cache_dir, else the
// environment's default; `getenv_fn` is injectable for tests): NOT_FOUND "repo X revision Y is
// not in the cache at DIR (run `shardserve pull X`)", or for a missing artifact "repo X revision
// Y (commit C) has no int4 artifact in the cache at DIR (run `shardserve pull X --quantize
// int4`)". INVALID_ARGUMENT for `quantization` or a non-default `revision` with a path, and for
// a malformed repo id or revision.
absl::Status FinalizeWorkerConfig(WorkerConfig* config,
                                  const char* (*getenv_fn)(const char*) = nullptr);

// The served name derived from a model path: a GGUF file's base name without ".gguf" and a
// trailing quantization tag ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"), a
// directory's name, or "org/name" for a Hugging Face cache snapshot
// (".../models--org--name/snapshots/<commit>").
std::string ServedModelNameFromPath(absl::string_view path);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WORKER_CONFIG_H_
