#include "worker/text/tokenizer.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/text/regex.h"
#include "worker/text/unicode.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

// --- fixtures ------------------------------------------------------------------------------------

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}

// shared/reference/tokenizers lives beside the repository (CI clones it there).
std::string RefDir() {
  const std::string dir = SourceDir() + "/../shared/reference/tokenizers";
  if (!std::filesystem::exists(dir + "/SOURCES.md")) {
    ADD_FAILURE() << "reference tokenizers not found at " << dir
                  << ": check out shared/ beside the repository (SHARDSERVE_SOURCE_DIR/../shared)";
  }
  return dir;
}

std::string FixtureDir() { return SourceDir() + "/tests/fixtures/tokenizer"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json ReadJson(const std::string& path) {
  auto j = ParseJsonFile(path);
  EXPECT_TRUE(j.ok()) << j.status();
  return j.ok() ? *std::move(j) : nlohmann::json();
}

// corpus.txt: one string per line; "#|" lines are comments; escapes \n \t \r \\ \u{HEX}.
std::vector<std::string> ReadCorpus() {
  const std::string raw = ReadFile(FixtureDir() + "/corpus.txt");
  std::vector<std::string> lines = absl::StrSplit(raw, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::vector<std::string> out;
  for (const std::string& line : lines) {
    if (line.rfind("#|", 0) == 0) continue;
    std::string s;
    for (size_t i = 0; i < line.size(); ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) {
        const char c = line[i + 1];
        if (c == 'n' || c == 't' || c == 'r' || c == '\\') {
          s.push_back(c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : '\\');
          ++i;
          continue;
        }
        if (c == 'u' && i + 2 < line.size() && line[i + 2] == '{') {
          const size_t close = line.find('}', i + 3);
          if (close != std::string::npos && close > i + 3 && close - (i + 3) <= 6) {
            text::AppendUtf8(
                static_cast<char32_t>(std::stoul(line.substr(i + 3, close - (i + 3)), nullptr, 16)),
                &s);
            i = close;
            continue;
          }
        }
      }
      s.push_back(line[i]);
    }
    out.push_back(std::move(s));
  }
  return out;
}

const std::vector<std::string>& Corpus() {
  static const auto* corpus = new std::vector<std::string>(ReadCorpus());
  return *corpus;
}

// Reference tokenizers are loaded once per test binary; null (and a test failure) if missing.
const Tokenizer* Load(const std::string& name) {
  static std::mutex mu;
  static auto* cache = new std::map<std::string, std::unique_ptr<Tokenizer>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = (*cache)[name];
  if (slot == nullptr) {
    auto tok = Tokenizer::FromFile(RefDir() + "/" + name + ".tokenizer.json");
    if (!tok.ok()) {
      ADD_FAILURE() << tok.status();
      return nullptr;
    }
    slot = *std::move(tok);
  }
  return slot.get();
}

std::vector<int32_t> Ids(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

std::string Show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) absl::StrAppend(&s, i ? ", " : "", ids[i]);
  return s + "]";
}

std::string StreamDecode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip) {
  StreamDecoder stream = tok.NewStreamDecoder(skip);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = stream.Step(id);
    EXPECT_TRUE(text::IsValidUtf8(piece));
    out += piece;
  }
  out += stream.Finish();
  return out;
}

