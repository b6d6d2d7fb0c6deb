// Masks and patterns shared by all pruning methods.
//
// A keep-mask has W's shape, one byte per weight: 1 = kept, 0 = pruned (MaskView).
// N:M means n KEPT of every m consecutive weights along in_features (the columns of a
// row-major W of shape (out_features, in_features)), NVIDIA's 2:4 convention.
// Sparsity is the fraction of zeros, in [0, 1).
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "sparseforge/core/view.h"

namespace sparseforge {
namespace prune {

constexpr int kMaxM = 32;

struct NMPattern {
  int n = 2;  // kept per group
  int m = 4;  // group size along in_features
};

// "2:4" -> {2, 4}; throws InvalidArgument unless 1 <= n < m <= 32.
NMPattern parse_nm(const std::string& text);
// Throws InvalidArgument unless 1 <= n < m <= 32 and cols % m == 0.
void check_nm(NMPattern p, size_t cols);

enum class Scope { kRow, kLayer };
Scope parse_scope(const std::string& text);  // "row" | "layer"

// Throws InvalidArgument unless 0 <= sparsity < 1 (NaN rejected).
void check_sparsity(double sparsity);
// How many of `count` weights a sparsity prunes: floor(sparsity * count), the same double
// product and truncation as Python's int(count * sparsity) in the reference repositories.
size_t prune_count(double sparsity, size_t count);

// Throws InvalidArgument naming `arg` if any element is NaN or Inf.
void check_finite(const AnyConstMatrix& W, const char* arg, int num_threads);

// W[i] = 0 where keep[i] == 0 (+0.0, in place). Shapes must match.
void apply_mask(const AnyMatrix& W, ConstMaskView keep, int num_threads);

// out = W where keep, +0.0 elsewhere, in one pass (out has W's shape and dtype and may not
// overlap it). Returns the number of zeros in out (either sign).
size_t masked_copy(const AnyConstMatrix& W, ConstMaskView keep, const AnyMatrix& out,
                   int num_threads);

// Number of elements equal to zero (either sign; NaN is not zero).
size_t count_zeros(const AnyConstMatrix& W, int num_threads);

// Groups of m consecutive weights along a row holding more than n non-zeros. W must be
// finite (NaN/Inf raise InvalidArgument); apply_mask and count_zeros accept any values.
struct NMViolations {
  size_t groups = 0;     // rows * cols / m
  size_t violating = 0;  // groups with more than n non-zeros
  // (row, first column of the group) of the first violating groups in row-major order,
  // at most max_report of them
  std::vector<std::pair<size_t, size_t>> first;
};
NMViolations nm_violations(const AnyConstMatrix& W, NMPattern p, size_t max_report,
                           int num_threads);

}  // namespace prune
}  // namespace sparseforge
