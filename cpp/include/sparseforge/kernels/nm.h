// Kernels on N:M compressed weights (format/nm.h), float32 inputs and outputs, float32
// accumulation. Run-time SIMD dispatch; results identical for any thread count (work is
// split by blocks of 8 output rows, each output summed in a fixed order).
//
// Bytes moved per GEMV: rows * cols * (n/m) * (b + exec_bits/8) plus x and y, against
// rows * cols * b for dense: 2:4 reads 0.531x the bytes of dense fp32 (ideal 1.88x) and
// 0.5625x of dense bf16 (ideal 1.78x).
#pragma once

#include <cstddef>

#include "sparseforge/core/view.h"
#include "sparseforge/format/nm.h"

namespace sparseforge {
namespace kernels {

// y (A.rows) = A x, x (A.cols).
void nm_gemv(const format::NMMatrix& A, const float* x, float* y, int num_threads);

// Y (batch, A.rows) = X A^T for X (batch, A.cols): the linear layer. Batches up to 8 run the
// lane-interleaved kernel on up to 4 rows of X at a time (values decoded once per 4); larger
// batches decompress 64-row tiles of A to float32 and multiply them with the dense GEMM.
void nm_gemm(const format::NMMatrix& A, ConstMatrixView<float> X, MatrixView<float> Y,
             int num_threads);

// Batch rows per call of the direct kernel; nm_gemm runs larger batches in chunks of this
// (or decompresses tiles, on SIMD levels without a batch kernel for the pattern).
constexpr size_t kNMDirectMaxBatch = 8;

}  // namespace kernels
}  // namespace sparseforge
