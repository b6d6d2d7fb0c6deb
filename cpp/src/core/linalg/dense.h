// Parallel, deterministic dense factorizations built from the per-level LinalgTable.
//
// Work is split into fixed 256 x 256 tiles whatever the thread count, and each tile's
// arithmetic is the same whichever thread runs it, so results are bitwise identical for
// any num_threads. Matrices are row-major, n x n, leading dimension lda; only the lower
// triangle is read and written. Cost: n^3/3 flops each. float64 and float32.
#pragma once

#include <cstddef>

namespace sparseforge {
namespace linalg {

constexpr size_t kTile = 256;

// In-place lower Cholesky A = L L^T. Returns -1 on success, else the index of the first
// pivot that was not positive and finite (A is then partly overwritten).
long cholesky_lower(double* A, size_t n, size_t lda, int num_threads);
long cholesky_lower(float* A, size_t n, size_t lda, int num_threads);

// In-place inverse of a lower-triangular matrix.
void invert_lower(double* L, size_t n, size_t lda, int num_threads);
void invert_lower(float* L, size_t n, size_t lda, int num_threads);

}  // namespace linalg
}  // namespace sparseforge
