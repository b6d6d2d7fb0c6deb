#include "sparseforge/kvcache/paged_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "sparseforge/core/error.h"

namespace sparseforge {
namespace kv {

namespace {

constexpr size_t kPageAlign = 64;

// Row conversions through fp32 (exact when the dtypes match).
void load_row(const void* src, DType t, float* dst, size_t n) {
  switch (t) {
    case DType::kF16:
      convert(static_cast<const Float16*>(src), dst, n);
      break;
    case DType::kBF16:
      convert(static_cast<const BFloat16*>(src), dst, n);
      break;
    case DType::kF32:
    default:
      std::memcpy(dst, src, n * sizeof(float));
  }
}

void store_row(const float* src, DType t, void* dst, size_t n) {
  switch (t) {
    case DType::kF16:
      convert(src, static_cast<Float16*>(dst), n);
      break;
    case DType::kBF16:
      convert(src, static_cast<BFloat16*>(dst), n);
      break;
    case DType::kF32:
    default:
      std::memcpy(dst, src, n * sizeof(float));
  }
}

// Pairs (a, b) rotated by angle p * f_i: interleaved (2i, 2i+1), half (i, i + dim/2).
void rotate_row(float* x, size_t dim, double p, RopeStyle style, double theta) {
  const size_t half = dim / 2;
  for (size_t i = 0; i < half; ++i) {
    const double f = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(dim));
    const double ang = p * f;
    const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
    float* a = style == RopeStyle::kInterleaved ? x + 2 * i : x + i;
    float* b = style == RopeStyle::kInterleaved ? x + 2 * i + 1 : x + i + half;
    const float xa = *a, xb = *b;
    *a = xa * c - xb * s;
    *b = xa * s + xb * c;
  }
}

}  // namespace

void apply_rope(float* x, size_t n, size_t dim, size_t ld, const int64_t* pos, RopeStyle style,
                double theta) {
  SF_CHECK_ARG(dim % 2 == 0, "head_dim: RoPE needs an even head_dim, got %zu", dim);
  for (size_t r = 0; r < n; ++r)
    rotate_row(x + r * ld, dim, static_cast<double>(pos[r]), style, theta);
}

void rotate_rope(float* x, size_t n, size_t dim, size_t ld, double delta, RopeStyle style,
                 double theta) {
  SF_CHECK_ARG(dim % 2 == 0, "head_dim: RoPE needs an even head_dim, got %zu", dim);
  for (size_t r = 0; r < n; ++r) rotate_row(x + r * ld, dim, delta, style, theta);
}

PagedKVCache::PagedKVCache(const CacheConfig& config) : cfg_(config) {
  SF_CHECK_ARG(cfg_.num_layers >= 1, "num_layers: expected >= 1, got %zu", cfg_.num_layers);
  SF_CHECK_ARG(cfg_.num_kv_heads >= 1, "num_kv_heads: expected >= 1, got %zu", cfg_.num_kv_heads);
  SF_CHECK_ARG(cfg_.head_dim >= 1 && cfg_.head_dim <= 65536,
               "head_dim: expected in [1, 65536], got %zu", cfg_.head_dim);
  SF_CHECK_ARG(cfg_.page_size >= 1 && cfg_.page_size <= 65536,
               "page_size: expected in [1, 65536], got %zu", cfg_.page_size);
  SF_CHECK_ARG(cfg_.value_dim <= 65536, "value_dim: expected <= 65536, got %zu", cfg_.value_dim);
  dv_ = cfg_.value_dim == 0 ? cfg_.head_dim : cfg_.value_dim;
  SF_CHECK_ARG(!cfg_.latent || dv_ <= cfg_.head_dim,
               "value_dim: a latent cache reads values from the key row, so value_dim=%zu must "
               "be <= head_dim=%zu",
               dv_, cfg_.head_dim);
  SF_CHECK_ARG(std::isfinite(cfg_.rope_theta) && cfg_.rope_theta > 0.0,
               "rope_theta: expected a finite value > 0, got %g", cfg_.rope_theta);
  if (cfg_.rope_mode == RopeMode::kRerotate) {
    SF_CHECK_ARG(cfg_.head_dim % 2 == 0,
                 "head_dim: rope_mode='rerotate' needs an even head_dim, "
                 "got %zu",
                 cfg_.head_dim);
    SF_CHECK_ARG(!cfg_.latent, "latent: rope_mode='rerotate' is not supported by a latent cache");
  }
  // Each factor bounded first: the product of two unchecked size_t values can wrap to a
  // small number and pass.
  SF_CHECK_ARG(cfg_.num_layers <= (size_t{1} << 24), "num_layers: expected <= 2^24, got %zu",
               cfg_.num_layers);
  SF_CHECK_ARG(cfg_.num_kv_heads <= (size_t{1} << 24), "num_kv_heads: expected <= 2^24, got %zu",
               cfg_.num_kv_heads);
  SF_CHECK_ARG(cfg_.num_layers * cfg_.num_kv_heads <= (size_t{1} << 24),
               "num_kv_heads: num_layers * num_kv_heads = %zu is too large",
               cfg_.num_layers * cfg_.num_kv_heads);
  esize_ = dtype_size(cfg_.dtype);
  key_page_bytes_ = cfg_.page_size * cfg_.head_dim * esize_;
  const size_t value_bytes = cfg_.latent ? 0 : cfg_.page_size * dv_ * esize_;
  page_bytes_ = key_page_bytes_ + value_bytes;
  heads_.resize(cfg_.num_layers * cfg_.num_kv_heads);
  last_pos_.assign(cfg_.num_layers, -1);
}

PagedKVCache::PagedKVCache(const PagedKVCache& o) : PagedKVCache(o.cfg_) {
  // delegated: the destructor frees what was taken if a later allocation throws
  last_pos_ = o.last_pos_;
  rope_table_ = o.rope_table_;
  rope_rows_ = o.rope_rows_;
  for (size_t i = 0; i < heads_.size(); ++i) {
    const Head& src = o.heads_[i];
    Head& dst = heads_[i];
    dst.length = src.length;
    dst.positions = src.positions;
    dst.scores = src.scores;
    dst.bounds = src.bounds;
    dst.pages.reserve(src.pages.size());
    for (uint32_t id : src.pages) {
      const uint32_t nid = take_page();
      dst.pages.push_back(nid);
      std::memcpy(pool_[nid], o.pool_[id], page_bytes_);
    }
  }
  peak_pages_ = pages_in_use_;
}

PagedKVCache::~PagedKVCache() {
  for (char* p : pool_) std::free(p);
}

size_t PagedKVCache::check_layer(size_t layer) const {
  SF_CHECK_ARG(layer < cfg_.num_layers, "layer: expected in [0, %zu), got %zu", cfg_.num_layers,
               layer);
  return layer;
}

const PagedKVCache::Head& PagedKVCache::head_at(size_t layer, size_t head) const {
  check_layer(layer);
  SF_CHECK_ARG(head < cfg_.num_kv_heads, "head: expected in [0, %zu), got %zu", cfg_.num_kv_heads,
               head);
  return heads_[layer * cfg_.num_kv_heads + head];
}

PagedKVCache::Head& PagedKVCache::head_at(size_t layer, size_t head) {
  return const_cast<Head&>(static_cast<const PagedKVCache*>(this)->head_at(layer, head));
}

size_t PagedKVCache::max_length(size_t layer) const {
  check_layer(layer);
  size_t m = 0;
  for (size_t h = 0; h < cfg_.num_kv_heads; ++h)
    m = std::max(m, heads_[layer * cfg_.num_kv_heads + h].length);
  return m;
}

uint32_t PagedKVCache::take_page() {
  uint32_t id;
  if (!free_.empty()) {
    id = free_.back();
    free_.pop_back();
  } else {
    const size_t bytes = (page_bytes_ + kPageAlign - 1) / kPageAlign * kPageAlign;
    void* mem = std::aligned_alloc(kPageAlign, bytes);
    if (mem == nullptr) throw std::bad_alloc();
    if (!trimmed_.empty()) {
      id = trimmed_.back();
      trimmed_.pop_back();
      pool_[id] = static_cast<char*>(mem);
    } else {
      SF_CHECK(pool_.size() < std::numeric_limits<uint32_t>::max());
      id = static_cast<uint32_t>(pool_.size());
      try {
        pool_.push_back(static_cast<char*>(mem));
      } catch (...) {
        std::free(mem);
        throw;
      }
    }
  }
  ++pages_in_use_;
  peak_pages_ = std::max(peak_pages_, pages_in_use_);
  return id;
}

void PagedKVCache::release_page(uint32_t id) {
  free_.push_back(id);
  --pages_in_use_;
}

size_t PagedKVCache::trim() {
  const size_t released = free_.size() * page_bytes_;
  for (uint32_t id : free_) {
    std::free(pool_[id]);
    pool_[id] = nullptr;
    trimmed_.push_back(id);
  }
  free_.clear();
  return released;
}

void PagedKVCache::clear() {
  for (Head& h : heads_) {
    for (uint32_t id : h.pages) release_page(id);
    h = Head();
  }
  std::fill(last_pos_.begin(), last_pos_.end(), -1);
}

char* PagedKVCache::key_row(const Head& h, size_t slot) const {
  const size_t S = cfg_.page_size;
  return pool_[h.pages[slot / S]] + (slot % S) * cfg_.head_dim * esize_;
}

char* PagedKVCache::value_row(const Head& h, size_t slot) const {
  const size_t S = cfg_.page_size;
  if (cfg_.latent) return key_row(h, slot);
  return pool_[h.pages[slot / S]] + key_page_bytes_ + (slot % S) * dv_ * esize_;
}

const void* PagedKVCache::key_page(size_t layer, size_t head, size_t page) const {
  const Head& h = head_at(layer, head);
  SF_CHECK_ARG(page < h.pages.size(), "page: expected in [0, %zu), got %zu", h.pages.size(), page);
  return pool_[h.pages[page]];
}

const void* PagedKVCache::value_page(size_t layer, size_t head, size_t page) const {
  const char* k = static_cast<const char*>(key_page(layer, head, page));
  return cfg_.latent ? k : k + key_page_bytes_;
}

const float* PagedKVCache::page_bounds(size_t layer, size_t head, size_t page) const {
  const Head& h = head_at(layer, head);
  SF_CHECK_ARG(cfg_.page_bounds, "page_bounds: this cache keeps no page bounds");
  SF_CHECK_ARG(page < h.pages.size(), "page: expected in [0, %zu), got %zu", h.pages.size(), page);
  return h.bounds.data() + page * 2 * cfg_.head_dim;
}

void PagedKVCache::fold_bounds(Head& h, size_t slot) {
  const size_t D = cfg_.head_dim;
  float* lo = h.bounds.data() + (slot / cfg_.page_size) * 2 * D;
  float* hi = lo + D;
  float tmp[256];
  std::vector<float> big;
  float* row = tmp;
  if (D > 256) {
    big.resize(D);
    row = big.data();
  }
  load_row(key_row(h, slot), cfg_.dtype, row, D);
  for (size_t i = 0; i < D; ++i) {
    lo[i] = std::min(lo[i], row[i]);
    hi[i] = std::max(hi[i], row[i]);
  }
}

void PagedKVCache::recompute_bounds(Head& h, size_t page) {
  if (!cfg_.page_bounds || page >= h.pages.size()) return;
  const size_t D = cfg_.head_dim, S = cfg_.page_size;
  float* lo = h.bounds.data() + page * 2 * D;
  std::fill(lo, lo + D, std::numeric_limits<float>::infinity());
  std::fill(lo + D, lo + 2 * D, -std::numeric_limits<float>::infinity());
  const size_t end = std::min(h.length, (page + 1) * S);
  for (size_t s = page * S; s < end; ++s) fold_bounds(h, s);
}

void PagedKVCache::append(size_t layer, const AnyConstMatrix& k, const AnyConstMatrix& v,
                          const int64_t* positions, size_t T) {
  check_layer(layer);
  const size_t Hkv = cfg_.num_kv_heads, Dk = cfg_.head_dim, S = cfg_.page_size;
  SF_CHECK_ARG(k.rows == T && k.cols == Hkv * Dk,
               "k: expected shape (%zu, %zu) = (tokens, num_kv_heads * head_dim), got (%zu, %zu)",
               T, Hkv * Dk, k.rows, k.cols);
  if (!cfg_.latent) {
    SF_CHECK_ARG(v.rows == T && v.cols == Hkv * dv_,
                 "v: expected shape (%zu, %zu) = (tokens, num_kv_heads * value_dim), got (%zu, "
                 "%zu)",
                 T, Hkv * dv_, v.rows, v.cols);
  }
  if (T == 0) return;
  SF_CHECK_ARG(positions != nullptr, "positions: missing");
  int64_t prev = last_pos_[layer];
  for (size_t t = 0; t < T; ++t) {
    SF_CHECK_ARG(positions[t] >= 0, "positions: expected >= 0, got %lld at index %zu",
                 static_cast<long long>(positions[t]), t);
    SF_CHECK_ARG(positions[t] > prev,
                 "positions: out of order: %lld at index %zu is not greater than the previous "
                 "position %lld (positions must increase strictly across appends)",
                 static_cast<long long>(positions[t]), t, static_cast<long long>(prev));
    prev = positions[t];
  }
  const size_t kes = dtype_size(k.dtype);
  const size_t ves = cfg_.latent ? 0 : dtype_size(v.dtype);
  std::vector<float> row(std::max(Dk, dv_));
  for (size_t h = 0; h < Hkv; ++h) {
    Head& hd = heads_[layer * Hkv + h];
    hd.positions.reserve(hd.length + T);
    hd.scores.reserve(hd.length + T);
    for (size_t t = 0; t < T; ++t) {
      const size_t slot = hd.length;
      if (slot % S == 0) {
        hd.pages.push_back(take_page());
        if (cfg_.page_bounds) {
          hd.bounds.resize(hd.pages.size() * 2 * Dk);
          float* lo = hd.bounds.data() + (hd.pages.size() - 1) * 2 * Dk;
          std::fill(lo, lo + Dk, std::numeric_limits<float>::infinity());
          std::fill(lo + Dk, lo + 2 * Dk, -std::numeric_limits<float>::infinity());
        }
      }
      const char* ksrc = static_cast<const char*>(k.data) + (t * k.stride + h * Dk) * kes;
      load_row(ksrc, k.dtype, row.data(), Dk);
      if (cfg_.rope_mode == RopeMode::kRerotate)
        rotate_row(row.data(), Dk, -static_cast<double>(positions[t]), cfg_.rope_style,
                   cfg_.rope_theta);
      store_row(row.data(), cfg_.dtype, key_row(hd, slot), Dk);
      if (!cfg_.latent) {
        const char* vsrc = static_cast<const char*>(v.data) + (t * v.stride + h * dv_) * ves;
        load_row(vsrc, v.dtype, row.data(), dv_);
        store_row(row.data(), cfg_.dtype, value_row(hd, slot), dv_);
      }
      hd.positions.push_back(positions[t]);
      hd.scores.push_back(0.0f);
      hd.length = slot + 1;
      if (cfg_.page_bounds) fold_bounds(hd, slot);
    }
  }
  last_pos_[layer] = positions[T - 1];
}

void PagedKVCache::move_slot(Head& h, size_t from, size_t to) {
  std::memcpy(key_row(h, to), key_row(h, from), cfg_.head_dim * esize_);
  if (!cfg_.latent) std::memcpy(value_row(h, to), value_row(h, from), dv_ * esize_);
  h.positions[to] = h.positions[from];
  h.scores[to] = h.scores[from];
}

void PagedKVCache::shrink_pages(Head& h) {
  const size_t need = (h.length + cfg_.page_size - 1) / cfg_.page_size;
  while (h.pages.size() > need) {
    release_page(h.pages.back());
    h.pages.pop_back();
  }
  h.positions.resize(h.length);
  h.scores.resize(h.length);
  if (cfg_.page_bounds) h.bounds.resize(need * 2 * cfg_.head_dim);
}

void PagedKVCache::evict(size_t layer, size_t head, const int64_t* slots, size_t n,
                         bool keep_order) {
  Head& h = head_at(layer, head);
  if (n == 0) return;
  std::vector<int64_t> sorted(slots, slots + n);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < n; ++i) {
    SF_CHECK_ARG(sorted[i] >= 0 && static_cast<size_t>(sorted[i]) < h.length,
                 "slots: index %lld out of range [0, %zu)", static_cast<long long>(sorted[i]),
                 h.length);
    SF_CHECK_ARG(i == 0 || sorted[i] != sorted[i - 1], "slots: index %lld listed twice",
                 static_cast<long long>(sorted[i]));
  }
  const size_t S = cfg_.page_size;
  if (keep_order || cfg_.rope_mode == RopeMode::kRerotate) {
    const size_t first = static_cast<size_t>(sorted[0]);
    size_t write = first, next = 0;
    for (size_t read = first; read < h.length; ++read) {
      if (next < n && static_cast<size_t>(sorted[next]) == read) {
        ++next;
        continue;
      }
      move_slot(h, read, write++);
    }
    h.length = write;
    shrink_pages(h);
    for (size_t p = first / S; p < h.pages.size(); ++p) recompute_bounds(h, p);
    return;
  }
  std::vector<size_t> touched;
  for (size_t i = n; i-- > 0;) {
    const size_t hole = static_cast<size_t>(sorted[i]);
    const size_t last = h.length - 1;
    if (hole != last) {
      move_slot(h, last, hole);
      touched.push_back(hole / S);
    }
    h.length = last;
  }
  shrink_pages(h);
  if (h.length > 0) touched.push_back((h.length - 1) / S);
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  for (size_t p : touched) recompute_bounds(h, p);
}

