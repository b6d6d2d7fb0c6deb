// The KV policies in the core (kvcache/policy.h): budgets, kvpress's PyramidKV schedule,
// numpy's random stream, each policy's contract over prefill + decode, the fork (a deep
// copy), and bad input that leaves the cache untouched. (The bitwise comparison with the
// numpy reference implementations is tests_py/test_kv_core_policies.py.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/kvcache/policy.h"

namespace sparseforge {
namespace {

using kv::Budget;
using kv::CacheConfig;
using kv::PagedKVCache;
using kv::PolicyCache;
using kv::PolicyOptions;

constexpr size_t kLayers = 2, kHkv = 2, kG = 2, kD = 8, kS = 4, kH = kHkv * kG;

CacheConfig config() {
  CacheConfig c;
  c.num_layers = kLayers;
  c.num_kv_heads = kHkv;
  c.head_dim = kD;
  c.page_size = kS;
  return c;
}

std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// prefill T tokens then `steps` decode steps on every layer through a PolicyCache
void run(PolicyCache& pc, size_t T, size_t steps, uint32_t seed) {
  std::vector<float> q = randn(T * kH * kD, seed), k = randn(T * kHkv * kD, seed + 1),
                     v = randn(T * kHkv * kD, seed + 2), out(T * kH * kD);
  for (size_t l = 0; l < kLayers; ++l) {
    pc.attend(l, ConstMatrixView<float>(q.data(), T, kH * kD),
              ConstMatrixView<float>(k.data(), T, kHkv * kD),
              ConstMatrixView<float>(v.data(), T, kHkv * kD), 0.35f,
              MatrixView<float>(out.data(), T, kH * kD), 1);
  }
  pc.advance(T);
  for (size_t s = 0; s < steps; ++s) {
    std::vector<float> q1 = randn(kH * kD, seed + 10 + static_cast<uint32_t>(s)),
                       k1 = randn(kHkv * kD, seed + 100 + static_cast<uint32_t>(s)), o(kH * kD);
    for (size_t l = 0; l < kLayers; ++l) {
      pc.attend(l, ConstMatrixView<float>(q1.data(), 1, kH * kD),
                ConstMatrixView<float>(k1.data(), 1, kHkv * kD),
                ConstMatrixView<float>(k1.data(), 1, kHkv * kD), 0.35f,
                MatrixView<float>(o.data(), 1, kH * kD), 1);
    }
    pc.advance(1);
  }
}

std::unique_ptr<PolicyCache> make(const std::string& name, const Budget& b,
                                  PolicyOptions o = PolicyOptions()) {
  o.window = 4;
  return std::make_unique<PolicyCache>(std::make_shared<PagedKVCache>(config()), kH,
                                       std::shared_ptr<kv::Policy>(kv::make_policy(name, b, o)),
                                       true);
}

TEST(KvPolicy, BudgetsResolveAsNamed) {
  EXPECT_EQ(Budget::tokens(7).resolve(0, 100), 7u);
  EXPECT_EQ(Budget::keep_fraction(0.25).resolve(0, 100), 25u);
  EXPECT_EQ(Budget::compression_ratio(0.75).resolve(0, 100), 25u);  // kvpress: fraction removed
  EXPECT_EQ(Budget::keep_fraction(0.001).resolve(0, 100), 1u);      // at least one token
  EXPECT_THROW(Budget::compression_ratio(1.0), InvalidArgument);
  Budget per;
  per.given = true;
  per.per_layer = {{false, 3.0}, {true, 0.5}};
  EXPECT_EQ(per.resolve(1, 10), 5u);
  EXPECT_THROW(per.validate(3), InvalidArgument);
}

TEST(KvPolicy, PyramidScheduleAndFallback) {
  // kvpress defaults: the pyramid at B >= T/2 once the clamp applies, else uniform
  std::vector<size_t> b = kv::pyramid_budgets(30, 896, 512, 64, 20.0);
  EXPECT_EQ(b.front(), 832u);
  EXPECT_EQ(b.back(), 192u);
  b = kv::pyramid_budgets(30, 896, 447, 64, 20.0);
  EXPECT_EQ(b.front(), 447u);
  EXPECT_EQ(b.back(), 447u);
}

TEST(KvPolicy, NumpyRandomStream) {
  // numpy: np.random.default_rng([0, 0]).random(3)
  double r[3];
  kv::numpy_random(0, 0, r, 3);
  for (double x : r) {
    EXPECT_GE(x, 0.0);
    EXPECT_LT(x, 1.0);
  }
  double again[3];
  kv::numpy_random(0, 0, again, 3);
  EXPECT_EQ(std::memcmp(r, again, sizeof r), 0);
  kv::numpy_random(0, 1, again, 3);
  EXPECT_NE(r[0], again[0]);
}

TEST(KvPolicy, EveryPolicyHoldsItsContract) {
  const size_t T = 40, steps = 6, B = 12;
  for (const std::string& name : kv::policy_names()) {
    SCOPED_TRACE(name);
    auto pc = make(name, name == "full" ? Budget() : Budget::tokens(B));
    run(*pc, T, steps, 3);
    const kv::Policy& p = pc->policy();
    EXPECT_EQ(pc->length(), T + steps);
    size_t total = 0;
    for (size_t l = 0; l < kLayers; ++l) {
      for (size_t h = 0; h < kHkv; ++h) {
        const size_t n = pc->cache().length(l, h);
        total += n;
        if (!p.evicts()) {
          EXPECT_EQ(n, T + steps);
        } else if (p.decode_evicts()) {
          EXPECT_EQ(n, B);
        } else if (name != "adakv") {
          EXPECT_EQ(n, B + steps);
        }
      }
    }
    if (name == "adakv") {
      EXPECT_EQ(total, kLayers * kHkv * (B + steps));
    }
    EXPECT_EQ(pc->bytes_in_use(), pc->cache().bytes_in_use() + pc->cache().metadata_bytes());
  }
}

TEST(KvPolicy, ForkIsADeepCopy) {
  auto pc = make("h2o", Budget::tokens(10));
  run(*pc, 30, 2, 5);
  PolicyCache fork(*pc);
  EXPECT_EQ(fork.length(), pc->length());
  EXPECT_NE(&fork.cache(), &pc->cache());
  for (size_t h = 0; h < kHkv; ++h) {
    const size_t n = pc->cache().length(0, h);
    ASSERT_EQ(fork.cache().length(0, h), n);
    for (size_t s = 0; s < n; ++s)
      EXPECT_EQ(fork.cache().positions(0, h)[s], pc->cache().positions(0, h)[s]);
  }
  run(fork, 1, 0, 9);  // feeding the fork leaves the original as it was
  EXPECT_EQ(pc->length(), 32u);
  EXPECT_EQ(fork.length(), 33u);
}

TEST(KvPolicy, BadInputLeavesTheCacheUntouched) {
  // a score-once policy whose token budget exceeds the prompt: refused for every layer
  // before the first appends (check_attend), and by the policy itself
  auto pc = make("key_norm", Budget::tokens(64));
  EXPECT_THROW(pc->check_attend(20), InvalidArgument);
  EXPECT_THROW(run(*pc, 20, 0, 1), InvalidArgument);
  for (size_t l = 0; l < kLayers; ++l) EXPECT_EQ(pc->cache().length(l, 0), 0u);
  EXPECT_EQ(pc->cache().bytes_in_use(), 0u);
  EXPECT_THROW(make("nope", Budget::tokens(3)), InvalidArgument);
  EXPECT_THROW(make("h2o", Budget()), InvalidArgument);
  PolicyOptions o;
  o.sinks = 4;
  auto s = make("streaming_llm", Budget::tokens(4), o);
  EXPECT_THROW(run(*s, 10, 0, 1), InvalidArgument);
  EXPECT_EQ(s->cache().length(0, 0), 0u);
}

}  // namespace
}  // namespace sparseforge
