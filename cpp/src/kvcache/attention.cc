#include "sparseforge/kvcache/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kvcache/simd/kv.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace kv {

extern const KvTable kKvTableScalar;
#if SF_HAVE_X86_KERNELS
extern const KvTable kKvTableAVX2;
extern const KvTable kKvTableAVX512;
#endif

const KvTable& kv_table_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kKvTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kKvTableAVX2;
#endif
  return kKvTableScalar;
}

const KvTable& kv_table() { return kv_table_for(static_cast<int>(simd_level())); }

namespace {

float reduce_group(const float* p, size_t ld, size_t G, GroupReduce r) {
  float acc = p[0];
  for (size_t g = 1; g < G; ++g) {
    const float x = p[g * ld];
    acc = r == GroupReduce::kMax ? std::max(acc, x) : acc + x;
  }
  return r == GroupReduce::kMean ? acc / static_cast<float>(G) : acc;
}

// Softmax of each of G rows of n scores in place (max-subtracted, vectorised exp, scaled).
void softmax_rows(const KvTable& kt, float* s, size_t lds, size_t n, size_t G) {
  for (size_t g = 0; g < G; ++g) {
    float* r = s + g * lds;
    const float m = kt.row_max(r, n);
    const float inv = 1.0f / kt.exp_sum(r, n, m);
    for (size_t t = 0; t < n; ++t) r[t] *= inv;
  }
}

void check_query(const PagedKVCache& cache, ConstMatrixView<float> q) {
  const size_t Hkv = cache.config().num_kv_heads;
  SF_CHECK_ARG(q.rows >= 1 && q.rows % Hkv == 0 && q.cols == cache.key_dim(),
               "q: expected shape (num_heads, head_dim) with num_heads a multiple of "
               "num_kv_heads=%zu and head_dim=%zu, got (%zu, %zu)",
               Hkv, cache.key_dim(), q.rows, q.cols);
}

// Pages are separate allocations, so the hardware prefetcher restarts at every page and the
// first rows of each page stall on memory (perf: ~70% of the score kernel's cycles waited
// on the key load). The driver asks for the page two ahead while it works on the current one.
constexpr size_t kPrefetchPages = 2;
inline void prefetch_bytes(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

// Rerotate mode: key rows [0, r) of a page (slots slot0..) to fp32, rotated to their slot
// index with the cache's cos/sin table (the same arithmetic as PagedKVCache::gather).
void rotate_keys(const PagedKVCache& cache, const void* kp, size_t r, size_t slot0, float* dst) {
  const CacheConfig& cfg = cache.config();
  const size_t Dk = cfg.head_dim, half = Dk / 2;
  const float* tab = cache.rope_table();
  for (size_t i = 0; i < r; ++i) {
    float* kr = dst + i * Dk;
    const char* src = static_cast<const char*>(kp) + i * Dk * dtype_size(cfg.dtype);
    visit_dtype(cfg.dtype, [&](auto tag) {
      using T = decltype(tag);
      const T* x = reinterpret_cast<const T*>(src);
      for (size_t d = 0; d < Dk; ++d) kr[d] = to_f32(x[d]);
    });
    const float* cs = tab + (slot0 + i) * Dk;
    for (size_t f = 0; f < half; ++f) {
      const float c = cs[f], sn = cs[half + f];
      float* a = cfg.rope_style == RopeStyle::kInterleaved ? kr + 2 * f : kr + f;
      float* b = cfg.rope_style == RopeStyle::kInterleaved ? kr + 2 * f + 1 : kr + f + half;
      const float xa = *a, xb = *b;
      *a = xa * c - xb * sn;
      *b = xa * sn + xb * c;
    }
  }
}

// Threads for a call reading `bytes`: a parallel region costs more than it saves below
// ~64 KiB per thread (the dense kernels' rule, kernels/dense.cc plan_threads).
int plan_threads(int num_threads, size_t bytes) {
  constexpr size_t kMinBytesPerThread = size_t{64} << 10;
  const int threads = resolve_num_threads(num_threads);
  const size_t cap = std::max<size_t>(1, bytes / kMinBytesPerThread);
  return static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), cap));
}

}  // namespace