std::vector<int64_t> PagedKVCache::evict_lowest(size_t layer, size_t head, size_t count,
                                                int64_t protect_below, size_t protect_recent) {
  Head& h = head_at(layer, head);
  const int64_t newest = last_pos_[layer];
  if (count == 1) {
    // The decode step (H2O): one pass over the scores, no allocation; the same slot as the
    // general path's min_element (lowest score, then the newer token).
    const int64_t keep_after = newest - static_cast<int64_t>(protect_recent);
    int64_t best = -1;
    float best_s = 0.0f;
    int64_t best_p = 0;
    for (size_t s = 0; s < h.length; ++s) {
      const int64_t p = h.positions[s];
      if (p < protect_below || (protect_recent > 0 && p > keep_after)) continue;
      const float sc = h.scores[s];
      if (best < 0 || sc < best_s || (sc == best_s && p > best_p)) {
        best = static_cast<int64_t>(s);
        best_s = sc;
        best_p = p;
      }
    }
    if (best < 0) return {};
    evict(layer, head, &best, 1, cfg_.rope_mode == RopeMode::kRerotate);
    return {best_p};
  }
  std::vector<int64_t> cand;
  cand.reserve(h.length);
  for (size_t s = 0; s < h.length; ++s) {
    const int64_t p = h.positions[s];
    if (p < protect_below) continue;
    if (protect_recent > 0 && p > newest - static_cast<int64_t>(protect_recent)) continue;
    cand.push_back(static_cast<int64_t>(s));
  }
  count = std::min(count, cand.size());
  if (count == 0) return {};
  // Lowest score first; of equal scores the larger position (newer token) first.
  auto worse = [&](int64_t a, int64_t b) {
    const float sa = h.scores[static_cast<size_t>(a)], sb = h.scores[static_cast<size_t>(b)];
    if (sa != sb) return sa < sb;
    return h.positions[static_cast<size_t>(a)] > h.positions[static_cast<size_t>(b)];
  };
  if (count == 1) {
    cand[0] = *std::min_element(cand.begin(), cand.end(), worse);
  } else {
    std::nth_element(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(count - 1),
                     cand.end(), worse);
  }
  cand.resize(count);
  std::vector<int64_t> evicted(count);
  for (size_t i = 0; i < count; ++i) evicted[i] = h.positions[static_cast<size_t>(cand[i])];
  std::sort(evicted.begin(), evicted.end());
  evict(layer, head, cand.data(), count, cfg_.rope_mode == RopeMode::kRerotate);
  return evicted;
}

