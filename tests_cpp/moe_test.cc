// MoE routing core: hand-worked routing, group-limited selection, capacity dropping order,
// dispatch/combine, losses at their known minima, thread determinism and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/moe/dispatch.h"
#include "sparseforge/moe/routing.h"

namespace sf = sparseforge;
namespace sm = sparseforge::moe;

namespace {

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> w, s;
};

Routed run_route(const std::vector<float>& logits, size_t T, size_t E, const sm::RouterOptions& o) {
  Routed r;
  r.ids.assign(T * o.top_k, -7);
  r.w.assign(T * o.top_k, -7.0f);
  r.s.assign(T * E, -7.0f);
  sm::route({logits.data(), T, E}, o, {r.ids.data(), T, o.top_k}, {r.w.data(), T, o.top_k},
            {r.s.data(), T, E});
  return r;
}

TEST(MoeRoute, SoftmaxTopKTiesGoToTheLowerIndex) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};
  sm::RouterOptions o;
  o.top_k = 2;
  const Routed r = run_route(logits, 1, 4, o);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 3}));
  EXPECT_FLOAT_EQ(r.w[0], 0.5f);
  EXPECT_FLOAT_EQ(r.w[1], 0.5f);
  const double z = std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0);
  EXPECT_NEAR(r.s[2], std::exp(2.0) / z, 1e-7);
  // Without renormalisation the weights are the probabilities themselves.
  o.renormalize = false;
  const Routed raw = run_route(logits, 1, 4, o);
  EXPECT_NEAR(raw.w[0], std::exp(3.0) / z, 1e-7);
}

TEST(MoeRoute, SigmoidBiasSelectsButDoesNotWeigh) {
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<float> bias = {0.0f, 0.1f, -0.1f, 0.2f};
  sm::RouterOptions o;
  o.top_k = 2;
  o.score = sm::ScoreFunc::kSigmoid;
  o.bias = bias.data();
  o.routed_scaling_factor = 2.5f;
  const Routed r = run_route(logits, 1, 4, o);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{3, 1}));
  EXPECT_FLOAT_EQ(r.w[0], 1.25f);  // 0.5 / (0.5 + 0.5) * 2.5
  EXPECT_FLOAT_EQ(r.w[1], 1.25f);
  EXPECT_FLOAT_EQ(r.s[0], 0.5f);  // scores stay unbiased
}

TEST(MoeRoute, GroupLimitedTop2SumAgainstMax) {
  // Sigmoid(0) = 0.5 everywhere; the bias decides. Selection scores 0.5 + b by group of 2:
  //   g0 {1.4, 0.0}  g1 {0.8, 0.8}  g2 {0.6, 0.6}  g3 {1.35, 0.0}
  // top-2 sums 1.4, 1.6, 1.2, 1.35 -> groups {1, 0} -> experts 0 then 2 (2 ties 3: lower).
  // max        1.4, 0.8, 0.6, 1.35 -> groups {0, 3} -> experts 0 then 6.
  const std::vector<float> logits(8, 0.0f);
  const std::vector<float> bias = {0.9f, -0.5f, 0.3f, 0.3f, 0.1f, 0.1f, 0.85f, -0.5f};
  sm::RouterOptions o;
  o.top_k = 2;
  o.score = sm::ScoreFunc::kSigmoid;
  o.bias = bias.data();
  o.n_group = 4;
  o.topk_group = 2;
  EXPECT_EQ(run_route(logits, 1, 8, o).ids, (std::vector<int32_t>{0, 2}));
  o.group_score = sm::GroupScore::kMax;
  EXPECT_EQ(run_route(logits, 1, 8, o).ids, (std::vector<int32_t>{0, 6}));
  o.n_group = 1;
  o.topk_group = 1;
  EXPECT_EQ(run_route(logits, 1, 8, o).ids, (std::vector<int32_t>{0, 6}));
}