void decode_attention(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                      MatrixView<float> out, MatrixView<float> mass, const int32_t* pages,
                      size_t page_stride, const DecodeOptions& options) {
  const CacheConfig& cfg = cache.config();
  SF_CHECK_ARG(layer < cfg.num_layers, "layer: expected in [0, %zu), got %zu", cfg.num_layers,
               layer);
  check_query(cache, q);
  const size_t Hkv = cfg.num_kv_heads, H = q.rows, G = H / Hkv, Dk = cache.key_dim(),
               Dv = cache.value_dim(), S = cfg.page_size;
  SF_CHECK_ARG(out.rows == H && out.cols == Dv, "out: expected shape (%zu, %zu), got (%zu, %zu)", H,
               Dv, out.rows, out.cols);
  const size_t maxlen = cache.max_length(layer);
  const bool want_mass = mass.data != nullptr;
  if (want_mass) {
    SF_CHECK_ARG(mass.rows == Hkv && mass.cols >= maxlen,
                 "mass: expected shape (%zu, >= %zu), got (%zu, %zu)", Hkv, maxlen, mass.rows,
                 mass.cols);
  }
  const bool rerotate = cfg.rope_mode == RopeMode::kRerotate;
  if (pages != nullptr) {
    SF_CHECK_ARG(!rerotate, "pages: page-sparse attention needs rope_mode='original'");
    for (size_t h = 0; h < Hkv; ++h) {
      const int64_t np = static_cast<int64_t>(cache.num_pages(layer, h));
      int64_t prev = -1;
      for (size_t j = 0; j < page_stride; ++j) {
        const int64_t p = pages[h * page_stride + j];
        if (p < 0) continue;
        SF_CHECK_ARG(p < np, "pages: page %lld of kv head %zu out of range [0, %lld)",
                     static_cast<long long>(p), h, static_cast<long long>(np));
        SF_CHECK_ARG(p > prev, "pages: the pages of kv head %zu must be strictly ascending", h);
        prev = p;
      }
    }
  }
  float scale = options.scale;
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(Dk));
  SF_CHECK_ARG(std::isfinite(scale), "scale: expected a finite value, got %g",
               static_cast<double>(scale));
  if (rerotate) cache.ensure_rope_table(maxlen);
  SF_CHECK_ARG(options.reduce != GroupReduce::kNone,
               "group_reduce: expected 'mean', 'max' or 'sum' for decode attention");
  const int64_t qpos =
      options.query_position >= 0 ? options.query_position : cache.last_position(layer);
  const KvTable& kt = kv_table();
  const int dt = static_cast<int>(cfg.dtype);
  size_t bytes = 0;
  for (size_t h = 0; h < Hkv; ++h) {
    const size_t np = cache.num_pages(layer, h);
    size_t used = np;
    if (pages != nullptr) {
      used = 0;
      for (size_t j = 0; j < page_stride; ++j) used += pages[h * page_stride + j] >= 0;
    }
    bytes += used * cache.page_bytes();
  }
  const int threads = plan_threads(options.num_threads, bytes);

  parallel_for_each(Hkv, threads, [&](size_t h) {
    const size_t len = cache.length(layer, h);
    float* oh = out.row(h * G);
    for (size_t g = 0; g < G; ++g) std::fill(out.row(h * G + g), out.row(h * G + g) + Dv, 0.0f);
    if (want_mass) std::fill(mass.row(h), mass.row(h) + mass.cols, 0.0f);
    if (len == 0) return;
    // The page list.
    std::vector<uint32_t> sel;
    const size_t np = cache.num_pages(layer, h);
    if (pages == nullptr) {
      sel.resize(np);
      for (size_t p = 0; p < np; ++p) sel[p] = static_cast<uint32_t>(p);
    } else {
      for (size_t j = 0; j < page_stride; ++j)
        if (pages[h * page_stride + j] >= 0)
          sel.push_back(static_cast<uint32_t>(pages[h * page_stride + j]));
    }
    auto rows_of = [&](size_t p) { return std::min(S, len - p * S); };
    size_t ntok = 0;
    for (uint32_t p : sel) ntok += rows_of(p);
    if (ntok == 0) return;
    // Queries (rotated to the cache's position frame in rerotate mode).
    const float* qh = q.row(h * G);
    size_t ldq = q.stride;
    std::vector<float> qbuf;
    if (rerotate) {
      qbuf.resize(G * Dk);
      for (size_t g = 0; g < G; ++g)
        std::memcpy(&qbuf[g * Dk], q.row(h * G + g), Dk * sizeof(float));
      rotate_rope(qbuf.data(), G, Dk, Dk, static_cast<double>(len - 1) - static_cast<double>(qpos),
                  cfg.rope_style, cfg.rope_theta);
      qh = qbuf.data();
      ldq = Dk;
    }
    thread_local std::vector<float> sbuf;
    thread_local std::vector<float> kbuf;
    if (sbuf.size() < G * ntok) sbuf.resize(G * ntok);
    float* s = sbuf.data();
    // One pass over the selected pages (online softmax, FlashAttention-style): a page's K
    // rows then its V rows are one contiguous 2 * S * D block, so the pass is one stream
    // (two separate K and V passes read at ~60% of this speed: interleaved 8 KiB blocks).
    // Per query head g: running max m_g, running sum z_g, and the output row rescaled by
    // exp(m_old - m_new) when the max grows. Probabilities stay in s relative to the max in
    // force at their page (pmax), so the mass costs one multiply per key at the end.
    const size_t pbytes = cache.page_bytes();
    thread_local std::vector<float> state;
    if (state.size() < 2 * G + G * sel.size()) state.resize(2 * G + G * sel.size());
    float* m = state.data();
    float* z = m + G;
    float* pmax = z + G;  // (G, pages)
    std::fill(m, m + G, -std::numeric_limits<float>::infinity());
    std::fill(z, z + G, 0.0f);
    for (size_t j = 0; j < std::min(kPrefetchPages, sel.size()); ++j)
      prefetch_bytes(cache.key_page(layer, h, sel[j]), pbytes);
    // The page kPrefetchPages ahead: its key part is prefetched by the score kernel, its
    // value part by the value kernel, a few cache lines per row (one burst of requests per
    // page stalled on the line-fill buffers and did not overlap the arithmetic).
    const size_t kpart = cfg.latent ? pbytes : S * Dk * dtype_size(cfg.dtype);
    size_t off = 0;
    for (size_t j = 0; j < sel.size(); ++j) {
      const uint32_t p = sel[j];
      const char* ahead =
          j + kPrefetchPages < sel.size()
              ? static_cast<const char*>(cache.key_page(layer, h, sel[j + kPrefetchPages]))
              : nullptr;
      const size_t r = rows_of(p);
      const void* kp = cache.key_page(layer, h, p);
      if (rerotate) {
        if (kbuf.size() < S * Dk) kbuf.resize(S * Dk);
        rotate_keys(cache, kp, r, p * S, kbuf.data());
        kt.scores[0](kbuf.data(), Dk, r, Dk, qh, ldq, G, scale, s + off, ntok, ahead, kpart);
      } else {
        kt.scores[dt](kp, cache.key_stride(), r, Dk, qh, ldq, G, scale, s + off, ntok, ahead,
                      kpart);
      }
      for (size_t g = 0; g < G; ++g) {
        float* sg = s + g * ntok + off;
        const float mn = std::max(m[g], kt.row_max(sg, r));
        if (mn > m[g]) {
          const float f = std::exp(m[g] - mn);  // 0 on the first page (m = -inf)
          z[g] *= f;
          float* og = out.row(h * G + g);
          for (size_t d = 0; d < Dv; ++d) og[d] *= f;
          m[g] = mn;
        }
        z[g] += kt.exp_sum(sg, r, mn);
        pmax[g * sel.size() + j] = mn;
      }
      kt.accum[dt](cache.value_page(layer, h, p), cache.value_stride(), r, Dv, s + off, ntok, G, oh,
                   out.stride, ahead == nullptr ? nullptr : ahead + kpart, pbytes - kpart);
      off += r;
    }
    for (size_t g = 0; g < G; ++g) {
      const float inv = 1.0f / z[g];
      float* og = out.row(h * G + g);
      for (size_t d = 0; d < Dv; ++d) og[d] *= inv;
      // Final probabilities: p = s * exp(pmax - m) / z, page by page.
      float* sg = s + g * ntok;
      size_t o2 = 0;
      for (size_t j = 0; j < sel.size(); ++j) {
        const size_t r = rows_of(sel[j]);
        const float f = std::exp(pmax[g * sel.size() + j] - m[g]) * inv;
        for (size_t i = 0; i < r; ++i) sg[o2 + i] *= f;
        o2 += r;
      }
    }
    // Mass per slot (and the policy's accumulator).
    if (want_mass || options.accumulate_scores) {
      float* acc = options.accumulate_scores ? cache.scores(layer, h) : nullptr;
      float* mrow = want_mass ? mass.row(h) : nullptr;
      off = 0;
      for (uint32_t p : sel) {
        const size_t r = rows_of(p);
        for (size_t i = 0; i < r; ++i) {
          const float pm = reduce_group(s + off + i, ntok, G, options.reduce);
          if (mrow != nullptr) mrow[p * S + i] = pm;
          if (acc != nullptr) acc[p * S + i] += pm;
        }
        off += r;
      }
    }
  });
}