size_t PagedKVCache::evict_lowest_layer(size_t layer, size_t keep, int64_t protect_below,
                                        size_t protect_recent) {
  check_layer(layer);
  size_t evicted = 0;
  for (size_t h = 0; h < cfg_.num_kv_heads; ++h) {
    const size_t len = head_at(layer, h).length;
    if (len > keep)
      evicted += evict_lowest(layer, h, len - keep, protect_below, protect_recent).size();
  }
  return evicted;
}

std::vector<int64_t> PagedKVCache::evict_lowest_mean(size_t layer, ConstMatrixView<float> mass,
                                                     size_t count) {
  check_layer(layer);
  const size_t Hkv = cfg_.num_kv_heads;
  const Head& h0 = head_at(layer, 0);
  const size_t L = h0.length;
  for (size_t h = 1; h < Hkv; ++h)
    SF_CHECK_ARG(head_at(layer, h).length == L,
                 "layer: evict_lowest_mean needs kv heads of equal length (head 0 holds %zu, "
                 "head %zu holds %zu)",
                 L, h, head_at(layer, h).length);
  count = std::min(count, L);
  if (count == 0) return {};
  SF_CHECK_ARG(mass.rows == Hkv && mass.cols >= L && mass.data != nullptr,
               "mass: expected shape (%zu, >= %zu), got (%zu, %zu)", Hkv, L, mass.rows, mass.cols);
  // score[s] = (double(m_0[s]) + double(m_1[s]) + ... ) / Hkv: the same additions in the same
  // order as numpy's float64 mean over axis 0 (bitwise). Element-wise loops over blocks of
  // kBlock slots (the block stays in L1 across the Hkv rows), vectorised with omp simd.
  constexpr size_t kBlock = 512;
  thread_local std::vector<double> score;
  if (score.size() < L) score.resize(L);
  double* sc = score.data();
  const double n = static_cast<double>(Hkv);
  double lo = std::numeric_limits<double>::infinity();
  int nan = 0;
  for (size_t b0 = 0; b0 < L; b0 += kBlock) {
    const size_t nb = std::min(kBlock, L - b0);
    double* acc = sc + b0;
    const float* m0 = mass.row(0) + b0;
#pragma omp simd
    for (size_t s = 0; s < nb; ++s) acc[s] = static_cast<double>(m0[s]);
    for (size_t h = 1; h < Hkv; ++h) {
      const float* mh = mass.row(h) + b0;
#pragma omp simd
      for (size_t s = 0; s < nb; ++s) acc[s] += static_cast<double>(mh[s]);
    }
#pragma omp simd reduction(min : lo) reduction(| : nan)
    for (size_t s = 0; s < nb; ++s) {
      acc[s] /= n;
      nan |= acc[s] != acc[s];
      lo = acc[s] < lo ? acc[s] : lo;
    }
  }
  SF_CHECK_ARG(nan == 0, "mass: NaN in the attention mass of layer %zu", layer);
  const int64_t* pos = h0.positions.data();
  std::vector<int64_t> drop;
  if (count == 1) {
    // The decode step: the lowest score, then the newest position among the slots holding it.
    int64_t best = -1;
    for (size_t s = 0; s < L; ++s)
      if (sc[s] == lo && (best < 0 || pos[s] > pos[best])) best = static_cast<int64_t>(s);
    drop.push_back(best);
  } else {
    drop.resize(L);
    for (size_t s = 0; s < L; ++s) drop[s] = static_cast<int64_t>(s);
    auto worse = [&](int64_t a, int64_t b) {
      const double sa = sc[a], sb = sc[b];
      if (sa != sb) return sa < sb;
      return pos[a] > pos[b];
    };
    if (count < L)
      std::nth_element(drop.begin(), drop.begin() + static_cast<std::ptrdiff_t>(count - 1),
                       drop.end(), worse);
    drop.resize(count);
  }
  std::vector<int64_t> evicted(count);
  for (size_t i = 0; i < count; ++i) evicted[i] = pos[drop[i]];
  std::sort(evicted.begin(), evicted.end());
  for (size_t h = 0; h < Hkv; ++h) evict(layer, h, drop.data(), count, count > 1);
  return evicted;
}

