// N:M compressed weights: a canonical interchange layout and the execution layout the
// kernels read (docs/formats.md, "NMTensor").
//
// W is (rows, cols) = (out_features, in_features), row-major; every group of m consecutive
// columns of a row holds at most n non-zeros (n kept of m). Supported: 1 <= n < m <= 16,
// cols % m == 0, storage dtypes fp32/fp16/bf16.
//
// Canonical layout (what users, files and PyTorch conversion see):
//   values  (rows, cols / m * n), W's dtype: each group's kept values in column order.
//   codes   (rows, code_row_bytes(cols, n, m)) uint8: for every kept value its index in its
//           group, code_bits(m) bits each (m = 2: 1, m <= 4: 2, m <= 8: 3, else 4), packed
//           least-significant bit first along the row; each row starts on a byte. Indices
//           of a group are strictly increasing. For 2:4 a group's 4 bits are
//           idx0 | idx1 << 2, two groups per byte with the lower columns in the low nibble:
//           PyTorch's semi-structured nibble codes.
// A group with fewer than n non-zeros still stores n slots (zeros among them), chosen by a
// fixed rule so that a dense matrix has exactly one encoding: for 2:4 PyTorch's table
// (all-zero -> slots {2, 3}, [x,0,0,0] -> {0, 2}, [0,x,0,0] -> {1, 2}, [0,0,x,0] and
// [0,0,0,x] -> {2, 3}); for other patterns the non-zeros plus the lowest-index zeros.
// -0.0 counts as zero (it compares equal to 0), as in PyTorch.
//
// Execution layout (NMMatrix, built once; ~the same bytes as the canonical layout):
// rows are interleaved in blocks of kNMRowBlock = 8 ("lane = row", the last block padded
// with zero rows). Slot s = g * n + j is the j-th kept value of group g; per row block:
//   values  [slots][8]            the 8 rows' values of slot s side by side
//   codes   [words][8] uint32     slot s's in-group index at bits (s % per_word) * exec_bits
//                                 of word s / per_word, exec_bits = 2 (m <= 4) or 4
// so one 256-bit load gives 8 rows' values of a slot, and the in-lane permute
// (vpermilps) of the group's 4 inputs by the code word selects each row's input: no
// gathers, no lookup tables (research: 1.5-1.7x over dense where a row-major layout with
// lookup tables was slower than dense; bench/results/kernels.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "sparseforge/core/dtype.h"
#include "sparseforge/core/view.h"

namespace sparseforge {
namespace format {

constexpr int kNMRowBlock = 8;
constexpr int kNMMaxM = 16;

// Bits of one canonical in-group index: 1 (m = 2), 2 (m <= 4), 3 (m <= 8), 4 (m <= 16).
int nm_code_bits(int m);
// Bytes of one canonical code row: ceil(cols / m * n * code_bits / 8).
size_t nm_code_row_bytes(size_t cols, int n, int m);
// Throws InvalidArgument unless 1 <= n < m <= 16 and cols % m == 0 (names `what`).
void check_nm_format(int n, int m, size_t cols, const char* what);

// 64-byte aligned owned bytes (zero-initialised).
class AlignedBytes {
 public:
  AlignedBytes() = default;
  explicit AlignedBytes(size_t size);
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0;
};

// The execution layout (see the top of this file). Move-only, owns its bytes.
struct NMMatrix {
  size_t rows = 0, cols = 0;
  int n = 2, m = 4;
  DType dtype = DType::kF32;
  AlignedBytes values;  // row_blocks() * slots_per_row() * 8 elements of dtype
  AlignedBytes codes;   // row_blocks() * words_per_row() * 8 uint32

  size_t groups_per_row() const { return cols / static_cast<size_t>(m); }
  size_t slots_per_row() const { return groups_per_row() * static_cast<size_t>(n); }
  size_t row_blocks() const { return (rows + kNMRowBlock - 1) / kNMRowBlock; }
  int exec_bits() const { return m <= 4 ? 2 : 4; }
  size_t slots_per_word() const { return 32 / static_cast<size_t>(exec_bits()); }
  size_t words_per_row() const {
    return (slots_per_row() + slots_per_word() - 1) / slots_per_word();
  }
  // Bytes held: values + codes (padding rows included).
  size_t nbytes() const { return values.size() + codes.size(); }
  // Bytes of the canonical layout: values + codes, no padding.
  size_t canonical_nbytes() const;
};

enum class NMFromDense {
  kStrict,     // a group with more than n non-zeros is an error naming it
  kMagnitude,  // keep the n largest |w| of each group (ties: lower index pruned first)
};

// Compresses W (finite, cols % m == 0). Throws InvalidArgument naming "W" for NaN/Inf, and
// in kStrict mode for the first group (row-major order) with more than n non-zeros.
NMMatrix nm_from_dense(const AnyConstMatrix& W, int n, int m, NMFromDense mode, int num_threads);

// From the canonical layout; validates every code (index < m, strictly increasing in its
// group; unused high bits of a row's last byte zero) and throws InvalidArgument naming
// "codes" with the row and group of the first bad one. values may hold any finite or
// non-finite numbers (they are copied as stored).
NMMatrix nm_from_canonical(const AnyConstMatrix& values, ConstMatrixView<uint8_t> codes,
                           size_t cols, int n, int m, int num_threads);

// Canonical values (rows, cols / m * n) of A's dtype and codes (rows, code_row_bytes).
void nm_to_canonical(const NMMatrix& A, const AnyMatrix& values, MatrixView<uint8_t> codes,
                     int num_threads);

// out (rows, cols) of A's dtype: the dense matrix (zeros where nothing is kept).
void nm_to_dense(const NMMatrix& A, const AnyMatrix& out, int num_threads);

// Checks the execution layout's invariants (codes in range and increasing per group,
// padding rows zero); throws InvalidArgument naming the first violation.
void nm_validate(const NMMatrix& A);

}  // namespace format
}  // namespace sparseforge
