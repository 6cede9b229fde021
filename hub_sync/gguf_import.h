// A GGUF file (llama.cpp) as a Hugging Face-form repository, so a model that only exists as GGUF
// (the default model on a machine with no Hub access) enters the cache like any Hub download:
// `shardserve pull --from-file model.gguf --as ORG/NAME`.
//
// The output is what tests/fixtures/convert_gguf_to_hf.py writes for the same file, byte for byte
// (that script is the behavioural reference; gguf_import_test compares the two):
//   model.safetensors        the GGUF's tensors dequantized to f32 (exactly as gguf.quants does),
//                            the Q/K row permutation of llama.cpp's converter undone, HF names,
//                            stored as bf16 (round to nearest even) or f32, tensors sorted by
//                            name; no lm_head.weight when the embeddings are tied.
//   config.json              LlamaForCausalLM hyper-parameters from the llama.* metadata.
//   generation_config.json   bos / eos / pad token ids.
//   tokenizer.json           byte-level BPE ("gpt2" model, SmolLM pre-tokenizer: Digits +
//                            ByteLevel) from tokenizer.ggml.tokens / merges; token_type 3
//                            (control) tokens become special added tokens.
//   tokenizer_config.json    chat template (tokenizer.chat_template), bos / eos / pad / unk.
//   special_tokens_map.json
//
// Supported, as in the reference: general.architecture "llama" without experts, head size equal
// for keys, values and RoPE, rope scaling none or linear, tokenizer.ggml.model "gpt2" with
// tokenizer.ggml.pre "smollm", token types normal (1) and control (3). Anything else is refused
// rather than guessed, naming the file and the key or tensor: UNIMPLEMENTED for a valid GGUF
// outside that set, INVALID_ARGUMENT for a malformed or inconsistent one (truncated, a tensor set
// or shape that does not match the hyper-parameters, duplicate tokens, invalid UTF-8), NOT_FOUND
// for a missing file or required metadata key. Stricter than the reference in one case: a
// `rope_freqs.weight` tensor (Llama-3 RoPE factors) is refused, where the script drops it.
//
// Memory: one tensor at a time (its f32 values plus the converted bytes), never the model.
#ifndef SHARDSERVE_HUB_SYNC_GGUF_IMPORT_H_
#define SHARDSERVE_HUB_SYNC_GGUF_IMPORT_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "hub_sync/repo.h"

namespace shardserve::hub {

struct GgufImportOptions {
  // Element type of model.safetensors: "bf16" (round to nearest even; NaN stays NaN) or "f32"
  // (the dequantized values exactly).
  std::string dtype = "bf16";
};

// Writes the HF-form repository of the GGUF at `gguf_path` into `out_dir`, which must not exist
// or be an empty directory (FAILED_PRECONDITION otherwise); missing parent folders are created.
// Everything is written and fsync'ed in a temporary sibling folder ".{name}.tmp-XXXXXX" that is
// renamed onto `out_dir` last, so on any error (bad GGUF, unsupported model, disk full) nothing
// is left behind and `out_dir` is untouched. Deterministic: the same GGUF and options give
// byte-identical files. Not safe to call concurrently for the same `out_dir` (the rename of the
// second fails cleanly).
absl::Status ImportGguf(const std::string& gguf_path, const std::string& out_dir,
                        const GgufImportOptions& options = {});

// The regular files under `out_dir` as RepoFiles, sorted by path ('/'-separated, relative):
// *.safetensors are LFS files (etag = sha256 of the content), the rest git files (etag = git blob
// sha1), as the Hub lists a repository. FAILED_PRECONDITION for a symlink or other non-regular
// entry, INVALID_ARGUMENT for a name ValidateRepoPath refuses, NOT_FOUND when `out_dir` does not
// exist.
absl::StatusOr<std::vector<RepoFile>> ListImportedFiles(const std::string& out_dir);

// The synthetic commit id of an imported repository: the git blob sha1 (40 lowercase hex) of the
// listing "path\0etag\n" for every file, sorted by path. Depends only on the content, so the same
// GGUF always imports as the same commit (and a different file set or content gives another).
std::string SyntheticCommit(const std::vector<RepoFile>& files);

}  // namespace shardserve::hub

#endif  // SHARDSERVE_HUB_SYNC_GGUF_IMPORT_H_
