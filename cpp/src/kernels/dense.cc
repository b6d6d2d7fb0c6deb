#include "sparseforge/kernels/dense.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/linalg/linalg.h"
#include "kernels/dense_driver.h"
#include "kernels/simd/dense.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace kernels {

extern const DenseTable kDenseTableScalar;
#if SF_HAVE_X86_KERNELS
extern const DenseTable kDenseTableAVX2;
extern const DenseTable kDenseTableAVX512;
#endif

const DenseTable& dense_table_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kDenseTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kDenseTableAVX2;
#endif
  return kDenseTableScalar;
}

const DenseTable& dense_table() { return dense_table_for(static_cast<int>(simd_level())); }

namespace detail {

int plan_threads(int num_threads, size_t bytes) {
  constexpr size_t kMinBytesPerThread = size_t{64} << 10;
  const int threads = resolve_num_threads(num_threads);
  const size_t cap = std::max<size_t>(1, bytes / kMinBytesPerThread);
  return static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), cap));
}

void check_weight(const AnyConstMatrix& W, const char* name) {
  SF_CHECK_ARG(W.data != nullptr && W.rows > 0 && W.cols > 0,
               "%s: expected a non-empty matrix, got shape (%zu, %zu)", name, W.rows, W.cols);
  SF_CHECK_ARG(W.stride >= W.cols || W.rows == 1, "%s: row stride %zu is less than cols=%zu", name,
               W.stride, W.cols);
  SF_CHECK_ARG(W.rows < (size_t{1} << 31) && W.cols < (size_t{1} << 31),
               "%s: shape (%zu, %zu) exceeds 2^31 - 1 in a dimension", name, W.rows, W.cols);
}

void check_threshold(float t, const char* name) {
  SF_CHECK_ARG(!std::isnan(t) && t >= 0.0f, "%s: expected a number >= 0, got %g", name,
               static_cast<double>(t));
}

void axpy_columns(const AnyConstMatrix& Wt, const uint32_t* idx, size_t n, const float* coef,
                  size_t B, float* Y, size_t ldy, int num_threads) {
  const DenseTable& kt = dense_table();
  const int dt = static_cast<int>(Wt.dtype);
  const size_t N = Wt.cols;
  const size_t bytes = std::max(n * N * dtype_size(Wt.dtype), B * N * sizeof(float));
  const size_t blocks = (N + 15) / 16;  // a 64-byte line of fp32 outputs per unit
  parallel_for(blocks, plan_threads(num_threads, bytes), [&](size_t b0, size_t b1) {
    kt.axpy[dt](Wt.data, Wt.stride, idx, n, coef, B, Y, ldy, b0 * 16, std::min(N, b1 * 16));
  });
}

namespace {

constexpr size_t kEigenTile = 128;  // rows of W (or columns of Wt) per Eigen GEMM call

// A (rows x K) fp32 view of rows [r0, r0 + rows) of W: W itself for fp32, else converted
// into scratch.
const float* f32_rows(const AnyConstMatrix& W, size_t r0, size_t rows, std::vector<float>& scratch,
                      size_t* ld) {
  if (W.dtype == DType::kF32) {
    *ld = W.stride;
    return static_cast<const float*>(W.data) + r0 * W.stride;
  }
  scratch.resize(rows * W.cols);
  for (size_t r = 0; r < rows; ++r) {
    const size_t off = (r0 + r) * W.stride;
    float* dst = scratch.data() + r * W.cols;
    if (W.dtype == DType::kF16) {
      convert(static_cast<const Float16*>(W.data) + off, dst, W.cols);
    } else {
      convert(static_cast<const BFloat16*>(W.data) + off, dst, W.cols);
    }
  }
  *ld = W.cols;
  return scratch.data();
}

// Y = X W^T for large batches: Y^T tiles (128 rows of W x batch) from the per-level Eigen
// GEMM on X^T, each tile one single-threaded call whatever the thread count.
void gemm_eigen(const AnyConstMatrix& W, ConstMatrixView<float> X, MatrixView<float> Y,
                int num_threads) {
  const size_t B = X.rows, K = X.cols, N = W.rows;
  std::vector<float> Xt(K * B);
  parallel_for(K, plan_threads(num_threads, K * B * 4), [&](size_t k0, size_t k1) {
    for (size_t b = 0; b < B; ++b) {
      const float* xb = X.row(b);
      for (size_t k = k0; k < k1; ++k) Xt[k * B + b] = xb[k];
    }
  });
  const linalg::LinalgTable& la = linalg::linalg();
  const size_t tiles = (N + kEigenTile - 1) / kEigenTile;
  const int threads = plan_threads(num_threads, N * K * dtype_size(W.dtype));
  parallel_for(tiles, threads, [&](size_t t0, size_t t1) {
    std::vector<float> wbuf, ct;
    for (size_t t = t0; t < t1; ++t) {
      const size_t r0 = t * kEigenTile, rows = std::min(kEigenTile, N - r0);
      size_t lda = 0;
      const float* A = f32_rows(W, r0, rows, wbuf, &lda);
      ct.resize(rows * B);
      la.gemm_f32(false, rows, B, K, 1.0f, A, lda, Xt.data(), B, 0.0f, ct.data(), B);
      for (size_t b = 0; b < B; ++b) {
        float* yb = Y.row(b) + r0;
        for (size_t r = 0; r < rows; ++r) yb[r] = ct[r * B + b];
      }
    }
  });
}

void check_vector_ptrs(const float* x, const float* y) {
  SF_CHECK_ARG(x != nullptr, "x: expected a non-null pointer");
  SF_CHECK_ARG(y != nullptr, "y: expected a non-null pointer");
}

}  // namespace

