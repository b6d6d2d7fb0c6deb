#include "sparseforge/calib/layer_stats.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/linalg/linalg.h"
#include "core/simd/kernels.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace calib {
namespace {

constexpr size_t kBands = 8;
constexpr uint32_t kMaxKey =
    0x58800000u;  // bits of 2^50: x^2 summed over a chunk stays finite in fp32

const void* row_ptr(const AnyConstMatrix& X, size_t r) {
  return static_cast<const char*>(X.data) + r * X.stride * dtype_size(X.dtype);
}

// Every row finite and below 2^50 in magnitude, checked before any state changes.
void validate(const AnyConstMatrix& X, int num_threads) {
  parallel_for(X.rows, num_threads, [&](size_t r0, size_t r1) {
    const simd::KernelTable& kt = simd::kernels();
    std::vector<uint32_t> keys(X.cols);
    for (size_t r = r0; r < r1; ++r) {
      const void* p = row_ptr(X, r);
      uint32_t mx;
      if (X.dtype == DType::kF32) {
        mx = kt.abs_keys_f32(static_cast<const float*>(p), X.cols, keys.data());
      } else if (X.dtype == DType::kF16) {
        mx = kt.abs_keys_f16(static_cast<const uint16_t*>(p), X.cols, keys.data());
      } else {
        mx = kt.abs_keys_bf16(static_cast<const uint16_t*>(p), X.cols, keys.data());
      }
      SF_CHECK_ARG(mx < 0x7F800000u, "X: contains NaN or Inf (row %zu)", r);
      SF_CHECK_ARG(mx < kMaxKey, "X: |x| >= 2^50 in row %zu: too large to accumulate in fp32", r);
    }
  });
}

}  // namespace

namespace {
// Checked before any member allocates (sum_squares_ is sized in the initialiser list).
size_t checked_features(size_t in_features) {
  SF_CHECK_ARG(in_features >= 1 && in_features <= (size_t{1} << 28),
               "in_features: expected in [1, 2^28], got %zu", in_features);
  return in_features;
}
}  // namespace

LayerStats::LayerStats(size_t in_features, bool hessian, bool float64)
    : in_features_(checked_features(in_features)),
      has_hessian_(hessian),
      float64_(float64),
      sum_squares_(in_features_, 0.0) {
  SF_CHECK_ARG(in_features >= 1, "in_features: expected >= 1, got %zu", in_features);
  SF_CHECK_ARG(!hessian || in_features <= (size_t{1} << 16),
               "in_features: %zu is too large for a dense Hessian (at most 65536)", in_features);
  if (hessian) xtx_.assign(in_features * in_features, 0.0);
}

void LayerStats::update(const AnyConstMatrix& X, int num_threads) {
  SF_CHECK_ARG(X.data != nullptr && X.rows >= 1, "X: expected at least one token, got %zu", X.rows);
  SF_CHECK_ARG(X.cols == in_features_, "X: expected %zu columns (in_features), got %zu",
               in_features_, X.cols);
  validate(X, num_threads);
  const size_t c = in_features_;
  const linalg::LinalgTable& la = linalg::linalg();
  std::vector<float> buf;
  for (size_t t0 = 0; t0 < X.rows; t0 += kChunkTokens) {
    const size_t T = std::min(kChunkTokens, X.rows - t0);
    const float* x;
    size_t ldx;
    if (X.dtype == DType::kF32) {  // read in place, no copy
      x = static_cast<const float*>(row_ptr(X, t0));
      ldx = X.stride;
    } else {
      buf.resize(T * c);
      parallel_for(T, num_threads, [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r) {
          const void* p = row_ptr(X, t0 + r);
          if (X.dtype == DType::kF16) {
            convert(static_cast<const Float16*>(p), buf.data() + r * c, c);
          } else {
            convert(static_cast<const BFloat16*>(p), buf.data() + r * c, c);
          }
        }
      });
      x = buf.data();
      ldx = c;
    }
    // Column sums of squares, each in token order: one range of columns per task.
    parallel_for(
        c, num_threads,
        [&](size_t j0, size_t j1) {
          for (size_t t = 0; t < T; ++t) {
            const float* row = x + t * ldx;
            for (size_t j = j0; j < j1; ++j) {
              const double v = row[j];
              sum_squares_[j] += v * v;
            }
          }
        },
        256);
    if (!has_hessian_) continue;
    // The lower triangle of this chunk's X^T X in kBands row bands of equal area (band k
    // covers rows [b_k, b_{k+1}) with b_k = c sqrt(k / kBands)): per band one GEMM for
    // the part left of the diagonal and one symmetric rank-k update on the diagonal block,
    // in fp32, then added into the float64 accumulator. The bands are fixed, so results do
    // not depend on the thread count. (512 x 512 tiles were 25% slower: each repacked its
    // operands and computed both halves of its diagonal tile.)
    std::vector<size_t> edge(kBands + 1);
    for (size_t k = 0; k <= kBands; ++k) {
      edge[k] = static_cast<size_t>(
          std::llround(static_cast<double>(c) * std::sqrt(static_cast<double>(k) / kBands)));
    }
    std::vector<double> xd;  // the chunk in float64 (float64 mode)
    if (float64_) {
      xd.resize(T * c);
      parallel_for(T, num_threads, [&](size_t r0, size_t r1) {
        for (size_t r = r0; r < r1; ++r) {
          std::copy(x + r * ldx, x + r * ldx + c, xd.data() + r * c);
        }
      });
    }
    parallel_for_dynamic(kBands, num_threads, [&](size_t t) {
      const size_t k = kBands - 1 - t;  // the widest band first
      const size_t r0 = edge[k], r1 = edge[k + 1], nr = r1 - r0;
      if (nr == 0) return;
      if (float64_) {
        std::vector<double> g(nr * r1);  // rows r0..r1, columns 0..r1 (lower part used)
        if (r0 > 0)
          la.gemm_f64(true, nr, r0, T, 1.0, xd.data() + r0, c, xd.data(), c, 0.0, g.data(), r1);
        la.syrk_lower_f64(nr, T, xd.data() + r0, c, g.data() + r0, r1);
        for (size_t r = 0; r < nr; ++r) {
          double* dst = xtx_.data() + (r0 + r) * c;
          for (size_t q = 0; q <= r0 + r; ++q) dst[q] += g[r * r1 + q];
        }
        return;
      }
      std::vector<float> g(nr * r1);
      if (r0 > 0) {
        la.gemm_f32(true, nr, r0, T, 1.0f, x + r0, ldx, x, ldx, 0.0f, g.data(), r1);
      }
      la.syrk_lower_f32(nr, T, x + r0, ldx, g.data() + r0, r1);
      for (size_t r = 0; r < nr; ++r) {
        double* dst = xtx_.data() + (r0 + r) * c;
        const float* src = g.data() + r * r1;
        for (size_t q = 0; q <= r0 + r; ++q) dst[q] += src[q];
      }
    });
  }
  tokens_ += X.rows;
}

