// Wanda (Sun et al., ICLR 2024): prune by |W_ij| * ||X_j|| compared within each output row.
//
// W is (out_features, in_features), fp32/fp16/bf16; col_norms[in_features] are the input
// columns' norms (any uniform scale: LayerStats::col_norms gives sqrt(mean x_j^2)), finite
// and >= 0. The score is the fp32 product |w| * col_norms[j], as locuslab/wanda computes
// it (lib/prune.py: W_metric = |W| * sqrt(scaler_row)), so masks equal the reference's on
// the same inputs. Ties: by (score, index), the lower index pruned first, which is
// torch.sort(stable=True)'s order; for N:M the reference's topk leaves ties unspecified.
// No weight update. Cost: one pass plus a selection per row, parallel over rows.
#pragma once

#include "sparseforge/core/view.h"
#include "sparseforge/prune/mask.h"

namespace sparseforge {
namespace prune {

// Unstructured: every row prunes exactly floor(sparsity * in_features) weights.
void wanda_mask(const AnyConstMatrix& W, const float* col_norms, double sparsity, MaskView keep,
                int num_threads);

// N:M: every group of m consecutive weights along a row keeps its n highest scores.
void wanda_nm_mask(const AnyConstMatrix& W, const float* col_norms, NMPattern p, MaskView keep,
                   int num_threads);

// The reference's --use_variant: per row, prune the scores (sorted ascending) whose
// cumulative sum stays within alpha times the row total, with alpha found by the
// reference's bisection (start 0.4, bracket [0, 0.8], stop when the layer's sparsity is
// within 0.001 of the target or the bracket is narrower than 0.001). Each row's cut is a
// value threshold: scores equal to it are pruned together. Cumulative sums are float64
// (the reference's come from torch.cumsum in fp32); a row whose first score already
// exceeds alpha times its total prunes nothing (the reference indexes position -1 there).
// Memory: 12 bytes per weight for the sorted scores and their cumulative sums.
struct WandaVariantInfo {
  double alpha = 0.0;
  int iterations = 0;     // alpha values evaluated, the first (0.4) included
  double sparsity = 0.0;  // achieved layer sparsity of the mask
};
WandaVariantInfo wanda_variant_mask(const AnyConstMatrix& W, const float* col_norms,
                                    double sparsity, MaskView keep, int num_threads);

}  // namespace prune
}  // namespace sparseforge
