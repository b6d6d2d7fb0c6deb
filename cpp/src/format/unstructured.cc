#include "sparseforge/format/unstructured.h"

#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace format {
namespace {

// Raw-bit view of a storage dtype: "stored by from_dense" is (bits & abs) != 0 (so both
// zeros are absent) and "non-finite" is (bits & exp) == exp.
struct BitSpec {
  uint32_t abs;
  uint32_t exp;
};
BitSpec bit_spec(DType t) {
  switch (t) {
    case DType::kF16:
      return {0x7FFFu, 0x7C00u};
    case DType::kBF16:
      return {0x7FFFu, 0x7F80u};
    case DType::kF32:
    default:
      return {0x7FFFFFFFu, 0x7F800000u};
  }
}

uint32_t bits_at(const void* base, size_t elem, size_t i) {
  const unsigned char* p = static_cast<const unsigned char*>(base) + i * elem;
  if (elem == 4) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    return u;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

[[noreturn]] void throw_arg(const std::string& msg, const char* function) {
  throw InvalidArgument(detail::with_context(msg, function));
}

void check_dtype_value(DType t) {
  SF_CHECK_DTYPE(t == DType::kF32 || t == DType::kF16 || t == DType::kBF16,
                 "dtype: expected float32, float16 or bfloat16, got code %d", static_cast<int>(t));
}

// The dense matrix to compress, with an optional keep-mask (nullptr: store W != 0).
struct Source {
  const AnyConstMatrix& W;
  const ConstMaskView* keep;
  const char* function;
};

// Per row: whether (r, c) is stored, checking stored values are finite. Calls
// on_stored(c, bits) in column order; returns the count.
template <class F>
size_t scan_row(const Source& s, size_t r, F&& on_stored) {
  const BitSpec spec = bit_spec(s.W.dtype);
  const size_t elem = dtype_size(s.W.dtype);
  const void* row = static_cast<const unsigned char*>(s.W.data) + r * s.W.stride * elem;
  const uint8_t* keep = s.keep ? s.keep->row(r) : nullptr;
  size_t count = 0;
  for (size_t c = 0; c < s.W.cols; ++c) {
    const uint32_t u = bits_at(row, elem, c);
    const bool stored = keep ? keep[c] != 0 : (u & spec.abs) != 0;
    if (!stored) continue;
    if ((u & spec.exp) == spec.exp) {
      throw_arg(
          detail::format_message("W: expected finite values where stored, got %s at (%zu, %zu)",
                                 (u & spec.abs) == spec.exp ? "Inf" : "NaN", r, c),
          s.function);
    }
    on_stored(c, u);
    ++count;
  }
  return count;
}

void check_source(const Source& s) {
  SF_CHECK_ARG(s.W.rows >= 1 && s.W.cols >= 1, "W: expected a non-empty matrix, got (%zu, %zu)",
               s.W.rows, s.W.cols);
  check_dtype_value(s.W.dtype);
  SF_CHECK_ARG(s.W.stride >= s.W.cols || s.W.rows <= 1, "W: stride %zu < cols %zu", s.W.stride,
               s.W.cols);
  if (s.keep) {
    SF_CHECK_ARG(s.keep->rows == s.W.rows && s.keep->cols == s.W.cols,
                 "mask: expected shape (%zu, %zu), got (%zu, %zu)", s.W.rows, s.W.cols,
                 s.keep->rows, s.keep->cols);
  }
}

void store_bits(unsigned char* dst, size_t elem, uint32_t u) {
  if (elem == 4) {
    std::memcpy(dst, &u, 4);
  } else {
    const uint16_t h = static_cast<uint16_t>(u);
    std::memcpy(dst, &h, 2);
  }
}

// Exclusive prefix sum of counts[1..rows] into offsets (offsets[0] = 0).
void prefix_sum(std::vector<int64_t>& offsets) {
  for (size_t r = 1; r < offsets.size(); ++r) offsets[r] += offsets[r - 1];
}

BitmapMatrix bitmap_compress(const Source& s, int num_threads) {
  check_source(s);
  BitmapMatrix A;
  A.rows = s.W.rows;
  A.cols = s.W.cols;
  A.dtype = s.W.dtype;
  const size_t rb = bitmap_row_bytes(A.cols), elem = dtype_size(A.dtype);
  A.bitmap.assign(A.rows * rb, 0);
  A.row_offsets.assign(A.rows + 1, 0);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      uint8_t* bm = A.bitmap.data() + r * rb;
      const size_t n = scan_row(s, r, [&](size_t c, uint32_t) {
        bm[c / 8] = static_cast<uint8_t>(bm[c / 8] | (1u << (c % 8)));
      });
      A.row_offsets[r + 1] = static_cast<int64_t>(n);
    }
  });
  prefix_sum(A.row_offsets);
  A.values.assign(static_cast<size_t>(A.row_offsets.back()) * elem + kValuePadBytes, 0);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      unsigned char* dst = A.values.data() + static_cast<size_t>(A.row_offsets[r]) * elem;
      scan_row(s, r, [&](size_t, uint32_t u) {
        store_bits(dst, elem, u);
        dst += elem;
      });
    }
  });
  return A;
}

