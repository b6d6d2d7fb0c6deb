#include "sparseforge/kernels/activation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/dense_driver.h"
#include "kernels/simd/dense.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace kernels {
namespace {

// Active: |x| > t, or NaN (so it propagates). Branchless compaction into idx (capacity n):
// about a cycle per element, 1-2 us at n = 4096.
inline bool active(float v, float t) { return !(std::fabs(v) <= t); }

size_t compact_active(const float* x, size_t n, float t, uint32_t* idx) {
  size_t count = 0;
  for (size_t k = 0; k < n; ++k) {
    idx[count] = static_cast<uint32_t>(k);
    count += active(x[k], t) ? 1 : 0;
  }
  return count;
}

inline float silu(float g) { return g / (1.0f + std::exp(-g)); }

void check_x_y(const float* x, const float* y) {
  SF_CHECK_ARG(x != nullptr, "x: expected a non-null pointer");
  SF_CHECK_ARG(y != nullptr, "y: expected a non-null pointer");
}

SparseInputInfo column_skip(const AnyConstMatrix& Wt, const float* x, const uint32_t* idx, size_t n,
                            float* y, int num_threads) {
  std::vector<float> coef(n);
  for (size_t a = 0; a < n; ++a) coef[a] = x[idx[a]];
  detail::axpy_columns(Wt, idx, n, coef.data(), 1, y, Wt.cols, num_threads);
  return {n, Wt.rows, false};
}

}  // namespace

SparseInputInfo gemv_sparse_input(const AnyConstMatrix& Wt, const float* x, float threshold,
                                  float* y, int num_threads) {
  detail::check_weight(Wt, "Wt");
  detail::check_threshold(threshold, "threshold");
  check_x_y(x, y);
  std::vector<uint32_t> idx(Wt.rows);
  const size_t n = compact_active(x, Wt.rows, threshold, idx.data());
  return column_skip(Wt, x, idx.data(), n, y, num_threads);
}

SparseInputInfo gemv_active_input(const AnyConstMatrix& Wt, const float* x, const IndexSet& active,
                                  float* y, int num_threads) {
  detail::check_weight(Wt, "Wt");
  check_x_y(x, y);
  const std::vector<uint32_t> idx = resolve_indices(active, Wt.rows, "active");
  return column_skip(Wt, x, idx.data(), idx.size(), y, num_threads);
}

SparseInputInfo gemm_sparse_input(const AnyConstMatrix& Wt, ConstMatrixView<float> X,
                                  float threshold, MatrixView<float> Y, double min_gain,
                                  int num_threads) {
  detail::check_weight(Wt, "Wt");
  detail::check_threshold(threshold, "threshold");
  SF_CHECK_ARG(min_gain >= 1.0, "min_gain: expected a number >= 1 (inf: always dense), got %g",
               min_gain);
  SF_CHECK_ARG(X.data != nullptr && X.rows > 0, "X: expected a non-empty batch, got %zu rows",
               X.rows);
  SF_CHECK_ARG(X.cols == Wt.rows, "X: in_features=%zu does not match Wt's rows (in_features)=%zu",
               X.cols, Wt.rows);
  SF_CHECK_ARG(X.stride >= X.cols || X.rows == 1, "X: row stride %zu is less than cols=%zu",
               X.stride, X.cols);
  SF_CHECK_ARG(Y.data != nullptr && Y.rows == X.rows && Y.cols == Wt.cols,
               "Y: expected shape (%zu, %zu), got (%zu, %zu)", X.rows, Wt.cols, Y.rows, Y.cols);
  SF_CHECK_ARG(Y.stride >= Y.cols || Y.rows == 1, "Y: row stride %zu is less than cols=%zu",
               Y.stride, Y.cols);
  const size_t B = X.rows, K = Wt.rows;
  // The union of the per-token masks.
  std::vector<uint8_t> any(K, 0);
  for (size_t b = 0; b < B; ++b) {
    const float* xb = X.row(b);
    for (size_t k = 0; k < K; ++k) any[k] |= active(xb[k], threshold) ? 1 : 0;
  }
  std::vector<uint32_t> idx;
  idx.reserve(K);
  for (size_t k = 0; k < K; ++k) {
    if (any[k]) idx.push_back(static_cast<uint32_t>(k));
  }
  const size_t n = idx.size();
  const double gain = n == 0 ? std::numeric_limits<double>::infinity()
                             : static_cast<double>(K) / static_cast<double>(n);
  if (gain < min_gain) {
    // Dense path: each token's masked activations against every row of Wt.
    std::vector<float> Xm(B * K);
    for (size_t b = 0; b < B; ++b) {
      const float* xb = X.row(b);
      for (size_t k = 0; k < K; ++k) Xm[b * K + k] = active(xb[k], threshold) ? xb[k] : 0.0f;
    }
    detail::gemm_transposed(Wt, ConstMatrixView<float>(Xm.data(), B, K), Y, num_threads);
    return {n, K, true};
  }
  // Coefficients of the union's rows, 0 for a token whose own mask is off.
  std::vector<float> coef(n * B);
  for (size_t b = 0; b < B; ++b) {
    const float* xb = X.row(b);
    for (size_t a = 0; a < n; ++a) {
      const float v = xb[idx[a]];
      coef[a * B + b] = active(v, threshold) ? v : 0.0f;
    }
  }
  detail::axpy_columns(Wt, idx.data(), n, coef.data(), B, Y.data, Y.stride, num_threads);
  return {n, K, false};
}