LayerStats LayerStats::merged(const LayerStats& other) const {
  SF_CHECK_ARG(other.in_features_ == in_features_, "other: expected in_features=%zu, got %zu",
               in_features_, other.in_features_);
  SF_CHECK_ARG(other.float64_ == float64_, "other: expected float64=%s, got float64=%s",
               float64_ ? "True" : "False", other.float64_ ? "True" : "False");
  SF_CHECK_ARG(other.has_hessian_ == has_hessian_, "other: expected hessian=%s, got hessian=%s",
               has_hessian_ ? "True" : "False", other.has_hessian_ ? "True" : "False");
  LayerStats out = *this;
  out.tokens_ += other.tokens_;
  for (size_t j = 0; j < in_features_; ++j) out.sum_squares_[j] += other.sum_squares_[j];
  for (size_t k = 0; k < xtx_.size(); ++k) out.xtx_[k] += other.xtx_[k];
  return out;
}

void LayerStats::col_norms(float* out) const {
  SF_CHECK_ARG(tokens_ > 0, "LayerStats: no data yet (call update() first)");
  const double t = static_cast<double>(tokens_);
  for (size_t j = 0; j < in_features_; ++j)
    out[j] = static_cast<float>(std::sqrt(sum_squares_[j] / t));
}

void LayerStats::hessian(double* out) const {
  SF_CHECK_ARG(has_hessian_, "LayerStats: created with hessian=False");
  SF_CHECK_ARG(tokens_ > 0, "LayerStats: no data yet (call update() first)");
  const size_t c = in_features_;
  const double t = static_cast<double>(tokens_);  // divide (not * 1/t): exact when it can be
  for (size_t i = 0; i < c; ++i) {
    for (size_t j = 0; j <= i; ++j) {
      const double v = xtx_[i * c + j] / t;
      out[i * c + j] = v;
      out[j * c + i] = v;
    }
  }
}

void LayerStats::hessian_diag(double* out) const {
  SF_CHECK_ARG(has_hessian_, "LayerStats: created with hessian=False");
  SF_CHECK_ARG(tokens_ > 0, "LayerStats: no data yet (call update() first)");
  const double t = static_cast<double>(tokens_);
  for (size_t j = 0; j < in_features_; ++j) out[j] = xtx_[j * in_features_ + j] / t;
}

LayerStats LayerStats::from_state(size_t in_features, bool hessian, bool float64, uint64_t tokens,
                                  std::vector<double> sum_squares, std::vector<double> xtx) {
  LayerStats s(in_features, hessian, float64);
  SF_CHECK_ARG(sum_squares.size() == in_features, "sum_squares: expected %zu values, got %zu",
               in_features, sum_squares.size());
  SF_CHECK_ARG(xtx.size() == (hessian ? in_features * in_features : 0),
               "xtx: expected %zu values, got %zu", hessian ? in_features * in_features : 0,
               xtx.size());
  for (double v : sum_squares) {
    SF_CHECK_ARG(std::isfinite(v) && v >= 0.0, "sum_squares: expected finite values >= 0");
  }
  for (size_t i = 0; i < in_features && hessian; ++i) {
    for (size_t j = 0; j <= i; ++j) {
      SF_CHECK_ARG(std::isfinite(xtx[i * in_features + j]), "xtx: expected finite values");
    }
    SF_CHECK_ARG(xtx[i * in_features + i] >= 0.0, "xtx: negative diagonal at %zu", i);
  }
  s.tokens_ = tokens;
  s.sum_squares_ = std::move(sum_squares);
  s.xtx_ = std::move(xtx);
  return s;
}

}  // namespace calib
}  // namespace sparseforge
