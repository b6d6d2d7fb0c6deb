// Every SIMD level's kernel table against the scalar table, bit for bit, on awkward sizes
// and on all 65,536 half / bfloat16 patterns.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/simd/kernels.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "testing/random.h"

namespace sparseforge {
namespace {

std::vector<int> levels_here() {
  std::vector<int> out;
  for (int l = 0; l <= static_cast<int>(detected_simd_level()); ++l) out.push_back(l);
  return out;
}

std::vector<uint16_t> all_16bit_patterns() {
  std::vector<uint16_t> v(65536);
  for (uint32_t i = 0; i < 65536; ++i) v[i] = static_cast<uint16_t>(i);
  return v;
}

// fp32 inputs that reach every conversion branch: random bits, specials, halfway points.
std::vector<uint32_t> f32_patterns() {
  std::vector<uint32_t> v;
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) v.push_back(rng());
  for (uint32_t hi = 0; hi < 65536; ++hi) {
    for (uint32_t lo :
         {0x0000u, 0x0001u, 0x0FFFu, 0x1000u, 0x1001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      v.push_back((hi << 16) | lo);
    }
  }
  return v;
}

TEST(Simd, ActiveTableIsTheDetectedLevel) {
  EXPECT_STREQ(simd::kernels().name, simd_level_name(simd_level()));
}

TEST(Simd, HalfToFloatAllPatternsEveryLevel) {
  const auto h = all_16bit_patterns();
  std::vector<float> ref(h.size()), out(h.size());
  for (size_t i = 0; i < h.size(); ++i) ref[i] = f16_to_f32(Float16{h[i]});
  for (int level : levels_here()) {
    const auto& kt = simd::kernels_for(level);
    for (size_t offset : {0, 1, 7}) {  // misaligned starts move elements into the tail
      std::fill(out.begin(), out.end(), -1.0f);
      kt.f16_to_f32(h.data() + offset, out.data(), h.size() - offset);
      ASSERT_EQ(std::memcmp(out.data(), ref.data() + offset, (h.size() - offset) * 4), 0)
          << kt.name << " offset " << offset;
    }
    std::fill(out.begin(), out.end(), 0.0f);
    kt.bf16_to_f32(h.data(), out.data(), h.size());
    for (size_t i = 0; i < h.size(); ++i) ASSERT_EQ(f32_bits(out[i]), uint32_t{h[i]} << 16);
  }
}

TEST(Simd, FloatToHalfAndBFloat16EveryLevel) {
  const auto bits = f32_patterns();
  std::vector<float> x(bits.size());
  std::memcpy(x.data(), bits.data(), bits.size() * 4);
  std::vector<uint16_t> ref16(x.size()), refb(x.size()), out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    ref16[i] = f32_to_f16(x[i]).bits;
    refb[i] = f32_to_bf16(x[i]).bits;
  }
  for (int level : levels_here()) {
    const auto& kt = simd::kernels_for(level);
    kt.f32_to_f16(x.data(), out.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(out[i], ref16[i]) << kt.name << " f16 of 0x" << std::hex << bits[i];
    }
    kt.f32_to_bf16(x.data(), out.data(), x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(out[i], refb[i]) << kt.name << " bf16 of 0x" << std::hex << bits[i];
    }
  }
}

TEST(Simd, KeysCountsAndMasksEveryLevelAwkwardSizes) {
  const auto& ref = simd::kernels_for(0);
  for (size_t n : testing::awkward_sizes()) {
    std::vector<float> x = testing::small_ints(n, n, 2);
    if (n > 3) x[n / 2] = -0.0f;
    std::vector<uint16_t> h(n), b(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = f32_to_f16(x[i] * 0.37f).bits;
      b[i] = f32_to_bf16(x[i] * 0.37f).bits;
    }
    std::vector<uint8_t> keep(n);
    for (size_t i = 0; i < n; ++i) keep[i] = static_cast<uint8_t>((i * 7) % 3 != 0);
    for (int level : levels_here()) {
      const auto& kt = simd::kernels_for(level);
      std::vector<uint32_t> k0(n), k1(n);
      ASSERT_EQ(kt.abs_keys_f32(x.data(), n, k1.data()), ref.abs_keys_f32(x.data(), n, k0.data()));
      ASSERT_EQ(k0, k1) << kt.name << " n=" << n;
      ASSERT_EQ(kt.abs_keys_f16(h.data(), n, k1.data()), ref.abs_keys_f16(h.data(), n, k0.data()));
      ASSERT_EQ(k0, k1);
      ASSERT_EQ(kt.abs_keys_bf16(b.data(), n, k1.data()),
                ref.abs_keys_bf16(b.data(), n, k0.data()));
      ASSERT_EQ(k0, k1);
      // band_collect over several bands, including the empty and the full band
      const uint32_t t = k0[n / 3];
      for (auto band :
           {std::pair<uint32_t, uint32_t>{0, 0xFFFFFFFFu}, {t, t}, {1, t}, {t + 1, t}}) {
        std::vector<uint32_t> b0(n), b1(n);
        size_t n0 = 0, n1 = 0;
        ASSERT_EQ(kt.band_collect(k0.data(), n, band.first, band.second, b1.data(), &n1),
                  ref.band_collect(k0.data(), n, band.first, band.second, b0.data(), &n0));
        ASSERT_EQ(n0, n1);
        b0.resize(n0);
        b1.resize(n1);
        ASSERT_EQ(b0, b1) << kt.name << " n=" << n;
      }
      std::vector<uint8_t> g0(n), g1(n);
      ref.keep_greater(k0.data(), n, t, g0.data());
      kt.keep_greater(k0.data(), n, t, g1.data());
      ASSERT_EQ(g0, g1);
      const uint32_t* xb = reinterpret_cast<const uint32_t*>(x.data());
      ASSERT_EQ(kt.count_zeros32(xb, n), ref.count_zeros32(xb, n));
      ASSERT_EQ(kt.count_zeros16(h.data(), n), ref.count_zeros16(h.data(), n));
      std::vector<uint32_t> m0(xb, xb + n), m1(xb, xb + n);
      ref.apply_mask32(m0.data(), keep.data(), n);
      kt.apply_mask32(m1.data(), keep.data(), n);
      ASSERT_EQ(m0, m1);
      std::vector<uint32_t> c0(n + 1, 9), c1(n + 1, 9);
      ASSERT_EQ(kt.masked_copy32(xb, keep.data(), c1.data(), n),
                ref.masked_copy32(xb, keep.data(), c0.data(), n));
      ASSERT_EQ(c0, c1);
      ASSERT_EQ(c0[n], 9u);  // nothing written past the end
      std::vector<uint16_t> d0(n), d1(n);
      ASSERT_EQ(kt.masked_copy16(h.data(), keep.data(), d1.data(), n),
                ref.masked_copy16(h.data(), keep.data(), d0.data(), n));
      ASSERT_EQ(d0, d1);
      std::vector<uint16_t> s0(h), s1(h);
      ref.apply_mask16(s0.data(), keep.data(), n);
      kt.apply_mask16(s1.data(), keep.data(), n);
      ASSERT_EQ(s0, s1);
    }
    // the scalar table itself against first principles
    size_t zeros = 0;
    for (float v : x) zeros += v == 0.0f;
    EXPECT_EQ(ref.count_zeros32(reinterpret_cast<const uint32_t*>(x.data()), n), zeros);
  }
}

// N:M ranks with heavy ties (keys from {0, 1, 2}) and random keys, every n for m = 4 and 8,
// group counts that leave vector tails: every level equals the scalar table.
TEST(Simd, NMKeepEveryLevelEveryN) {
  const auto& ref = simd::kernels_for(0);
  std::mt19937 rng(3);
  for (int m : {4, 8}) {
    for (size_t groups : {1, 2, 3, 4, 5, 7, 8, 9, 33, 100}) {
      const size_t cols = groups * static_cast<size_t>(m);
      for (int ties = 0; ties < 2; ++ties) {
        std::vector<uint32_t> keys(cols);
        for (auto& k : keys) k = ties ? rng() % 3 : rng() & 0x7FFFFFFFu;
        for (int n = 1; n < m; ++n) {
          std::vector<uint8_t> k0(cols), k1(cols);
          (m == 4 ? ref.nm4_keep : ref.nm8_keep)(keys.data(), cols, n, k0.data());
          for (size_t g = 0; g < cols; g += static_cast<size_t>(m)) {
            int kept = 0;
            for (int j = 0; j < m; ++j) kept += k0[g + j];
            ASSERT_EQ(kept, n);
          }
          for (int level : levels_here()) {
            const auto& kt = simd::kernels_for(level);
            (m == 4 ? kt.nm4_keep : kt.nm8_keep)(keys.data(), cols, n, k1.data());
            ASSERT_EQ(k0, k1) << kt.name << " " << n << ":" << m << " groups=" << groups;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace sparseforge
