#include "sparseforge/prune/wanda.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "prune/rows.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/select.h"

namespace sparseforge {
namespace prune {
namespace {

void check_inputs(const AnyConstMatrix& W, const float* col_norms, ConstMaskView keep) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  detail::check_col_scale(col_norms, W.cols, "col_norms");
}

}  // namespace

void wanda_mask(const AnyConstMatrix& W, const float* col_norms, double sparsity, MaskView keep,
                int num_threads) {
  check_inputs(W, col_norms, keep);
  const size_t k = prune_count(sparsity, W.cols);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    KeySelector selector;
    for (size_t r = r0; r < r1; ++r) {
      detail::row_scaled_keys(W, r, col_norms, keys.data(), "W");
      selector.prune_lowest(keys.data(), W.cols, k, keep.row(r));
    }
  });
}

void wanda_nm_mask(const AnyConstMatrix& W, const float* col_norms, NMPattern p, MaskView keep,
                   int num_threads) {
  check_inputs(W, col_norms, keep);
  check_nm(p, W.cols);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    for (size_t r = r0; r < r1; ++r) {
      detail::row_scaled_keys(W, r, col_norms, keys.data(), "W");
      nm_keep_from_keys(keys.data(), W.cols, p.n, p.m, keep.row(r));
    }
  });
}

WandaVariantInfo wanda_variant_mask(const AnyConstMatrix& W, const float* col_norms,
                                    double sparsity, MaskView keep, int num_threads) {
  check_inputs(W, col_norms, keep);
  check_sparsity(sparsity);
  const size_t rows = W.rows, cols = W.cols;
  // Per row: scores sorted ascending (as fp32 values; the keys order them), their float64
  // running sums, and the row's total.
  std::vector<float> sorted(rows * cols);
  std::vector<double> cum(rows * cols);
  parallel_for(rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(cols);
    for (size_t r = r0; r < r1; ++r) {
      detail::row_scaled_keys(W, r, col_norms, keys.data(), "W");
      std::sort(keys.begin(), keys.end());
      double acc = 0.0;
      for (size_t j = 0; j < cols; ++j) {
        const float v = f32_from_bits(keys[j]);
        sorted[r * cols + j] = v;
        acc += v;
        cum[r * cols + j] = acc;
      }
    }
  });
  // Per row threshold for alpha (or -1 for "prune nothing") and how many it prunes.
  std::vector<float> thr(rows);
  std::vector<size_t> pruned(rows);
  auto layer_sparsity = [&](double alpha) {
    parallel_for(rows, num_threads, [&](size_t r0, size_t r1) {
      for (size_t r = r0; r < r1; ++r) {
        const double* c = cum.data() + r * cols;
        const float* v = sorted.data() + r * cols;
        const double cut = alpha * c[cols - 1];
        const size_t cnt = static_cast<size_t>(std::upper_bound(c, c + cols, cut) - c);
        if (cnt == 0) {
          thr[r] = -1.0f;
          pruned[r] = 0;
        } else {
          thr[r] = v[cnt - 1];
          pruned[r] = static_cast<size_t>(std::upper_bound(v, v + cols, thr[r]) - v);
        }
      }
    });
    size_t total = 0;
    for (size_t p : pruned) total += p;
    return static_cast<double>(total) / static_cast<double>(rows * cols);
  };
  WandaVariantInfo info;
  double alpha = 0.4, lo = 0.0, hi = 0.8;
  double cur = layer_sparsity(alpha);
  int iterations = 1;
  while (std::fabs(cur - sparsity) > 0.001 && hi - lo >= 0.001) {
    double next;
    if (cur > sparsity) {
      next = (alpha + lo) / 2.0;
      hi = alpha;
    } else {
      next = (alpha + hi) / 2.0;
      lo = alpha;
    }
    alpha = next;
    cur = layer_sparsity(alpha);
    ++iterations;
  }
  // The mask for the final alpha (thr holds its thresholds): prune score <= thr.
  parallel_for(rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(cols);
    for (size_t r = r0; r < r1; ++r) {
      detail::row_scaled_keys(W, r, col_norms, keys.data(), "W");
      uint8_t* out = keep.row(r);
      if (thr[r] < 0.0f) {
        std::fill(out, out + cols, uint8_t{1});
        continue;
      }
      const uint32_t t = score_key(thr[r]);
      for (size_t j = 0; j < cols; ++j) out[j] = keys[j] > t;
    }
  });
  info.alpha = alpha;
  info.iterations = iterations;
  info.sparsity = cur;
  return info;
}

}  // namespace prune
}  // namespace sparseforge
