// Dense and activation-sparse kernels against float64 references, on awkward shapes, every
// dtype, every SIMD level and 1/2/3 threads (bitwise equal across thread counts), with NaN-
// poisoned outputs that must be fully written; bad arguments throw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/simd/dense.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/kernels/activation.h"
#include "sparseforge/kernels/dense.h"
#include "testing/random.h"

namespace sparseforge {
namespace {

namespace sk = kernels;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<int> levels_here() {
  std::vector<int> out;
  for (int l = 0; l <= static_cast<int>(detected_simd_level()); ++l) out.push_back(l);
  return out;
}

// Restores the SIMD level at scope exit.
struct LevelGuard {
  SimdLevel before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

// A (rows x cols) weight of storage type T with a row stride of cols + pad, and its exact
// float values (fp16/bf16 convert exactly).
struct Weight {
  DType dtype;
  size_t rows, cols, stride;
  std::vector<uint8_t> bytes;
  std::vector<double> ref;  // rows x cols
  AnyConstMatrix view() const { return {dtype, bytes.data(), rows, cols, stride}; }
  double at(size_t r, size_t c) const { return ref[r * cols + c]; }
};

Weight make_weight(DType dt, size_t rows, size_t cols, uint64_t seed, size_t pad = 0) {
  Weight w{dt, rows, cols, cols + pad, {}, {}};
  const std::vector<float> v = testing::normal(rows * w.stride, seed);
  w.bytes.resize(rows * w.stride * dtype_size(dt));
  w.ref.resize(rows * cols);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = 0; c < w.stride; ++c) {
      const size_t i = r * w.stride + c;
      float f = v[i];
      if (dt == DType::kF16) {
        const Float16 h = f32_to_f16(f);
        std::memcpy(w.bytes.data() + i * 2, &h, 2);
        f = f16_to_f32(h);
      } else if (dt == DType::kBF16) {
        const BFloat16 b = f32_to_bf16(f);
        std::memcpy(w.bytes.data() + i * 2, &b, 2);
        f = bf16_to_f32(b);
      } else {
        std::memcpy(w.bytes.data() + i * 4, &f, 4);
      }
      if (c < cols) w.ref[r * cols + c] = f;
    }
  }
  return w;
}

// max |got - want| / max |want| (1 when want is all zero and got is not).
double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want[i]));
    den = std::max(den, std::fabs(want[i]));
  }
  if (den == 0) return num == 0 ? 0 : 1;
  return num / den;
}

bool all_finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float f) { return std::isfinite(f); });
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

const DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
constexpr double kTol = 1e-5;

// y = W x in float64 over the selected rows (all when rows is empty), masked x.
std::vector<double> ref_gemv(const Weight& W, const std::vector<float>& x) {
  std::vector<double> y(W.rows, 0.0);
  for (size_t r = 0; r < W.rows; ++r) {
    for (size_t c = 0; c < W.cols; ++c) y[r] += W.at(r, c) * x[c];
  }
  return y;
}

// y = Wt^T xm in float64 (Wt: in x out).
std::vector<double> ref_gemv_t(const Weight& Wt, const std::vector<float>& xm) {
  std::vector<double> y(Wt.cols, 0.0);
  for (size_t k = 0; k < Wt.rows; ++k) {
    if (xm[k] == 0.0f) continue;
    for (size_t c = 0; c < Wt.cols; ++c) y[c] += Wt.at(k, c) * xm[k];
  }
  return y;
}

std::vector<float> masked(const std::vector<float>& x, float t) {
  std::vector<float> m(x.size());
  for (size_t i = 0; i < x.size(); ++i) m[i] = std::fabs(x[i]) > t ? x[i] : 0.0f;
  return m;
}

TEST(Kernels, TablesExistForEveryLevel) {
  for (int level : levels_here()) {
    EXPECT_STREQ(sk::dense_table_for(level).name, simd_level_name(static_cast<SimdLevel>(level)));
  }
}