// Checks one expected-entry list (expected_<name>.json format) against `tok`; returns the number
// of corpus lines that matched in every respect.
int CheckEntries(const Tokenizer& tok, const nlohmann::json& entries, const std::string& label) {
  const auto& corpus = Corpus();
  int matched = 0, reported = 0;
  for (size_t k = 0; k < entries.size(); ++k) {
    const nlohmann::json& e = entries[k];
    const size_t line = e.contains("line") ? e["line"].get<size_t>() : k;
    const std::string& text = corpus.at(line);
    const std::vector<int32_t> ids = Ids(e["ids"]);
    std::vector<int32_t> ids_special = ids;
    if (e.contains("ids_special")) {
      ids_special = Ids(e["ids_special"]);
    } else {
      if (e.contains("special_prefix")) {
        ids_special = Ids(e["special_prefix"]);
        ids_special.insert(ids_special.end(), ids.begin(), ids.end());
      }
      if (e.contains("special_suffix")) {
        auto suffix = Ids(e["special_suffix"]);
        ids_special.insert(ids_special.end(), suffix.begin(), suffix.end());
      }
    }
    const std::string decoded = e.value("decoded", text);
    const std::string decoded_special = e.value("decoded_special", decoded);
    const std::string decoded_skip = e.value("decoded_skip", decoded);

    std::vector<std::string> problems;
    const auto got = tok.Encode(text, false);
    if (got != ids) problems.push_back("encode " + Show(got) + " want " + Show(ids));
    const auto got_special = tok.Encode(text, true);
    if (got_special != ids_special) {
      problems.push_back("encode(special) " + Show(got_special) + " want " + Show(ids_special));
    }
    if (tok.Decode(ids, false) != decoded) {
      problems.push_back("decode '" + tok.Decode(ids, false) + "' want '" + decoded + "'");
    }
    if (tok.Decode(ids_special, false) != decoded_special) {
      problems.push_back("decode(special) '" + tok.Decode(ids_special, false) + "'");
    }
    if (tok.Decode(ids_special, true) != decoded_skip) {
      problems.push_back("decode(skip) '" + tok.Decode(ids_special, true) + "'");
    }
    for (bool skip : {false, true}) {
      if (StreamDecode(tok, ids_special, skip) != tok.Decode(ids_special, skip)) {
        problems.push_back(absl::StrCat("stream decode (skip=", skip, ") differs"));
      }
    }
    if (problems.empty()) {
      ++matched;
    } else if (reported++ < 8) {
      ADD_FAILURE() << label << " line " << line << " '" << text
                    << "': " << absl::StrJoin(problems, "; ");
    }
  }
  return matched;
}

void CheckRandom(const Tokenizer& tok, const nlohmann::json& seqs, const std::string& label) {
  for (const auto& r : seqs) {
    const auto ids = Ids(r["ids"]);
    EXPECT_EQ(tok.Decode(ids, false), r["decoded"].get<std::string>()) << label << Show(ids);
    EXPECT_EQ(tok.Decode(ids, true), r["decoded_skip"].get<std::string>()) << label << Show(ids);
    EXPECT_EQ(StreamDecode(tok, ids, false), tok.Decode(ids, false)) << label << Show(ids);
    EXPECT_EQ(StreamDecode(tok, ids, true), tok.Decode(ids, true)) << label << Show(ids);
  }
}

// --- the reference tokenizers on the corpus ----------------------------------------------------

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, CorpusMatchesHuggingFace) {
  const std::string name = GetParam();
  ASSERT_NE(Load(name), nullptr);
  const Tokenizer& tok = *Load(name);
  const nlohmann::json expected = ReadJson(FixtureDir() + "/expected_" + name + ".json");
  ASSERT_EQ(expected["corpus_lines"].get<size_t>(), Corpus().size())
      << "corpus.txt changed: rerun tests/fixtures/tokenizer/make_expected.py";
  EXPECT_EQ(tok.vocab_size(), expected["vocab_size"].get<int32_t>());
  const int matched = CheckEntries(tok, expected["entries"], name);
  std::cout << name << ": " << matched << "/" << expected["entries"].size()
            << " corpus lines identical (encode, encode+special, decode x3, stream decode)\n";
  EXPECT_EQ(matched, static_cast<int>(expected["entries"].size()));
  CheckRandom(tok, expected["random"], name + " random ");
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ReferenceTest,
                         ::testing::Values("SmolLM2-135M-Instruct", "Meta-Llama-3-8B",
                                           "Mistral-7B-v0.1", "TinyLlama-1.1B-Chat-v1.0",
                                           "Phi-3-mini-4k-instruct"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s) {
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return s;
                         });

// llama.cpp's tokenizer test vectors (ids from HF AutoTokenizer, add_special_tokens=False).
TEST(LlamaCppVectors, MatchHuggingFaceIds) {
  const std::string inp = ReadFile(RefDir() + "/vectors/llama.cpp-vocab-tests.inp");
  std::vector<std::string> texts = absl::StrSplit(inp, "\n__ggml_vocab_test__\n");
  texts.pop_back();  // after the last separator
  ASSERT_EQ(texts.size(), 46u);
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"Meta-Llama-3-8B", "llama.cpp-vocab-llama-bpe.out"},
      {"TinyLlama-1.1B-Chat-v1.0", "llama.cpp-vocab-llama-spm.out"},
      {"Phi-3-mini-4k-instruct", "llama.cpp-vocab-llama-spm.out"}};
  for (const auto& [name, out_file] : pairs) {
    std::vector<std::string> lines =
        absl::StrSplit(ReadFile(RefDir() + "/vectors/" + out_file), '\n');
    lines.pop_back();
    ASSERT_EQ(lines.size(), texts.size());
    int matched = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
      std::vector<int32_t> want;
      for (absl::string_view s : absl::StrSplit(lines[i], ' ', absl::SkipEmpty())) {
        want.push_back(std::stoi(std::string(s)));
      }
      ASSERT_NE(Load(name), nullptr);
      const auto got = Load(name)->Encode(texts[i], false);
      EXPECT_EQ(got, want) << name << " vector " << i << " '" << texts[i] << "'";
      matched += got == want;
    }
    std::cout << name << " vs " << out_file << ": " << matched << "/" << texts.size() << "\n";
  }
}

