// Helpers shared by the dense and activation-sparse drivers (dense.cc, activation.cc).
// Internal to the core; not included by the per-level kernel files.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/view.h"

namespace sparseforge {
namespace kernels {
namespace detail {

// Threads for a call touching `bytes` of weights: num_threads resolved (<= 0: the default),
// capped so every thread gets at least 64 KiB (a parallel region costs microseconds).
int plan_threads(int num_threads, size_t bytes);

// A weight argument: non-null, non-empty, stride >= cols, both sizes < 2^31.
void check_weight(const AnyConstMatrix& W, const char* name);

// threshold >= 0 and not NaN.
void check_threshold(float t, const char* name);

// Y[b, c] for c in [0, Wt.cols) = sum over a of coef[a * B + b] * Wt[r_a, c] (r_a = idx[a],
// or a when idx is null), columns split between threads in units of 16.
void axpy_columns(const AnyConstMatrix& Wt, const uint32_t* idx, size_t n, const float* coef,
                  size_t B, float* Y, size_t ldy, int num_threads);

// Y = Xm Wt for the transposed weight Wt (in, out) and a dense fp32 Xm (B, in): every row
// of Wt (the dense path of the batched column skip).
void gemm_transposed(const AnyConstMatrix& Wt, ConstMatrixView<float> Xm, MatrixView<float> Y,
                     int num_threads);

}  // namespace detail
}  // namespace kernels
}  // namespace sparseforge
