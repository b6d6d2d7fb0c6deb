#include "sparseforge/kvcache/policy.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>

#include "sparseforge/core/error.h"
#include "sparseforge/models/ops.h"

namespace sparseforge {
namespace kv {

// ---------------------------------------------------------------------------------------
// Budgets

Budget Budget::tokens(size_t n) {
  Budget b;
  b.given = true;
  b.uniform = {false, static_cast<double>(n)};
  return b;
}

Budget Budget::keep_fraction(double f) {
  Budget b;
  b.given = true;
  b.uniform = {true, f};
  return b;
}

Budget Budget::compression_ratio(double r) {
  SF_CHECK_ARG(std::isfinite(r) && r >= 0.0 && r < 1.0,
               "compression_ratio: expected a fraction removed in [0, 1), got %g", r);
  return keep_fraction(1.0 - r);
}

namespace {
void check_entry(const BudgetEntry& e, const char* what, size_t i) {
  if (e.fraction) {
    SF_CHECK_ARG(std::isfinite(e.value) && e.value > 0.0 && e.value <= 1.0,
                 "budget: %s %zu: expected a kept fraction in (0, 1], got %g", what, i, e.value);
  } else {
    SF_CHECK_ARG(e.value >= 1.0 && e.value <= 4.0e18 && e.value == std::floor(e.value),
                 "budget: %s %zu: expected a token count >= 1, got %g", what, i, e.value);
  }
}
}  // namespace

void Budget::validate(size_t num_layers) const {
  if (!given) return;
  if (per_layer.empty()) {
    check_entry(uniform, "entry", 0);
    return;
  }
  SF_CHECK_ARG(num_layers == 0 || per_layer.size() == num_layers,
               "budget.per_layer: expected %zu entries (one per layer), got %zu", num_layers,
               per_layer.size());
  for (size_t i = 0; i < per_layer.size(); ++i) check_entry(per_layer[i], "layer", i);
}

size_t Budget::resolve(size_t layer, size_t context) const {
  SF_CHECK_ARG(given, "budget: this policy needs a budget");
  const BudgetEntry* e = &uniform;
  if (!per_layer.empty()) {
    SF_CHECK_ARG(layer < per_layer.size(), "budget: no per-layer entry for layer %zu (%zu given)",
                 layer, per_layer.size());
    e = &per_layer[layer];
  }
  if (e->fraction) {
    // Python's max(1, int(context * entry)): the product in double, truncated.
    const double n = std::floor(static_cast<double>(context) * e->value);
    return std::max<size_t>(1, static_cast<size_t>(n));
  }
  return static_cast<size_t>(e->value);
}

double Budget::resolve_real(size_t layer, size_t context) const {
  SF_CHECK_ARG(given, "budget: this policy needs a budget");
  const BudgetEntry& e = per_layer.empty() ? uniform : per_layer.at(layer);
  return e.fraction ? static_cast<double>(context) * e.value : e.value;
}

bool Budget::all_tokens() const {
  if (!per_layer.empty()) {
    return std::none_of(per_layer.begin(), per_layer.end(),
                        [](const BudgetEntry& e) { return e.fraction; });
  }
  return !uniform.fraction;
}

// ---------------------------------------------------------------------------------------
// Shared pieces

namespace {

// Evicts the `count` oldest tokens of one head after its first `sinks` positions. One token
// (the decode step) fills the hole from the tail; several compact in order.
void evict_oldest(PagedKVCache& c, size_t layer, size_t head, size_t count, size_t sinks) {
  const size_t L = c.length(layer, head);
  const int64_t* pos = c.positions(layer, head);
  if (count == 1) {
    // the smallest position that is not one of the `sinks` smallest
    int64_t cut = std::numeric_limits<int64_t>::min();
    if (sinks > 0) {
      std::vector<int64_t> p(pos, pos + L);
      if (sinks <= L) {
        std::nth_element(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(sinks - 1), p.end());
        cut = p[sinks - 1];
      } else {
        cut = *std::max_element(p.begin(), p.end());
      }
    }
    size_t best = 0;
    int64_t best_pos = std::numeric_limits<int64_t>::max();
    for (size_t s = 0; s < L; ++s) {
      const int64_t cand = pos[s] > cut ? pos[s] : std::numeric_limits<int64_t>::max();
      if (cand < best_pos) {
        best_pos = cand;
        best = s;
      }
    }
    const int64_t slot = static_cast<int64_t>(best);
    c.evict(layer, head, &slot, 1, false);
    return;
  }
  std::vector<int64_t> order(L);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [pos](int64_t a, int64_t b) { return pos[a] < pos[b]; });
  const size_t lo = std::min(sinks, L), hi = std::min(sinks + count, L);
  std::vector<int64_t> ev(order.begin() + static_cast<std::ptrdiff_t>(lo),
                          order.begin() + static_cast<std::ptrdiff_t>(hi));
  c.evict(layer, head, ev.data(), ev.size(), true);
}

// Python's round(): half to even (the default FE_TONEAREST mode of nearbyint).
double round_half_even(double x) { return std::nearbyint(x); }

size_t h2o_recent(size_t b, double ratio) {
  return std::min(b, static_cast<size_t>(round_half_even(static_cast<double>(b) * ratio)));
}

}  // namespace

void keep_top(PagedKVCache& cache, size_t layer, const double* scores, size_t ld, size_t n_keep) {
  const size_t Hkv = cache.config().num_kv_heads;
  std::vector<int64_t> order, ev;
  for (size_t h = 0; h < Hkv; ++h) {
    const size_t L = cache.length(layer, h);
    if (n_keep >= L) continue;
    const int64_t* pos = cache.positions(layer, h);
    const double* s = scores + h * ld;
    order.resize(L);
    std::iota(order.begin(), order.end(), 0);
    // numpy lexsort((pos, -score)): score descending, then position ascending
    std::sort(order.begin(), order.end(), [s, pos](int64_t a, int64_t b) {
      if (-s[a] != -s[b]) return -s[a] < -s[b];
      return pos[a] < pos[b];
    });
    std::vector<char> kept(L, 0);
    for (size_t i = 0; i < n_keep; ++i) kept[static_cast<size_t>(order[i])] = 1;
    ev.clear();
    for (size_t i = 0; i < L; ++i)
      if (!kept[i]) ev.push_back(static_cast<int64_t>(i));
    cache.evict(layer, h, ev.data(), ev.size(), true);
  }
}

std::vector<size_t> pyramid_budgets(size_t num_layers, size_t context, double budget, size_t window,
                                    double beta) {
  const double T = static_cast<double>(context), w = static_cast<double>(window);
  const double cap = w + budget;
  double lo = (cap - w) / beta;
  double hi = (cap - w) * 2 - lo;
  if (hi >= T - w) {
    hi = T - w;
    lo = (cap - w) * 2 - hi;
  }
  std::vector<size_t> out(num_layers,
                          std::max<size_t>(1, static_cast<size_t>(round_half_even(budget))));
  if (!(T >= hi && hi >= lo && lo >= w) || num_layers == 1) return out;
  const double steps = (hi - lo) / static_cast<double>(num_layers - 1);
  for (size_t l = 0; l < num_layers; ++l)
    out[l] = static_cast<size_t>(round_half_even(hi - static_cast<double>(l) * steps));
  return out;
}

// ---------------------------------------------------------------------------------------
// numpy's default_rng: SeedSequence (numpy/random/bit_generator.pyx) and PCG64

namespace {
constexpr uint32_t kInitA = 0x43b0d7e5, kMultA = 0x931e8875, kInitB = 0x8b51f9dd,
                   kMultB = 0x58f38ded, kMixL = 0xca01f9dd, kMixR = 0x4973f715;
constexpr int kXShift = 16;

uint32_t hashmix(uint32_t value, uint32_t& hc) {
  value ^= hc;
  hc *= kMultA;
  value *= hc;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t r = kMixL * x - kMixR * y;
  r ^= r >> kXShift;
  return r;
}

void words_of(uint64_t v, std::vector<uint32_t>& out) {
  // _coerce_to_uint32_array of a Python int: little-endian 32-bit words, 0 -> [0]
  if (v == 0) {
    out.push_back(0);
    return;
  }
  while (v) {
    out.push_back(static_cast<uint32_t>(v & 0xffffffffu));
    v >>= 32;
  }
}
}  // namespace

void numpy_random(uint64_t seed, uint64_t layer, double* out, size_t n) {
  std::vector<uint32_t> entropy;
  words_of(seed, entropy);
  words_of(layer, entropy);
  uint32_t pool[4];
  uint32_t hc = kInitA;
  for (size_t i = 0; i < 4; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hc);
  for (size_t s = 0; s < 4; ++s)
    for (size_t d = 0; d < 4; ++d)
      if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], hc));
  for (size_t s = 4; s < entropy.size(); ++s)
    for (size_t d = 0; d < 4; ++d) pool[d] = mix(pool[d], hashmix(entropy[s], hc));
  uint32_t st32[8];
  uint32_t hb = kInitB;
  for (size_t i = 0; i < 8; ++i) {
    uint32_t v = pool[i % 4];
    v ^= hb;
    hb *= kMultB;
    v *= hb;
    v ^= v >> kXShift;
    st32[i] = v;
  }
  uint64_t val[4];
  for (size_t i = 0; i < 4; ++i) val[i] = uint64_t{st32[2 * i]} | (uint64_t{st32[2 * i + 1]} << 32);
  __extension__ typedef unsigned __int128 u128;
  const u128 mult = (u128{0x2360ED051FC65DA4ULL} << 64) | u128{0x4385DF649FCCF645ULL};
  const u128 initstate = (u128{val[0]} << 64) | val[1];
  const u128 initseq = (u128{val[2]} << 64) | val[3];
  u128 state = 0;
  const u128 inc = (initseq << 1) | 1u;
  state = state * mult + inc;
  state += initstate;
  state = state * mult + inc;
  for (size_t i = 0; i < n; ++i) {
    state = state * mult + inc;
    const uint64_t x = static_cast<uint64_t>(state >> 64) ^ static_cast<uint64_t>(state);
    const unsigned rot = static_cast<unsigned>(state >> 122);
    const uint64_t r = (x >> rot) | (x << ((64u - rot) & 63u));
    out[i] = static_cast<double>(r >> 11) * (1.0 / 9007199254740992.0);
  }
}

