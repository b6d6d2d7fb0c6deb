#include "sparseforge/prune/obs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/linalg/linalg.h"
#include "prune/factor.h"
#include "prune/rows.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace prune {
namespace {

void check_common(const AnyConstMatrix& W, const HessianView& H, ConstMaskView keep) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  check_hessian(H, W.cols);
  check_finite(W, "W", 1);
}

void check_out(const AnyConstMatrix& W, const AnyMatrix& out) {
  detail::check_matrix(out, "out");
  SF_CHECK_ARG(out.rows == W.rows && out.cols == W.cols && out.dtype == W.dtype,
               "out: expected W's shape and dtype");
}

// Row r of W in float64 with dead columns zeroed.
void load_row(const AnyConstMatrix& W, size_t r, const std::vector<uint8_t>& dead, double* w) {
  const void* p = detail::row_ptr(W, r);
  visit_dtype(W.dtype, [&](auto tag) {
    using S = decltype(tag);
    const S* src = static_cast<const S*>(p);
    for (size_t j = 0; j < W.cols; ++j) w[j] = dead[j] ? 0.0 : static_cast<double>(to_f32(src[j]));
  });
}

void store_row(const double* w, const AnyMatrix& out, size_t r) {
  visit_dtype(out.dtype, [&](auto tag) {
    using S = decltype(tag);
    S* dst = static_cast<S*>(out.data) + r * out.stride;
    for (size_t j = 0; j < out.cols; ++j) dst[j] = from_f32<S>(static_cast<float>(w[j]));
  });
}

// How many weights a row prunes: floor(sparsity * cols), or (m - n) per group.
size_t row_prune_count(size_t cols, double sparsity, NMPattern p) {
  return p.m > 0 ? (cols / static_cast<size_t>(p.m)) * static_cast<size_t>(p.m - p.n)
                 : prune_count(sparsity, cols);
}

}  // namespace

ObsResult obs(const AnyConstMatrix& W, const HessianView& H, double sparsity, NMPattern pattern,
              double percdamp, double max_percdamp, const AnyMatrix& out, MaskView keep,
              int num_threads) {
  check_common(W, H, keep);
  check_out(W, out);
  if (pattern.m > 0) {
    check_nm(pattern, W.cols);
  } else {
    check_sparsity(sparsity);
  }
  SF_CHECK_ARG(std::isfinite(percdamp) && percdamp >= 0.0,
               "percdamp: expected a finite value >= 0, got %g", percdamp);
  const size_t rows = W.rows, n = W.cols;
  const std::vector<uint8_t> dead = detail::dead_columns(H);
  detail::InverseFactor f =
      detail::factor_inverse<double>(H, dead, percdamp, max_percdamp, num_threads);
  // H'^-1 = U^T U (U's strict lower triangle is zero).
  std::vector<double> Hinv(n * n);
  linalg::linalg().gemm_f64(true, n, n, n, 1.0, f.U.data(), n, f.U.data(), n, 0.0, Hinv.data(), n);
  std::vector<double>().swap(f.U);
  ObsResult res;
  res.percdamp_used = f.percdamp;
  res.damp = f.damp;
  res.attempts = f.attempts;
  for (uint8_t d : dead) res.dead_columns += d;
  res.row_loss.assign(rows, 0.0);
  const size_t k = row_prune_count(n, sparsity, pattern);
  const size_t m = pattern.m > 0 ? static_cast<size_t>(pattern.m) : 0;
  parallel_for_dynamic(rows, num_threads, [&](size_t r) {
    std::vector<double> w(n), diag(n), h(n), coef;
    std::vector<double> V;  // the downdate vectors v_p = h_p / sqrt(h_pp), one row each
    V.reserve(k * n);
    std::vector<uint8_t> pruned(n, 0);
    std::vector<int> kept_in_group(m ? n / m : 0, static_cast<int>(m));
    load_row(W, r, dead, w.data());
    for (size_t j = 0; j < n; ++j) diag[j] = Hinv[j * n + j];
    double loss = 0.0;
    for (size_t step = 0; step < k; ++step) {
      size_t q = n;
      double best = std::numeric_limits<double>::infinity();
      for (size_t j = 0; j < n; ++j) {
        if (pruned[j] || (m && kept_in_group[j / m] <= pattern.n)) continue;
        const double s = w[j] * w[j] / diag[j];
        if (s < best || q == n) {
          best = s;
          q = j;
        }
      }
      SF_CHECK(q < n);
      // The current column q of the downdated inverse: H^-1[:, q] - sum_p v_p v_p[q].
      coef.resize(step);
      for (size_t p = 0; p < step; ++p) coef[p] = V[p * n + q];
      std::copy(Hinv.begin() + static_cast<std::ptrdiff_t>(q * n),
                Hinv.begin() + static_cast<std::ptrdiff_t>((q + 1) * n), h.begin());
      if (step > 0) {
        linalg::linalg().gemm_f64(true, n, 1, step, -1.0, V.data(), n, coef.data(), 1, 1.0,
                                  h.data(), 1);
      }
      const double hqq = h[q];
      SF_CHECK_NUMERIC(hqq > 0.0 && std::isfinite(hqq),
                       "H: the inverse lost positive definiteness while pruning row %zu "
                       "([H^-1]_qq = %g at column %zu); raise percdamp",
                       r, hqq, q);
      const double wq = w[q];
      loss += wq * wq / (2.0 * hqq);
      const double scale = wq / hqq, root = std::sqrt(hqq);
      V.resize((step + 1) * n);
      double* v = V.data() + step * n;
      for (size_t j = 0; j < n; ++j) {
        // Pruned weights stay exactly 0 (their column of the downdated inverse is zero in
        // exact arithmetic, ~1e-18 in floating point).
        if (!pruned[j]) w[j] -= scale * h[j];
        v[j] = h[j] / root;
        diag[j] -= v[j] * v[j];
      }
      w[q] = 0.0;
      pruned[q] = 1;
      if (m) --kept_in_group[q / m];
    }
    for (size_t j = 0; j < n; ++j) keep.row(r)[j] = !pruned[j];
    store_row(w.data(), out, r);
    res.row_loss[r] = loss;
  });
  for (double l : res.row_loss) res.loss += l;
  return res;
}

