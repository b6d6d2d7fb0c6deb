// PagedKVCache, decode attention (dense and page-sparse), Quest selection and window mass
// against float64 references: GQA, odd head dims, partially filled last pages, every dtype
// and SIMD level, 1 vs 2 threads bitwise; eviction frees pages; bad arguments throw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/kvcache/attention.h"
#include "sparseforge/kvcache/paged_cache.h"
#include "testing/random.h"

namespace sparseforge {
namespace {

using kv::CacheConfig;
using kv::PagedKVCache;

struct LevelGuard {
  SimdLevel before = simd_level();
  ~LevelGuard() { set_simd_level(before); }
};

CacheConfig make_config(size_t layers, size_t hkv, size_t d, size_t S, DType dt = DType::kF32) {
  CacheConfig c;
  c.num_layers = layers;
  c.num_kv_heads = hkv;
  c.head_dim = d;
  c.page_size = S;
  c.dtype = dt;
  return c;
}

// Token-major (T, Hkv * D) data and the positions 0..T-1 (+ offset).
struct Tokens {
  std::vector<float> k, v;
  std::vector<int64_t> pos;
};
Tokens tokens(size_t T, size_t hkv, size_t d, uint64_t seed, int64_t offset = 0) {
  Tokens t{testing::normal(T * hkv * d, seed), testing::normal(T * hkv * d, seed + 1), {}};
  for (size_t i = 0; i < T; ++i) t.pos.push_back(offset + static_cast<int64_t>(i));
  return t;
}
void append(PagedKVCache& c, size_t layer, const Tokens& t) {
  const size_t T = t.pos.size(), w = t.k.size() / T;
  c.append(layer, ConstMatrixView<float>(t.k.data(), T, w),
           ConstMatrixView<float>(t.v.data(), T, w), t.pos.data(), T);
}

// float64 decode attention of G queries against rows K (n, D), V (n, Dv).
void reference_attention(const std::vector<double>& q, size_t G, const std::vector<float>& K,
                         const std::vector<float>& V, size_t n, size_t D, size_t Dv, double scale,
                         std::vector<double>* out, std::vector<double>* probs) {
  out->assign(G * Dv, 0.0);
  probs->assign(G * n, 0.0);
  for (size_t g = 0; g < G; ++g) {
    std::vector<double> s(n);
    double m = -1e300;
    for (size_t t = 0; t < n; ++t) {
      double a = 0;
      for (size_t i = 0; i < D; ++i) a += q[g * D + i] * K[t * D + i];
      s[t] = a * scale;
      m = std::max(m, s[t]);
    }
    double z = 0;
    for (size_t t = 0; t < n; ++t) z += (s[t] = std::exp(s[t] - m));
    for (size_t t = 0; t < n; ++t) {
      (*probs)[g * n + t] = s[t] / z;
      for (size_t i = 0; i < Dv; ++i) (*out)[g * Dv + i] += s[t] / z * V[t * Dv + i];
    }
  }
}

void gather(const PagedKVCache& c, size_t layer, size_t h, std::vector<float>* K,
            std::vector<float>* V) {
  const size_t n = c.length(layer, h);
  K->assign(n * c.key_dim(), 0.f);
  V->assign(n * c.value_dim(), 0.f);
  c.gather(layer, h, MatrixView<float>(K->data(), n, c.key_dim()),
           MatrixView<float>(V->data(), n, c.value_dim()));
}

TEST(PagedKVCache, SizeFactorsAreBoundedBeforeTheirProduct) {
  // 2 * 2^63 wraps to 0 in size_t: each factor must be refused before the product.
  const size_t huge = size_t{1} << 63;
  for (const auto& [layers, heads] : std::vector<std::pair<size_t, size_t>>{
           {2, huge}, {huge, 2}, {size_t{1} << 40, size_t{1} << 40}, {4096, 8192}}) {
    CacheConfig c = make_config(1, 1, 8, 4);
    c.num_layers = layers;
    c.num_kv_heads = heads;
    EXPECT_THROW(PagedKVCache{c}, InvalidArgument) << layers << " x " << heads;
  }
}

TEST(PagedKVCache, CopiesOfObjectMutexAreIndependent) {
  ObjectMutex a;
  std::lock_guard<std::mutex> held(a.get());
  ObjectMutex b(a);  // a copy never shares (or copies the state of) the original's lock
  EXPECT_TRUE(b.get().try_lock());
  b.get().unlock();
}

TEST(PagedKVCache, AppendGatherRoundTripAndAccounting) {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    PagedKVCache c(make_config(2, 3, 5, 4, dt));
    const Tokens t = tokens(11, 3, 5, 7);
    append(c, 1, t);
    EXPECT_EQ(c.length(1, 2), 11u);
    EXPECT_EQ(c.length(0, 0), 0u);
    EXPECT_EQ(c.num_pages(1, 0), 3u);
    EXPECT_EQ(c.pages_in_use(), 9u);
    EXPECT_EQ(c.bytes_in_use(), 9 * 4 * 10 * dtype_size(dt));
    for (size_t h = 0; h < 3; ++h) {
      std::vector<float> K, V;
      gather(c, 1, h, &K, &V);
      for (size_t s = 0; s < 11; ++s) {
        EXPECT_EQ(c.positions(1, h)[s], static_cast<int64_t>(s));
        for (size_t i = 0; i < 5; ++i) {
          const float k0 = t.k[s * 15 + h * 5 + i], v0 = t.v[s * 15 + h * 5 + i];
          const float tol = dt == DType::kF32 ? 0.f : 0.01f * (1 + std::fabs(k0));
          EXPECT_NEAR(K[s * 5 + i], k0, tol);
          EXPECT_NEAR(V[s * 5 + i], v0, dt == DType::kF32 ? 0.f : 0.01f * (1 + std::fabs(v0)));
        }
      }
    }
  }
}

TEST(PagedKVCache, EvictCompactsFreesPagesAndKeepsBounds) {
  for (bool keep_order : {true, false}) {
    PagedKVCache c(make_config(1, 2, 6, 4));
    const Tokens t = tokens(19, 2, 6, 11);
    append(c, 0, t);
    EXPECT_EQ(c.pages_in_use(), 10u);
    const size_t peak = c.peak_bytes();
    // Reference: the surviving (position, key row) pairs of head 1.
    std::vector<int64_t> slots = {0, 3, 4, 5, 6, 9, 18, 17, 12};
    c.evict(0, 1, slots.data(), slots.size(), keep_order);
    EXPECT_EQ(c.length(0, 1), 10u);
    EXPECT_EQ(c.num_pages(0, 1), 3u);
    EXPECT_EQ(c.pages_in_use(), 8u);
    EXPECT_EQ(c.peak_bytes(), peak);
    EXPECT_EQ(c.reserved_bytes(), peak);
    std::vector<float> K, V;
    gather(c, 0, 1, &K, &V);
    std::vector<int64_t> got(c.positions(0, 1), c.positions(0, 1) + 10);
    std::vector<int64_t> want = {1, 2, 7, 8, 10, 11, 13, 14, 15, 16};
    if (keep_order) {
      EXPECT_EQ(got, want);
    } else {
      std::vector<int64_t> sorted = got;
      std::sort(sorted.begin(), sorted.end());
      EXPECT_EQ(sorted, want);
    }
    for (size_t s = 0; s < 10; ++s) {
      const size_t p = static_cast<size_t>(got[s]);
      for (size_t i = 0; i < 6; ++i) {
        EXPECT_EQ(K[s * 6 + i], t.k[p * 12 + 6 + i]);
        EXPECT_EQ(V[s * 6 + i], t.v[p * 12 + 6 + i]);
      }
    }
    // Bounds are exactly the min/max of each page's keys.
    for (size_t pg = 0; pg < 3; ++pg) {
      const float* b = c.page_bounds(0, 1, pg);
      for (size_t i = 0; i < 6; ++i) {
        float lo = INFINITY, hi = -INFINITY;
        for (size_t s = pg * 4; s < std::min<size_t>(10, pg * 4 + 4); ++s) {
          lo = std::min(lo, K[s * 6 + i]);
          hi = std::max(hi, K[s * 6 + i]);
        }
        EXPECT_EQ(b[i], lo);
        EXPECT_EQ(b[6 + i], hi);
      }
    }
    // Freed pages are reused before new ones; trim releases them.
    const Tokens t2 = tokens(2, 2, 6, 12, 19);
    append(c, 0, t2);
    EXPECT_EQ(c.reserved_bytes(), peak);
    EXPECT_GT(c.trim(), 0u);
    EXPECT_EQ(c.reserved_bytes(), c.bytes_in_use());
    c.clear();
    EXPECT_EQ(c.bytes_in_use(), 0u);
  }
}

TEST(PagedKVCache, EvictLowestProtectsRecentAndSinksTiesNewerFirst) {
  PagedKVCache c(make_config(1, 1, 2, 3));
  append(c, 0, tokens(10, 1, 2, 3));
  float* s = c.scores(0, 0);
  const float sc[10] = {0.f, 5.f, 1.f, 1.f, 0.5f, 9.f, 1.f, 0.f, 0.f, 0.f};
  std::copy(sc, sc + 10, s);
  // Sinks: positions < 1; recent: the newest 3 (7, 8, 9).
  auto ev = c.evict_lowest(0, 0, 3, 1, 3);
  // Candidates 1..6: scores 5,1,1,.5,9,1 -> 4 (0.5), then ties at 1: 6, 3 (newer first).
  EXPECT_EQ(ev, (std::vector<int64_t>{3, 4, 6}));
  EXPECT_EQ(c.length(0, 0), 7u);
  EXPECT_TRUE(c.evict_lowest(0, 0, 0, 0, 0).empty());
}

TEST(PagedKVCache, BadArgumentsThrow) {
  CacheConfig bad = make_config(1, 2, 4, 0);
  EXPECT_THROW(PagedKVCache{bad}, InvalidArgument);
  PagedKVCache c(make_config(1, 2, 4, 4));
  Tokens t = tokens(3, 2, 4, 1);
  append(c, 0, t);
  EXPECT_THROW(append(c, 0, t), InvalidArgument);  // positions not increasing
  Tokens u = tokens(2, 2, 4, 2, 10);
  u.pos = {12, 11};
  EXPECT_THROW(append(c, 0, u), InvalidArgument);
  EXPECT_EQ(c.length(0, 0), 3u);  // nothing appended
  Tokens w = tokens(2, 2, 5, 2, 10);
  EXPECT_THROW(append(c, 0, w), InvalidArgument);  // head_dim mismatch
  std::vector<int64_t> dup = {1, 1};
  EXPECT_THROW(c.evict(0, 0, dup.data(), 2, true), InvalidArgument);
  std::vector<int64_t> oob = {3};
  EXPECT_THROW(c.evict(0, 0, oob.data(), 1, true), InvalidArgument);
  EXPECT_THROW(c.length(1, 0), InvalidArgument);
  EXPECT_THROW(c.length(0, 2), InvalidArgument);
}

// Dense and page-sparse decode attention against float64, all dtypes and levels.
TEST(DecodeAttention, MatchesFloat64ReferenceGQA) {
  LevelGuard guard;
  const size_t Hkv = 2, G = 3, H = Hkv * G;
  for (size_t D : {5u, 16u, 37u}) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      PagedKVCache c(make_config(1, Hkv, D, 4, dt));
      append(c, 0, tokens(23, Hkv, D, 100 + D));  // last page holds 3 of 4
      std::vector<int64_t> ev = {2, 9};
      c.evict(0, 1, ev.data(), 2, false);  // heads of different lengths
      const std::vector<float> q = testing::normal(H * D, 5 + D);
      for (int level = 0; level <= static_cast<int>(detected_simd_level()); ++level) {
        set_simd_level(static_cast<SimdLevel>(level));
        for (bool sparse : {false, true}) {
          std::vector<int32_t> pages = {0, 2, 5, -1, 1, 3, -1, -1};  // head 1 has 6 pages
          std::vector<float> out(H * D), mass(Hkv * 23, -1.f);
          kv::DecodeOptions opt;
          opt.reduce = kv::GroupReduce::kMean;
          kv::decode_attention(
              c, 0, ConstMatrixView<float>(q.data(), H, D), MatrixView<float>(out.data(), H, D),
              MatrixView<float>(mass.data(), Hkv, 23), sparse ? pages.data() : nullptr, 4, opt);
          for (size_t h = 0; h < Hkv; ++h) {
            std::vector<float> K, V;
            gather(c, 0, h, &K, &V);
            const size_t n = c.length(0, h);
            std::vector<size_t> slots;
            for (size_t s = 0; s < n; ++s) {
              const int32_t pg = static_cast<int32_t>(s / 4);
              if (!sparse || std::find(pages.begin() + h * 4, pages.begin() + h * 4 + 4, pg) !=
                                 pages.begin() + h * 4 + 4)
                slots.push_back(s);
            }
            std::vector<float> Ks, Vs;
            for (size_t s : slots) {
              Ks.insert(Ks.end(), K.begin() + s * D, K.begin() + (s + 1) * D);
              Vs.insert(Vs.end(), V.begin() + s * D, V.begin() + (s + 1) * D);
            }
            std::vector<double> qd(q.begin() + h * G * D, q.begin() + (h + 1) * G * D), o, p;
            reference_attention(qd, G, Ks, Vs, slots.size(), D, D, 1.0 / std::sqrt(double(D)), &o,
                                &p);
            for (size_t g = 0; g < G; ++g)
              for (size_t i = 0; i < D; ++i)
                EXPECT_NEAR(out[(h * G + g) * D + i], o[g * D + i], 2e-5)
                    << "D=" << D << " level=" << level << " sparse=" << sparse;
            std::vector<double> want(23, 0.0);
            for (size_t j = 0; j < slots.size(); ++j)
              for (size_t g = 0; g < G; ++g) want[slots[j]] += p[g * slots.size() + j] / G;
            for (size_t s = 0; s < 23; ++s) EXPECT_NEAR(mass[h * 23 + s], want[s], 1e-6);
          }
        }
      }
    }
  }
}

