// Deja Vu style contextual-sparsity predictors: which MLP neurons / attention heads matter
// for this token, from a low-rank map of the layer's input.
//
// Notation: x has d = in_features entries (a layer input), y has H = out_features entries
// (per-neuron or per-head labels, e.g. 1 for the top-k |activation|, 0 elsewhere);
// z = [x, 1] (d + 1) appends a bias input. The predictor scores
//     s = (x A + a) Bm        A: d x r, a: r, Bm: r x H   (two linears of rank r, Deja Vu's
//                                                          Linear(d, r) -> Linear(r, H))
// and the caller keeps the top-k scores.
//
// Training is closed-form reduced-rank ridge regression (no SGD, deterministic):
//   1. G = sum_t z_t z_t^T  ((d+1) x (d+1)),  R = sum_t z_t y_t^T  ((d+1) x H): streaming
//      sums (PredictorStats), so shards of calibration data add exactly;
//   2. the full-rank ridge solution Bf = (G + lambda D)^-1 R, with D = diag(1,..,1, 0) (no
//      penalty on the bias) and lambda = ridge * mean(diag G[:d, :d]);
//   3. the rank-r truncation that minimises the fitted squared error sum_t |z_t Bf P - z_t Bf|^2
//      over projections P of rank r (Eckart-Young on the fitted values): P = V_r V_r^T, V_r
//      the top-r right singular vectors of L^T Bf, G = L L^T (Cholesky of the regularised G).
//      Then [A; a] = Bf V_r and Bm = V_r^T. Rank min(d+1, H) is the plain ridge solution.
// Singular directions below 1e-12 of the largest are dropped (their V columns are zero).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/core/object_mutex.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace activation {

class PredictorStats {
 public:
  // Tokens per fp32 product chunk; chunks are summed in float64.
  static constexpr size_t kChunkTokens = 1024;

  PredictorStats(size_t in_features, size_t out_features);

  // Adds the rows of X (tokens, in_features) with their targets Y (tokens, out_features),
  // both float32 and finite. Cost tokens * (d+1) * (d+1+H) multiply-adds, parallel over
  // fixed column bands: the same bits for any thread count. On bad input nothing is added.
  void update(const ConstMatrixView<float>& X, const ConstMatrixView<float>& Y, int num_threads);

  // The lock of callers that share this object between threads (core/object_mutex.h).
  std::mutex& mutex() const { return mu_.get(); }
  size_t in_features() const { return in_; }
  size_t out_features() const { return out_; }
  uint64_t tokens() const { return tokens_; }
  // sum_t z_t [z_t, y_t]^T, row-major (d+1) x (d+1+H): G in the first d+1 columns, R after.
  const std::vector<double>& sums() const { return sums_; }

 private:
  size_t in_;
  size_t out_;
  uint64_t tokens_ = 0;
  std::vector<double> sums_;
  ObjectMutex mu_;
};

struct LowRankPredictor {
  size_t in_features = 0;
  size_t rank = 0;
  size_t out_features = 0;
  std::vector<float> A;  // in_features x rank, row-major
  std::vector<float> a;  // rank
  std::vector<float> B;  // rank x out_features, row-major (orthonormal rows)
};

// Fits the predictor above. rank in [1, min(d+1, H)], ridge >= 0 (0 needs G non-singular:
// otherwise NumericalError). Needs tokens() > 0.
LowRankPredictor fit_low_rank_predictor(const PredictorStats& stats, size_t rank, double ridge);

}  // namespace activation
}  // namespace sparseforge