TEST(Kernels, GemvMatchesReferenceEveryLevelDtypeAndShape) {
  LevelGuard guard;
  std::vector<std::pair<size_t, size_t>> shapes;
  for (size_t n : {1, 2, 3, 5, 7, 8, 9, 15, 16, 17}) shapes.emplace_back(n, 17 - n + 1);
  for (size_t k : {1, 4, 8, 13, 16, 17, 31, 33}) shapes.emplace_back(5, k);
  shapes.emplace_back(43, 401);
  shapes.emplace_back(97, 1000);
  shapes.emplace_back(301, 257);
  for (int level : levels_here()) {
    set_simd_level(static_cast<SimdLevel>(level));
    for (DType dt : kDTypes) {
      for (auto [rows, cols] : shapes) {
        const Weight W = make_weight(dt, rows, cols, rows * 131 + cols, rows % 3);
        const std::vector<float> x = testing::normal(cols, cols + 5);
        const std::vector<double> want = ref_gemv(W, x);
        std::vector<float> y1(rows, kNaN);
        sk::gemv(W.view(), x.data(), y1.data(), 1);
        ASSERT_TRUE(all_finite(y1)) << rows << "x" << cols;
        EXPECT_LE(rel_err(y1, want), kTol) << level << " " << dtype_name(dt) << " " << rows;
        for (int threads : {2, 3}) {
          std::vector<float> yt(rows, kNaN);
          sk::gemv(W.view(), x.data(), yt.data(), threads);
          EXPECT_TRUE(same_bits(y1, yt)) << rows << "x" << cols << " threads " << threads;
        }
      }
    }
  }
}

TEST(Kernels, GemvLargeEnoughToSplitIsThreadInvariant) {
  // 600 x 700 fp32 = 1.6 MiB: several threads really run.
  const Weight W = make_weight(DType::kF32, 600, 701, 3);
  const std::vector<float> x = testing::normal(701, 4);
  std::vector<float> y1(600, kNaN), y2(600, kNaN), y5(600, kNaN);
  sk::gemv(W.view(), x.data(), y1.data(), 1);
  sk::gemv(W.view(), x.data(), y2.data(), 2);
  sk::gemv(W.view(), x.data(), y5.data(), 5);
  EXPECT_TRUE(same_bits(y1, y2));
  EXPECT_TRUE(same_bits(y1, y5));
  EXPECT_LE(rel_err(y1, ref_gemv(W, x)), kTol);
}

TEST(Kernels, GemmMatchesReferenceAndBatchOneIsGemv) {
  LevelGuard guard;
  for (int level : levels_here()) {
    set_simd_level(static_cast<SimdLevel>(level));
    for (DType dt : kDTypes) {
      for (size_t B : {1, 2, 3, 4, 5, 7, 8, 9, 16, 33}) {
        const std::pair<size_t, size_t> shapes[] = {{13, 17}, {130, 67}, {257, 129}};
        for (auto [rows, cols] : shapes) {
          const Weight W = make_weight(dt, rows, cols, B * 7 + rows, 1);
          const size_t ldx = cols + 3;
          const std::vector<float> X = testing::normal(B * ldx, B + cols);
          std::vector<float> Y(B * rows, kNaN), Y2(B * rows, kNaN);
          sk::gemm(W.view(), ConstMatrixView<float>(X.data(), B, cols, ldx),
                   MatrixView<float>(Y.data(), B, rows), 1);
          sk::gemm(W.view(), ConstMatrixView<float>(X.data(), B, cols, ldx),
                   MatrixView<float>(Y2.data(), B, rows), 2);
          ASSERT_TRUE(all_finite(Y));
          EXPECT_TRUE(same_bits(Y, Y2)) << "B=" << B;
          for (size_t b = 0; b < B; ++b) {
            const std::vector<float> xb(X.begin() + b * ldx, X.begin() + b * ldx + cols);
            const std::vector<float> yb(Y.begin() + b * rows, Y.begin() + (b + 1) * rows);
            EXPECT_LE(rel_err(yb, ref_gemv(W, xb)), kTol)
                << level << " " << dtype_name(dt) << " B=" << B << " b=" << b;
            if (B <= sk::kGemmDirectMaxBatch) {
              // The direct kernel's per-output arithmetic is gemv's.
              std::vector<float> g(rows, kNaN);
              sk::gemv(W.view(), xb.data(), g.data(), 1);
              EXPECT_TRUE(same_bits(g, yb)) << "B=" << B << " b=" << b;
            }
          }
        }
      }
    }
  }
}

