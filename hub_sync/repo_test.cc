#include "hub_sync/repo.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve::hub {
namespace {

using ::testing::HasSubstr;

TEST(RepoIdTest, ParsesAndFormats) {
  auto repo = ParseRepoId("HuggingFaceTB/SmolLM2-135M-Instruct");
  ASSERT_TRUE(repo.ok()) << repo.status();
  EXPECT_EQ(repo->org, "HuggingFaceTB");
  EXPECT_EQ(repo->name, "SmolLM2-135M-Instruct");
  EXPECT_EQ(repo->ToString(), "HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(repo->CacheFolder(), "models--HuggingFaceTB--SmolLM2-135M-Instruct");
  EXPECT_EQ(repo->ArtifactFolder(), "HuggingFaceTB--SmolLM2-135M-Instruct");
  auto back = RepoIdFromCacheFolder(repo->CacheFolder());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, *repo);
  EXPECT_TRUE(ParseRepoId("a/b.c_d-e").ok());
}

TEST(RepoIdTest, RefusesMalformedIds) {
  struct Case {
    const char* id;
    const char* why;
  } cases[] = {
      {"no-slash", "ORG/NAME"},
      {"a/b/c", "ORG/NAME"},
      {"/name", "organization is empty"},
      {"org/", "name is empty"},
      {"org/..", "may only contain|start or end"},
      {"org/a..b", "\"..\""},
      {"org/a--b", "\"--\""},
      {"org/-a", "start or end"},
      {"org/a b", "may only contain"},
      {"org/a\\b", "may only contain"},
  };
  for (const Case& c : cases) {
    auto repo = ParseRepoId(c.id);
    ASSERT_FALSE(repo.ok()) << c.id;
    EXPECT_EQ(repo.status().code(), absl::StatusCode::kInvalidArgument) << c.id;
    EXPECT_THAT(std::string(repo.status().message()), ::testing::ContainsRegex(c.why)) << c.id;
  }
  EXPECT_FALSE(ParseRepoId(std::string(97, 'a') + "/b").ok());
  EXPECT_FALSE(RepoIdFromCacheFolder("datasets--a--b").ok());
  EXPECT_FALSE(RepoIdFromCacheFolder("models--ab").ok());
}

TEST(RepoTest, CommitsAndEtags) {
  EXPECT_TRUE(IsCommitSha(std::string(40, 'a')));
  EXPECT_FALSE(IsCommitSha(std::string(40, 'A')));
  EXPECT_FALSE(IsCommitSha(std::string(39, 'a')));
  EXPECT_FALSE(IsCommitSha(std::string(39, 'a') + "g"));
  EXPECT_TRUE(IsValidEtag(std::string(40, '0')));
  EXPECT_TRUE(IsValidEtag(std::string(64, 'f')));
  EXPECT_FALSE(IsValidEtag(std::string(41, '0')));
  EXPECT_FALSE(IsValidEtag("../../etc/passwd"));
}

TEST(RepoTest, ValidatesRevisions) {
  for (const char* ok : {"main", "v1.0", "refs/pr/1", "0123456789abcdef0123456789abcdef01234567"}) {
    EXPECT_TRUE(ValidateRevision(ok).ok()) << ok;
  }
  for (const std::string& bad :
       {std::string(""), std::string("../main"), std::string("a//b"), std::string("/main"),
        std::string("main/"), std::string("a\\b"), std::string("a\nb"), std::string("a\0b", 3),
        std::string(257, 'a')}) {
    absl::Status status = ValidateRevision(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(status.message()), HasSubstr("revision")) << bad;
  }
}

TEST(RepoTest, ValidatesRepoPaths) {
  for (const char* ok :
       {"config.json", "onnx/model.onnx", "a b/ü ñ.txt", ".gitattributes", "sub/.hidden/x"}) {
    EXPECT_TRUE(ValidateRepoPath(ok).ok()) << ok << ValidateRepoPath(ok);
  }
  struct Case {
    std::string path;
    const char* why;
  } cases[] = {
      {"", "empty"},
      {"/etc/passwd", "absolute"},
      {"..", "\"..\" segment"},
      {"../x", "\"..\" segment"},
      {"a/../../b", "\"..\" segment"},
      {"a/./b", "segment"},
      {"a//b", "segment"},
      {"a/", "segment"},
      {std::string("a\0b", 3), "control"},
      {"a\x01"
       "b",
       "control"},
      {"a\x7f", "control"},
      {"a\\..\\b", "backslash"},
      {"\xff\xfe", "UTF-8"},
      {"\xc0\xaf", "UTF-8"},      // overlong '/'
      {"\xed\xa0\x80", "UTF-8"},  // surrogate
      {std::string(1025, 'a'), "longer than 1024"},
      {std::string(256, 'a') + "/b", "segment longer"},
  };
  for (const Case& c : cases) {
    absl::Status status = ValidateRepoPath(c.path);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.path;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.why)) << c.path;
  }
}

