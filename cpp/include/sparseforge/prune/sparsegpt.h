// SparseGPT (Frantar & Alistarh, ICML 2023): one-shot pruning with OBS weight updates,
// following IST-DASLab/sparsegpt sparsegpt.py (fasterprune) step by step:
//   1. dead inputs (H_dd == 0): H_dd = 1 and W[:, d] = 0;
//   2. damping: H += percdamp * mean(diag H) * I;
//   3. U = the upper Cholesky factor of H^-1 (H^-1 = U^T U), computed in float64 by default
//      (float32, the reference's precision, on request) as U = J L^-1 J with
//      J H J = L L^T (one Cholesky and one triangular inverse);
//   4. blocks of block_size columns: the mask is chosen at the block's start from the
//      weights updated by earlier blocks (unstructured: w^2 / U_ii^2 over the whole
//      block, all rows jointly; N:M: at each group's first column, per row, from the
//      weights updated by the block's earlier columns), then each column is pruned with the
//      OBS update of the block's later columns, and the error is pushed to the columns after
//      the block in one GEMM (the lazy update).
// Shapes: W (rows, cols) fp32/fp16/bf16; H (cols, cols) symmetric, float64 or float32; the
// output has W's dtype. The sweep runs in fp32 (the reference's precision) or float64.
//
// Differences from the reference, all documented: at sparsity 0 nothing is pruned (the
// reference's `<= sorted[0]` prunes each block's minimum); N:M ties go to the lower index
// (torch.topk leaves them unspecified); a failed factorization retries with 10x the damping
// up to max_percdamp and then throws NumericalError (the reference raises at once; never an
// identity fallback as in llm-compressor).
//
// Rows are independent given U: the sweep runs over fixed chunks of rows in parallel, and
// the unstructured threshold (the only coupling) is an exact selection per block, so
// results are identical for any thread count. Cost: ~(2/3) cols^3 flops for U,
// rows * cols^2 for the lazy updates. Extra memory: a cols^2 matrix in the factorization's
// precision, U in the
// sweep's precision, and one fp32/float64 copy of W when W is not already fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/view.h"
#include "sparseforge/prune/mask.h"

