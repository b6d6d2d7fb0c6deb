// Selection primitives shared by every pruning method (magnitude, Wanda, ...).
//
// Scores are non-negative floats (|w|, |w|·||x||, ...). Selection works on their "keys":
// the fp32 bit patterns as unsigned integers, whose order equals the order of the scores
// (for non-negative finite floats). Every selection ranks elements by (key, index) and
// prunes the lowest: among equal scores the LOWER index is pruned first. That is the order
// of a stable ascending sort, which is what locuslab/wanda's torch.sort(stable=True) uses,
// so masks match the reference bit for bit, ties included.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/core/dtype.h"

namespace sparseforge {
namespace prune {

// The key of a non-negative score; -0.0 and +0.0 share key 0.
inline uint32_t score_key(float nonnegative_score) {
  return f32_bits(nonnegative_score) & 0x7FFFFFFFu;
}
constexpr uint32_t kNonFiniteKey = 0x7F800000u;  // keys >= this are Inf or NaN

// The threshold found by a selection of the k lowest of n keys: the k-th lowest key `t`,
// how many keys are < t, and how many equal t. The pruned set is every key < t plus the
// first (k - less) keys equal to t in index order.
struct Threshold {
  uint32_t t = 0;
  size_t less = 0;
  size_t equal = 0;
};

// Finds the k-th lowest of n keys (1 <= k <= n) in expected O(n) with vectorised
// partition passes (sampled bands narrowed until small, then nth_element). Reusable
// scratch avoids allocation per row.
class KeySelector {
 public:
  Threshold select(const uint32_t* keys, size_t n, size_t k);

  // keep[i] = 0 for the k lowest keys by (key, index), 1 otherwise. 0 <= k <= n.
  void prune_lowest(const uint32_t* keys, size_t n, size_t k, uint8_t* keep);

 private:
  std::vector<uint32_t> a_, b_;
};

// Writes the keep-mask for a threshold over one row: keep = key > t, except that the
// first `eq_prune` keys equal to t (in index order) are pruned and later ones kept.
void keep_from_threshold(const uint32_t* keys, size_t n, uint32_t t, size_t eq_prune,
                         size_t eq_in_row, uint8_t* keep);

// N:M by keys: in every group of m consecutive keys keep the n highest by (key, index)
// (so the m - n lowest are pruned, lower index first among equals). cols % m == 0.
void nm_keep_from_keys(const uint32_t* keys, size_t cols, int n, int m, uint8_t* keep);

}  // namespace prune
}  // namespace sparseforge