TEST(Kernels, GemvRowsWritesSelectedRowsAndZeros) {
  LevelGuard guard;
  const Weight W = make_weight(DType::kBF16, 37, 45, 11);
  const std::vector<float> x = testing::normal(45, 12);
  const std::vector<double> full = ref_gemv(W, x);
  const std::vector<int64_t> list = {30, 2, 2, 36, 0, 17};  // unsorted, a duplicate
  const std::vector<int32_t> list32(list.begin(), list.end());
  std::vector<uint8_t> mask(37, 0);
  for (int64_t r : list) mask[static_cast<size_t>(r)] = 1;
  std::vector<double> want(37, 0.0);
  for (int64_t r : list) want[static_cast<size_t>(r)] = full[static_cast<size_t>(r)];
  for (int level : levels_here()) {
    set_simd_level(static_cast<SimdLevel>(level));
    std::vector<float> ya(37, kNaN), yb(37, kNaN), yc(37, kNaN);
    EXPECT_EQ(sk::gemv_rows(W.view(), x.data(), sk::IndexSet::list(list.data(), list.size()),
                            ya.data(), 1),
              5u);
    sk::gemv_rows(W.view(), x.data(), sk::IndexSet::list(list32.data(), list32.size()), yb.data(),
                  2);
    sk::gemv_rows(W.view(), x.data(), sk::IndexSet::mask(mask.data(), mask.size()), yc.data(), 3);
    EXPECT_LE(rel_err(ya, want), kTol);
    EXPECT_TRUE(same_bits(ya, yb));
    EXPECT_TRUE(same_bits(ya, yc));
    for (size_t r = 0; r < 37; ++r) {
      if (!mask[r]) {
        EXPECT_EQ(ya[r], 0.0f);
      }
    }
    // Selected rows equal the dense kernel's values bitwise.
    std::vector<float> dense(37);
    sk::gemv(W.view(), x.data(), dense.data(), 1);
    for (int64_t r : list) EXPECT_EQ(ya[static_cast<size_t>(r)], dense[static_cast<size_t>(r)]);
  }
  std::vector<float> y(37);
  EXPECT_EQ(sk::gemv_rows(W.view(), x.data(), sk::IndexSet::list(list.data(), 0), y.data(), 1), 0u);
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
  const int64_t bad[] = {3, 37};
  EXPECT_THROW(sk::gemv_rows(W.view(), x.data(), sk::IndexSet::list(bad, 2), y.data(), 1),
               InvalidArgument);
  const int32_t neg[] = {-1};
  EXPECT_THROW(sk::gemv_rows(W.view(), x.data(), sk::IndexSet::list(neg, 1), y.data(), 1),
               InvalidArgument);
  EXPECT_THROW(sk::gemv_rows(W.view(), x.data(), sk::IndexSet::mask(mask.data(), 36), y.data(), 1),
               InvalidArgument);
}

TEST(Kernels, SparseInputMatchesMaskedDense) {
  LevelGuard guard;
  for (int level : levels_here()) {
    set_simd_level(static_cast<SimdLevel>(level));
    for (DType dt : kDTypes) {
      const std::pair<size_t, size_t> shapes[] = {{1, 1},    {9, 17},     {17, 15},   {64, 33},
                                                  {401, 43}, {300, 1000}, {129, 4099}};
      for (auto [in, out] : shapes) {
        const Weight Wt = make_weight(dt, in, out, in * 3 + out, out % 2);
        const std::vector<float> x = testing::normal(in, in + 1);
        for (float t : {0.0f, 0.3f, 0.67f, 1.5f, std::numeric_limits<float>::infinity()}) {
          const std::vector<float> xm = masked(x, t);
          const size_t want_active = static_cast<size_t>(
              std::count_if(xm.begin(), xm.end(), [](float v) { return v != 0.0f; }));
          std::vector<float> y1(out, kNaN), y2(out, kNaN);
          const sk::SparseInputInfo info =
              sk::gemv_sparse_input(Wt.view(), x.data(), t, y1.data(), 1);
          sk::gemv_sparse_input(Wt.view(), x.data(), t, y2.data(), 2);
          EXPECT_EQ(info.active, want_active);
          EXPECT_EQ(info.in_features, in);
          ASSERT_TRUE(all_finite(y1));
          EXPECT_TRUE(same_bits(y1, y2)) << in << "x" << out << " t=" << t;
          EXPECT_LE(rel_err(y1, ref_gemv_t(Wt, xm)), kTol)
              << level << " " << dtype_name(dt) << " " << in << "x" << out << " t=" << t;
        }
      }
    }
  }
}

