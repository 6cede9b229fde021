#include "worker/weights/safetensors_writer.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/weights/safetensors.h"

namespace shardserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class SafetensorsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("st_writer_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> Listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  static std::string ReadAll(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  fs::path dir_;
};

template <typename T>
std::span<const uint8_t> Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

const std::vector<float> kA = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
const std::vector<uint16_t> kB = {0x3F80, 0xC000, 0x4040};  // bf16 1, -2, 3
const std::vector<int32_t> kEmpty;

std::vector<TensorSpec> Specs() {
  return {
      {"a", DType::kF32, {2, 3}}, {"b.weight", DType::kBF16, {3}}, {"empty", DType::kI32, {0, 4}}};
}

TEST_F(SafetensorsWriterTest, WritesAFileTheReaderAccepts) {
  const std::string path = (dir_ / "model.safetensors").string();
  auto w = SafetensorsWriter::Create(path, Specs(), {{"format", "pt"}});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE(fs::exists((*w)->temp_path()));
  EXPECT_THAT((*w)->temp_path(), HasSubstr("model.safetensors.tmp-"));
  EXPECT_FALSE(fs::exists(path));
  ASSERT_TRUE((*w)->Write("a", Bytes(kA)).ok());
  ASSERT_TRUE((*w)->Write("b.weight", Bytes(kB)).ok());
  ASSERT_TRUE((*w)->Write("empty", Bytes(kEmpty)).ok());
  ASSERT_TRUE((*w)->Finish().ok());
  EXPECT_EQ((*w)->header_bytes() % 8, 0u);
  EXPECT_EQ(fs::file_size(path), (*w)->file_size());
  EXPECT_EQ(Listing(), std::vector<std::string>{"model.safetensors"});  // temp file renamed
  w->reset();
  EXPECT_TRUE(fs::exists(path));  // the destructor after Finish keeps the file

  // The header length is a multiple of 8 and the padding is spaces.
  const std::string raw = ReadAll(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw[8], '{');
  EXPECT_EQ(raw.find_last_not_of(' ', 8 + n - 1), raw.rfind('}', 8 + n - 1));

  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  const TensorView* a = (*file)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(a->data, kA.data(), kA.size() * 4), 0);
  const TensorView* b = (*file)->Find("b.weight");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(std::memcmp(b->data, kB.data(), kB.size() * 2), 0);
  const TensorView* e = (*file)->Find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 4}));
}

TEST_F(SafetensorsWriterTest, OutputIsDeterministic) {
  std::string first;
  for (int round = 0; round < 2; ++round) {
    const std::string path = (dir_ / "m.safetensors").string();
    auto w = SafetensorsWriter::Create(path, Specs(), {{"format", "pt"}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write("a", Bytes(kA)).ok());
    ASSERT_TRUE((*w)->Write("b.weight", Bytes(kB)).ok());
    ASSERT_TRUE((*w)->Write("empty", Bytes(kEmpty)).ok());
    ASSERT_TRUE((*w)->Finish().ok());  // the second round replaces the first file
    if (round == 0) {
      first = ReadAll(path);
    } else {
      EXPECT_EQ(ReadAll(path), first);
    }
  }
}

TEST_F(SafetensorsWriterTest, RefusesOutOfOrderAndWrongSizeWrites) {
  const std::string path = (dir_ / "m.safetensors").string();
  auto w = SafetensorsWriter::Create(path, Specs(), {});
  ASSERT_TRUE(w.ok());
  absl::Status s = (*w)->Write("b.weight", Bytes(kB));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'b.weight' written where 'a' comes next"));
  s = (*w)->Write("a", Bytes(kB));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("'a' has 6 bytes; its spec needs 24"));
  ASSERT_TRUE((*w)->Write("a", Bytes(kA)).ok());  // still usable after a refused write
  s = (*w)->Finish();
  ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("'b.weight' was not written"));
  ASSERT_TRUE((*w)->Write("b.weight", Bytes(kB)).ok());
  ASSERT_TRUE((*w)->Write("empty", Bytes(kEmpty)).ok());
  s = (*w)->Write("extra", Bytes(kEmpty));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("after all 3 tensors"));
  ASSERT_TRUE((*w)->Finish().ok());
  s = (*w)->Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SafetensorsWriterTest, DestroyedWithoutFinishLeavesNothing) {
  const std::string path = (dir_ / "m.safetensors").string();
  {
    auto w = SafetensorsWriter::Create(path, Specs(), {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write("a", Bytes(kA)).ok());
    EXPECT_EQ(Listing().size(), 1u);
  }
  EXPECT_TRUE(Listing().empty());
}

TEST_F(SafetensorsWriterTest, RefusesBadSpecs) {
  const std::string path = (dir_ / "m.safetensors").string();
  auto dup =
      SafetensorsWriter::Create(path, {{"x", DType::kF32, {1}}, {"x", DType::kF32, {1}}}, {});
  ASSERT_EQ(dup.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dup.status().message(), HasSubstr("duplicate tensor name 'x'"));
  auto meta = SafetensorsWriter::Create(path, {{"__metadata__", DType::kF32, {1}}}, {});
  ASSERT_EQ(meta.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(meta.status().message(), HasSubstr("invalid tensor name"));
  auto ggml = SafetensorsWriter::Create(path, {{"q", DType::kQ4_0, {32}}}, {});
  ASSERT_EQ(ggml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ggml.status().message(), HasSubstr("not a safetensors dtype"));
  auto neg = SafetensorsWriter::Create(path, {{"n", DType::kF32, {2, -1}}}, {});
  ASSERT_EQ(neg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(neg.status().message(), HasSubstr("negative dimension"));
  auto utf = SafetensorsWriter::Create(path, {{"bad\xff", DType::kF32, {1}}}, {});
  ASSERT_EQ(utf.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(utf.status().message(), HasSubstr("UTF-8"));
  auto nodir = SafetensorsWriter::Create((dir_ / "missing" / "m.safetensors").string(),
                                         {{"x", DType::kF32, {1}}}, {});
  ASSERT_EQ(nodir.status().code(), absl::StatusCode::kInternal);
  EXPECT_THAT(nodir.status().message(), HasSubstr("cannot create"));
  EXPECT_TRUE(Listing().empty());
}

TEST_F(SafetensorsWriterTest, TensorSpecBytes) {
  EXPECT_EQ(*TensorSpecBytes({"a", DType::kBF16, {3, 5}}), 30u);
  EXPECT_EQ(*TensorSpecBytes({"s", DType::kF32, {}}), 4u);  // 0-D: one element
  EXPECT_EQ(*TensorSpecBytes({"z", DType::kI8, {0}}), 0u);
  auto over = TensorSpecBytes({"o", DType::kF64, {int64_t{1} << 40, int64_t{1} << 40}});
  ASSERT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(), HasSubstr("overflows"));
}

}  // namespace
}  // namespace shardserve
