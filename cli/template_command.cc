#include <iostream>
#include <string>

#include "cli/commands.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "worker/text/model_text.h"

namespace shardserve::cli {

int RunTemplate(const TemplateOptions& options) {
  auto fail = [](const absl::Status& status) {
    std::cerr << "shardserve template: " << status.message() << "\n";
    return 1;
  };
  absl::StatusOr<std::string> raw = ReadFileToString(options.messages_file);
  if (!raw.ok()) return fail(raw.status());
  // ordered_json keeps key order, which tojson in templates prints.
  nlohmann::ordered_json doc;
  try {
    doc = nlohmann::ordered_json::parse(*raw);
  } catch (const nlohmann::json::exception& e) {
    return fail(absl::InvalidArgumentError(options.messages_file + ": invalid JSON: " + e.what()));
  }
  nlohmann::ordered_json messages = doc;
  nlohmann::ordered_json tools = nullptr;
  bool add_generation_prompt = options.add_generation_prompt;
  if (doc.is_object()) {
    messages = doc.value("messages", nlohmann::ordered_json());
    tools = doc.value("tools", nlohmann::ordered_json());
    if (doc.contains("add_generation_prompt") && doc["add_generation_prompt"].is_boolean()) {
      add_generation_prompt = add_generation_prompt && doc["add_generation_prompt"].get<bool>();
    }
  }
  if (!messages.is_array()) {
    return fail(absl::InvalidArgumentError(
        options.messages_file + ": expected a list of messages or an object with \"messages\""));
  }
  absl::StatusOr<ModelText> text = LoadModelText(options.model);
  if (!text.ok()) return fail(text.status());
  absl::StatusOr<std::string> prompt = text->RenderChat(messages, add_generation_prompt, tools);
  if (!prompt.ok()) return fail(prompt.status());
  std::cout << *prompt;
  if (options.show_ids) {
    // As apply_chat_template(tokenize=True): the template writes any BOS itself.
    std::cout << "\n" << DumpJson(text->tokenizer->Encode(*prompt, false)) << "\n";
  }
  return 0;
}

}  // namespace shardserve::cli