TEST(DecodeAttention, ThreadCountBitwiseAndAccumulates) {
  const size_t Hkv = 4, G = 2, D = 24;
  PagedKVCache c(make_config(1, Hkv, D, 16));
  append(c, 0, tokens(333, Hkv, D, 9));
  const std::vector<float> q = testing::normal(Hkv * G * D, 3);
  std::vector<float> o1(Hkv * G * D), o2(o1.size()), m1(Hkv * 333), m2(m1.size());
  kv::DecodeOptions opt;
  opt.num_threads = 1;
  opt.accumulate_scores = true;
  kv::decode_attention(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                       MatrixView<float>(o1.data(), Hkv * G, D),
                       MatrixView<float>(m1.data(), Hkv, 333), nullptr, 0, opt);
  opt.num_threads = 2;
  kv::decode_attention(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                       MatrixView<float>(o2.data(), Hkv * G, D),
                       MatrixView<float>(m2.data(), Hkv, 333), nullptr, 0, opt);
  EXPECT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * 4));
  EXPECT_EQ(0, std::memcmp(m1.data(), m2.data(), m1.size() * 4));
  for (size_t h = 0; h < Hkv; ++h) {
    double total = 0;
    for (size_t s = 0; s < 333; ++s) {
      EXPECT_EQ(c.scores(0, h)[s], 2 * m1[h * 333 + s]);
      total += m1[h * 333 + s];
    }
    EXPECT_NEAR(total, G, 1e-4);  // sum over the group of probabilities summing to 1
  }
}

