#include "common/mapped_file.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

std::string TempPath(const std::string& name) { return ::testing::TempDir() + "/" + name; }

TEST(MappedFileTest, MapsContents) {
  std::string path = TempPath("mapped_file_test.bin");
  { std::ofstream(path, std::ios::binary) << "hello"; }
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data()), file->size()), "hello");
  MappedFile moved = std::move(*file);
  EXPECT_EQ(moved.size(), 5u);
  std::remove(path.c_str());
}

TEST(MappedFileTest, EmptyFileMapsToEmptySpan) {
  std::string path = TempPath("mapped_file_empty.bin");
  { std::ofstream(path, std::ios::binary); }
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size(), 0u);
  EXPECT_TRUE(file->bytes().empty());
  std::remove(path.c_str());
}

TEST(MappedFileTest, MissingFileIsNotFoundNamingPath) {
  auto file = MappedFile::Open("/nonexistent/shardserve/weights.bin");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/shardserve/weights.bin"));
}

TEST(MappedFileTest, DirectoryIsRejected) {
  auto file = MappedFile::Open(::testing::TempDir());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(file.status().message(), HasSubstr("not a regular file"));
}

TEST(JsonTest, SyntaxErrorNamesDocument) {
  auto parsed = ParseJson("{\"a\": ", "config.json");
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(parsed.status().message(), HasSubstr("config.json"));
}

TEST(JsonTest, InvalidUtf8IsAnError) {
  auto parsed = ParseJson("{\"a\": \"\xff\"}", "doc");
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardserve
