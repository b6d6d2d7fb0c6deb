// Dense linear algebra building blocks, dispatched per SIMD level (internal to the core).
//
// linalg.inc is compiled once per SIMD level like simd/kernels.inc. It uses Eigen, renamed
// per level (`#define Eigen sf_eigen_avx512` before the include) so the template
// instantiations of different levels have different symbols: without that, the linker
// would keep one copy of each Eigen function for the whole library, possibly the AVX-512
// one on a CPU without AVX-512. Eigen's own threading is off (EIGEN_DONT_PARALLELIZE):
// its blocking depends on the thread count, which would make results depend on it. Every
// entry is single-threaded; the drivers (linalg/dense.h) split work into fixed-size tasks,
// so results are identical for any thread count.
//
// Matrices are row-major with a leading dimension (elements between row starts).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparseforge {
namespace linalg {

struct LinalgTable {
  const char* name;
  // C = alpha * op(A) * B + beta * C, op(A) = A (m x k) or A^T (A stored k x m).
  void (*gemm_f32)(bool trans_a, size_t m, size_t n, size_t k, float alpha, const float* A,
                   size_t lda, const float* B, size_t ldb, float beta, float* C, size_t ldc);
  void (*gemm_f64)(bool trans_a, size_t m, size_t n, size_t k, double alpha, const double* A,
                   size_t lda, const double* B, size_t ldb, double beta, double* C, size_t ldc);
  // C (n x n, lower triangle only) = A^T A for A (k x n): a symmetric rank-k update that
  // computes one triangle (C's strict upper part is left alone).
  void (*syrk_lower_f32)(size_t n, size_t k, const float* A, size_t lda, float* C, size_t ldc);
  void (*syrk_lower_f64)(size_t n, size_t k, const double* A, size_t lda, double* C, size_t ldc);
  // C = alpha * A * B^T + beta * C with A (m x k), B (n x k): the trailing update of a
  // blocked Cholesky.
  void (*gemm_nt_f64)(size_t m, size_t n, size_t k, double alpha, const double* A, size_t lda,
                      const double* B, size_t ldb, double beta, double* C, size_t ldc);
  // In-place lower Cholesky of the n x n block A (lower triangle read and written).
  // Returns -1 on success, else the index of the first non-positive (or non-finite) pivot.
  long (*potrf_lower_f64)(size_t n, double* A, size_t lda);
  // B = B * L^{-T} for lower-triangular L (n x n) and B (m x n): a Cholesky panel.
  void (*trsm_right_lower_t_f64)(size_t m, size_t n, const double* L, size_t ldl, double* B,
                                 size_t ldb);
  // In-place inverse of the lower-triangular n x n block L (lower triangle only).
  void (*trtri_lower_f64)(size_t n, double* L, size_t ldl);
  // The same four in float32 (SparseGPT's reference-precision factorization).
  void (*gemm_nt_f32)(size_t m, size_t n, size_t k, float alpha, const float* A, size_t lda,
                      const float* B, size_t ldb, float beta, float* C, size_t ldc);
  long (*potrf_lower_f32)(size_t n, float* A, size_t lda);
  void (*trsm_right_lower_t_f32)(size_t m, size_t n, const float* L, size_t ldl, float* B,
                                 size_t ldb);
  void (*trtri_lower_f32)(size_t n, float* L, size_t ldl);
  // Solves A x = b in place for SPD A (n x n, lower triangle used; overwritten by its
  // Cholesky factor). Returns false if A is not positive definite.
  bool (*posv_f64)(size_t n, double* A, size_t lda, double* b);

  // One OBS column sweep over a block of B columns for `rows` rows (SparseGPT's inner
  // loop). W1 (rows x B, ld ldw) holds the block's current weights; U1 (B x B, ld ldu) the
  // block of the upper Cholesky factor of H^-1; keep (rows x B, ld ldk) the mask, read,
  // or with nm_m > 0 chosen here at every group's first column from the updated weights
  // (keep the nm_n highest w^2/U_jj^2 of each group of nm_m; ties: lower index pruned).
  // For each column i: q = keep ? w : 0, e = (w - q) / U_ii, W1[r, i+1:] -= e U1[i, i+1:],
  // W1[r, i] = q, err[r, i] = e, row_loss[r] += (w - q)^2 / U_ii^2 / 2.
  void (*obs_sweep_f32)(size_t rows, size_t B, float* W1, size_t ldw, const float* U1, size_t ldu,
                        uint8_t* keep, size_t ldk, int nm_n, int nm_m, float* err, size_t lde,
                        double* row_loss);
  void (*obs_sweep_f64)(size_t rows, size_t B, double* W1, size_t ldw, const double* U1, size_t ldu,
                        uint8_t* keep, size_t ldk, int nm_n, int nm_m, double* err, size_t lde,
                        double* row_loss);
};

const LinalgTable& linalg();  // the active SIMD level's table
const LinalgTable& linalg_for(int level);

}  // namespace linalg
}  // namespace sparseforge
