// tokenizer.json pre-tokenizers with the Hugging Face tokenizers library's semantics: Split
// (String/Regex pattern, behaviors Removed/Isolated/MergedWithPrevious/MergedWithNext/Contiguous,
// invert), ByteLevel (add_prefix_space, use_regex with the GPT-2 pattern), Digits
// (individual_digits), Metaspace (replacement, prepend_scheme first/always/never, split) and
// Sequence. Each splits pieces of normalized text into smaller pieces (the "words" the model
// tokenizes); empty pieces are dropped, as the library drops them.
#ifndef SHARDSERVE_WORKER_TEXT_PRE_TOKENIZER_H_
#define SHARDSERVE_WORKER_TEXT_PRE_TOKENIZER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/text/json_fields.h"
#include "worker/text/regex.h"

namespace shardserve::text {

// A piece of text on its way to the model.
struct Piece {
  std::string text;
  // Whether the piece begins at offset 0 of the original input (Metaspace's "first" scheme
  // prepends only then). A piece split off at a later offset never does.
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their pre-tokenized sub-pieces, in order.
  virtual void PreTokenize(std::vector<Piece>* pieces) const = 0;
};

// Builds the pre-tokenizer described by `j` (a non-null tokenizer.json "pre_tokenizer" value).
// Unsupported types are INVALID_ARGUMENT naming the type and ctx.
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& j,
                                                                const JsonContext& ctx);

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits `piece` at `spans` (a cover of piece.text as returned by Regex::FindMatches) according
// to `behavior` (tokenizers' NormalizedString::split), appending the non-empty results to `out`.
void SplitPiece(const Piece& piece, std::vector<MatchSpan> spans, SplitBehavior behavior,
                std::vector<Piece>* out);

// Metaspace's options, shared by the pre-tokenizer and the decoder.
enum class PrependScheme { kFirst, kAlways, kNever };
struct MetaspaceOptions {
  char32_t replacement;
  PrependScheme scheme;
};
// Reads "replacement" (one character) and "prepend_scheme" (or the older "add_prefix_space").
absl::StatusOr<MetaspaceOptions> ParseMetaspaceOptions(const nlohmann::json& j,
                                                       const JsonContext& ctx);

// The GPT-2 pre-tokenization regex (tokenizers' ByteLevel use_regex).
inline constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace shardserve::text

#endif  // SHARDSERVE_WORKER_TEXT_PRE_TOKENIZER_H_
