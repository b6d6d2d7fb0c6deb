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

SparseGPTResult sparsegpt(const AnyConstMatrix& W, const HessianView& H, const SparseGPTOptions& o,
                          const AnyMatrix& out, MaskView keep, int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_matrix(out, "out");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  SF_CHECK_ARG(out.rows == W.rows && out.cols == W.cols && out.dtype == W.dtype,
               "out: expected W's shape and dtype");
  SF_CHECK_ARG(o.block_size >= 1, "block_size: expected >= 1, got %zu", o.block_size);
  SF_CHECK_ARG(std::isfinite(o.percdamp) && o.percdamp >= 0.0,
               "percdamp: expected a finite value >= 0, got %g", o.percdamp);
  SF_CHECK_ARG(std::isfinite(o.max_percdamp) && o.max_percdamp >= o.percdamp,
               "max_percdamp: expected a finite value >= percdamp=%g, got %g", o.percdamp,
               o.max_percdamp);
  if (o.pattern.m > 0 && !o.mask_given) {
    check_nm(o.pattern, W.cols);
    SF_CHECK_ARG(o.block_size % static_cast<size_t>(o.pattern.m) == 0,
                 "block_size: %zu is not a multiple of m=%d (pattern %d:%d)", o.block_size,
                 o.pattern.m, o.pattern.n, o.pattern.m);
  } else if (!o.mask_given) {
    check_sparsity(o.sparsity);
  }
  check_hessian(H, W.cols);
  check_finite(W, "W", num_threads);

  const size_t rows = W.rows, cols = W.cols;
  const std::vector<uint8_t> dead = detail::dead_columns(H);
  SparseGPTResult res;
  for (uint8_t d : dead) res.dead_columns += d;
  const bool factor32 = o.factor_precision == Precision::kFloat32;
  detail::InverseFactorT<double> f64;
  detail::InverseFactorT<float> f32;
  if (factor32) {
    f32 = detail::factor_inverse<float>(H, dead, o.percdamp, o.max_percdamp, num_threads);
    res.percdamp_used = f32.percdamp;
    res.damp = f32.damp;
    res.attempts = f32.attempts;
  } else {
    f64 = detail::factor_inverse<double>(H, dead, o.percdamp, o.max_percdamp, num_threads);
    res.percdamp_used = f64.percdamp;
    res.damp = f64.damp;
    res.attempts = f64.attempts;
  }
  res.row_loss.assign(rows, 0.0);
  if (o.precision == Precision::kFloat64) {
    if (factor32) {
      f64.U.assign(f32.U.begin(), f32.U.end());
      std::vector<float>().swap(f32.U);
    }
    std::vector<double> Wk(rows * cols);
    load_rows(W, dead, Wk.data(), num_threads);
    sweep<double>(Wk.data(), rows, cols, f64.U.data(), o, keep, res.row_loss, num_threads);
    store_rows(Wk.data(), out, num_threads);
  } else {
    if (!factor32) {
      f32.U.assign(f64.U.begin(), f64.U.end());
      std::vector<double>().swap(f64.U);  // peak: one float64 matrix, then U in fp32
    }
    // fp32 weights: the sweep runs in `out` itself, no extra copy of W.
    const bool in_place = out.dtype == DType::kF32 && out.stride == cols;
    std::vector<float> Wk(in_place ? 0 : rows * cols);
    float* work = in_place ? static_cast<float*>(out.data) : Wk.data();
    load_rows(W, dead, work, num_threads);
    sweep<float>(work, rows, cols, f32.U.data(), o, keep, res.row_loss, num_threads);
    if (!in_place) store_rows(work, out, num_threads);
  }
  for (double l : res.row_loss) res.loss += l;
  return res;
}

}  // namespace prune
}  // namespace sparseforge
