// Forward ops (RMSNorm, RoPE, causal GQA attention, decode attention, SwiGLU gate) against
// float64 references written from the formulas, on awkward sizes, with 1 and 2 threads
// (bitwise equal); bad arguments throw InvalidArgument.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"
#include "sparseforge/models/ops.h"
#include "testing/random.h"

namespace sparseforge {
namespace {

namespace sm = models;

// Every SIMD level this CPU runs; the attention kernel is dispatched per level.
std::vector<SimdLevel> levels_here() {
  std::vector<SimdLevel> out;
  for (int l = 0; l <= static_cast<int>(detected_simd_level()); ++l) {
    out.push_back(static_cast<SimdLevel>(l));
  }
  return out;
}

// Restores the SIMD level at scope exit.
struct LevelGuard {
  SimdLevel before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// ---------------------------------------------------------------------------------------
// References (float64)

std::vector<double> ref_rms_norm(const std::vector<float>& x, const std::vector<float>& w, size_t T,
                                 size_t n, double eps) {
  std::vector<double> y(T * n);
  for (size_t t = 0; t < T; ++t) {
    double ss = 0;
    for (size_t c = 0; c < n; ++c) ss += double(x[t * n + c]) * x[t * n + c];
    const double inv = 1.0 / std::sqrt(ss / double(n) + eps);
    for (size_t c = 0; c < n; ++c) y[t * n + c] = w[c] * x[t * n + c] * inv;
  }
  return y;
}

// RoPE as a rotation of complex numbers (interleaved) or of the two halves (half).
std::vector<double> ref_rope(const std::vector<float>& x, size_t T, size_t H, size_t D,
                             const std::vector<int64_t>& pos, double theta, bool half) {
  std::vector<double> y(x.begin(), x.end());
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < H; ++h) {
      for (size_t i = 0; i < D / 2; ++i) {
        const double ang = double(pos[t]) / std::pow(theta, 2.0 * double(i) / double(D));
        const size_t a = t * H * D + h * D + (half ? i : 2 * i);
        const size_t b = a + (half ? D / 2 : 1);
        y[a] = x[a] * std::cos(ang) - x[b] * std::sin(ang);
        y[b] = x[a] * std::sin(ang) + x[b] * std::cos(ang);
      }
    }
  }
  return y;
}

// Softmax attention with an explicit -inf mask over every key, float64.
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, size_t T, size_t S, size_t Hq,
                                  size_t Hkv, size_t D, size_t window = 0) {
  std::vector<double> out(T * Hq * D, 0.0);
  const double scale = 1.0 / std::sqrt(double(D));
  for (size_t t = 0; t < T; ++t) {
    for (size_t h = 0; h < Hq; ++h) {
      const size_t g = h / (Hq / Hkv);
      std::vector<double> s(S);
      double m = -INFINITY;
      for (size_t j = 0; j < S; ++j) {
        double dot = 0;
        for (size_t d = 0; d < D; ++d)
          dot += double(q[(t * Hq + h) * D + d]) * k[(j * Hkv + g) * D + d];
        const size_t pos = S - T + t;
        const bool seen = j <= pos && (window == 0 || j + window > pos);
        s[j] = seen ? dot * scale : -INFINITY;
        m = std::max(m, s[j]);
      }
      double z = 0;
      for (size_t j = 0; j < S; ++j) z += std::exp(s[j] - m);
      for (size_t j = 0; j < S; ++j) {
        const double p = std::exp(s[j] - m) / z;
        for (size_t d = 0; d < D; ++d) out[(t * Hq + h) * D + d] += p * v[(j * Hkv + g) * D + d];
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------

TEST(ModelsOps, RmsNormMatchesReferenceAndIsThreadInvariant) {
  for (size_t T : {1u, 3u, 17u, 1030u}) {  // 1030 x 577: enough work for 2 threads
    for (size_t n : {1u, 7u, 64u, 577u}) {
      const std::vector<float> x = testing::normal(T * n, 11 + T * n, 3.0f);
      const std::vector<float> w = testing::normal(n, 5 + n);
      std::vector<float> y1(T * n), y2(T * n);
      sm::rms_norm({x.data(), T, n}, w.data(), 1e-5f, {y1.data(), T, n}, 1);
      sm::rms_norm({x.data(), T, n}, w.data(), 1e-5f, {y2.data(), T, n}, 2);
      EXPECT_EQ(y1, y2) << T << "x" << n;
      const std::vector<double> ref = ref_rms_norm(x, w, T, n, 1e-5);
      EXPECT_LT(max_abs_diff(y1, ref), 2e-5) << T << "x" << n;
      std::vector<float> inplace = x;  // aliasing out == x is allowed
      sm::rms_norm({inplace.data(), T, n}, w.data(), 1e-5f, {inplace.data(), T, n}, 2);
      EXPECT_EQ(inplace, y1);
    }
  }
}

TEST(ModelsOps, RopeBothStylesMatchReference) {
  const size_t H = 3;
  for (size_t D : {2u, 8u, 64u}) {
    for (size_t T : {1u, 5u, 37u, 3000u}) {  // 3000 x 3 x 64: 2 threads
      std::vector<int64_t> pos(T);
      for (size_t t = 0; t < T; ++t) pos[t] = int64_t(3 * t + 7);  // explicit, not 0..T-1
      const std::vector<float> x = testing::normal(T * H * D, 100 + D + T);
      for (auto style : {sm::RopeStyle::kInterleaved, sm::RopeStyle::kHalf}) {
        std::vector<float> y1 = x, y2 = x;
        sm::rope({y1.data(), T, H * D}, H, D, pos.data(), 10000.0, style, 1);
        sm::rope({y2.data(), T, H * D}, H, D, pos.data(), 10000.0, style, 2);
        EXPECT_EQ(y1, y2);
        const auto ref = ref_rope(x, T, H, D, pos, 10000.0, style == sm::RopeStyle::kHalf);
        EXPECT_LT(max_abs_diff(y1, ref), 1e-5) << sm::rope_style_name(style) << " D=" << D;
      }
    }
  }
}

TEST(ModelsOps, RopePositionZeroIsIdentity) {
  const std::vector<float> x = testing::normal(2 * 16, 3);
  std::vector<float> y = x;
  const std::vector<int64_t> pos = {0};
  sm::rope({y.data(), 1, 16}, 2, 8, pos.data(), 500000.0, sm::RopeStyle::kHalf, 1);
  for (size_t i = 0; i < 16; ++i) EXPECT_EQ(y[i], x[i]);
}

TEST(ModelsOps, CausalAttentionMatchesReferenceGqaAndMha) {
  LevelGuard guard;
  for (SimdLevel level : levels_here()) {
    set_simd_level(level);
    SCOPED_TRACE(simd_level_name(level));
    struct Case {
      size_t T, S, Hq, Hkv, D;
    };
    for (const Case& c : {Case{1, 1, 2, 1, 8}, Case{5, 5, 4, 2, 8}, Case{37, 37, 4, 4, 5},
                          Case{70, 70, 6, 3, 16}, Case{3, 40, 4, 2, 8}, Case{33, 33, 2, 1, 64},
                          Case{300, 300, 4, 2, 16}}) {  // the last: 2 threads
      const auto q = testing::normal(c.T * c.Hq * c.D, 1 + c.T, 2.0f);
      const auto k = testing::normal(c.S * c.Hkv * c.D, 2 + c.S, 2.0f);
      const auto v = testing::normal(c.S * c.Hkv * c.D, 3 + c.S);
      const sm::AttentionShape shape{c.Hq, c.Hkv, c.D};
      const float scale = 1.0f / std::sqrt(float(c.D));
      std::vector<float> o1(c.T * c.Hq * c.D, NAN), o2(o1.size(), NAN);
      sm::causal_attention({q.data(), c.T, c.Hq * c.D}, {k.data(), c.S, c.Hkv * c.D},
                           {v.data(), c.S, c.Hkv * c.D}, shape, scale, {o1.data(), c.T, c.Hq * c.D},
                           1);
      sm::causal_attention({q.data(), c.T, c.Hq * c.D}, {k.data(), c.S, c.Hkv * c.D},
                           {v.data(), c.S, c.Hkv * c.D}, shape, scale, {o2.data(), c.T, c.Hq * c.D},
                           2);
      EXPECT_EQ(o1, o2);
      const auto ref = ref_attention(q, k, v, c.T, c.S, c.Hq, c.Hkv, c.D);
      EXPECT_LT(max_abs_diff(o1, ref), 2e-5) << "T=" << c.T << " S=" << c.S << " D=" << c.D;
    }
  }
}

TEST(ModelsOps, CausalAttentionIgnoresFutureKeys) {
  // Changing keys/values after position t must not change query t's output.
  const size_t T = 9, H = 2, D = 4;
  const auto q = testing::normal(T * H * D, 1);
  auto k = testing::normal(T * H * D, 2);
  auto v = testing::normal(T * H * D, 3);
  std::vector<float> a(T * H * D), b(T * H * D);
  const sm::AttentionShape shape{H, H, D};
  sm::causal_attention({q.data(), T, H * D}, {k.data(), T, H * D}, {v.data(), T, H * D}, shape,
                       0.5f, {a.data(), T, H * D}, 1);
  for (size_t i = 5 * H * D; i < T * H * D; ++i) k[i] += 100.0f, v[i] -= 50.0f;
  sm::causal_attention({q.data(), T, H * D}, {k.data(), T, H * D}, {v.data(), T, H * D}, shape,
                       0.5f, {b.data(), T, H * D}, 1);
  for (size_t i = 0; i < 5 * H * D; ++i) EXPECT_EQ(a[i], b[i]) << i;
  EXPECT_NE(a[5 * H * D], b[5 * H * D]);
}

TEST(ModelsOps, SoftmaxIsStableForHugeScores) {
  const size_t T = 4, D = 2;
  std::vector<float> q(T * D, 1e4f), k(T * D, 1e4f), v = testing::normal(T * D, 9);
  std::vector<float> o(T * D);
  sm::causal_attention({q.data(), T, D}, {k.data(), T, D}, {v.data(), T, D}, {1, 1, D}, 1.0f,
                       {o.data(), T, D}, 1);
  for (float x : o) EXPECT_TRUE(std::isfinite(x));
  // Equal scores: the mean of the visible values.
  EXPECT_NEAR(o[3 * D], (v[0] + v[2] + v[4] + v[6]) / 4.0f, 1e-6);
}

TEST(ModelsOps, DecodeAttentionEqualsLastRowOfCausal) {
  LevelGuard guard;
  for (SimdLevel level : levels_here()) {
    set_simd_level(level);
    SCOPED_TRACE(simd_level_name(level));
    const size_t S = 1100, cap = 1200, Hq = 8, Hkv = 2, D = 64;  // 2 threads
    const auto q = testing::normal(S * Hq * D, 4);
    auto kc = testing::normal(cap * Hkv * D, 5);  // rows >= S are garbage the call must skip
    auto vc = testing::normal(cap * Hkv * D, 6);
    const sm::AttentionShape shape{Hq, Hkv, D};
    const float scale = 1.0f / std::sqrt(float(D));
    std::vector<float> full(S * Hq * D);
    sm::causal_attention({q.data(), S, Hq * D}, {kc.data(), S, Hkv * D}, {vc.data(), S, Hkv * D},
                         shape, scale, {full.data(), S, Hq * D}, 2);
    for (size_t t : {size_t{0}, size_t{5}, size_t{7}, size_t{34}, size_t{530}, S - 2, S - 1}) {
      std::vector<float> o1(Hq * D), o2(Hq * D);
      sm::decode_attention(q.data() + t * Hq * D, {kc.data(), cap, Hkv * D},
                           {vc.data(), cap, Hkv * D}, t + 1, shape, scale, o1.data(), 1);
      sm::decode_attention(q.data() + t * Hq * D, {kc.data(), cap, Hkv * D},
                           {vc.data(), cap, Hkv * D}, t + 1, shape, scale, o2.data(), 2);
      EXPECT_EQ(o1, o2);
      for (size_t i = 0; i < Hq * D; ++i) EXPECT_EQ(o1[i], full[t * Hq * D + i]) << t << " " << i;
    }
  }
}

TEST(ModelsOps, SwigluGate) {
  const size_t T = 1200, n = 450;  // enough work for 2 threads
  const auto g = testing::normal(T * n, 1, 4.0f);
  const auto u = testing::normal(T * n, 2);
  std::vector<float> y1(T * n), y2(T * n);
  sm::swiglu_gate({g.data(), T, n}, {u.data(), T, n}, {y1.data(), T, n}, 1);
  sm::swiglu_gate({g.data(), T, n}, {u.data(), T, n}, {y2.data(), T, n}, 2);
  EXPECT_EQ(y1, y2);
  for (size_t i = 0; i < T * n; ++i) {
    const double ref = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    EXPECT_NEAR(y1[i], ref, 1e-6 * (1.0 + std::fabs(ref)));
  }
}

TEST(ModelsOps, SlidingWindowMatchesReferenceAndDecode) {
  // Each query attends its last `window` keys (Mistral, Gemma 3's local layers): against
  // the float64 reference, 1 and 2 threads bitwise, and decode equal to prefill's rows.
  LevelGuard guard;
  for (SimdLevel level : levels_here()) {
    set_simd_level(level);
    SCOPED_TRACE(simd_level_name(level));
    const size_t T = 45, S = 45, Hq = 4, Hkv = 2, D = 16;
    const auto q = testing::normal(T * Hq * D, 11, 2.0f);
    const auto k = testing::normal(S * Hkv * D, 12, 2.0f);
    const auto v = testing::normal(S * Hkv * D, 13);
    const sm::AttentionShape shape{Hq, Hkv, D};
    const float scale = 1.0f / std::sqrt(float(D));
    for (size_t window : {size_t{1}, size_t{7}, size_t{16}, size_t{17}, size_t{44}, size_t{45}}) {
      std::vector<float> o1(T * Hq * D, NAN), o2(o1.size(), NAN);
      sm::causal_attention({q.data(), T, Hq * D}, {k.data(), S, Hkv * D}, {v.data(), S, Hkv * D},
                           shape, scale, {o1.data(), T, Hq * D}, 1, window);
      sm::causal_attention({q.data(), T, Hq * D}, {k.data(), S, Hkv * D}, {v.data(), S, Hkv * D},
                           shape, scale, {o2.data(), T, Hq * D}, 2, window);
      EXPECT_EQ(o1, o2);
      const auto ref = ref_attention(q, k, v, T, S, Hq, Hkv, D, window);
      EXPECT_LT(max_abs_diff(o1, ref), 2e-5) << "window=" << window;
      for (size_t t : {size_t{0}, size_t{6}, size_t{7}, size_t{30}, T - 1}) {
        std::vector<float> o(Hq * D);
        sm::decode_attention(q.data() + t * Hq * D, {k.data(), S, Hkv * D}, {v.data(), S, Hkv * D},
                             t + 1, shape, scale, o.data(), 1, window);
        for (size_t i = 0; i < Hq * D; ++i) EXPECT_EQ(o[i], o1[t * Hq * D + i]) << t << " " << i;
      }
    }
  }
}

TEST(ModelsOps, GegluGate) {
  const size_t T = 300, n = 70;
  const auto g = testing::normal(T * n, 3, 3.0f);
  const auto u = testing::normal(T * n, 4);
  std::vector<float> y(T * n);
  sm::geglu_gate({g.data(), T, n}, {u.data(), T, n}, {y.data(), T, n}, 1);
  for (size_t i = 0; i < T * n; ++i) {
    const double x = g[i];
    const double ref =
        0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))) * u[i];
    EXPECT_NEAR(y[i], ref, 2e-6 * (1.0 + std::fabs(ref)));
  }
}

TEST(ModelsOps, BadArgumentsThrow) {
  std::vector<float> x(4 * 8, 1.0f), y(4 * 8), w(8, 1.0f);
  std::vector<int64_t> pos = {0, 1, 2, -1};
  EXPECT_THROW(sm::rms_norm({x.data(), 4, 8}, w.data(), -1.0f, {y.data(), 4, 8}, 1),
               InvalidArgument);
  EXPECT_THROW(sm::rms_norm({x.data(), 4, 8}, w.data(), 1e-5f, {y.data(), 4, 7}, 1),
               InvalidArgument);
  EXPECT_THROW(sm::rope({x.data(), 4, 8}, 2, 4, pos.data(), 1e4, sm::RopeStyle::kHalf, 1),
               InvalidArgument);  // negative position
  pos[3] = 3;
  EXPECT_THROW(sm::rope({x.data(), 4, 8}, 3, 4, pos.data(), 1e4, sm::RopeStyle::kHalf, 1),
               InvalidArgument);  // 3 * 4 != 8
  EXPECT_THROW(sm::rope({x.data(), 4, 8}, 8, 1, pos.data(), 1e4, sm::RopeStyle::kHalf, 1),
               InvalidArgument);  // odd head_dim
  EXPECT_THROW(sm::parse_rope_style("neox"), InvalidArgument);
  EXPECT_THROW(sm::causal_attention({x.data(), 4, 8}, {x.data(), 4, 8}, {x.data(), 4, 8}, {3, 2, 4},
                                    0.5f, {y.data(), 4, 8}, 1),
               InvalidArgument);  // 2 does not divide 3
  EXPECT_THROW(sm::causal_attention({x.data(), 4, 8}, {x.data(), 3, 8}, {x.data(), 3, 8}, {2, 2, 4},
                                    0.5f, {y.data(), 4, 8}, 1),
               InvalidArgument);  // fewer keys than queries
  EXPECT_THROW(sm::causal_attention({x.data(), 4, 8}, {x.data(), 4, 8}, {x.data(), 4, 8}, {2, 2, 4},
                                    NAN, {y.data(), 4, 8}, 1),
               InvalidArgument);
  EXPECT_THROW(sm::decode_attention(x.data(), {x.data(), 4, 8}, {x.data(), 4, 8}, 5, {2, 2, 4},
                                    0.5f, y.data(), 1),
               InvalidArgument);  // length > capacity
  EXPECT_THROW(sm::decode_attention(x.data(), {x.data(), 4, 8}, {x.data(), 4, 8}, 0, {2, 2, 4},
                                    0.5f, y.data(), 1),
               InvalidArgument);
  EXPECT_THROW(sm::swiglu_gate({x.data(), 4, 8}, {x.data(), 4, 7}, {y.data(), 4, 8}, 1),
               InvalidArgument);
}

}  // namespace
}  // namespace sparseforge