// shared/reference/tokenizers/expected_encodings.json.
TEST(ExpectedEncodings, MatchHuggingFace) {
  const nlohmann::json expected = ReadJson(RefDir() + "/expected_encodings.json");
  for (const auto& [file, info] : expected["tokenizers"].items()) {
    const std::string name = file.substr(0, file.size() - std::string(".tokenizer.json").size());
    ASSERT_NE(Load(name), nullptr);
    const Tokenizer& tok = *Load(name);
    EXPECT_EQ(tok.vocab_size(), info["vocab_size_with_added"].get<int32_t>()) << name;
    for (const auto& e : info["encodings"]) {
      const std::string text = e["text"];
      EXPECT_EQ(tok.Encode(text, false), Ids(e["ids"])) << name << " '" << text << "'";
      EXPECT_EQ(tok.Encode(text, true), Ids(e["ids_with_special_tokens"])) << name << " " << text;
      EXPECT_EQ(tok.Decode(Ids(e["ids"]), false), e["decoded"].get<std::string>()) << name;
      std::vector<std::string> tokens;
      for (int32_t id : tok.Encode(text, true)) tokens.push_back(*tok.IdToToken(id));
      EXPECT_EQ(tokens, e["tokens_with_special_tokens"].get<std::vector<std::string>>()) << name;
    }
  }
}

// --- derived tokenizers (components the real files do not use) --------------------------------

std::unique_ptr<Tokenizer> BuildVariant(const nlohmann::json& recipe) {
  nlohmann::json j;
  if (recipe.contains("inline")) {
    j = recipe["inline"];
  } else {
    j = ReadJson(RefDir() + "/" + recipe["base"].get<std::string>() + ".tokenizer.json");
    if (recipe.contains("replace")) {
      for (const auto& [k, v] : recipe["replace"].items()) j[k] = v;
    }
    if (recipe.contains("model_patch")) {
      for (const auto& [k, v] : recipe["model_patch"].items()) j["model"][k] = v;
    }
    if (recipe.value("merges_as_pairs", false)) {
      for (auto& m : j["model"]["merges"]) {
        std::vector<std::string> parts = absl::StrSplit(m.get<std::string>(), ' ');
        m = parts;
      }
    }
    if (recipe.contains("append_added_tokens")) {
      for (const auto& t : recipe["append_added_tokens"]) j["added_tokens"].push_back(t);
    }
  }
  auto tok = Tokenizer::FromJsonValue(j, recipe["name"].get<std::string>());
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(Variants, MatchHuggingFace) {
  const nlohmann::json expected = ReadJson(FixtureDir() + "/expected_variants.json");
  ASSERT_EQ(expected["corpus_lines"].get<size_t>(), Corpus().size());
  for (const auto& recipe : expected["variants"]) {
    const std::string name = recipe["name"];
    auto tok = BuildVariant(recipe);
    ASSERT_NE(tok, nullptr) << name;
    EXPECT_EQ(tok->vocab_size(), recipe["vocab_size"].get<int32_t>()) << name;
    const int matched = CheckEntries(*tok, recipe["entries"], name);
    std::cout << "variant " << name << ": " << matched << "/" << recipe["entries"].size()
              << " lines identical\n";
    EXPECT_EQ(matched, static_cast<int>(recipe["entries"].size())) << name;
    CheckRandom(*tok, recipe["random"], name + " random ");
  }
}

// --- GGUF vocabularies ---------------------------------------------------------------------------

// A GgufVocab filled from a tokenizer.json, as llama.cpp's converter would: tokens by id,
// types 3 (control) for special added tokens, merges as "a b" strings.
GgufVocab GgufFromJson(const std::string& name) {
  const nlohmann::json j = ReadJson(RefDir() + "/" + name + ".tokenizer.json");
  GgufVocab v;
  size_t n = 0;
  for (const auto& [token, id] : j["model"]["vocab"].items())
    n = std::max<size_t>(n, id.get<size_t>() + 1);
  for (const auto& t : j["added_tokens"]) n = std::max<size_t>(n, t["id"].get<size_t>() + 1);
  v.tokens.resize(n);
  v.token_types.assign(n, 1);
  for (const auto& [token, id] : j["model"]["vocab"].items()) v.tokens[id.get<size_t>()] = token;
  for (const auto& t : j["added_tokens"]) {
    v.tokens[t["id"].get<size_t>()] = t["content"].get<std::string>();
    v.token_types[t["id"].get<size_t>()] = t["special"].get<bool>() ? 3 : 4;
  }
  for (const auto& m : j["model"]["merges"]) {
    v.merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  return v;
}

// For "llama" (SentencePiece) vocabularies: scores are -rank of the first merge producing each
// token, so that highest-score-first merging follows the merge list. (llama.cpp's real GGUF
// scores for SPM are the SentencePiece model's piece scores, which order merges the same way;
// this rebuilds an equivalent from tokenizer.json alone.) <unk> is type 2, <s> </s> type 3,
// <0xNN> type 6.
GgufVocab SpmGgufFromJson(const std::string& name) {
  GgufVocab v = GgufFromJson(name);
  v.model = "llama";
  v.pre = "default";
  std::map<std::string, size_t> first_rank;
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const size_t space = v.merges[r].find(' ');
    first_rank.try_emplace(v.merges[r].substr(0, space) + v.merges[r].substr(space + 1), r);
  }
  v.scores.resize(v.tokens.size());
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    auto it = first_rank.find(v.tokens[id]);
    v.scores[id] = it != first_rank.end() ? -static_cast<float>(it->second)
                                          : -static_cast<float>(v.merges.size() + id);
    const std::string& t = v.tokens[id];
    if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') v.token_types[id] = 6;
  }
  v.token_types[0] = 2;
  v.merges.clear();
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_space_prefix = true;
  return v;
}

