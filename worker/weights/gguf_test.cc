#include "worker/weights/gguf.h"

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/weights/gguf_test_util.h"

namespace shardserve {
namespace {

using ::shardserve::testing::GgufBuilder;
using ::shardserve::testing::ModelsDir;
using ::shardserve::testing::PutLE;
using ::shardserve::testing::PutString;
using ::shardserve::testing::SourcePath;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint32_t kF32 = 0, kQ8_0 = 8;

// Parses `bytes`, expecting INVALID_ARGUMENT whose message has every one of `parts`.
void ExpectInvalid(const std::vector<uint8_t>& bytes, std::vector<std::string> parts) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(bytes, "test.gguf");
  ASSERT_FALSE(file.ok()) << "parsed; expected an error with '" << parts[0] << "'";
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  const std::string message(file.status().message());
  EXPECT_THAT(message, HasSubstr("test.gguf: "));
  for (const std::string& part : parts) {
    EXPECT_THAT(message, HasSubstr(part));
  }
}

std::unique_ptr<GgufFile> ParseOk(const std::vector<uint8_t>& bytes) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(bytes, "test.gguf");
  EXPECT_TRUE(file.ok()) << file.status();
  return file.ok() ? std::move(*file) : nullptr;
}

// --- A file written by the gguf Python package (make_gguf_testdata.py) -----------------------

class AllTypesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = SourcePath("worker/weights/testdata/gguf/all_types.gguf");
    absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path_);
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  std::string path_;
  std::unique_ptr<GgufFile> file_;
};

TEST_F(AllTypesTest, Header) {
  EXPECT_EQ(file_->version(), 3u);
  EXPECT_EQ(file_->alignment(), 64u);
  EXPECT_EQ(file_->data_offset() % 64, 0u);
  EXPECT_EQ(file_->path(), path_);
  // 22 keys written by the script + general.architecture + general.alignment.
  EXPECT_EQ(file_->metadata().size(), 24u);
  EXPECT_EQ(*file_->GetString("general.architecture"), "test");
}

