#include "worker/weights/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace shardserve {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// The bytes of a safetensors file: u64 little-endian header length, `header` padded with spaces
// to a multiple of 8 (as writers do), then `data`.
std::string BuildSafetensors(const std::string& header, const std::string& data, bool pad = true) {
  std::string h = header;
  if (pad) h.append((8 - h.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + h + data;
}

std::string BuildSafetensors(const json& header, const std::string& data) {
  return BuildSafetensors(header.dump(), data);
}

template <typename T>
std::string Bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(const std::string& bytes) {
  return SafetensorsFile::FromBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
      "test.safetensors");
}

// A fresh directory under the test temp dir, named after the running test.
std::string TestDir() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / (std::string("safetensors_") + info->name());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

float FloatAt(const TensorView& v, int64_t row, int64_t col) {
  float x;
  std::memcpy(&x, v.data + row * v.row_stride + col * sizeof(float), sizeof(float));
  return x;
}

// "w": F32 [3, 4] holding 0..11 at offset 0, "b": BF16 [2] = {1.0, -2.0}, "i": I8 [3].
std::string SampleFile() {
  std::vector<float> w(12);
  for (int i = 0; i < 12; ++i) w[i] = static_cast<float>(i);
  std::vector<uint16_t> b = {0x3f80, 0xc000};
  std::vector<int8_t> i8 = {-1, 0, 7};
  json header = {
      {"__metadata__", {{"format", "pt"}}},
      {"w", {{"dtype", "F32"}, {"shape", {3, 4}}, {"data_offsets", {0, 48}}}},
      {"b", {{"dtype", "BF16"}, {"shape", {2}}, {"data_offsets", {48, 52}}}},
      {"i", {{"dtype", "I8"}, {"shape", {3}}, {"data_offsets", {52, 55}}}},
  };
  return BuildSafetensors(header, Bytes(w) + Bytes(b) + Bytes(i8));
}

TEST(SafetensorsFileTest, ParsesTensorsAndMetadata) {
  std::string bytes = SampleFile();
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), "test.safetensors");
  ASSERT_EQ((*file)->tensors().size(), 3u);
  // Sorted by data offset.
  EXPECT_EQ((*file)->tensors()[0].name, "w");
  EXPECT_EQ((*file)->tensors()[1].name, "b");
  EXPECT_EQ((*file)->tensors()[2].name, "i");
  EXPECT_EQ((*file)->metadata().at("format"), "pt");

  const TensorView* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(w->row_stride, 16u);
  EXPECT_TRUE(w->IsContiguous());
  EXPECT_EQ(FloatAt(*w, 2, 3), 11.0f);

  const TensorView* b = (*file)->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->dtype, DType::kBF16);
  uint16_t bits[2];
  std::memcpy(bits, b->data, 4);
  EXPECT_EQ(bits[0], 0x3f80);
  EXPECT_EQ(bits[1], 0xc000);

  const TensorView* i = (*file)->Find("i");
  ASSERT_NE(i, nullptr);
  EXPECT_EQ(static_cast<int8_t>(i->data[0]), -1);
  EXPECT_EQ(i->data[2], 7);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsFileTest, RowAndColumnRangesOnFileData) {
  std::string bytes = SampleFile();
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);

  auto rows = w->RowRange(1, 3);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(FloatAt(*rows, 0, 0), 4.0f);
  EXPECT_EQ(FloatAt(*rows, 1, 2), 10.0f);

  auto cols = w->ColumnRange(1, 3);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(cols->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(FloatAt(*cols, 0, 0), 1.0f);
  EXPECT_EQ(FloatAt(*cols, 1, 1), 6.0f);
  EXPECT_EQ(FloatAt(*cols, 2, 0), 9.0f);

  auto bad = w->RowRange(0, 4);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("tensor 'w'"));
}

