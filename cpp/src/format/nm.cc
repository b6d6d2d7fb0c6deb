#include "sparseforge/format/nm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/memory.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/prune/magnitude.h"
#include "sparseforge/prune/mask.h"

namespace sparseforge {
namespace format {

int nm_code_bits(int m) {
  SF_CHECK_ARG(m >= 2 && m <= kNMMaxM, "m: %d is outside [2, %d]", m, kNMMaxM);
  return m == 2 ? 1 : m <= 4 ? 2 : m <= 8 ? 3 : 4;
}

size_t nm_code_row_bytes(size_t cols, int n, int m) {
  const size_t bits =
      cols / static_cast<size_t>(m) * static_cast<size_t>(n) * static_cast<size_t>(nm_code_bits(m));
  return (bits + 7) / 8;
}

void check_nm_format(int n, int m, size_t cols, const char* what) {
  SF_CHECK_ARG(m >= 2 && m <= kNMMaxM && n >= 1 && n < m,
               "%s: pattern %d:%d is not supported (need 1 <= n < m <= %d)", what, n, m, kNMMaxM);
  SF_CHECK_ARG(cols % static_cast<size_t>(m) == 0,
               "%s: in_features=%zu is not a multiple of m=%d (pattern %d:%d)", what, cols, m, n,
               m);
}

AlignedBytes::AlignedBytes(size_t size) : size_(size) {
  if (size == 0) return;
  void* p = aligned_bytes_alloc(size);
  std::memset(p, 0, size);
  data_.reset(static_cast<uint8_t*>(p));
}

void AlignedBytes::Free::operator()(uint8_t* p) const { aligned_bytes_free(p); }

size_t NMMatrix::canonical_nbytes() const {
  return rows * slots_per_row() * dtype_size(dtype) + rows * nm_code_row_bytes(cols, n, m);
}

namespace {

// Raw element bits: values move bit for bit (NaN payloads, -0.0 kept as stored).
template <class Raw>
bool is_zero(Raw v);
template <>
bool is_zero<uint32_t>(uint32_t v) {
  return (v & 0x7FFFFFFFu) == 0;
}
template <>
bool is_zero<uint16_t>(uint16_t v) {
  return (v & 0x7FFFu) == 0;
}

NMMatrix allocate(size_t rows, size_t cols, int n, int m, DType dtype) {
  NMMatrix A;
  A.rows = rows;
  A.cols = cols;
  A.n = n;
  A.m = m;
  A.dtype = dtype;
  A.values = AlignedBytes(A.row_blocks() * A.slots_per_row() * kNMRowBlock * dtype_size(dtype));
  A.codes = AlignedBytes(A.row_blocks() * A.words_per_row() * kNMRowBlock * sizeof(uint32_t));
  return A;
}

// Writes slot s's code for row r (lane r % 8) into the execution codes. Bits start zero.
inline void put_exec_code(const NMMatrix& A, uint32_t* codes, size_t r, size_t s, uint32_t code) {
  const size_t rb = r / kNMRowBlock, lane = r % kNMRowBlock;
  const size_t spw = A.slots_per_word();
  codes[(rb * A.words_per_row() + s / spw) * kNMRowBlock + lane] |=
      code << ((s % spw) * static_cast<size_t>(A.exec_bits()));
}

inline uint32_t get_exec_code(const NMMatrix& A, const uint32_t* codes, size_t r, size_t s) {
  const size_t rb = r / kNMRowBlock, lane = r % kNMRowBlock;
  const size_t spw = A.slots_per_word();
  const unsigned eb = static_cast<unsigned>(A.exec_bits());
  return (codes[(rb * A.words_per_row() + s / spw) * kNMRowBlock + lane] >> ((s % spw) * eb)) &
         ((1u << eb) - 1u);
}

inline size_t exec_value_index(const NMMatrix& A, size_t r, size_t s) {
  return ((r / kNMRowBlock) * A.slots_per_row() + s) * kNMRowBlock + r % kNMRowBlock;
}

// The n slots of one group from its non-zero flags (bit i = column i non-zero, at most n
// set): the unique encoding described in nm.h. Returns the indices in increasing order.
void fill_slots(uint32_t nonzero, int n, int m, int* idx) {
  if (n == 2 && m == 4 && __builtin_popcount(nonzero) < 2) {
    // PyTorch's encodings for groups with fewer than two non-zeros.
    static const int kTable[16][2] = {{2, 3}, {0, 2}, {1, 2}, {}, {2, 3}, {}, {}, {},
                                      {2, 3}, {},     {},     {}, {},     {}, {}, {}};
    idx[0] = kTable[nonzero][0];
    idx[1] = kTable[nonzero][1];
    return;
  }
  int k = 0, missing = n - __builtin_popcount(nonzero);
  for (int i = 0; i < m && k < n; ++i) {
    const bool nz = (nonzero >> i) & 1u;
    if (nz) {
      idx[k++] = i;
    } else if (missing > 0) {
      idx[k++] = i;
      --missing;
    }
  }
}

template <class Raw>
void from_dense_rows(const AnyConstMatrix& W, const ConstMaskView* keep, NMMatrix& A, size_t r0,
                     size_t r1) {
  const int n = A.n, m = A.m;
  const size_t G = A.groups_per_row();
  Raw* values = reinterpret_cast<Raw*>(A.values.data());
  uint32_t* codes = reinterpret_cast<uint32_t*>(A.codes.data());
  int idx[kNMMaxM];
  for (size_t r = r0; r < r1; ++r) {
    const Raw* w = static_cast<const Raw*>(W.data) + r * W.stride;
    const uint8_t* k = keep ? keep->row(r) : nullptr;
    for (size_t g = 0; g < G; ++g) {
      uint32_t nonzero = 0;
      for (int i = 0; i < m; ++i) {
        const size_t c = g * static_cast<size_t>(m) + static_cast<size_t>(i);
        if (!is_zero(w[c]) && (k == nullptr || k[c])) nonzero |= 1u << i;
      }
      const int count = __builtin_popcount(nonzero);
      SF_CHECK_ARG(count <= n,
                   "W: row %zu, columns %zu..%zu hold %d non-zeros, more than n=%d of every m=%d "
                   "(pass prune='magnitude' to keep the %d largest of each group)",
                   r, g * static_cast<size_t>(m), g * static_cast<size_t>(m) + m - 1, count, n, m,
                   n);
      fill_slots(nonzero, n, m, idx);
      for (int j = 0; j < n; ++j) {
        const size_t s = g * static_cast<size_t>(n) + static_cast<size_t>(j);
        const size_t c = g * static_cast<size_t>(m) + static_cast<size_t>(idx[j]);
        values[exec_value_index(A, r, s)] = ((nonzero >> idx[j]) & 1u) ? w[c] : Raw{0};
        put_exec_code(A, codes, r, s, static_cast<uint32_t>(idx[j]));
      }
    }
  }
}

// Padding rows of the last block: zero values, codes 0, 1, ..., n-1 in every group.
void fill_padding_codes(NMMatrix& A) {
  uint32_t* codes = reinterpret_cast<uint32_t*>(A.codes.data());
  for (size_t r = A.rows; r < A.row_blocks() * kNMRowBlock; ++r)
    for (size_t s = 0; s < A.slots_per_row(); ++s)
      put_exec_code(A, codes, r, s, static_cast<uint32_t>(s % static_cast<size_t>(A.n)));
}

// Row blocks per parallel task for the conversions.
constexpr size_t kRowsPerTask = 64;

}  // namespace

NMMatrix nm_from_dense(const AnyConstMatrix& W, int n, int m, NMFromDense mode, int num_threads) {
  SF_CHECK_ARG(!W.empty(), "W: empty matrix (%zu, %zu)", W.rows, W.cols);
  check_nm_format(n, m, W.cols, "W");
  prune::check_finite(W, "W", num_threads);
  std::vector<uint8_t> keep_storage;
  ConstMaskView keep;
  if (mode == NMFromDense::kMagnitude) {
    keep_storage.resize(W.rows * W.cols);
    MaskView kv(keep_storage.data(), W.rows, W.cols);
    prune::magnitude_nm_mask(W, prune::NMPattern{n, m}, kv, num_threads);
    keep = kv;
  }
  NMMatrix A = allocate(W.rows, W.cols, n, m, W.dtype);
  const ConstMaskView* kp = mode == NMFromDense::kMagnitude ? &keep : nullptr;
  // Tasks own whole row blocks, so no two threads write the same code word.
  parallel_for(
      A.row_blocks(), num_threads,
      [&](size_t b0, size_t b1) {
        const size_t r0 = b0 * kNMRowBlock, r1 = std::min(W.rows, b1 * kNMRowBlock);
        if (W.dtype == DType::kF32)
          from_dense_rows<uint32_t>(W, kp, A, r0, r1);
        else
          from_dense_rows<uint16_t>(W, kp, A, r0, r1);
      },
      kRowsPerTask / kNMRowBlock);
  fill_padding_codes(A);
  return A;
}

namespace {

template <class Raw>
void from_canonical_rows(const AnyConstMatrix& values, ConstMatrixView<uint8_t> codes, NMMatrix& A,
                         size_t r0, size_t r1) {
  const int n = A.n, m = A.m, bits = nm_code_bits(m);
  const size_t G = A.groups_per_row(), S = A.slots_per_row();
  const size_t row_bytes = nm_code_row_bytes(A.cols, n, m);
  Raw* out = reinterpret_cast<Raw*>(A.values.data());
  uint32_t* ex = reinterpret_cast<uint32_t*>(A.codes.data());
  for (size_t r = r0; r < r1; ++r) {
    const Raw* v = static_cast<const Raw*>(values.data) + r * values.stride;
    const uint8_t* c = codes.row(r);
    for (size_t g = 0; g < G; ++g) {
      int prev = -1;
      for (int j = 0; j < n; ++j) {
        const size_t s = g * static_cast<size_t>(n) + static_cast<size_t>(j);
        const size_t bit = s * static_cast<size_t>(bits);
        uint32_t word = c[bit / 8];
        if (bit / 8 + 1 < row_bytes) word |= static_cast<uint32_t>(c[bit / 8 + 1]) << 8;
        const int code = static_cast<int>((word >> (bit % 8)) & ((1u << bits) - 1u));
        SF_CHECK_ARG(code < m && code > prev,
                     "codes: row %zu, group %zu (columns %zu..%zu): slot %d has index %d; indices "
                     "must be increasing and below m=%d",
                     r, g, g * static_cast<size_t>(m), g * static_cast<size_t>(m) + m - 1, j, code,
                     m);
        prev = code;
        out[exec_value_index(A, r, s)] = v[s];
        put_exec_code(A, ex, r, s, static_cast<uint32_t>(code));
      }
    }
    const size_t used = S * static_cast<size_t>(bits);
    if (used % 8 != 0) {
      const uint8_t spare = static_cast<uint8_t>(c[row_bytes - 1] >> (used % 8));
      SF_CHECK_ARG(spare == 0, "codes: row %zu: the unused high bits of the last byte are not 0",
                   r);
    }
  }
}

}  // namespace

NMMatrix nm_from_canonical(const AnyConstMatrix& values, ConstMatrixView<uint8_t> codes,
                           size_t cols, int n, int m, int num_threads) {
  check_nm_format(n, m, cols, "shape");
  SF_CHECK_ARG(values.rows > 0 && cols > 0, "values: empty");
  const size_t slots = cols / static_cast<size_t>(m) * static_cast<size_t>(n);
  SF_CHECK_ARG(values.cols == slots,
               "values: has %zu columns, expected in_features / m * n = %zu for %zu columns at "
               "%d:%d",
               values.cols, slots, cols, n, m);
  const size_t row_bytes = nm_code_row_bytes(cols, n, m);
  SF_CHECK_ARG(codes.rows == values.rows && codes.cols == row_bytes,
               "codes: shape (%zu, %zu), expected (%zu, %zu)", codes.rows, codes.cols, values.rows,
               row_bytes);
  NMMatrix A = allocate(values.rows, cols, n, m, values.dtype);
  parallel_for(
      A.row_blocks(), num_threads,
      [&](size_t b0, size_t b1) {
        const size_t r0 = b0 * kNMRowBlock, r1 = std::min(A.rows, b1 * kNMRowBlock);
        if (values.dtype == DType::kF32)
          from_canonical_rows<uint32_t>(values, codes, A, r0, r1);
        else
          from_canonical_rows<uint16_t>(values, codes, A, r0, r1);
      },
      kRowsPerTask / kNMRowBlock);
  fill_padding_codes(A);
  return A;
}

namespace {

template <class Raw>
void to_canonical_rows(const NMMatrix& A, const AnyMatrix& values, MatrixView<uint8_t> codes,
                       size_t r0, size_t r1) {
  const int bits = nm_code_bits(A.m);
  const size_t S = A.slots_per_row();
  const size_t row_bytes = nm_code_row_bytes(A.cols, A.n, A.m);
  const Raw* in = reinterpret_cast<const Raw*>(A.values.data());
  const uint32_t* ex = reinterpret_cast<const uint32_t*>(A.codes.data());
  for (size_t r = r0; r < r1; ++r) {
    Raw* v = static_cast<Raw*>(values.data) + r * values.stride;
    uint8_t* c = codes.row(r);
    std::memset(c, 0, row_bytes);
    for (size_t s = 0; s < S; ++s) {
      v[s] = in[exec_value_index(A, r, s)];
      const uint32_t code = get_exec_code(A, ex, r, s);
      const size_t bit = s * static_cast<size_t>(bits);
      const uint32_t shifted = code << (bit % 8);
      c[bit / 8] |= static_cast<uint8_t>(shifted);
      if (shifted >> 8) c[bit / 8 + 1] |= static_cast<uint8_t>(shifted >> 8);
    }
  }
}

template <class Raw>
void to_dense_rows(const NMMatrix& A, const AnyMatrix& out, size_t r0, size_t r1) {
  const size_t n = static_cast<size_t>(A.n), m = static_cast<size_t>(A.m);
  const size_t S = A.slots_per_row();
  const Raw* in = reinterpret_cast<const Raw*>(A.values.data());
  const uint32_t* ex = reinterpret_cast<const uint32_t*>(A.codes.data());
  for (size_t r = r0; r < r1; ++r) {
    Raw* o = static_cast<Raw*>(out.data) + r * out.stride;
    std::memset(o, 0, A.cols * sizeof(Raw));
    for (size_t s = 0; s < S; ++s)
      o[(s / n) * m + get_exec_code(A, ex, r, s)] = in[exec_value_index(A, r, s)];
  }
}

}  // namespace

void nm_to_canonical(const NMMatrix& A, const AnyMatrix& values, MatrixView<uint8_t> codes,
                     int num_threads) {
  SF_CHECK_DTYPE(values.dtype == A.dtype, "values: dtype does not match the tensor's");
  SF_CHECK_ARG(values.rows == A.rows && values.cols == A.slots_per_row(),
               "values: shape (%zu, %zu), expected (%zu, %zu)", values.rows, values.cols, A.rows,
               A.slots_per_row());
  SF_CHECK_ARG(codes.rows == A.rows && codes.cols == nm_code_row_bytes(A.cols, A.n, A.m),
               "codes: shape (%zu, %zu), expected (%zu, %zu)", codes.rows, codes.cols, A.rows,
               nm_code_row_bytes(A.cols, A.n, A.m));
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    if (A.dtype == DType::kF32)
      to_canonical_rows<uint32_t>(A, values, codes, r0, r1);
    else
      to_canonical_rows<uint16_t>(A, values, codes, r0, r1);
  });
}

