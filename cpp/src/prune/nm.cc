#include <vector>

#include "prune/rows.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/magnitude.h"
#include "sparseforge/prune/select.h"

namespace sparseforge {
namespace prune {

void magnitude_nm_mask(const AnyConstMatrix& W, NMPattern p, MaskView keep, int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  check_nm(p, W.cols);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    for (size_t r = r0; r < r1; ++r) {
      detail::row_abs_keys(W, r, keys.data(), "W");
      nm_keep_from_keys(keys.data(), W.cols, p.n, p.m, keep.row(r));
    }
  });
}

}  // namespace prune
}  // namespace sparseforge