int CompareWithExpected(const Tokenizer& tok, const std::string& name, bool with_special) {
  const nlohmann::json expected = ReadJson(FixtureDir() + "/expected_" + name + ".json");
  int matched = 0, reported = 0;
  for (size_t i = 0; i < Corpus().size(); ++i) {
    const auto& e = expected["entries"][i];
    std::vector<int32_t> want = Ids(e["ids"]);
    bool ok = tok.Encode(Corpus()[i], false) == want;
    if (with_special && e.contains("special_prefix")) {
      auto p = Ids(e["special_prefix"]);
      want.insert(want.begin(), p.begin(), p.end());
      ok = ok && tok.Encode(Corpus()[i], true) == want;
    }
    ok = ok && tok.Decode(Ids(e["ids"]), false) == e.value("decoded", Corpus()[i]);
    if (ok) {
      ++matched;
    } else if (reported++ < 5) {
      ADD_FAILURE() << name << " (GGUF) line " << i << " '" << Corpus()[i] << "': got "
                    << Show(tok.Encode(Corpus()[i], false)) << " want " << Show(Ids(e["ids"]));
    }
  }
  std::cout << name << " from GGUF vocab: " << matched << "/" << Corpus().size() << "\n";
  return matched;
}

TEST(GgufVocab, SmolLM2MatchesTokenizerJson) {
  GgufVocab v = GgufFromJson("SmolLM2-135M-Instruct");
  v.model = "gpt2";
  v.pre = "smollm";
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  v.pad_id = 2;
  for (int id = 0; id < 17; ++id) EXPECT_EQ(v.token_types[id], 3);
  auto tok = Tokenizer::FromGgufVocab(v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 49152);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ(CompareWithExpected(**tok, "SmolLM2-135M-Instruct", false),
            static_cast<int>(Corpus().size()));
}

TEST(GgufVocab, Llama3MatchesTokenizerJson) {
  GgufVocab v = GgufFromJson("Meta-Llama-3-8B");
  v.model = "gpt2";
  v.pre = "llama-bpe";
  auto tok = Tokenizer::FromGgufVocab(v);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(CompareWithExpected(**tok, "Meta-Llama-3-8B", false),
            static_cast<int>(Corpus().size()));
}