void gemm_transposed(const AnyConstMatrix& Wt, ConstMatrixView<float> Xm, MatrixView<float> Y,
                     int num_threads) {
  const size_t B = Xm.rows, K = Wt.rows, N = Wt.cols;
  if (B <= kGemmDirectMaxBatch) {
    // Every row of Wt once, through the column-skip kernel with the identity row list.
    std::vector<float> coef(K * B);
    for (size_t b = 0; b < B; ++b) {
      for (size_t k = 0; k < K; ++k) coef[k * B + b] = Xm(b, k);
    }
    axpy_columns(Wt, nullptr, K, coef.data(), B, Y.data, Y.stride, num_threads);
    return;
  }
  // Y[:, c0:c1] = Xm Wt[:, c0:c1] on fixed column tiles (fp16/bf16 tiles converted).
  const linalg::LinalgTable& la = linalg::linalg();
  const size_t tiles = (N + kEigenTile - 1) / kEigenTile;
  const int threads = plan_threads(num_threads, N * K * dtype_size(Wt.dtype));
  parallel_for(tiles, threads, [&](size_t t0, size_t t1) {
    std::vector<float> wbuf;
    for (size_t t = t0; t < t1; ++t) {
      const size_t c0 = t * kEigenTile, cols = std::min(kEigenTile, N - c0);
      const float* Bop;
      size_t ldb;
      if (Wt.dtype == DType::kF32) {
        Bop = static_cast<const float*>(Wt.data) + c0;
        ldb = Wt.stride;
      } else {
        wbuf.resize(K * cols);
        for (size_t k = 0; k < K; ++k) {
          const size_t off = k * Wt.stride + c0;
          if (Wt.dtype == DType::kF16) {
            convert(static_cast<const Float16*>(Wt.data) + off, wbuf.data() + k * cols, cols);
          } else {
            convert(static_cast<const BFloat16*>(Wt.data) + off, wbuf.data() + k * cols, cols);
          }
        }
        Bop = wbuf.data();
        ldb = cols;
      }
      la.gemm_f32(false, B, cols, K, 1.0f, Xm.data, Xm.stride, Bop, ldb, 0.0f, Y.data + c0,
                  Y.stride);
    }
  });
}

}  // namespace detail

void gemv(const AnyConstMatrix& W, const float* x, float* y, int num_threads) {
  detail::check_weight(W, "W");
  detail::check_vector_ptrs(x, y);
  const DenseTable& kt = dense_table();
  const int dt = static_cast<int>(W.dtype);
  const size_t esz = dtype_size(W.dtype);
  const int threads = detail::plan_threads(num_threads, W.rows * W.cols * esz);
  parallel_for(W.rows, threads, [&](size_t r0, size_t r1) {
    const void* base = static_cast<const char*>(W.data) + r0 * W.stride * esz;
    kt.gemv[dt](base, W.stride, nullptr, r1 - r0, W.cols, x, y + r0);
  });
}

