// Wanda, SparseGPT, OBS, OBD and reconstruction against independent float64 formulas.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/error.h"
#include "sparseforge/prune/obs.h"
#include "sparseforge/prune/sparsegpt.h"
#include "sparseforge/prune/wanda.h"
#include "testing/oracle.h"
#include "testing/random.h"

namespace sparseforge {
namespace prune {
namespace {

using Mat = std::vector<double>;

// H = X^T X / T for correlated X (a random mixing), float64.
Mat make_hessian(size_t c, uint64_t seed, size_t dead = SIZE_MAX) {
  const size_t T = 4 * c + 16;
  const auto z = testing::normal(T * c, seed);
  const auto a = testing::normal(c * c, seed + 1, 0.5f);
  std::vector<double> x(T * c, 0.0);
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < c; ++j) {
      double s = z[t * c + j];
      for (size_t k = 0; k < c; ++k) s += z[t * c + k] * a[k * c + j];
      x[t * c + j] = j == dead ? 0.0 : s;
    }
  }
  Mat H(c * c, 0.0);
  for (size_t t = 0; t < T; ++t) {
    for (size_t i = 0; i < c; ++i) {
      for (size_t j = 0; j < c; ++j) H[i * c + j] += x[t * c + i] * x[t * c + j] / T;
    }
  }
  return H;
}

HessianView view(const Mat& H, size_t c) { return {H.data(), true, c, c}; }

// A direct float64 port of IST-DASLab/sparsegpt fasterprune (explicit inverse, then
// Cholesky of it), for comparison.
struct PortResult {
  Mat W;
  std::vector<uint8_t> keep;
  double loss = 0;
};
PortResult port_sparsegpt(std::vector<float> Wf, size_t r, size_t c, Mat H, double s, int pn,
                          int pm, size_t B) {
  Mat W(Wf.begin(), Wf.end());
  for (size_t j = 0; j < c; ++j) {
    if (H[j * c + j] == 0) {
      H[j * c + j] = 1;
      for (size_t i = 0; i < r; ++i) W[i * c + j] = 0;
    }
  }
  double md = 0;
  for (size_t j = 0; j < c; ++j) md += H[j * c + j];
  for (size_t j = 0; j < c; ++j) H[j * c + j] += 0.01 * md / c;
  // inverse by Gauss-Jordan, then upper Cholesky U with Hinv = U^T U
  Mat A = H, inv(c * c, 0.0);
  for (size_t i = 0; i < c; ++i) inv[i * c + i] = 1;
  for (size_t k = 0; k < c; ++k) {
    const double p = A[k * c + k];
    for (size_t j = 0; j < c; ++j) {
      A[k * c + j] /= p;
      inv[k * c + j] /= p;
    }
    for (size_t i = 0; i < c; ++i) {
      if (i == k) continue;
      const double f = A[i * c + k];
      for (size_t j = 0; j < c; ++j) {
        A[i * c + j] -= f * A[k * c + j];
        inv[i * c + j] -= f * inv[k * c + j];
      }
    }
  }
  Mat U(c * c, 0.0);  // upper Cholesky: inv = U^T U
  for (size_t i = 0; i < c; ++i) {
    double d = inv[i * c + i];
    for (size_t k = 0; k < i; ++k) d -= U[k * c + i] * U[k * c + i];
    U[i * c + i] = std::sqrt(d);
    for (size_t j = i + 1; j < c; ++j) {
      double v = inv[i * c + j];
      for (size_t k = 0; k < i; ++k) v -= U[k * c + i] * U[k * c + j];
      U[i * c + j] = v / U[i * c + i];
    }
  }
  PortResult out;
  out.keep.assign(r * c, 1);
  for (size_t i1 = 0; i1 < c; i1 += B) {
    const size_t i2 = std::min(c, i1 + B), bw = i2 - i1;
    if (pm == 0) {
      std::vector<double> sc;
      for (size_t i = 0; i < r; ++i) {
        for (size_t j = i1; j < i2; ++j)
          sc.push_back(W[i * c + j] * W[i * c + j] / (U[j * c + j] * U[j * c + j]));
      }
      std::vector<double> sorted = sc;
      std::sort(sorted.begin(), sorted.end());
      const double thr = sorted[static_cast<size_t>(std::floor(double(sc.size()) * s))];
      for (size_t i = 0; i < r; ++i) {
        for (size_t j = 0; j < bw; ++j) out.keep[i * c + i1 + j] = !(sc[i * bw + j] <= thr);
      }
    }
    Mat err(r * bw);
    for (size_t j = i1; j < i2; ++j) {
      for (size_t i = 0; i < r; ++i) {
        double* w = &W[i * c];
        if (pm && (j - i1) % pm == 0) {
          std::vector<std::pair<double, size_t>> g;
          for (int t = 0; t < pm; ++t)
            g.push_back(
                {w[j + t] * w[j + t] / (U[(j + t) * c + j + t] * U[(j + t) * c + j + t]), j + t});
          std::stable_sort(g.begin(), g.end(), [](auto a, auto b) { return a.first < b.first; });
          for (int t = 0; t < pm; ++t) out.keep[i * c + g[t].second] = t >= pn ? 1 : 0;
        }
        const double d = U[j * c + j], q = out.keep[i * c + j] ? w[j] : 0.0;
        out.loss += (w[j] - q) * (w[j] - q) / (d * d) / 2;
        const double e = (w[j] - q) / d;
        for (size_t k = j; k < i2; ++k) w[k] -= e * U[j * c + k];
        w[j] = q;
        err[i * bw + (j - i1)] = e;
      }
    }
    for (size_t i = 0; i < r; ++i) {
      for (size_t k = i2; k < c; ++k) {
        double acc = 0;
        for (size_t j = 0; j < bw; ++j) acc += err[i * bw + j] * U[(i1 + j) * c + k];
        W[i * c + k] -= acc;
      }
    }
  }
  out.W = W;
  return out;
}

TEST(SparseGPT, Float64MatchesDirectPortUnstructuredAndNM) {
  const size_t r = 24, c = 48;
  const Mat H = make_hessian(c, 1, /*dead=*/5);
  const auto W = testing::normal(r * c, 2);
  for (auto cfg : {std::tuple<int, int, size_t>{0, 0, 16}, {0, 0, 128}, {2, 4, 16}, {4, 8, 24}}) {
    const int pn = std::get<0>(cfg), pm = std::get<1>(cfg);
    const size_t B = std::get<2>(cfg);
    SparseGPTOptions o;
    o.sparsity = 0.5;
    o.pattern = pm ? NMPattern{pm - pn, pm} : NMPattern{0, 0};
    o.block_size = B;
    o.precision = Precision::kFloat64;
    std::vector<float> out(r * c);
    std::vector<uint8_t> keep(r * c);
    const SparseGPTResult res =
        sparsegpt(ConstMatrixView<float>(W.data(), r, c), view(H, c), o,
                  MatrixView<float>(out.data(), r, c), MaskView(keep.data(), r, c), 2);
    const PortResult ref = port_sparsegpt(W, r, c, H, 0.5, pn, pm, B);
    ASSERT_EQ(keep, ref.keep) << pn << ":" << pm << " B=" << B;
    for (size_t i = 0; i < r * c; ++i)
      ASSERT_NEAR(out[i], ref.W[i], 1e-5 * (1 + std::fabs(ref.W[i])));
    EXPECT_NEAR(res.loss, ref.loss, 1e-8 * ref.loss);
    EXPECT_EQ(res.dead_columns, 1u);
    for (size_t i = 0; i < r; ++i) EXPECT_EQ(out[i * c + 5], 0.0f);
  }
}

TEST(SparseGPT, IdenticalForAnyThreadCountBothPrecisions) {
  const size_t r = 200, c = 96;  // several 64-row chunks
  const Mat H = make_hessian(c, 3);
  const auto W = testing::normal(r * c, 4);
  for (Precision p : {Precision::kFloat32, Precision::kFloat64}) {
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 3}) {
      SparseGPTOptions o;
      o.precision = p;
      o.block_size = 32;
      std::vector<float> out(r * c);
      std::vector<uint8_t> keep(r * c);
      sparsegpt(ConstMatrixView<float>(W.data(), r, c), view(H, c), o,
                MatrixView<float>(out.data(), r, c), MaskView(keep.data(), r, c), threads);
      outs.push_back(out);
    }
    EXPECT_EQ(outs[1], outs[0]);
    EXPECT_EQ(outs[2], outs[0]);
  }
}