void PagedKVCache::gather(size_t layer, size_t head, MatrixView<float> K,
                          MatrixView<float> V) const {
  const Head& h = head_at(layer, head);
  SF_CHECK_ARG(K.rows == h.length && K.cols == cfg_.head_dim,
               "K: expected (%zu, %zu), got (%zu, %zu)", h.length, cfg_.head_dim, K.rows, K.cols);
  SF_CHECK_ARG(V.rows == h.length && V.cols == dv_, "V: expected (%zu, %zu), got (%zu, %zu)",
               h.length, dv_, V.rows, V.cols);
  for (size_t s = 0; s < h.length; ++s) {
    load_row(key_row(h, s), cfg_.dtype, K.row(s), cfg_.head_dim);
    if (cfg_.rope_mode == RopeMode::kRerotate)
      rotate_row(K.row(s), cfg_.head_dim, static_cast<double>(s), cfg_.rope_style, cfg_.rope_theta);
    load_row(value_row(h, s), cfg_.dtype, V.row(s), dv_);
  }
}

size_t PagedKVCache::metadata_bytes() const {
  size_t b = 0;
  for (const Head& h : heads_)
    b += h.length * (sizeof(int64_t) + sizeof(float)) + h.bounds.size() * sizeof(float);
  return b;
}

size_t PagedKVCache::tokens_in_use() const {
  size_t n = 0;
  for (const Head& h : heads_) n += h.length;
  return n;
}

void PagedKVCache::ensure_rope_table(size_t n) {
  if (n <= rope_rows_) return;
  const size_t D = cfg_.head_dim, half = D / 2;
  size_t rows = std::max(n, rope_rows_ * 2);
  rope_table_.resize(rows * D);
  for (size_t r = rope_rows_; r < rows; ++r) {
    float* c = rope_table_.data() + r * D;
    for (size_t i = 0; i < half; ++i) {
      const double f =
          std::pow(cfg_.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(D));
      const double ang = static_cast<double>(r) * f;
      c[i] = static_cast<float>(std::cos(ang));
      c[half + i] = static_cast<float>(std::sin(ang));
    }
  }
  rope_rows_ = rows;
}

}  // namespace kv
}  // namespace sparseforge