TEST(DecodeAttention, RerotateEqualsAttentionAtCachePositions) {
  const size_t D = 8, T = 13;
  CacheConfig cfg = make_config(1, 1, D, 4);
  cfg.rope_mode = kv::RopeMode::kRerotate;
  cfg.rope_style = kv::RopeStyle::kInterleaved;
  PagedKVCache c(cfg);
  // Pre-RoPE keys; the model hands them rotated at their original positions.
  const std::vector<float> raw = testing::normal(T * D, 1), v = testing::normal(T * D, 2);
  std::vector<float> rot = raw;
  std::vector<int64_t> pos(T);
  std::iota(pos.begin(), pos.end(), 100);
  kv::apply_rope(rot.data(), T, D, D, pos.data(), cfg.rope_style, cfg.rope_theta);
  c.append(0, ConstMatrixView<float>(rot.data(), T, D), ConstMatrixView<float>(v.data(), T, D),
           pos.data(), T);
  std::vector<int64_t> ev = {2, 3, 4, 5, 6};  // StreamingLLM: 2 sinks + 6 recent
  c.evict(0, 0, ev.data(), ev.size(), false);
  ASSERT_EQ(c.length(0, 0), 8u);
  std::vector<float> qraw = testing::normal(D, 3), qrot = qraw;
  const int64_t qp = 112;
  kv::apply_rope(qrot.data(), 1, D, D, &qp, cfg.rope_style, cfg.rope_theta);
  std::vector<float> out(D);
  kv::decode_attention(c, 0, ConstMatrixView<float>(qrot.data(), 1, D),
                       MatrixView<float>(out.data(), 1, D), MatrixView<float>(), nullptr, 0, {});
  // Reference: kept raw keys rotated to ranks 0..7, query to rank 7.
  std::vector<int64_t> kept = {0, 1, 7, 8, 9, 10, 11, 12}, ranks(8);
  std::iota(ranks.begin(), ranks.end(), 0);
  std::vector<float> K, V;
  for (int64_t s : kept) {
    K.insert(K.end(), raw.begin() + s * D, raw.begin() + (s + 1) * D);
    V.insert(V.end(), v.begin() + s * D, v.begin() + (s + 1) * D);
  }
  kv::apply_rope(K.data(), 8, D, D, ranks.data(), cfg.rope_style, cfg.rope_theta);
  std::vector<float> qr = qraw;
  const int64_t r7 = 7;
  kv::apply_rope(qr.data(), 1, D, D, &r7, cfg.rope_style, cfg.rope_theta);
  std::vector<double> qd(qr.begin(), qr.end()), o, p;
  reference_attention(qd, 1, K, V, 8, D, D, 1.0 / std::sqrt(8.0), &o, &p);
  for (size_t i = 0; i < D; ++i) EXPECT_NEAR(out[i], o[i], 1e-5);
}

