#include "sparseforge/prune/sparsegpt.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/linalg/dense.h"
#include "core/linalg/linalg.h"
#include "prune/factor.h"
#include "prune/rows.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/select.h"

namespace sparseforge {
namespace prune {
namespace {

constexpr size_t kRowChunk = 64;  // fixed task size: the same arithmetic for any thread count

// The per-block unstructured mask: scores s = w^2 / U_ii^2 over rows x [i1, i2).
template <class T>
void block_mask(const T* Wk, size_t rows, size_t cols, const T* U, size_t i1, size_t i2,
                double sparsity, BlockCount count, MaskView keep, int num_threads) {
  const size_t B = i2 - i1, total = rows * B;
  const size_t k = prune_count(sparsity, total);
  if (sparsity == 0.0 || (count == BlockCount::kExact && k == 0)) {  // nothing to prune
    for (size_t r = 0; r < rows; ++r) std::fill(keep.row(r) + i1, keep.row(r) + i2, 1);
    return;
  }
  std::vector<T> score(total);
  parallel_for(rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      for (size_t j = 0; j < B; ++j) {
        const T w = Wk[r * cols + i1 + j], d = U[(i1 + j) * cols + i1 + j];
        score[r * B + j] = (w * w) / (d * d);
      }
    }
  });
  // The threshold: the (k+1)-th smallest for the reference rule (prune <= it), else the
  // k-th with ties by flat index.
  std::vector<T> tmp(score);
  const size_t rank = count == BlockCount::kReference ? k : k - 1;
  std::nth_element(tmp.begin(), tmp.begin() + static_cast<std::ptrdiff_t>(rank), tmp.end());
  const T t = tmp[rank];
  size_t eq_budget = total;  // reference: every score equal to t is pruned
  if (count == BlockCount::kExact) {
    size_t less = 0;
    for (const T& s : score) less += s < t;
    eq_budget = k - less;
  }
  size_t eq_seen = 0;
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* out = keep.row(r) + i1;
    for (size_t j = 0; j < B; ++j) {
      const T s = score[r * B + j];
      bool prune = s < t;
      if (s == t) prune = eq_seen++ < eq_budget;
      out[j] = !prune;
    }
  }
}

template <class T>
void sweep(T* Wk, size_t rows, size_t cols, const T* U, const SparseGPTOptions& o, MaskView keep,
           std::vector<double>& row_loss, int num_threads) {
  const linalg::LinalgTable& la = linalg::linalg();
  const size_t B = o.block_size;
  const size_t chunks = (rows + kRowChunk - 1) / kRowChunk;
  for (size_t i1 = 0; i1 < cols; i1 += B) {
    const size_t i2 = std::min(cols, i1 + B), bw = i2 - i1;
    if (!o.mask_given && o.pattern.m == 0) {
      block_mask(Wk, rows, cols, U, i1, i2, o.sparsity, o.block_count, keep, num_threads);
    }
    parallel_for_each(chunks, num_threads, [&](size_t c) {
      const size_t r0 = c * kRowChunk, nr = std::min(kRowChunk, rows - r0);
      std::vector<T> err(nr * bw);
      T* w = Wk + r0 * cols;
      const int nm_n = o.mask_given ? 0 : o.pattern.n, nm_m = o.mask_given ? 0 : o.pattern.m;
      if constexpr (std::is_same<T, float>::value) {
        la.obs_sweep_f32(nr, bw, w + i1, cols, U + i1 * cols + i1, cols, keep.row(r0) + i1,
                         keep.stride, nm_n, nm_m, err.data(), bw, row_loss.data() + r0);
        if (i2 < cols) {
          la.gemm_f32(false, nr, cols - i2, bw, -1.0f, err.data(), bw, U + i1 * cols + i2, cols,
                      1.0f, w + i2, cols);
        }
      } else {
        la.obs_sweep_f64(nr, bw, w + i1, cols, U + i1 * cols + i1, cols, keep.row(r0) + i1,
                         keep.stride, nm_n, nm_m, err.data(), bw, row_loss.data() + r0);
        if (i2 < cols) {
          la.gemm_f64(false, nr, cols - i2, bw, -1.0, err.data(), bw, U + i1 * cols + i2, cols, 1.0,
                      w + i2, cols);
        }
      }
    });
  }
}

