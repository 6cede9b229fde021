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
  // GGUF file or HF model directory. Required.
  std::string model;
  // Name clients put in ChatRequest.model; "" derives it from `model` (ServedModelNameFromPath).
  std::string served_model_name;
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

// Checks what a single field cannot (model present) and fills served_model_name when empty.
absl::Status FinalizeWorkerConfig(WorkerConfig* config);

// The served name derived from a model path: a GGUF file's base name without ".gguf" and a
// trailing quantization tag ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct"), a
// directory's name, or "org/name" for a Hugging Face cache snapshot
// (".../models--org--name/snapshots/<commit>").
std::string ServedModelNameFromPath(absl::string_view path);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WORKER_CONFIG_H_
