#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/json.h"
#include "worker/weights/model_weights.h"

namespace shardserve::cli {
namespace {

nlohmann::json ConfigJson(const ModelConfig& c) {
  nlohmann::json j = {
      {"architecture", std::string(ArchitectureName(c.architecture))},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
  };
  if (!c.rope_scaling.type.empty()) {
    j["rope_scaling"] = {
        {"type", c.rope_scaling.type},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  }
  if (c.sliding_window > 0) j["sliding_window"] = c.sliding_window;
  if (c.num_local_experts > 0) {
    j["num_local_experts"] = c.num_local_experts;
    j["num_experts_per_tok"] = c.num_experts_per_tok;
  }
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (!c.eos_token_ids.empty()) j["eos_token_id"] = c.eos_token_ids;
  return j;
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrFormat(u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
}

}  // namespace

int RunInspect(const InspectOptions& options) {
  auto weights = ModelWeights::Open(options.path);
  if (!weights.ok()) {
    std::cerr << "shardserve inspect: " << weights.status().message() << "\n";
    return 1;
  }
  const ModelWeights& w = **weights;
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t total_bytes = 0, total_params = 0;
  for (const std::string& name : w.TensorNames()) {
    absl::StatusOr<TensorView> view = w.View(name);
    if (!view.ok()) {
      std::cerr << "shardserve inspect: " << view.status().message() << "\n";
      return 1;
    }
    size_t bytes = view->ByteSize();
    total_bytes += bytes;
    total_params += view->NumElements();
    tensors.push_back({{"name", name},
                       {"dtype", std::string(DTypeName(view->dtype))},
                       {"shape", view->shape},
                       {"bytes", bytes}});
  }
  const char* format = w.format() == WeightFormat::kGguf ? "gguf" : "safetensors";
  if (options.json) {
    nlohmann::json out = {{"path", w.path()},
                          {"format", format},
                          {"qk_rows_interleaved", w.QkRowsInterleaved()},
                          {"config", ConfigJson(w.config())},
                          {"parameters", total_params},
                          {"bytes", total_bytes},
                          {"tensors", tensors}};
    std::cout << DumpJson(out, 2) << "\n";
    return 0;
  }
  std::cout << "path:   " << w.path() << "\nformat: " << format << "\n\nconfig:\n";
  const nlohmann::json config = ConfigJson(w.config());
  for (const auto& [key, value] : config.items()) {
    std::cout << absl::StrFormat("  %-26s %s\n", key, DumpJson(value));
  }
  size_t width = 4;
  for (const auto& t : tensors) width = std::max(width, t["name"].get<std::string>().size());
  std::cout << absl::StrFormat("\n%-*s  %-7s  %-16s  %12s\n", width, "name", "dtype", "shape",
                               "bytes");
  for (const auto& t : tensors) {
    std::cout << absl::StrFormat("%-*s  %-7s  %-16s  %12d\n", width, t["name"].get<std::string>(),
                                 t["dtype"].get<std::string>(),
                                 ShapeString(t["shape"].get<std::vector<int64_t>>()),
                                 t["bytes"].get<uint64_t>());
  }
  std::cout << absl::StrFormat("\n%d tensors, %d parameters, %s\n", tensors.size(), total_params,
                               HumanBytes(static_cast<double>(total_bytes)));
  return 0;
}

}  // namespace shardserve::cli