TEST(GgufVocab, LlamaSpmMatchesTinyLlama) {
  auto tok = Tokenizer::FromGgufVocab(SpmGgufFromJson("TinyLlama-1.1B-Chat-v1.0"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ(CompareWithExpected(**tok, "TinyLlama-1.1B-Chat-v1.0", true),
            static_cast<int>(Corpus().size()));
}

// Mistral's tokenizer.json uses Metaspace(prepend_scheme=first), which a GGUF "llama" vocabulary
// cannot express (llama.cpp prefixes a space after every special token, like the Llama-2 files).
// So the GGUF build is compared with the tokenizer.json pipeline given Llama-2's normalizer.
TEST(GgufVocab, LlamaSpmMatchesMistralWithLegacyNormalizer) {
  nlohmann::json j = ReadJson(RefDir() + "/Mistral-7B-v0.1.tokenizer.json");
  j["pre_tokenizer"] = nullptr;
  j["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\u2581"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}};
  auto json_tok = Tokenizer::FromJsonValue(j, "mistral-legacy");
  ASSERT_TRUE(json_tok.ok()) << json_tok.status();
  auto gguf_tok = Tokenizer::FromGgufVocab(SpmGgufFromJson("Mistral-7B-v0.1"));
  ASSERT_TRUE(gguf_tok.ok()) << gguf_tok.status();
  int matched = 0;
  for (const std::string& text : Corpus()) {
    const auto want = (*json_tok)->Encode(text, true);
    const auto got = (*gguf_tok)->Encode(text, true);
    EXPECT_EQ(got, want) << "'" << text << "'";
    matched += got == want && (*gguf_tok)->Decode(got, false) == (*json_tok)->Decode(want, false);
  }
  std::cout << "Mistral from GGUF vocab vs tokenizer.json (legacy normalizer): " << matched << "/"
            << Corpus().size() << "\n";
  EXPECT_EQ(matched, static_cast<int>(Corpus().size()));
}

TEST(GgufVocab, DefaultPreIsGpt2Regex) {
  GgufVocab v = GgufFromJson("SmolLM2-135M-Instruct");
  v.model = "gpt2";
  v.pre = "default";
  auto gguf_tok = Tokenizer::FromGgufVocab(v);
  ASSERT_TRUE(gguf_tok.ok()) << gguf_tok.status();
  nlohmann::json j = ReadJson(RefDir() + "/SmolLM2-135M-Instruct.tokenizer.json");
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  auto json_tok = Tokenizer::FromJsonValue(j, "smollm2-gpt2-regex");
  ASSERT_TRUE(json_tok.ok()) << json_tok.status();
  for (const std::string& text : Corpus()) {
    EXPECT_EQ((*gguf_tok)->Encode(text, false), (*json_tok)->Encode(text, false)) << text;
  }
  // " ½": the plain GPT-2 regex keeps the space with the number character.
  EXPECT_EQ((*gguf_tok)->Encode(" \xC2\xBD", false), (std::vector<int32_t>{3351, 138}));
}

TEST(GgufVocab, Errors) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = "smollm";
  auto empty = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(empty.status().message(), HasSubstr("tokenizer.ggml.tokens is empty"));

  v.tokens = {"a", "b", "ab"};
  v.merges = {"a b"};
  v.pre = "qwen2";
  auto pre = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(pre.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(pre.status().message(), HasSubstr("unsupported tokenizer.ggml.pre 'qwen2'"));

  v.pre = "default";
  v.model = "bert";
  auto model = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(model.status().message(), HasSubstr("unsupported tokenizer.ggml.model 'bert'"));

  v.model = "gpt2";
  v.merges = {"a b c"};
  auto merges = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(merges.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(merges.status().message(), HasSubstr("tokenizer.ggml.merges[0]: invalid merge"));

  v.merges = {"a c"};
  auto oov = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(oov.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(oov.status().message(), HasSubstr("token 'c' is not in the vocab"));

  v.merges = {"a b"};
  v.token_types = {1, 1};
  auto types = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(types.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(types.status().message(), HasSubstr("token_type has 2 entries for 3 tokens"));

  v.token_types.clear();
  v.bos_id = 7;
  auto bos = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(bos.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bos.status().message(), HasSubstr("bos token id 7 is outside the vocabulary"));

  v.bos_id = -1;
  v.model = "llama";
  auto scores = Tokenizer::FromGgufVocab(v);
  EXPECT_EQ(scores.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(scores.status().message(), HasSubstr("needs tokenizer.ggml.scores"));
}

// --- error cases for tokenizer.json ------------------------------------------------------------

// A tiny but complete byte-level BPE tokenizer.json.
nlohmann::json TinyJson() {
  return nlohmann::json::parse(R"({
    "added_tokens": [{"id": 5, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "Ġab": 4, "<s>": 5},
              "merges": ["a b", "Ġ ab"]}})");
}

absl::Status LoadStatus(const nlohmann::json& j) {
  return Tokenizer::FromJsonValue(j, "test.json").status();
}

TEST(TokenizerJson, TinyTokenizerWorks) {
  auto tok = Tokenizer::FromJsonValue(TinyJson(), "test.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->Encode("ab ab<s>", true), (std::vector<int32_t>{2, 4, 5}));
  EXPECT_EQ((*tok)->Decode({2, 4, 5}, false), "ab ab<s>");
  EXPECT_EQ((*tok)->Decode({2, 4, 5}, true), "ab ab");
  EXPECT_TRUE((*tok)->IsSpecial(5));
  EXPECT_FALSE((*tok)->IsSpecial(2));
  EXPECT_EQ((*tok)->TokenToId("Ġab"), 4);
  EXPECT_EQ((*tok)->IdToToken(4), "Ġab");
  EXPECT_EQ((*tok)->IdToToken(99), std::nullopt);
  EXPECT_EQ((*tok)->vocab_size(), 6);
}

TEST(TokenizerJson, UnsupportedPreTokenizer) {
  nlohmann::json j = TinyJson();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Whitespace"}}}}};
  const absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("test.json: pre_tokenizer.pretokenizers[0]: unsupported "
                                     "pre_tokenizer type 'Whitespace'"));
}

TEST(TokenizerJson, UnsupportedNormalizerDecoderPostProcessor) {
  nlohmann::json j = TinyJson();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(LoadStatus(j).message(),
              HasSubstr("test.json: normalizer: unsupported normalizer type 'BertNormalizer'"));
  j = TinyJson();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("unsupported decoder type 'WordPiece'"));
  j = TinyJson();
  j["post_processor"] = {{"type", "Mystery"}};
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("unsupported post_processor type 'Mystery'"));
}

TEST(TokenizerJson, UnknownModelType) {
  nlohmann::json j = TinyJson();
  j["model"]["type"] = "Unigram";
  const absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("test.json: model: unsupported model type 'Unigram'"));
}

TEST(TokenizerJson, MalformedMerges) {
  nlohmann::json j = TinyJson();
  j["model"]["merges"] = {"a b", "a  b"};
  absl::Status s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("test.json: model: merges[1]: invalid merge 'a  b'"));

  j["model"]["merges"] = {"a b", {"a", "b", "c"}};
  s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("merges[1]: invalid merge [\"a\",\"b\",\"c\"]"));

  j["model"]["merges"] = {"a x"};
  s = LoadStatus(j);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("merge 0 ('a' 'x'): token 'x' is not in the vocab"));

  j["model"]["merges"] = {"b a"};
  s = LoadStatus(j);
  EXPECT_THAT(s.message(), HasSubstr("merge 0 ('b' 'a'): result 'ba' is not in the vocab"));
}