TEST(Kernels, SparseInputLargeIsThreadInvariantAndNaNPropagates) {
  const Weight Wt = make_weight(DType::kF16, 512, 1003, 21);
  std::vector<float> x = testing::normal(512, 22);
  std::vector<float> y1(1003, kNaN), y2(1003, kNaN), y3(1003, kNaN);
  sk::gemv_sparse_input(Wt.view(), x.data(), 0.5f, y1.data(), 1);
  sk::gemv_sparse_input(Wt.view(), x.data(), 0.5f, y2.data(), 2);
  sk::gemv_sparse_input(Wt.view(), x.data(), 0.5f, y3.data(), 3);
  EXPECT_TRUE(same_bits(y1, y2));
  EXPECT_TRUE(same_bits(y1, y3));
  x[100] = kNaN;  // a NaN input is active and propagates, as in the dense product
  const auto info = sk::gemv_sparse_input(Wt.view(), x.data(), 0.5f, y1.data(), 1);
  EXPECT_TRUE(std::all_of(y1.begin(), y1.end(), [](float v) { return std::isnan(v); }));
  EXPECT_GE(info.active, 1u);
}

TEST(Kernels, ActiveInputUsesExactlyTheSet) {
  const Weight Wt = make_weight(DType::kF32, 77, 130, 31);
  const std::vector<float> x = testing::normal(77, 32);
  const std::vector<int64_t> set = {76, 3, 40, 3, 0, 41};
  std::vector<float> xm(77, 0.0f);
  for (int64_t k : set) xm[static_cast<size_t>(k)] = x[static_cast<size_t>(k)];
  std::vector<float> y(130, kNaN), y2(130, kNaN);
  const auto info = sk::gemv_active_input(Wt.view(), x.data(),
                                          sk::IndexSet::list(set.data(), set.size()), y.data(), 1);
  EXPECT_EQ(info.active, 5u);
  EXPECT_LE(rel_err(y, ref_gemv_t(Wt, xm)), kTol);
  std::vector<uint8_t> mask(77, 0);
  for (int64_t k : set) mask[static_cast<size_t>(k)] = 1;
  sk::gemv_active_input(Wt.view(), x.data(), sk::IndexSet::mask(mask.data(), 77), y2.data(), 2);
  EXPECT_TRUE(same_bits(y, y2));
}

TEST(Kernels, GemmSparseInputUnionAndFallback) {
  LevelGuard guard;
  for (int level : levels_here()) {
    set_simd_level(static_cast<SimdLevel>(level));
    for (DType dt : {DType::kF32, DType::kBF16}) {
      for (size_t B : {1, 2, 3, 8, 9, 17}) {
        const size_t in = 203, out = 131;
        const Weight Wt = make_weight(dt, in, out, B + 40);
        const std::vector<float> X = testing::normal(B * in, B + 41);
        const float t = 1.2f;
        std::vector<uint8_t> any(in, 0);
        for (size_t b = 0; b < B; ++b) {
          for (size_t k = 0; k < in; ++k) any[k] |= std::fabs(X[b * in + k]) > t;
        }
        const size_t union_n = static_cast<size_t>(std::count(any.begin(), any.end(), 1));
        for (double min_gain : {1.0, std::numeric_limits<double>::infinity()}) {
          std::vector<float> Y1(B * out, kNaN), Y2(B * out, kNaN);
          const auto info =
              sk::gemm_sparse_input(Wt.view(), ConstMatrixView<float>(X.data(), B, in), t,
                                    MatrixView<float>(Y1.data(), B, out), min_gain, 1);
          sk::gemm_sparse_input(Wt.view(), ConstMatrixView<float>(X.data(), B, in), t,
                                MatrixView<float>(Y2.data(), B, out), min_gain, 2);
          EXPECT_EQ(info.active, union_n);
          EXPECT_EQ(info.dense_fallback, std::isinf(min_gain));
          ASSERT_TRUE(all_finite(Y1));
          EXPECT_TRUE(same_bits(Y1, Y2)) << "B=" << B;
          for (size_t b = 0; b < B; ++b) {
            const std::vector<float> xb(X.begin() + b * in, X.begin() + (b + 1) * in);
            const std::vector<float> yb(Y1.begin() + b * out, Y1.begin() + (b + 1) * out);
            EXPECT_LE(rel_err(yb, ref_gemv_t(Wt, masked(xb, t))), kTol)
                << level << " B=" << B << " b=" << b << " gain " << min_gain;
          }
        }
      }
    }
  }
}

