// shardserve: one binary, one subcommand per task. Flags are parsed here; the work is in
// cli/*_command.cc.
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "cli/commands.h"

int main(int argc, char** argv) {
  namespace cli = shardserve::cli;
  CLI::App app{
      "shardserve: LLM serving cluster tools (models, tokenizer, chat templates, chat and status "
      "against a worker or the gateway)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("shardserve ") + SHARDSERVE_VERSION);

  cli::InspectOptions inspect;
  CLI::App* inspect_cmd =
      app.add_subcommand("inspect",
                         "Print a model's config and tensor table (name, dtype, "
                         "shape, bytes)");
  inspect_cmd->add_option("path", inspect.path, "GGUF file or HF model directory")->required();
  inspect_cmd->add_flag("--json", inspect.json, "Print JSON instead of a table");

  cli::TokenizeOptions tokenize;
  CLI::App* tokenize_cmd = app.add_subcommand("tokenize", "Tokenize text with a model's tokenizer");
  tokenize_cmd->add_option("--model", tokenize.model, "GGUF file or HF model directory")
      ->required();
  tokenize_cmd->add_flag("--ids", tokenize.ids, "Print only the token ids, as a JSON array");
  tokenize_cmd->add_flag("--add-special-tokens", tokenize.add_special_tokens,
                         "Apply the tokenizer's post-processor (e.g. prepend BOS), as HF "
                         "tokenizers' add_special_tokens=True");
  tokenize_cmd->add_option("text", tokenize.text, "Text to tokenize")->required();

  cli::TemplateOptions tmpl;
  CLI::App* template_cmd =
      app.add_subcommand("template", "Render a conversation with a model's chat template");
  template_cmd->add_option("--model", tmpl.model, "GGUF file or HF model directory")->required();
  template_cmd
      ->add_option("--messages", tmpl.messages_file,
                   "JSON file: a list of {\"role\", \"content\"} messages, or an object with "
                   "\"messages\" (and optionally \"tools\", \"add_generation_prompt\")")
      ->required();
  template_cmd->add_flag("!--no-generation-prompt", tmpl.add_generation_prompt,
                         "Do not append the assistant turn's opening");
  template_cmd->add_flag("--ids", tmpl.show_ids, "Also print the prompt's token ids");

  cli::ChatOptions chat;
  CLI::App* chat_cmd = app.add_subcommand(
      "chat",
      "Chat with a worker or the gateway over gRPC (shardserve.chat.v1.Chat), streaming "
      "the reply; interactive without PROMPT");
  chat_cmd->add_option("--target", chat.target, "host:port of the worker or gateway")->required();
  chat_cmd->add_option("--model", chat.model, "Model name (default: the first ListModels gives)");
  chat_cmd->add_option("--system", chat.system, "System message");
  chat_cmd->add_option("--max-tokens", chat.max_tokens, "Most tokens to generate (0: server's)");
  chat_cmd->add_option("--temperature", chat.temperature, "Sampling temperature (0: greedy)");
  chat_cmd->add_option("--seed", chat.seed, "Random seed");
  chat_cmd->add_option("--wait", chat.wait_seconds,
                       "Wait up to this many seconds for the target to report SERVING");
  chat_cmd
      ->add_option("--api-key", chat.api_key,
                   "API key for a gateway that requires one (or $SHARDSERVE_API_KEY)")
      ->envname("SHARDSERVE_API_KEY");
  chat_cmd->add_option("prompt", chat.prompt, "The question (omit for an interactive chat)");

  cli::StatusOptions status;
  CLI::App* status_cmd =
      app.add_subcommand("status",
                         "Show the models and each worker's health and load, from the gateway "
                         "(Gateway.ClusterStatus) or from one worker (Worker.Status)");
  status_cmd->add_option("--target", status.target, "host:port of the gateway or a worker")
      ->required();
  status_cmd->add_flag("--json", status.json, "Print the status as JSON");
  status_cmd
      ->add_option("--api-key", status.api_key,
                   "API key for a gateway that requires one (or $SHARDSERVE_API_KEY)")
      ->envname("SHARDSERVE_API_KEY");
  status_cmd->add_option("--timeout", status.timeout_seconds, "Seconds to wait for each answer")
      ->capture_default_str();

  cli::HashKeyOptions hash_key;
  CLI::App* hash_key_cmd = app.add_subcommand(
      "hash-key",
      "Print the SHA-256 (lowercase hex) of an API key, as the gateway's api_keys hold it");
  hash_key_cmd->add_option("key", hash_key.key, "The key, or - to read it from stdin")->required();

  cli::PullOptions pull;
  CLI::App* pull_cmd = app.add_subcommand(
      "pull",
      "Mirror a Hub repository into the shared cache through hub_sync (as huggingface-cli "
      "download / ollama pull), optionally quantizing it; or import a GGUF file");
  pull_cmd->add_option("repo", pull.repo, "ORG/NAME[@REVISION] (branch, tag or commit)");
  pull_cmd->add_option("--target", pull.target, "host:port of hub_sync's gRPC API")
      ->capture_default_str();
  pull_cmd->add_option("--quantize", pull.quantize,
                       "Also write these quantized artifacts: int8, int4, nf4 (comma-separated)");
  pull_cmd->add_option("--include", pull.include, "Glob of files to fetch (repeatable)");
  pull_cmd->add_option("--exclude", pull.exclude, "Glob of files to skip (repeatable)");
  pull_cmd->add_option("--from-file", pull.from_file,
                       "Import this GGUF file (readable by hub_sync) instead of downloading");
  pull_cmd->add_option("--as", pull.as, "ORG/NAME[@BRANCH] the --from-file import is cached as");
  pull_cmd->add_flag("--verify", pull.verify, "Re-hash files already in the cache");
  pull_cmd->add_flag("--quiet,-q", pull.quiet, "No progress output");

  cli::ModelsOptions models;
  CLI::App* models_cmd = app.add_subcommand(
      "models", "List the repositories in hub_sync's cache, or delete one (--rm)");
  models_cmd->add_option("--target", models.target, "host:port of hub_sync's gRPC API")
      ->capture_default_str();
  models_cmd->add_option("--prefix", models.prefix, "Only repositories starting with this");
  models_cmd->add_option("--rm", models.remove,
                         "Delete ORG/NAME (or ORG/NAME@REVISION) from the cache");

  cli::RunOptions run;
  CLI::App* run_cmd = app.add_subcommand(
      "run",
      "Generate in-process, streaming the reply (as llama.cpp's llama-cli); sampling "
      "defaults as llama-cli: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, a "
      "random seed");
  run_cmd->add_option("--model", run.model, "GGUF file or HF model directory")->required();
  CLI::Option* run_prompt = run_cmd->add_option("--prompt", run.prompt, "The user message");
  run_cmd
      ->add_option("--messages", run.messages_file,
                   "JSON file: a list of {\"role\", \"content\"} messages (or an object "
                   "with \"messages\")")
      ->excludes(run_prompt);
  run_cmd->add_option("--system", run.system, "System message (first)");
  run_cmd->add_option("--max-tokens", run.max_tokens,
                      "Most tokens to generate (default 512 or what the context leaves; 0: "
                      "until EOS or the context is full)");
  run_cmd->add_option("--temperature", run.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str();
  run_cmd->add_option("--top-k", run.top_k, "Top-k filter (0: off)")->capture_default_str();
  run_cmd->add_option("--top-p", run.top_p, "Nucleus filter (1: off)")->capture_default_str();
  run_cmd->add_option("--min-p", run.min_p, "Min-p filter (0: off)")->capture_default_str();
  run_cmd->add_option("--repeat-penalty", run.repetition_penalty, "Repetition penalty (1: off)")
      ->capture_default_str();
  run_cmd->add_option("--seed", run.seed, "Random seed (default: random, printed at the end)");
  run_cmd->add_option("--stop", run.stop, "Stop string (repeatable); never printed");
  run_cmd->add_option("--logprobs", run.logprobs,
                      "Report each token's logprob and this many alternatives (0..20)");
  run_cmd->add_option("--threads", run.threads, "CPU threads (default: one per core)");
  run_cmd->add_option("--context", run.context, "Context length in tokens (default: the model's)");
  run_cmd
      ->add_option("--activations", run.activations,
                   "q8: llama.cpp's quantized activations; f32: dequantized weights")
      ->capture_default_str();
  run_cmd->add_flag("--json", run.json,
                    "Print one JSON object at the end (text, token_ids, finish_reason, usage, "
                    "timings, logprobs)");

  cli::PerplexityOptions ppl;
  CLI::App* ppl_cmd = app.add_subcommand(
      "perplexity",
      "Perplexity of a text, as llama.cpp's llama-perplexity: windows of --context tokens, "
      "each a fresh sequence, the second half of each scored (the last window may be shorter)");
  ppl_cmd->add_option("--model", ppl.model, "GGUF file or HF model directory")->required();
  ppl_cmd->add_option("--text-file", ppl.text_file, "The text (UTF-8)")->required();
  ppl_cmd->add_option("--context", ppl.context, "Window length in tokens")->capture_default_str();
  ppl_cmd->add_option("--threads", ppl.threads, "CPU threads (default: one per core)");
  ppl_cmd->add_option("--activations", ppl.activations, "q8 or f32")->capture_default_str();
  ppl_cmd->add_flag("--json", ppl.json, "Print a JSON object");

  CLI11_PARSE(app, argc, argv);

  if (inspect_cmd->parsed()) return cli::RunInspect(inspect);
  if (pull_cmd->parsed()) return cli::RunPull(pull);
  if (models_cmd->parsed()) return cli::RunModels(models);
  if (tokenize_cmd->parsed()) return cli::RunTokenize(tokenize);
  if (template_cmd->parsed()) return cli::RunTemplate(tmpl);
  if (chat_cmd->parsed()) return cli::RunChat(chat);
  if (status_cmd->parsed()) return cli::RunStatus(status);
  if (hash_key_cmd->parsed()) return cli::RunHashKey(hash_key);
  if (run_cmd->parsed()) return cli::RunGenerate(run);
  if (ppl_cmd->parsed()) return cli::RunPerplexity(ppl);
  return EXIT_FAILURE;
}
