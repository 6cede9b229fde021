// The subcommands of the `shardserve` command-line tool. Each returns the process exit code
// (0 success, 1 failure with the reason printed on stderr); main.cc only parses flags.
#ifndef SHARDSERVE_CLI_COMMANDS_H_
#define SHARDSERVE_CLI_COMMANDS_H_

#include <string>

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

}  // namespace shardserve::cli

#endif  // SHARDSERVE_CLI_COMMANDS_H_