TEST(Quest, BoundsAreUpperBoundsAndSelectionIsTopK) {
  const size_t Hkv = 2, G = 2, D = 19, S = 8, T = 101;
  PagedKVCache c(make_config(1, Hkv, D, S));
  append(c, 0, tokens(T, Hkv, D, 21));
  const std::vector<float> q = testing::normal(Hkv * G * D, 4);
  const size_t np = 13;
  std::vector<float> ub(Hkv * np);
  kv::quest_page_scores(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D), kv::GroupReduce::kMax,
                        MatrixView<float>(ub.data(), Hkv, np), 1);
  for (size_t h = 0; h < Hkv; ++h) {
    std::vector<float> K, V;
    gather(c, 0, h, &K, &V);
    for (size_t p = 0; p < np; ++p) {
      double best = -1e300;
      for (size_t s = p * S; s < std::min(T, (p + 1) * S); ++s)
        for (size_t g = 0; g < G; ++g) {
          double a = 0;
          for (size_t i = 0; i < D; ++i) a += double(q[(h * G + g) * D + i]) * K[s * D + i];
          best = std::max(best, a);
        }
      EXPECT_GE(ub[h * np + p] + 1e-4, best);
    }
    std::vector<int32_t> sel(Hkv * 5);
    kv::quest_select(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D), 5, kv::GroupReduce::kMax,
                     sel.data(), 2);
    std::vector<int32_t> order(np - 1);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return ub[h * np + a] > ub[h * np + b]; });
    std::vector<int32_t> want(order.begin(), order.begin() + 4);
    std::sort(want.begin(), want.end());
    want.push_back(static_cast<int32_t>(np - 1));
    EXPECT_EQ(std::vector<int32_t>(sel.begin() + h * 5, sel.begin() + h * 5 + 5), want);
  }
}