// ---------------------------------------------------------------------------------------
// Policy

Policy::Policy(Budget budget, const PolicyOptions& options)
    : budget_(std::move(budget)), reduce_(options.reduce), evict_at_(options.evict_at) {
  budget_.validate(0);
}

void Policy::check_cache(const PagedKVCache& cache) const {
  budget_.validate(cache.config().num_layers);
}

size_t Policy::set_fixed(size_t layer, size_t b) {
  if (fixed_.size() <= layer) fixed_.resize(layer + 1, -1);
  fixed_[layer] = static_cast<int64_t>(b);
  return b;
}

size_t Policy::peek_budget(const PagedKVCache&, size_t layer, size_t context) const {
  return budget_.resolve(layer, context);
}

size_t Policy::fix_budget(const PagedKVCache& cache, size_t layer, size_t context) {
  return set_fixed(layer, peek_budget(cache, layer, context));
}

size_t Policy::layer_budget(const PagedKVCache& cache, size_t layer) {
  if (layer < fixed_.size() && fixed_[layer] >= 0) return static_cast<size_t>(fixed_[layer]);
  const int64_t ctx = cache.last_position(layer) + 1;
  return set_fixed(layer, budget_.resolve(layer, static_cast<size_t>(std::max<int64_t>(ctx, 1))));
}