template <class T>
void load_rows(const AnyConstMatrix& W, const std::vector<uint8_t>& dead, T* Wk, int num_threads) {
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const void* p = detail::row_ptr(W, r);
      T* dst = Wk + r * W.cols;
      visit_dtype(W.dtype, [&](auto tag) {
        using S = decltype(tag);
        const S* src = static_cast<const S*>(p);
        for (size_t j = 0; j < W.cols; ++j)
          dst[j] = dead[j] ? T(0) : static_cast<T>(to_f32(src[j]));
      });
    }
  });
}

template <class T>
void store_rows(const T* Wk, const AnyMatrix& out, int num_threads) {
  parallel_for(out.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const T* src = Wk + r * out.cols;
      visit_dtype(out.dtype, [&](auto tag) {
        using S = decltype(tag);
        S* dst = static_cast<S*>(out.data) + r * out.stride;
        for (size_t j = 0; j < out.cols; ++j) dst[j] = from_f32<S>(static_cast<float>(src[j]));
      });
    }
  });
}

}  // namespace

void check_hessian(const HessianView& H, size_t cols) {
  SF_CHECK_ARG(H.data != nullptr, "H: null data pointer");
  SF_CHECK_ARG(H.n == cols, "H: expected shape (%zu, %zu) to match W's in_features, got (%zu, %zu)",
               cols, cols, H.n, H.n);
  double max_diag = 0.0;
  for (size_t i = 0; i < H.n; ++i) {
    const double d = H.at(i, i);
    SF_CHECK_ARG(std::isfinite(d), "H: contains NaN or Inf (H[%zu, %zu])", i, i);
    SF_CHECK_ARG(d >= 0.0, "H: negative diagonal entry H[%zu, %zu] = %g (not a Gram matrix)", i, i,
                 d);
    max_diag = std::max(max_diag, d);
  }
  SF_CHECK_ARG(max_diag > 0.0, "H: all-zero diagonal (no calibration data?)");
  if (H.lower_only) return;  // symmetric by construction
  const double tol = 1e-5 * max_diag;
  for (size_t i = 0; i < H.n; ++i) {
    for (size_t j = 0; j < i; ++j) {
      const double a = H.at(i, j), b = H.at(j, i);
      SF_CHECK_ARG(std::isfinite(a) && std::isfinite(b), "H: contains NaN or Inf (near [%zu, %zu])",
                   i, j);
      SF_CHECK_ARG(std::fabs(a - b) <= tol,
                   "H: not symmetric: H[%zu, %zu] = %g but H[%zu, %zu] = %g", i, j, a, j, i, b);
    }
  }
}

HessianView hessian_view(const calib::LayerStats& stats) {
  SF_CHECK_ARG(stats.has_hessian(), "H: the LayerStats was created with hessian=False");
  SF_CHECK_ARG(stats.tokens() > 0, "H: the LayerStats has no data yet (call update() first)");
  HessianView h;
  h.data = stats.xtx_lower().data();
  h.f64 = true;
  h.n = stats.in_features();
  h.stride = stats.in_features();
  h.lower_only = true;
  h.divisor = static_cast<double>(stats.tokens());  // as LayerStats::hessian() divides
  return h;
}

HessianFactor factor_hessian(const HessianView& H, double percdamp, double max_percdamp,
                             Precision factor_precision, Precision precision, int num_threads) {
  SF_CHECK_ARG(std::isfinite(percdamp) && percdamp >= 0.0,
               "percdamp: expected a finite value >= 0, got %g", percdamp);
  SF_CHECK_ARG(std::isfinite(max_percdamp) && max_percdamp >= percdamp,
               "max_percdamp: expected a finite value >= percdamp=%g, got %g", percdamp,
               max_percdamp);
  check_hessian(H, H.n);
  HessianFactor f;
  f.n = H.n;
  f.precision = precision;
  f.factor_precision = factor_precision;
  f.percdamp = percdamp;
  f.max_percdamp = max_percdamp;
  f.dead = detail::dead_columns(H);
  if (factor_precision == Precision::kFloat32) {
    detail::InverseFactorT<float> g =
        detail::factor_inverse<float>(H, f.dead, percdamp, max_percdamp, num_threads);
    f.percdamp_used = g.percdamp;
    f.damp = g.damp;
    f.attempts = g.attempts;
    if (precision == Precision::kFloat64) {
      f.U64.assign(g.U.begin(), g.U.end());
    } else {
      f.U32 = std::move(g.U);
    }
  } else {
    detail::InverseFactorT<double> g =
        detail::factor_inverse<double>(H, f.dead, percdamp, max_percdamp, num_threads);
    f.percdamp_used = g.percdamp;
    f.damp = g.damp;
    f.attempts = g.attempts;
    if (precision == Precision::kFloat32) {
      f.U32.assign(g.U.begin(), g.U.end());  // peak: one float64 matrix, then U in fp32
    } else {
      f.U64 = std::move(g.U);
    }
  }
  return f;
}