TEST(TokenizerJson, OtherErrors) {
  nlohmann::json j = TinyJson();
  j["model"]["unk_token"] = "<unk>";
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("unk_token '<unk>' is not in the vocab"));
  j = TinyJson();
  j["model"]["dropout"] = 0.1;
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("dropout is not supported"));
  j = TinyJson();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_EQ(LoadStatus(j).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("invalid regex '(unclosed'"));
  j = TinyJson();
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}};
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("unsupported Split behavior 'Sideways'"));
  j = TinyJson();
  j["model"]["vocab"]["a"] = "zero";
  EXPECT_THAT(LoadStatus(j).message(),
              HasSubstr("vocab['a']: id must be an integer in [0, 16777215]"));
  j = TinyJson();
  j["model"]["vocab"]["a"] = 3000000000LL;
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("vocab['a']: id must be an integer"));
  j = TinyJson();
  nlohmann::json nested = {{"type", "NFC"}};
  for (int i = 0; i < 100; ++i) {
    nested = {{"type", "Sequence"}, {"normalizers", {nested}}};
  }
  j["normalizer"] = nested;
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("components nested too deeply"));
  j = TinyJson();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "ab"}};
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("'replacement' must be a single character"));
  j = TinyJson();
  j.erase("model");
  EXPECT_THAT(LoadStatus(j).message(), HasSubstr("missing 'model'"));

  auto bad_json = Tokenizer::FromJson("{\"model\": ", "broken.json");
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_json.status().message(), HasSubstr("broken.json"));
  auto missing = Tokenizer::FromFile("/nonexistent/tokenizer.json");
  EXPECT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/tokenizer.json"));
}