TEST(WindowMass, MatchesCausalReference) {
  const size_t T = 29, Hkv = 2, G = 2, D = 9;
  const std::vector<float> q = testing::normal(T * Hkv * G * D, 1),
                           k = testing::normal(T * Hkv * D, 2);
  for (size_t w : {1u, 5u, 29u}) {
    std::vector<float> out(Hkv * T);
    kv::window_attention_mass(ConstMatrixView<float>(q.data(), T, Hkv * G * D),
                              ConstMatrixView<float>(k.data(), T, Hkv * D), Hkv * G, Hkv, w, 0.f,
                              kv::GroupReduce::kSum, MatrixView<float>(out.data(), Hkv, T), 2);
    for (size_t h = 0; h < Hkv; ++h) {
      std::vector<double> want(T, 0.0);
      for (size_t g = 0; g < G; ++g)
        for (size_t i = T - w; i < T; ++i) {
          std::vector<double> s(i + 1);
          double m = -1e300, z = 0;
          for (size_t t = 0; t <= i; ++t) {
            double a = 0;
            for (size_t d = 0; d < D; ++d)
              a += double(q[i * Hkv * G * D + (h * G + g) * D + d]) * k[t * Hkv * D + h * D + d];
            s[t] = a / 3.0;
            m = std::max(m, s[t]);
          }
          for (size_t t = 0; t <= i; ++t) z += (s[t] = std::exp(s[t] - m));
          for (size_t t = 0; t <= i; ++t) want[t] += s[t] / z;
        }
      for (size_t t = 0; t < T; ++t) EXPECT_NEAR(out[h * T + t], want[t], 1e-5);
    }
  }
}

