// Magnitude pruning masks: the baseline every other method is compared to.
//
// Shapes: W is (out_features, in_features), row-major, fp32/fp16/bf16; `keep` has W's
// shape (1 = kept). Elements are ranked by (|w|, index) and the lowest are pruned: among
// equal magnitudes the lower index is pruned first (the order of a stable ascending sort).
// W must be finite; NaN/Inf raise InvalidArgument. Cost: O(rows * cols) time with a few
// vectorised passes, O(threads * cols) scratch; parallel over rows, results identical for
// any thread count.
#pragma once

#include <vector>

#include "sparseforge/core/view.h"
#include "sparseforge/prune/mask.h"

namespace sparseforge {
namespace prune {

// Unstructured magnitude pruning.
//   Scope::kRow:   every row prunes exactly floor(sparsity * in_features) weights.
//   Scope::kLayer: the whole matrix prunes exactly floor(sparsity * rows * cols) weights
//                  (one threshold; the per-row counts vary).
// (locuslab/wanda's magnitude baseline thresholds the layer with `|W| <= sorted[k]`, which
// prunes k + 1 weights plus any ties; here the count is exact.)
void magnitude_mask(const AnyConstMatrix& W, double sparsity, Scope scope, MaskView keep,
                    int num_threads);

// One threshold across several matrices: floor(sparsity * total) weights pruned overall,
// ranked by (|w|, matrix index, row-major index). keeps[i] has Ws[i]'s shape.
void magnitude_global_mask(const std::vector<AnyConstMatrix>& Ws, double sparsity,
                           const std::vector<MaskView>& keeps, int num_threads);

// N:M: in every group of m consecutive weights along in_features keep the n largest
// magnitudes (ties: the higher index is kept). in_features % m == 0.
void magnitude_nm_mask(const AnyConstMatrix& W, NMPattern p, MaskView keep, int num_threads);

// Block pruning: (block_rows x block_cols) tiles ranked by their L2 (Frobenius) norm,
// computed in float64; ties by tile index in row-major tile order. Scope::kLayer prunes
// floor(sparsity * tiles) tiles over the matrix, Scope::kRow prunes
// floor(sparsity * tiles_per_tile_row) in every row of tiles. W's shape must be a multiple
// of the tile shape.
void magnitude_block_mask(const AnyConstMatrix& W, double sparsity, size_t block_rows,
                          size_t block_cols, Scope scope, MaskView keep, int num_threads);

}  // namespace prune
}  // namespace sparseforge