// ---------------------------------------------------------------------------------------
// SwiGLU

SwiGLUMode parse_swiglu_mode(const std::string& name) {
  if (name == "dense") return SwiGLUMode::kDense;
  if (name == "teal") return SwiGLUMode::kTeal;
  if (name == "cats") return SwiGLUMode::kCats;
  SF_THROW(InvalidArgument, "mode: expected 'dense', 'teal' or 'cats', got '%s'", name.c_str());
}

const char* swiglu_mode_name(SwiGLUMode mode) {
  switch (mode) {
    case SwiGLUMode::kTeal:
      return "teal";
    case SwiGLUMode::kCats:
      return "cats";
    case SwiGLUMode::kDense:
      break;
  }
  return "dense";
}

namespace {

// (rows, cols) of a matrix given as (in, hidden) or transposed; names the layout in errors.
void expect_shape(const AnyConstMatrix& M, const char* name, size_t rows, size_t cols,
                  const char* layout, SwiGLUMode mode) {
  SF_CHECK_ARG(M.rows == rows && M.cols == cols,
               "%s: expected shape (%zu, %zu) = %s for mode '%s', got (%zu, %zu)", name, rows, cols,
               layout, swiglu_mode_name(mode), M.rows, M.cols);
}

}  // namespace

SwiGLUShape swiglu_shape(const SwiGLUWeights& w) {
  detail::check_weight(w.gate, "gate");
  detail::check_weight(w.up, "up");
  detail::check_weight(w.down, "down");
  SwiGLUShape s;
  if (w.mode == SwiGLUMode::kTeal) {
    s.in = w.gate.rows;
    s.hidden = w.gate.cols;
    s.out = w.down.cols;
    expect_shape(w.up, "up", s.in, s.hidden, "(in, hidden), transposed", w.mode);
    expect_shape(w.down, "down", s.hidden, s.out, "(hidden, out), transposed", w.mode);
  } else {
    s.hidden = w.gate.rows;
    s.in = w.gate.cols;
    expect_shape(w.up, "up", s.hidden, s.in, "(hidden, in)", w.mode);
    if (w.mode == SwiGLUMode::kCats) {
      s.out = w.down.cols;
      expect_shape(w.down, "down", s.hidden, s.out, "(hidden, out), transposed", w.mode);
    } else {
      s.out = w.down.rows;
      expect_shape(w.down, "down", s.out, s.hidden, "(out, hidden)", w.mode);
    }
  }
  return s;
}