TEST(RepoTest, SelectsPathsLikeHuggingFaceHub) {
  const std::vector<std::string> none;
  EXPECT_TRUE(PathSelected("anything/at/all", none, none));
  EXPECT_TRUE(PathSelected("a/b/model.safetensors", {"*.safetensors"}, none));  // '*' spans '/'
  EXPECT_FALSE(PathSelected("model.bin", {"*.safetensors"}, none));
  EXPECT_TRUE(PathSelected("onnx/model.onnx", {"onnx/"}, none));  // folder pattern
  EXPECT_FALSE(PathSelected("onnx/model.onnx", none, {"onnx/"}));
  EXPECT_FALSE(PathSelected("Model.SafeTensors", {"*.safetensors"}, none));  // case-sensitive
  EXPECT_FALSE(PathSelected("a.json", {"*.json"}, {"a.*"}));
  EXPECT_TRUE(PathSelected("tok[1].json", {"tok[0-9].json", "*.json"}, none));
  const auto& defaults = DefaultAllowPatterns();
  for (const char* kept : {"model.safetensors", "model-00001-of-00002.safetensors",
                           "model.safetensors.index.json", "config.json", "tokenizer.json",
                           "tokenizer.model", "merges.txt", "vocab.txt", "chat_template.jinja"}) {
    EXPECT_TRUE(PathSelected(kept, defaults, none)) << kept;
  }
  for (const char* skipped :
       {"pytorch_model.bin", "model.pt", "model.gguf", "tf_model.h5", "flax_model.msgpack"}) {
    EXPECT_FALSE(PathSelected(skipped, defaults, none)) << skipped;
  }
}

TEST(RepoTest, HashesMatchGit) {
  // `printf 'hello\n' | git hash-object --stdin` and `sha256sum`.
  EXPECT_EQ(GitBlobSha1Hex("hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
  EXPECT_EQ(GitBlobSha1Hex(""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
  EXPECT_EQ(Sha256Hex("hello\n"),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
  ContentHasher hasher(/*lfs=*/false, 6);
  hasher.Update("hel");
  hasher.Update("lo\n");
  EXPECT_EQ(hasher.FinishHex(), "ce013625030ba8dba906f756967f9e9ca394464a");
}

TEST(RepoTest, VerifiesFiles) {
  const std::string path = ::testing::TempDir() + "/repo_test_" + std::to_string(getpid());
  {
    std::ofstream out(path, std::ios::binary);
    out << "hello\n";
  }
  RepoFile file{"greeting.txt", 6, "ce013625030ba8dba906f756967f9e9ca394464a", false};
  EXPECT_TRUE(VerifyFile(path, file).ok());
  auto sha = HashFileHex(path, /*lfs=*/true);
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(*sha, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");

  RepoFile wrong_size = file;
  wrong_size.size = 7;
  absl::Status status = VerifyFile(path, wrong_size);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("expected 7 bytes, found 6"));

  RepoFile wrong_hash = file;
  wrong_hash.etag = std::string(40, '0');
  status = VerifyFile(path, wrong_hash);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("greeting.txt: expected git blob sha1"));

  std::remove(path.c_str());
  status = VerifyFile(path, file);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr(path));
}

}  // namespace
}  // namespace shardserve::hub