void quest_page_scores(const PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                       GroupReduce reduce, MatrixView<float> ub, int num_threads) {
  const CacheConfig& cfg = cache.config();
  SF_CHECK_ARG(layer < cfg.num_layers, "layer: expected in [0, %zu), got %zu", cfg.num_layers,
               layer);
  check_query(cache, q);
  SF_CHECK_ARG(cfg.page_bounds, "cache: Quest needs a cache built with page_bounds=True");
  SF_CHECK_ARG(cfg.rope_mode == RopeMode::kOriginal,
               "cache: Quest needs rope_mode='original' (bounds of rotated keys)");
  SF_CHECK_ARG(reduce != GroupReduce::kNone, "group_reduce: expected 'mean', 'max' or 'sum'");
  const size_t Hkv = cfg.num_kv_heads, G = q.rows / Hkv, Dk = cache.key_dim();
  size_t maxp = 0;
  for (size_t h = 0; h < Hkv; ++h) maxp = std::max(maxp, cache.num_pages(layer, h));
  SF_CHECK_ARG(ub.rows == Hkv && ub.cols >= maxp,
               "ub: expected shape (%zu, >= %zu), got (%zu, %zu)", Hkv, maxp, ub.rows, ub.cols);
  const KvTable& kt = kv_table();
  const int threads = plan_threads(num_threads, Hkv * maxp * 2 * Dk * sizeof(float));
  parallel_for_each(Hkv, threads, [&](size_t h) {
    const size_t np = cache.num_pages(layer, h);
    float* row = ub.row(h);
    std::fill(row, row + ub.cols, 0.0f);
    if (np == 0) return;
    std::vector<float> u(G * np);
    kt.page_bound(cache.page_bounds(layer, h, 0), 2 * Dk, np, Dk, q.row(h * G), q.stride, G,
                  u.data(), np);
    for (size_t p = 0; p < np; ++p) row[p] = reduce_group(u.data() + p, np, G, reduce);
  });
}

