// Unstructured sparse weights: a bitmap with packed values, and CSR.
//
// Both hold a weight W of shape (rows, cols) = (out_features, in_features), row-major,
// storing its values as fp32, fp16 or bf16 (compute is fp32). A weight is "stored" when
// its bit is set (bitmap) or its column is listed (CSR); every other weight is absent
// and contributes nothing to a product (see kernels/unstructured.h).
//
// Layout: BitmapMatrix (docs/formats.md, "Bitmap"):
//   bitmap       uint8, rows x row_bytes with row_bytes = ceil(cols / 8). Bit (c % 8) of
//                byte (c / 8) of row r, least significant bit first, is set iff W(r, c) is
//                stored. The bits past `cols` in a row's last byte are zero.
//   values       the stored values, row-major order (row by row, columns ascending),
//                nnz elements of `dtype`, then kValuePadBytes zero bytes so vector loads
//                may read past the last value (never counted as data).
//   row_offsets  int64, rows + 1: row r's values are values[row_offsets[r], row_offsets[r+1])
//                with row_offsets[0] = 0 and row_offsets[r+1] - row_offsets[r] = popcount of
//                row r's bitmap (redundant, kept so rows are independent: a check on load).
//   Bytes: rows * ceil(cols/8) + nnz * b + 8 (rows + 1) (+ 64 padding).
//
// Layout: CSRMatrix (docs/formats.md, "CSR"):
//   indptr       int64, rows + 1, indptr[0] = 0, non-decreasing, indptr[rows] = nnz.
//   indices      int32, nnz: row r's columns in indices[indptr[r], indptr[r+1]), strictly
//                increasing (sorted, no duplicates), each in [0, cols); then kIndexPad zeros.
//   values       nnz elements of `dtype` in the order of `indices`, then kValuePadBytes zeros.
//   Bytes: 8 (rows + 1) + nnz * (4 + b) (+ padding).
//
// Invariants checked by validate() (and on every construction): the sizes above, rows >= 1,
// cols >= 1 (CSR: cols <= 2^31 - 1), and finite values. NaN or Inf cannot be stored:
// from_dense() and from components raise InvalidArgument, like the rest of sparseforge.
// from_dense() stores W != 0, so -0.0 (== 0) is not stored; with a mask it stores exactly
// the masked-in positions, zeros included.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "sparseforge/core/dtype.h"
#include "sparseforge/core/memory.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace format {

constexpr size_t kValuePadBytes = 64;  // zero bytes after the last value (16 fp32 / 32 x 16-bit)
constexpr size_t kIndexPad = 16;       // zero int32 after the last CSR column index

// std::allocator with 64-byte alignment: a cache line, and any vector register.
template <class T>
struct Aligned64Allocator {
  using value_type = T;
  Aligned64Allocator() = default;
  template <class U>
  Aligned64Allocator(const Aligned64Allocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T) - 64) throw std::bad_alloc();
    return static_cast<T*>(aligned_bytes_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) { aligned_bytes_free(p); }
  template <class U>
  bool operator==(const Aligned64Allocator<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const Aligned64Allocator<U>&) const {
    return false;
  }
};
template <class T>
using AlignedVector = std::vector<T, Aligned64Allocator<T>>;

struct BitmapMatrix {
  size_t rows = 0;
  size_t cols = 0;
  DType dtype = DType::kF32;
  std::vector<uint8_t> bitmap;       // rows x bitmap_row_bytes(cols)
  AlignedVector<uint8_t> values;     // nnz * dtype_size(dtype) bytes + kValuePadBytes zeros
  std::vector<int64_t> row_offsets;  // rows + 1
};

struct CSRMatrix {
  size_t rows = 0;
  size_t cols = 0;
  DType dtype = DType::kF32;
  std::vector<int64_t> indptr;     // rows + 1
  AlignedVector<int32_t> indices;  // nnz + kIndexPad
  AlignedVector<uint8_t> values;   // nnz * dtype_size(dtype) bytes + kValuePadBytes zeros
};

size_t bitmap_row_bytes(size_t cols);  // ceil(cols / 8)

// Stored weights (padding excluded).
size_t nnz(const BitmapMatrix& A);
size_t nnz(const CSRMatrix& A);

// The memory the representation really holds: every array's bytes, padding included.
size_t nbytes(const BitmapMatrix& A);
size_t nbytes(const CSRMatrix& A);

// Pointer to the first value (typed by A.dtype).
inline const void* values_data(const BitmapMatrix& A) { return A.values.data(); }
inline const void* values_data(const CSRMatrix& A) { return A.values.data(); }

// Throws InvalidArgument naming the broken component (bitmap, values, row_offsets, indptr,
// indices) if an invariant above does not hold. O(rows * cols / 8 + nnz).
void validate(const BitmapMatrix& A);
void validate(const CSRMatrix& A);

// Compress W (any stride): stores W(r, c) != 0. W must be finite where stored (NaN is
// nonzero, so from_dense(W) needs W finite). Cost: two passes over W, parallel over rows.
BitmapMatrix bitmap_from_dense(const AnyConstMatrix& W, int num_threads = 0);
CSRMatrix csr_from_dense(const AnyConstMatrix& W, int num_threads = 0);
// Stores exactly the positions with keep(r, c) != 0 (kept zeros included); keep has W's
// shape. W must be finite at those positions; the rest of W is not read for its value.
BitmapMatrix bitmap_from_dense(const AnyConstMatrix& W, const ConstMaskView& keep,
                               int num_threads = 0);
CSRMatrix csr_from_dense(const AnyConstMatrix& W, const ConstMaskView& keep, int num_threads = 0);

// From raw components (copied, padded, then validated). `values` holds `nnz` elements of
// `dtype`. An empty `row_offsets` is derived from the bitmap (popcount per row).
BitmapMatrix bitmap_from_components(size_t rows, size_t cols, DType dtype,
                                    std::vector<uint8_t> bitmap, const void* values, size_t nnz,
                                    std::vector<int64_t> row_offsets);
CSRMatrix csr_from_components(size_t rows, size_t cols, DType dtype, std::vector<int64_t> indptr,
                              const int32_t* indices, size_t nnz_indices, const void* values,
                              size_t nnz_values);

// out (rows x cols, out.dtype == A.dtype, any stride) = the dense matrix: stored values,
// +0.0 elsewhere. Every element of out is written.
void to_dense(const BitmapMatrix& A, const AnyMatrix& out, int num_threads = 0);
void to_dense(const CSRMatrix& A, const AnyMatrix& out, int num_threads = 0);

}  // namespace format
}  // namespace sparseforge
