// The per-SIMD-level table of unstructured (bitmap, CSR) kernels (internal to the core).
//
// unstructured.inc is compiled once per level (unstructured_<level>.cc, flags from
// cpp/CMakeLists.txt' sf_simd_family); unstructured_table() returns the active level's
// table. The scalar level is the reference; tests run every level against float64.
// This header defines only plain structs and declarations: the per-level objects include
// it and must define no shared (weak) symbol.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/config.h"

namespace sparseforge {
namespace format {
struct BitmapMatrix;
}
namespace kernels {
namespace unstructured_simd {

// A bitmap matrix as the kernels see it (format/unstructured.h has the layout). `values`
// has >= 64 bytes of zero padding after the last value.
struct BitmapArgs {
  size_t cols;
  size_t row_bytes;            // ceil(cols / 8)
  const uint8_t* bitmap;       // rows x row_bytes
  const void* values;          // packed values, typed by the entry's dtype
  const int64_t* row_offsets;  // rows + 1
};

// A CSR matrix; `indices` and `values` have zero padding (>= 16 elements) after nnz.
struct CsrArgs {
  size_t cols;
  const int64_t* indptr;
  const int32_t* indices;
  const void* values;
};

// Entries indexed by dtype: [0] fp32, [1] fp16, [2] bf16 (the values of DType).
struct UnstructuredTable {
  const char* name;
  // Y[b * ldy + r] = sum over stored (r, c) of A(r, c) X[b * ldx + c], for r in [r0, r1)
  // and b in [0, batch). GEMV is batch 1. Each element's arithmetic is the same whatever
  // r0, r1 and batch are (blocking never changes an element's summation).
  void (*bitmap_gemm[3])(const BitmapArgs& A, size_t r0, size_t r1, const float* X, size_t ldx,
                         size_t batch, float* Y, size_t ldy);
  // out[(r - r0) * ldo + c] = A(r, c) as fp32 (0 where not stored), r in [r0, r1).
  void (*bitmap_decompress[3])(const BitmapArgs& A, size_t r0, size_t r1, float* out, size_t ldo);
  // y[r] = sum over stored (r, c) of A(r, c) x[c], r in [r0, r1).
  void (*csr_gemv[3])(const CsrArgs& A, size_t r0, size_t r1, const float* x, float* y);
  // Y[b * ldy + r] = sum over stored (r, c) of A(r, c) XT[c * ldxt + b], b < batch, with XT
  // (cols x ldxt) the transposed input, ldxt a multiple of 16 and XT zero past batch.
  void (*csr_gemm_t[3])(const CsrArgs& A, size_t r0, size_t r1, const float* XT, size_t ldxt,
                        size_t batch, float* Y, size_t ldy);
  // Column skip over bitmap rows: y[c] = sum over a < n (in order) of coef[a] * A(idx[a], c)
  // over stored entries, for c in [c0, c1); c0 a multiple of 16. y[c0:c1] is overwritten.
  void (*bitmap_axpy[3])(const BitmapArgs& A, const uint32_t* idx, size_t n, const float* coef,
                         float* y, size_t c0, size_t c1);
};

extern const UnstructuredTable kTableScalar;
#if SF_HAVE_X86_KERNELS
extern const UnstructuredTable kTableAVX2;
extern const UnstructuredTable kTableAVX512;
#endif

const UnstructuredTable& unstructured_table();               // the active level's table
const UnstructuredTable& unstructured_table_for(int level);  // tests, benchmarks

}  // namespace unstructured_simd

// The two bitmap GEMM strategies; bitmap_gemm() checks the arguments and picks one by batch
// size. Declared here so tests and measurements can run both on the same input.
namespace detail {
// Bitmap GEMM with at least this many inputs decompresses row tiles to fp32 and runs the
// dense GEMM (linalg gemm_f32); below it the direct kernel, whose cost grows with the batch
// (it expands every value once per 4 inputs). Measured, 4096x4096 bf16 at 50 %, 1 thread,
// AVX-512: direct/tiles = 0.83 at batch 16, 1.17 at 32, 1.35 at 64 (docs/kernels.md).
constexpr size_t kBitmapDenseGemmBatch = 32;
// Per block of rows, every panel of inputs through the table's direct kernel.
void bitmap_gemm_direct(const format::BitmapMatrix& A, const float* X, size_t ldx, size_t batch,
                        float* Y, size_t ldy, int num_threads);
// Row tiles decompressed to fp32, then linalg gemm_f32 (X transposed once). Unlike the
// direct kernel, a NaN/Inf in X meets the tile's zeros here (0 * Inf = NaN).
void bitmap_gemm_dense_tiles(const format::BitmapMatrix& A, const float* X, size_t ldx,
                             size_t batch, float* Y, size_t ldy, int num_threads);
}  // namespace detail

}  // namespace kernels
}  // namespace sparseforge