TEST(SafetensorsFileTest, AcceptsEveryDtype) {
  const std::vector<std::pair<std::string, size_t>> dtypes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"U16", 2},     {"I16", 2},
      {"U32", 4},  {"I32", 4}, {"U64", 8}, {"I64", 8},     {"F16", 2},
      {"BF16", 2}, {"F32", 4}, {"F64", 8}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, size] : dtypes) {
    header["t_" + name] = {
        {"dtype", name}, {"shape", {2, 3}}, {"data_offsets", {offset, offset + 6 * size}}};
    offset += 6 * size;
  }
  std::string bytes = BuildSafetensors(header, std::string(offset, '\x01'));
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), dtypes.size());
  EXPECT_EQ((*file)->Find("t_F8_E4M3")->dtype, DType::kF8E4M3);
  EXPECT_EQ((*file)->Find("t_I32")->dtype, DType::kI32);
  EXPECT_EQ((*file)->Find("t_U8")->ByteSize(), 6u);
}

TEST(SafetensorsFileTest, EmptyAndScalarTensors) {
  json header = {
      {"empty", {{"dtype", "F32"}, {"shape", {0, 4}}, {"data_offsets", {0, 0}}}},
      {"scalar", {{"dtype", "F32"}, {"shape", json::array()}, {"data_offsets", {0, 4}}}},
      {"__metadata__", nullptr},
  };
  std::string bytes = BuildSafetensors(header, std::string(4, '\0'));
  auto file = Parse(bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("scalar")->NumElements(), 1);
  EXPECT_EQ((*file)->Find("empty")->NumElements(), 0);
  EXPECT_TRUE((*file)->metadata().empty());
  // No tensors at all is a valid (empty) file.
  std::string empty = BuildSafetensors(std::string("{}"), "");
  auto none = Parse(empty);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE((*none)->tensors().empty());
}

// One malformed-input case: the bytes and the message substring expected.
struct BadCase {
  std::string label;
  std::string bytes;
  std::string message;
};

