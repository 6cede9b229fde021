#include "worker/weights/tensor.h"

#include <cstring>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

using ::testing::HasSubstr;

// A 3x4 F32 matrix holding 0..11 row-major.
class TensorViewTest : public ::testing::Test {
 protected:
  TensorViewTest() : values_(12) {
    std::iota(values_.begin(), values_.end(), 0.0f);
    view_.name = "w";
    view_.dtype = DType::kF32;
    view_.shape = {3, 4};
    view_.data = reinterpret_cast<const uint8_t*>(values_.data());
    view_.row_stride = 16;
  }

  static float At(const TensorView& v, int64_t r, int64_t c) {
    float x;
    std::memcpy(&x, v.data + r * v.row_stride + c * sizeof(float), sizeof(float));
    return x;
  }

  std::vector<float> values_;
  TensorView view_;
};

TEST_F(TensorViewTest, Basics) {
  EXPECT_EQ(view_.NumElements(), 12);
  EXPECT_EQ(view_.Rows(), 3);
  EXPECT_EQ(view_.RowBytes(), 16u);
  EXPECT_EQ(view_.ByteSize(), 48u);
  EXPECT_TRUE(view_.IsContiguous());
  EXPECT_EQ(ShapeString(view_.shape), "[3, 4]");
  EXPECT_EQ(ShapeString({}), "[]");
}

TEST_F(TensorViewTest, RowRangeSelectsRows) {
  absl::StatusOr<TensorView> rows = view_.RowRange(1, 3);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape, (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(rows->IsContiguous());
  EXPECT_EQ(rows->ByteSize(), 32u);
  EXPECT_EQ(At(*rows, 0, 0), 4.0f);
  EXPECT_EQ(At(*rows, 1, 3), 11.0f);
  absl::StatusOr<TensorView> empty = view_.RowRange(3, 3);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->NumElements(), 0);
}

TEST_F(TensorViewTest, ColumnRangeIsStrided) {
  absl::StatusOr<TensorView> cols = view_.ColumnRange(2, 4);
  ASSERT_TRUE(cols.ok()) << cols.status();
  EXPECT_EQ(cols->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(cols->row_stride, 16u);
  EXPECT_EQ(cols->RowBytes(), 8u);
  EXPECT_FALSE(cols->IsContiguous());
  EXPECT_EQ(At(*cols, 0, 0), 2.0f);
  EXPECT_EQ(At(*cols, 0, 1), 3.0f);
  EXPECT_EQ(At(*cols, 2, 0), 10.0f);
  // Rows of a column slice keep the stride.
  absl::StatusOr<TensorView> both = cols->RowRange(1, 2);
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(At(*both, 0, 1), 7.0f);
}

TEST_F(TensorViewTest, RowRangeErrorsNameTensorAndRange) {
  absl::StatusOr<TensorView> bad = view_.RowRange(2, 4);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("tensor 'w' [3, 4] F32"));
  EXPECT_THAT(bad.status().message(), HasSubstr("row range [2, 4) is outside [0, 3)"));
  EXPECT_EQ(view_.RowRange(-1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(view_.RowRange(2, 1).status().message(), HasSubstr("row range [2, 1)"));
}

TEST_F(TensorViewTest, ColumnRangeErrors) {
  absl::StatusOr<TensorView> bad = view_.ColumnRange(1, 5);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("column range [1, 5) is outside [0, 4)"));
  EXPECT_THAT(view_.ColumnRange(3, 2).status().message(), HasSubstr("column range [3, 2)"));

  TensorView vec = view_;
  vec.shape = {12};
  vec.row_stride = 4;
  absl::StatusOr<TensorView> one_d = vec.ColumnRange(0, 1);
  EXPECT_EQ(one_d.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(one_d.status().message(), HasSubstr("needs a 2-D tensor"));

  TensorView cube = view_;
  cube.shape = {3, 2, 2};
  EXPECT_THAT(cube.ColumnRange(0, 1).status().message(), HasSubstr("needs a 2-D tensor"));
}

TEST_F(TensorViewTest, ZeroDimensional) {
  TensorView scalar = view_;
  scalar.shape = {};
  EXPECT_EQ(scalar.NumElements(), 1);
  EXPECT_EQ(scalar.Rows(), 1);
  EXPECT_EQ(scalar.ByteSize(), 4u);
  absl::StatusOr<TensorView> rows = scalar.RowRange(0, 1);
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rows.status().message(), HasSubstr("0-D tensor"));
}

TEST_F(TensorViewTest, OneDimensionalRows) {
  TensorView vec = view_;
  vec.shape = {12};
  vec.row_stride = 4;
  absl::StatusOr<TensorView> part = vec.RowRange(5, 8);
  ASSERT_TRUE(part.ok());
  EXPECT_EQ(part->shape, (std::vector<int64_t>{3}));
  float x;
  std::memcpy(&x, part->data, 4);
  EXPECT_EQ(x, 5.0f);
}

// A Q8_0 matrix: 2 rows of 64 values = 2 blocks of 34 bytes per row.
TEST(TensorViewBlockTest, ColumnRangeMustBeBlockAligned) {
  std::vector<uint8_t> bytes(2 * 68);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  TensorView q;
  q.name = "blk.0.ffn_down.weight";
  q.dtype = DType::kQ8_0;
  q.shape = {2, 64};
  q.data = bytes.data();
  q.row_stride = 68;
  EXPECT_EQ(q.RowBytes(), 68u);
  EXPECT_EQ(q.ByteSize(), 136u);

  absl::StatusOr<TensorView> second = q.ColumnRange(32, 64);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->data, bytes.data() + 34);
  EXPECT_EQ(second->RowBytes(), 34u);
  EXPECT_EQ(second->row_stride, 68u);
  EXPECT_EQ(second->data[second->row_stride], 68 + 34);

  absl::StatusOr<TensorView> bad = q.ColumnRange(16, 64);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("blk.0.ffn_down.weight"));
  EXPECT_THAT(bad.status().message(), HasSubstr("not aligned to the block size 32"));
  EXPECT_THAT(q.ColumnRange(0, 48).status().message(), HasSubstr("column range [0, 48)"));

  absl::StatusOr<TensorView> row = q.RowRange(1, 2);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->data, bytes.data() + 68);
}

TEST(TensorViewBlockTest, OneDimensionalBlockRows) {
  std::vector<uint8_t> bytes(3 * 18);
  TensorView q;
  q.name = "v";
  q.dtype = DType::kQ4_0;
  q.shape = {96};
  q.data = bytes.data();
  absl::StatusOr<TensorView> ok = q.RowRange(32, 96);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->data, bytes.data() + 18);
  EXPECT_EQ(ok->ByteSize(), 36u);
  EXPECT_THAT(q.RowRange(1, 33).status().message(), HasSubstr("not aligned to the block size"));
}

}  // namespace
}  // namespace shardserve
