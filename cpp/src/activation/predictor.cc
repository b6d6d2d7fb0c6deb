#include "sparseforge/activation/predictor.h"

#define EIGEN_DONT_PARALLELIZE
#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/linalg/linalg.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace activation {
namespace {

// Fixed column bands of a chunk product: the partition never depends on the thread count.
constexpr size_t kBand = 64;

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void check_finite(const ConstMatrixView<float>& M, const char* name) {
  for (size_t r = 0; r < M.rows; ++r) {
    const float* p = M.row(r);
    for (size_t c = 0; c < M.cols; ++c) {
      SF_CHECK_ARG(std::isfinite(p[c]), "%s: contains NaN or Inf (row %zu, column %zu)", name, r,
                   c);
    }
  }
}

}  // namespace

PredictorStats::PredictorStats(size_t in_features, size_t out_features)
    : in_(in_features), out_(out_features) {
  SF_CHECK_ARG(in_features >= 1 && in_features <= (size_t{1} << 15),
               "in_features: expected 1 <= in_features <= 32768, got %zu", in_features);
  SF_CHECK_ARG(out_features >= 1 && out_features <= (size_t{1} << 20),
               "out_features: expected 1 <= out_features <= 1048576, got %zu", out_features);
  sums_.assign((in_ + 1) * (in_ + 1 + out_), 0.0);
}

void PredictorStats::update(const ConstMatrixView<float>& X, const ConstMatrixView<float>& Y,
                            int num_threads) {
  SF_CHECK_ARG(X.data != nullptr && X.rows >= 1, "X: expected at least one token, got %zu", X.rows);
  SF_CHECK_ARG(X.cols == in_, "X: expected %zu columns (in_features), got %zu", in_, X.cols);
  SF_CHECK_ARG(Y.data != nullptr && Y.cols == out_,
               "Y: expected %zu columns (out_features), got %zu", out_, Y.cols);
  SF_CHECK_ARG(Y.rows == X.rows, "Y: expected %zu rows (X's tokens), got %zu", X.rows, Y.rows);
  check_finite(X, "X");
  check_finite(Y, "Y");
  const size_t dz = in_ + 1, width = dz + out_;
  const size_t bands_z = (dz + kBand - 1) / kBand, bands_y = (out_ + kBand - 1) / kBand;
  const linalg::LinalgTable& la = linalg::linalg();
  std::vector<float> z, chunk(dz * width);
  for (size_t t0 = 0; t0 < X.rows; t0 += kChunkTokens) {
    const size_t T = std::min(kChunkTokens, X.rows - t0);
    z.assign(T * dz, 1.0f);  // the last column stays 1 (bias input)
    for (size_t t = 0; t < T; ++t) std::copy(X.row(t0 + t), X.row(t0 + t) + in_, &z[t * dz]);
    const float* y = Y.row(t0);
    // chunk = Z^T [Z, Y] in fp32, one fixed band of columns per task.
    parallel_for_dynamic(bands_z + bands_y, num_threads, [&](size_t b) {
      if (b < bands_z) {
        const size_t c0 = b * kBand, n = std::min(kBand, dz - c0);
        la.gemm_f32(true, dz, n, T, 1.0f, z.data(), dz, z.data() + c0, dz, 0.0f, chunk.data() + c0,
                    width);
      } else {
        const size_t c0 = (b - bands_z) * kBand, n = std::min(kBand, out_ - c0);
        la.gemm_f32(true, dz, n, T, 1.0f, z.data(), dz, y + c0, Y.stride, 0.0f,
                    chunk.data() + dz + c0, width);
      }
    });
    for (size_t i = 0; i < sums_.size(); ++i) sums_[i] += chunk[i];
  }
  tokens_ += X.rows;
}