json Tensor(const std::string& dtype, const json& shape, uint64_t begin, uint64_t end) {
  return {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
}

std::vector<BadCase> BadCases() {
  const std::string f8(8, '\0');
  std::vector<BadCase> cases;
  cases.push_back({"short", std::string(5, '\0'), "file is 5 bytes, too short"});
  {
    std::string b(16, '\0');
    uint64_t n = 100'000'001;
    std::memcpy(b.data(), &n, 8);
    cases.push_back({"huge header", b, "header length 100000001 exceeds the limit"});
  }
  {
    std::string b = BuildSafetensors(std::string("{}"), "");
    b[0] = 100;
    cases.push_back({"header past end", b, "header length 100 is larger than the 8 bytes"});
  }
  cases.push_back({"syntax", BuildSafetensors(std::string("{\"a\": "), ""), "invalid JSON"});
  cases.push_back({"not object", BuildSafetensors(std::string("[1, 2]"), ""),
                   "header is a JSON array, not an object"});
  cases.push_back({"entry not object", BuildSafetensors(json{{"a", 3}}, ""),
                   "tensor 'a': entry is a JSON number, not an object"});
  cases.push_back({"missing dtype",
                   BuildSafetensors(json{{"a", {{"shape", {2}}, {"data_offsets", {0, 8}}}}}, f8),
                   "tensor 'a': missing 'dtype'"});
  cases.push_back(
      {"dtype not string",
       BuildSafetensors(json{{"a", {{"dtype", 4}, {"shape", {2}}, {"data_offsets", {0, 8}}}}}, f8),
       "tensor 'a': 'dtype' is a JSON number, not a string"});
  cases.push_back({"unknown dtype", BuildSafetensors(json{{"a", Tensor("F9", {2}, 0, 8)}}, f8),
                   "tensor 'a': unknown dtype 'F9'"});
  cases.push_back({"block dtype", BuildSafetensors(json{{"a", Tensor("Q4_0", {32}, 0, 8)}}, f8),
                   "tensor 'a': unknown dtype 'Q4_0'"});
  cases.push_back({"missing shape",
                   BuildSafetensors(json{{"a", {{"dtype", "F32"}, {"data_offsets", {0, 8}}}}}, f8),
                   "tensor 'a': missing 'shape'"});
  cases.push_back({"shape not array", BuildSafetensors(json{{"a", Tensor("F32", 2, 0, 8)}}, f8),
                   "tensor 'a': 'shape' is a JSON number, not an array"});
  cases.push_back({"shape float", BuildSafetensors(json{{"a", Tensor("F32", {2.5}, 0, 8)}}, f8),
                   "tensor 'a': 'shape' element 2.5 is not an integer"});
  cases.push_back({"shape string", BuildSafetensors(json{{"a", Tensor("F32", {"2"}, 0, 8)}}, f8),
                   "'shape' element \"2\" is not an integer"});
  cases.push_back({"negative dim", BuildSafetensors(json{{"a", Tensor("F32", {-2}, 0, 8)}}, f8),
                   "tensor 'a': 'shape' has a negative dimension -2"});
  cases.push_back(
      {"overflow dims",
       BuildSafetensors(json{{"a", Tensor("F32", {4294967296ULL, 4294967296ULL}, 0, 8)}}, f8),
       "tensor 'a': 'shape' [4294967296,4294967296] overflows"});
  cases.push_back(
      {"overflow beside zero",
       BuildSafetensors(json{{"a", Tensor("F32", {0, 4294967296ULL, 4294967296ULL}, 0, 0)}}, ""),
       "tensor 'a': 'shape' [0,4294967296,4294967296] overflows"});
  cases.push_back({"overflow bytes",
                   BuildSafetensors(json{{"a", Tensor("F64", {4611686018427387904LL}, 0, 8)}}, f8),
                   "tensor 'a': 4611686018427387904 elements of F64 overflow"});
  cases.push_back({"missing offsets",
                   BuildSafetensors(json{{"a", {{"dtype", "F32"}, {"shape", {2}}}}}, f8),
                   "tensor 'a': missing 'data_offsets'"});
  cases.push_back(
      {"offsets length",
       BuildSafetensors(json{{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0}}}}}, f8),
       "tensor 'a': 'data_offsets' must be two non-negative integers, got [0]"});
  cases.push_back(
      {"negative offset",
       BuildSafetensors(json{{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {-8, 0}}}}},
                        f8),
       "'data_offsets' must be two non-negative integers, got [-8,0]"});
  cases.push_back({"begin > end", BuildSafetensors(json{{"a", Tensor("F32", {2}, 8, 0)}}, f8),
                   "tensor 'a': data_offsets [8, 0]: begin > end"});
  cases.push_back({"end past buffer", BuildSafetensors(json{{"a", Tensor("F32", {4}, 0, 16)}}, f8),
                   "tensor 'a': data_offsets [0, 16] extend past the data buffer of 8 bytes"});
  cases.push_back({"size mismatch", BuildSafetensors(json{{"a", Tensor("F32", {3}, 0, 8)}}, f8),
                   "tensor 'a': data_offsets [0, 8] hold 8 bytes but shape [3] of F32 needs 12"});
  cases.push_back(
      {"overlap",
       BuildSafetensors(json{{"a", Tensor("F32", {2}, 0, 8)}, {"b", Tensor("F32", {1}, 4, 8)}}, f8),
       "tensor 'b' data_offsets [4, 8] overlap tensor 'a' [0, 8]"});
  cases.push_back(
      {"gap",
       BuildSafetensors(json{{"a", Tensor("F32", {1}, 0, 4)}, {"b", Tensor("U8", {2}, 6, 8)}}, f8),
       "gap in the data buffer: bytes [4, 6) before tensor 'b' belong to no tensor"});
  cases.push_back({"leading gap", BuildSafetensors(json{{"a", Tensor("F32", {1}, 4, 8)}}, f8),
                   "bytes [0, 4) before tensor 'a'"});
  cases.push_back({"trailing", BuildSafetensors(json{{"a", Tensor("F32", {1}, 0, 4)}}, f8),
                   "the tensors end at data byte 4 but the data buffer has 8 bytes"});
  cases.push_back(
      {"bad utf8 name",
       BuildSafetensors(std::string("{\"model.w\xff\": ") + Tensor("F32", {2}, 0, 8).dump() + "}",
                        f8),
       "header is not valid UTF-8 at header byte 9 (after \"{\"model.w\")"});
  cases.push_back(
      {"overlong utf8",
       BuildSafetensors(std::string("{\"\xc0\xaf\": ") + Tensor("F32", {2}, 0, 8).dump() + "}", f8),
       "not valid UTF-8 at header byte 2"});
  cases.push_back({"duplicate name",
                   BuildSafetensors(std::string("{\"a\": ") + Tensor("F32", {1}, 0, 4).dump() +
                                        ", \"a\": " + Tensor("F32", {1}, 4, 8).dump() + "}",
                                    f8),
                   "duplicate key 'a'"});
  cases.push_back({"metadata value", BuildSafetensors(json{{"__metadata__", {{"format", 1}}}}, ""),
                   "'__metadata__' value of 'format' is a JSON number, not a string"});
  cases.push_back({"metadata type", BuildSafetensors(json{{"__metadata__", {1, 2}}}, ""),
                   "'__metadata__' is a JSON array, not an object"});
  return cases;
}

