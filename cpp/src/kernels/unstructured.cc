#include "sparseforge/kernels/unstructured.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/linalg/linalg.h"
#include "kernels/simd/unstructured.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace kernels {

namespace unstructured_simd {

const UnstructuredTable& unstructured_table_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kTableAVX2;
#endif
  return kTableScalar;
}

const UnstructuredTable& unstructured_table() {
  return unstructured_table_for(static_cast<int>(simd_level()));
}

}  // namespace unstructured_simd

namespace {

namespace us = unstructured_simd;

// Rows per task: a multiple of every level's row blocking (4), small enough that the last
// task is not much longer than the others. The split never changes an element's arithmetic.
constexpr size_t kRowChunk = 16;
// GEMM: rows x inputs handled together so both stay in L2 (32 rows of bf16 x 4096 = 256 KiB,
// 32 inputs x 4096 fp32 = 512 KiB).
constexpr size_t kGemmRows = 32;
constexpr size_t kGemmPanel = 32;
// CSR GEMM: inputs per transposed panel (a multiple of 16).
constexpr size_t kCsrPanel = 64;
constexpr size_t kDenseTileRows = 64;

int dtype_index(DType t) { return static_cast<int>(t); }

us::BitmapArgs bitmap_args(const format::BitmapMatrix& A) {
  return {A.cols, format::bitmap_row_bytes(A.cols), A.bitmap.data(), format::values_data(A),
          A.row_offsets.data()};
}

us::CsrArgs csr_args(const format::CSRMatrix& A) {
  return {A.cols, A.indptr.data(), A.indices.data(), format::values_data(A)};
}

bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

size_t span_bytes(size_t rows, size_t cols, size_t stride) {
  return rows == 0 ? 0 : ((rows - 1) * stride + cols) * sizeof(float);
}

void check_gemv(size_t rows, size_t cols, const float* x, const float* y) {
  SF_CHECK_ARG(x != nullptr, "x: null pointer");
  SF_CHECK_ARG(y != nullptr, "out: null pointer");
  SF_CHECK_ARG(!overlaps(x, cols * sizeof(float), y, rows * sizeof(float)),
               "out: must not overlap x");
}

void check_gemm(size_t rows, size_t cols, const ConstMatrixView<float>& X,
                const MatrixView<float>& Y) {
  SF_CHECK_ARG(X.rows >= 1 && X.data != nullptr, "X: expected at least one row, got %zu", X.rows);
  SF_CHECK_ARG(X.cols == cols, "X: expected %zu columns (in_features), got %zu", cols, X.cols);
  SF_CHECK_ARG(X.stride >= X.cols || X.rows <= 1, "X: stride %zu < cols %zu", X.stride, X.cols);
  SF_CHECK_ARG(Y.data != nullptr, "out: null pointer");
  SF_CHECK_ARG(Y.rows == X.rows && Y.cols == rows, "out: expected shape (%zu, %zu), got (%zu, %zu)",
               X.rows, rows, Y.rows, Y.cols);
  SF_CHECK_ARG(Y.stride >= Y.cols || Y.rows <= 1, "out: stride %zu < cols %zu", Y.stride, Y.cols);
  SF_CHECK_ARG(!overlaps(X.data, span_bytes(X.rows, X.cols, X.stride), Y.data,
                         span_bytes(Y.rows, Y.cols, Y.stride)),
               "out: must not overlap X");
}

bool all_finite(const ConstMatrixView<float>& X) {
  uint32_t bad = 0;  // an integer OR: vectorised, unlike a float reduction
  for (size_t b = 0; b < X.rows; ++b) {
    const float* x = X.row(b);
    for (size_t c = 0; c < X.cols; ++c) {
      uint32_t u;
      std::memcpy(&u, x + c, 4);
      bad |= static_cast<uint32_t>((u & 0x7F800000u) == 0x7F800000u);
    }
  }
  return bad == 0;
}

// fn(r0, r1) over row chunks, one contiguous range of chunks per thread.
template <class F>
void for_row_chunks(size_t rows, size_t chunk, int num_threads, F&& fn) {
  const size_t chunks = (rows + chunk - 1) / chunk;
  parallel_for(chunks, num_threads,
               [&](size_t c0, size_t c1) { fn(c0 * chunk, std::min(rows, c1 * chunk)); });
}

}  // namespace