// A LayerStats read in place (lower triangle / tokens) and a shared factor give the bits of
// the copied full Hessian; the reconstruction error matches its float64 definition.
TEST(SparseGPT, StatsInPlaceAndSharedFactorAreBitwiseTheCopy) {
  const size_t c = 72, T = 300;
  const auto X = testing::normal(T * c, 21);
  calib::LayerStats st(c, true);
  st.update(ConstMatrixView<float>(X.data(), T / 2, c), 1);
  st.update(ConstMatrixView<float>(X.data() + (T / 2) * c, T - T / 2, c), 1);
  Mat H(c * c);
  st.hessian(H.data());
  const HessianView in_place = hessian_view(st);
  for (size_t i = 0; i < c; ++i) {
    for (size_t j = 0; j < c; ++j) ASSERT_EQ(in_place.at(i, j), H[i * c + j]);
  }
  SparseGPTOptions o;
  o.block_size = 32;
  const HessianFactor f =
      factor_hessian(in_place, o.percdamp, o.max_percdamp, o.factor_precision, o.precision, 2);
  for (size_t r : {17, 64, 100}) {
    const auto W = testing::normal(r * c, 22 + r);
    std::vector<float> a(r * c), b(r * c), d(r * c);
    std::vector<uint8_t> ka(r * c), kb(r * c), kd(r * c);
    const ConstMatrixView<float> Wv(W.data(), r, c);
    sparsegpt(Wv, view(H, c), o, MatrixView<float>(a.data(), r, c), MaskView(ka.data(), r, c), 1);
    sparsegpt(Wv, in_place, o, MatrixView<float>(b.data(), r, c), MaskView(kb.data(), r, c), 2);
    sparsegpt(Wv, f, o, MatrixView<float>(d.data(), r, c), MaskView(kd.data(), r, c), 3);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a, d);
    EXPECT_EQ(ka, kb);
    EXPECT_EQ(ka, kd);
    // tr(D H D^T) / tr(W H W^T) in float64, straight from the definition
    double num = 0, den = 0;
    for (size_t i = 0; i < r; ++i) {
      for (size_t p = 0; p < c; ++p) {
        for (size_t q = 0; q < c; ++q) {
          const double dp = double(W[i * c + p]) - a[i * c + p];
          const double dq = double(W[i * c + q]) - a[i * c + q];
          num += dp * H[p * c + q] * dq;
          den += double(W[i * c + p]) * H[p * c + q] * double(W[i * c + q]);
        }
      }
    }
    const ConstMatrixView<float> Av(a.data(), r, c);
    const double e1 = reconstruction_error(Wv, Av, in_place, 1);
    EXPECT_NEAR(e1, num / den, 1e-12 * (num / den));
    EXPECT_EQ(e1, reconstruction_error(Wv, Av, in_place, 3));
  }
  calib::LayerStats empty(c, true);
  EXPECT_THROW(hessian_view(empty), InvalidArgument);
  const auto W = testing::normal(4 * 8, 1);
  std::vector<float> out(4 * 8);
  std::vector<uint8_t> keep(4 * 8);
  EXPECT_THROW(sparsegpt(ConstMatrixView<float>(W.data(), 4, 8), f, o,
                         MatrixView<float>(out.data(), 4, 8), MaskView(keep.data(), 4, 8), 1),
               InvalidArgument);
}