SwiGLUInfo swiglu(const SwiGLUWeights& w, const float* x, float t_x, float t_h, float* y,
                  int num_threads) {
  const SwiGLUShape s = swiglu_shape(w);
  check_x_y(x, y);
  detail::check_threshold(t_x, "t_x");
  detail::check_threshold(t_h, "t_h");
  SF_CHECK_ARG(w.mode == SwiGLUMode::kTeal || t_x == 0.0f,
               "t_x: thresholds x only in mode 'teal', got %g in mode '%s'",
               static_cast<double>(t_x), swiglu_mode_name(w.mode));
  SF_CHECK_ARG(w.mode != SwiGLUMode::kDense || t_h == 0.0f,
               "t_h: mode 'dense' takes no threshold, got %g", static_cast<double>(t_h));
  const DenseTable& kt = dense_table();
  const int gdt = static_cast<int>(w.gate.dtype), udt = static_cast<int>(w.up.dtype);
  const size_t gbytes = dtype_size(w.gate.dtype), ubytes = dtype_size(w.up.dtype);
  const size_t ffn_in_bytes = s.in * s.hidden * (gbytes + ubytes);
  std::vector<float> g(s.hidden), u(s.hidden);
  SwiGLUInfo info{s.in, s.in, s.hidden, s.hidden};

  if (w.mode == SwiGLUMode::kDense) {
    // g and u in one parallel region over hidden rows, then h, then down.
    parallel_for(s.hidden, detail::plan_threads(num_threads, ffn_in_bytes),
                 [&](size_t r0, size_t r1) {
                   kt.gemv[gdt](static_cast<const char*>(w.gate.data) + r0 * w.gate.stride * gbytes,
                                w.gate.stride, nullptr, r1 - r0, s.in, x, g.data() + r0);
                   kt.gemv[udt](static_cast<const char*>(w.up.data) + r0 * w.up.stride * ubytes,
                                w.up.stride, nullptr, r1 - r0, s.in, x, u.data() + r0);
                   for (size_t i = r0; i < r1; ++i) g[i] = silu(g[i]) * u[i];
                 });
    gemv(w.down, g.data(), y, num_threads);
    return info;
  }

  std::vector<uint32_t> hidx(s.hidden);
  std::vector<float> hcoef;
  size_t nh = 0;
  if (w.mode == SwiGLUMode::kTeal) {
    std::vector<uint32_t> xidx(s.in);
    const size_t nx = compact_active(x, s.in, t_x, xidx.data());
    std::vector<float> xcoef(nx);
    for (size_t a = 0; a < nx; ++a) xcoef[a] = x[xidx[a]];
    info.x_active = nx;
    // Gate and up over the same active rows; each thread owns a slice of hidden units and
    // finishes h = silu(g) * u on it.
    const size_t blocks = (s.hidden + 15) / 16;
    const int threads = detail::plan_threads(num_threads, nx * s.hidden * (gbytes + ubytes));
    parallel_for(blocks, threads, [&](size_t b0, size_t b1) {
      const size_t c0 = b0 * 16, c1 = std::min(s.hidden, b1 * 16);
      kt.axpy[gdt](w.gate.data, w.gate.stride, xidx.data(), nx, xcoef.data(), 1, g.data(), s.hidden,
                   c0, c1);
      kt.axpy[udt](w.up.data, w.up.stride, xidx.data(), nx, xcoef.data(), 1, u.data(), s.hidden, c0,
                   c1);
      for (size_t i = c0; i < c1; ++i) g[i] = silu(g[i]) * u[i];
    });
    nh = compact_active(g.data(), s.hidden, t_h, hidx.data());
    hcoef.resize(nh);
    for (size_t a = 0; a < nh; ++a) hcoef[a] = g[hidx[a]];
  } else {
    // CATS: a = silu(gate x) densely; |a| > t_h picks the rows of up and of down.
    parallel_for(s.hidden, detail::plan_threads(num_threads, s.hidden * s.in * gbytes),
                 [&](size_t r0, size_t r1) {
                   kt.gemv[gdt](static_cast<const char*>(w.gate.data) + r0 * w.gate.stride * gbytes,
                                w.gate.stride, nullptr, r1 - r0, s.in, x, g.data() + r0);
                   for (size_t i = r0; i < r1; ++i) g[i] = silu(g[i]);
                 });
    nh = compact_active(g.data(), s.hidden, t_h, hidx.data());
    parallel_for(
        nh, detail::plan_threads(num_threads, nh * s.in * ubytes), [&](size_t i0, size_t i1) {
          kt.gemv[udt](w.up.data, w.up.stride, hidx.data() + i0, i1 - i0, s.in, x, u.data());
        });
    hcoef.resize(nh);
    for (size_t a = 0; a < nh; ++a) hcoef[a] = g[hidx[a]] * u[hidx[a]];
  }
  info.h_active = nh;
  detail::axpy_columns(w.down, hidx.data(), nh, hcoef.data(), 1, y, s.out, num_threads);
  return info;
}

}  // namespace kernels
}  // namespace sparseforge
