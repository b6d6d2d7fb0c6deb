// Dense GEMV / GEMM, output-row skip (Deja Vu / CATS), and a read-bandwidth probe.
//
// Shapes and dtypes:
//   W   (out_features, in_features)  row-major with a row stride; fp32, fp16 or bf16
//   x   (in_features,)               fp32, contiguous
//   y   (out_features,)              fp32, contiguous, caller-owned
//   X   (batch, in_features)         fp32, row-major with a row stride
//   Y   (batch, out_features)        fp32, row-major with a row stride, caller-owned
// y = W x and Y = X W^T (the linear-layer convention: row b of Y is W times row b of X).
// Compute is fp32: fp16/bf16 weights are converted in registers (bf16: zero-extend and
// shift; fp16: vcvtph2ps), products are accumulated in fp32 (FMA on the AVX2/AVX-512
// levels). Outputs must not overlap the inputs.
//
// Cost: one pass over W (out * in * bytes per weight), memory-bound at small batch: the GEMV
// streams 8 rows of W at a time (software prefetch 1 KiB ahead in each row) with one vector
// accumulator per row. GEMM uses a direct register-blocked kernel (4 rows x 4 tokens on
// AVX-512, 4 x 2 on AVX2; each row of W read from memory once) up to kGemmDirectMaxBatch
// tokens, and the per-level Eigen GEMM on fixed tiles of 128 rows of W (fp16/bf16 tiles
// converted to fp32 scratch first) above it (at batch 16 both measured the same; at 64 and
// 256 Eigen was 1.4x and 2.3x faster).
//
// Threads: work is split by output rows (rows of W); every output element is computed by
// one call whose arithmetic does not depend on the split, so results are bitwise identical
// for any num_threads (<= 0: the default). Calls too small to pay for a parallel region
// (< 64 KiB of weights per thread) use fewer threads. SIMD levels differ in the last bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparseforge/core/view.h"

namespace sparseforge {
namespace kernels {

// Batches up to this size use the direct kernel; larger ones the tiled Eigen GEMM.
constexpr size_t kGemmDirectMaxBatch = 8;

// y = W x.
void gemv(const AnyConstMatrix& W, const float* x, float* y, int num_threads);

// Y = X W^T. Batch 1 is gemv (bitwise).
void gemm(const AnyConstMatrix& W, ConstMatrixView<float> X, MatrixView<float> Y, int num_threads);

// A set of indices in [0, n): a mask of n bytes (nonzero = selected, numpy bool) or a list
// of int32 / int64 indices. Lists are sets: order and duplicates do not matter, and an empty
// list selects nothing. An index outside [0, n) or a mask of another length is an error.
struct IndexSet {
  enum class Kind : uint8_t { kMask, kInt32, kInt64 };
  Kind kind = Kind::kMask;
  const void* data = nullptr;
  size_t size = 0;  // mask: its length; list: the number of indices

  static IndexSet mask(const uint8_t* m, size_t n) { return {Kind::kMask, m, n}; }
  static IndexSet list(const int32_t* idx, size_t count) { return {Kind::kInt32, idx, count}; }
  static IndexSet list(const int64_t* idx, size_t count) { return {Kind::kInt64, idx, count}; }
};

// The selected indices of `set`, sorted and unique. Throws InvalidArgument naming `name`.
// n must be < 2^32. Cost O(n + count).
std::vector<uint32_t> resolve_indices(const IndexSet& set, size_t n, const char* name);

// Output-row skip: y[r] = W[r, :] x for the selected rows r, y[r] = 0 for the others, so y
// has full length and feeds a column-skip projection directly. Reads only the selected
// rows of W: (selected / out_features) of the dense bytes. Returns how many rows were
// computed. The selected rows are split evenly between threads.
size_t gemv_rows(const AnyConstMatrix& W, const float* x, const IndexSet& rows, float* y,
                 int num_threads);

// Sum of buf[0:n) read with the widest loads of the active SIMD level, split into fixed
// chunks combined in order (deterministic): the benchmarks' same-run read-bandwidth probe.
float read_probe(const float* buf, size_t n, int num_threads);

}  // namespace kernels
}  // namespace sparseforge
