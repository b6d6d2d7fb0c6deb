// Independent oracles: slow, obviously correct implementations of the mask rules using
// float comparisons and std::stable_sort (no keys, no selection tricks).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

namespace sparseforge {
namespace testing {

// keep-mask pruning the k lowest |v| (stable ascending: among equals, lower index first).
inline std::vector<uint8_t> oracle_prune_lowest(const std::vector<float>& v, size_t k) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return std::fabs(v[a]) < std::fabs(v[b]); });
  std::vector<uint8_t> keep(v.size(), 1);
  for (size_t j = 0; j < k && j < v.size(); ++j) keep[idx[j]] = 0;
  return keep;
}

// Row-major rows x cols; per row prune floor(s * cols).
inline std::vector<uint8_t> oracle_row(const std::vector<float>& w, size_t rows, size_t cols,
                                       size_t k) {
  std::vector<uint8_t> keep;
  for (size_t r = 0; r < rows; ++r) {
    std::vector<float> row(w.begin() + r * cols, w.begin() + (r + 1) * cols);
    auto kr = oracle_prune_lowest(row, k);
    keep.insert(keep.end(), kr.begin(), kr.end());
  }
  return keep;
}

inline std::vector<uint8_t> oracle_nm(const std::vector<float>& w, size_t rows, size_t cols, int n,
                                      int m) {
  std::vector<uint8_t> keep(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t g = 0; g < cols; g += m) {
      std::vector<float> grp(w.begin() + r * cols + g, w.begin() + r * cols + g + m);
      auto kg = oracle_prune_lowest(grp, static_cast<size_t>(m - n));
      std::copy(kg.begin(), kg.end(), keep.begin() + r * cols + g);
    }
  }
  return keep;
}

inline size_t floor_count(double sparsity, size_t count) {
  return static_cast<size_t>(std::floor(static_cast<double>(count) * sparsity));
}

}  // namespace testing
}  // namespace sparseforge