void decode_attention_tova(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                           MatrixView<float> out, size_t budget, const DecodeOptions& options) {
  const size_t maxlen = cache.max_length(layer), Hkv = cache.config().num_kv_heads;
  // The mass never leaves C++: a per-thread buffer reused across steps and layers (no
  // allocation, no page faults in steady state).
  thread_local std::vector<float> scratch;
  if (scratch.size() < Hkv * maxlen) scratch.resize(Hkv * maxlen);
  MatrixView<float> mass;
  if (maxlen > 0) mass = MatrixView<float>(scratch.data(), Hkv, maxlen);
  DecodeOptions opt = options;
  opt.accumulate_scores = false;
  decode_attention(cache, layer, q, out, mass, nullptr, 0, opt);
  const size_t len = cache.length(layer, 0);
  if (len > budget) cache.evict_lowest_mean(layer, mass, len - budget);
}

void decode_attention_h2o(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                          MatrixView<float> out, size_t budget, size_t recent,
                          const DecodeOptions& options) {
  DecodeOptions opt = options;
  opt.accumulate_scores = true;
  decode_attention(cache, layer, q, out, MatrixView<float>(), nullptr, 0, opt);
  cache.evict_lowest_layer(layer, budget, 0, recent);
}

void quest_select(const PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                  size_t page_budget, GroupReduce reduce, int32_t* out, int num_threads) {
  const CacheConfig& cfg = cache.config();
  SF_CHECK_ARG(page_budget >= 1, "page_budget: expected >= 1, got %zu", page_budget);
  SF_CHECK_ARG(layer < cfg.num_layers, "layer: expected in [0, %zu), got %zu", cfg.num_layers,
               layer);
  check_query(cache, q);
  SF_CHECK_ARG(cfg.page_bounds, "cache: Quest needs a cache built with page_bounds=True");
  SF_CHECK_ARG(cfg.rope_mode == RopeMode::kOriginal,
               "cache: Quest needs rope_mode='original' (bounds of rotated keys)");
  SF_CHECK_ARG(reduce != GroupReduce::kNone, "group_reduce: expected 'mean', 'max' or 'sum'");
  const size_t Hkv = cfg.num_kv_heads, G = q.rows / Hkv, Dk = cache.key_dim();
  const KvTable& kt = kv_table();
  size_t npages = 0;
  for (size_t h = 0; h < Hkv; ++h) npages += cache.num_pages(layer, h);
  const int threads = plan_threads(num_threads, npages * 2 * Dk * sizeof(float));
  parallel_for_each(Hkv, threads, [&](size_t h) {
    int32_t* o = out + h * page_budget;
    std::fill(o, o + page_budget, -1);
    const size_t np = cache.num_pages(layer, h);
    if (np <= page_budget) {
      for (size_t p = 0; p < np; ++p) o[p] = static_cast<int32_t>(p);
      return;
    }
    // Rank every page but the last (always attended, never ranked: Quest controller.py).
    const size_t nr = np - 1, k = page_budget - 1;
    std::vector<float> u(G * nr), score(nr);
    kt.page_bound(cache.page_bounds(layer, h, 0), 2 * Dk, nr, Dk, q.row(h * G), q.stride, G,
                  u.data(), nr);
    for (size_t p = 0; p < nr; ++p) score[p] = reduce_group(u.data() + p, nr, G, reduce);
    std::vector<uint32_t> idx(nr);
    for (size_t p = 0; p < nr; ++p) idx[p] = static_cast<uint32_t>(p);
    auto better = [&](uint32_t a, uint32_t b) {
      if (score[a] != score[b]) return score[a] > score[b];
      return a < b;
    };
    if (k > 0) {
      std::nth_element(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k - 1), idx.end(),
                       better);
    }
    idx.resize(k);
    std::sort(idx.begin(), idx.end());
    for (size_t j = 0; j < k; ++j) o[j] = static_cast<int32_t>(idx[j]);
    o[k] = static_cast<int32_t>(np - 1);
  });
}

