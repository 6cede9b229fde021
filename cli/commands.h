// The subcommands of the `shardserve` command-line tool. Each returns the process exit code
// (0 success, 1 failure with the reason printed on stderr); main.cc only parses flags.
#ifndef SHARDSERVE_CLI_COMMANDS_H_
#define SHARDSERVE_CLI_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

namespace shardserve::cli {

struct InspectOptions {
  std::string path;  // GGUF file or HF model directory
  bool json = false;
};
// Prints the model config and a table of its tensors (HF name, dtype, shape, bytes).
int RunInspect(const InspectOptions& options);

struct TokenizeOptions {
  std::string model;  // GGUF file or HF model directory
  std::string text;
  bool ids = false;  // print the ids as a JSON array
  bool add_special_tokens = false;
};
// Prints the token ids (--ids) or one line per token (id, piece, decoded text).
int RunTokenize(const TokenizeOptions& options);

struct TemplateOptions {
  std::string model;          // GGUF file or HF model directory
  std::string messages_file;  // JSON: [{"role", "content"}...] or {"messages": [...], ...}
  bool add_generation_prompt = true;
  bool show_ids = false;
};
// Prints the prompt the model's chat template renders for the conversation.
int RunTemplate(const TemplateOptions& options);

struct ChatOptions {
  std::string target;       // host:port of a worker or the gateway
  std::string model;        // "": the first model ListModels returns
  std::string system;       // optional system message
  std::string prompt;       // "": interactive (one user turn per stdin line)
  int max_tokens = 0;       // 0: the server's default
  float temperature = -1;   // < 0: the server's default
  int64_t seed = -1;        // < 0: unseeded
  double wait_seconds = 0;  // > 0: first wait this long for the target's health to be SERVING
  std::string api_key;      // sent as `authorization: Bearer KEY` when set (a keyed gateway)
};
// Streams the reply (shardserve.chat.v1.Chat) to stdout; token counts and speed go to stderr.
// Errors print the gRPC code and message on stderr and return 1.
int RunChat(const ChatOptions& options);

struct StatusOptions {
  std::string target;           // host:port of the gateway or a worker
  bool json = false;            // the response as JSON instead of tables
  double timeout_seconds = 10;  // per RPC
  std::string api_key;          // sent as `authorization: Bearer KEY` when set
};
// Prints what the target knows about the cluster. A gateway (Gateway.ClusterStatus): each model
// (context length, quantization, ready replicas, queued requests) and a table of its workers
// (address, up/down, healthy, running, waiting, KV used/total, gateway in-flight, message). A
// worker (ClusterStatus UNIMPLEMENTED; Worker.Status and health): the same for that one worker.
// --json prints {"gateway": ClusterStatusResponse} or {"worker": StatusResponse, "healthy": b}
// (proto field names). Errors print the gRPC code and message on stderr and return 1.
int RunStatus(const StatusOptions& options);

struct HashKeyOptions {
  std::string key;  // "-": read it from stdin (trailing newlines dropped)
};
// Prints the lowercase hex SHA-256 of the key: what the gateway config's api_keys hold.
int RunHashKey(const HashKeyOptions& options);

// --- hub_sync clients (`pull`, `models`) ---

struct PullOptions {
  std::string target = "127.0.0.1:50071";  // hub_sync's gRPC address
  std::string repo;                        // ORG/NAME[@REVISION]
  std::vector<std::string> quantize;       // scheme lists, "int4,nf4"
  std::vector<std::string> include;        // allow patterns
  std::vector<std::string> exclude;        // ignore patterns
  std::string from_file;                   // a GGUF to import instead of downloading
  std::string as;                          // ORG/NAME[@BRANCH] of the import
  bool verify = false;                     // re-hash files already in the cache
  bool quiet = false;                      // no progress output
};
// Runs HubSync.Sync and shows its progress on stderr: a redrawn bar on a terminal (phase, files,
// bytes, rate, ETA, current file), a line per phase and every 2 s otherwise. On success prints
// "ORG/NAME@REV COMMIT (N files, SIZE[, quantized: ...])" on stdout and returns 0; on error the
// gRPC code and message on stderr and 1.
int RunPull(const PullOptions& options);

struct ModelsOptions {
  std::string target = "127.0.0.1:50071";
  std::string prefix;  // only repositories starting with this
  std::string remove;  // ORG/NAME[@REVISION]: delete it instead of listing
};
// Lists the cache (HubSync.List) as a table, or deletes a repository or revision
// (HubSync.Delete).
int RunModels(const ModelsOptions& options);

// --- in-process generation and scoring (`run`, `perplexity`) ---

struct RunOptions {
  std::string model;          // GGUF file or HF model directory
  std::string prompt;         // the user message (or, without a chat template, the raw text)
  std::string messages_file;  // instead of prompt: JSON [{"role", "content"}...] or
                              // {"messages": [...]}
  std::string system;         // optional system message, put first
  int max_tokens = -1;        // -1: 512 or what the context leaves; 0: until EOS / context
  // Sampling; the defaults are llama-cli's. temperature 0 is greedy.
  float temperature = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repetition_penalty = 1.0f;
  int64_t seed = -1;  // < 0: a random seed (printed with the stats)
  std::vector<std::string> stop;
  int logprobs = -1;               // >= 0: report logprobs with this many alternatives (0..20)
  int threads = 0;                 // 0: one per core
  int64_t context = 0;             // 0: the model's max_position_embeddings
  std::string activations = "q8";  // "q8" (llama.cpp's arithmetic) or "f32"
  bool json = false;               // one JSON object at the end instead of streamed text
};
// Loads the model, renders the chat template (with the assistant turn's opening), generates with
// an in-process Engine and streams the text to stdout; a stats line goes to stderr.
int RunGenerate(const RunOptions& options);

struct PerplexityOptions {
  std::string model;
  std::string text_file;
  int64_t context = 512;  // window length in tokens
  int threads = 0;
  std::string activations = "q8";
  bool json = false;
};
// Perplexity of the text as llama.cpp's llama-perplexity computes it: the tokens split into
// consecutive windows of `context` tokens (the last may be shorter), each run as a fresh
// sequence (with BOS first when the tokenizer adds one), the second half of each window scored.
int RunPerplexity(const PerplexityOptions& options);

}  // namespace shardserve::cli

#endif  // SHARDSERVE_CLI_COMMANDS_H_