CSRMatrix csr_compress(const Source& s, int num_threads) {
  check_source(s);
  SF_CHECK_ARG(s.W.cols <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "W: cols=%zu exceeds CSR's int32 column indices", s.W.cols);
  CSRMatrix A;
  A.rows = s.W.rows;
  A.cols = s.W.cols;
  A.dtype = s.W.dtype;
  const size_t elem = dtype_size(A.dtype);
  A.indptr.assign(A.rows + 1, 0);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      A.indptr[r + 1] = static_cast<int64_t>(scan_row(s, r, [](size_t, uint32_t) {}));
    }
  });
  prefix_sum(A.indptr);
  const size_t nz = static_cast<size_t>(A.indptr.back());
  A.indices.assign(nz + kIndexPad, 0);
  A.values.assign(nz * elem + kValuePadBytes, 0);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      size_t p = static_cast<size_t>(A.indptr[r]);
      scan_row(s, r, [&](size_t c, uint32_t u) {
        A.indices[p] = static_cast<int32_t>(c);
        store_bits(A.values.data() + p * elem, elem, u);
        ++p;
      });
    }
  });
  return A;
}

void check_shape(size_t rows, size_t cols) {
  SF_CHECK_ARG(rows >= 1 && cols >= 1, "shape: expected rows >= 1 and cols >= 1, got (%zu, %zu)",
               rows, cols);
}

// Values: exactly nnz elements then zero padding, all finite.
void check_values(const AlignedVector<uint8_t>& values, DType dtype, size_t nz) {
  const size_t elem = dtype_size(dtype);
  SF_CHECK_ARG(nz <= (std::numeric_limits<size_t>::max() - kValuePadBytes) / elem,
               "values: %zu values overflow the size type", nz);
  SF_CHECK_ARG(values.size() >= kValuePadBytes && (values.size() - kValuePadBytes) % elem == 0,
               "values: expected %zu values of %s (%zu bytes) + %zu bytes of padding, got a "
               "buffer of %zu bytes",
               nz, dtype_name(dtype), nz * elem, kValuePadBytes, values.size());
  SF_CHECK_ARG(values.size() == nz * elem + kValuePadBytes,
               "values: expected %zu values (the stored count), got %zu", nz,
               (values.size() - kValuePadBytes) / elem);
  const BitSpec spec = bit_spec(dtype);
  for (size_t i = 0; i < nz; ++i) {
    const uint32_t u = bits_at(values.data(), elem, i);
    SF_CHECK_ARG((u & spec.exp) != spec.exp, "values: expected finite values, got %s at index %zu",
                 (u & spec.abs) == spec.exp ? "Inf" : "NaN", i);
  }
  for (size_t i = nz * elem; i < values.size(); ++i) {
    SF_CHECK_ARG(values[i] == 0, "values: padding byte %zu after the last value is not zero",
                 i - nz * elem);
  }
}