TEST(DecodeAttention, BadArgumentsThrow) {
  PagedKVCache c(make_config(1, 2, 4, 4));
  append(c, 0, tokens(9, 2, 4, 1));
  std::vector<float> q(3 * 4), out(3 * 4);
  EXPECT_THROW(kv::decode_attention(c, 0, ConstMatrixView<float>(q.data(), 3, 4),
                                    MatrixView<float>(out.data(), 3, 4), MatrixView<float>(),
                                    nullptr, 0, {}),
               InvalidArgument);
  std::vector<float> q2(4 * 4), out2(4 * 4);
  std::vector<int32_t> pages = {3, -1, 0, 1};
  EXPECT_THROW(kv::decode_attention(c, 0, ConstMatrixView<float>(q2.data(), 4, 4),
                                    MatrixView<float>(out2.data(), 4, 4), MatrixView<float>(),
                                    pages.data(), 2, {}),
               InvalidArgument);
  pages = {1, 0, 0, 1};
  EXPECT_THROW(kv::decode_attention(c, 0, ConstMatrixView<float>(q2.data(), 4, 4),
                                    MatrixView<float>(out2.data(), 4, 4), MatrixView<float>(),
                                    pages.data(), 2, {}),
               InvalidArgument);
  std::vector<int32_t> sel(2);
  EXPECT_THROW(kv::quest_select(c, 0, ConstMatrixView<float>(q2.data(), 4, 4), 0,
                                kv::GroupReduce::kSum, sel.data(), 1),
               InvalidArgument);
}

