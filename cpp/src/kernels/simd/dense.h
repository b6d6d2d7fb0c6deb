// The dense kernel family's table (internal to the core): dense GEMV/GEMM rows, output-row
// skip, input-column skip (AXPY over rows of a transposed weight) and a read probe.
//
// dense.inc is compiled once per SIMD level (dense_{scalar,avx2,avx512}.cc, flags from
// cpp/CMakeLists.txt); dense_table() returns the active level's table. Entries are
// single-threaded: the drivers (kernels/dense.cc, kernels/activation.cc) split work into
// ranges of output rows or output columns and call one entry per range.
//
// Every entry is indexed by storage dtype: entry[static_cast<int>(DType)] (fp32, fp16, bf16);
// weights are passed as `const void*` with a leading dimension in elements. Activations and
// outputs are fp32; accumulation is fp32.
//
// Arithmetic contract (what makes results independent of the thread count):
//  * dot products: one vector accumulator per (row, token), FMA over whole SIMD chunks of
//    K in order, a fixed horizontal-sum tree, then the K % lanes tail added in order. The
//    value of out[row] does not depend on which other rows share the call or the block.
//  * AXPY (column skip): Y[b, c] = 0, then for each listed row a in list order
//    Y[b, c] = fma(Wt[idx[a], c], coef[a * B + b], Y[b, c]). The value of an element does
//    not depend on the column range, the tile or the row grouping.
// Levels differ in the last bits (FMA vs separate multiply/add, vector width): compare
// levels with a tolerance, thread counts bitwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparseforge {
namespace kernels {

struct DenseTable {
  const char* name;
  // y[i] = dot(W row r_i, x) over K columns, i in [0, n); r_i = rows[i] (rows != nullptr)
  // or i; the result goes to y[r_i]. W row r starts at W + r * ldw elements.
  void (*gemv[3])(const void* W, size_t ldw, const uint32_t* rows, size_t n, size_t K,
                  const float* x, float* y);
  // Y[b * ldy + i] = dot(W row i, X row b) for i in [0, n), b in [0, B): the direct
  // register-blocked GEMM for small batches (each W row is read from memory once).
  void (*gemm[3])(const void* W, size_t ldw, size_t n, size_t K, const float* X, size_t ldx,
                  size_t B, float* Y, size_t ldy);
  // Column skip over a transposed weight Wt (rows = input channels). For c in [c0, c1):
  // Y[b * ldy + c] = sum over a in [0, n) of coef[a * B + b] * Wt[r_a, c], r_a = idx[a]
  // (idx != nullptr) or a, accumulated in list order with FMA starting from +0.
  void (*axpy[3])(const void* Wt, size_t ldw, const uint32_t* idx, size_t n, const float* coef,
                  size_t B, float* Y, size_t ldy, size_t c0, size_t c1);
  // Sum of p[0:n) (the read-bandwidth probe: streams the buffer with the widest loads).
  float (*sum_f32)(const float* p, size_t n);
};

const DenseTable& dense_table();               // the active SIMD level's table
const DenseTable& dense_table_for(int level);  // a given level (tests, benchmarks)

}  // namespace kernels
}  // namespace sparseforge
