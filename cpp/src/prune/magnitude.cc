#include "sparseforge/prune/magnitude.h"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "prune/rows.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/select.h"

namespace sparseforge {
namespace prune {
namespace {

void magnitude_row_mask(const AnyConstMatrix& W, double sparsity, MaskView keep, int num_threads) {
  const size_t k = prune_count(sparsity, W.cols);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    KeySelector selector;
    for (size_t r = r0; r < r1; ++r) {
      detail::row_abs_keys(W, r, keys.data(), "W");
      selector.prune_lowest(keys.data(), W.cols, k, keep.row(r));
    }
  });
}

// The rows of several matrices seen as one sequence (matrix order, then row order).
class RowSpace {
 public:
  // `arg` names the input in errors: "W" for one matrix, else "weights" -> "weights[i]".
  RowSpace(const std::vector<AnyConstMatrix>& Ws, const char* arg) : Ws_(Ws) {
    size_t total = 0;
    for (size_t i = 0; i < Ws.size(); ++i) {
      offsets_.push_back(total);
      total += Ws[i].rows;
      max_cols_ = std::max(max_cols_, Ws[i].cols);
      names_.push_back(std::string(arg) == "W" ? std::string(arg)
                                               : std::string(arg) + "[" + std::to_string(i) + "]");
    }
    total_rows_ = total;
  }
  size_t total_rows() const { return total_rows_; }
  size_t max_cols() const { return max_cols_; }

  // fn(global_row, matrix, row, keys, cols) for every row in [g0, g1), keys filled.
  template <class F>
  void for_rows(size_t g0, size_t g1, uint32_t* keys, F&& fn) const {
    size_t i = static_cast<size_t>(std::upper_bound(offsets_.begin(), offsets_.end(), g0) -
                                   offsets_.begin() - 1);
    for (size_t g = g0; g < g1; ++g) {
      while (g - offsets_[i] >= Ws_[i].rows) ++i;
      const size_t r = g - offsets_[i];
      detail::row_abs_keys(Ws_[i], r, keys, names_[i].c_str());
      fn(g, i, r, keys, Ws_[i].cols);
    }
  }

 private:
  const std::vector<AnyConstMatrix>& Ws_;
  std::vector<std::string> names_;
  std::vector<size_t> offsets_;
  size_t total_rows_ = 0;
  size_t max_cols_ = 0;
};

// Index of the bin holding the element of 0-based rank r; *below = elements in lower bins.
size_t find_bin(const std::vector<uint64_t>& hist, uint64_t r, uint64_t* below) {
  uint64_t cum = 0;
  for (size_t b = 0; b < hist.size(); ++b) {
    if (cum + hist[b] > r) {
      *below = cum;
      return b;
    }
    cum += hist[b];
  }
  SF_CHECK(false);
  return 0;
}

// Exact k-th lowest key over all rows by a two-level radix select (16 high bits, then 15
// low bits): three streaming passes over the weights and O(threads * 2^16) memory,
// instead of sorting or copying rows * cols keys. Histograms are integer sums, so the
// result is independent of the thread count.
Threshold global_threshold(const RowSpace& space, uint64_t k, int num_threads) {
  std::mutex mutex;
  std::vector<uint64_t> hist1(1u << 16, 0);
  parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
    std::vector<uint64_t> local(1u << 16, 0);
    std::vector<uint32_t> keys(space.max_cols());
    space.for_rows(g0, g1, keys.data(), [&](size_t, size_t, size_t, const uint32_t* kk, size_t n) {
      for (size_t c = 0; c < n; ++c) ++local[kk[c] >> 15];
    });
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t b = 0; b < local.size(); ++b) hist1[b] += local[b];
  });
  uint64_t below1 = 0;
  const uint32_t high = static_cast<uint32_t>(find_bin(hist1, k - 1, &below1));

  std::vector<uint64_t> hist2(1u << 15, 0);
  parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
    std::vector<uint64_t> local(1u << 15, 0);
    std::vector<uint32_t> keys(space.max_cols());
    space.for_rows(g0, g1, keys.data(), [&](size_t, size_t, size_t, const uint32_t* kk, size_t n) {
      for (size_t c = 0; c < n; ++c) {
        if ((kk[c] >> 15) == high) ++local[kk[c] & 0x7FFFu];
      }
    });
    std::lock_guard<std::mutex> lock(mutex);
    for (size_t b = 0; b < local.size(); ++b) hist2[b] += local[b];
  });
  uint64_t below2 = 0;
  const uint32_t low = static_cast<uint32_t>(find_bin(hist2, k - 1 - below1, &below2));
  Threshold th;
  th.t = (high << 15) | low;
  th.less = static_cast<size_t>(below1 + below2);
  th.equal = static_cast<size_t>(hist2[low]);
  return th;
}

