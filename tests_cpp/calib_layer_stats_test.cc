// LayerStats against float64 formulas: column norms, X^T X, merging, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/error.h"
#include "testing/random.h"

namespace sparseforge {
namespace calib {
namespace {

TEST(LayerStats, MatchesFloat64FormulasAcrossChunksAndDtypes) {
  for (size_t c : {1, 7, 64, 513}) {
    const size_t T = 2 * LayerStats::kChunkTokens + 37;  // three chunks
    const auto x = testing::normal(T * c, c);
    LayerStats s32(c, true), s16(c, true);
    s32.update(ConstMatrixView<float>(x.data(), T, c), 2);
    const auto h = testing::cast_to<Float16>(x);
    s16.update(ConstMatrixView<Float16>(h.data(), T, c), 3);
    std::vector<double> H(c * c), H16(c * c);
    std::vector<float> norms(c);
    s32.hessian(H.data());
    s16.hessian(H16.data());
    s32.col_norms(norms.data());
    ASSERT_EQ(s32.tokens(), T);
    for (size_t i = 0; i < c; ++i) {
      double ss = 0, ss16 = 0;
      for (size_t t = 0; t < T; ++t) {
        ss += double(x[t * c + i]) * x[t * c + i];
        ss16 += double(to_f32(h[t * c + i])) * to_f32(h[t * c + i]);
      }
      EXPECT_NEAR(norms[i], std::sqrt(ss / T), 1e-6 * std::sqrt(ss / T));
      for (size_t j = 0; j <= i; j += std::max<size_t>(1, i / 5)) {
        double s = 0, sh = 0;
        for (size_t t = 0; t < T; ++t) {
          s += double(x[t * c + i]) * x[t * c + j];
          sh += double(to_f32(h[t * c + i])) * to_f32(h[t * c + j]);
        }
        const double tol = 1e-5 * std::sqrt(ss * ss) / T + 1e-9;
        ASSERT_NEAR(H[i * c + j], s / T, tol) << c << " " << i << " " << j;
        ASSERT_EQ(H[i * c + j], H[j * c + i]);
        ASSERT_NEAR(H16[i * c + j], sh / T, tol);
      }
    }
  }
}

TEST(LayerStats, Float64ModeMatchesToRoundoff) {
  const size_t c = 130, T = LayerStats::kChunkTokens + 50;
  const auto x = testing::normal(T * c, 21);
  LayerStats s(c, true, /*float64=*/true);
  s.update(ConstMatrixView<float>(x.data(), T, c), 2);
  std::vector<double> H(c * c);
  s.hessian(H.data());
  for (size_t i = 0; i < c; i += 7) {
    for (size_t j = 0; j <= i; ++j) {
      double v = 0;
      for (size_t t = 0; t < T; ++t) v += double(x[t * c + i]) * x[t * c + j];
      ASSERT_NEAR(H[i * c + j], v / T, 1e-12 * (1 + std::fabs(v / T)));
    }
  }
  LayerStats f32(c, true);
  EXPECT_THROW(s.merged(f32), InvalidArgument);
}

TEST(LayerStats, MergeEqualsOneStreamAndThreadsDoNotMatter) {
  const size_t c = 300, T = 1000;
  const auto x = testing::small_ints(T * c, 3, 4);  // exact in fp32 and float64
  LayerStats all(c, true), a(c, true), b(c, true), t1(c, true);
  all.update(ConstMatrixView<float>(x.data(), T, c), 2);
  t1.update(ConstMatrixView<float>(x.data(), T, c), 1);
  a.update(ConstMatrixView<float>(x.data(), 400, c), 2);
  b.update(ConstMatrixView<float>(x.data() + 400 * c, T - 400, c), 2);
  const LayerStats m = a.merged(b);
  EXPECT_EQ(m.tokens(), T);
  EXPECT_EQ(m.sum_squares(), all.sum_squares());
  EXPECT_EQ(m.xtx_lower(), all.xtx_lower());
  EXPECT_EQ(t1.xtx_lower(), all.xtx_lower());
  EXPECT_EQ(a.tokens(), 400u);  // inputs of merged() unchanged
}

TEST(LayerStats, BadInputLeavesStateUntouched) {
  LayerStats s(4, true);
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  s.update(ConstMatrixView<float>(x.data(), 2, 4), 1);
  const auto before = s.xtx_lower();
  std::vector<float> bad = x;
  bad[6] = std::nanf("");
  EXPECT_THROW(s.update(ConstMatrixView<float>(bad.data(), 2, 4), 1), InvalidArgument);
  bad[6] = 1e20f;
  EXPECT_THROW(s.update(ConstMatrixView<float>(bad.data(), 2, 4), 1), InvalidArgument);
  EXPECT_THROW(s.update(ConstMatrixView<float>(x.data(), 2, 3), 1), InvalidArgument);
  EXPECT_EQ(s.tokens(), 2u);
  EXPECT_EQ(s.xtx_lower(), before);
  LayerStats no_h(4, false), other(5, true);
  std::vector<double> out(16);
  EXPECT_THROW(no_h.hessian(out.data()), InvalidArgument);
  std::vector<float> norms(4);
  EXPECT_THROW(no_h.col_norms(norms.data()), InvalidArgument);  // no tokens yet
  EXPECT_THROW(s.merged(other), InvalidArgument);
  EXPECT_THROW(LayerStats(0, true), InvalidArgument);
  EXPECT_THROW(LayerStats::from_state(2, true, false, 1, {1.0, -1.0}, std::vector<double>(4)),
               InvalidArgument);
}

}  // namespace
}  // namespace calib
}  // namespace sparseforge
