#include "sparseforge/prune/magnitude.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/simd/kernels.h"
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

// How errors name matrix i: "W" for a single layer, "weights[i]" in a list.
std::string matrix_arg(const char* arg, size_t i) {
  const std::string a(arg);
  return a == "W" ? a : a + "[" + std::to_string(i) + "]";
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
      names_.push_back(matrix_arg(arg, i));
    }
    total_rows_ = total;
    uint64_t elems = 0;
    for (const AnyConstMatrix& W : Ws) {
      elem_offsets_.push_back(elems);
      elems += static_cast<uint64_t>(W.rows) * W.cols;
    }
    total_elems_ = elems;
  }
  size_t total_rows() const { return total_rows_; }
  uint64_t total_elems() const { return total_elems_; }

  // The key of the element at flat position f (matrix order, then row-major).
  uint32_t key_at(uint64_t f) const {
    const size_t i =
        static_cast<size_t>(std::upper_bound(elem_offsets_.begin(), elem_offsets_.end(), f) -
                            elem_offsets_.begin() - 1);
    const uint64_t local = f - elem_offsets_[i];
    return detail::element_abs_key(Ws_[i], static_cast<size_t>(local / Ws_[i].cols),
                                   static_cast<size_t>(local % Ws_[i].cols));
  }
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
  std::vector<uint64_t> elem_offsets_;
  size_t total_rows_ = 0;
  uint64_t total_elems_ = 0;
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
// result is independent of the thread count. The fallback of sampled_threshold().
Threshold radix_threshold(const RowSpace& space, uint64_t k, int num_threads) {
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

// The k-th lowest key from one streaming pass: strided samples give a band [lo, hi] that
// holds the target rank with high probability (3 sigma of the sample-rank noise either
// side); the pass counts keys below lo and compresses the keys inside the band (about 2%
// of them) with the vectorised band_collect, and nth_element on the band finishes. The
// band holds every key equal to the threshold, so counts are exact. If the band misses,
// or would be too large to hold, the radix select runs instead: the result never depends
// on sampling. One pass instead of the radix select's two (both then write the mask):
// bench/results/masks.md.
//
// Ties at the threshold that must be split (some pruned, some kept, in row order) need
// each row's count of keys equal to it; the band keeps its keys row by row, so those
// counts come from the band in *eq_in_row without another pass over the weights (on
// Gaussian fp32 layers such ties happen in about half the matrices). The radix fallback
// leaves *eq_in_row empty.
Threshold global_threshold(const RowSpace& space, uint64_t k, int num_threads,
                           std::vector<size_t>* eq_in_row) {
  eq_in_row->clear();
  const uint64_t total = space.total_elems();
  const uint64_t r = k - 1;
  uint64_t s = 4096;
  while (s * s < 64 * total && s < (uint64_t{1} << 20)) s *= 2;
  if (s * 4 > total) return radix_threshold(space, k, num_threads);  // small: just do it
  const double p = (static_cast<double>(r) + 0.5) / static_cast<double>(total);
  const double center = p * static_cast<double>(s);
  const double margin = 3.0 * std::sqrt(static_cast<double>(s) * p * (1.0 - p)) + 1.0;
  const double lo_pos = std::floor(center - margin), hi_pos = std::ceil(center + margin);
  const double expected_band = static_cast<double>(total) * (hi_pos - lo_pos) / s;
  if (expected_band > static_cast<double>(uint64_t{1} << 26)) {
    return radix_threshold(space, k, num_threads);  // the band would not fit comfortably
  }
  std::vector<uint32_t> sample(static_cast<size_t>(s));
  for (uint64_t j = 0; j < s; ++j) sample[j] = space.key_at((j * total + total / (2 * s)) / s);
  uint32_t lo = 0, hi = 0xFFFFFFFFu;
  if (lo_pos >= 0) {
    const auto it = sample.begin() + static_cast<std::ptrdiff_t>(lo_pos);
    std::nth_element(sample.begin(), it, sample.end());
    lo = *it;
  }
  if (hi_pos < static_cast<double>(s)) {
    const auto it = sample.begin() + static_cast<std::ptrdiff_t>(hi_pos);
    std::nth_element(sample.begin() + static_cast<std::ptrdiff_t>(std::max(0.0, lo_pos)), it,
                     sample.end());
    hi = *it;
  }

  // One part per thread range: the band keys of rows g0.. in row order, and per row how
  // many there are.
  struct Part {
    size_t g0 = 0;
    std::vector<uint32_t> keys, per_row;
  };
  const simd::KernelTable& kt = simd::kernels();
  std::mutex mutex;
  std::vector<Part> parts;
  uint64_t less = 0;
  parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
    std::vector<uint32_t> keys(space.max_cols());
    Part part;
    part.g0 = g0;
    uint64_t local_less = 0;
    space.for_rows(g0, g1, keys.data(), [&](size_t, size_t, size_t, const uint32_t* kk, size_t n) {
      const size_t used = part.keys.size();
      part.keys.resize(used + n);
      size_t nb = 0;
      local_less += kt.band_collect(kk, n, lo, hi, part.keys.data() + used, &nb);
      part.keys.resize(used + nb);
      part.per_row.push_back(static_cast<uint32_t>(nb));
    });
    std::lock_guard<std::mutex> lock(mutex);
    parts.push_back(std::move(part));
    less += local_less;
  });
  std::vector<uint32_t> band;
  for (const Part& part : parts) band.insert(band.end(), part.keys.begin(), part.keys.end());
  if (r < less || r >= less + band.size()) return radix_threshold(space, k, num_threads);
  const auto it = band.begin() + static_cast<std::ptrdiff_t>(r - less);
  std::nth_element(band.begin(), it, band.end());  // reorders the copy, not the parts
  Threshold th;
  th.t = *it;
  size_t below = 0, equal = 0;
  for (uint32_t key : band) {
    below += key < th.t;
    equal += key == th.t;
  }
  th.less = static_cast<size_t>(less) + below;
  th.equal = equal;
  eq_in_row->assign(space.total_rows(), 0);
  for (const Part& part : parts) {
    const uint32_t* key = part.keys.data();
    for (size_t j = 0; j < part.per_row.size(); ++j) {
      (*eq_in_row)[part.g0 + j] = static_cast<size_t>(std::count(key, key + part.per_row[j], th.t));
      key += part.per_row[j];
    }
  }
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
      check_finite(Ws[i], matrix_arg(arg, i).c_str(), num_threads);
    }
    return;
  }
  std::vector<size_t> eq_in_row;
  const Threshold th = global_threshold(space, k, num_threads, &eq_in_row);
  const size_t eq_prune = static_cast<size_t>(k) - th.less;  // ties at t pruned in row order

  // Ties beyond the budget: give each row its share, in global row order.
  std::vector<size_t> eq_before;
  if (eq_prune < th.equal) {
    if (eq_in_row.empty()) {  // the radix path: count with one more pass
      eq_in_row.resize(space.total_rows());
      parallel_for(space.total_rows(), num_threads, [&](size_t g0, size_t g1) {
        std::vector<uint32_t> keys(space.max_cols());
        space.for_rows(g0, g1, keys.data(),
                       [&](size_t g, size_t, size_t, const uint32_t* kk, size_t n) {
                         eq_in_row[g] = static_cast<size_t>(std::count(kk, kk + n, th.t));
                       });
      });
    }
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
    const std::string name = matrix_arg("weights", i);
    detail::check_matrix(Ws[i], name.c_str());
    detail::check_keep(keeps[i], Ws[i].rows, Ws[i].cols, "masks");
  }
  check_sparsity(sparsity);
  global_mask(Ws, sparsity, keeps, "weights", num_threads);
}

}  // namespace prune
}  // namespace sparseforge