TEST_F(AllTypesTest, Scalars) {
  EXPECT_EQ(*file_->GetUint("t.u8"), 200u);
  EXPECT_EQ(*file_->GetInt("t.i8"), -100);
  EXPECT_EQ(*file_->GetUint("t.u16"), 60000u);
  EXPECT_EQ(*file_->GetInt("t.i16"), -30000);
  EXPECT_EQ(*file_->GetUint("t.u32"), 4000000000u);
  EXPECT_EQ(*file_->GetInt("t.u32"), 4000000000);
  EXPECT_EQ(*file_->GetInt("t.i32"), -2000000000);
  EXPECT_EQ(*file_->GetFloat("t.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(*file_->GetBool("t.bool"), true);
  EXPECT_EQ(*file_->GetString("t.string"), "h\xC3\xA9llo w\xC3\xB6rld");
  EXPECT_EQ(*file_->GetUint("t.u64"), 18000000000000000000u);
  EXPECT_EQ(*file_->GetInt("t.i64"), -9000000000000000000);
  EXPECT_EQ(*file_->GetFloat("t.f64"), 2.718281828459045);
  EXPECT_EQ(*file_->GetFloat("t.u16"), 60000.0);  // integers convert to float
  EXPECT_EQ(file_->FindValue("t.u8")->type(), GgufType::kU8);
  EXPECT_EQ(file_->FindValue("t.f64")->DebugString(), "f64 2.71828");
}

TEST_F(AllTypesTest, Arrays) {
  EXPECT_THAT(*file_->GetIntArray("t.arr.u8"), ElementsAre(1, 2, 255));
  EXPECT_THAT(*file_->GetIntArray("t.arr.i16"), ElementsAre(-5, 7));
  EXPECT_THAT(*file_->GetIntArray("t.arr.u32"), ElementsAre(1, 4000000000));
  EXPECT_THAT(*file_->GetIntArray("t.arr.i32"), ElementsAre(-1, 0, 1));
  EXPECT_THAT(*file_->GetIntArray("t.arr.bool"), ElementsAre(1, 0, 1));
  EXPECT_THAT(*file_->GetFloatArray("t.arr.f32"), ElementsAre(0.5, -1.25));
  EXPECT_THAT(*file_->GetFloatArray("t.arr.f64"), ElementsAre(1e300));
  EXPECT_THAT(*file_->GetFloatArray("t.arr.i32"), ElementsAre(-1.0, 0.0, 1.0));
  EXPECT_THAT(*file_->GetStringArray("t.arr.string"), ElementsAre("a", "", "\xC3\xBC"));
  const GgufValue* nested = file_->FindValue("t.arr.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_TRUE(nested->IsArray());
  EXPECT_EQ(nested->array_type(), GgufType::kArray);
  EXPECT_EQ(nested->ArraySize(), 2u);
  ASSERT_EQ(nested->nested().size(), 2u);
  EXPECT_THAT(*nested->nested()[0].AsIntArray(), ElementsAre(1, 2));
  EXPECT_THAT(*nested->nested()[1].AsIntArray(), ElementsAre(3));
  EXPECT_EQ(file_->FindValue("t.arr.string")->DebugString(), "array<string>[3]");
}

TEST_F(AllTypesTest, GetterErrorsNameKeyAndFile) {
  absl::StatusOr<std::string> s = file_->GetString("t.u32");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.status().message(), HasSubstr(path_ + ": metadata key 't.u32'"));
  EXPECT_THAT(s.status().message(), HasSubstr("expected string, found u32"));

  absl::StatusOr<uint64_t> u = file_->GetUint("t.i8");
  EXPECT_EQ(u.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(u.status().message(), HasSubstr("'t.i8': value -100 is negative"));

  absl::StatusOr<int64_t> i = file_->GetInt("t.u64");
  EXPECT_EQ(i.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(i.status().message(), HasSubstr("does not fit in int64"));

  absl::StatusOr<std::vector<int64_t>> a = file_->GetIntArray("t.arr.u64");
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(a.status().message(), HasSubstr("'t.arr.u64': element 0"));

  absl::StatusOr<std::vector<std::string>> sa = file_->GetStringArray("t.arr.u8");
  EXPECT_EQ(sa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(sa.status().message(), HasSubstr("expected array of string, found array of u8"));

  absl::StatusOr<std::vector<double>> fa = file_->GetFloatArray("t.arr.string");
  EXPECT_EQ(fa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(fa.status().message(), HasSubstr("found array of string"));

  absl::StatusOr<bool> b = file_->GetBool("t.u8");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(b.status().message(), HasSubstr("expected bool, found u8"));

  absl::StatusOr<double> f = file_->GetFloat("t.string");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr("expected a number, found string"));

  absl::StatusOr<std::string> missing = file_->GetString("no.such.key");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(path_ + ": metadata key 'no.such.key'"));
  EXPECT_EQ(file_->FindValue("no.such.key"), nullptr);
}

TEST_F(AllTypesTest, Tensors) {
  ASSERT_EQ(file_->tensors().size(), 6u);
  const TensorView* f32 = file_->Find("f32");
  ASSERT_NE(f32, nullptr);
  EXPECT_EQ(f32->dtype, DType::kF32);
  EXPECT_EQ(f32->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f32->row_stride, 12u);
  float values[6];
  std::memcpy(values, f32->data, sizeof(values));
  EXPECT_THAT(values, ElementsAre(0, 1, 2, 3, 4, 5));

  EXPECT_EQ(file_->Find("f16")->dtype, DType::kF16);
  EXPECT_EQ(file_->Find("f16")->shape, std::vector<int64_t>{4});
  EXPECT_EQ(file_->Find("i32")->dtype, DType::kI32);
  const TensorView* q8 = file_->Find("q8_0");
  EXPECT_EQ(q8->dtype, DType::kQ8_0);
  EXPECT_EQ(q8->shape, (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(q8->row_stride, 34u);
  EXPECT_EQ(file_->Find("bf16")->dtype, DType::kBF16);
  EXPECT_EQ(file_->Find("bf16")->shape, (std::vector<int64_t>{2, 2}));
  const TensorView* cube = file_->Find("cube");
  EXPECT_EQ(cube->shape, (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(cube->row_stride, 48u);
  float last;
  std::memcpy(&last, cube->data + 23 * 4, 4);
  EXPECT_EQ(last, 23.0f);
  // Every tensor starts on the 64-byte alignment.
  for (const TensorView& t : file_->tensors()) {
    const TensorView* first = &file_->tensors()[0];
    EXPECT_EQ((t.data - first->data) % 64, 0) << t.name;
  }
  EXPECT_EQ(file_->Find("nope"), nullptr);
  absl::StatusOr<TensorView> missing = file_->Get("nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(path_ + ": no tensor 'nope'"));
  EXPECT_EQ(file_->Get("cube")->shape, cube->shape);
}

TEST(GgufOpenTest, MissingFileIsNotFound) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open("/nonexistent/x.gguf");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/x.gguf"));
}

// --- The real default model -------------------------------------------------------------------

TEST(RealModelTest, SmolLM2Q4_1) {
  const std::string path = ModelsDir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << path << testing::kRunSetup;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const GgufFile& f = **file;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.metadata().size(), 33u);
  EXPECT_EQ(f.tensors().size(), 272u);
  std::map<DType, int> types;
  for (const TensorView& t : f.tensors()) ++types[t.dtype];
  EXPECT_EQ(types[DType::kF32], 61);
  EXPECT_EQ(types[DType::kQ4_1], 210);
  EXPECT_EQ(types[DType::kQ8_0], 1);
  EXPECT_EQ(f.Find("token_embd.weight")->shape, (std::vector<int64_t>{49152, 576}));
  EXPECT_EQ(f.Find("token_embd.weight")->dtype, DType::kQ8_0);
  EXPECT_EQ(f.Find("blk.0.attn_k.weight")->shape, (std::vector<int64_t>{192, 576}));
  EXPECT_EQ(f.Find("blk.29.ffn_down.weight")->shape, (std::vector<int64_t>{576, 1536}));
  EXPECT_EQ(f.Find("output.weight"), nullptr);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.tokens")->size(), 49152u);
  EXPECT_EQ(f.GetStringArray("tokenizer.ggml.merges")->size(), 48900u);
  EXPECT_EQ(f.GetIntArray("tokenizer.ggml.token_type")->size(), 49152u);
  EXPECT_EQ(*f.GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_THAT(*f.GetString("tokenizer.chat_template"), HasSubstr("<|im_start|>"));

  absl::StatusOr<ModelConfig> config = ModelConfigFromGguf(f);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kLlama);
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->vocab_size, 49152);
  EXPECT_EQ(config->hidden_size, 576);
  EXPECT_EQ(config->intermediate_size, 1536);
  EXPECT_EQ(config->num_hidden_layers, 30);
  EXPECT_EQ(config->num_attention_heads, 9);
  EXPECT_EQ(config->num_key_value_heads, 3);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->max_position_embeddings, 8192);
  EXPECT_EQ(config->rms_norm_eps, 1e-5);  // the f32 1e-5 widened by its shortest decimal
  EXPECT_EQ(config->rope_theta, 100000.0);
  EXPECT_TRUE(config->rope_scaling.type.empty());
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(config->num_local_experts, 0);
}

// --- Malformed input --------------------------------------------------------------------------

std::vector<uint8_t> Header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
  PutLE(b, version, 4);
  PutLE(b, n_tensors, 8);
  PutLE(b, n_kv, 8);
  return b;
}

TEST(GgufMalformedTest, HeaderErrors) {
  ExpectInvalid({'G', 'G', 'U'}, {"not a GGUF file: only 3 bytes"});
  std::vector<uint8_t> bad_magic = Header(3, 0, 0);
  bad_magic[3] = 'X';
  ExpectInvalid(bad_magic, {"magic is 'GGUX'"});
  ExpectInvalid({'G', 'G', 'U', 'F', 3, 0}, {"header: version", "needs 4 bytes"});
  ExpectInvalid(Header(1, 0, 0), {"unsupported GGUF version 1"});
  ExpectInvalid(Header(4, 0, 0), {"unsupported GGUF version 4"});
  ExpectInvalid(Header(0x03000000, 0, 0), {"big-endian"});
  ExpectInvalid(Header(3, 0, 1000), {"0 tensors and 1000 metadata entries cannot fit"});
  ExpectInvalid(Header(3, uint64_t{1} << 62, 0), {"cannot fit"});
  ExpectInvalid(Header(3, ~uint64_t{0}, ~uint64_t{0}), {"cannot fit"});
  std::vector<uint8_t> truncated = Header(3, 0, 0);
  truncated.resize(20);
  ExpectInvalid(truncated, {"metadata count"});
}

TEST(GgufMalformedTest, EmptyFileAndVersion2) {
  std::unique_ptr<GgufFile> v3 = ParseOk(Header(3, 0, 0));
  ASSERT_NE(v3, nullptr);
  EXPECT_TRUE(v3->metadata().empty());
  EXPECT_TRUE(v3->tensors().empty());
  GgufBuilder b;
  b.version = 2;
  b.U32("k", 5);
  b.F32Tensor("t", {1, 2}, {1, 2});
  std::unique_ptr<GgufFile> v2 = ParseOk(b.Build());
  ASSERT_NE(v2, nullptr);
  EXPECT_EQ(v2->version(), 2u);
  EXPECT_EQ(*v2->GetUint("k"), 5u);
}

TEST(GgufMalformedTest, MetadataErrors) {
  {
    std::vector<uint8_t> b = Header(3, 0, 1);
    PutLE(b, 1000, 8);  // key length
    b.insert(b.end(), {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'});
    ExpectInvalid(b, {"metadata entry 0: key length 1000", "runs past the end of the file"});
  }
  {
    GgufBuilder b;
    b.Kv("k.bad", 13, {0, 0, 0, 0});
    ExpectInvalid(b.Build(), {"metadata key 'k.bad': unknown value type 13"});
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> v;
    PutLE(v, 4, 4);                  // u32 elements
    PutLE(v, uint64_t{1} << 40, 8);  // far too many
    v.resize(v.size() + 64);
    b.Kv("k.arr", 9, v);
    ExpectInvalid(b.Build(), {"metadata key 'k.arr'", "array of 1099511627776 u32",
                              "larger than the rest of the file"});
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> v;
    PutLE(v, 77, 4);  // element type
    PutLE(v, 1, 8);
    v.resize(v.size() + 16);
    b.Kv("k.arr", 9, v);
    ExpectInvalid(b.Build(), {"metadata key 'k.arr': unknown array element type 77"});
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> v;
    PutLE(v, 8, 4);  // strings
    PutLE(v, 2, 8);
    PutString(v, "ok");
    PutLE(v, 500, 8);  // second string's length runs past the end
    v.resize(v.size() + 20);
    b.Kv("k.strs", 9, v);
    ExpectInvalid(b.Build(), {"metadata key 'k.strs'", "string element 1", "length 500"});
  }
  {
    // Arrays nested 9 deep.
    std::vector<uint8_t> v;
    for (int i = 0; i < 9; ++i) {
      PutLE(v, 9, 4);
      PutLE(v, 1, 8);
    }
    PutLE(v, 4, 4);
    PutLE(v, 0, 8);
    GgufBuilder b;
    b.Kv("k.deep", 9, v);
    ExpectInvalid(b.Build(), {"metadata key 'k.deep'", "nested deeper than 8"});
  }
  {
    GgufBuilder b;
    b.U32("k.x", 1);
    b.U32("k.x", 2);
    ExpectInvalid(b.Build(), {"metadata key 'k.x': duplicate key"});
  }
  {
    GgufBuilder b;
    b.U32("k.\xFF\xFE", 1);
    ExpectInvalid(b.Build(), {"metadata entry 0: key 'k.\\xff\\xfe' is not valid UTF-8"});
  }
  {
    GgufBuilder b;
    b.U32("k.\xED\xA0\x80", 1);  // an encoded UTF-16 surrogate
    ExpectInvalid(b.Build(), {"is not valid UTF-8"});
  }
  {
    GgufBuilder b;
    b.U32("", 1);
    ExpectInvalid(b.Build(), {"metadata entry 0: key is empty"});
  }
  {
    GgufBuilder b;
    b.alignment = 1;                  // no padding after the last value
    std::vector<uint8_t> v = {1, 2};  // a u32 needs 4 bytes
    b.Kv("k.short", 4, v);
    ExpectInvalid(b.Build(), {"metadata key 'k.short': u32 at offset", "needs 4 bytes"});
  }
}

TEST(GgufMalformedTest, AlignmentErrors) {
  {
    GgufBuilder b;
    b.U32("general.alignment", 48);
    ExpectInvalid(b.Build(), {"'general.alignment'", "alignment 48 is not a power of two"});
  }
  {
    GgufBuilder b;
    b.U32("general.alignment", 0);
    ExpectInvalid(b.Build(), {"alignment 0 is not a power of two"});
  }
  {
    GgufBuilder b;
    b.String("general.alignment", "32");
    ExpectInvalid(b.Build(), {"'general.alignment'", "expected an integer, found string"});
  }
  {
    GgufBuilder b;
    b.alignment = 128;
    b.U32("general.alignment", 128);
    b.F32Tensor("a", {3}, {1, 2, 3});
    b.F32Tensor("b", {2}, {4, 5});
    std::unique_ptr<GgufFile> f = ParseOk(b.Build());
    ASSERT_NE(f, nullptr);
    EXPECT_EQ(f->alignment(), 128u);
    EXPECT_EQ(f->data_offset() % 128, 0u);
    EXPECT_EQ(f->Find("b")->data - f->Find("a")->data, 128);
  }
}

TEST(GgufMalformedTest, TensorInfoErrors) {
  auto one = [](const std::string& name, std::vector<uint64_t> dims, uint32_t type,
                size_t data_bytes, std::optional<uint64_t> offset = std::nullopt) {
    GgufBuilder b;
    b.Tensor(name, std::move(dims), type, std::vector<uint8_t>(data_bytes), offset);
    return b.Build();
  };
  ExpectInvalid(one("w", {4}, 99, 16), {"tensor 'w': unknown or unsupported GGML type id 99"});
  ExpectInvalid(one("w", {}, kF32, 4), {"tensor 'w': n_dims is 0, expected 1 to 4"});
  ExpectInvalid(one("w", {1, 1, 1, 1, 1}, kF32, 4), {"tensor 'w': n_dims is 5"});
  ExpectInvalid(one("w", {4, 0}, kF32, 0), {"tensor 'w': dimension 1 is 0"});
  ExpectInvalid(one("w", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, 0),
                {"tensor 'w': dimension 1", "overflow"});
  ExpectInvalid(one("w", {~uint64_t{0}}, kF32, 0), {"tensor 'w': dimension 0", "overflow"});
  ExpectInvalid(one("w", {48, 2}, kQ8_0, 0),
                {"tensor 'w': innermost dimension 48 is not a multiple of the Q8_0 block size 32"});
  ExpectInvalid(one("w", {uint64_t{1} << 62}, kF32, 0), {"tensor 'w': byte size overflows"});
  ExpectInvalid(one("w", {4}, kF32, 16, 4),
                {"tensor 'w': data offset 4 is not a multiple of the 32-byte alignment"});
  {
    std::vector<uint8_t> far = one("w", {4}, kF32, 16, 1 << 20);
    far.resize(far.size() - 1);
    ExpectInvalid(far, {"tensor 'w'",
                        "16 bytes of data at offset 1048576 run past the end of "
                        "the data section"});
  }
  ExpectInvalid(one("w", {4}, kF32, 16, ~uint64_t{0} - 31), {"tensor 'w'", "run past the end"});
  ExpectInvalid(one("", {4}, kF32, 16), {"tensor info 0: tensor name is empty"});
  ExpectInvalid(one("bad\xC0", {4}, kF32, 16),
                {"tensor info 0: tensor name 'bad\\xc0'", "not valid UTF-8"});
  {
    GgufBuilder b;
    b.F32Tensor("a", {4}, {1, 2, 3, 4});
    std::vector<uint8_t> bytes = b.Build();
    bytes.resize(bytes.size() - 1);
    ExpectInvalid(bytes, {"tensor 'a'", "run past the end of the data section"});
  }
  {
    GgufBuilder b;
    b.F32Tensor("a", {16}, std::vector<float>(16));
    b.Tensor("b", {4}, kF32, std::vector<uint8_t>(16), 32);
    ExpectInvalid(b.Build(), {"tensor 'b': data at offset 32 overlaps tensor 'a' [0, 64)"});
  }
  {
    GgufBuilder b;
    b.F32Tensor("a", {4}, {1, 2, 3, 4});
    b.F32Tensor("a", {4}, {1, 2, 3, 4});
    ExpectInvalid(b.Build(), {"tensor 'a': duplicate tensor name"});
  }
  {
    GgufBuilder b;
    b.F32Tensor("a", {4}, {1, 2, 3, 4});
    b.tensor_count = 2;
    ExpectInvalid(b.Build(), {"2 tensors and 0 metadata entries cannot fit"});
  }
  {
    GgufBuilder b;
    b.F32Tensor("a", {64}, std::vector<float>(64));
    b.tensor_count = 2;  // the zero data bytes are read as tensor info 1
    ExpectInvalid(b.Build(), {"tensor info 1: tensor name is empty"});
  }
}

TEST(GgufMalformedTest, EveryTruncationIsAnError) {
  GgufBuilder b;
  b.String("general.architecture", "llama");
  b.StringArray("tokenizer.ggml.tokens", {"a", "b", "c"});
  b.I32Array("tokenizer.ggml.token_type", {1, 2, 3});
  b.F32Tensor("a", {2, 2}, {1, 2, 3, 4});
  b.Tensor("q", {32}, kQ8_0, std::vector<uint8_t>(34, 1));
  const std::vector<uint8_t> bytes = b.Build();
  ASSERT_NE(ParseOk(bytes), nullptr);
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A heap copy of exactly n bytes, so ASan would flag any read past the end.
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    absl::StatusOr<std::unique_ptr<GgufFile>> f = GgufFile::FromBytes(prefix, "cut.gguf");
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// --- ModelConfigFromGguf ----------------------------------------------------------------------

GgufBuilder LlamaMetadata() {
  GgufBuilder b;
  b.String("general.architecture", "llama");
  b.U32("llama.context_length", 2048);
  b.U32("llama.embedding_length", 64);
  b.U32("llama.block_count", 2);
  b.U32("llama.feed_forward_length", 128);
  b.U32("llama.attention.head_count", 4);
  b.F32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  b.StringArray("tokenizer.ggml.tokens", {"a", "b", "c", "d", "e", "f", "g", "h"});
  return b;
}

absl::StatusOr<ModelConfig> ConfigOf(const GgufBuilder& b) {
  std::vector<uint8_t> bytes = b.Build();
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::FromBytes(bytes, "meta.gguf");
  if (!file.ok()) return file.status();
  return ModelConfigFromGguf(**file);
}

TEST(ModelConfigFromGgufTest, DefaultsAndDerivedFields) {
  absl::StatusOr<ModelConfig> c = ConfigOf(LlamaMetadata());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->vocab_size, 8);           // from the token list
  EXPECT_EQ(c->num_key_value_heads, 4);  // = heads when absent
  EXPECT_EQ(c->head_dim, 16);            // hidden / heads when absent
  EXPECT_EQ(c->rope_theta, 10000.0);     // llama.cpp's default
  EXPECT_EQ(c->rms_norm_eps, 1e-6);      // shortest decimal of the f32
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_TRUE(c->tie_word_embeddings);  // no output.weight
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
}

TEST(ModelConfigFromGgufTest, OptionalKeys) {
  GgufBuilder b = LlamaMetadata();
  b.U32("llama.attention.head_count_kv", 2);
  b.U32("llama.rope.dimension_count", 16);
  b.U32("llama.attention.key_length", 32);  // wins over rope.dimension_count
  b.F32("llama.rope.freq_base", 500000.0f);
  b.U32("llama.vocab_size", 100);  // wins over the token list
  b.String("llama.rope.scaling.type", "linear");
  b.F32("llama.rope.scaling.factor", 4.0f);
  b.U32("llama.rope.scaling.original_context_length", 512);
  b.U32("tokenizer.ggml.bos_token_id", 1);
  b.U32("tokenizer.ggml.eos_token_id", 2);
  b.U32("tokenizer.ggml.eot_token_id", 7);
  b.F32Tensor("output.weight", {1}, {0});
  absl::StatusOr<ModelConfig> c = ConfigOf(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->vocab_size, 100);
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 512);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2, 7));
}

TEST(ModelConfigFromGgufTest, Mixtral) {
  GgufBuilder b = LlamaMetadata();
  b.U32("llama.expert_count", 8);
  b.U32("llama.expert_used_count", 2);
  absl::StatusOr<ModelConfig> c = ConfigOf(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kMixtral);
  EXPECT_EQ(c->model_type, "mixtral");
  EXPECT_EQ(c->num_local_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);

  GgufBuilder no_used = LlamaMetadata();
  no_used.U32("llama.expert_count", 8);
  c = ConfigOf(no_used);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("'llama.expert_used_count'"));
}

TEST(ModelConfigFromGgufTest, PerLayerHeadCounts) {
  GgufBuilder b = LlamaMetadata();
  b.I32Array("llama.attention.head_count_kv", {2, 2});
  absl::StatusOr<ModelConfig> c = ConfigOf(b);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 2);

  GgufBuilder mixed = LlamaMetadata();
  mixed.I32Array("llama.attention.head_count_kv", {2, 4});
  c = ConfigOf(mixed);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(),
              HasSubstr("'llama.attention.head_count_kv': per-layer values differ (2 and 4)"));
}