AlignedVector<uint8_t> padded_values(const void* values, size_t nz, DType dtype) {
  const size_t elem = dtype_size(dtype);
  SF_CHECK_ARG(nz <= (std::numeric_limits<size_t>::max() - kValuePadBytes) / elem,
               "values: %zu values overflow the size type", nz);
  SF_CHECK_ARG(nz == 0 || values != nullptr, "values: null pointer for %zu values", nz);
  AlignedVector<uint8_t> v(nz * elem + kValuePadBytes, 0);
  if (nz) std::memcpy(v.data(), values, nz * elem);
  return v;
}

}  // namespace

size_t bitmap_row_bytes(size_t cols) { return cols / 8 + (cols % 8 != 0); }

size_t nnz(const BitmapMatrix& A) {
  return A.row_offsets.empty() ? 0 : static_cast<size_t>(A.row_offsets.back());
}
size_t nnz(const CSRMatrix& A) {
  return A.indptr.empty() ? 0 : static_cast<size_t>(A.indptr.back());
}

size_t nbytes(const BitmapMatrix& A) {
  return A.bitmap.size() + A.values.size() + A.row_offsets.size() * sizeof(int64_t);
}
size_t nbytes(const CSRMatrix& A) {
  return A.indptr.size() * sizeof(int64_t) + A.indices.size() * sizeof(int32_t) + A.values.size();
}

void validate(const BitmapMatrix& A) {
  check_shape(A.rows, A.cols);
  check_dtype_value(A.dtype);
  const size_t rb = bitmap_row_bytes(A.cols);
  SF_CHECK_ARG(A.rows <= std::numeric_limits<size_t>::max() / rb,
               "shape: (%zu, %zu) overflows the size type", A.rows, A.cols);
  SF_CHECK_ARG(A.bitmap.size() == A.rows * rb,
               "bitmap: expected %zu bytes (rows=%zu x ceil(cols/8)=%zu), got %zu", A.rows * rb,
               A.rows, rb, A.bitmap.size());
  SF_CHECK_ARG(A.row_offsets.size() == A.rows + 1,
               "row_offsets: expected %zu entries (rows + 1), got %zu", A.rows + 1,
               A.row_offsets.size());
  SF_CHECK_ARG(A.row_offsets[0] == 0, "row_offsets: expected row_offsets[0] == 0, got %lld",
               static_cast<long long>(A.row_offsets[0]));
  const unsigned pad_bits = A.cols % 8 ? (0xFFu << (A.cols % 8)) & 0xFFu : 0u;
  for (size_t r = 0; r < A.rows; ++r) {
    const uint8_t* bm = A.bitmap.data() + r * rb;
    int64_t count = 0;
    for (size_t j = 0; j < rb; ++j) count += __builtin_popcount(bm[j]);
    SF_CHECK_ARG((bm[rb - 1] & pad_bits) == 0,
                 "bitmap: row %zu has bits set past cols=%zu (last byte 0x%02x)", r, A.cols,
                 static_cast<unsigned>(bm[rb - 1]));
    // row_offsets[r] is already checked (a prefix sum from 0), so this cannot overflow.
    SF_CHECK_ARG(A.row_offsets[r + 1] == A.row_offsets[r] + count,
                 "row_offsets: row %zu spans %lld values but its bitmap has %lld set bits "
                 "(row_offsets[%zu]=%lld, row_offsets[%zu]=%lld)",
                 r, static_cast<long long>(A.row_offsets[r + 1] - A.row_offsets[r]),
                 static_cast<long long>(count), r, static_cast<long long>(A.row_offsets[r]), r + 1,
                 static_cast<long long>(A.row_offsets[r + 1]));
  }
  check_values(A.values, A.dtype, static_cast<size_t>(A.row_offsets.back()));
}

