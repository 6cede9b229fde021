// libFuzzer target for the chat-template parser and interpreter (templates come from model
// repositories: untrusted). Input: template source, optionally followed by "\n---\n" and a JSON
// render context. Any status is fine; crashes, hangs, leaks and sanitizer reports are not.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "worker/text/chat_template.h"

namespace {

const nlohmann::ordered_json& DefaultContext() {
  static const auto* context = new nlohmann::ordered_json(nlohmann::ordered_json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": " Hi \u00e9 "},
                 {"role": "assistant", "content": "Yo", "tool_calls": [
                    {"id": "call12345", "type": "function",
                     "function": {"name": "f", "arguments": {"x": 1.5, "y": [true, null]}}}]},
                 {"role": "tool", "content": "{\"ok\": 1}"}],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d",
               "parameters": {"type": "object", "properties": {"x": {"type": "number"}}}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})"));
  return *context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view source = input;
  nlohmann::ordered_json context = DefaultContext();
  size_t sep = input.find("\n---\n");
  if (sep != std::string_view::npos) {
    source = input.substr(0, sep);
    auto parsed = nlohmann::ordered_json::parse(input.substr(sep + 5), nullptr, false);
    if (!parsed.is_discarded() && parsed.is_object()) context = std::move(parsed);
  }
  shardserve::ChatTemplateOptions options;
  options.clock = [] { return absl::UnixEpoch(); };
  options.time_zone = absl::UTCTimeZone();
  options.max_output_bytes = 1 << 20;
  options.max_steps = 200000;
  options.max_call_depth = 32;
  auto tmpl = shardserve::ChatTemplate::Parse(source, "fuzz", options);
  if (!tmpl.ok()) return 0;
  (void)tmpl->Render(context);
  return 0;
}
