// libFuzzer target for the gateway's OpenAI request parsers (untrusted HTTP bodies):
// ParseChatCompletionRequest and ParseCompletionRequest, then the edge validation the dispatcher
// applies. Any bytes must give a Status, never a crash or an exception.
#include <cstddef>
#include <cstdint>

#include "gateway/openai/openai_api.h"
#include "worker/rpc/chat_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view body(reinterpret_cast<const char*>(data), size);
  for (auto parse : {shardserve::openai::ParseChatCompletionRequest,
                     shardserve::openai::ParseCompletionRequest}) {
    auto parsed = parse(body);
    if (!parsed.ok()) {
      // The error must render as OpenAI's JSON shape.
      (void)shardserve::openai::ErrorJson(shardserve::openai::ErrorFromStatus(parsed.status()));
      continue;
    }
    (void)shardserve::ValidateChatRequest(parsed->request, shardserve::kMaxChoices);
  }
  return 0;
}