void Policy::check_prefill(const PagedKVCache&, size_t, size_t, size_t, size_t) const {}

void Policy::after_prefill(PagedKVCache& cache, size_t layer, ConstMatrixView<float>,
                           const AnyConstMatrix&, size_t, int) {
  if (budget_.given) fix_budget(cache, layer, static_cast<size_t>(cache.last_position(layer) + 1));
}

void Policy::dense_attend(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                          MatrixView<float> out, float scale, int num_threads) const {
  DecodeOptions o;
  o.scale = scale;
  o.reduce = GroupReduce::kSum;
  o.num_threads = num_threads;
  decode_attention(cache, layer, q, out, MatrixView<float>(), nullptr, 0, o);
}

void Policy::decode_step(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                         MatrixView<float> out, float scale, int num_threads) {
  dense_attend(cache, layer, q, out, scale, num_threads);
}

void Policy::prefill(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, const AnyConstMatrix& v, const int64_t* positions,
                     size_t T, int num_threads) {
  const CacheConfig& cfg = cache.config();
  SF_CHECK_ARG(layer < cfg.num_layers, "layer: expected in [0, %zu), got %zu", cfg.num_layers,
               layer);
  SF_CHECK_ARG(T >= 1, "k: expected at least one token");
  SF_CHECK_ARG(q.rows == T, "q: expected %zu rows (tokens), got %zu", T, q.rows);
  SF_CHECK_ARG(q.cols % cfg.head_dim == 0 && q.cols / cfg.head_dim >= 1 &&
                   (q.cols / cfg.head_dim) % cfg.num_kv_heads == 0,
               "q: expected (T, H * %zu) with H a multiple of num_kv_heads=%zu, got %zu columns",
               cfg.head_dim, cfg.num_kv_heads, q.cols);
  SF_CHECK_ARG(k.rows == T && k.cols == cfg.num_kv_heads * cfg.head_dim,
               "k: expected shape (%zu, %zu), got (%zu, %zu)", T, cfg.num_kv_heads * cfg.head_dim,
               k.rows, k.cols);
  check_cache(cache);
  const int64_t last = cache.last_position(layer);
  SF_CHECK_ARG(positions[T - 1] >= 0, "positions: expected positions >= 0");
  const size_t context = static_cast<size_t>(std::max<int64_t>(positions[T - 1], last) + 1);
  const size_t b = budget_.given ? peek_budget(cache, layer, context) : 0;
  check_prefill(cache, layer, T, context, b);
  cache.append(layer, k, v, positions, T);
  after_prefill(cache, layer, q, k, T, num_threads);
}

void Policy::decode(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                    const AnyConstMatrix& k, const AnyConstMatrix& v, int64_t position,
                    MatrixView<float> out, float scale, int num_threads) {
  const CacheConfig& cfg = cache.config();
  SF_CHECK_ARG(layer < cfg.num_layers, "layer: expected in [0, %zu), got %zu", cfg.num_layers,
               layer);
  SF_CHECK_ARG(q.cols == cfg.head_dim && q.rows % cfg.num_kv_heads == 0 && q.rows > 0,
               "q: expected (H, %zu) with H a multiple of num_kv_heads=%zu, got (%zu, %zu)",
               cfg.head_dim, cfg.num_kv_heads, q.rows, q.cols);
  SF_CHECK_ARG(out.rows == q.rows && out.cols == cache.value_dim(),
               "out: expected shape (%zu, %zu), got (%zu, %zu)", q.rows, cache.value_dim(),
               out.rows, out.cols);
  SF_CHECK_ARG(std::isfinite(scale) && scale >= 0.0f, "scale: expected a finite value > 0");
  check_cache(cache);
  cache.append(layer, k, v, &position, 1);
  decode_step(cache, layer, q, out, scale, num_threads);
}

// ---------------------------------------------------------------------------------------
// The policies

namespace {

class FullPolicy final : public Policy {
 public:
  FullPolicy(const Budget&, const PolicyOptions& o) : Policy(Budget(), o) {}
  std::unique_ptr<Policy> clone() const override { return std::make_unique<FullPolicy>(*this); }
  const char* name() const override { return "full"; }
  bool evicts() const override { return false; }
};

class WindowPolicy : public Policy {
 public:
  WindowPolicy(const Budget& b, const PolicyOptions& o, size_t sinks)
      : Policy(b, o), sinks_(sinks) {
    SF_CHECK_ARG(budget_.given, "budget: this policy needs a budget");
    if (evict_at_ == EvictAt::kDefault) evict_at_ = EvictAt::kDecode;
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<WindowPolicy>(*this); }
  const char* name() const override { return sinks_ ? "streaming_llm" : "sliding_window"; }

