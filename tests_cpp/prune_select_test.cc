// KeySelector and N:M group ranking against std::stable_sort oracles.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "sparseforge/core/cpu.h"
#include "sparseforge/prune/select.h"
#include "testing/oracle.h"
#include "testing/random.h"

namespace sparseforge {
namespace prune {
namespace {

std::vector<uint32_t> keys_of(const std::vector<float>& v) {
  std::vector<uint32_t> k(v.size());
  for (size_t i = 0; i < v.size(); ++i) k[i] = score_key(std::fabs(v[i]));
  return k;
}

TEST(Select, ThresholdIsTheKthLowestWithExactCounts) {
  KeySelector sel;
  for (size_t n : testing::awkward_sizes()) {
    for (int kind = 0; kind < 3; ++kind) {
      const auto v = kind == 0   ? testing::normal(n, n)
                     : kind == 1 ? testing::small_ints(n, n, 2)
                                 : std::vector<float>(n, 1.5f);
      const auto keys = keys_of(v);
      auto sorted = keys;
      std::sort(sorted.begin(), sorted.end());
      for (size_t k : {size_t{1}, n / 3 + 1, n / 2 + 1, n}) {
        if (k < 1 || k > n) continue;
        const Threshold th = sel.select(keys.data(), n, k);
        ASSERT_EQ(th.t, sorted[k - 1]) << n << " " << k;
        ASSERT_EQ(th.less, static_cast<size_t>(std::count_if(
                               keys.begin(), keys.end(), [&](uint32_t x) { return x < th.t; })));
        ASSERT_EQ(th.equal, static_cast<size_t>(std::count(keys.begin(), keys.end(), th.t)));
      }
    }
  }
}

TEST(Select, PruneLowestMatchesStableSortForEveryK) {
  KeySelector sel;
  for (size_t n : {1, 2, 5, 17, 97, 200, 1000}) {
    for (int kind = 0; kind < 2; ++kind) {
      const auto v = kind == 0 ? testing::normal(n, 3 * n) : testing::small_ints(n, 3 * n, 1);
      const auto keys = keys_of(v);
      std::vector<uint8_t> keep(n);
      for (size_t k = 0; k <= n; k += std::max<size_t>(1, n / 40)) {
        sel.prune_lowest(keys.data(), n, k, keep.data());
        ASSERT_EQ(keep, testing::oracle_prune_lowest(v, k)) << "n=" << n << " k=" << k;
      }
    }
  }
}

// Adversarial distributions for the sampled bands: sorted, reversed, a few huge outliers,
// and a spike of equal keys at the target rank.
TEST(Select, AdversarialOrders) {
  KeySelector sel;
  const size_t n = 4099;
  std::vector<std::vector<float>> cases;
  std::vector<float> asc(n), desc(n), spike(n), outliers = testing::normal(n, 5);
  for (size_t i = 0; i < n; ++i) {
    asc[i] = static_cast<float>(i);
    desc[i] = static_cast<float>(n - i);
    spike[i] = (i % 3 == 0) ? 7.0f : static_cast<float>(i % 11);
  }
  for (size_t i = 0; i < n; i += 100) outliers[i] = 1e30f;
  cases = {asc, desc, spike, outliers};
  std::vector<uint8_t> keep(n);
  for (const auto& v : cases) {
    const auto keys = keys_of(v);
    for (size_t k : {size_t{1}, size_t{100}, n / 2, n - 1}) {
      sel.prune_lowest(keys.data(), n, k, keep.data());
      ASSERT_EQ(keep, testing::oracle_prune_lowest(v, k)) << k;
    }
  }
}

TEST(Select, NMGroupsMatchStableSortForAllPatterns) {
  for (int m = 2; m <= 32; ++m) {
    for (int n = 1; n < m; ++n) {
      const size_t cols = static_cast<size_t>(m) * 5;
      for (int kind = 0; kind < 2; ++kind) {
        const auto v = kind == 0 ? testing::normal(cols, m * 100 + n)
                                 : testing::small_ints(cols, m * 100 + n, 1);
        const auto keys = keys_of(v);
        std::vector<uint8_t> keep(cols);
        nm_keep_from_keys(keys.data(), cols, n, m, keep.data());
        ASSERT_EQ(keep, testing::oracle_nm(v, 1, cols, n, m)) << n << ":" << m;
      }
    }
  }
}

}  // namespace
}  // namespace prune
}  // namespace sparseforge
