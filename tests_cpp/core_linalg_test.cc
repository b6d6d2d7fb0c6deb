// Blocked Cholesky and triangular inverse against naive float64 formulas, every SIMD level,
// sizes around the 256 tile, identical for any thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/linalg/dense.h"
#include "core/linalg/linalg.h"
#include "sparseforge/core/cpu.h"

namespace sparseforge {
namespace linalg {
namespace {

std::vector<double> random_spd(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d;
  const size_t k = n + 3;
  std::vector<double> X(k * n), A(n * n, 0.0);
  for (double& x : X) x = d(rng);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      double s = 0;
      for (size_t t = 0; t < k; ++t) s += X[t * n + i] * X[t * n + j];
      A[i * n + j] = s / k + (i == j ? 0.1 : 0.0);
    }
  }
  return A;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

class LinalgLevels : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    before_ = simd_level();
    if (GetParam() > static_cast<int>(detected_simd_level())) GTEST_SKIP() << "level not here";
    set_simd_level(static_cast<SimdLevel>(GetParam()));
  }
  void TearDown() override { set_simd_level(before_); }
  SimdLevel before_ = SimdLevel::kScalar;
};

TEST_P(LinalgLevels, CholeskyReconstructsA) {
  for (size_t n : {1, 2, 3, 7, 17, 255, 256, 257, 600}) {
    const auto A = random_spd(n, n);
    auto L = A;
    ASSERT_EQ(cholesky_lower(L.data(), n, n, 2), -1) << n;
    std::vector<double> diff(n * n);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double s = 0;
        for (size_t k = 0; k <= j; ++k) s += L[i * n + k] * L[j * n + k];
        diff[i * n + j] = s - A[i * n + j];
      }
    }
    EXPECT_LT(max_abs(diff), 1e-10 * max_abs(A)) << "n=" << n;
  }
}

TEST_P(LinalgLevels, InverseOfLowerTimesLowerIsIdentity) {
  for (size_t n : {1, 2, 5, 17, 256, 300, 530}) {
    auto L = random_spd(n, 100 + n);
    ASSERT_EQ(cholesky_lower(L.data(), n, n, 1), -1);
    auto X = L;
    invert_lower(X.data(), n, n, 2);
    std::vector<double> diff(n * n);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        double s = 0;
        for (size_t k = j; k <= i; ++k) s += X[i * n + k] * L[k * n + j];
        diff[i * n + j] = s - (i == j ? 1.0 : 0.0);
      }
    }
    EXPECT_LT(max_abs(diff), 1e-9) << "n=" << n;
  }
}

TEST_P(LinalgLevels, IdenticalForAnyThreadCount) {
  const size_t n = 700;
  const auto A = random_spd(n, 7);
  std::vector<std::vector<double>> outs;
  for (int threads : {1, 2, 3, 5}) {
    auto L = A;
    ASSERT_EQ(cholesky_lower(L.data(), n, n, threads), -1);
    invert_lower(L.data(), n, n, threads);
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) L[i * n + j] = 0;  // strict upper is scratch
    }
    outs.push_back(L);
  }
  for (size_t t = 1; t < outs.size(); ++t) ASSERT_EQ(outs[t], outs[0]);
}

// The float32 factorization (SparseGPT's factor_precision="float32") against float64: the
// same tiled algorithm, so the difference is fp32 rounding (relative ~1e-5 on these
// well-conditioned matrices); identical for any thread count.
TEST_P(LinalgLevels, Float32CholeskyAndInverseTrackFloat64) {
  for (size_t n : {1, 3, 17, 256, 257, 530}) {
    const auto A = random_spd(n, 300 + n);
    auto L64 = A;
    ASSERT_EQ(cholesky_lower(L64.data(), n, n, 1), -1);
    std::vector<float> L32(A.begin(), A.end());
    ASSERT_EQ(cholesky_lower(L32.data(), n, n, 2), -1);
    double err = 0, scale = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        err = std::max(err, std::fabs(L32[i * n + j] - L64[i * n + j]));
        scale = std::max(scale, std::fabs(L64[i * n + j]));
      }
    }
    EXPECT_LT(err, 1e-4 * scale) << "cholesky n=" << n;
    invert_lower(L64.data(), n, n, 1);
    std::vector<float> X1 = L32;
    invert_lower(X1.data(), n, n, 1);
    invert_lower(L32.data(), n, n, 3);
    err = scale = 0;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j <= i; ++j) {
        ASSERT_EQ(X1[i * n + j], L32[i * n + j]) << "thread count changed the result";
        err = std::max(err, std::fabs(L32[i * n + j] - L64[i * n + j]));
        scale = std::max(scale, std::fabs(L64[i * n + j]));
      }
    }
    EXPECT_LT(err, 1e-3 * scale) << "inverse n=" << n;
  }
  std::vector<float> bad = {1, 2, 2, 1};  // indefinite: the second pivot is negative
  EXPECT_EQ(cholesky_lower(bad.data(), 2, 2, 1), 1);
}

TEST_P(LinalgLevels, CholeskyReportsTheFirstBadPivot) {
  const size_t n = 300;
  auto A = random_spd(n, 9);
  A[270 * n + 270] = -5.0;  // indefinite from pivot 270 on
  EXPECT_EQ(cholesky_lower(A.data(), n, n, 2), 270);
  std::vector<double> nan(4, 0.0);
  nan[0] = std::nan("");
  EXPECT_EQ(cholesky_lower(nan.data(), 2, 2, 1), 0);
}

TEST_P(LinalgLevels, PosvSolvesAndRefusesIndefinite) {
  const size_t n = 40;
  const auto A = random_spd(n, 11);
  std::vector<double> x(n), b(n);
  for (size_t i = 0; i < n; ++i) x[i] = std::sin(static_cast<double>(i));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) b[i] += A[i * n + j] * x[j];
  }
  auto F = A;
  ASSERT_TRUE(linalg().posv_f64(n, F.data(), n, b.data()));
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(b[i], x[i], 1e-9);
  auto bad = A;
  bad[0] = -1.0;
  EXPECT_FALSE(linalg().posv_f64(n, bad.data(), n, b.data()));
}

TEST_P(LinalgLevels, GemmMatchesNaive) {
  std::mt19937 rng(5);
  std::normal_distribution<float> d;
  for (auto [m, n, k] : {std::tuple<size_t, size_t, size_t>{1, 1, 1}, {7, 13, 5}, {33, 17, 129}}) {
    for (bool trans : {false, true}) {
      std::vector<float> A(m * k), B(k * n), C(m * n), ref(m * n);
      for (float& x : A) x = d(rng);
      for (float& x : B) x = d(rng);
      for (float& x : C) x = d(rng);
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < n; ++j) {
          double s = 0;
          for (size_t p = 0; p < k; ++p) s += (trans ? A[p * m + i] : A[i * k + p]) * B[p * n + j];
          ref[i * n + j] = static_cast<float>(-2.0 * s + 0.5 * C[i * n + j]);
        }
      }
      linalg().gemm_f32(trans, m, n, k, -2.0f, A.data(), trans ? m : k, B.data(), n, 0.5f, C.data(),
                        n);
      for (size_t i = 0; i < m * n; ++i) ASSERT_NEAR(C[i], ref[i], 1e-4 * (1 + std::fabs(ref[i])));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, LinalgLevels, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(simd_level_name(static_cast<SimdLevel>(i.param)));
                         });

}  // namespace
}  // namespace linalg
}  // namespace sparseforge