 protected:
  void trim(PagedKVCache& c, size_t layer) {
    const size_t b = layer_budget(c, layer);
    SF_CHECK_ARG(sinks_ == 0 || b > sinks_,
                 "budget: %zu tokens leaves no recent window after sinks=%zu", b, sinks_);
    for (size_t h = 0; h < c.config().num_kv_heads; ++h) {
      const size_t L = c.length(layer, h);
      if (b < L) evict_oldest(c, layer, h, L - b, sinks_);
    }
  }
  void check_prefill(const PagedKVCache&, size_t, size_t, size_t, size_t b) const override {
    SF_CHECK_ARG(sinks_ == 0 || b > sinks_,
                 "budget: %zu tokens leaves no recent window after sinks=%zu", b, sinks_);
  }
  void after_prefill(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int thr) override {
    Policy::after_prefill(c, layer, q, k, T, thr);
    trim(c, layer);
  }
  void decode_step(PagedKVCache& c, size_t layer, ConstMatrixView<float> q, MatrixView<float> out,
                   float scale, int thr) override {
    dense_attend(c, layer, q, out, scale, thr);
    if (evict_at_ == EvictAt::kDecode) trim(c, layer);
  }
  size_t sinks_;
};

class H2OPolicy final : public Policy {
 public:
  H2OPolicy(const Budget& b, const PolicyOptions& o) : Policy(b, o), ratio_(o.recent_ratio) {
    SF_CHECK_ARG(budget_.given, "budget: this policy needs a budget");
    SF_CHECK_ARG(ratio_ >= 0.0 && ratio_ <= 1.0, "recent_ratio: expected in [0, 1], got %g",
                 ratio_);
    if (!o.reduce_given) reduce_ = GroupReduce::kSum;
    if (evict_at_ == EvictAt::kDefault) evict_at_ = EvictAt::kDecode;
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<H2OPolicy>(*this); }
  const char* name() const override { return "h2o"; }

 protected:
  void after_prefill(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int thr) override {
    Policy::after_prefill(c, layer, q, k, T, thr);
    const size_t Hkv = c.config().num_kv_heads, D = c.config().head_dim;
    std::vector<float> mass(Hkv * T);
    window_attention_mass(AnyConstMatrix(q), k, q.cols / D, Hkv, T, 0.0f, reduce_,
                          MatrixView<float>(mass.data(), Hkv, T), thr);
    for (size_t h = 0; h < Hkv; ++h) {
      const size_t L = c.length(layer, h);
      std::copy(mass.begin() + static_cast<std::ptrdiff_t>(h * T),
                mass.begin() + static_cast<std::ptrdiff_t>((h + 1) * T),
                c.scores(layer, h) + (L - T));
    }
    const size_t b = layer_budget(c, layer);
    c.evict_lowest_layer(layer, b, 0, h2o_recent(b, ratio_));
  }
  void decode_step(PagedKVCache& c, size_t layer, ConstMatrixView<float> q, MatrixView<float> out,
                   float scale, int thr) override {
    if (evict_at_ != EvictAt::kDecode) {
      dense_attend(c, layer, q, out, scale, thr);
      return;
    }
    const size_t b = layer_budget(c, layer);
    DecodeOptions o;
    o.reduce = reduce_;
    o.scale = scale;
    o.num_threads = thr;
    decode_attention_h2o(c, layer, q, out, b, h2o_recent(b, ratio_), o);
  }
  double ratio_;
};

void require_fresh(const PagedKVCache& c, size_t layer, const char* who) {
  SF_CHECK_ARG(c.length(layer, 0) == 0,
               "layer: %s scores a whole prompt at prefill, but layer %zu already holds %zu "
               "tokens",
               who, layer, c.length(layer, 0));
}

class TOVAPolicy final : public Policy {
 public:
  TOVAPolicy(const Budget& b, const PolicyOptions& o) : Policy(b, o), keep_last_(o.keep_last) {
    SF_CHECK_ARG(budget_.given, "budget: this policy needs a budget");
    if (evict_at_ == EvictAt::kDefault) evict_at_ = EvictAt::kDecode;
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<TOVAPolicy>(*this); }
  const char* name() const override { return "tova"; }

 protected:
  void check_prefill(const PagedKVCache& c, size_t layer, size_t, size_t, size_t) const override {
    require_fresh(c, layer, "TOVA");
  }
  void after_prefill(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int thr) override {
    Policy::after_prefill(c, layer, q, k, T, thr);
    const size_t Hkv = c.config().num_kv_heads, D = c.config().head_dim;
    std::vector<float> mass(Hkv * T);
    window_attention_mass(AnyConstMatrix(q), k, q.cols / D, Hkv, 1, 0.0f, GroupReduce::kMean,
                          MatrixView<float>(mass.data(), Hkv, T), thr);
    const size_t b = layer_budget(c, layer), L = c.length(layer, 0);
    if (keep_last_) {
      // kvpress's TOVAPress pins the prompt's last token (score above every other)
      for (size_t h = 0; h < Hkv; ++h) mass[h * T + T - 1] = std::numeric_limits<float>::max();
    }
    if (b < L) c.evict_lowest_mean(layer, ConstMatrixView<float>(mass.data(), Hkv, T), L - b);
  }
  void decode_step(PagedKVCache& c, size_t layer, ConstMatrixView<float> q, MatrixView<float> out,
                   float scale, int thr) override {
    if (evict_at_ != EvictAt::kDecode) {
      dense_attend(c, layer, q, out, scale, thr);
      return;
    }
    DecodeOptions o;
    o.reduce = GroupReduce::kMean;
    o.scale = scale;
    o.num_threads = thr;
    decode_attention_tova(c, layer, q, out, layer_budget(c, layer), o);
  }
  bool keep_last_;
};

class QuestPolicy final : public Policy {
 public:
  QuestPolicy(const Budget& b, const PolicyOptions& o) : Policy(b, o), dense_(o.dense_layers) {
    SF_CHECK_ARG(budget_.given, "budget: this policy needs a budget");
    if (!o.reduce_given) reduce_ = GroupReduce::kSum;
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<QuestPolicy>(*this); }
  const char* name() const override { return "quest"; }
  bool evicts() const override { return false; }
  void check_cache(const PagedKVCache& c) const override {
    Policy::check_cache(c);
    SF_CHECK_ARG(c.config().page_bounds && c.config().rope_mode == RopeMode::kOriginal,
                 "cache: Quest needs page_bounds=True and rope_mode='original'");
  }