void window_attention_mass(const AnyConstMatrix& q, const AnyConstMatrix& k, size_t num_heads,
                           size_t num_kv_heads, size_t window, float scale, GroupReduce reduce,
                           MatrixView<float> out, int num_threads) {
  SF_CHECK_ARG(num_kv_heads >= 1 && num_heads >= 1 && num_heads % num_kv_heads == 0,
               "num_heads: expected a positive multiple of num_kv_heads=%zu, got %zu", num_kv_heads,
               num_heads);
  const size_t T = k.rows;
  SF_CHECK_ARG(k.cols % num_kv_heads == 0, "k: columns %zu not a multiple of num_kv_heads=%zu",
               k.cols, num_kv_heads);
  const size_t Dk = k.cols / num_kv_heads;
  SF_CHECK_ARG(q.rows == T && q.cols == num_heads * Dk,
               "q: expected shape (%zu, %zu) = (tokens, num_heads * head_dim), got (%zu, %zu)", T,
               num_heads * Dk, q.rows, q.cols);
  SF_CHECK_ARG(window >= 1 && window <= T, "window: expected in [1, %zu], got %zu", T, window);
  const size_t out_rows = reduce == GroupReduce::kNone ? num_heads : num_kv_heads;
  SF_CHECK_ARG(out.rows == out_rows && out.cols == T,
               "out: expected shape (%zu, %zu), got (%zu, %zu)", out_rows, T, out.rows, out.cols);
  if (scale == 0.0f) scale = 1.0f / std::sqrt(static_cast<float>(Dk));
  const size_t G = num_heads / num_kv_heads;
  const KvTable& kt = kv_table();
  const int dt = static_cast<int>(k.dtype);
  const size_t kes = dtype_size(k.dtype), qes = dtype_size(q.dtype);
  // Work ~ window * T * H * Dk multiply-adds; count it as bytes of a memory-bound pass.
  const int threads = plan_threads(num_threads, window * T * num_heads * Dk);
  parallel_for_each(num_kv_heads, threads, [&](size_t h) {
    std::vector<float> acc(G * T, 0.0f), s(G * T), qbuf(G * Dk);
    const void* kh = static_cast<const char*>(k.data) + h * Dk * kes;
    for (size_t i = T - window; i < T; ++i) {
      for (size_t g = 0; g < G; ++g) {
        const char* src =
            static_cast<const char*>(q.data) + (i * q.stride + (h * G + g) * Dk) * qes;
        visit_dtype(q.dtype, [&](auto tag) {
          using Tq = decltype(tag);
          const Tq* x = reinterpret_cast<const Tq*>(src);
          for (size_t d = 0; d < Dk; ++d) qbuf[g * Dk + d] = to_f32(x[d]);
        });
      }
      const size_t n = i + 1;
      kt.scores[dt](kh, k.stride, n, Dk, qbuf.data(), Dk, G, scale, s.data(), T, nullptr, 0);
      softmax_rows(kt, s.data(), T, n, G);
      for (size_t g = 0; g < G; ++g)
        for (size_t t = 0; t < n; ++t) acc[g * T + t] += s[g * T + t];
    }
    if (reduce == GroupReduce::kNone) {
      for (size_t g = 0; g < G; ++g) std::copy(&acc[g * T], &acc[g * T] + T, out.row(h * G + g));
      return;
    }
    float* o = out.row(h);
    for (size_t t = 0; t < T; ++t) o[t] = reduce_group(acc.data() + t, T, G, reduce);
  });
}

}  // namespace kv
}  // namespace sparseforge