LowRankPredictor fit_low_rank_predictor(const PredictorStats& stats, size_t rank, double ridge) {
  const size_t d = stats.in_features(), H = stats.out_features(), dz = d + 1;
  const size_t width = dz + H;
  SF_CHECK_ARG(stats.tokens() > 0, "stats: no tokens seen (update() was never called)");
  SF_CHECK_ARG(rank >= 1 && rank <= std::min(dz, H),
               "rank: expected 1 <= rank <= min(in_features + 1, out_features) = %zu, got %zu",
               std::min(dz, H), rank);
  SF_CHECK_ARG(std::isfinite(ridge) && ridge >= 0.0, "ridge: expected a finite number >= 0, got %g",
               ridge);
  const Eigen::Map<const MatD> S(stats.sums().data(), static_cast<Eigen::Index>(dz),
                                 static_cast<Eigen::Index>(width));
  MatD G = S.leftCols(static_cast<Eigen::Index>(dz));
  const MatD R = S.rightCols(static_cast<Eigen::Index>(H));
  double mean_diag = 0.0;
  for (size_t i = 0; i < d; ++i) mean_diag += G(i, i);
  mean_diag /= static_cast<double>(d);
  const double lambda = ridge * std::max(mean_diag, 1e-300);
  for (size_t i = 0; i < d; ++i) G(i, i) += lambda;
  const Eigen::LLT<MatD> llt(G);
  SF_CHECK_NUMERIC(llt.info() == Eigen::Success,
                   "stats: the input Gram matrix is singular (tokens=%llu, in_features=%zu, "
                   "ridge=%g); use ridge > 0 or more calibration tokens",
                   static_cast<unsigned long long>(stats.tokens()), d, ridge);
  const MatD Bf = llt.solve(R);       // dz x H
  const MatD C = llt.matrixU() * Bf;  // L^T Bf: fitted values' geometry
  const MatD K = C * C.transpose();   // dz x dz (small side)
  Eigen::SelfAdjointEigenSolver<MatD> eig(K);
  SF_CHECK_NUMERIC(eig.info() == Eigen::Success, "stats: eigen-decomposition failed");
  const Eigen::VectorXd ev = eig.eigenvalues();  // ascending
  const double top = std::max(ev(ev.size() - 1), 0.0);
  MatD V = MatD::Zero(static_cast<Eigen::Index>(H), static_cast<Eigen::Index>(rank));
  for (size_t j = 0; j < rank; ++j) {
    const Eigen::Index col = ev.size() - 1 - static_cast<Eigen::Index>(j);
    const double s2 = ev(col);
    if (!(s2 > 1e-24 * top) || top <= 0.0) continue;  // dropped direction: zero column
    Eigen::VectorXd v = C.transpose() * eig.eigenvectors().col(col) / std::sqrt(s2);
    // Sign convention (deterministic output): the largest-magnitude entry is positive.
    Eigen::Index arg = 0;
    v.cwiseAbs().maxCoeff(&arg);
    if (v(arg) < 0) v = -v;
    V.col(static_cast<Eigen::Index>(j)) = v;
  }
  const MatD W1 = Bf * V;  // dz x rank
  LowRankPredictor p;
  p.in_features = d;
  p.rank = rank;
  p.out_features = H;
  p.A.resize(d * rank);
  p.a.resize(rank);
  p.B.resize(rank * H);
  for (size_t i = 0; i < d; ++i) {
    for (size_t j = 0; j < rank; ++j) {
      p.A[i * rank + j] =
          static_cast<float>(W1(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)));
    }
  }
  for (size_t j = 0; j < rank; ++j) {
    p.a[j] = static_cast<float>(W1(static_cast<Eigen::Index>(d), static_cast<Eigen::Index>(j)));
    for (size_t h = 0; h < H; ++h) {
      p.B[j * H + h] =
          static_cast<float>(V(static_cast<Eigen::Index>(h), static_cast<Eigen::Index>(j)));
    }
  }
  for (float v : p.A) SF_CHECK_NUMERIC(std::isfinite(v), "stats: the fit is not finite");
  for (float v : p.a) SF_CHECK_NUMERIC(std::isfinite(v), "stats: the fit is not finite");
  return p;
}

}  // namespace activation
}  // namespace sparseforge