 protected:
  void decode_step(PagedKVCache& c, size_t layer, ConstMatrixView<float> q, MatrixView<float> out,
                   float scale, int thr) override {
    if (layer < dense_) {
      last_pages_.clear();
      last_pages_stride_ = 0;
      dense_attend(c, layer, q, out, scale, thr);
      return;
    }
    const size_t Hkv = c.config().num_kv_heads;
    const size_t pb = std::max<size_t>(1, layer_budget(c, layer) / c.config().page_size);
    last_pages_.assign(Hkv * pb, -1);
    last_pages_stride_ = pb;
    quest_select(c, layer, q, pb, reduce_, last_pages_.data(), thr);
    DecodeOptions o;
    o.scale = scale;
    o.reduce = GroupReduce::kSum;
    o.num_threads = thr;
    decode_attention(c, layer, q, out, MatrixView<float>(), last_pages_.data(), pb, o);
  }
  size_t dense_;
};

}  // namespace

// -- score-once policies ----------------------------------------------------------------

void ScorerPolicy::check_prefill(const PagedKVCache& c, size_t layer, size_t T, size_t,
                                 size_t b) const {
  require_fresh(c, layer, name());
  SF_CHECK_ARG(!budget_.per_layer.empty() || budget_.uniform.fraction || b <= T,
               "budget: %zu tokens is larger than the context (%zu tokens); use a kept "
               "fraction or a smaller budget",
               b, T);
}

void ScorerPolicy::after_prefill(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                                 const AnyConstMatrix& k, size_t T, int thr) {
  const size_t b = fix_budget(c, layer, static_cast<size_t>(c.last_position(layer) + 1));
  if (prompt_end_.size() <= layer) prompt_end_.resize(layer + 1, 0);
  prompt_end_[layer] = c.last_position(layer) + 1;
  if (c.length(layer, 0) <= b) return;
  std::vector<double> s;
  score(c, layer, q, k, T, thr, s);
  if (evict_at_ == EvictAt::kDecode) {
    // keep the prompt's scores for the decode-time evictions (fp32 in the cache)
    const size_t Hkv = c.config().num_kv_heads;
    for (size_t h = 0; h < Hkv; ++h)
      for (size_t t = 0; t < T; ++t) c.scores(layer, h)[t] = static_cast<float>(s[h * T + t]);
  }
  keep_top(c, layer, s.data(), T, b);
}

void ScorerPolicy::decode_step(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                               MatrixView<float> out, float scale, int thr) {
  dense_attend(c, layer, q, out, scale, thr);
  if (evict_at_ != EvictAt::kDecode) return;
  // Decode-time eviction: the lowest-scoring prompt token goes first (newer on ties); once
  // only generated tokens are left beyond the budget, the oldest generated one.
  const size_t b = layer_budget(c, layer);
  const int64_t prompt_end = layer < prompt_end_.size() ? prompt_end_[layer] : 0;
  for (size_t h = 0; h < c.config().num_kv_heads; ++h) {
    while (c.length(layer, h) > b) {
      const size_t L = c.length(layer, h);
      const int64_t* pos = c.positions(layer, h);
      const float* sc = c.scores(layer, h);
      int64_t best = -1;
      for (size_t s = 0; s < L; ++s) {
        if (pos[s] >= prompt_end) continue;
        if (best < 0 || sc[s] < sc[best] || (sc[s] == sc[best] && pos[s] > pos[best]))
          best = static_cast<int64_t>(s);
      }
      if (best < 0) {
        for (size_t s = 0; s < L; ++s)
          if (best < 0 || pos[s] < pos[best]) best = static_cast<int64_t>(s);
      }
      c.evict(layer, h, &best, 1, false);
    }
  }
}

