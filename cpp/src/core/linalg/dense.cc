#include "core/linalg/dense.h"

#include <algorithm>
#include <vector>

#include "core/linalg/linalg.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace linalg {
namespace {

// The table entries by element type.
struct Ops64 {
  using T = double;
  const LinalgTable& la = linalg();
  long potrf(size_t n, T* A, size_t lda) const { return la.potrf_lower_f64(n, A, lda); }
  void trsm(size_t m, size_t n, const T* L, size_t ldl, T* B, size_t ldb) const {
    la.trsm_right_lower_t_f64(m, n, L, ldl, B, ldb);
  }
  void gemm_nt(size_t m, size_t n, size_t k, T alpha, const T* A, size_t lda, const T* B,
               size_t ldb, T beta, T* C, size_t ldc) const {
    la.gemm_nt_f64(m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void trtri(size_t n, T* L, size_t ldl) const { la.trtri_lower_f64(n, L, ldl); }
  void gemm(size_t m, size_t n, size_t k, T alpha, const T* A, size_t lda, const T* B, size_t ldb,
            T beta, T* C, size_t ldc) const {
    la.gemm_f64(false, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  }
};
struct Ops32 {
  using T = float;
  const LinalgTable& la = linalg();
  long potrf(size_t n, T* A, size_t lda) const { return la.potrf_lower_f32(n, A, lda); }
  void trsm(size_t m, size_t n, const T* L, size_t ldl, T* B, size_t ldb) const {
    la.trsm_right_lower_t_f32(m, n, L, ldl, B, ldb);
  }
  void gemm_nt(size_t m, size_t n, size_t k, T alpha, const T* A, size_t lda, const T* B,
               size_t ldb, T beta, T* C, size_t ldc) const {
    la.gemm_nt_f32(m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void trtri(size_t n, T* L, size_t ldl) const { la.trtri_lower_f32(n, L, ldl); }
  void gemm(size_t m, size_t n, size_t k, T alpha, const T* A, size_t lda, const T* B, size_t ldb,
            T beta, T* C, size_t ldc) const {
    la.gemm_f32(false, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  }
};

// Right-looking blocked Cholesky: factor the diagonal tile, solve the tiles below it, then
// update every trailing lower tile with one GEMM each (the n^3/3 bulk, in parallel).
template <class Ops, class T = typename Ops::T>
long cholesky_lower_t(T* A, size_t n, size_t lda, int num_threads) {
  const Ops la;
  const size_t nt = (n + kTile - 1) / kTile;
  auto tile = [&](size_t i, size_t j) { return A + i * kTile * lda + j * kTile; };
  auto size_of = [&](size_t i) { return std::min(kTile, n - i * kTile); };
  for (size_t k = 0; k < nt; ++k) {
    const long bad = la.potrf(size_of(k), tile(k, k), lda);
    if (bad >= 0) return static_cast<long>(k * kTile) + bad;
    parallel_for_each(nt - k - 1, num_threads, [&](size_t t) {
      const size_t i = k + 1 + t;
      la.trsm(size_of(i), size_of(k), tile(k, k), lda, tile(i, k), lda);
    });
    // Trailing tiles (i, j), k < j <= i, listed row by row.
    std::vector<std::pair<size_t, size_t>> tiles;
    for (size_t i = k + 1; i < nt; ++i) {
      for (size_t j = k + 1; j <= i; ++j) tiles.emplace_back(i, j);
    }
    parallel_for_dynamic(tiles.size(), num_threads, [&](size_t t) {
      const size_t i = tiles[t].first, j = tiles[t].second;
      la.gemm_nt(size_of(i), size_of(j), size_of(k), T(-1), tile(i, k), lda, tile(j, k), lda, T(1),
                 tile(i, j), lda);
    });
  }
  return -1;
}

// X = L^{-1} by block columns from the last: X_jj = L_jj^{-1} and, for i > j,
// X_ij = -(sum_{k=j+1..i} X_ik L_kj) X_jj. Block column j needs only later block columns of
// X (done) and column j of L, copied aside before it is overwritten; its row tiles are
// independent and run in parallel.
template <class Ops, class T = typename Ops::T>
void invert_lower_t(T* L, size_t n, size_t lda, int num_threads) {
  const Ops la;
  const size_t nt = (n + kTile - 1) / kTile;
  auto tile = [&](size_t i, size_t j) { return L + i * kTile * lda + j * kTile; };
  auto size_of = [&](size_t i) { return std::min(kTile, n - i * kTile); };
  std::vector<T> col;  // L_kj for k > j, rows stacked: (n - (j+1) kTile) x size_of(j)
  for (size_t j = nt; j-- > 0;) {
    const size_t bj = size_of(j), below = n - std::min(n, (j + 1) * kTile);
    col.assign(below * bj, T(0));
    for (size_t r = 0; r < below; ++r) {
      std::copy(tile(j + 1, j) + r * lda, tile(j + 1, j) + r * lda + bj, col.data() + r * bj);
    }
    // Diagonal tiles hold X_kk in their lower triangle only; GEMMs need them masked.
    auto lower_copy = [&](size_t k) {
      const size_t b = size_of(k);
      std::vector<T> out(b * b, T(0));
      for (size_t r = 0; r < b; ++r) {
        std::copy(tile(k, k) + r * lda, tile(k, k) + r * lda + r + 1, out.data() + r * b);
      }
      return out;
    };
    la.trtri(bj, tile(j, j), lda);  // X_jj
    const std::vector<T> xjj = lower_copy(j);
    // Row tile i costs i - j GEMMs: claim the largest first, dynamically.
    parallel_for_dynamic(nt - j - 1, num_threads, [&](size_t t) {
      const size_t i = nt - 1 - t, bi = size_of(i);
      std::vector<T> acc(bi * bj, T(0));
      const std::vector<T> xii = lower_copy(i);
      for (size_t k = j + 1; k <= i; ++k) {  // fixed order: deterministic
        const T* l_kj = col.data() + (k - j - 1) * kTile * bj;
        const size_t bk = size_of(k);
        const T* x_ik = k == i ? xii.data() : tile(i, k);
        la.gemm(bi, bj, bk, T(1), x_ik, k == i ? bk : lda, l_kj, bj, T(1), acc.data(), bj);
      }
      la.gemm(bi, bj, bj, T(-1), acc.data(), bj, xjj.data(), bj, T(0), tile(i, j), lda);
    });
  }
}

}  // namespace

long cholesky_lower(double* A, size_t n, size_t lda, int num_threads) {
  return cholesky_lower_t<Ops64>(A, n, lda, num_threads);
}
long cholesky_lower(float* A, size_t n, size_t lda, int num_threads) {
  return cholesky_lower_t<Ops32>(A, n, lda, num_threads);
}
void invert_lower(double* L, size_t n, size_t lda, int num_threads) {
  invert_lower_t<Ops64>(L, n, lda, num_threads);
}
void invert_lower(float* L, size_t n, size_t lda, int num_threads) {
  invert_lower_t<Ops32>(L, n, lda, num_threads);
}

}  // namespace linalg
}  // namespace sparseforge
