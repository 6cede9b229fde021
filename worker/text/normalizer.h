// tokenizer.json normalizers, with the Hugging Face tokenizers library's semantics: NFC, NFD,
// NFKC, NFKD, Lowercase, StripAccents, Strip, Prepend, Replace and Sequence. A normalizer runs on
// each piece of the input between added tokens (valid UTF-8 in, valid UTF-8 out).
#ifndef SHARDSERVE_WORKER_TEXT_NORMALIZER_H_
#define SHARDSERVE_WORKER_TEXT_NORMALIZER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/text/json_fields.h"

namespace shardserve::text {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void Normalize(std::string* text) const = 0;
};

// Builds the normalizer described by `j` (a non-null tokenizer.json "normalizer" value).
// Unsupported types are INVALID_ARGUMENT naming the type and ctx.
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& j,
                                                            const JsonContext& ctx);

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_NORMALIZER_H_
