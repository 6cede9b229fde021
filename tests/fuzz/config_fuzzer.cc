// libFuzzer target for HF config.json handling: ParseJson + ParseHfConfig + ValidateConfig +
// ExpectedTensorShapes. Any bytes must give a Status, never a crash or an exception.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/json.h"
#include "worker/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  auto doc = shardserve::ParseJson(text, "fuzz/config.json");
  if (!doc.ok()) return 0;
  auto config = shardserve::ParseHfConfig(*doc, "fuzz/config.json");
  if (!config.ok()) return 0;
  if (!shardserve::ValidateConfig(*config, "fuzz/config.json").ok()) return 0;
  // Keep each input fast: the tensor list grows with layers x experts.
  if (config->num_hidden_layers * (config->num_local_experts + 1) > 4096) return 0;
  auto shapes = shardserve::ExpectedTensorShapes(*config);
  for (const auto& [name, shape] : shapes) {
    for (int64_t d : shape) {
      if (d <= 0) std::abort();
    }
  }
  return 0;
}
