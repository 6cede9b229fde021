// The `shardserve` command-line tool, run as a real process on the default model in both forms
// (the GGUF from PyPI and the HF-format directory converted from it by scripts/setup.sh).
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/subprocess.h"

namespace shardserve {
namespace {

using ::shardserve::testing::RunProgram;
using ::shardserve::testing::RunResult;
using ::testing::HasSubstr;

std::string SourceDir() {
  const char* dir = std::getenv("SHARDSERVE_SOURCE_DIR");
  return dir != nullptr ? dir : ".";
}
std::string ModelsDir() {
  const char* dir = std::getenv("SHARDSERVE_MODELS_DIR");
  return dir != nullptr ? dir : SourceDir() + "/models";
}
std::string Gguf() { return ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf"; }
std::string HfDir() { return ModelsDir() + "/SmolLM2-135M-Instruct"; }

RunResult Shardserve(std::vector<std::string> args) {
  args.insert(args.begin(), SHARDSERVE_CLI_PATH);
  return RunProgram(args);
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const std::string& path : {Gguf(), HfDir() + "/model.safetensors"}) {
      ASSERT_TRUE(std::ifstream(path).good()) << path << " is missing: run scripts/setup.sh";
    }
  }
};

TEST_F(CliTest, HelpForEverySubcommand) {
  for (const char* sub : {"inspect", "tokenize", "template"}) {
    RunResult r = Shardserve({sub, "--help"});
    EXPECT_EQ(r.exit_code, 0) << sub << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr("Usage")) << sub;
  }
  RunResult none = Shardserve({});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.err + none.out, HasSubstr("subcommand"));
}

TEST_F(CliTest, InspectBothFormsAgree) {
  RunResult gguf = Shardserve({"inspect", "--json", Gguf()});
  ASSERT_EQ(gguf.exit_code, 0) << gguf.err;
  RunResult hf = Shardserve({"inspect", "--json", HfDir()});
  ASSERT_EQ(hf.exit_code, 0) << hf.err;
  auto g = ParseJson(gguf.out, "inspect gguf");
  auto h = ParseJson(hf.out, "inspect hf");
  ASSERT_TRUE(g.ok() && h.ok());
  EXPECT_EQ((*g)["format"], "gguf");
  EXPECT_EQ((*h)["format"], "safetensors");
  EXPECT_EQ((*g)["qk_rows_interleaved"], true);
  EXPECT_EQ((*g)["config"]["hidden_size"], 576);
  EXPECT_EQ((*g)["config"]["num_hidden_layers"], 30);
  EXPECT_EQ((*g)["config"]["num_key_value_heads"], 3);
  EXPECT_EQ((*g)["config"]["tie_word_embeddings"], true);
  EXPECT_EQ((*g)["config"], (*h)["config"]);
  ASSERT_EQ((*g)["tensors"].size(), 272u);
  ASSERT_EQ((*h)["tensors"].size(), 272u);
  EXPECT_EQ((*g)["parameters"], (*h)["parameters"]);
  for (size_t i = 0; i < 272; ++i) {
    EXPECT_EQ((*g)["tensors"][i]["name"], (*h)["tensors"][i]["name"]);
    EXPECT_EQ((*g)["tensors"][i]["shape"], (*h)["tensors"][i]["shape"]);
    EXPECT_EQ((*h)["tensors"][i]["dtype"], "BF16");
  }
}

TEST_F(CliTest, InspectTableAndErrors) {
  RunResult table = Shardserve({"inspect", Gguf()});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(table.out, HasSubstr("Q8_0"));
  EXPECT_THAT(table.out, HasSubstr("272 tensors"));

  RunResult missing = Shardserve({"inspect", "/nonexistent/model.gguf"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.err, HasSubstr("/nonexistent/model.gguf"));

  std::string bogus = ::testing::TempDir() + "/bogus.gguf";
  { std::ofstream(bogus) << "not a gguf file at all"; }
  RunResult bad = Shardserve({"inspect", bogus});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr(bogus));
}