// --- streaming -----------------------------------------------------------------------------------

TEST(StreamDecoder, HoldsPartialUtf8ByteLevel) {
  ASSERT_NE(Load("SmolLM2-135M-Instruct"), nullptr);
  const Tokenizer& tok = *Load("SmolLM2-135M-Instruct");
  // "👩‍👩‍👧‍👦 family": the emoji is split over byte-level tokens.
  const std::vector<int32_t> ids = {10813, 235, 119, 321, 231, 10813, 235, 119, 321, 231,
                                    10813, 235, 117, 321, 231, 10813, 235, 116, 1564};
  StreamDecoder stream = tok.NewStreamDecoder(false);
  EXPECT_EQ(stream.Step(10813), "");  // F0 9F: incomplete
  EXPECT_EQ(stream.Step(235), "");
  EXPECT_EQ(stream.Step(119), "\xF0\x9F\x91\xA9");  // 👩
  std::string rest;
  for (size_t i = 3; i < ids.size(); ++i) rest += stream.Step(ids[i]);
  rest += stream.Finish();
  EXPECT_EQ("\xF0\x9F\x91\xA9" + rest, tok.Decode(ids, false));
  // Garbage at the end: a lone lead byte is flushed as U+FFFD by Finish.
  EXPECT_EQ(stream.Step(10813), "");
  EXPECT_EQ(stream.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode({10813}, false), "\xEF\xBF\xBD");
}

