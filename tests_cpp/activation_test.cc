// Deja Vu predictor training: exact small cases, the reduced-rank optimum, threads, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "sparseforge/activation/predictor.h"
#include "sparseforge/core/error.h"
#include "testing/random.h"

namespace sparseforge {
namespace activation {
namespace {

std::vector<float> scores(const LowRankPredictor& p, const float* x) {
  std::vector<double> u(p.rank);
  for (size_t j = 0; j < p.rank; ++j) {
    double s = p.a[j];
    for (size_t i = 0; i < p.in_features; ++i) s += double(x[i]) * p.A[i * p.rank + j];
    u[j] = s;
  }
  std::vector<float> out(p.out_features);
  for (size_t h = 0; h < p.out_features; ++h) {
    double s = 0;
    for (size_t j = 0; j < p.rank; ++j) s += u[j] * p.B[j * p.out_features + h];
    out[h] = static_cast<float>(s);
  }
  return out;
}

// Y = X M + c exactly, with M of rank 2: the coefficients [M; c] have rank 3, and ridge 0
// with rank 3 recovers the map to fp32 accuracy (across chunk boundaries); B has
// orthonormal rows.
TEST(PredictorStats, RecoversAnExactLowRankAffineMap) {
  const size_t d = 9, H = 13, T = 2 * PredictorStats::kChunkTokens + 5;
  const auto X = testing::normal(T * d, 1);
  const auto u = testing::normal(d * 2, 2), v = testing::normal(2 * H, 3);
  std::vector<float> Y(T * H);
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      double s = 0.25 * double(h);  // bias
      for (size_t i = 0; i < d; ++i) {
        for (size_t k = 0; k < 2; ++k) s += double(X[t * d + i]) * u[i * 2 + k] * v[k * H + h];
      }
      Y[t * H + h] = static_cast<float>(s);
    }
  }
  PredictorStats st(d, H);
  st.update(ConstMatrixView<float>(X.data(), T, d), ConstMatrixView<float>(Y.data(), T, H), 2);
  EXPECT_EQ(st.tokens(), T);
  const LowRankPredictor p = fit_low_rank_predictor(st, 3, 0.0);
  for (size_t t = 0; t < T; t += 97) {
    const auto s = scores(p, &X[t * d]);
    for (size_t h = 0; h < H; ++h) EXPECT_NEAR(s[h], Y[t * H + h], 2e-3) << t << " " << h;
  }
  for (size_t j = 0; j < 3; ++j) {
    for (size_t k = 0; k < 3; ++k) {
      double dot = 0;
      for (size_t h = 0; h < H; ++h) dot += double(p.B[j * H + h]) * p.B[k * H + h];
      EXPECT_NEAR(dot, j == k ? 1.0 : 0.0, 1e-5);
    }
  }
}

// Rank 1 of a rank-2 target keeps the dominant direction: its fitted error equals the
// second singular value's share (Eckart-Young), checked against the full-rank fit.
TEST(PredictorStats, RankTruncationIsNoWorseThanFullRankPlusTheDroppedEnergy) {
  const size_t d = 6, H = 5, T = 400;
  const auto X = testing::normal(T * d, 4);
  std::vector<float> Y(T * H);
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      Y[t * H + h] = (h == 0 ? 3.0f : 0.0f) * X[t * d] + (h == 1 ? 0.5f : 0.0f) * X[t * d + 1];
    }
  }
  PredictorStats st(d, H);
  st.update(ConstMatrixView<float>(X.data(), T, d), ConstMatrixView<float>(Y.data(), T, H), 1);
  const auto p1 = fit_low_rank_predictor(st, 1, 0.0);
  double err = 0, energy1 = 0;
  for (size_t t = 0; t < T; ++t) {
    const auto s = scores(p1, &X[t * d]);
    for (size_t h = 0; h < H; ++h) err += std::pow(double(s[h]) - Y[t * H + h], 2);
    energy1 += std::pow(0.5 * X[t * d + 1], 2);
  }
  // Eckart-Young: no worse than keeping output 0 exactly (error = energy1), and close to it
  // (the two sample columns are nearly orthogonal).
  EXPECT_LE(err, energy1 * (1 + 1e-4));
  EXPECT_GT(err, 0.9 * energy1);
  EXPECT_NEAR(std::fabs(p1.B[0]), 1.0, 1e-2);  // the kept direction is output 0
}

TEST(PredictorStats, SameBitsForAnyThreadCount) {
  const size_t d = 70, H = 130, T = 1500;
  const auto X = testing::normal(T * d, 5), Y = testing::normal(T * H, 6);
  PredictorStats a(d, H), b(d, H);
  a.update(ConstMatrixView<float>(X.data(), T, d), ConstMatrixView<float>(Y.data(), T, H), 1);
  b.update(ConstMatrixView<float>(X.data(), T, d), ConstMatrixView<float>(Y.data(), T, H), 3);
  ASSERT_EQ(a.sums(), b.sums());
  const auto pa = fit_low_rank_predictor(a, 8, 0.01), pb = fit_low_rank_predictor(b, 8, 0.01);
  EXPECT_EQ(pa.A, pb.A);
  EXPECT_EQ(pa.B, pb.B);
}

TEST(PredictorStats, BadInputThrowsAndLeavesStateAlone) {
  EXPECT_THROW(PredictorStats(0, 3), InvalidArgument);
  EXPECT_THROW(PredictorStats(3, 0), InvalidArgument);
  PredictorStats st(3, 2);
  EXPECT_THROW(fit_low_rank_predictor(st, 1, 0.1), InvalidArgument);  // no data
  std::vector<float> X = {1, 2, 3, 4, 5, 6}, Y = {1, 0, 0, 1};
  EXPECT_THROW(
      st.update(ConstMatrixView<float>(X.data(), 2, 3), ConstMatrixView<float>(Y.data(), 1, 2), 1),
      InvalidArgument);  // row mismatch
  X[4] = std::nanf("");
  EXPECT_THROW(
      st.update(ConstMatrixView<float>(X.data(), 2, 3), ConstMatrixView<float>(Y.data(), 2, 2), 1),
      InvalidArgument);
  EXPECT_EQ(st.tokens(), 0u);
  X[4] = 5;
  st.update(ConstMatrixView<float>(X.data(), 2, 3), ConstMatrixView<float>(Y.data(), 2, 2), 1);
  EXPECT_THROW(fit_low_rank_predictor(st, 3, 0.1), InvalidArgument);  // rank > min(4, 2)
  EXPECT_THROW(fit_low_rank_predictor(st, 1, -1.0), InvalidArgument);
  EXPECT_THROW(fit_low_rank_predictor(st, 1, 0.0), NumericalError);  // 2 tokens, 4 unknowns
  EXPECT_NO_THROW(fit_low_rank_predictor(st, 2, 0.1));
}

}  // namespace
}  // namespace activation
}  // namespace sparseforge
