// GEMV and GEMM with unstructured sparse weights (format/unstructured.h).
//
//   y = A x        A (rows x cols) bitmap or CSR, x (cols) and y (rows) float32
//   Y = X A^T      X (batch x cols) float32, row-major: the linear-layer convention of
//                  sf.kernels.gemm; Y (batch x rows) float32
//
// Only stored weights take part: y[r] = sum over stored (r, c) of A(r, c) x[c]. Where x is
// finite this equals to_dense(A) x; a NaN or Inf in x reaches only the rows that store
// its column (a pruned weight is absent, not a zero multiplying Inf).
//
// Compute is fp32 (fp16/bf16 values widen in registers). Work is split by output rows;
// every output element is computed by one call whose arithmetic does not depend on the
// split, so results are bitwise identical for any num_threads. SIMD levels may differ in
// the last bits (FMA, summation order). Every element of y / Y is written.
//
// Cost, bitmap GEMV: reads (1 - s) rows cols b + rows cols / 8 bytes (s = 1 - density);
// CSR GEMV: (1 - s) rows cols (b + 4) + 8 rows bytes plus a gather of x per value.
// GEMM reads the weights once per call; small batches run a direct kernel, larger ones
// decompress row tiles to fp32 and run a dense GEMM (docs/kernels.md has the crossover).
#pragma once

#include <cstddef>

#include "sparseforge/core/view.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/kernels/activation.h"

namespace sparseforge {
namespace kernels {

// x: A.cols floats, y: A.rows floats (caller-owned).
void bitmap_gemv(const format::BitmapMatrix& A, const float* x, float* y, int num_threads = 0);
void csr_gemv(const format::CSRMatrix& A, const float* x, float* y, int num_threads = 0);

// X: (batch, A.cols), Y: (batch, A.rows); any row strides; batch >= 1.
void bitmap_gemm(const format::BitmapMatrix& A, const ConstMatrixView<float>& X,
                 const MatrixView<float>& Y, int num_threads = 0);
void csr_gemm(const format::CSRMatrix& A, const ConstMatrixView<float>& X,
              const MatrixView<float>& Y, int num_threads = 0);

// Column skip (TEAL) on a bitmap-compressed transposed weight: Wt is W^T, (in_features,
// out_features), stored as a BitmapMatrix (a 2:4-along-in_features W is such a Wt at 50 %,
// as is any pruned W). y (out_features) = sum over active k (|x[k]| > threshold, or NaN) of
// x[k] * Wt[k, :] over the stored entries only, active rows in increasing k; reads only the
// active rows' bits and values. Each thread owns a slice of y (16-column blocks), so results
// are bitwise identical for any thread count. threshold: >= 0 (not NaN).
SparseInputInfo bitmap_gemv_sparse_input(const format::BitmapMatrix& Wt, const float* x,
                                         float threshold, float* y, int num_threads = 0);

}  // namespace kernels
}  // namespace sparseforge