void global_mask(const std::vector<AnyConstMatrix>& Ws, double sparsity,
                 const std::vector<MaskView>& keeps, const char* arg, int num_threads) {
  const RowSpace space(Ws, arg);
  uint64_t total = 0;
  for (const AnyConstMatrix& W : Ws) total += W.rows * W.cols;
  const uint64_t k = prune_count(sparsity, total);
  if (k == 0) {
    for (const MaskView& keep : keeps) {
      for (size_t r = 0; r < keep.rows; ++r) std::fill(keep.row(r), keep.row(r) + keep.cols, 1);
    }
    // Nothing to prune, but bad input is still bad input.
    for (size_t i = 0; i < Ws.size(); ++i) {
      const std::string name =
          std::string(arg) == "W" ? std::string(arg) : std::string(arg) + "[" + std::to_string(i) + "]";
      check_finite(Ws[i], name.c_str(), num_threads);
    }
    return;
  }
  const Threshold th = global_threshold(space, k, num_threads);
  const size_t eq_prune = static_cast<size_t>(k) - th.less;  // ties at t pruned in row order

  // Ties beyond the budget: give each row its share, in global row order.
  std::vector<size_t> eq_before;
  if (eq_prune < th.equal) {
    std::vector<size_t> eq_in_row(space.total_rows());
    parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
      std::vector<uint32_t> keys(space.max_cols());
      space.for_rows(g0, g1, keys.data(),
                     [&](size_t g, size_t, size_t, const uint32_t* kk, size_t n) {
                       eq_in_row[g] = static_cast<size_t>(std::count(kk, kk + n, th.t));
                     });
    });
    eq_before.resize(space.total_rows());
    size_t cum = 0;
    for (size_t g = 0; g < eq_in_row.size(); ++g) {
      eq_before[g] = cum;
      cum += eq_in_row[g];
    }
  }
  parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
    std::vector<uint32_t> keys(space.max_cols());
    space.for_rows(g0, g1, keys.data(),
                   [&](size_t g, size_t i, size_t r, const uint32_t* kk, size_t n) {
                     size_t row_prune = th.equal, row_eq = th.equal;  // all ties pruned
                     if (!eq_before.empty()) {
                       row_prune = eq_prune > eq_before[g] ? eq_prune - eq_before[g] : 0;
                       row_eq = n;  // upper bound: the fix-up loop stops counting itself
                     }
                     keep_from_threshold(kk, n, th.t, row_prune, row_eq, keeps[i].row(r));
                   });
  });
}

}  // namespace

void magnitude_mask(const AnyConstMatrix& W, double sparsity, Scope scope, MaskView keep,
                    int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  check_sparsity(sparsity);
  if (scope == Scope::kRow) {
    magnitude_row_mask(W, sparsity, keep, num_threads);
  } else {
    global_mask({W}, sparsity, {keep}, "W", num_threads);
  }
}

void magnitude_global_mask(const std::vector<AnyConstMatrix>& Ws, double sparsity,
                           const std::vector<MaskView>& keeps, int num_threads) {
  SF_CHECK_ARG(!Ws.empty(), "weights: expected at least one matrix, got none");
  SF_CHECK_ARG(Ws.size() == keeps.size(), "masks: expected %zu masks, got %zu", Ws.size(),
               keeps.size());
  for (size_t i = 0; i < Ws.size(); ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    detail::check_matrix(Ws[i], name.c_str());
    detail::check_keep(keeps[i], Ws[i].rows, Ws[i].cols, "masks");
  }
  check_sparsity(sparsity);
  global_mask(Ws, sparsity, keeps, "weights", num_threads);
}

}  // namespace prune
}  // namespace sparseforge