TEST(SparseGPT, DampingEscalatesThenRaises) {
  const size_t c = 12, r = 4;
  // H = I - 1.3 v v^T with unit v: eigenvalues 1 and -0.3, mean diagonal 1 - 1.3/c. Damping
  // 0.01 and 0.1 of the mean diagonal do not lift -0.3; 1.0 does.
  Mat H(c * c, 0.0);
  for (size_t i = 0; i < c; ++i) {
    for (size_t j = 0; j < c; ++j) H[i * c + j] = (i == j ? 1.0 : 0.0) - 1.3 / c;
  }
  const auto W = testing::normal(r * c, 6);
  std::vector<float> out(r * c);
  std::vector<uint8_t> keep(r * c);
  SparseGPTOptions o;
  const SparseGPTResult res =
      sparsegpt(ConstMatrixView<float>(W.data(), r, c), view(H, c), o,
                MatrixView<float>(out.data(), r, c), MaskView(keep.data(), r, c), 1);
  EXPECT_GT(res.percdamp_used, 0.01);  // 0.01 and 0.1 fail; 1.0 works
  EXPECT_EQ(res.attempts, 3);
  o.max_percdamp = 0.1;
  try {
    sparsegpt(ConstMatrixView<float>(W.data(), r, c), view(H, c), o,
              MatrixView<float>(out.data(), r, c), MaskView(keep.data(), r, c), 1);
    FAIL() << "no NumericalError";
  } catch (const NumericalError& e) {
    EXPECT_NE(std::string(e.what()).find("percdamp=0.1"), std::string::npos) << e.what();
  }
}

