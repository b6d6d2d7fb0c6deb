// Activation-sparse kernels: input-column skip (TEAL), explicit active inputs (Deja Vu style
// predicted inputs), batched column skip over the union of masks, and the sparse SwiGLU FFN
// block (TEAL, CATS gate-first, dense baseline).
//
// Column skip works on the TRANSPOSED weight Wt = W^T, shape (in_features, out_features),
// row-major (fp32 / fp16 / bf16): input channel k owns the contiguous row Wt[k, :], so a
// zero x_k skips out_features * bytes contiguous bytes. Bytes read: (active / in_features)
// of dense. Storing W^T instead of W is a layout choice made once per matrix (no second
// copy is kept: sparseforge.kernels.SparseSwiGLU builds only the layouts its mode needs).
//
// Threshold rule (TEAL's x.abs().gt(t) * x): input k is active when |x_k| > threshold, and
// also when x_k is NaN so a NaN propagates as it would in the dense product. threshold must
// be >= 0 and not NaN (+inf deactivates every finite input). Inactive inputs contribute
// nothing; active ones are accumulated in increasing k with FMA from +0:
//   y[c] = sum_{k active, increasing} Wt[k, c] * x_k.
// The threshold test and compaction are an O(in_features) prologue inside the call.
//
// Threads: each thread owns a contiguous slice of the outputs (in units of 16 columns) and
// streams the active rows over it, 8 rows per pass into an L1-resident tile of y, with no
// atomics and no reduction: bitwise identical results for any num_threads.
#pragma once

#include <cstddef>
#include <string>

#include "sparseforge/core/view.h"
#include "sparseforge/kernels/dense.h"

namespace sparseforge {
namespace kernels {

// What a sparse-input call did.
struct SparseInputInfo {
  size_t active = 0;            // input channels read (the union over the batch)
  size_t in_features = 0;       // rows of Wt
  bool dense_fallback = false;  // gemm_sparse_input ran the dense path
};

// y (out_features,) = Wt^T (x masked by |x| > threshold). x: (in_features,).
SparseInputInfo gemv_sparse_input(const AnyConstMatrix& Wt, const float* x, float threshold,
                                  float* y, int num_threads);

// y = Wt^T (x restricted to `active`): inputs outside the set contribute nothing, whatever
// their value (Deja Vu style: the set comes from a predictor).
SparseInputInfo gemv_active_input(const AnyConstMatrix& Wt, const float* x, const IndexSet& active,
                                  float* y, int num_threads);

// Batched column skip: Y[b] = Wt^T (X[b] masked by its own |X[b, k]| > threshold), for X
// (batch, in_features) and Y (batch, out_features). Rows of Wt are read once for the whole
// batch: the union of the per-token masks, density 1 - s^B for independent masks. When the
// predicted gain in_features / |union| is below min_gain (>= 1; +inf = always dense) the
// dense path runs instead: every row (a streaming kernel for batch <= 8, the tiled Eigen
// GEMM above). Both paths give the same values up to the sign of zero outputs and last-bit
// differences of the GEMM path; the choice depends only on the data, never on num_threads.
SparseInputInfo gemm_sparse_input(const AnyConstMatrix& Wt, ConstMatrixView<float> X,
                                  float threshold, MatrixView<float> Y, double min_gain,
                                  int num_threads);

// ---------------------------------------------------------------------------------------
// Sparse SwiGLU FFN: y = W_down (silu(W_gate x) * (W_up x)), silu(g) = g / (1 + exp(-g)).
// in = model width, hidden = intermediate size, out = W_down's out_features (= in in a
// transformer). Each mode reads the weights in the layout it needs:
//
//   mode    gate             up               down             sparsity
//   dense   (hidden, in)     (hidden, in)     (out, hidden)    none: three dense GEMVs
//   teal    (in, hidden)^T   (in, hidden)^T   (hidden, out)^T  x by |x| > t_x (gate, up);
//                                                              h by |h| > t_h (down)
//   cats    (hidden, in)     (hidden, in)     (hidden, out)^T  a = silu(gate x) dense;
//                                                              |a| > t_h picks up rows
//                                                              (row skip) and down rows
//
// (^T: the transposed layout, rows = input channels.) TEAL: x' = x masked, g = gate x',
// u = up x', h = silu(g) * u, y = down (h masked by |h| > t_h). CATS: a = silu(gate x),
// h_i = a_i * (up x)_i where |a_i| > t_h (else 0), y = down h. Ideal speedups vs dense by
// bytes at sparsity s: teal 1/(1-s), cats 3/(1 + 2(1-s)).
enum class SwiGLUMode { kDense, kTeal, kCats };
SwiGLUMode parse_swiglu_mode(const std::string& name);  // "dense" | "teal" | "cats"
const char* swiglu_mode_name(SwiGLUMode mode);

struct SwiGLUWeights {
  SwiGLUMode mode = SwiGLUMode::kDense;
  AnyConstMatrix gate, up, down;  // layouts as in the table above
};

struct SwiGLUShape {
  size_t in = 0, hidden = 0, out = 0;
};

// Checks the three matrices against the mode's layouts (InvalidArgument naming gate, up or
// down) and returns the FFN's sizes.
SwiGLUShape swiglu_shape(const SwiGLUWeights& w);

struct SwiGLUInfo {
  size_t x_active = 0;  // inputs read by gate/up (teal: |x| > t_x; else all of in)
  size_t in = 0;
  size_t h_active = 0;  // hidden units read by down (teal/cats: thresholded; dense: all)
  size_t hidden = 0;
};

// x (in,) -> y (out,). t_x applies to teal only and t_h to teal and cats; the others must
// be 0 (InvalidArgument otherwise, so a threshold is never silently ignored). Scratch:
// 3 * hidden + in floats per call.
SwiGLUInfo swiglu(const SwiGLUWeights& w, const float* x, float t_x, float t_h, float* y,
                  int num_threads);

}  // namespace kernels
}  // namespace sparseforge