void validate(const CSRMatrix& A) {
  check_shape(A.rows, A.cols);
  check_dtype_value(A.dtype);
  SF_CHECK_ARG(A.cols <= static_cast<size_t>(std::numeric_limits<int32_t>::max()),
               "shape: cols=%zu exceeds CSR's int32 column indices", A.cols);
  SF_CHECK_ARG(A.indptr.size() == A.rows + 1, "indptr: expected %zu entries (rows + 1), got %zu",
               A.rows + 1, A.indptr.size());
  SF_CHECK_ARG(A.indptr[0] == 0, "indptr: expected indptr[0] == 0, got %lld",
               static_cast<long long>(A.indptr[0]));
  for (size_t r = 0; r < A.rows; ++r) {
    SF_CHECK_ARG(A.indptr[r + 1] >= A.indptr[r],
                 "indptr: expected non-decreasing, got indptr[%zu]=%lld > indptr[%zu]=%lld", r,
                 static_cast<long long>(A.indptr[r]), r + 1,
                 static_cast<long long>(A.indptr[r + 1]));
  }
  const size_t nz = static_cast<size_t>(A.indptr.back());
  SF_CHECK_ARG(nz <= A.rows * A.cols, "indptr: indptr[rows]=%zu exceeds rows * cols = %zu", nz,
               A.rows * A.cols);
  SF_CHECK_ARG(A.indices.size() == nz + kIndexPad,
               "indices: expected %zu column indices (indptr[rows]) + %zu padding, got %zu", nz,
               kIndexPad, A.indices.size());
  for (size_t r = 0; r < A.rows; ++r) {
    const size_t p0 = static_cast<size_t>(A.indptr[r]), p1 = static_cast<size_t>(A.indptr[r + 1]);
    for (size_t p = p0; p < p1; ++p) {
      const int32_t c = A.indices[p];
      SF_CHECK_ARG(c >= 0 && static_cast<size_t>(c) < A.cols,
                   "indices: column %d at position %zu (row %zu) is outside [0, cols=%zu)", c, p, r,
                   A.cols);
      SF_CHECK_ARG(p == p0 || c > A.indices[p - 1],
                   "indices: row %zu is not sorted and unique (column %d after %d at position %zu)",
                   r, c, p == p0 ? -1 : A.indices[p - 1], p);
    }
  }
  for (size_t i = nz; i < A.indices.size(); ++i) {
    SF_CHECK_ARG(A.indices[i] == 0, "indices: padding entry %zu after the last index is not zero",
                 i - nz);
  }
  check_values(A.values, A.dtype, nz);
}

BitmapMatrix bitmap_from_dense(const AnyConstMatrix& W, int num_threads) {
  return bitmap_compress(Source{W, nullptr, "bitmap_from_dense"}, num_threads);
}
BitmapMatrix bitmap_from_dense(const AnyConstMatrix& W, const ConstMaskView& keep,
                               int num_threads) {
  return bitmap_compress(Source{W, &keep, "bitmap_from_dense"}, num_threads);
}
CSRMatrix csr_from_dense(const AnyConstMatrix& W, int num_threads) {
  return csr_compress(Source{W, nullptr, "csr_from_dense"}, num_threads);
}
CSRMatrix csr_from_dense(const AnyConstMatrix& W, const ConstMaskView& keep, int num_threads) {
  return csr_compress(Source{W, &keep, "csr_from_dense"}, num_threads);
}

BitmapMatrix bitmap_from_components(size_t rows, size_t cols, DType dtype,
                                    std::vector<uint8_t> bitmap, const void* values, size_t nz,
                                    std::vector<int64_t> row_offsets) {
  check_shape(rows, cols);
  check_dtype_value(dtype);
  BitmapMatrix A;
  A.rows = rows;
  A.cols = cols;
  A.dtype = dtype;
  A.bitmap = std::move(bitmap);
  const size_t rb = bitmap_row_bytes(cols);
  if (row_offsets.empty()) {  // derive from the bitmap (its size is checked first)
    SF_CHECK_ARG(rows <= std::numeric_limits<size_t>::max() / rb && A.bitmap.size() == rows * rb,
                 "bitmap: expected %zu bytes (rows=%zu x ceil(cols/8)=%zu), got %zu", rows * rb,
                 rows, rb, A.bitmap.size());
    row_offsets.assign(rows + 1, 0);
    for (size_t r = 0; r < rows; ++r) {
      int64_t count = 0;
      for (size_t j = 0; j < rb; ++j) count += __builtin_popcount(A.bitmap[r * rb + j]);
      row_offsets[r + 1] = row_offsets[r] + count;
    }
  }
  A.row_offsets = std::move(row_offsets);
  A.values = padded_values(values, nz, dtype);
  validate(A);
  return A;
}