TEST(MoeRoute, BadInputThrows) {
  std::vector<float> logits(8, 0.0f);
  sm::RouterOptions o;
  o.top_k = 5;
  EXPECT_THROW(run_route(logits, 2, 4, o), sf::InvalidArgument);
  o.top_k = 0;
  EXPECT_THROW(run_route(logits, 2, 4, o), sf::InvalidArgument);
  o.top_k = 1;
  o.n_group = 3;
  EXPECT_THROW(run_route(logits, 2, 4, o), sf::InvalidArgument);
  o.n_group = 2;
  o.topk_group = 3;
  EXPECT_THROW(run_route(logits, 2, 4, o), sf::InvalidArgument);
  o.topk_group = 1;
  o.top_k = 3;  // one group of 2 experts cannot supply 3
  EXPECT_THROW(run_route(logits, 2, 4, o), sf::InvalidArgument);
  o.top_k = 1;
  logits[5] = NAN;
  try {
    run_route(logits, 2, 4, o);
    FAIL() << "NaN logits accepted";
  } catch (const sf::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("logits"), std::string::npos);
  }
}

TEST(MoeRoute, ThreadCountDoesNotChangeResults) {
  const size_t T = 3001, E = 32;  // well above the 64 KiB-per-thread threshold
  std::mt19937 gen(11);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> logits(T * E), bias(E);
  for (float& a : logits) a = nd(gen);
  for (float& a : bias) a = 0.1f * nd(gen);
  sm::RouterOptions o;
  o.top_k = 4;
  o.score = sm::ScoreFunc::kSigmoid;
  o.bias = bias.data();
  o.n_group = 4;
  o.topk_group = 2;
  o.num_threads = 1;
  const Routed a = run_route(logits, T, E, o);
  o.num_threads = 4;
  const Routed b = run_route(logits, T, E, o);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.w, b.w);
  EXPECT_EQ(a.s, b.s);
}