void obd_mask(const AnyConstMatrix& W, const HessianView& H, double sparsity, NMPattern pattern,
              MaskView keep, int num_threads) {
  check_common(W, H, keep);
  if (pattern.m > 0) {
    check_nm(pattern, W.cols);
  } else {
    check_sparsity(sparsity);
  }
  const size_t n = W.cols;
  std::vector<double> hdiag(n);
  for (size_t j = 0; j < n; ++j) hdiag[j] = H.at(j, j);
  const size_t k = prune_count(pattern.m > 0 ? 0.0 : sparsity, n);
  const size_t m = static_cast<size_t>(pattern.m);
  const std::vector<uint8_t> no_dead(n, 0);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<double> w(n);
    std::vector<std::pair<double, size_t>> sal(n);
    for (size_t r = r0; r < r1; ++r) {
      load_row(W, r, no_dead, w.data());
      for (size_t j = 0; j < n; ++j) sal[j] = {0.5 * w[j] * w[j] * hdiag[j], j};
      uint8_t* out = keep.row(r);
      std::fill(out, out + n, uint8_t{1});
      if (pattern.m > 0) {
        const size_t prune = m - static_cast<size_t>(pattern.n);
        for (size_t g = 0; g < n; g += m) {
          std::sort(sal.begin() + static_cast<std::ptrdiff_t>(g),
                    sal.begin() + static_cast<std::ptrdiff_t>(g + m));
          for (size_t t = 0; t < prune; ++t) out[sal[g + t].second] = 0;
        }
      } else if (k > 0) {
        std::nth_element(sal.begin(), sal.begin() + static_cast<std::ptrdiff_t>(k - 1), sal.end());
        for (size_t t = 0; t < k; ++t) out[sal[t].second] = 0;
      }
    }
  });
}

ObsResult reconstruct_exact(const AnyConstMatrix& W, const HessianView& H, ConstMaskView keep,
                            double percdamp, const AnyMatrix& out, int num_threads) {
  check_common(W, H, keep);
  check_out(W, out);
  SF_CHECK_ARG(std::isfinite(percdamp) && percdamp >= 0.0,
               "percdamp: expected a finite value >= 0, got %g", percdamp);
  const size_t n = W.cols;
  const std::vector<uint8_t> dead = detail::dead_columns(H);
  double md = 0.0;
  for (size_t j = 0; j < n; ++j) md += dead[j] ? 1.0 : H.at(j, j);
  md /= static_cast<double>(n);
  const std::vector<double> A = detail::damped_hessian(H, dead, percdamp * md, num_threads);
  ObsResult res;
  res.percdamp_used = percdamp;
  res.damp = percdamp * md;
  res.attempts = 1;
  for (uint8_t d : dead) res.dead_columns += d;
  res.row_loss.assign(W.rows, 0.0);
  parallel_for_dynamic(W.rows, num_threads, [&](size_t r) {
    std::vector<double> w(n), what(n, 0.0), delta(n);
    load_row(W, r, dead, w.data());
    std::vector<size_t> S;
    for (size_t j = 0; j < n; ++j) {
      if (keep.row(r)[j]) S.push_back(j);
    }
    const size_t s = S.size();
    if (s > 0) {
      std::vector<double> Ass(s * s), b(s);
      for (size_t a = 0; a < s; ++a) {
        const double* Arow = A.data() + S[a] * n;
        for (size_t c = 0; c < s; ++c) Ass[a * s + c] = Arow[S[c]];
        double acc = 0.0;
        for (size_t j = 0; j < n; ++j) acc += Arow[j] * w[j];
        b[a] = acc;
      }
      SF_CHECK_NUMERIC(linalg::linalg().posv_f64(s, Ass.data(), s, b.data()),
                       "H: the kept block of row %zu is not positive definite; raise percdamp", r);
      for (size_t a = 0; a < s; ++a) what[S[a]] = b[a];
    }
    double loss = 0.0;
    for (size_t j = 0; j < n; ++j) delta[j] = what[j] - w[j];
    for (size_t i = 0; i < n; ++i) {
      if (delta[i] == 0.0) continue;
      double acc = 0.0;
      for (size_t j = 0; j < n; ++j) acc += A[i * n + j] * delta[j];
      loss += delta[i] * acc;
    }
    res.row_loss[r] = 0.5 * loss;
    store_row(what.data(), out, r);
  });
  for (double l : res.row_loss) res.loss += l;
  return res;
}

}  // namespace prune
}  // namespace sparseforge