namespace {

void check_options(const AnyConstMatrix& W, const SparseGPTOptions& o, const AnyMatrix& out,
                   MaskView keep) {
  detail::check_matrix(W, "W");
  detail::check_matrix(out, "out");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  SF_CHECK_ARG(out.rows == W.rows && out.cols == W.cols && out.dtype == W.dtype,
               "out: expected W's shape and dtype");
  SF_CHECK_ARG(o.block_size >= 1, "block_size: expected >= 1, got %zu", o.block_size);
  if (o.pattern.m > 0 && !o.mask_given) {
    check_nm(o.pattern, W.cols);
    SF_CHECK_ARG(o.block_size % static_cast<size_t>(o.pattern.m) == 0,
                 "block_size: %zu is not a multiple of m=%d (pattern %d:%d)", o.block_size,
                 o.pattern.m, o.pattern.n, o.pattern.m);
  } else if (!o.mask_given) {
    check_sparsity(o.sparsity);
  }
}

// The column sweep of W with a ready factor (the options' damping fields are not read).
SparseGPTResult sweep_with(const AnyConstMatrix& W, const HessianFactor& f,
                           const SparseGPTOptions& o, const AnyMatrix& out, MaskView keep,
                           int num_threads) {
  const size_t rows = W.rows, cols = W.cols;
  SparseGPTResult res;
  for (uint8_t d : f.dead) res.dead_columns += d;
  res.percdamp_used = f.percdamp_used;
  res.damp = f.damp;
  res.attempts = f.attempts;
  res.row_loss.assign(rows, 0.0);
  if (f.precision == Precision::kFloat64) {
    std::vector<double> Wk(rows * cols);
    load_rows(W, f.dead, Wk.data(), num_threads);
    sweep<double>(Wk.data(), rows, cols, f.U64.data(), o, keep, res.row_loss, num_threads);
    store_rows(Wk.data(), out, num_threads);
  } else {
    // fp32 weights: the sweep runs in `out` itself, no extra copy of W.
    const bool in_place = out.dtype == DType::kF32 && out.stride == cols;
    std::vector<float> Wk(in_place ? 0 : rows * cols);
    float* work = in_place ? static_cast<float*>(out.data) : Wk.data();
    load_rows(W, f.dead, work, num_threads);
    sweep<float>(work, rows, cols, f.U32.data(), o, keep, res.row_loss, num_threads);
    if (!in_place) store_rows(work, out, num_threads);
  }
  for (double l : res.row_loss) res.loss += l;
  return res;
}

}  // namespace

SparseGPTResult sparsegpt(const AnyConstMatrix& W, const HessianView& H, const SparseGPTOptions& o,
                          const AnyMatrix& out, MaskView keep, int num_threads) {
  check_options(W, o, out, keep);
  SF_CHECK_ARG(std::isfinite(o.percdamp) && o.percdamp >= 0.0,
               "percdamp: expected a finite value >= 0, got %g", o.percdamp);
  SF_CHECK_ARG(std::isfinite(o.max_percdamp) && o.max_percdamp >= o.percdamp,
               "max_percdamp: expected a finite value >= percdamp=%g, got %g", o.percdamp,
               o.max_percdamp);
  SF_CHECK_ARG(H.data != nullptr, "H: null data pointer");
  SF_CHECK_ARG(H.n == W.cols,
               "H: expected shape (%zu, %zu) to match W's in_features, got (%zu, %zu)", W.cols,
               W.cols, H.n, H.n);
  check_finite(W, "W", num_threads);
  const HessianFactor f =
      factor_hessian(H, o.percdamp, o.max_percdamp, o.factor_precision, o.precision, num_threads);
  return sweep_with(W, f, o, out, keep, num_threads);
}

SparseGPTResult sparsegpt(const AnyConstMatrix& W, const HessianFactor& f,
                          const SparseGPTOptions& o, const AnyMatrix& out, MaskView keep,
                          int num_threads) {
  check_options(W, o, out, keep);
  SF_CHECK_ARG(f.n == W.cols && f.dead.size() == f.n &&
                   (f.precision == Precision::kFloat32 ? f.U32.size() : f.U64.size()) == f.n * f.n,
               "H: a factor of a (%zu, %zu) Hessian does not match W's in_features=%zu", f.n, f.n,
               W.cols);
  check_finite(W, "W", num_threads);
  return sweep_with(W, f, o, out, keep, num_threads);
}

