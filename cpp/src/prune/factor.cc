#include "prune/factor.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/linalg/dense.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace prune {
namespace detail {

std::vector<uint8_t> dead_columns(const HessianView& H) {
  std::vector<uint8_t> dead(H.n);
  for (size_t j = 0; j < H.n; ++j) dead[j] = H.at(j, j) == 0.0;
  return dead;
}

namespace {
double mean_diag(const HessianView& H, const std::vector<uint8_t>& dead) {
  double s = 0.0;
  for (size_t j = 0; j < H.n; ++j) s += dead[j] ? 1.0 : H.at(j, j);
  return s / static_cast<double>(H.n);
}
}  // namespace

std::vector<double> damped_hessian(const HessianView& H, const std::vector<uint8_t>& dead,
                                   double damp, int num_threads) {
  const size_t n = H.n;
  std::vector<double> A(n * n);
  parallel_for(n, num_threads, [&](size_t i0, size_t i1) {
    for (size_t i = i0; i < i1; ++i) {
      for (size_t j = 0; j < n; ++j) {
        const double v = (i == j && dead[i]) ? 1.0 : H.at(std::max(i, j), std::min(i, j));
        A[i * n + j] = v + (i == j ? damp : 0.0);
      }
    }
  });
  return A;
}

// U = J L^-1 J where J H J = L L^T: H = R R^T with R = J L J upper, so H^-1 = R^-T R^-1 and
// U = R^-1 is the upper Cholesky factor of H^-1 (unique with a positive diagonal). One
// Cholesky and one triangular inverse: ~(2/3) n^3 flops, against (4/3) n^3 for the
// reference's cholesky, cholesky_inverse, cholesky.
template <class T>
InverseFactorT<T> factor_inverse(const HessianView& H, const std::vector<uint8_t>& dead,
                                 double percdamp, double max_percdamp, int num_threads) {
  const size_t n = H.n;
  const double md = mean_diag(H, dead);
  InverseFactorT<T> f;
  f.U.resize(n * n);
  long bad_pivot = -1;
  for (double pd = percdamp;; pd = pd > 0.0 ? pd * 10.0 : 1e-4) {
    ++f.attempts;
    const double damp = pd * md;
    T* P = f.U.data();  // P = J H J, lower triangle: P[a][b] = H[n-1-a][n-1-b]
    parallel_for(n, num_threads, [&](size_t a0, size_t a1) {
      for (size_t a = a0; a < a1; ++a) {
        const size_t i = n - 1 - a;
        for (size_t b = 0; b <= a; ++b) {
          const size_t j = n - 1 - b;  // j >= i: H's lower triangle at (j, i)
          P[a * n + b] = static_cast<T>((i == j && dead[i]) ? 1.0 : H.at(j, i));
        }
        // The damped diagonal is rounded once to T (as the reference's fp32 H + damp).
        const size_t i_diag = n - 1 - a;
        P[a * n + a] = static_cast<T>(((dead[i_diag]) ? 1.0 : H.at(i_diag, i_diag)) + damp);
      }
    });
    const long bad = linalg::cholesky_lower(P, n, n, num_threads);
    if (bad < 0) {
      linalg::invert_lower(P, n, n, num_threads);
      // The blocked routines leave scratch above the diagonal of diagonal tiles.
      parallel_for(n, num_threads, [&](size_t a0, size_t a1) {
        for (size_t a = a0; a < a1; ++a) std::fill(P + a * n + a + 1, P + (a + 1) * n, T(0));
      });
      // Reversing the whole buffer maps (a, b) to (n-1-a, n-1-b): the lower L^-1 becomes
      // the upper U, and the zeroed strict upper part becomes the strict lower part.
      std::reverse(f.U.begin(), f.U.end());
      f.percdamp = pd;
      f.damp = damp;
      return f;
    }
    bad_pivot = static_cast<long>(n) - 1 - bad;  // back in H's column order
    const double next = pd > 0.0 ? pd * 10.0 : 1e-4;
    if (next > max_percdamp * (1.0 + 1e-12)) {
      SF_THROW(NumericalError,
               "H: not positive definite even with damping percdamp=%g (%d attempts from "
               "percdamp=%g, max_percdamp=%g); the Cholesky factorization failed at column "
               "%ld. Check the calibration data or raise max_percdamp",
               pd, f.attempts, percdamp, max_percdamp, bad_pivot);
    }
  }
}

template InverseFactorT<double> factor_inverse<double>(const HessianView&,
                                                       const std::vector<uint8_t>&, double, double,
                                                       int);
template InverseFactorT<float> factor_inverse<float>(const HessianView&,
                                                     const std::vector<uint8_t>&, double, double,
                                                     int);

}  // namespace detail
}  // namespace prune
}  // namespace sparseforge
