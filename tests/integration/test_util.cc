#include "tests/integration/test_util.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace shardserve::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& path, size_t n) {
  std::vector<std::string> lines = absl::StrSplit(ReadFile(path), '\n');
  const size_t from = lines.size() > n ? lines.size() - n : 0;
  return absl::StrJoin(lines.begin() + from, lines.end(), "\n");
}

std::string MakeTempDir(const std::string& prefix) {
  std::error_code error;
  const std::string base = std::filesystem::temp_directory_path(error).string();
  std::string pattern = absl::StrCat(error ? "/tmp" : base, "/", prefix, "XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

void RemoveTree(const std::string& path) {
  std::error_code ignored;
  std::filesystem::remove_all(path, ignored);
}

}  // namespace shardserve::testing