TEST(Kernels, GemmSparseInputBatchOneEqualsGemv) {
  const Weight Wt = make_weight(DType::kF32, 250, 300, 51);
  const std::vector<float> x = testing::normal(250, 52);
  std::vector<float> a(300, kNaN), b(300, kNaN);
  sk::gemv_sparse_input(Wt.view(), x.data(), 0.4f, a.data(), 1);
  sk::gemm_sparse_input(Wt.view(), ConstMatrixView<float>(x.data(), 1, 250), 0.4f,
                        MatrixView<float>(b.data(), 1, 300), 1.1, 2);
  EXPECT_TRUE(same_bits(a, b));
}

// float64 SwiGLU references for the three modes (weights given in torch layouts).
double silu64(double g) { return g / (1.0 + std::exp(-g)); }

TEST(Kernels, SwiGLUModesMatchReference) {
  LevelGuard guard;
  const size_t in = 67, hidden = 150, out = 59;
  for (DType dt : kDTypes) {
    const Weight G = make_weight(dt, hidden, in, 61), U = make_weight(dt, hidden, in, 62);
    const Weight D = make_weight(dt, out, hidden, 63);
    // Transposed copies (exact: same stored values).
    auto transpose = [&](const Weight& W) {
      Weight T{W.dtype, W.cols, W.rows, W.rows, {}, {}};
      const size_t es = dtype_size(W.dtype);
      T.bytes.resize(W.rows * W.cols * es);
      T.ref.resize(W.rows * W.cols);
      for (size_t r = 0; r < W.rows; ++r) {
        for (size_t c = 0; c < W.cols; ++c) {
          std::memcpy(T.bytes.data() + (c * W.rows + r) * es,
                      W.bytes.data() + (r * W.stride + c) * es, es);
          T.ref[c * W.rows + r] = W.at(r, c);
        }
      }
      return T;
    };
    const Weight Gt = transpose(G), Ut = transpose(U), Dt = transpose(D);
    const std::vector<float> x = testing::normal(in, 64);
    const float t_x = 0.5f, t_h = 0.05f;
    for (int level : levels_here()) {
      set_simd_level(static_cast<SimdLevel>(level));
      for (sk::SwiGLUMode mode :
           {sk::SwiGLUMode::kDense, sk::SwiGLUMode::kTeal, sk::SwiGLUMode::kCats}) {
        sk::SwiGLUWeights w;
        w.mode = mode;
        if (mode == sk::SwiGLUMode::kTeal) {
          w.gate = Gt.view();
          w.up = Ut.view();
          w.down = Dt.view();
        } else {
          w.gate = G.view();
          w.up = U.view();
          w.down = mode == sk::SwiGLUMode::kCats ? Dt.view() : D.view();
        }
        const float tx = mode == sk::SwiGLUMode::kTeal ? t_x : 0.0f;
        const float th = mode == sk::SwiGLUMode::kDense ? 0.0f : t_h;
        // Reference.
        std::vector<float> xin = mode == sk::SwiGLUMode::kTeal ? masked(x, t_x) : x;
        std::vector<double> h(hidden);
        size_t h_active = 0;
        for (size_t i = 0; i < hidden; ++i) {
          double g = 0, u = 0;
          for (size_t k = 0; k < in; ++k) {
            g += G.at(i, k) * xin[k];
            u += U.at(i, k) * xin[k];
          }
          double hv = silu64(g) * u;
          if (mode == sk::SwiGLUMode::kTeal && !(std::fabs(hv) > th)) hv = 0;
          if (mode == sk::SwiGLUMode::kCats && !(std::fabs(silu64(g)) > th)) hv = 0;
          h[i] = hv;
          h_active += hv != 0 ? 1 : 0;
        }
        std::vector<double> want(out, 0.0);
        for (size_t o = 0; o < out; ++o) {
          for (size_t i = 0; i < hidden; ++i) want[o] += D.at(o, i) * h[i];
        }
        std::vector<float> y1(out, kNaN), y2(out, kNaN);
        const sk::SwiGLUInfo info = sk::swiglu(w, x.data(), tx, th, y1.data(), 1);
        sk::swiglu(w, x.data(), tx, th, y2.data(), 2);
        ASSERT_TRUE(all_finite(y1));
        EXPECT_TRUE(same_bits(y1, y2));
        // Thresholds sit on float32-computed values: a unit within rounding of t_h may
        // flip; with these data none does, and the relative error is then tiny.
        EXPECT_LE(rel_err(y1, want), 1e-4)
            << sk::swiglu_mode_name(mode) << " " << dtype_name(dt) << " level " << level;
        if (mode != sk::SwiGLUMode::kDense) {
          EXPECT_EQ(info.h_active, h_active);
        }
        EXPECT_EQ(info.hidden, hidden);
        EXPECT_EQ(info.in, in);
      }
    }
  }
}

