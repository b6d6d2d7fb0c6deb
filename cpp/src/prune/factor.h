// Internal: the damped Hessian inverse shared by SparseGPT, OBS and reconstruction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/prune/sparsegpt.h"

namespace sparseforge {
namespace prune {
namespace detail {

// dead[j] = 1 where H_jj == 0: inputs that never fired. SparseGPT sets H_jj = 1 there and
// zeroes W[:, j].
std::vector<uint8_t> dead_columns(const HessianView& H);

// U, the upper Cholesky factor of (H' + damp I)^-1 = U^T U in T (n x n row-major,
// the upper triangle valid, the strict lower triangle zero), where H' is H with dead
// diagonal entries set to 1 and damp = percdamp * mean(diag H'). A failed factorization
// retries with 10x the damping while it stays <= max_percdamp, then throws NumericalError
// with the damping tried and the failing column.
// T = float computes in float32 (the reference's precision: half the time and memory).
template <class T>
struct InverseFactorT {
  std::vector<T> U;
  double percdamp = 0.0;
  double damp = 0.0;
  int attempts = 0;
};
using InverseFactor = InverseFactorT<double>;
template <class T>
InverseFactorT<T> factor_inverse(const HessianView& H, const std::vector<uint8_t>& dead,
                                 double percdamp, double max_percdamp, int num_threads);

// H' + damp I (dead entries fixed), full symmetric float64 n x n.
std::vector<double> damped_hessian(const HessianView& H, const std::vector<uint8_t>& dead,
                                   double damp, int num_threads);

}  // namespace detail
}  // namespace prune
}  // namespace sparseforge