void bitmap_gemv(const format::BitmapMatrix& A, const float* x, float* y, int num_threads) {
  check_gemv(A.rows, A.cols, x, y);
  const us::UnstructuredTable& t = us::unstructured_table();
  const us::BitmapArgs args = bitmap_args(A);
  const auto kernel = t.bitmap_gemm[dtype_index(A.dtype)];
  for_row_chunks(A.rows, kRowChunk, num_threads,
                 [&](size_t r0, size_t r1) { kernel(args, r0, r1, x, 0, 1, y, 0); });
}

SparseInputInfo bitmap_gemv_sparse_input(const format::BitmapMatrix& Wt, const float* x,
                                         float threshold, float* y, int num_threads) {
  SF_CHECK_ARG(x != nullptr, "x: null pointer");
  SF_CHECK_ARG(y != nullptr, "out: null pointer");
  SF_CHECK_ARG(!std::isnan(threshold) && threshold >= 0.0f,
               "threshold: expected a number >= 0, got %g", static_cast<double>(threshold));
  SF_CHECK_ARG(!overlaps(x, Wt.rows * sizeof(float), y, Wt.cols * sizeof(float)),
               "out: must not overlap x");
  // The threshold rule of kernels/activation.h: active when |x| > threshold or x is NaN.
  // Per-thread scratch kept across calls: a decode step makes ~200 of these calls.
  thread_local std::vector<uint32_t> idx;
  thread_local std::vector<float> coef;
  idx.clear();
  coef.clear();
  for (size_t k = 0; k < Wt.rows; ++k) {
    if (!(std::fabs(x[k]) <= threshold)) {
      idx.push_back(static_cast<uint32_t>(k));
      coef.push_back(x[k]);
    }
  }
  const us::BitmapArgs args = bitmap_args(Wt);
  const auto kernel = us::unstructured_table().bitmap_axpy[dtype_index(Wt.dtype)];
  const size_t blocks = (Wt.cols + 15) / 16;  // 16-column blocks: a 64-byte line of y
  // Plain pointers into this thread's scratch: a worker naming `idx` would see its own.
  const uint32_t* ip = idx.data();
  const float* cp = coef.data();
  const size_t n = idx.size();
  parallel_for(blocks, num_threads, [&](size_t b0, size_t b1) {
    kernel(args, ip, n, cp, y, b0 * 16, std::min(Wt.cols, b1 * 16));
  });
  return {n, Wt.rows, false};
}

void csr_gemv(const format::CSRMatrix& A, const float* x, float* y, int num_threads) {
  check_gemv(A.rows, A.cols, x, y);
  const us::UnstructuredTable& t = us::unstructured_table();
  const us::CsrArgs args = csr_args(A);
  const auto kernel = t.csr_gemv[dtype_index(A.dtype)];
  for_row_chunks(A.rows, kRowChunk, num_threads,
                 [&](size_t r0, size_t r1) { kernel(args, r0, r1, x, y); });
}

namespace detail {

void bitmap_gemm_direct(const format::BitmapMatrix& A, const float* X, size_t ldx, size_t batch,
                        float* Y, size_t ldy, int num_threads) {
  const us::BitmapArgs args = bitmap_args(A);
  const auto kernel = us::unstructured_table().bitmap_gemm[dtype_index(A.dtype)];
  for_row_chunks(A.rows, kGemmRows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t c = r0; c < r1; c += kGemmRows) {
      const size_t c1 = std::min(r1, c + kGemmRows);
      for (size_t b = 0; b < batch; b += kGemmPanel) {
        const size_t nb = std::min(kGemmPanel, batch - b);
        kernel(args, c, c1, X + b * ldx, ldx, nb, Y + b * ldy, ldy);
      }
    }
  });
}