TEST(SafetensorsFileTest, RejectsMalformedInput) {
  for (const BadCase& c : BadCases()) {
    SCOPED_TRACE(c.label);
    auto file = Parse(c.bytes);
    ASSERT_FALSE(file.ok());
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(file.status().message(), HasSubstr("test.safetensors"));
    EXPECT_THAT(file.status().message(), HasSubstr(c.message));
  }
}

TEST(SafetensorsFileTest, OpenMapsFileAndNamesPathInErrors) {
  std::string dir = TestDir();
  WriteFile(dir + "/ok.safetensors", SampleFile());
  auto file = SafetensorsFile::Open(dir + "/ok.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->path(), dir + "/ok.safetensors");
  EXPECT_EQ(FloatAt(*(*file)->Find("w"), 1, 1), 5.0f);

  auto missing = SafetensorsFile::Open(dir + "/nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.safetensors"));

  WriteFile(dir + "/bad.safetensors", "abc");
  auto bad = SafetensorsFile::Open(dir + "/bad.safetensors");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr(dir + "/bad.safetensors: file is 3 bytes"));
}

TEST(SafetensorsCheckpointTest, SingleFileDirectoryAndPath) {
  std::string dir = TestDir();
  WriteFile(dir + "/model.safetensors", SampleFile());
  for (const std::string& path : {dir, dir + "/model.safetensors"}) {
    SCOPED_TRACE(path);
    auto ckpt = SafetensorsCheckpoint::Open(path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_THAT((*ckpt)->TensorNames(), ElementsAre("b", "i", "w"));
    EXPECT_EQ((*ckpt)->files().size(), 1u);
    auto w = (*ckpt)->Get("w");
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(FloatAt(*w, 2, 0), 8.0f);
    auto missing = (*ckpt)->Get("lm_head.weight");
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(missing.status().message(),
                HasSubstr("tensor 'lm_head.weight' not found in checkpoint '" + path + "'"));
  }
}

// Two shards: shard 1 holds "a" (F32 [2, 2]) and "extra" (not in the index), shard 2 holds "b"
// (I32 [3]).
void WriteShards(const std::string& dir) {
  WriteFile(dir + "/model-00001-of-00002.safetensors",
            BuildSafetensors(
                json{{"a", Tensor("F32", {2, 2}, 0, 16)}, {"extra", Tensor("U8", {1}, 16, 17)}},
                Bytes(std::vector<float>{1, 2, 3, 4}) + "x"));
  WriteFile(dir + "/model-00002-of-00002.safetensors",
            BuildSafetensors(json{{"b", Tensor("I32", {3}, 0, 12)}},
                             Bytes(std::vector<int32_t>{-5, 6, 7})));
}

void WriteIndex(const std::string& dir, const json& index) {
  WriteFile(dir + "/model.safetensors.index.json", index.dump());
}

json GoodIndex() {
  return {{"metadata", {{"total_size", 28}}},
          {"weight_map",
           {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}}}};
}

TEST(SafetensorsCheckpointTest, ShardedCheckpoint) {
  std::string dir = TestDir();
  WriteShards(dir);
  WriteIndex(dir, GoodIndex());
  for (const std::string& path : {dir, dir + "/model.safetensors.index.json"}) {
    SCOPED_TRACE(path);
    auto ckpt = SafetensorsCheckpoint::Open(path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    // "extra" is in shard 1 but not in the index: ignored.
    EXPECT_THAT((*ckpt)->TensorNames(), ElementsAre("a", "b"));
    ASSERT_EQ((*ckpt)->files().size(), 2u);
    EXPECT_THAT((*ckpt)->files()[1]->path(), HasSubstr("model-00002-of-00002.safetensors"));
    auto a = (*ckpt)->Get("a");
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(FloatAt(*a, 1, 0), 3.0f);
    auto a_col = a->ColumnRange(1, 2);
    ASSERT_TRUE(a_col.ok());
    EXPECT_EQ(FloatAt(*a_col, 1, 0), 4.0f);
    auto b = (*ckpt)->Get("b");
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->dtype, DType::kI32);
    int32_t last;
    std::memcpy(&last, b->data + 8, 4);
    EXPECT_EQ(last, 7);
    EXPECT_EQ((*ckpt)->Get("extra").status().code(), absl::StatusCode::kNotFound);
  }
}

