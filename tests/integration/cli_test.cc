// The `shardserve` command-line tool, run as a real process on the default model in both forms
// (the GGUF from PyPI and the HF-format directory converted from it by scripts/setup.sh).
#include <cmath>
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
  for (const char* sub :
       {"inspect", "tokenize", "template", "run", "perplexity", "chat", "status", "hash-key"}) {
    RunResult r = Shardserve({sub, "--help"});
    EXPECT_EQ(r.exit_code, 0) << sub << ": " << r.err;
    EXPECT_THAT(r.out, HasSubstr("Usage")) << sub;
  }
  RunResult none = Shardserve({});
  EXPECT_NE(none.exit_code, 0);
  EXPECT_THAT(none.err + none.out, HasSubstr("subcommand"));
}

// SHA-256 test vectors from FIPS 180-2; the gateway config stores keys this way.
TEST_F(CliTest, HashKeyPrintsTheSha256OfTheKey) {
  RunResult r = Shardserve({"hash-key", "abc"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");

  // "-": from stdin, the trailing newline not part of the key.
  const std::string input = ::testing::TempDir() + "cli_test_key.txt";
  {
    std::ofstream f(input);
    f << "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq\n";
  }
  r = RunProgram({SHARDSERVE_CLI_PATH, "hash-key", "-"}, input);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1\n");

  {
    std::ofstream f(input);
    f << "\n";
  }
  r = RunProgram({SHARDSERVE_CLI_PATH, "hash-key", "-"}, input);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("the key is empty"));
  EXPECT_EQ(r.out, "");
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

// --- run and perplexity (in-process engine) ------------------------------------------------------

// `shardserve run ... --json` with 2 threads; the parsed object (null on failure).
nlohmann::json RunJson(std::vector<std::string> args) {
  std::vector<std::string> argv = {"run", "--model", Gguf(), "--threads", "2", "--json"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult r = Shardserve(argv);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  auto j = ParseJson(r.out, "run --json");
  EXPECT_TRUE(j.ok()) << j.status() << "\n" << r.out;
  return j.ok() ? *j : nlohmann::json();
}

TEST_F(CliTest, RunGreedyIsReproducibleAndStreamsTheSameText) {
  const std::vector<std::string> args = {"--prompt", "Name three colours.", "--temperature",
                                         "0",        "--max-tokens",        "24"};
  nlohmann::json a = RunJson(args);
  nlohmann::json b = RunJson(args);
  ASSERT_TRUE(a.is_object() && b.is_object());
  EXPECT_EQ(a["token_ids"], b["token_ids"]);
  EXPECT_EQ(a["text"], b["text"]);
  EXPECT_FALSE(a["text"].get<std::string>().empty());
  // Streamed (not --json): the same text on stdout, the stats line on stderr.
  std::vector<std::string> argv = {"run", "--model", Gguf(), "--threads", "2"};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult streamed = Shardserve(argv);
  ASSERT_EQ(streamed.exit_code, 0) << streamed.err;
  EXPECT_EQ(streamed.out, a["text"].get<std::string>() + "\n");
  EXPECT_THAT(streamed.err, HasSubstr("prompt "));
  EXPECT_THAT(streamed.err, HasSubstr("decode "));
  EXPECT_THAT(streamed.err, HasSubstr("tok/s"));
  // Sampling with a seed is reproducible too.
  const std::vector<std::string> seeded = {"--prompt", "Tell me a story.", "--seed",
                                           "1234",     "--max-tokens",     "16"};
  nlohmann::json s1 = RunJson(seeded);
  nlohmann::json s2 = RunJson(seeded);
  EXPECT_EQ(s1["token_ids"], s2["token_ids"]);
  EXPECT_EQ(s1["seed"], 1234);
}

TEST_F(CliTest, RunJsonReportsUsageTimingsAndLogprobs) {
  nlohmann::json j = RunJson({"--prompt", "Write a long poem about the sea.", "--temperature", "0",
                              "--max-tokens", "6", "--logprobs", "3"});
  ASSERT_TRUE(j.is_object());
  // --max-tokens is respected: a long answer is cut at 6 tokens.
  EXPECT_EQ(j["finish_reason"], "length");
  ASSERT_EQ(j["token_ids"].size(), 6u);
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 10);
  EXPECT_EQ(j["usage"]["total_tokens"].get<int>(), j["usage"]["prompt_tokens"].get<int>() + 6);
  for (const char* key : {"load_seconds", "prefill_seconds", "decode_seconds",
                          "prefill_tokens_per_second", "decode_tokens_per_second"}) {
    EXPECT_TRUE(j["timings"].contains(key)) << key;
    EXPECT_GE(j["timings"][key].get<double>(), 0.0) << key;
  }
  ASSERT_EQ(j["logprobs"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const nlohmann::json& lp = j["logprobs"][i];
    EXPECT_EQ(lp["token"], j["token_ids"][i]);
    ASSERT_EQ(lp["top_logprobs"].size(), 3u);
    // Greedy: the token is the most likely one; alternatives best first; all <= 0.
    EXPECT_EQ(lp["top_logprobs"][0]["token"], lp["token"]);
    EXPECT_FLOAT_EQ(lp["top_logprobs"][0]["logprob"].get<float>(), lp["logprob"].get<float>());
    EXPECT_LE(lp["logprob"].get<double>(), 0.0);
    EXPECT_GE(lp["top_logprobs"][1]["logprob"].get<double>(),
              lp["top_logprobs"][2]["logprob"].get<double>());
    EXPECT_LE(lp["top_logprobs"][1]["logprob"].get<double>(), lp["logprob"].get<double>());
  }
}

TEST_F(CliTest, RunStopStringEndsTheTextBeforeIt) {
  const std::vector<std::string> args = {
      "--prompt", "Describe a cat in two sentences.", "--temperature", "0", "--max-tokens", "40"};
  nlohmann::json full = RunJson(args);
  const std::string text = full["text"].get<std::string>();
  ASSERT_GT(text.size(), 20u) << text;
  // A stop string taken from the middle of the greedy answer: the same run stops before it.
  std::string stop = text.substr(text.size() / 2, 4);
  std::vector<std::string> with_stop = args;
  with_stop.insert(with_stop.end(), {"--stop", stop, "--stop", "no such text"});
  nlohmann::json cut = RunJson(with_stop);
  EXPECT_EQ(cut["finish_reason"], "stop");
  EXPECT_EQ(cut["text"].get<std::string>(), text.substr(0, text.find(stop)));
}

TEST_F(CliTest, RunMessagesFileAndSystem) {
  std::string file = ::testing::TempDir() + "/run_messages.json";
  {
    std::ofstream(file) << R"([{"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again."}])";
  }
  nlohmann::json j = RunJson({"--messages", file, "--system", "You are terse.", "--temperature",
                              "0", "--max-tokens", "4"});
  ASSERT_TRUE(j.is_object());
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 20);
  EXPECT_LE(j["token_ids"].size(), 4u);
}

TEST_F(CliTest, RunErrorsNameTheProblem) {
  const std::string missing = ::testing::TempDir() + "/no_such_model.gguf";
  RunResult r = Shardserve({"run", "--model", missing, "--prompt", "hi"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(missing));
  EXPECT_TRUE(r.out.empty());

  r = Shardserve({"run", "--model", Gguf()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--prompt"));

  r = Shardserve({"run", "--model", Gguf(), "--prompt", "hi", "--temperature", "-1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("temperature"));

  r = Shardserve({"run", "--model", Gguf(), "--prompt", "hi", "--activations", "q3"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--activations"));

  // prompt + max_tokens beyond the context.
  r = Shardserve(
      {"run", "--model", Gguf(), "--prompt", "hi", "--context", "64", "--max-tokens", "100"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("context"));
}

TEST_F(CliTest, PerplexityOfPlainEnglishIsSane) {
  const std::string text = SourceDir() + "/tests/fixtures/text/paragraph.txt";
  RunResult r = Shardserve({"perplexity", "--model", Gguf(), "--text-file", text, "--threads", "2",
                            "--context", "64", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = ParseJson(r.out, "perplexity --json");
  ASSERT_TRUE(j.ok()) << j.status() << r.out;
  const double ppl = (*j)["perplexity"].get<double>();
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 100.0);
  EXPECT_NEAR(std::log(ppl), (*j)["mean_nll"].get<double>(), 1e-9);
  // 149 tokens in windows of 64: 64, 64, 21, the second half of each scored.
  EXPECT_EQ((*j)["tokens"], 149);
  EXPECT_EQ((*j)["windows"], 3);
  EXPECT_EQ((*j)["scored_tokens"], 31 + 31 + 10);

  RunResult plain =
      Shardserve({"perplexity", "--model", Gguf(), "--text-file", text, "--threads", "2"});
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  EXPECT_THAT(plain.out, HasSubstr("perplexity "));

  const std::string missing = ::testing::TempDir() + "/no_such_text.txt";
  RunResult bad = Shardserve({"perplexity", "--model", Gguf(), "--text-file", missing});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_THAT(bad.err, HasSubstr(missing));
}

}  // namespace
}  // namespace shardserve