void gemm(const AnyConstMatrix& W, ConstMatrixView<float> X, MatrixView<float> Y, int num_threads) {
  detail::check_weight(W, "W");
  SF_CHECK_ARG(X.data != nullptr && X.rows > 0, "X: expected a non-empty batch, got %zu rows",
               X.rows);
  SF_CHECK_ARG(X.cols == W.cols, "X: in_features=%zu does not match W's in_features=%zu", X.cols,
               W.cols);
  SF_CHECK_ARG(X.stride >= X.cols || X.rows == 1, "X: row stride %zu is less than cols=%zu",
               X.stride, X.cols);
  SF_CHECK_ARG(Y.data != nullptr && Y.rows == X.rows && Y.cols == W.rows,
               "Y: expected shape (%zu, %zu), got (%zu, %zu)", X.rows, W.rows, Y.rows, Y.cols);
  SF_CHECK_ARG(Y.stride >= Y.cols || Y.rows == 1, "Y: row stride %zu is less than cols=%zu",
               Y.stride, Y.cols);
  if (X.rows == 1) {
    gemv(W, X.data, Y.data, num_threads);
    return;
  }
  if (X.rows > kGemmDirectMaxBatch) {
    detail::gemm_eigen(W, X, Y, num_threads);
    return;
  }
  const DenseTable& kt = dense_table();
  const int dt = static_cast<int>(W.dtype);
  const size_t esz = dtype_size(W.dtype);
  const int threads = detail::plan_threads(num_threads, W.rows * W.cols * esz);
  parallel_for(W.rows, threads, [&](size_t r0, size_t r1) {
    const void* base = static_cast<const char*>(W.data) + r0 * W.stride * esz;
    kt.gemm[dt](base, W.stride, r1 - r0, W.cols, X.data, X.stride, X.rows, Y.data + r0, Y.stride);
  });
}

std::vector<uint32_t> resolve_indices(const IndexSet& set, size_t n, const char* name) {
  SF_CHECK_ARG(n < (size_t{1} << 32), "%s: %zu candidates exceed 2^32", name, n);
  std::vector<uint32_t> out;
  if (set.kind == IndexSet::Kind::kMask) {
    SF_CHECK_ARG(set.size == n, "%s: expected a mask of length %zu, got %zu", name, n, set.size);
    const uint8_t* m = static_cast<const uint8_t*>(set.data);
    for (size_t i = 0; i < n; ++i) {
      if (m[i]) out.push_back(static_cast<uint32_t>(i));
    }
    return out;
  }
  SF_CHECK_ARG(set.size == 0 || set.data != nullptr, "%s: null index list", name);
  auto at = [&](size_t i) -> int64_t {
    return set.kind == IndexSet::Kind::kInt32 ? static_cast<const int32_t*>(set.data)[i]
                                              : static_cast<const int64_t*>(set.data)[i];
  };
  bool increasing = true;
  for (size_t i = 0; i < set.size; ++i) {
    const int64_t v = at(i);
    SF_CHECK_ARG(v >= 0 && static_cast<uint64_t>(v) < n,
                 "%s: index %lld at position %zu is out of range [0, %zu)", name,
                 static_cast<long long>(v), i, n);
    increasing = increasing && (i == 0 || v > at(i - 1));
  }
  if (increasing) {  // already a sorted set: no O(n) pass
    out.resize(set.size);
    for (size_t i = 0; i < set.size; ++i) out[i] = static_cast<uint32_t>(at(i));
    return out;
  }
  std::vector<uint8_t> seen(n, 0);
  for (size_t i = 0; i < set.size; ++i) seen[static_cast<size_t>(at(i))] = 1;
  for (size_t i = 0; i < n; ++i) {
    if (seen[i]) out.push_back(static_cast<uint32_t>(i));
  }
  return out;
}

size_t gemv_rows(const AnyConstMatrix& W, const float* x, const IndexSet& rows, float* y,
                 int num_threads) {
  detail::check_weight(W, "W");
  detail::check_vector_ptrs(x, y);
  const std::vector<uint32_t> list = resolve_indices(rows, W.rows, "rows");
  std::fill(y, y + W.rows, 0.0f);
  const DenseTable& kt = dense_table();
  const int dt = static_cast<int>(W.dtype);
  const int threads = detail::plan_threads(num_threads, list.size() * W.cols * dtype_size(W.dtype));
  parallel_for(list.size(), threads, [&](size_t i0, size_t i1) {
    kt.gemv[dt](W.data, W.stride, list.data() + i0, i1 - i0, W.cols, x, y);
  });
  return list.size();
}

float read_probe(const float* buf, size_t n, int num_threads) {
  SF_CHECK_ARG(buf != nullptr || n == 0, "buf: expected a non-null pointer");
  constexpr size_t kChunk = size_t{1} << 16;  // floats per partial sum
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<float> partial(chunks, 0.0f);
  const DenseTable& kt = dense_table();
  parallel_for(chunks, detail::plan_threads(num_threads, n * 4), [&](size_t c0, size_t c1) {
    for (size_t c = c0; c < c1; ++c) {
      const size_t b = c * kChunk;
      partial[c] = kt.sum_f32(buf + b, std::min(kChunk, n - b));
    }
  });
  float s = 0.0f;
  for (float p : partial) s += p;
  return s;
}

}  // namespace kernels
}  // namespace sparseforge