namespace sparseforge {
namespace prune {

enum class Precision { kFloat32, kFloat64 };
// kReference: per block, prune every score <= the (floor(rows*B*s)+1)-th smallest, as
// `sort(...)[int(numel * s)]` with `<=` does (one more than the count, plus ties).
// kExact: exactly floor(rows*B*s) per block, ties by (row, column) order.
enum class BlockCount { kReference, kExact };

struct SparseGPTOptions {
  double sparsity = 0.5;    // unstructured; ignored when pattern.m > 0
  NMPattern pattern{0, 0};  // n kept of every m along cols; m == 0 means unstructured
  size_t block_size = 128;
  double percdamp = 0.01;
  double max_percdamp = 1.0;                  // damping grows 10x per failed attempt up to this
  Precision precision = Precision::kFloat32;  // the sweep
  // U's factorization: float64 (default; robust to ill-conditioned H) or float32, the
  // reference's precision at half the time (and the float64 n^2 scratch becomes float32).
  Precision factor_precision = Precision::kFloat64;
  BlockCount block_count = BlockCount::kReference;
  bool mask_given = false;  // use `keep` as given (reconstruction); no selection
};

struct SparseGPTResult {
  double percdamp_used = 0.0;  // the damping fraction that factorized
  double damp = 0.0;           // percdamp_used * mean(diag H)
  int attempts = 0;            // factorizations tried
  size_t dead_columns = 0;
  std::vector<double> row_loss;  // sum over the row's pruned weights of (w - q)^2 / U_ii^2 / 2
  double loss = 0.0;             // sum of row_loss: the OBS estimate of the error increase
};

// The Hessian as given: float32 or float64, (n, n) with a row stride. With `lower_only`
// only the lower triangle (j <= i) is stored and read (at(i, j) with j > i reads (j, i));
// every value is divided by `divisor` when read. A LayerStats is read in place this way
// (hessian_view): its raw X^T X accumulator divided by the token count gives exactly the
// values LayerStats::hessian() would copy out, without the n x n float64 copy.
struct HessianView {
  const void* data = nullptr;
  bool f64 = true;
  size_t n = 0;
  size_t stride = 0;
  bool lower_only = false;
  double divisor = 1.0;
  double at(size_t i, size_t j) const {
    if (lower_only && j > i) std::swap(i, j);
    const double v = f64 ? static_cast<const double*>(data)[i * stride + j]
                         : static_cast<double>(static_cast<const float*>(data)[i * stride + j]);
    return v / divisor;
  }
};

// A view of `stats`' Hessian X^T X / tokens, read in place (no copy). Throws InvalidArgument
// if the statistics hold no Hessian or no tokens yet. `stats` must outlive the view and not
// be updated while it is in use.
HessianView hessian_view(const calib::LayerStats& stats);

// U, the upper Cholesky factor of the damped (H' + damp I)^-1 for one Hessian, ready for any
// number of SparseGPT sweeps: the factorisation depends on H, the damping and the precisions
// only, so every linear that reads the same input (q/k/v, gate/up) shares one (IST-DASLab's
// reference zeroes the dead columns of each W separately, which the sweep does here too).
// U is kept in the sweep's precision: n^2 floats (float32 sweep) or doubles.
struct HessianFactor {
  size_t n = 0;
  Precision precision = Precision::kFloat32;         // the sweep's (U's storage)
  Precision factor_precision = Precision::kFloat64;  // arithmetic of the factorisation
  double percdamp = 0.01;                            // as asked
  double max_percdamp = 1.0;
  double percdamp_used = 0.0;  // the damping fraction that factorised
  double damp = 0.0;           // percdamp_used * mean(diag H')
  int attempts = 0;
  std::vector<uint8_t> dead;  // dead[j] = 1 where H_jj == 0
  std::vector<float> U32;     // precision == kFloat32
  std::vector<double> U64;    // precision == kFloat64
};

// Validates H (check_hessian against its own size) and factorises it as sparsegpt() does,
// with the same damping escalation and NumericalError. Cost ~(2/3) n^3 flops.
HessianFactor factor_hessian(const HessianView& H, double percdamp, double max_percdamp,
                             Precision factor_precision, Precision precision, int num_threads);

// Relative layer error ||(W - W_hat) X||^2 / ||W X||^2 = tr(D H D^T) / tr(W H W^T),
// D = W - W_hat, in float64 from H read in place (lower triangle only): no copy of H, about
// 2 rows cols^2 flops, identical for any thread count. Throws InvalidArgument if the
// shapes disagree or W H W^T is not positive.
double reconstruction_error(const AnyConstMatrix& W, const AnyConstMatrix& W_hat,
                            const HessianView& H, int num_threads);

// Validates H against W (square, cols x cols, finite, symmetric within 1e-5 of the largest
// diagonal entry, non-negative diagonal, not all zero); throws InvalidArgument.
void check_hessian(const HessianView& H, size_t cols);

// Prunes W into `out` (W's shape and dtype, caller-owned, may not alias W) and writes the
// keep-mask (read instead when options.mask_given).
SparseGPTResult sparsegpt(const AnyConstMatrix& W, const HessianView& H,
                          const SparseGPTOptions& options, const AnyMatrix& out, MaskView keep,
                          int num_threads);

// The same with a factor from factor_hessian(): options.percdamp, max_percdamp, precision
// and factor_precision are the factor's (the options' values are ignored). Bitwise equal to
// sparsegpt(W, H, ...) with the options the factor was made with.
SparseGPTResult sparsegpt(const AnyConstMatrix& W, const HessianFactor& factor,
                          const SparseGPTOptions& options, const AnyMatrix& out, MaskView keep,
                          int num_threads);

}  // namespace prune
}  // namespace sparseforge
