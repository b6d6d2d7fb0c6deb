#include <algorithm>
#include <utility>
#include <vector>

#include "prune/rows.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/magnitude.h"

namespace sparseforge {
namespace prune {
namespace {

// Squared Frobenius norms of every tile, float64, summed in row-major order inside the tile
// row by row (fixed order: the same for any thread count).
std::vector<double> tile_sq_norms(const AnyConstMatrix& W, size_t br, size_t bc, int num_threads) {
  const size_t tr = W.rows / br, tc = W.cols / bc;
  std::vector<double> norms(tr * tc, 0.0);
  parallel_for(tr, num_threads, [&](size_t i0, size_t i1) {
    std::vector<float> row(W.cols);
    std::vector<uint32_t> keys(W.cols);
    for (size_t i = i0; i < i1; ++i) {
      for (size_t r = i * br; r < (i + 1) * br; ++r) {
        detail::row_abs_keys(W, r, keys.data(), "W");  // finiteness check
        for (size_t c = 0; c < W.cols; ++c) row[c] = f32_from_bits(keys[c]);
        for (size_t j = 0; j < tc; ++j) {
          double s = 0.0;
          for (size_t c = j * bc; c < (j + 1) * bc; ++c) {
            s += static_cast<double>(row[c]) * static_cast<double>(row[c]);
          }
          norms[i * tc + j] += s;
        }
      }
    }
  });
  return norms;
}

// Marks pruned[idx] for the k lowest of (norms[idx], idx) over idx in [begin, end).
void prune_lowest_tiles(const std::vector<double>& norms, size_t begin, size_t end, size_t k,
                        std::vector<uint8_t>& pruned) {
  if (k == 0) return;
  std::vector<std::pair<double, size_t>> order;
  order.reserve(end - begin);
  for (size_t idx = begin; idx < end; ++idx) order.emplace_back(norms[idx], idx);
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k - 1), order.end());
  for (size_t j = 0; j < k; ++j) pruned[order[j].second] = 1;
}

}  // namespace

void magnitude_block_mask(const AnyConstMatrix& W, double sparsity, size_t block_rows,
                          size_t block_cols, Scope scope, MaskView keep, int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  check_sparsity(sparsity);
  SF_CHECK_ARG(block_rows >= 1 && block_cols >= 1, "block: expected positive sizes, got (%zu, %zu)",
               block_rows, block_cols);
  SF_CHECK_ARG(W.rows % block_rows == 0 && W.cols % block_cols == 0,
               "block: W of shape (%zu, %zu) is not a whole number of (%zu, %zu) blocks", W.rows,
               W.cols, block_rows, block_cols);
  const size_t tr = W.rows / block_rows, tc = W.cols / block_cols;
  const std::vector<double> norms = tile_sq_norms(W, block_rows, block_cols, num_threads);
  std::vector<uint8_t> pruned(tr * tc, 0);
  if (scope == Scope::kLayer) {
    prune_lowest_tiles(norms, 0, tr * tc, prune_count(sparsity, tr * tc), pruned);
  } else {
    const size_t k = prune_count(sparsity, tc);
    for (size_t i = 0; i < tr; ++i) prune_lowest_tiles(norms, i * tc, (i + 1) * tc, k, pruned);
  }
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const uint8_t* tiles = pruned.data() + (r / block_rows) * tc;
      uint8_t* out = keep.row(r);
      for (size_t c = 0; c < W.cols; ++c) out[c] = !tiles[c / block_cols];
    }
  });
}

}  // namespace prune
}  // namespace sparseforge