void nm_to_dense(const NMMatrix& A, const AnyMatrix& out, int num_threads) {
  SF_CHECK_DTYPE(out.dtype == A.dtype, "out: dtype does not match the tensor's");
  SF_CHECK_ARG(out.rows == A.rows && out.cols == A.cols,
               "out: shape (%zu, %zu), expected (%zu, %zu)", out.rows, out.cols, A.rows, A.cols);
  parallel_for(A.rows, num_threads, [&](size_t r0, size_t r1) {
    if (A.dtype == DType::kF32)
      to_dense_rows<uint32_t>(A, out, r0, r1);
    else
      to_dense_rows<uint16_t>(A, out, r0, r1);
  });
}

void nm_validate(const NMMatrix& A) {
  check_nm_format(A.n, A.m, A.cols, "tensor");
  const size_t esize = dtype_size(A.dtype);
  SF_CHECK_ARG(A.values.size() == A.row_blocks() * A.slots_per_row() * kNMRowBlock * esize,
               "tensor: values hold %zu bytes, expected %zu", A.values.size(),
               A.row_blocks() * A.slots_per_row() * kNMRowBlock * esize);
  SF_CHECK_ARG(A.codes.size() == A.row_blocks() * A.words_per_row() * kNMRowBlock * 4,
               "tensor: codes hold %zu bytes, expected %zu", A.codes.size(),
               A.row_blocks() * A.words_per_row() * kNMRowBlock * 4);
  const uint32_t* ex = reinterpret_cast<const uint32_t*>(A.codes.data());
  const size_t G = A.groups_per_row(), n = static_cast<size_t>(A.n);
  for (size_t r = 0; r < A.row_blocks() * kNMRowBlock; ++r) {
    for (size_t g = 0; g < G; ++g) {
      int prev = -1;
      for (size_t j = 0; j < n; ++j) {
        const int code = static_cast<int>(get_exec_code(A, ex, r, g * n + j));
        SF_CHECK_ARG(code < A.m && code > prev,
                     "codes: row %zu, group %zu: slot %zu has index %d; indices must be "
                     "increasing and below m=%d",
                     r, g, j, code, A.m);
        prev = code;
      }
    }
    if (r >= A.rows) {
      for (size_t s = 0; s < A.slots_per_row(); ++s) {
        const uint8_t* p = A.values.data() + exec_value_index(A, r, s) * esize;
        for (size_t b = 0; b < esize; ++b)
          SF_CHECK_ARG(p[b] == 0, "values: padding row %zu is not zero", r);
      }
    }
  }
}

}  // namespace format
}  // namespace sparseforge