// Ids from the HF `tokenizers` package for SmolLM2's tokenizer.json, as recorded in
// shared/reference/tokenizers/SOURCES.md.
TEST_F(CliTest, TokenizeMatchesReferenceIdsInBothForms) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"naïve café — “quotes” … ½ ¼",
       "[3546,46494,37366,1841,619,385,2346,573,5548,216,16738,216,28151]"},
      {"1234567890 3.14159", "[33,34,35,36,37,38,39,40,41,32,216,35,30,33,36,33,37,41]"},
      {"<|im_start|>user\nhi<|im_end|>", "[1,4093,198,6004,2]"},
  };
  for (const std::string& model : {Gguf(), HfDir()}) {
    for (const auto& [text, ids] : cases) {
      RunResult r = Shardserve({"tokenize", "--ids", "--model", model, text});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(r.out, ids + "\n") << model << ": " << text;
    }
  }
  RunResult pieces = Shardserve({"tokenize", "--model", HfDir(), "Hello world"});
  ASSERT_EQ(pieces.exit_code, 0) << pieces.err;
  EXPECT_THAT(pieces.out, HasSubstr("\"Ġworld\""));
  EXPECT_THAT(pieces.out, HasSubstr("2 tokens"));
}

// The rendered prompts must equal what Jinja2 / transformers rendered for the same
// conversations (shared/reference/chat_templates/expected.json).
TEST_F(CliTest, TemplateMatchesJinja2InBothForms) {
  const std::string ref = SourceDir() + "/../shared/reference/chat_templates";
  auto conversations = ParseJsonFile(ref + "/conversations.json");
  auto expected = ParseJsonFile(ref + "/expected.json");
  ASSERT_TRUE(conversations.ok()) << conversations.status();
  ASSERT_TRUE(expected.ok()) << expected.status();
  const nlohmann::json& smol = (*expected)["SmolLM2-135M-Instruct"]["conversations"];
  int compared = 0;
  for (const auto& [name, conversation] : conversations->items()) {
    if (!smol.contains(name) || !smol[name].contains("text")) continue;
    std::string file = ::testing::TempDir() + "/conversation_" + name + ".json";
    { std::ofstream(file) << conversation.dump(); }
    for (const std::string& model : {Gguf(), HfDir()}) {
      RunResult r = Shardserve({"template", "--model", model, "--messages", file});
      ASSERT_EQ(r.exit_code, 0) << name << ": " << r.err;
      EXPECT_EQ(r.out, smol[name]["text"].get<std::string>()) << model << ": " << name;
      ++compared;
    }
  }
  EXPECT_GE(compared, 8);
}

TEST_F(CliTest, TemplateIdsAreTheTokenizedPrompt) {
  std::string file = ::testing::TempDir() + "/hi.json";
  { std::ofstream(file) << R"([{"role": "user", "content": "Hi there"}])"; }
  RunResult r = Shardserve({"template", "--ids", "--model", Gguf(), "--messages", file});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  size_t split = r.out.rfind("\n[");
  ASSERT_NE(split, std::string::npos);
  std::string prompt = r.out.substr(0, split);
  RunResult ids = Shardserve({"tokenize", "--ids", "--model", HfDir(), prompt});
  EXPECT_EQ(r.out.substr(split + 1), ids.out);
}

TEST_F(CliTest, TemplateErrorsNameTheProblem) {
  std::string bad_json = ::testing::TempDir() + "/bad.json";
  { std::ofstream(bad_json) << "[{\"role\": "; }
  RunResult r = Shardserve({"template", "--model", Gguf(), "--messages", bad_json});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(bad_json));

  std::string not_list = ::testing::TempDir() + "/not_list.json";
  { std::ofstream(not_list) << R"({"role": "user"})"; }
  r = Shardserve({"template", "--model", Gguf(), "--messages", not_list});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("messages"));
}

}  // namespace
}  // namespace shardserve