// TOVA's selection: float64 mean over kv heads, lowest first, newer position on ties, the same
// slot from every head (hole filled from the tail for one, order kept for several).
TEST(PagedKVCache, EvictLowestMeanTiesNewerSameSlotsEveryHead) {
  PagedKVCache c(make_config(1, 2, 4, 2));
  Tokens t = tokens(5, 2, 4, 7);
  t.pos = {3, 5, 8, 9, 12};
  append(c, 0, t);
  // means (exact binary fractions): .375 .25 .25 .5 .25 -> slots 1, 2, 4 tie, 4 (pos 12) goes
  const float m[10] = {0.5f, 0.25f, 0.5f, 0.5f, 0.5f, 0.25f, 0.25f, 0.0f, 0.5f, 0.0f};
  auto ev = c.evict_lowest_mean(0, ConstMatrixView<float>(m, 2, 5), 1);
  EXPECT_EQ(ev, (std::vector<int64_t>{12}));
  for (size_t h = 0; h < 2; ++h) {
    ASSERT_EQ(c.length(0, h), 4u);
    EXPECT_EQ(std::vector<int64_t>(c.positions(0, h), c.positions(0, h) + 4),
              (std::vector<int64_t>{3, 5, 8, 9}));
  }
  // Two at once: means .375 .25 .25 .5 (stride 5 > length) -> slots 1, 2 go, order kept.
  ev = c.evict_lowest_mean(0, ConstMatrixView<float>(m, 2, 4, 5), 2);
  EXPECT_EQ(ev, (std::vector<int64_t>{5, 8}));
  for (size_t h = 0; h < 2; ++h)
    EXPECT_EQ(std::vector<int64_t>(c.positions(0, h), c.positions(0, h) + 2),
              (std::vector<int64_t>{3, 9}));
  // A hole filled from the tail: evicting slot 0 of {3, 9} leaves {9}.
  const float z[4] = {0.f, 1.f, 0.f, 1.f};
  EXPECT_EQ(c.evict_lowest_mean(0, ConstMatrixView<float>(z, 2, 2), 1), (std::vector<int64_t>{3}));
  EXPECT_EQ(c.positions(0, 1)[0], 9);
  EXPECT_TRUE(c.evict_lowest_mean(0, ConstMatrixView<float>(z, 2, 2), 0).empty());
  // Errors: mass shape, heads of unequal length.
  EXPECT_THROW(c.evict_lowest_mean(0, ConstMatrixView<float>(z, 1, 2), 1), InvalidArgument);
  EXPECT_THROW(c.evict_lowest_mean(0, ConstMatrixView<float>(), 1), InvalidArgument);
  append(c, 0, tokens(3, 2, 4, 8, 20));
  const int64_t one = 0;
  c.evict(0, 1, &one, 1, true);
  EXPECT_THROW(c.evict_lowest_mean(0, ConstMatrixView<float>(z, 2, 2, 0), 1), InvalidArgument);
}