TEST(SparseGPT, BadInput) {
  const size_t c = 8, r = 2;
  Mat H = make_hessian(c, 7);
  std::vector<float> W(r * c, 1.0f), out(r * c);
  std::vector<uint8_t> keep(r * c);
  auto run = [&](const Mat& h, SparseGPTOptions o) {
    sparsegpt(ConstMatrixView<float>(W.data(), r, c), view(h, c), o,
              MatrixView<float>(out.data(), r, c), MaskView(keep.data(), r, c), 1);
  };
  SparseGPTOptions o;
  Mat zero(c * c, 0.0), asym = H, nan = H, neg = H;
  asym[1] += 1.0;
  nan[9] = std::nan("");
  neg[0] = -1.0;
  EXPECT_THROW(run(zero, o), InvalidArgument);
  EXPECT_THROW(run(asym, o), InvalidArgument);
  EXPECT_THROW(run(nan, o), InvalidArgument);
  EXPECT_THROW(run(neg, o), InvalidArgument);
  o.block_size = 0;
  EXPECT_THROW(run(H, o), InvalidArgument);
  o.block_size = 6;
  o.pattern = {2, 4};
  EXPECT_THROW(run(H, o), InvalidArgument);  // block not a multiple of m
  o = SparseGPTOptions();
  o.sparsity = 1.0;
  EXPECT_THROW(run(H, o), InvalidArgument);
  W[3] = INFINITY;
  EXPECT_THROW(run(H, SparseGPTOptions()), InvalidArgument);
}

TEST(OBS, OneRowClosedForm) {
  // 1 row, 3 inputs, H known: OBS prunes argmin w_q^2 / [H^-1]_qq and moves the others by
  // -w_q / [H^-1]_qq * H^-1[:, q]; with percdamp 0 the result is exact.
  const Mat H = {4, 1, 0, 1, 3, 1, 0, 1, 2};
  // H^-1 = adj / det, det = 4*(6-1) - 1*(2-0) + 0 = 18
  const Mat Hinv = {5.0 / 18,  -2.0 / 18, 1.0 / 18,  -2.0 / 18, 8.0 / 18,
                    -4.0 / 18, 1.0 / 18,  -4.0 / 18, 11.0 / 18};
  const std::vector<float> w = {1.0f, -0.5f, 0.8f};
  size_t q = 0;
  double best = 1e300;
  for (size_t j = 0; j < 3; ++j) {
    const double s = double(w[j]) * w[j] / Hinv[j * 3 + j];
    if (s < best) best = s, q = j;
  }
  std::vector<double> expect(3);
  for (size_t j = 0; j < 3; ++j) expect[j] = w[j] - w[q] / Hinv[q * 3 + q] * Hinv[j * 3 + q];
  std::vector<float> out(3);
  std::vector<uint8_t> keep(3);
  const ObsResult res =
      obs(ConstMatrixView<float>(w.data(), 1, 3), view(H, 3), 1.0 / 3.0, NMPattern{0, 0}, 0.0, 1.0,
          MatrixView<float>(out.data(), 1, 3), MaskView(keep.data(), 1, 3), 1);
  EXPECT_EQ(keep[q], 0);
  for (size_t j = 0; j < 3; ++j) EXPECT_NEAR(out[j], j == q ? 0.0 : expect[j], 1e-6);
  EXPECT_NEAR(res.loss, best / 2, 1e-9);
}