TEST(ModelConfigFromGgufTest, Errors) {
  GgufBuilder gpt2;
  gpt2.String("general.architecture", "gpt2");
  absl::StatusOr<ModelConfig> c = ConfigOf(gpt2);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("meta.gguf: metadata key 'general.architecture'"));
  EXPECT_THAT(c.status().message(), HasSubstr("'gpt2' is not supported"));

  c = ConfigOf(GgufBuilder());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("'general.architecture' not found"));

  GgufBuilder missing;
  missing.String("general.architecture", "llama");
  missing.U32("llama.embedding_length", 64);
  c = ConfigOf(missing);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("meta.gguf: metadata key 'llama.block_count'"));

  GgufBuilder wrong_type = LlamaMetadata();
  wrong_type.String("llama.attention.head_count_kv", "two");
  c = ConfigOf(wrong_type);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("'llama.attention.head_count_kv': expected an "
                                              "integer, found string"));

  GgufBuilder bad_heads = LlamaMetadata();
  bad_heads.U32("llama.attention.head_count_kv", 3);  // does not divide 4
  c = ConfigOf(bad_heads);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("meta.gguf"));
  EXPECT_THAT(c.status().message(), HasSubstr("num_key_value_heads"));

  GgufBuilder nv;
  nv.String("general.architecture", "llama");
  nv.U32("llama.context_length", 2048);
  nv.U32("llama.embedding_length", 64);
  nv.U32("llama.block_count", 2);
  nv.U32("llama.feed_forward_length", 128);
  nv.U32("llama.attention.head_count", 4);
  nv.F32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  c = ConfigOf(nv);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("no vocabulary size"));
}

}  // namespace
}  // namespace shardserve
