// Streaming calibration statistics of one linear layer's inputs.
//
// X has shape (tokens, in_features) (row-major, fp32/fp16/bf16). LayerStats keeps
//   sum_squares[j] = sum_t x_tj^2                 float64, in_features
//   xtx            = sum_t x_t x_t^T (lower part)  float64, in_features^2   (if hessian)
//   tokens
// and derives Wanda's column norms sqrt(sum_squares / tokens) and SparseGPT's Hessian
// X^T X / tokens. Memory is O(in_features^2), never O(tokens): update() takes any number
// of tokens, any number of times. Statistics are sums, so shards combine exactly
// (merged()): identical to one stream up to float64 rounding.
//
// Precision: each update is cut into chunks of at most kChunkTokens tokens; a chunk's X^T X
// is a symmetric rank-k update that computes one triangle (in 8 fixed row bands: a GEMM
// left of the diagonal, a SYRK on it), and chunks are accumulated in float64. The chunk's
// products and sums are fp32 by default (float64 = false: about 2x faster, relative error
// ~1e-6, already better than the references' all-fp32 H) or float64 throughout
// (float64 = true). Cost: tokens * in_features^2 flops (half of X^T X), parallel over the
// bands, the same bits for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/core/object_mutex.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace calib {

class LayerStats {
 public:
  static constexpr size_t kChunkTokens = 2048;

  LayerStats(size_t in_features, bool hessian, bool float64 = false);

  // Adds the rows of X (tokens, in_features). X must be finite with |x| < 2^50; on bad
  // input nothing is added.
  void update(const AnyConstMatrix& X, int num_threads);

  // This plus other, as a new object. Both must have the same in_features and hessian flag.
  LayerStats merged(const LayerStats& other) const;

  // The lock of callers that share this object between threads (core/object_mutex.h).
  std::mutex& mutex() const { return mu_.get(); }
  size_t in_features() const { return in_features_; }
  bool has_hessian() const { return has_hessian_; }
  bool float64() const { return float64_; }
  uint64_t tokens() const { return tokens_; }
  const std::vector<double>& sum_squares() const { return sum_squares_; }
  // Raw accumulator, in_features^2 row-major; the lower triangle (j <= i) is valid.
  const std::vector<double>& xtx_lower() const { return xtx_; }

  // sqrt(sum_squares / tokens) into out[in_features]. Needs tokens > 0.
  void col_norms(float* out) const;
  // X^T X / tokens, the full symmetric matrix, into out[in_features^2]. Needs the Hessian
  // and tokens > 0.
  void hessian(double* out) const;
  // diag(X^T X / tokens) into out[in_features]: the values hessian() puts on its diagonal.
  void hessian_diag(double* out) const;

  // Rebuilds statistics saved from the accessors above (checks sizes and values).
  static LayerStats from_state(size_t in_features, bool hessian, bool float64, uint64_t tokens,
                               std::vector<double> sum_squares, std::vector<double> xtx_lower);

 private:
  size_t in_features_;
  bool has_hessian_;
  bool float64_;
  uint64_t tokens_ = 0;
  std::vector<double> sum_squares_;
  std::vector<double> xtx_;
  ObjectMutex mu_;
};

}  // namespace calib
}  // namespace sparseforge