TEST(SafetensorsCheckpointTest, IndexErrors) {
  std::string dir = TestDir();
  WriteShards(dir);
  const std::string index = dir + "/model.safetensors.index.json";
  struct Case {
    std::string label;
    std::string text;
    absl::StatusCode code;
    std::string message;
  };
  json missing_shard = GoodIndex();
  missing_shard["weight_map"]["c"] = "model-00003-of-00003.safetensors";
  json absent_tensor = GoodIndex();
  absent_tensor["weight_map"]["c"] = "model-00002-of-00002.safetensors";
  json escape = GoodIndex();
  escape["weight_map"]["c"] = "../x.safetensors";
  json absolute = GoodIndex();
  absolute["weight_map"]["c"] = "/etc/passwd";
  json not_string = GoodIndex();
  not_string["weight_map"]["c"] = 3;
  const std::vector<Case> cases = {
      {"syntax", "{\"weight_map\": ", absl::StatusCode::kInvalidArgument, "invalid JSON"},
      {"not object", "[]", absl::StatusCode::kInvalidArgument, "index is a JSON array"},
      {"no weight_map", "{\"metadata\": {}}", absl::StatusCode::kInvalidArgument,
       "missing 'weight_map'"},
      {"weight_map type", "{\"weight_map\": []}", absl::StatusCode::kInvalidArgument,
       "'weight_map' is a JSON array, not an object"},
      {"duplicate", "{\"weight_map\": {\"a\": \"x\", \"a\": \"y\"}}",
       absl::StatusCode::kInvalidArgument, "duplicate key 'a'"},
      {"missing shard", missing_shard.dump(), absl::StatusCode::kNotFound,
       "shard 'model-00003-of-00003.safetensors' (holding tensor 'c')"},
      {"absent tensor", absent_tensor.dump(), absl::StatusCode::kInvalidArgument,
       "tensor 'c' is mapped to shard 'model-00002-of-00002.safetensors' but that shard does "
       "not contain it"},
      {"escape", escape.dump(), absl::StatusCode::kInvalidArgument,
       "tensor 'c': shard '../x.safetensors' escapes the checkpoint directory"},
      {"absolute", absolute.dump(), absl::StatusCode::kInvalidArgument,
       "shard '/etc/passwd' is an absolute path"},
      {"not string", not_string.dump(), absl::StatusCode::kInvalidArgument,
       "weight_map entry for tensor 'c' is a JSON number, not a string"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    WriteFile(index, c.text);
    auto ckpt = SafetensorsCheckpoint::Open(dir);
    ASSERT_FALSE(ckpt.ok());
    EXPECT_EQ(ckpt.status().code(), c.code);
    EXPECT_THAT(ckpt.status().message(), HasSubstr(index));
    EXPECT_THAT(ckpt.status().message(), HasSubstr(c.message));
  }
}

TEST(SafetensorsCheckpointTest, BadShardIsNamed) {
  std::string dir = TestDir();
  WriteShards(dir);
  WriteFile(dir + "/model-00002-of-00002.safetensors", "xx");
  WriteIndex(dir, GoodIndex());
  auto ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr("shard 'model-00002-of-00002.safetensors' (holding tensor 'b')"));
  EXPECT_THAT(ckpt.status().message(), HasSubstr("file is 2 bytes"));
}

TEST(SafetensorsCheckpointTest, EmptyDirectoryAndMissingPath) {
  std::string dir = TestDir();
  auto empty = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(empty.status().message(),
              HasSubstr("no model.safetensors or model.safetensors.index.json"));
  auto missing = SafetensorsCheckpoint::Open(dir + "/absent.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("absent.safetensors"));
}

}  // namespace
}  // namespace shardserve
