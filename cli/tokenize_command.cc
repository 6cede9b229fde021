#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/json.h"
#include "worker/text/model_text.h"

namespace shardserve::cli {

int RunTokenize(const TokenizeOptions& options) {
  absl::StatusOr<ModelText> text = LoadModelText(options.model);
  if (!text.ok()) {
    std::cerr << "shardserve tokenize: " << text.status().message() << "\n";
    return 1;
  }
  const Tokenizer& tokenizer = *text->tokenizer;
  std::vector<int32_t> ids = tokenizer.Encode(options.text, options.add_special_tokens);
  if (options.ids) {
    std::cout << DumpJson(ids) << "\n";
    return 0;
  }
  // One line per token: id, the vocabulary entry, and the text it decodes to on its own.
  for (int32_t id : ids) {
    std::string piece = tokenizer.IdToToken(id).value_or("");
    std::string decoded = tokenizer.Decode({id}, /*skip_special_tokens=*/false);
    std::cout << absl::StrFormat("%8d  %-24s %s\n", id, DumpJson(piece), DumpJson(decoded));
  }
  std::cout << ids.size() << " tokens\n";
  return 0;
}

}  // namespace shardserve::cli