TEST(OBS, ReconstructExactSolvesTheNormalEquations) {
  const size_t c = 10, r = 3;
  const Mat H = make_hessian(c, 8);
  const auto W = testing::normal(r * c, 9);
  std::vector<uint8_t> keep(r * c);
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i * 7) % 3 != 0;
  std::vector<float> out(r * c);
  reconstruct_exact(ConstMatrixView<float>(W.data(), r, c), view(H, c),
                    ConstMaskView(keep.data(), r, c), 0.0, MatrixView<float>(out.data(), r, c), 2);
  // Optimality: the gradient H (w_hat - w) vanishes on the kept coordinates.
  for (size_t i = 0; i < r; ++i) {
    for (size_t a = 0; a < c; ++a) {
      if (!keep[i * c + a]) {
        EXPECT_EQ(out[i * c + a], 0.0f);
        continue;
      }
      double g = 0, scale = 0;
      for (size_t b = 0; b < c; ++b) {
        g += H[a * c + b] * (double(out[i * c + b]) - W[i * c + b]);
        scale += std::fabs(H[a * c + b] * W[i * c + b]);
      }
      EXPECT_LT(std::fabs(g), 1e-5 * scale) << i << " " << a;
    }
  }
}

TEST(Wanda, ScoresPerRowWithIndexTies) {
  // Row 0 would lose different weights under a per-layer comparison.
  const std::vector<float> W = {1, -2, 3, 4, 10, 20, -30, 40};
  const std::vector<float> norms = {1, 1, 0.1f, 1};
  std::vector<uint8_t> keep(8);
  wanda_mask(ConstMatrixView<float>(W.data(), 2, 4), norms.data(), 0.5, MaskView(keep.data(), 2, 4),
             1);
  // scores row 0: 1, 2, 0.3, 4 -> prune cols 2, 0; row 1: 10, 20, 3, 40 -> prune 2, 0
  EXPECT_EQ(keep, (std::vector<uint8_t>{0, 1, 0, 1, 0, 1, 0, 1}));
  const std::vector<float> tied = {1, 1, 1, 1};
  const std::vector<float> ones(4, 1.0f);
  std::vector<uint8_t> k1(4);
  wanda_mask(ConstMatrixView<float>(tied.data(), 1, 4), ones.data(), 0.5, MaskView(k1.data(), 1, 4),
             1);
  EXPECT_EQ(k1, (std::vector<uint8_t>{0, 0, 1, 1}));  // lower index pruned first
  std::vector<float> bad = norms;
  bad[1] = -1.0f;
  EXPECT_THROW(wanda_mask(ConstMatrixView<float>(W.data(), 2, 4), bad.data(), 0.5,
                          MaskView(keep.data(), 2, 4), 1),
               InvalidArgument);
}

TEST(Wanda, VariantHitsTheTargetAndMatchesItsDefinition) {
  const size_t r = 16, c = 64;
  const auto W = testing::small_ints(r * c, 10, 9);
  std::vector<float> norms(c);
  for (size_t j = 0; j < c; ++j) norms[j] = 1.0f + static_cast<float>(j % 5);
  std::vector<uint8_t> keep(r * c);
  const WandaVariantInfo info = wanda_variant_mask(
      ConstMatrixView<float>(W.data(), r, c), norms.data(), 0.5, MaskView(keep.data(), r, c), 2);
  size_t pruned = 0;
  for (uint8_t k : keep) pruned += !k;
  EXPECT_NEAR(double(pruned) / (r * c), info.sparsity, 1e-12);
  EXPECT_GE(info.iterations, 1);
  // Each row: pruned = scores <= thr, where thr is the largest sorted score whose prefix sum
  // stays within alpha times the row total.
  for (size_t i = 0; i < r; ++i) {
    std::vector<double> s(c);
    for (size_t j = 0; j < c; ++j) s[j] = std::fabs(W[i * c + j]) * norms[j];
    std::vector<double> v = s;
    std::sort(v.begin(), v.end());
    const double total = std::accumulate(v.begin(), v.end(), 0.0);
    double acc = 0, thr = -1;
    for (double x : v) {
      acc += x;
      if (acc <= info.alpha * total) thr = x;
    }
    for (size_t j = 0; j < c; ++j) EXPECT_EQ(keep[i * c + j], thr < 0 ? 1 : !(s[j] <= thr));
  }
}

}  // namespace
}  // namespace prune
}  // namespace sparseforge