TEST(MoeCapacity, SwitchDropsByPositionOrScore) {
  const std::vector<int32_t> ids = {0, 0, 1, 0, 0};
  std::vector<int32_t> loc(5);
  std::vector<int64_t> load(2), kept(2);
  sm::CapacityOptions o;
  o.mode = sm::CapacityMode::kFixed;
  o.capacity = 2;
  sm::CapacityResult r = sm::assign_capacity({ids.data(), 5, 1}, 2, nullptr, o, {loc.data(), 5, 1},
                                             load.data(), kept.data());
  EXPECT_EQ(loc, (std::vector<int32_t>{0, 1, 0, -1, -1}));
  EXPECT_EQ(r.capacity, 2u);
  EXPECT_EQ(r.num_dropped, 2u);
  EXPECT_EQ(load, (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(kept, (std::vector<int64_t>{2, 1}));

  const std::vector<float> pr = {0.1f, 0.9f, 0.5f, 0.8f, 0.2f};
  o.priority = sm::Priority::kScore;
  sm::assign_capacity({ids.data(), 5, 1}, 2, pr.data(), o, {loc.data(), 5, 1}, load.data(),
                      kept.data());
  EXPECT_EQ(loc, (std::vector<int32_t>{-1, 0, 0, 1, -1}));

  // Dropless: capacity = the largest load; dynamic: min(largest load, fixed).
  o = sm::CapacityOptions();
  r = sm::assign_capacity({ids.data(), 5, 1}, 2, nullptr, o, {loc.data(), 5, 1}, load.data(),
                          kept.data());
  EXPECT_EQ(r.capacity, 4u);
  EXPECT_EQ(r.num_dropped, 0u);
  EXPECT_EQ(loc, (std::vector<int32_t>{0, 1, 0, 2, 3}));
  o.mode = sm::CapacityMode::kDynamic;
  o.capacity_factor = 10.0;  // fixed would be min(ceil(10 * 5 / 2), T) = 5
  EXPECT_EQ(sm::assign_capacity({ids.data(), 5, 1}, 2, nullptr, o, {loc.data(), 5, 1}, load.data(),
                                kept.data())
                .capacity,
            4u);
  o.capacity_factor = 1.0;  // ceil(1 * 5 / 2) = 3
  r = sm::assign_capacity({ids.data(), 5, 1}, 2, nullptr, o, {loc.data(), 5, 1}, load.data(),
                          kept.data());
  EXPECT_EQ(r.capacity, 3u);
  EXPECT_EQ(r.num_dropped, 1u);
  o.capacity_factor = 0.0;
  EXPECT_THROW(sm::assign_capacity({ids.data(), 5, 1}, 2, nullptr, o, {loc.data(), 5, 1},
                                   load.data(), kept.data()),
               sf::InvalidArgument);
}

TEST(MoeCapacity, TopTwoIsSlotMajor) {
  // Every first choice claims a slot before any second choice.
  const std::vector<int32_t> ids = {0, 1, 0, 1, 1, 0};
  std::vector<int32_t> loc(6);
  std::vector<int64_t> load(2), kept(2);
  sm::CapacityOptions o;
  o.mode = sm::CapacityMode::kFixed;
  o.capacity = 2;
  const sm::CapacityResult r = sm::assign_capacity({ids.data(), 3, 2}, 2, nullptr, o,
                                                   {loc.data(), 3, 2}, load.data(), kept.data());
  EXPECT_EQ(loc, (std::vector<int32_t>{0, 1, 1, -1, 0, -1}));
  EXPECT_EQ(r.num_dropped, 2u);
  EXPECT_EQ(sm::expert_capacity(3, 2, 2, 1.0), 3u);
  EXPECT_EQ(sm::expert_capacity(10, 2, 8, 1.25), 4u);  // ceil(3.125)
}

TEST(MoeDispatch, PlanGatherCombineMatchLoop) {
  const size_t T = 3, k = 2, D = 2, E = 2;
  const std::vector<int32_t> ids = {0, 1, 0, 1, 1, 0};
  const std::vector<int32_t> loc = {0, 1, 1, -1, 0, -1};
  std::vector<int64_t> offsets(E + 1);
  std::vector<int32_t> token_of(T * k), row_of(T * k);
  const size_t n = sm::dispatch_plan({ids.data(), T, k}, {loc.data(), T, k}, E, offsets.data(),
                                     token_of.data(), token_of.size(), {row_of.data(), T, k});
  ASSERT_EQ(n, 4u);
  EXPECT_EQ(offsets, (std::vector<int64_t>{0, 2, 4}));
  token_of.resize(n);
  EXPECT_EQ(token_of, (std::vector<int32_t>{0, 1, 2, 0}));
  EXPECT_EQ(row_of, (std::vector<int32_t>{0, 3, 1, -1, 2, -1}));
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};
  std::vector<float> buf(n * D);
  sm::gather_rows({x.data(), T, D}, token_of.data(), {buf.data(), n, D}, 2);
  EXPECT_EQ(buf, (std::vector<float>{1, 2, 3, 4, 5, 6, 1, 2}));
  // "Experts": expert 0 doubles, expert 1 negates.
  for (size_t r = 0; r < n; ++r) {
    for (size_t d = 0; d < D; ++d) buf[r * D + d] *= r < 2 ? 2.0f : -1.0f;
  }
  const std::vector<float> w = {0.75f, 0.25f, 1.0f, 0.5f, 0.5f, 0.5f};
  std::vector<float> y(T * D, 99.0f);
  sm::combine_rows({buf.data(), n, D}, {row_of.data(), T, k}, {w.data(), T, k}, {y.data(), T, D},
                   false, 3);
  // t0: 0.75*2*(1,2) + 0.25*-(1,2); t1: 1.0*2*(3,4); t2: 0.5*-(5,6).
  EXPECT_EQ(y, (std::vector<float>{1.25f, 2.5f, 6.0f, 8.0f, -2.5f, -3.0f}));
  // A location that is not what assign_capacity would give is rejected.
  const std::vector<int32_t> bad = {0, 1, 0, -1, 0, -1};
  EXPECT_THROW(sm::dispatch_plan({ids.data(), T, k}, {bad.data(), T, k}, E, offsets.data(),
                                 token_of.data(), T * k, {row_of.data(), T, k}),
               sf::InvalidArgument);
}

TEST(MoeFfn, MatchesPerTokenLoopAndIsThreadIndependent) {
  const size_t T = 37, E = 5, k = 2, D = 12, H = 7;
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(T * D), logits(T * E), wg(E * H * D), wu(E * H * D), wd(E * D * H);
  for (auto* v : {&x, &logits, &wg, &wu, &wd}) {
    for (float& a : *v) a = nd(gen);
  }
  sm::RouterOptions o;
  o.top_k = k;
  const Routed r = run_route(logits, T, E, o);
  std::vector<int32_t> loc(T * k), token_of(T * k), row_of(T * k);
  std::vector<int64_t> load(E), kept(E), offsets(E + 1);
  sm::assign_capacity({r.ids.data(), T, k}, E, nullptr, sm::CapacityOptions(), {loc.data(), T, k},
                      load.data(), kept.data());
  sm::dispatch_plan({r.ids.data(), T, k}, {loc.data(), T, k}, E, offsets.data(), token_of.data(),
                    T * k, {row_of.data(), T, k});
  sm::SwiGLUExperts ex;
  ex.gate = wg.data();
  ex.up = wu.data();
  ex.down = wd.data();
  ex.num_experts = E;
  ex.hidden = H;
  ex.dim = D;
  std::vector<float> y1(T * D), y4(T * D), norms(T * k);
  sm::moe_swiglu_ffn({x.data(), T, D}, offsets.data(), token_of.data(), {row_of.data(), T, k},
                     {r.w.data(), T, k}, ex, {y1.data(), T, D}, norms.data(), 1);
  sm::moe_swiglu_ffn({x.data(), T, D}, offsets.data(), token_of.data(), {row_of.data(), T, k},
                     {r.w.data(), T, k}, ex, {y4.data(), T, D}, nullptr, 4);
  EXPECT_EQ(y1, y4);
  for (size_t t = 0; t < T; ++t) {
    std::vector<double> ref(D, 0.0);
    for (size_t j = 0; j < k; ++j) {
      const size_t e = static_cast<size_t>(r.ids[t * k + j]);
      std::vector<double> h(H);
      for (size_t i = 0; i < H; ++i) {
        double g = 0, u = 0;
        for (size_t d = 0; d < D; ++d) {
          g += double(wg[(e * H + i) * D + d]) * x[t * D + d];
          u += double(wu[(e * H + i) * D + d]) * x[t * D + d];
        }
        h[i] = g / (1 + std::exp(-g)) * u;
      }
      double nrm = 0;
      for (size_t d = 0; d < D; ++d) {
        double o_d = 0;
        for (size_t i = 0; i < H; ++i) o_d += double(wd[(e * D + d) * H + i]) * h[i];
        ref[d] += r.w[t * k + j] * o_d;
        nrm += o_d * o_d;
      }
      EXPECT_NEAR(norms[static_cast<size_t>(row_of[t * k + j])], std::sqrt(nrm),
                  1e-4 * (1 + std::sqrt(nrm)));
    }
    for (size_t d = 0; d < D; ++d)
      EXPECT_NEAR(y1[t * D + d], ref[d], 1e-4 * (1 + std::abs(ref[d])));
  }
}

TEST(MoeLoss, MinimaUnderUniformRoutingAndZLoss) {
  // Circulant logits: every expert is top-1 once and top-2 twice; mean probability 1/E.
  const size_t E = 4, T = 4;
  const float v[4] = {2.0f, 1.0f, 0.0f, -1.0f};
  std::vector<float> logits(T * E);
  for (size_t t = 0; t < T; ++t) {
    for (size_t e = 0; e < E; ++e) logits[t * E + e] = v[(e + E - t) % E];
  }
  const sf::ConstMatrixView<float> L(logits.data(), T, E);
  const sf::ConstMatrixView<int32_t> none;
  EXPECT_NEAR(sm::load_balancing_loss(L, 1, 2, sm::AuxLossKind::kSwitch, none, nullptr), 1.0,
              1e-12);
  EXPECT_NEAR(sm::load_balancing_loss(L, 1, 2, sm::AuxLossKind::kMixtral, none, nullptr), 2.0,
              1e-12);
  EXPECT_NEAR(sm::load_balancing_loss(L, 1, 2, sm::AuxLossKind::kMegablocks, none, nullptr), 1.0,
              1e-12);
  // All tokens on expert 0: f = (1, 0, 0, 0), P_0 = mean softmax of (2, 1, 0, -1) rotated... here
  // identical rows, so Switch = E * P_0.
  std::vector<float> same(T * E);
  for (size_t t = 0; t < T; ++t) {
    for (size_t e = 0; e < E; ++e) same[t * E + e] = v[e];
  }
  double z = 0;
  for (float a : v) z += std::exp(double(a));
  EXPECT_NEAR(
      sm::load_balancing_loss({same.data(), T, E}, 1, 1, sm::AuxLossKind::kSwitch, none, nullptr),
      4.0 * std::exp(2.0) / z, 1e-12);
  const double lse = std::log(z);
  EXPECT_NEAR(sm::z_loss({same.data(), T, E}), lse * lse, 1e-9);
  EXPECT_THROW(sm::load_balancing_loss(L, 3, 2, sm::AuxLossKind::kSwitch, none, nullptr),
               sf::InvalidArgument);
}

}  // namespace
