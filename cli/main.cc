// shardserve: one binary, one subcommand per task. Flags are parsed here; the work is in
// cli/*_command.cc.
#include <cstdlib>
#include <iostream>

#include "CLI/CLI.hpp"
#include "cli/commands.h"

int main(int argc, char** argv) {
  namespace cli = shardserve::cli;
  CLI::App app{"shardserve: LLM serving cluster tools (models, tokenizer, chat templates)"};
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

  CLI11_PARSE(app, argc, argv);

  if (inspect_cmd->parsed()) return cli::RunInspect(inspect);
  if (tokenize_cmd->parsed()) return cli::RunTokenize(tokenize);
  if (template_cmd->parsed()) return cli::RunTemplate(tmpl);
  return EXIT_FAILURE;
}