// The fused TOVA step: same output as decode_attention, and the slot whose float64 mean of
// the mass is the lowest is gone from every head; 1 and 2 threads give identical caches.
TEST(DecodeAttention, TovaStepMatchesUnfusedSelection) {
  const size_t Hkv = 3, G = 2, D = 20, T = 150, B = 120;
  std::vector<std::vector<int64_t>> kept;
  for (int nt : {1, 2}) {
    PagedKVCache c(make_config(1, Hkv, D, 8));
    append(c, 0, tokens(T, Hkv, D, 11));
    kv::DecodeOptions opt;
    opt.reduce = kv::GroupReduce::kMean;
    opt.num_threads = nt;
    for (size_t step = 0; step < T - B; ++step) {
      const std::vector<float> q = testing::normal(Hkv * G * D, 100 + step);
      const size_t L = c.length(0, 0);
      std::vector<float> o_ref(Hkv * G * D), o(o_ref.size()), m(Hkv * L);
      kv::decode_attention(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                           MatrixView<float>(o_ref.data(), Hkv * G, D),
                           MatrixView<float>(m.data(), Hkv, L), nullptr, 0, opt);
      size_t best = 0;
      double best_score = std::numeric_limits<double>::infinity();
      for (size_t s = 0; s < L; ++s) {
        double acc = 0;
        for (size_t h = 0; h < Hkv; ++h) acc += m[h * L + s];
        acc /= static_cast<double>(Hkv);
        if (acc < best_score ||
            (acc == best_score && c.positions(0, 0)[s] > c.positions(0, 0)[best])) {
          best = s;
          best_score = acc;
        }
      }
      const int64_t gone = c.positions(0, 0)[best];
      const size_t budget = step % 2 ? L : L - 1;  // every other step keeps all (budget >= L)
      kv::decode_attention_tova(c, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                                MatrixView<float>(o.data(), Hkv * G, D), budget, opt);
      EXPECT_EQ(0, std::memcmp(o.data(), o_ref.data(), o.size() * 4));
      const size_t L2 = c.length(0, 0);
      EXPECT_EQ(L2, step % 2 ? L : L - 1);
      for (size_t h = 0; h < Hkv; ++h) {
        ASSERT_EQ(c.length(0, h), L2);
        const int64_t* p = c.positions(0, h);
        EXPECT_EQ(std::count(p, p + L2, gone), step % 2 ? 1 : 0);
        EXPECT_TRUE(std::equal(p, p + L2, c.positions(0, 0)));
      }
    }
    kept.emplace_back(c.positions(0, 0), c.positions(0, 0) + c.length(0, 0));
  }
  EXPECT_EQ(kept[0], kept[1]);
}

// The fused H2O step equals decode_attention(accumulate) + evict_lowest on every head.
TEST(DecodeAttention, H2oStepMatchesUnfused) {
  const size_t Hkv = 2, G = 3, D = 16, T = 90, B = 64, R = 16;
  PagedKVCache a(make_config(1, Hkv, D, 8)), b(make_config(1, Hkv, D, 8));
  append(a, 0, tokens(T, Hkv, D, 5));
  append(b, 0, tokens(T, Hkv, D, 5));
  kv::DecodeOptions opt;
  for (size_t step = 0; step < 5; ++step) {
    const std::vector<float> q = testing::normal(Hkv * G * D, 40 + step);
    std::vector<float> oa(Hkv * G * D), ob(oa.size());
    kv::decode_attention_h2o(a, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                             MatrixView<float>(oa.data(), Hkv * G, D), B + 4 - step, R, opt);
    kv::DecodeOptions acc = opt;
    acc.accumulate_scores = true;
    kv::decode_attention(b, 0, ConstMatrixView<float>(q.data(), Hkv * G, D),
                         MatrixView<float>(ob.data(), Hkv * G, D), MatrixView<float>(), nullptr, 0,
                         acc);
    for (size_t h = 0; h < Hkv; ++h) b.evict_lowest(0, h, b.length(0, h) - (B + 4 - step), 0, R);
    EXPECT_EQ(0, std::memcmp(oa.data(), ob.data(), oa.size() * 4));
    for (size_t h = 0; h < Hkv; ++h) {
      ASSERT_EQ(a.length(0, h), B + 4 - step);
      EXPECT_TRUE(
          std::equal(a.positions(0, h), a.positions(0, h) + a.length(0, h), b.positions(0, h)));
      EXPECT_TRUE(std::equal(a.scores(0, h), a.scores(0, h) + a.length(0, h), b.scores(0, h)));
    }
  }
  EXPECT_EQ(a.evict_lowest_layer(0, 1000, 0, 0), 0u);
}

}  // namespace
}  // namespace sparseforge
