// Tokenizer: text <-> token ids for the models shardserve serves, identical to the Hugging Face
// `tokenizers` library on the model's own tokenizer.json (byte-level BPE as in GPT-2 / Llama-3 /
// SmolLM2, and SentencePiece-style BPE with byte fallback as in Llama-2 / Mistral), or built from
// a GGUF file's vocabulary metadata.
//
// Pipeline (as the library runs it): added tokens are cut out of the input first (special token
// strings in the text become their ids), each remaining piece is normalized, pre-tokenized into
// words, and each word is merged by the model; Encode(..., add_special_tokens=true) then applies
// the post-processor (e.g. a BOS). Decode maps ids back through the decoder; StreamDecoder does
// the same one id at a time for streaming generation.
//
// A Tokenizer is immutable after construction; Encode, Decode and the lookups may be called from
// any number of threads at once.
//
// Supported tokenizer.json components (anything else is INVALID_ARGUMENT naming the component
// type and the file): model BPE; normalizers NFC, NFD, NFKC, NFKD, Lowercase, StripAccents,
// Strip, Prepend, Replace, Sequence; pre-tokenizers Split, ByteLevel, Digits, Metaspace,
// Sequence; post-processors TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing,
// Sequence; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence.
// "truncation" and "padding" are ignored: Encode never truncates or pads.
#ifndef SHARDSERVE_WORKER_TEXT_TOKENIZER_H_
#define SHARDSERVE_WORKER_TEXT_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"

namespace shardserve {

namespace text {
class AddedVocabulary;
class DecodeStream;
class Decoder;
class Model;
class Normalizer;
class PreTokenizer;
}  // namespace text

// A GGUF file's tokenizer metadata (tokenizer.ggml.*), filled by the GGUF reader.
struct GgufVocab {
  std::string model;  // tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
  std::string pre;    // tokenizer.ggml.pre, e.g. "smollm", "llama-bpe", "default"
  std::vector<std::string> tokens;   // tokenizer.ggml.tokens, by id
  std::vector<float> scores;         // tokenizer.ggml.scores (required for "llama")
  std::vector<int32_t> token_types;  // tokenizer.ggml.token_type: 1 normal, 2 unknown,
                                     // 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;   // tokenizer.ggml.merges, "a b" (required for "gpt2")
  int64_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = false, add_eos = false, add_space_prefix = false;
};

class StreamDecoder;

class Tokenizer {
 public:
  // Loads a tokenizer.json file.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // Parses tokenizer.json text; `what` names it in errors (e.g. its path).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view json,
                                                             absl::string_view what);
  // Same from an already parsed document.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonValue(const nlohmann::json& json,
                                                                  absl::string_view what);
  // Builds the tokenizer llama.cpp would from GGUF metadata. "gpt2" is byte-level BPE with the
  // merges and the pre-tokenizer named by `pre`: "smollm" (Digits + ByteLevel, as SmolLM2's
  // tokenizer.json), "llama-bpe" / "llama3" / "llama-v3" (Llama-3's regex, ignore_merges),
  // "default" / "gpt2" / "gpt-2" (the GPT-2 regex). "llama" is SentencePiece BPE: merges by
  // score, byte fallback, "▁" for spaces and one prepended per piece when add_space_prefix.
  // Control, unknown and user-defined tokens are matched in the text as added tokens (the
  // first two special). add_bos / add_eos become the post-processor. An unknown model or `pre`,
  // or inconsistent sizes or ids, are INVALID_ARGUMENT naming them.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGgufVocab(const GgufVocab& vocab);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`; special-token strings in the text become their ids. With
  // add_special_tokens the post-processor's tokens (e.g. BOS) are added. Invalid UTF-8 in `text`
  // is first replaced by U+FFFD.
  std::vector<int32_t> Encode(absl::string_view text, bool add_special_tokens) const;

  // Text of `ids`, as the library's decode(ids, skip_special_tokens). Ids without a token are
  // skipped. Always valid UTF-8.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // An incremental decoder for one generated sequence (see StreamDecoder).
  StreamDecoder NewStreamDecoder(bool skip_special_tokens) const;

  // Largest id + 1 over the model vocabulary and the added tokens.
  int32_t vocab_size() const;
  // Added tokens first, then the model vocabulary (as the library). IdToToken gives a
  // normalized added token in its normalized form, the string Decode works from.
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // Whether `id` is a special added token (what skip_special_tokens drops).
  bool IsSpecial(int32_t id) const;

  // -1 when unknown. For tokenizer.json, bos_id is the special token the post-processor puts
  // before the text and eos_id the one it puts after (if any); for GGUF, the metadata's ids.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }

 private:
  friend class StreamDecoder;
  // One step of the single-sequence post-processing template: the sequence itself
  // (is_sequence) or fixed ids.
  struct TemplateItem {
    bool is_sequence;
    std::vector<int32_t> ids;
  };

  Tokenizer();
  // The token string `id` decodes from, or null (skipped).
  const std::string* DecodeToken(int32_t id, bool skip_special_tokens) const;

  std::unique_ptr<text::Model> model_;
  std::unique_ptr<text::Normalizer> normalizer_;
  std::unique_ptr<text::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<text::AddedVocabulary> added_;
  std::unique_ptr<text::Decoder> decoder_;
  // Post-processors in order; each wraps the ids produced so far.
  std::vector<std::vector<TemplateItem>> templates_;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1;
};

// Incremental decoding for streaming generation: Step() takes one id at a time and returns the
// text that became final (only complete UTF-8 characters; a partial multi-byte sequence or a run
// of byte-fallback tokens is held back until it completes), Finish() returns what is still held
// (an incomplete sequence as U+FFFD) and resets for a new sequence. The concatenation of all
// returned pieces equals tokenizer.Decode(all ids, skip_special_tokens), including SentencePiece's
// removal of the leading space. Not thread-safe; the Tokenizer must outlive it.
class StreamDecoder {
 public:
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;
  ~StreamDecoder();

  std::string Step(int32_t id);
  std::string Finish();

 private:
  friend class Tokenizer;
  StreamDecoder(const Tokenizer* tokenizer, bool skip_special_tokens);

  const Tokenizer* tokenizer_;
  bool skip_special_tokens_;
  std::unique_ptr<text::DecodeStream> stream_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_TEXT_TOKENIZER_H_