TEST(Kernels, ReadProbeSumsTheBuffer) {
  const std::vector<float> v = testing::normal(300001, 71);
  double want = 0;
  for (float f : v) want += f;
  const float s1 = sk::read_probe(v.data(), v.size(), 1);
  const float s2 = sk::read_probe(v.data(), v.size(), 2);
  EXPECT_EQ(f32_bits(s1), f32_bits(s2));
  EXPECT_NEAR(s1, want, 1e-3 * std::sqrt(static_cast<double>(v.size())));
}

TEST(Kernels, BadArgumentsThrow) {
  const Weight W = make_weight(DType::kF32, 8, 16, 81);
  const std::vector<float> x(16, 1.0f);
  std::vector<float> y(16, 0.0f), Y(32, 0.0f);
  EXPECT_THROW(sk::gemv(AnyConstMatrix(DType::kF32, nullptr, 0, 0, 0), x.data(), y.data(), 1),
               InvalidArgument);
  EXPECT_THROW(sk::gemv(W.view(), nullptr, y.data(), 1), InvalidArgument);
  EXPECT_THROW(sk::gemm(W.view(), ConstMatrixView<float>(x.data(), 2, 8),
                        MatrixView<float>(Y.data(), 2, 8), 1),
               InvalidArgument);  // X has 8 columns, W 16
  EXPECT_THROW(sk::gemm(W.view(), ConstMatrixView<float>(Y.data(), 2, 16),
                        MatrixView<float>(Y.data(), 2, 9), 1),
               InvalidArgument);  // Y shape
  for (float t : {-1.0f, kNaN}) {
    EXPECT_THROW(sk::gemv_sparse_input(W.view(), x.data(), t, y.data(), 1), InvalidArgument);
  }
  EXPECT_THROW(sk::gemm_sparse_input(W.view(), ConstMatrixView<float>(Y.data(), 2, 8), 0.0f,
                                     MatrixView<float>(Y.data() + 16, 2, 8), 0.5, 1),
               InvalidArgument);  // min_gain < 1
  EXPECT_THROW(sk::parse_swiglu_mode("relu"), InvalidArgument);
  sk::SwiGLUWeights w;
  w.mode = sk::SwiGLUMode::kDense;
  w.gate = W.view();
  w.up = W.view();
  w.down = W.view();  // down must be (out, hidden=8)
  EXPECT_THROW(sk::swiglu_shape(w), InvalidArgument);
  w.down = AnyConstMatrix(DType::kF32, W.bytes.data(), 16, 8, 8);
  EXPECT_NO_THROW(sk::swiglu_shape(w));
  EXPECT_THROW(sk::swiglu(w, x.data(), 0.5f, 0.0f, y.data(), 1), InvalidArgument);  // t_x
  EXPECT_THROW(sk::swiglu(w, x.data(), 0.0f, 0.5f, y.data(), 1), InvalidArgument);  // t_h
}

}  // namespace
}  // namespace sparseforge