void bitmap_gemm_dense_tiles(const format::BitmapMatrix& A, const float* X, size_t ldx,
                             size_t batch, float* Y, size_t ldy, int num_threads) {
  // C (tile x batch) = W_tile (tile x cols) X^T, tiles of a fixed height.
  const us::BitmapArgs args = bitmap_args(A);
  const auto decompress = us::unstructured_table().bitmap_decompress[dtype_index(A.dtype)];
  const linalg::LinalgTable& la = linalg::linalg();
  std::vector<float> XT(A.cols * batch);
  for (size_t b = 0; b < batch; ++b)
    for (size_t c = 0; c < A.cols; ++c) XT[c * batch + b] = X[b * ldx + c];
  for_row_chunks(A.rows, kDenseTileRows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<float> tile(kDenseTileRows * A.cols), C(kDenseTileRows * batch);
    for (size_t c = r0; c < r1; c += kDenseTileRows) {
      const size_t n = std::min(r1, c + kDenseTileRows) - c;
      decompress(args, c, c + n, tile.data(), A.cols);
      la.gemm_f32(false, n, batch, A.cols, 1.0f, tile.data(), A.cols, XT.data(), batch, 0.0f,
                  C.data(), batch);
      for (size_t i = 0; i < n; ++i)
        for (size_t b = 0; b < batch; ++b) Y[b * ldy + c + i] = C[i * batch + b];
    }
  });
}

}  // namespace detail

void bitmap_gemm(const format::BitmapMatrix& A, const ConstMatrixView<float>& X,
                 const MatrixView<float>& Y, int num_threads) {
  check_gemm(A.rows, A.cols, X, Y);
  // The dense path multiplies the tiles' zeros too: with a NaN/Inf input that would reach
  // rows that do not store its column, so such inputs take the direct kernel.
  if (X.rows < detail::kBitmapDenseGemmBatch || !all_finite(X)) {
    detail::bitmap_gemm_direct(A, X.data, X.stride, X.rows, Y.data, Y.stride, num_threads);
  } else {
    detail::bitmap_gemm_dense_tiles(A, X.data, X.stride, X.rows, Y.data, Y.stride, num_threads);
  }
}

void csr_gemm(const format::CSRMatrix& A, const ConstMatrixView<float>& X,
              const MatrixView<float>& Y, int num_threads) {
  check_gemm(A.rows, A.cols, X, Y);
  const size_t batch = X.rows;
  if (batch == 1) {
    csr_gemv(A, X.data, Y.data, num_threads);
    return;
  }
  const us::UnstructuredTable& t = us::unstructured_table();
  const us::CsrArgs args = csr_args(A);
  const auto kernel = t.csr_gemm_t[dtype_index(A.dtype)];
  // X transposed panel by panel: panel p holds inputs [p kCsrPanel, ...) as a (cols x ld)
  // block with ld = the panel's width rounded up to 16, zero past the batch.
  const size_t panels = (batch + kCsrPanel - 1) / kCsrPanel;
  std::vector<size_t> offset(panels + 1, 0), ld(panels);
  for (size_t p = 0; p < panels; ++p) {
    const size_t nb = std::min(kCsrPanel, batch - p * kCsrPanel);
    ld[p] = (nb + 15) / 16 * 16;
    offset[p + 1] = offset[p] + A.cols * ld[p];
  }
  std::vector<float> XT(offset[panels], 0.0f);
  parallel_for(panels, num_threads, [&](size_t p0, size_t p1) {
    for (size_t p = p0; p < p1; ++p) {
      const size_t nb = std::min(kCsrPanel, batch - p * kCsrPanel);
      float* xt = XT.data() + offset[p];
      for (size_t k = 0; k < nb; ++k) {
        const float* xr = X.data + (p * kCsrPanel + k) * X.stride;
        for (size_t c = 0; c < A.cols; ++c) xt[c * ld[p] + k] = xr[c];
      }
    }
  });
  for_row_chunks(A.rows, kGemmRows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t c = r0; c < r1; c += kGemmRows) {
      const size_t c1 = std::min(r1, c + kGemmRows);
      for (size_t p = 0; p < panels; ++p) {
        const size_t b = p * kCsrPanel, nb = std::min(kCsrPanel, batch - b);
        kernel(args, c, c1, XT.data() + offset[p], ld[p], nb, Y.data + b * Y.stride, Y.stride);
      }
    }
  });
}

}  // namespace kernels
}  // namespace sparseforge
