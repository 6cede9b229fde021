#include "hub_sync/gguf_import.h"

#include <stdlib.h>
#include <unistd.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/json.h"
#include "common/mapped_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hub_sync/repo.h"
#include "tests/integration/subprocess.h"
#include "worker/model/config.h"
#include "worker/weights/dtype.h"
#include "worker/weights/gguf.h"
#include "worker/weights/gguf_test_util.h"
#include "worker/weights/model_weights.h"
#include "worker/weights/safetensors.h"

namespace shardserve::hub {
namespace {

namespace fs = std::filesystem;
using ::shardserve::testing::GgufBuilder;
using ::shardserve::testing::ModelsDir;
using ::shardserve::testing::RunProgram;
using ::shardserve::testing::RunResult;
using ::shardserve::testing::SourcePath;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kReferenceFiles[][32] = {"config.json",       "generation_config.json",
                                        "model.safetensors", "special_tokens_map.json",
                                        "tokenizer.json",    "tokenizer_config.json"};

// A fresh directory under $TEST_TMPDIR (else /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/gguf_import_test.XXXXXX");
    path_ = ::mkdtemp(tmpl.data()) != nullptr ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(absl::string_view name) const { return absl::StrCat(path_, "/", name); }
  // The entry names directly inside, sorted.
  std::vector<std::string> Entries() const {
    std::vector<std::string> names;
    for (const fs::directory_entry& e : fs::directory_iterator(path_)) {
      names.push_back(e.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

void WriteAll(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// An executable found on $PATH (posix_spawn does not search it).
std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path == nullptr ? "" : path, ':')) {
    std::string candidate = absl::StrCat(dir, "/", name);
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;
}

// The GGML type id of a dtype (inverse of DTypeFromGgmlType).
uint32_t GgmlTypeId(DType dtype) {
  for (uint32_t id = 0; id < 64; ++id) {
    if (DTypeFromGgmlType(id) == dtype) return id;
  }
  ADD_FAILURE() << "no GGML type id for " << DTypeName(dtype);
  return 0;
}

// The tokenizer metadata a test GGUF gets. The default is a valid SmolLM-style byte-level BPE
// vocabulary of 16 tokens (tiny_llama's vocab_size) with three control tokens.
struct TokenizerSpec {
  std::string model = "gpt2";
  std::optional<std::string> pre = "smollm";
  std::vector<std::string> tokens = {"<|endoftext|>",
                                     "<|im_start|>",
                                     "<|im_end|>",
                                     "h",
                                     "e",
                                     "l",
                                     "o",
                                     "\xC4\xA0",
                                     "w",
                                     "r",
                                     "d",
                                     "he",
                                     "ll",
                                     "hell",
                                     "hello",
                                     "\xC4\xA0w"};
  std::vector<std::string> merges = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w"};
  std::vector<int32_t> types = {3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  // Non-ASCII, quotes, a backslash and newlines: exercises the JSON string escapes.
  std::string chat_template =
      "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
      "{% endfor %}{# caf\xC3\xA9 \"q\" \\ \t #}";
};

// worker/weights/testdata/gguf/tiny_llama.gguf (2 layers, tensors in Q8_0 / Q4_0 / Q4_1 / Q5_0 /
// Q5_1 / F16 / BF16 / F32, Q and K rows permuted as llama.cpp writes them) with a tokenizer added:
// the committed file has only token strings, which the importer (like the reference converter)
// refuses. Its tensors and hyper-parameters are copied unchanged, so tiny_llama_hf/ (the same
// values, dequantized and un-permuted by the gguf package) stays the expected f32 output.
std::vector<uint8_t> TinyLlamaGguf(const TokenizerSpec& spec) {
  absl::StatusOr<std::unique_ptr<GgufFile>> src =
      GgufFile::Open(SourcePath("worker/weights/testdata/gguf/tiny_llama.gguf"));
  EXPECT_TRUE(src.ok()) << src.status();
  if (!src.ok()) return {};
  const GgufFile& f = **src;
  GgufBuilder b;
  b.String("general.architecture", "llama");
  b.String("general.name", "tiny");
  for (const char* key :
       {"llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.rope.dimension_count", "llama.vocab_size"}) {
    b.U32(key, static_cast<uint32_t>(*f.GetUint(key)));
  }
  for (const char* key : {"llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"}) {
    b.F32(key, static_cast<float>(*f.GetFloat(key)));
  }
  b.String("tokenizer.ggml.model", spec.model);
  if (spec.pre) b.String("tokenizer.ggml.pre", *spec.pre);
  b.StringArray("tokenizer.ggml.tokens", spec.tokens);
  b.I32Array("tokenizer.ggml.token_type", spec.types);
  b.StringArray("tokenizer.ggml.merges", spec.merges);
  b.Kv("tokenizer.ggml.add_bos_token", static_cast<uint32_t>(GgufType::kBool), {0});
  b.U32("tokenizer.ggml.bos_token_id", 1);
  b.U32("tokenizer.ggml.eos_token_id", 2);
  b.U32("tokenizer.ggml.unknown_token_id", 0);
  b.U32("tokenizer.ggml.padding_token_id", 2);
  b.String("tokenizer.chat_template", spec.chat_template);
  for (const TensorView& t : f.tensors()) {
    std::vector<uint64_t> dims(t.shape.rbegin(), t.shape.rend());
    b.Tensor(t.name, dims, GgmlTypeId(t.dtype),
             std::vector<uint8_t>(t.data, t.data + t.ByteSize()));
  }
  return b.Build();
}

std::string WriteTinyGguf(const TempDir& dir, const std::string& name,
                          const TokenizerSpec& spec = {}) {
  const std::vector<uint8_t> bytes = TinyLlamaGguf(spec);
  const std::string path = dir.Sub(name);
  WriteAll(path, absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  return path;
}

// Every tensor of safetensors file `got` has the name, dtype, shape and bytes it has in `want`.
void ExpectSameTensors(const std::string& got_path, const std::string& want_path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> got = SafetensorsFile::Open(got_path);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> want = SafetensorsFile::Open(want_path);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_EQ((*got)->tensors().size(), (*want)->tensors().size());
  for (const TensorView& w : (*want)->tensors()) {
    const TensorView* g = (*got)->Find(w.name);
    ASSERT_NE(g, nullptr) << w.name;
    EXPECT_EQ(g->dtype, w.dtype) << w.name;
    ASSERT_EQ(g->shape, w.shape) << w.name;
    ASSERT_EQ(g->ByteSize(), w.ByteSize()) << w.name;
    EXPECT_EQ(std::memcmp(g->data, w.data, w.ByteSize()), 0) << w.name << " differs";
  }
  EXPECT_EQ((*got)->metadata(), (*want)->metadata());
}

// python3 with `args`; its output is printed by the caller on failure.
RunResult Python(std::vector<std::string> args) {
  args.insert(args.begin(), FindOnPath("python3"));
  return RunProgram(args);
}

// Encodes every line of tests/fixtures/tokenizer/corpus.txt with two tokenizer.json files (the
// Hugging Face `tokenizers` package; special tokens off and on) and decodes the ids back; exits 1
// when any line differs.
constexpr char kCompareTokenizers[] = R"py(
import sys
sys.path.insert(0, "tests/fixtures/tokenizer")
import tokenizers
from make_expected import read_corpus
a = tokenizers.Tokenizer.from_file(sys.argv[1])
b = tokenizers.Tokenizer.from_file(sys.argv[2])
texts = read_corpus()
bad = 0
for text in texts:
    for special in (False, True):
        x = a.encode(text, add_special_tokens=special).ids
        y = b.encode(text, add_special_tokens=special).ids
        if x != y or a.decode(x, skip_special_tokens=False) != b.decode(y, skip_special_tokens=False):
            bad += 1
            if bad <= 3:
                print(f"differs: {text!r}: {x[:12]} vs {y[:12]}", file=sys.stderr)
print(f"{len(texts)} corpus lines, {bad} encodings differ")
sys.exit(1 if bad or not texts else 0)
)py";

// --- the tiny llama ----------------------------------------------------------------------------

TEST(GgufImportTest, TinyLlamaF32IsExactlyTheReferenceTensors) {
  TempDir dir;
  const std::string gguf = WriteTinyGguf(dir, "tiny.gguf");
  const std::string out = dir.Sub("out");
  ASSERT_TRUE(ImportGguf(gguf, out, {.dtype = "f32"}).ok());

  const std::string ref = SourcePath("worker/weights/testdata/gguf/tiny_llama_hf");
  ExpectSameTensors(out + "/model.safetensors", ref + "/model.safetensors");

  absl::StatusOr<ModelConfig> got = LoadHfConfig(out + "/config.json");
  absl::StatusOr<ModelConfig> want = LoadHfConfig(ref + "/config.json");
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(got->vocab_size, want->vocab_size);
  EXPECT_EQ(got->hidden_size, want->hidden_size);
  EXPECT_EQ(got->intermediate_size, want->intermediate_size);
  EXPECT_EQ(got->num_hidden_layers, want->num_hidden_layers);
  EXPECT_EQ(got->num_attention_heads, want->num_attention_heads);
  EXPECT_EQ(got->num_key_value_heads, want->num_key_value_heads);
  EXPECT_EQ(got->head_dim, want->head_dim);
  EXPECT_EQ(got->max_position_embeddings, want->max_position_embeddings);
  EXPECT_EQ(got->rms_norm_eps, want->rms_norm_eps);
  EXPECT_EQ(got->rope_theta, want->rope_theta);
  EXPECT_EQ(got->tie_word_embeddings, want->tie_word_embeddings);
  EXPECT_EQ(got->torch_dtype, "float32");
  EXPECT_EQ(got->bos_token_id, want->bos_token_id);
  EXPECT_EQ(got->eos_token_ids, want->eos_token_ids);
  EXPECT_THAT(dir.Entries(), ElementsAre("out", "tiny.gguf"));  // no temporary left
}

TEST(GgufImportTest, TinyLlamaMatchesThePythonConverterByteForByte) {
  TempDir dir;
  const std::string gguf = WriteTinyGguf(dir, "tiny.gguf");
  for (const char* dtype : {"f32", "bf16"}) {
    SCOPED_TRACE(dtype);
    const std::string ours = dir.Sub(absl::StrCat("ours_", dtype));
    const std::string theirs = dir.Sub(absl::StrCat("py_", dtype));
    ASSERT_TRUE(ImportGguf(gguf, ours, {.dtype = dtype}).ok());
    RunResult r = Python({"tests/fixtures/convert_gguf_to_hf.py", "--gguf", gguf, "--out", theirs,
                          "--dtype", dtype, "--reference-tokenizer", ""});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    for (const char* file : kReferenceFiles) {
      EXPECT_EQ(ReadAll(absl::StrCat(ours, "/", file)), ReadAll(absl::StrCat(theirs, "/", file)))
          << file << " differs from the converter's";
    }
    absl::StatusOr<std::vector<RepoFile>> a = ListImportedFiles(ours);
    absl::StatusOr<std::vector<RepoFile>> b = ListImportedFiles(theirs);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b);
    EXPECT_EQ(SyntheticCommit(*a), SyntheticCommit(*b));
  }
}

TEST(GgufImportTest, TinyLlamaJsonFilesHoldTheTokenizer) {
  TempDir dir;
  const std::string out = dir.Sub("out");
  ASSERT_TRUE(ImportGguf(WriteTinyGguf(dir, "tiny.gguf"), out).ok());
  const TokenizerSpec spec;

  absl::StatusOr<nlohmann::json> tok = ParseJsonFile(out + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)["model"]["type"], "BPE");
  EXPECT_EQ((*tok)["model"]["vocab"].size(), 16u);
  EXPECT_EQ((*tok)["model"]["vocab"]["hello"], 14);
  EXPECT_EQ((*tok)["model"]["merges"], nlohmann::json(spec.merges));
  ASSERT_EQ((*tok)["added_tokens"].size(), 3u);
  EXPECT_EQ((*tok)["added_tokens"][2]["content"], "<|im_end|>");
  EXPECT_EQ((*tok)["added_tokens"][2]["special"], true);
  EXPECT_EQ((*tok)["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");

  absl::StatusOr<nlohmann::json> cfg = ParseJsonFile(out + "/tokenizer_config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ((*cfg)["chat_template"], spec.chat_template);
  EXPECT_EQ((*cfg)["bos_token"], "<|im_start|>");
  EXPECT_EQ((*cfg)["eos_token"], "<|im_end|>");
  EXPECT_EQ((*cfg)["pad_token"], "<|im_end|>");
  EXPECT_EQ((*cfg)["unk_token"], "<|endoftext|>");
  EXPECT_EQ((*cfg)["add_bos_token"], false);
  EXPECT_EQ((*cfg)["model_max_length"], 128);
  EXPECT_EQ((*cfg)["added_tokens_decoder"]["1"]["content"], "<|im_start|>");

  absl::StatusOr<nlohmann::json> gen = ParseJsonFile(out + "/generation_config.json");
  ASSERT_TRUE(gen.ok()) << gen.status();
  EXPECT_EQ(*gen, nlohmann::json::parse(R"({"_from_model_config": true, "bos_token_id": 1,
                                             "eos_token_id": 2, "pad_token_id": 2})"));
  absl::StatusOr<nlohmann::json> map = ParseJsonFile(out + "/special_tokens_map.json");
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ((*map)["eos_token"]["content"], "<|im_end|>");
  EXPECT_EQ((*map)["unk_token"]["normalized"], false);
}

TEST(GgufImportTest, ImportIsDeterministic) {
  TempDir dir;
  const std::string gguf = WriteTinyGguf(dir, "tiny.gguf");
  ASSERT_TRUE(ImportGguf(gguf, dir.Sub("a")).ok());
  ASSERT_TRUE(ImportGguf(gguf, dir.Sub("b")).ok());
  ASSERT_TRUE(ImportGguf(gguf, dir.Sub("c"), {.dtype = "f32"}).ok());
  absl::StatusOr<std::vector<RepoFile>> a = ListImportedFiles(dir.Sub("a"));
  absl::StatusOr<std::vector<RepoFile>> b = ListImportedFiles(dir.Sub("b"));
  absl::StatusOr<std::vector<RepoFile>> c = ListImportedFiles(dir.Sub("c"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  const std::string commit = SyntheticCommit(*a);
  EXPECT_TRUE(IsCommitSha(commit)) << commit;
  EXPECT_EQ(SyntheticCommit(*b), commit);
  EXPECT_NE(SyntheticCommit(*c), commit);  // f32 weights are other content
}

// --- listing and the synthetic commit ---------------------------------------------------------

TEST(GgufImportTest, ListImportedFilesHashesAsTheHub) {
  TempDir dir;
  const std::string out = dir.Sub("out");
  ASSERT_TRUE(ImportGguf(WriteTinyGguf(dir, "tiny.gguf"), out).ok());
  absl::StatusOr<std::vector<RepoFile>> files = ListImportedFiles(out);
  ASSERT_TRUE(files.ok()) << files.status();
  std::vector<std::string> paths;
  for (const RepoFile& f : *files) {
    paths.push_back(f.path);
    const std::string content = ReadAll(absl::StrCat(out, "/", f.path));
    EXPECT_EQ(f.size, content.size()) << f.path;
    EXPECT_EQ(f.lfs, f.path == "model.safetensors") << f.path;
    EXPECT_EQ(f.etag, f.lfs ? Sha256Hex(content) : GitBlobSha1Hex(content)) << f.path;
    EXPECT_TRUE(IsValidEtag(f.etag)) << f.etag;
  }
  EXPECT_THAT(paths,
              ElementsAre("config.json", "generation_config.json", "model.safetensors",
                          "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"));

  fs::create_symlink("config.json", out + "/link.json");
  absl::StatusOr<std::vector<RepoFile>> bad = ListImportedFiles(out);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(bad.status().message(), HasSubstr("link.json"));

  absl::StatusOr<std::vector<RepoFile>> none = ListImportedFiles(dir.Sub("missing"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(none.status().message(), HasSubstr("missing"));
}

TEST(GgufImportTest, SyntheticCommitDependsOnContentNotOrder) {
  std::vector<RepoFile> files = {
      {"config.json", 10, std::string(40, 'a'), false},
      {"model.safetensors", 99, std::string(64, 'b'), true},
      {"sub/x.json", 3, std::string(40, 'c'), false},
  };
  const std::string commit = SyntheticCommit(files);
  EXPECT_TRUE(IsCommitSha(commit)) << commit;
  // The listing hashed: "path\0etag\n" per file, sorted by path, as a git blob.
  std::string listing;
  for (const RepoFile& f : files) listing += f.path + std::string(1, '\0') + f.etag + "\n";
  EXPECT_EQ(commit, GitBlobSha1Hex(listing));

  std::vector<RepoFile> reversed(files.rbegin(), files.rend());
  EXPECT_EQ(SyntheticCommit(reversed), commit);
  std::vector<RepoFile> changed = files;
  changed[1].etag[0] = 'c';
  EXPECT_NE(SyntheticCommit(changed), commit);
  std::vector<RepoFile> renamed = files;
  renamed[0].path = "config2.json";
  EXPECT_NE(SyntheticCommit(renamed), commit);
  EXPECT_NE(SyntheticCommit({}), commit);
}

// --- refusals: a clear error and nothing left behind --------------------------------------------

TEST(GgufImportTest, TruncatedGgufIsRefused) {
  TempDir dir;
  const std::string whole = ReadAll(WriteTinyGguf(dir, "tiny.gguf"));
  for (size_t keep : {size_t{0}, size_t{100}, whole.size() / 2, whole.size() - 1}) {
    SCOPED_TRACE(keep);
    const std::string path = dir.Sub("cut.gguf");
    WriteAll(path, absl::string_view(whole).substr(0, keep));
    absl::Status s = ImportGguf(path, dir.Sub("out"));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("cut.gguf"));
    EXPECT_THAT(dir.Entries(), ElementsAre("cut.gguf", "tiny.gguf"));
  }
}

TEST(GgufImportTest, MissingGgufIsNotFound) {
  TempDir dir;
  absl::Status s = ImportGguf(dir.Sub("nope.gguf"), dir.Sub("out"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("nope.gguf"));
  EXPECT_THAT(dir.Entries(), IsEmpty());
}

TEST(GgufImportTest, UnsupportedTokenizersAreRefused) {
  TempDir dir;
  struct Case {
    std::string name;
    TokenizerSpec spec;
    absl::StatusCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({"spm",
                   {},
                   absl::StatusCode::kUnimplemented,
                   "tokenizer.ggml.model is 'llama'; only 'gpt2'"});
  cases.back().spec.model = "llama";
  cases.push_back({"pre",
                   {},
                   absl::StatusCode::kUnimplemented,
                   "tokenizer.ggml.pre is 'llama-bpe'; only 'smollm'"});
  cases.back().spec.pre = "llama-bpe";
  cases.push_back(
      {"nopre", {}, absl::StatusCode::kUnimplemented, "tokenizer.ggml.pre is 'default'"});
  cases.back().spec.pre.reset();
  cases.push_back({"type",
                   {},
                   absl::StatusCode::kUnimplemented,
                   "token 5 'l' has token_type 2; only 1 (normal) and 3 (control)"});
  cases.back().spec.types[5] = 2;
  cases.push_back({"dup", {}, absl::StatusCode::kInvalidArgument, "duplicate"});
  cases.back().spec.tokens[4] = "h";
  cases.push_back({"types",
                   {},
                   absl::StatusCode::kInvalidArgument,
                   "token_type has 15 entries and tokenizer.ggml.tokens 16"});
  cases.back().spec.types.pop_back();
  cases.push_back({"utf8",
                   {},
                   absl::StatusCode::kInvalidArgument,
                   "tokenizer.ggml.tokens[6] is not valid UTF-8"});
  cases.back().spec.tokens[6] = "\xC3";
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string gguf = WriteTinyGguf(dir, "t.gguf", c.spec);
    absl::Status s = ImportGguf(gguf, dir.Sub("out"));
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
    EXPECT_THAT(s.message(), HasSubstr("t.gguf"));
    EXPECT_THAT(dir.Entries(), ElementsAre("t.gguf"));
  }

  // The committed tiny_llama.gguf has token strings but no merges or pre-tokenizer.
  absl::Status s =
      ImportGguf(SourcePath("worker/weights/testdata/gguf/tiny_llama.gguf"), dir.Sub("out"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
  EXPECT_THAT(s.message(), HasSubstr("tokenizer.ggml.pre"));
}

TEST(GgufImportTest, OutputMustBeNewOrEmpty) {
  TempDir dir;
  const std::string gguf = WriteTinyGguf(dir, "tiny.gguf");

  fs::create_directory(dir.Sub("full"));
  WriteAll(dir.Sub("full/keep.txt"), "mine");
  absl::Status s = ImportGguf(gguf, dir.Sub("full"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("is not empty"));
  EXPECT_EQ(ReadAll(dir.Sub("full/keep.txt")), "mine");

  WriteAll(dir.Sub("file"), "x");
  s = ImportGguf(gguf, dir.Sub("file"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("not a directory"));

  s = ImportGguf(gguf, dir.Sub("tiny"), {.dtype = "f16"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("dtype 'f16'"));
  EXPECT_THAT(dir.Entries(), ElementsAre("file", "full", "tiny.gguf"));

  // An existing empty directory is replaced; missing parents are created.
  fs::create_directory(dir.Sub("empty"));
  EXPECT_TRUE(ImportGguf(gguf, dir.Sub("empty")).ok());
  EXPECT_TRUE(fs::exists(dir.Sub("empty/model.safetensors")));
  EXPECT_TRUE(ImportGguf(gguf, dir.Sub("a/b/c/")).ok());
  EXPECT_TRUE(fs::exists(dir.Sub("a/b/c/config.json")));
  EXPECT_THAT(dir.Entries(), ElementsAre("a", "empty", "file", "full", "tiny.gguf"));
  EXPECT_EQ(fs::status(dir.Sub("a/b/c")).permissions() & fs::perms::all,
            fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                fs::perms::others_read | fs::perms::others_exec);
}

// --- the default model: SmolLM2-135M-Instruct Q4_1 -------------------------------------------

// Imports the default model once (bf16) for the tests below; the reference is the Python
// converter's output that scripts/setup.sh leaves in models/SmolLM2-135M-Instruct/.
class SmolLm2ImportTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    gguf_ = new std::string(ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf");
    ref_ = new std::string(ModelsDir() + "/SmolLM2-135M-Instruct");
    dir_ = new TempDir();
    out_ = new std::string(dir_->Sub("SmolLM2-135M-Instruct"));
    if (!fs::exists(*gguf_) || !fs::exists(*ref_ + "/model.safetensors")) return;
    const auto start = std::chrono::steady_clock::now();
    status_ = new absl::Status(ImportGguf(*gguf_, *out_));
    std::printf("import of %s (bf16): %.2f s\n", gguf_->c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  static void TearDownTestSuite() {
    delete dir_;
    delete gguf_;
    delete ref_;
    delete out_;
    delete status_;
    status_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(fs::exists(*gguf_)) << *gguf_ << ::shardserve::testing::kRunSetup;
    ASSERT_TRUE(fs::exists(*ref_ + "/model.safetensors"))
        << *ref_ << ::shardserve::testing::kRunSetup;
    ASSERT_NE(status_, nullptr);
    ASSERT_TRUE(status_->ok()) << *status_;
  }

  static std::string* gguf_;
  static std::string* ref_;
  static std::string* out_;
  static TempDir* dir_;
  static absl::Status* status_;
};
std::string* SmolLm2ImportTest::gguf_ = nullptr;
std::string* SmolLm2ImportTest::ref_ = nullptr;
std::string* SmolLm2ImportTest::out_ = nullptr;
TempDir* SmolLm2ImportTest::dir_ = nullptr;
absl::Status* SmolLm2ImportTest::status_ = nullptr;

TEST_F(SmolLm2ImportTest, MatchesThePythonConverter) {
  ExpectSameTensors(*out_ + "/model.safetensors", *ref_ + "/model.safetensors");
  for (const char* file : {"config.json", "generation_config.json", "tokenizer_config.json",
                           "special_tokens_map.json"}) {
    absl::StatusOr<nlohmann::json> got = ParseJsonFile(absl::StrCat(*out_, "/", file));
    absl::StatusOr<nlohmann::json> want = ParseJsonFile(absl::StrCat(*ref_, "/", file));
    ASSERT_TRUE(got.ok() && want.ok()) << file;
    EXPECT_EQ(*got, *want) << file;
  }
  // Stronger: every file is byte-identical, so the import has the reference's commit id.
  for (const char* file : kReferenceFiles) {
    EXPECT_TRUE(ReadAll(absl::StrCat(*out_, "/", file)) == ReadAll(absl::StrCat(*ref_, "/", file)))
        << file << " is not byte-identical to the converter's";
  }
  absl::StatusOr<std::vector<RepoFile>> ours = ListImportedFiles(*out_);
  absl::StatusOr<std::vector<RepoFile>> theirs = ListImportedFiles(*ref_);
  ASSERT_TRUE(ours.ok()) << ours.status();
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ(SyntheticCommit(*ours), SyntheticCommit(*theirs));
}

TEST_F(SmolLm2ImportTest, TokenizerEncodesTheCorpusAsTheReference) {
  RunResult r =
      Python({"-c", kCompareTokenizers, *out_ + "/tokenizer.json", *ref_ + "/tokenizer.json"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr(", 0 encodings differ"));

  // The check can fail: without its last 20000 merges the tokenizer encodes differently.
  absl::StatusOr<nlohmann::json> tok = ParseJsonFile(*out_ + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  nlohmann::json& merges = (*tok)["model"]["merges"];
  merges.erase(merges.end() - 20000, merges.end());
  const std::string broken = dir_->Sub("broken_tokenizer.json");
  WriteAll(broken, DumpJson(*tok));
  r = Python({"-c", kCompareTokenizers, broken, *ref_ + "/tokenizer.json"});
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("differs"));
}

TEST_F(SmolLm2ImportTest, LoadsAsModelWeightsWithTheGgufValuesInBf16) {
  absl::StatusOr<std::unique_ptr<ModelWeights>> hf = ModelWeights::Open(*out_);
  absl::StatusOr<std::unique_ptr<ModelWeights>> gguf = ModelWeights::Open(*gguf_);
  ASSERT_TRUE(hf.ok()) << hf.status();
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ((*hf)->format(), WeightFormat::kSafetensors);
  EXPECT_EQ((*hf)->config().torch_dtype, "bfloat16");
  EXPECT_EQ((*hf)->config().num_key_value_heads, 3);
  EXPECT_TRUE((*hf)->config().tie_word_embeddings);
  ASSERT_EQ((*hf)->TensorNames(), (*gguf)->TensorNames());
  for (const std::string& name : (*gguf)->TensorNames()) {
    absl::StatusOr<std::vector<float>> got = (*hf)->DequantizeF32(name);
    absl::StatusOr<std::vector<float>> want = (*gguf)->DequantizeF32(name);
    ASSERT_TRUE(got.ok() && want.ok()) << name;
    ASSERT_EQ(got->size(), want->size()) << name;
    size_t mismatches = 0;
    for (size_t i = 0; i < want->size(); ++i) {
      // bfloat16 round to nearest even, written out independently of the importer.
      const uint32_t bits = std::bit_cast<uint32_t>((*want)[i]);
      const uint32_t lower = bits & 0xFFFFu;
      uint32_t upper = bits >> 16;
      if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) ++upper;
      if (std::bit_cast<uint32_t>((*got)[i]) != (upper << 16)) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0u) << name;
  }
}

}  // namespace
}  // namespace shardserve::hub