namespace {

class KeyNormPolicy final : public ScorerPolicy {
 public:
  using ScorerPolicy::ScorerPolicy;
  std::unique_ptr<Policy> clone() const override { return std::make_unique<KeyNormPolicy>(*this); }
  const char* name() const override { return "key_norm"; }
  void score(const PagedKVCache& c, size_t layer, ConstMatrixView<float>, const AnyConstMatrix&,
             size_t T, int, std::vector<double>& s) const override {
    const size_t Hkv = c.config().num_kv_heads, Dk = c.key_dim(), Dv = c.value_dim();
    s.assign(Hkv * T, 0.0);
    std::vector<float> K(T * Dk), V(T * Dv);
    for (size_t h = 0; h < Hkv; ++h) {
      SF_CHECK_ARG(c.length(layer, h) == T,
                   "cache: KeyNorm scores the %zu tokens a head holds, got %zu", c.length(layer, h),
                   T);
      c.gather(layer, h, MatrixView<float>(K.data(), T, Dk), MatrixView<float>(V.data(), T, Dv));
      for (size_t t = 0; t < T; ++t) {
        double acc = 0.0;
        for (size_t d = 0; d < Dk; ++d) {
          const double x = K[t * Dk + d];
          acc += x * x;
        }
        s[h * T + t] = -std::sqrt(acc);
      }
    }
  }
};

class RandomScorer final : public ScorerPolicy {
 public:
  RandomScorer(const Budget& b, const PolicyOptions& o) : ScorerPolicy(b, o), seed_(o.seed) {}
  std::unique_ptr<Policy> clone() const override { return std::make_unique<RandomScorer>(*this); }
  const char* name() const override { return "random"; }
  void score(const PagedKVCache& c, size_t layer, ConstMatrixView<float>, const AnyConstMatrix&,
             size_t T, int, std::vector<double>& s) const override {
    s.resize(c.config().num_kv_heads * T);
    numpy_random(seed_, layer, s.data(), s.size());
  }
  uint64_t seed_;
};

class SnapKVPolicy : public ScorerPolicy {
 public:
  SnapKVPolicy(const Budget& b, const PolicyOptions& o)
      : ScorerPolicy(b, o), window_(o.window), kernel_(o.kernel_size), max_pool_(o.max_pool) {
    SF_CHECK_ARG(window_ >= 1, "window: expected >= 1, got %zu", window_);
    SF_CHECK_ARG(kernel_ >= 1 && kernel_ % 2 == 1, "kernel_size: expected an odd size, got %zu",
                 kernel_);
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<SnapKVPolicy>(*this); }
  const char* name() const override { return "snapkv"; }
  void check_prefill(const PagedKVCache& c, size_t layer, size_t T, size_t context,
                     size_t b) const override {
    ScorerPolicy::check_prefill(c, layer, T, context, b);
    SF_CHECK_ARG(b >= window_, "budget: %zu tokens is smaller than the window (%zu)", b, window_);
    if (T <= b) return;  // nothing to evict: never scored
    check_window(T, b);
  }
  void check_window(size_t T, size_t b) const {
    SF_CHECK_ARG(b >= window_, "budget: %zu tokens is smaller than the window (%zu)", b, window_);
    SF_CHECK_ARG(window_ < T, "window: the prompt (%zu tokens) must be longer than window=%zu", T,
                 window_);
  }
  void score(const PagedKVCache& c, size_t, ConstMatrixView<float> q, const AnyConstMatrix& k,
             size_t T, int thr, std::vector<double>& out) const override {
    const size_t Hkv = c.config().num_kv_heads, D = c.config().head_dim;
    const size_t H = q.cols / D, G = H / Hkv, w = window_, n = T - w;
    std::vector<float> mass(H * T);
    window_attention_mass(AnyConstMatrix(q), k, H, Hkv, w, 0.0f, GroupReduce::kNone,
                          MatrixView<float>(mass.data(), H, T), thr);
    const size_t p = kernel_ / 2;
    std::vector<double> row(n + 2 * p), pooled(H * n);
    for (size_t j = 0; j < H; ++j) {
      const double fill = max_pool_ ? -std::numeric_limits<double>::infinity() : 0.0;
      std::fill(row.begin(), row.end(), fill);
      for (size_t t = 0; t < n; ++t) row[p + t] = static_cast<double>(mass[j * T + t]) / w;
      for (size_t t = 0; t < n; ++t) {
        double a = row[t];
        if (max_pool_) {
          for (size_t i = 1; i < kernel_; ++i) a = std::max(a, row[t + i]);
        } else {
          for (size_t i = 1; i < kernel_; ++i) a += row[t + i];
          a /= static_cast<double>(kernel_);
        }
        pooled[j * n + t] = a;
      }
    }
    out.assign(Hkv * T, 0.0);
    double mx = -std::numeric_limits<double>::infinity();
    for (size_t h = 0; h < Hkv; ++h) {
      for (size_t t = 0; t < n; ++t) {
        double a = pooled[(h * G) * n + t];
        for (size_t g = 1; g < G; ++g) a += pooled[(h * G + g) * n + t];
        a /= static_cast<double>(G);
        out[h * T + t] = a;
        mx = std::max(mx, a);
      }
    }
    // the window gets max + 1 (kvpress: strictly above every prefix token)
    for (size_t h = 0; h < Hkv; ++h)
      for (size_t t = n; t < T; ++t) out[h * T + t] = mx + 1.0;
  }
  size_t window() const { return window_; }

 protected:
  size_t window_, kernel_;
  bool max_pool_;
};

class PyramidKVPolicy final : public SnapKVPolicy {
 public:
  PyramidKVPolicy(const Budget& b, const PolicyOptions& o) : SnapKVPolicy(b, o), beta_(o.beta) {
    SF_CHECK_ARG(beta_ >= 1.0, "beta: expected >= 1, got %g", beta_);
  }
  std::unique_ptr<Policy> clone() const override {
    return std::make_unique<PyramidKVPolicy>(*this);
  }
  const char* name() const override { return "pyramidkv"; }