CSRMatrix csr_from_components(size_t rows, size_t cols, DType dtype, std::vector<int64_t> indptr,
                              const int32_t* indices, size_t nnz_indices, const void* values,
                              size_t nnz_values) {
  check_shape(rows, cols);
  check_dtype_value(dtype);
  SF_CHECK_ARG(indptr.size() == rows + 1, "indptr: expected %zu entries (rows + 1), got %zu",
               rows + 1, indptr.size());
  SF_CHECK_ARG(indptr.back() >= 0 && static_cast<size_t>(indptr.back()) == nnz_indices,
               "indices: expected indptr[rows]=%lld column indices, got %zu",
               static_cast<long long>(indptr.back()), nnz_indices);
  SF_CHECK_ARG(nnz_values == nnz_indices, "values: expected %zu values (one per index), got %zu",
               nnz_indices, nnz_values);
  SF_CHECK_ARG(nnz_indices == 0 || indices != nullptr, "indices: null pointer for %zu indices",
               nnz_indices);
  CSRMatrix A;
  A.rows = rows;
  A.cols = cols;
  A.dtype = dtype;
  A.indptr = std::move(indptr);
  A.indices.assign(nnz_indices + kIndexPad, 0);
  if (nnz_indices) std::memcpy(A.indices.data(), indices, nnz_indices * sizeof(int32_t));
  A.values = padded_values(values, nnz_values, dtype);
  validate(A);
  return A;
}

namespace {

void check_out(const AnyMatrix& out, size_t rows, size_t cols, DType dtype) {
  SF_CHECK_DTYPE(out.dtype == dtype, "out: expected dtype %s, got %s", dtype_name(dtype),
                 dtype_name(out.dtype));
  SF_CHECK_ARG(out.rows == rows && out.cols == cols,
               "out: expected shape (%zu, %zu), got (%zu, %zu)", rows, cols, out.rows, out.cols);
  SF_CHECK_ARG(out.stride >= cols || rows <= 1, "out: stride %zu < cols %zu", out.stride, cols);
}

}  // namespace

void to_dense(const BitmapMatrix& A, const AnyMatrix& out, int num_threads) {
  check_out(out, A.rows, A.cols, A.dtype);
  const size_t rb = bitmap_row_bytes(A.cols), elem = dtype_size(A.dtype);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      unsigned char* o = static_cast<unsigned char*>(out.data) + r * out.stride * elem;
      std::memset(o, 0, A.cols * elem);
      const unsigned char* v = A.values.data() + static_cast<size_t>(A.row_offsets[r]) * elem;
      const uint8_t* bm = A.bitmap.data() + r * rb;
      for (size_t j = 0; j < rb; ++j) {
        for (unsigned bits = bm[j]; bits != 0; bits &= bits - 1) {
          const size_t c = 8 * j + static_cast<size_t>(__builtin_ctz(bits));
          std::memcpy(o + c * elem, v, elem);
          v += elem;
        }
      }
    }
  });
}

void to_dense(const CSRMatrix& A, const AnyMatrix& out, int num_threads) {
  check_out(out, A.rows, A.cols, A.dtype);
  const size_t elem = dtype_size(A.dtype);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      unsigned char* o = static_cast<unsigned char*>(out.data) + r * out.stride * elem;
      std::memset(o, 0, A.cols * elem);
      for (size_t p = static_cast<size_t>(A.indptr[r]); p < static_cast<size_t>(A.indptr[r + 1]);
           ++p) {
        std::memcpy(o + static_cast<size_t>(A.indices[p]) * elem, A.values.data() + p * elem, elem);
      }
    }
  });
}

}  // namespace format
}  // namespace sparseforge