// Quadratic forms x^T H x for the rows of `A` (nr x n, float64) with H read through its
// lower triangle in kTile x kTile tiles: x^T H x = sum_I x_I . (2 sum_{J<I} H_IJ x_J +
// H_II x_I), one GEMM per tile below the diagonal, the diagonal tiles made symmetric.
namespace {
constexpr size_t kTile = 128;

void quad_forms(const HessianView& H, const double* A, size_t nr, size_t n, double* q) {
  const linalg::LinalgTable& la = linalg::linalg();
  std::vector<double> tile(kTile * kTile), acc(nr * kTile);
  std::fill(q, q + nr, 0.0);
  for (size_t i0 = 0; i0 < n; i0 += kTile) {
    const size_t bi = std::min(kTile, n - i0);
    for (size_t j0 = 0; j0 <= i0; j0 += kTile) {
      const size_t bj = std::min(kTile, n - j0);
      const bool diag = j0 == i0;
      for (size_t a = 0; a < bi; ++a) {  // tile[a][b] = H(i0 + a, j0 + b), x2 below the diagonal
        for (size_t b = 0; b < bj; ++b) {
          const double h = H.at(i0 + a, j0 + b);
          tile[a * bj + b] = diag ? h : 2.0 * h;
        }
      }
      // acc (nr x bi) (+)= A[:, J] (nr x bj) * tile^T (bj x bi)
      la.gemm_nt_f64(nr, bi, bj, 1.0, A + j0, n, tile.data(), bj, j0 == 0 ? 0.0 : 1.0, acc.data(),
                     kTile);
    }
    for (size_t r = 0; r < nr; ++r) {
      const double* x = A + r * n + i0;
      const double* y = acc.data() + r * kTile;
      double s = 0.0;
      for (size_t a = 0; a < bi; ++a) s += x[a] * y[a];
      q[r] += s;
    }
  }
}
}  // namespace

double reconstruction_error(const AnyConstMatrix& W, const AnyConstMatrix& W_hat,
                            const HessianView& H, int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_matrix(W_hat, "W_hat");
  SF_CHECK_ARG(W_hat.rows == W.rows && W_hat.cols == W.cols,
               "W_hat: expected shape (%zu, %zu), got (%zu, %zu)", W.rows, W.cols, W_hat.rows,
               W_hat.cols);
  SF_CHECK_ARG(H.data != nullptr && H.n == W.cols, "H: expected shape (%zu, %zu), got (%zu, %zu)",
               W.cols, W.cols, H.n, H.n);
  const size_t n = W.cols;
  constexpr size_t kRows = 32;  // fixed chunks: the same sums for any thread count
  const size_t chunks = (W.rows + kRows - 1) / kRows;
  std::vector<double> num(chunks, 0.0), den(chunks, 0.0);
  parallel_for_each(chunks, num_threads, [&](size_t c) {
    const size_t r0 = c * kRows, nr = std::min(kRows, W.rows - r0);
    std::vector<double> A(2 * nr * n), q(2 * nr);  // rows of W, then rows of W - W_hat
    for (size_t r = 0; r < nr; ++r) {
      double* w = A.data() + r * n;
      double* d = A.data() + (nr + r) * n;
      visit_dtype(W.dtype, [&](auto tag) {
        using S = decltype(tag);
        const S* src = static_cast<const S*>(detail::row_ptr(W, r0 + r));
        for (size_t j = 0; j < n; ++j) w[j] = static_cast<double>(to_f32(src[j]));
      });
      visit_dtype(W_hat.dtype, [&](auto tag) {
        using S = decltype(tag);
        const S* src = static_cast<const S*>(detail::row_ptr(W_hat, r0 + r));
        for (size_t j = 0; j < n; ++j) d[j] = w[j] - static_cast<double>(to_f32(src[j]));
      });
    }
    quad_forms(H, A.data(), 2 * nr, n, q.data());
    for (size_t r = 0; r < nr; ++r) {
      den[c] += q[r];
      num[c] += q[nr + r];
    }
  });
  double tn = 0.0, td = 0.0;
  for (size_t c = 0; c < chunks; ++c) {
    tn += num[c];
    td += den[c];
  }
  SF_CHECK_ARG(td > 0.0, "H: W H W^T has no positive energy (all-zero W or H?)");
  return tn / td;
}

}  // namespace prune
}  // namespace sparseforge