 protected:
  size_t peek_budget(const PagedKVCache& c, size_t layer, size_t context) const override {
    // a kept fraction reaches the schedule as kvpress's float T * (1 - r)
    const double avg = budget_.resolve_real(layer, context);
    return pyramid_budgets(c.config().num_layers, context, avg, window_, beta_)[layer];
  }
  double beta_;
};

class AdaKVPolicy final : public ScorerPolicy {
 public:
  AdaKVPolicy(const Budget& b, const PolicyOptions& o)
      : ScorerPolicy(b, o), alpha_(o.alpha_safeguard) {
    SF_CHECK_ARG(alpha_ >= 0.0 && alpha_ <= 1.0, "alpha_safeguard: expected in [0, 1], got %g",
                 alpha_);
    SF_CHECK_ARG(o.scorer == "snapkv" || o.scorer == "key_norm" || o.scorer == "random",
                 "scorer: expected 'snapkv', 'key_norm' or 'random', got '%s'", o.scorer.c_str());
    PolicyOptions so = o;
    so.evict_at = EvictAt::kPrefill;
    if (o.scorer == "snapkv") {
      scorer_ = std::make_shared<SnapKVPolicy>(b, so);
    } else if (o.scorer == "key_norm") {
      scorer_ = std::make_shared<KeyNormPolicy>(b, so);
    } else {
      scorer_ = std::make_shared<RandomScorer>(b, so);
    }
  }
  std::unique_ptr<Policy> clone() const override { return std::make_unique<AdaKVPolicy>(*this); }
  const char* name() const override { return "adakv"; }
  void score(const PagedKVCache& c, size_t layer, ConstMatrixView<float> q, const AnyConstMatrix& k,
             size_t T, int thr, std::vector<double>& s) const override {
    scorer_->score(c, layer, q, k, T, thr, s);
  }
  void check_prefill(const PagedKVCache& c, size_t layer, size_t T, size_t context,
                     size_t b) const override {
    ScorerPolicy::check_prefill(c, layer, T, context, b);
    if (T <= b) return;
    if (auto* snap = dynamic_cast<const SnapKVPolicy*>(scorer_.get())) snap->check_window(T, b);
  }

 protected:
  void after_prefill(PagedKVCache& c, size_t layer, ConstMatrixView<float> q,
                     const AnyConstMatrix& k, size_t T, int thr) override {
    const size_t b = fix_budget(c, layer, static_cast<size_t>(c.last_position(layer) + 1));
    const size_t L = c.length(layer, 0);
    if (b >= L) return;
    std::vector<double> s;
    score(c, layer, q, k, T, thr, s);
    const size_t Hkv = c.config().num_kv_heads;
    const size_t n_safe = static_cast<size_t>(static_cast<double>(b) * alpha_);
    const std::vector<int64_t> pos(c.positions(layer, 0), c.positions(layer, 0) + L);
    std::vector<int64_t> order(L);
    if (n_safe > 0) {
      for (size_t h = 0; h < Hkv; ++h) {
        double* sh = s.data() + h * L;
        std::iota(order.begin(), order.end(), 0);
        std::sort(order.begin(), order.end(), [sh, &pos](int64_t a, int64_t bb) {
          if (-sh[a] != -sh[bb]) return -sh[a] < -sh[bb];
          return pos[a] < pos[bb];
        });
        for (size_t i = 0; i < n_safe && i < L; ++i) sh[order[i]] = DBL_MAX;
      }
    }
    // lexsort((-heads, -pos, score)): score ascending, then newer, then higher head first
    std::vector<int64_t> flat(Hkv * L);
    std::iota(flat.begin(), flat.end(), 0);
    std::sort(flat.begin(), flat.end(), [&](int64_t a, int64_t bb) {
      if (s[a] != s[bb]) return s[a] < s[bb];
      const int64_t pa = pos[static_cast<size_t>(a) % L], pb = pos[static_cast<size_t>(bb) % L];
      if (pa != pb) return pa > pb;
      return a / static_cast<int64_t>(L) > bb / static_cast<int64_t>(L);
    });
    std::vector<std::vector<int64_t>> ev(Hkv);
    for (size_t i = 0; i < Hkv * (L - b); ++i) {
      const size_t h = static_cast<size_t>(flat[i]) / L;
      ev[h].push_back(flat[i] - static_cast<int64_t>(h * L));
    }
    for (size_t h = 0; h < Hkv; ++h) c.evict(layer, h, ev[h].data(), ev[h].size(), true);
  }
  double alpha_;
  std::shared_ptr<const ScorerPolicy> scorer_;
};

}  // namespace

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> names = {
      "full",      "sliding_window", "streaming_llm", "h2o",    "tova",    "snapkv",
      "pyramidkv", "adakv",          "quest",         "random", "key_norm"};
  return names;
}

