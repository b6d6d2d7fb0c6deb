// MoE dispatch and combine: gather each expert's tokens into one contiguous buffer (CSR by
// expert, megablocks' dropless layout on the CPU), weighted scatter-add of the experts'
// outputs back to tokens, and a SwiGLU MoE FFN over stacked expert weights.
//
// Shapes (T tokens, k slots, E experts, D model dim, H expert hidden dim, N kept rows):
//   ids, locations (T, k) int32        from route() / assign_capacity(); location -1 = dropped
//   offsets   (E + 1,)   int64         expert e owns buffer rows [offsets[e], offsets[e+1])
//   token_of  (N,)       int32         the token of buffer row r (-1: an empty padding row)
//   row_of    (T, k)     int32         the buffer row of (t, j), -1 when dropped
//   x (T, D), buffer (N, D), y (T, D)  float32
//
// Determinism: gather writes each row once; combine computes y[t] from t's slots in slot
// order j = 0 .. k-1 (one thread per token), so results are bitwise identical for any
// thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/dtype.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace moe {

// Builds the compact plan: row_of[t, j] = offsets[e] + locations[t, j] (e = ids[t, j]).
// locations must be what assign_capacity returns (each expert's kept locations are exactly
// 0 .. kept-1); anything else is InvalidArgument. offsets: E + 1 int64, token_of: N int32
// with N = offsets[E] (pass capacity T * k), row_of (T, k). Returns N. Cost O(T k + E).
size_t dispatch_plan(ConstMatrixView<int32_t> ids, ConstMatrixView<int32_t> locations,
                     size_t num_experts, int64_t* offsets, int32_t* token_of,
                     size_t token_of_capacity, MatrixView<int32_t> row_of);

// buffer[r] = x[token_of[r]] (zeros where token_of[r] == -1). token_of: buffer.rows entries
// in [-1, x.rows). Rows split across threads.
void gather_rows(ConstMatrixView<float> x, const int32_t* token_of, MatrixView<float> buffer,
                 int num_threads);

// y[t] = sum over j with row_of[t, j] >= 0 of weights[t, j] * buffer[row_of[t, j]], in slot
// order (y[t] = 0 when every slot is dropped). y is overwritten, or added to when
// `accumulate` (a residual or a shared expert already in y). Rows of y split across threads.
void combine_rows(ConstMatrixView<float> buffer, ConstMatrixView<int32_t> row_of,
                  ConstMatrixView<float> weights, MatrixView<float> y, bool accumulate,
                  int num_threads);

// Stacked SwiGLU experts, all C-contiguous with one dtype (fp32 / fp16 / bf16):
//   gate (E, H, D), up (E, H, D), down (E, D, H); expert e computes
//   f_e(x) = down_e (silu(gate_e x) * (up_e x)).
struct SwiGLUExperts {
  DType dtype = DType::kF32;
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
  size_t num_experts = 0, hidden = 0, dim = 0;
};

// The MoE FFN: y[t] = sum_j weights[t, j] f_{ids[t, j]}(x[t]) over kept slots. The plan
// (offsets, token_of, row_of) comes from dispatch_plan. Experts with no rows are skipped;
// each expert's rows go through sparseforge::kernels::gemm as one batch (experts run in
// parallel, each gemm single-threaded). row_norms: (N,) float32 ||f_e(x_t)||_2 per buffer
// row (expert pruning by output norm), or nullptr. Scratch: N * D + the largest expert's
// rows * (2 H + D) floats.
void moe_swiglu_ffn(ConstMatrixView<float> x, const int64_t* offsets, const int32_t* token_of,
                    ConstMatrixView<int32_t> row_of, ConstMatrixView<float> weights,
                    const SwiGLUExperts& experts, MatrixView<float> y, float* row_norms,
                    int num_threads);

}  // namespace moe
}  // namespace sparseforge
