#include "worker/text/model_text.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

std::string ModelsDir() {
  if (const char* dir = std::getenv("SHARDSERVE_MODELS_DIR")) return dir;
  const char* src = std::getenv("SHARDSERVE_SOURCE_DIR");
  return std::string(src != nullptr ? src : ".") + "/models";
}

// A copy of the converted HF directory's text files (no weights) that a test may alter.
fs::path CopyTextFiles(const std::string& name) {
  fs::path src = fs::path(ModelsDir()) / "SmolLM2-135M-Instruct";
  fs::path dst = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const char* f :
       {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"}) {
    fs::copy_file(src / f, dst / f);
  }
  return dst;
}

void WriteFile(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

class ModelTextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(ModelsDir() + "/SmolLM2-135M-Instruct/tokenizer.json"))
        << ModelsDir() << " lacks the converted model: run scripts/setup.sh";
  }
};

TEST_F(ModelTextTest, GgufAndHfDirectoryAgree) {
  auto gguf = LoadModelText(ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf");
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto hf = LoadModelText(ModelsDir() + "/SmolLM2-135M-Instruct");
  ASSERT_TRUE(hf.ok()) << hf.status();
  for (const ModelText* text : {&*gguf, &*hf}) {
    EXPECT_EQ(text->bos_token, "<|im_start|>");
    EXPECT_EQ(text->eos_token, "<|im_end|>");
    EXPECT_THAT(text->eos_ids, ElementsAre(2));
    ASSERT_TRUE(text->chat_template.has_value());
    EXPECT_EQ(text->tokenizer->vocab_size(), 49152);
  }
  nlohmann::ordered_json messages = nlohmann::ordered_json::parse(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])");
  auto a = gguf->RenderChat(messages, true);
  auto b = hf->RenderChat(messages, true);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(gguf->tokenizer->Encode(*a, false), hf->tokenizer->Encode(*b, false));
}

TEST_F(ModelTextTest, SeparateChatTemplateFileTakesPrecedence) {
  fs::path dir = CopyTextFiles("separate_template");
  WriteFile(dir / "chat_template.jinja", "{% for m in messages %}[{{ m.content }}]{% endfor %}");
  auto text = LoadModelText(dir.string());
  ASSERT_TRUE(text.ok()) << text.status();
  auto out =
      text->RenderChat(nlohmann::ordered_json::parse(R"([{"role":"user","content":"x"}])"), false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "[x]");
}

TEST_F(ModelTextTest, NamedTemplateListUsesDefault) {
  fs::path dir = CopyTextFiles("named_templates");
  WriteFile(dir / "tokenizer_config.json",
            R"({"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>",
                "chat_template": [{"name": "tool_use", "template": "tools"},
                                  {"name": "default", "template": "{{ bos_token }}default"}]})");
  auto text = LoadModelText(dir.string());
  ASSERT_TRUE(text.ok()) << text.status();
  auto out = text->RenderChat(nlohmann::ordered_json::array(), false);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, "<|im_start|>default");
}

TEST_F(ModelTextTest, NoTemplateIsFailedPrecondition) {
  fs::path dir = CopyTextFiles("no_template");
  WriteFile(dir / "tokenizer_config.json", R"({"eos_token": "<|im_end|>"})");
  auto text = LoadModelText(dir.string());
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_FALSE(text->chat_template.has_value());
  EXPECT_FALSE(text->bos_token.has_value());
  auto out = text->RenderChat(nlohmann::ordered_json::array(), true);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ModelTextTest, EosIdsFromGenerationConfigList) {
  fs::path dir = CopyTextFiles("eos_list");
  WriteFile(dir / "generation_config.json", R"({"eos_token_id": [2, 0, 2]})");
  auto text = LoadModelText(dir.string());
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_THAT(text->eos_ids, ElementsAre(0, 2));
}

TEST_F(ModelTextTest, MalformedFilesNameFileAndField) {
  fs::path dir = CopyTextFiles("bad_template_type");
  WriteFile(dir / "tokenizer_config.json", R"({"chat_template": 42})");
  auto text = LoadModelText(dir.string());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("tokenizer_config.json"));
  EXPECT_THAT(text.status().message(), HasSubstr("chat_template"));

  dir = CopyTextFiles("bad_eos");
  WriteFile(dir / "generation_config.json", R"({"eos_token_id": "two"})");
  text = LoadModelText(dir.string());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("generation_config.json"));
  EXPECT_THAT(text.status().message(), HasSubstr("eos_token_id"));

  dir = CopyTextFiles("bad_syntax");
  WriteFile(dir / "tokenizer_config.json", R"({"chat_template": "{% for x in %}"})");
  text = LoadModelText(dir.string());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("line 1"));

  text = LoadModelText("/nonexistent/model");
  EXPECT_EQ(text.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(text.status().message(), HasSubstr("/nonexistent/model"));
}

}  // namespace
}  // namespace shardserve