std::unique_ptr<Policy> make_policy(const std::string& name, const Budget& budget,
                                    const PolicyOptions& o) {
  if (name == "full") return std::make_unique<FullPolicy>(budget, o);
  if (name == "sliding_window") return std::make_unique<WindowPolicy>(budget, o, 0);
  if (name == "streaming_llm") return std::make_unique<WindowPolicy>(budget, o, o.sinks);
  if (name == "h2o") return std::make_unique<H2OPolicy>(budget, o);
  if (name == "tova") return std::make_unique<TOVAPolicy>(budget, o);
  if (name == "quest") return std::make_unique<QuestPolicy>(budget, o);
  SF_CHECK_ARG(name == "snapkv" || name == "pyramidkv" || name == "adakv" || name == "random" ||
                   name == "key_norm",
               "policy: unknown KV policy '%s'", name.c_str());
  SF_CHECK_ARG(budget.given, "budget: policy '%s' needs a budget", name.c_str());
  PolicyOptions so = o;
  if (so.evict_at == EvictAt::kDefault) so.evict_at = EvictAt::kPrefill;
  if (name == "snapkv") return std::make_unique<SnapKVPolicy>(budget, so);
  if (name == "pyramidkv") return std::make_unique<PyramidKVPolicy>(budget, so);
  if (name == "adakv") return std::make_unique<AdaKVPolicy>(budget, so);
  if (name == "random") return std::make_unique<RandomScorer>(budget, so);
  return std::make_unique<KeyNormPolicy>(budget, so);
}

// ---------------------------------------------------------------------------------------
// PolicyCache

PolicyCache::PolicyCache(std::shared_ptr<PagedKVCache> cache, size_t num_heads,
                         std::shared_ptr<Policy> policy, bool prefill_compress)
    : cache_(std::move(cache)),
      policy_(std::move(policy)),
      num_heads_(num_heads),
      prefill_compress_(prefill_compress) {
  SF_CHECK_ARG(cache_ != nullptr, "cache: expected a PagedKVCache");
  SF_CHECK_ARG(policy_ != nullptr, "policy: expected a policy");
  const size_t hkv = cache_->config().num_kv_heads;
  SF_CHECK_ARG(num_heads >= 1 && num_heads % hkv == 0,
               "num_heads: expected a multiple of num_kv_heads=%zu, got %zu", hkv, num_heads);
  policy_->check_cache(*cache_);
}

PolicyCache::PolicyCache(const PolicyCache& o)
    : cache_(std::make_shared<PagedKVCache>(*o.cache_)),
      policy_(o.policy_->clone()),
      num_heads_(o.num_heads_),
      length_(o.length_),
      prefill_compress_(o.prefill_compress_) {}

void Policy::check_prefill_at(const PagedKVCache& cache, size_t layer, size_t T) const {
  check_cache(cache);
  const size_t context = static_cast<size_t>(cache.last_position(layer) + 1) + T;
  const size_t b = budget_.given ? peek_budget(cache, layer, context) : 0;
  check_prefill(cache, layer, T, context, b);
}

void PolicyCache::check_attend(size_t T) const {
  policy_->check_cache(*cache_);
  if (T > 1 && length_ == 0 && prefill_compress_) {
    for (size_t l = 0; l < cache_->config().num_layers; ++l)
      policy_->check_prefill_at(*cache_, l, T);
  }
}

void PolicyCache::reset() {
  cache_->clear();
  cache_->reset_peak();
  policy_->reset();
  length_ = 0;
}

void PolicyCache::attend(size_t layer, ConstMatrixView<float> q, ConstMatrixView<float> k,
                         ConstMatrixView<float> v, float scale, MatrixView<float> out,
                         int num_threads) {
  const CacheConfig& c = cache_->config();
  const size_t D = c.head_dim, Hkv = c.num_kv_heads, H = num_heads_, T = q.rows;
  SF_CHECK_ARG(layer < c.num_layers, "layer: expected in [0, %zu), got %zu", c.num_layers, layer);
  SF_CHECK_ARG(T >= 1 && q.cols == H * D, "q: expected shape (T >= 1, %zu), got (%zu, %zu)", H * D,
               q.rows, q.cols);
  SF_CHECK_ARG(k.rows == T && k.cols == Hkv * D, "k: expected shape (%zu, %zu), got (%zu, %zu)", T,
               Hkv * D, k.rows, k.cols);
  SF_CHECK_ARG(v.rows == T && v.cols == Hkv * cache_->value_dim(),
               "v: expected shape (%zu, %zu), got (%zu, %zu)", T, Hkv * cache_->value_dim(), v.rows,
               v.cols);
  SF_CHECK_ARG(out.rows == T && out.cols == H * cache_->value_dim(),
               "out: expected shape (%zu, %zu), got (%zu, %zu)", T, H * cache_->value_dim(),
               out.rows, out.cols);
  const int64_t have = cache_->last_position(layer) + 1;
  SF_CHECK_ARG(have == static_cast<int64_t>(length_),
               "block: layer %zu holds positions up to %lld, but the new tokens start at %zu "
               "(blocks must be fed in order, each once per step)",
               layer, static_cast<long long>(have - 1), length_);
  if (T > 1 && length_ == 0 && prefill_compress_) {
    models::causal_attention(q, k, v, models::AttentionShape{H, Hkv, D}, scale, out, num_threads);
    std::vector<int64_t> pos(T);
    std::iota(pos.begin(), pos.end(), 0);
    policy_->prefill(*cache_, layer, q, k, v, pos.data(), T, num_threads);
    return;
  }
  for (size_t t = 0; t < T; ++t) {
    const ConstMatrixView<float> qt(q.row(t), H, D, D);
    const ConstMatrixView<float> kt(k.row(t), 1, Hkv * D, Hkv * D);
    const ConstMatrixView<float> vt(v.row(t), 1, v.cols, v.cols);
    MatrixView<float> ot(out.row(t), H, cache_->value_dim(), cache_->value_dim());
    policy_->decode(*cache_, layer, qt, kt, vt, static_cast<int64_t>(length_ + t), ot, scale,
                    num_threads);
  }
}

}  // namespace kv
}  // namespace sparseforge