TEST(StreamDecoder, SentencePieceSpacesAndByteFallback) {
  ASSERT_NE(Load("TinyLlama-1.1B-Chat-v1.0"), nullptr);
  const Tokenizer& tok = *Load("TinyLlama-1.1B-Chat-v1.0");
  // "<s> Hello": BOS, "▁Hello"; the leading-space strip applies to the whole text only.
  StreamDecoder stream = tok.NewStreamDecoder(false);
  EXPECT_EQ(stream.Step(1), "<s>");
  EXPECT_EQ(stream.Step(15043), " Hello");
  EXPECT_EQ(stream.Finish(), "");
  StreamDecoder skip = tok.NewStreamDecoder(true);
  EXPECT_EQ(skip.Step(1), "");
  EXPECT_EQ(skip.Step(15043), "Hello");
  EXPECT_EQ(skip.Step(3186), " world");
  EXPECT_EQ(skip.Finish(), "");
  // Byte-fallback tokens <0xE6><0x97><0xA5> (日) are held until the run ends.
  const int32_t e6 = *tok.TokenToId("<0xE6>"), x97 = *tok.TokenToId("<0x97>"),
                a5 = *tok.TokenToId("<0xA5>");
  EXPECT_EQ(stream.Step(e6), "");
  EXPECT_EQ(stream.Step(x97), "");
  EXPECT_EQ(stream.Step(a5), "");
  EXPECT_EQ(stream.Step(3186), "\xE6\x97\xA5 world");
  // An invalid run becomes one U+FFFD per byte, as Decode does.
  EXPECT_EQ(stream.Step(e6), "");
  EXPECT_EQ(stream.Step(x97), "");
  EXPECT_EQ(stream.Finish(), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(tok.Decode({e6, x97}, false), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StreamDecoder, RandomSequencesEqualDecode) {
  uint64_t state = 12345;
  auto next = [&state](uint64_t n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (state >> 33) % n;
  };
  for (const char* name : {"SmolLM2-135M-Instruct", "Mistral-7B-v0.1", "Phi-3-mini-4k-instruct"}) {
    ASSERT_NE(Load(name), nullptr);
    const Tokenizer& tok = *Load(name);
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<int32_t> ids(1 + next(30));
      for (int32_t& id : ids) {
        // Low ids are specials and byte tokens: make them frequent.
        id = static_cast<int32_t>(next(4) == 0 ? next(300) : next(tok.vocab_size() + 3));
      }
      for (bool skip : {false, true}) {
        EXPECT_EQ(StreamDecode(tok, ids, skip), tok.Decode(ids, skip)) << name << Show(ids);
      }
    }
  }
}

// --- lower layers --------------------------------------------------------------------------------

TEST(Utf8, LossyConversionMatchesRust) {
  // One U+FFFD per maximal ill-formed subpart (String::from_utf8_lossy).
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(text::ToValidUtf8("a\xF0\x9F\x98"
                              "b"),
            "a" + r + "b");
  EXPECT_EQ(text::ToValidUtf8("\xE0\x80\x80"), r + r + r);
  EXPECT_EQ(text::ToValidUtf8("\xED\xA0\x80"), r + r + r);  // surrogate
  EXPECT_EQ(text::ToValidUtf8("\xF4\x90\x80\x80"), r + r + r + r);
  EXPECT_EQ(text::ToValidUtf8("\xC3"), r);
  EXPECT_EQ(text::ToValidUtf8("\xFF\xC3\xA9"), r + "\xC3\xA9");
  std::string streamed;
  text::Utf8StreamDecoder d;
  for (char c : std::string("x\xF0\x9F\x98\x80\xE6\x97")) d.Append(std::string(1, c), &streamed);
  EXPECT_EQ(streamed, "x\xF0\x9F\x98\x80");
  d.Finish(&streamed);
  EXPECT_EQ(streamed, "x\xF0\x9F\x98\x80" + r);
}

TEST(Regex, OnigurumaWhitespaceIncludesNel) {
  EXPECT_EQ(text::TranslateOnigurumaPattern(R"([^\s\p{L}]|\s+(?!\S))"),
            R"([^\s\x{85}\p{L}]|[\s\x{85}]+(?![^\s\x{85}]))");
  auto re = text::Regex::Compile(R"(\s+)");
  ASSERT_TRUE(re.ok());
  auto spans = (*re)->FindMatches(
      "a\xC2\x85"
      "b");
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_TRUE(spans[1].is_match);
  EXPECT_EQ(spans[1].begin, 1u);
  EXPECT_EQ(spans[1].end, 3u);
}

TEST(Encode, InvalidUtf8IsReplaced) {
  ASSERT_NE(Load("SmolLM2-135M-Instruct"), nullptr);
  const Tokenizer& tok = *Load("SmolLM2-135M-Instruct");
  EXPECT_EQ(tok.Encode("a\xFF"
                       "b",
                       false),
            tok.Encode("a\xEF\xBF\xBD"
                       "b",
                       false));
}

TEST(Encode, ConcurrentCallsAgree) {
  ASSERT_NE(Load("Meta-Llama-3-8B"), nullptr);
  const Tokenizer& tok = *Load("Meta-Llama-3-8B");
  std::vector<std::vector<int32_t>> want;
  for (const auto& t : Corpus()) want.push_back(tok.Encode(t, true));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; i < Corpus().size(); i += 2) {
        if (tok.Encode(Corpus()[i], true) != want[i]) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Reports (does not assert) the time to encode a ~1,500-2,000-token prompt, first with a freshly
// loaded tokenizer (empty word cache) and then warm; the requirement is well under 10 ms.
TEST(Encode, PromptTiming) {
  std::string prompt;
  for (size_t i = 0; prompt.size() < 6500; i += 7) prompt += Corpus()[i % Corpus().size()] + "\n";
  using Ms = std::chrono::duration<double, std::milli>;
  for (const char* name :
       {"SmolLM2-135M-Instruct", "Meta-Llama-3-8B", "TinyLlama-1.1B-Chat-v1.0"}) {
    auto fresh = Tokenizer::FromFile(RefDir() + "/" + name + ".tokenizer.json");
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    const Tokenizer& tok = **fresh;
    auto t0 = std::chrono::steady_clock::now();
    const size_t n = tok.Encode(prompt, true).size();
    auto t1 = std::chrono::steady_clock::now();
    const int reps = 20;
    for (int r = 0; r < reps; ++r) EXPECT_EQ(tok.Encode(prompt, true).size(), n);
    auto t2 = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tok.Encode(prompt, true);
    auto t3 = std::chrono::steady_clock::now();
    const std::string text = tok.Decode(ids, false);
    auto t4 = std::chrono::steady_clock::now();
    std::cout << name << ": " << n << " tokens; encode " << Ms(t1 - t0).count() << " ms cold, "
              << Ms(t2 - t1).count() / reps << " ms warm; decode " << Ms(t4 - t3).count()
              << " ms\n";
    EXPECT_GT(n, 1000u);
  }
}

}  // namespace
}  // namespace shardserve
