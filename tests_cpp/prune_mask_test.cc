// apply_mask, count_zeros, N:M checks and argument parsing.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/prune/mask.h"
#include "testing/random.h"

namespace sparseforge {
namespace prune {
namespace {

TEST(Mask, ApplyMaskZeroesExactlyThePrunedEntriesInPlace) {
  for (size_t cols : testing::awkward_sizes()) {
    const size_t rows = 3, stride = cols + 2;
    std::vector<float> w(rows * stride, 5.0f);
    std::vector<Float16> h(rows * stride, f32_to_f16(-2.0f));
    std::vector<uint8_t> keep(rows * cols);
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = static_cast<uint8_t>(i % 3 != 1);
    apply_mask(MatrixView<float>(w.data(), rows, cols, stride), {keep.data(), rows, cols}, 2);
    apply_mask(MatrixView<Float16>(h.data(), rows, cols, stride), {keep.data(), rows, cols}, 2);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < stride; ++c) {
        const bool in = c < cols;
        const float expect = (in && !keep[r * cols + c]) ? 0.0f : 5.0f;
        ASSERT_EQ(w[r * stride + c], expect);
        ASSERT_EQ(f32_bits(w[r * stride + c]) >> 31, 0u);  // +0, not -0
        ASSERT_EQ(to_f32(h[r * stride + c]), (in && !keep[r * cols + c]) ? 0.0f : -2.0f);
      }
    }
  }
}

TEST(Mask, MaskedCopyEqualsCopyThenApplyAndCountsZeros) {
  for (size_t cols : testing::awkward_sizes()) {
    const size_t rows = 4, stride = cols + 3;
    std::vector<float> w(rows * stride);
    const auto v = testing::small_ints(rows * stride, cols, 2);
    for (size_t i = 0; i < w.size(); ++i) w[i] = v[i] == 0 ? -0.0f : v[i];
    std::vector<uint8_t> keep(rows * cols);
    for (size_t i = 0; i < keep.size(); ++i) keep[i] = static_cast<uint8_t>(i % 5 != 2);
    std::vector<float> out(rows * cols, 7.0f);
    const size_t zeros =
        masked_copy(ConstMatrixView<float>(w.data(), rows, cols, stride), {keep.data(), rows, cols},
                    MatrixView<float>(out.data(), rows, cols), 2);
    size_t expect_zeros = 0;
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        const float expect = keep[r * cols + c] ? w[r * stride + c] : 0.0f;
        ASSERT_EQ(f32_bits(out[r * cols + c]), f32_bits(expect));  // -0 kept, +0 for pruned
        expect_zeros += expect == 0.0f;
      }
    }
    ASSERT_EQ(zeros, expect_zeros);
  }
  std::vector<float> w(8, 1.0f), out16(8);
  std::vector<uint8_t> keep(8, 1);
  std::vector<Float16> wrong(8);
  EXPECT_THROW(masked_copy(ConstMatrixView<float>(w.data(), 2, 4), {keep.data(), 2, 4},
                           MatrixView<Float16>(wrong.data(), 2, 4), 1),
               InvalidArgument);
  EXPECT_THROW(masked_copy(ConstMatrixView<float>(w.data(), 2, 4), {keep.data(), 2, 4},
                           MatrixView<float>(out16.data(), 4, 2), 1),
               InvalidArgument);
}

TEST(Mask, CountZerosBothSignsNotNaN) {
  std::vector<float> w = {0.0f, -0.0f, 1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f, 3.0f};
  EXPECT_EQ(count_zeros(ConstMatrixView<float>(w.data(), 2, 3), 2), 3u);
  std::vector<BFloat16> b = {f32_to_bf16(-0.0f), f32_to_bf16(1e-30f), f32_to_bf16(0.0f)};
  EXPECT_EQ(count_zeros(ConstMatrixView<BFloat16>(b.data(), 1, 3), 1), 2u);
}

TEST(Mask, NMViolationsCountsAndLocates) {
  // 2 rows x 8 cols, pattern 2:4: groups (0,0) ok, (0,4) has 3 non-zeros, (1,0) has 4.
  std::vector<float> w = {1, 0, 0, 2, 1, 1, 1, 0,  //
                          1, 1, 1, 1, 0, 0, 0, 0};
  const NMViolations v = nm_violations(ConstMatrixView<float>(w.data(), 2, 8), {2, 4}, 10, 2);
  EXPECT_EQ(v.groups, 4u);
  EXPECT_EQ(v.violating, 2u);
  ASSERT_EQ(v.first.size(), 2u);
  EXPECT_EQ(v.first[0], std::make_pair(size_t{0}, size_t{4}));
  EXPECT_EQ(v.first[1], std::make_pair(size_t{1}, size_t{0}));
  const NMViolations capped = nm_violations(ConstMatrixView<float>(w.data(), 2, 8), {2, 4}, 1, 1);
  EXPECT_EQ(capped.violating, 2u);
  EXPECT_EQ(capped.first.size(), 1u);
  EXPECT_THROW(nm_violations(ConstMatrixView<float>(w.data(), 2, 8), {2, 3}, 1, 1),
               InvalidArgument);
}

TEST(Mask, ParsePatternAndScope) {
  EXPECT_EQ(parse_nm("2:4").n, 2);
  EXPECT_EQ(parse_nm("16:32").m, 32);
  for (const char* bad : {"", "2", "2:", ":4", "4:2", "2:2", "0:4", "a:b", "2:4:8", "1:33", "-1:4",
                          " 2:4", "2 :4", "99999999999:4"}) {
    EXPECT_THROW(parse_nm(bad), InvalidArgument) << bad;
  }
  EXPECT_EQ(parse_scope("row"), Scope::kRow);
  EXPECT_EQ(parse_scope("layer"), Scope::kLayer);
  EXPECT_THROW(parse_scope("global"), InvalidArgument);
}

TEST(Mask, PruneCountIsPythonIntOfProduct) {
  EXPECT_EQ(prune_count(0.5, 4096), 2048u);
  EXPECT_EQ(prune_count(0.29, 100), 28u);  // int(100 * 0.29) == 28 in Python too
  EXPECT_EQ(prune_count(0.0, 7), 0u);
  EXPECT_EQ(prune_count(0.999999, 7), 6u);
  EXPECT_THROW(prune_count(1.0, 7), InvalidArgument);
}

}  // namespace
}  // namespace prune
}  // namespace sparseforge
