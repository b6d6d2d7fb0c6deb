// Optimal Brain Surgeon, Optimal Brain Damage and mask-given reconstruction.
//
// All take W (rows, cols) fp32/fp16/bf16 and H (cols, cols) (see sparsegpt.h), and treat
// rows as independent least-squares problems min (w - w_hat)^T H (w - w_hat): the layer
// error ||(W - W_hat) X||^2 up to the scale of H. Dead inputs (H_jj == 0) are handled as in
// SparseGPT: H_jj = 1 and W[:, j] = 0; H' = H + percdamp * mean(diag H) I where inverted.
#pragma once

#include <vector>

#include "sparseforge/core/view.h"
#include "sparseforge/prune/mask.h"
#include "sparseforge/prune/sparsegpt.h"

namespace sparseforge {
namespace prune {

struct ObsResult {
  std::vector<double> row_loss;  // OBS: sum of w_q^2 / (2 [H'^-1]_qq); reconstruct: the
                                 // exact 0.5 (w - w_hat)^T H' (w - w_hat)
  double loss = 0.0;
  double percdamp_used = 0.0;
  double damp = 0.0;
  int attempts = 0;
  size_t dead_columns = 0;
};

// Exact greedy OBS per row (Hassibi & Stork): repeatedly prune the weight with the least
// saliency w_q^2 / [H^-1]_qq (ties: lower index), update every remaining weight by
// -w_q / [H^-1]_qq * H^-1[:, q], and remove q from H^-1 (rank-1 downdate), until
// floor(sparsity * cols) weights are pruned, or, with an N:M pattern, until every group
// keeps n (only weights in groups still keeping more than n are candidates). float64.
// Cost per row: ~cols * k^2 / 2 flops (the downdates are kept as k vectors); meant for
// ground truth on layers up to ~1024 inputs.
ObsResult obs(const AnyConstMatrix& W, const HessianView& H, double sparsity, NMPattern pattern,
              double percdamp, double max_percdamp, const AnyMatrix& out, MaskView keep,
              int num_threads);

// OBD (LeCun et al.): saliency 0.5 * w_q^2 * H_qq with the undamped diagonal, the lowest
// floor(sparsity * cols) per row (or per group for N:M) pruned, ties by index, no update.
void obd_mask(const AnyConstMatrix& W, const HessianView& H, double sparsity, NMPattern pattern,
              MaskView keep, int num_threads);

// For a given mask, the least-squares optimal kept weights of each row:
// w_hat_S = solve(H'_SS, (H' w)_S) with S the kept set, w_hat = 0 elsewhere (float64,
// one Cholesky of |S| x |S| per row: ~|S|^3/3 flops per row).
ObsResult reconstruct_exact(const AnyConstMatrix& W, const HessianView& H, ConstMaskView keep,
                            double percdamp, const AnyMatrix& out, int num_threads);

}  // namespace prune
}  // namespace sparseforge
