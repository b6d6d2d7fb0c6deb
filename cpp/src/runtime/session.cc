#include "sparseforge/runtime/session.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/kernels/activation.h"
#include "sparseforge/kernels/dense.h"
#include "sparseforge/kernels/nm.h"
#include "sparseforge/kernels/unstructured.h"
#include "sparseforge/models/ops.h"

namespace sparseforge {
namespace runtime {

// ---------------------------------------------------------------------------------------
// Linears

namespace {

size_t round_up16(size_t n) { return (n + 15) / 16 * 16; }

// Y = X W^T for W in its format. One token runs the GEMV (dense: bitwise the GEMM at batch
// 1); more run the GEMM, the same call the Python forward makes.
void product(const Weight& w, ConstMatrixView<float> X, MatrixView<float> Y, int threads) {
  const bool one = X.rows == 1;
  switch (w.format) {
    case WeightFormat::kDense:
      if (one) {
        kernels::gemv(w.dense, X.data, Y.data, threads);
      } else {
        kernels::gemm(w.dense, X, Y, threads);
      }
      return;
    case WeightFormat::kNM:
      if (one) {
        kernels::nm_gemv(*w.nm, X.data, Y.data, threads);
      } else {
        kernels::nm_gemm(*w.nm, X, Y, threads);
      }
      return;
    case WeightFormat::kBitmap:
      if (one) {
        kernels::bitmap_gemv(*w.bitmap, X.data, Y.data, threads);
      } else {
        kernels::bitmap_gemm(*w.bitmap, X, Y, threads);
      }
      return;
    case WeightFormat::kNone:
    default:
      SF_CHECK(false);
  }
}

// TEAL's column skip on Wt for one token: y = Wt^T (x masked by |x| > t).
void column_skip(const Weight& wt, const float* x, float t, float* y, int threads) {
  if (wt.format == WeightFormat::kDense) {
    kernels::gemv_sparse_input(wt.dense, x, t, y, threads);
  } else {
    kernels::bitmap_gemv_sparse_input(*wt.bitmap, x, t, y, threads);
  }
}

// Batched column skip: below this predicted gain the dense path runs (the Python default).
constexpr double kMinGain = 1.1;

void linear(const Linear& l, ConstMatrixView<float> X, MatrixView<float> Y,
            std::vector<float>& masked, int threads) {
  const size_t T = X.rows, in = X.cols;
  if (!l.teal) {
    product(l.w, X, Y, threads);
  } else if (T == 1 && !l.wt.empty()) {
    column_skip(l.wt, X.data, l.threshold, Y.data, threads);
  } else if (!l.w.empty()) {
    // x * (|x| > t) through W: sparseforge.activation's masked product for T > 1.
    masked.resize(T * in);
    for (size_t r = 0; r < T; ++r) {
      const float* x = X.row(r);
      float* m = masked.data() + r * in;
      for (size_t c = 0; c < in; ++c) m[c] = std::fabs(x[c]) > l.threshold ? x[c] : 0.0f;
    }
    product(l.w, ConstMatrixView<float>(masked.data(), T, in), Y, threads);
  } else if (l.wt.format == WeightFormat::kDense) {
    kernels::gemm_sparse_input(l.wt.dense, X, l.threshold, Y, kMinGain, threads);
  } else {
    for (size_t r = 0; r < T; ++r) column_skip(l.wt, X.row(r), l.threshold, Y.row(r), threads);
  }
  if (l.bias != nullptr) {
    for (size_t r = 0; r < T; ++r) {
      float* y = Y.row(r);
      for (size_t c = 0; c < Y.cols; ++c) y[c] += l.bias[c];
    }
  }
}

// The fused sparse SwiGLU (kernels::swiglu, mode teal) serves one token when gate and up
// share a threshold and all three carry a dense transposed weight.
bool fused_teal(const Block& b) {
  const Linear* ls[3] = {&b.gate, &b.up, &b.down};
  for (const Linear* l : ls) {
    if (!l->teal || l->wt.format != WeightFormat::kDense || l->bias != nullptr) return false;
  }
  return b.gate.threshold == b.up.threshold;
}

void add_into(MatrixView<float> h, ConstMatrixView<float> y) {
  for (size_t r = 0; r < h.rows; ++r) {
    float* a = h.row(r);
    const float* b = y.row(r);
    for (size_t c = 0; c < h.cols; ++c) a[c] += b[c];
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Sampling

Sampler::Sampler(const SamplingConfig& config) : config_(config), rng_(config.seed) {
  SF_CHECK_ARG(std::isfinite(config.temperature) && config.temperature >= 0.0f,
               "temperature: expected a finite number >= 0, got %g",
               static_cast<double>(config.temperature));
  SF_CHECK_ARG(config.top_p > 0.0f && config.top_p <= 1.0f,
               "top_p: expected 0 < top_p <= 1, got %g", static_cast<double>(config.top_p));
}

int64_t Sampler::pick(const float* logits, size_t vocab) {
  SF_CHECK_ARG(vocab > 0, "logits: expected at least one entry");
  if (config_.temperature == 0.0f) {
    size_t best = 0;  // argmax, ties to the lowest id; a NaN never wins (numpy's would)
    for (size_t i = 1; i < vocab; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return static_cast<int64_t>(best);
  }
  p_.resize(vocab);
  const double inv_t = 1.0 / static_cast<double>(config_.temperature);
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]) * inv_t);
  SF_CHECK_NUMERIC(std::isfinite(mx), "logits: no finite maximum to sample from");
  for (size_t i = 0; i < vocab; ++i) p_[i] = std::exp(static_cast<double>(logits[i]) * inv_t - mx);
  const bool top_k = config_.top_k > 0 && config_.top_k < vocab;
  if (top_k || config_.top_p < 1.0f) {
    // Most likely first, ties to the lower id; keep a prefix, zero the rest.
    order_.resize(vocab);
    std::iota(order_.begin(), order_.end(), 0u);
    const auto more_likely = [&](uint32_t a, uint32_t b) {
      return p_[a] > p_[b] || (p_[a] == p_[b] && a < b);
    };
    size_t keep = top_k ? config_.top_k : vocab;
    std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep),
                      order_.end(), more_likely);
    if (config_.top_p < 1.0f) {
      double total = 0.0;
      for (size_t i = 0; i < keep; ++i) total += p_[order_[i]];
      double cum = 0.0;
      size_t n = 0;
      while (n < keep) {
        cum += p_[order_[n++]];
        if (cum >= static_cast<double>(config_.top_p) * total) break;
      }
      keep = n;
    }
    for (size_t i = keep; i < vocab; ++i) p_[order_[i]] = 0.0;
  }
  double total = 0.0;
  for (size_t i = 0; i < vocab; ++i) total += p_[i];
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double cum = 0.0;
  size_t last = 0;
  for (size_t i = 0; i < vocab; ++i) {
    if (p_[i] == 0.0) continue;
    last = i;
    cum += p_[i];
    if (cum > u) return static_cast<int64_t>(i);
  }
  return static_cast<int64_t>(last);  // rounding left u at the very top
}

// ---------------------------------------------------------------------------------------
// Session

struct Session::Scratch {
  std::vector<float> h, x, q, k, v, a, g, u, y, masked;
  std::vector<int64_t> pos;
  void reserve(const ModelConfig& c, size_t T) {
    h.resize(T * c.dim);
    x.resize(T * c.dim);
    y.resize(T * c.dim);
    q.resize(T * c.q_dim());
    a.resize(T * c.q_dim());
    k.resize(T * c.kv_dim());
    v.resize(T * c.kv_dim());
    g.resize(T * c.hidden_dim);
    u.resize(T * c.hidden_dim);
    pos.resize(T);
  }
};

Session::Session(const Model& model, size_t capacity, int num_threads)
    : model_(&model), capacity_(capacity), num_threads_(0), scratch_(new Scratch) {
  model.validate();
  const ModelConfig& c = model.config;
  SF_CHECK_ARG(capacity >= 1 && capacity <= c.max_seq_len,
               "capacity: expected 1 <= capacity <= max_seq_len=%zu, got %zu", c.max_seq_len,
               capacity);
  set_num_threads(num_threads);
  // A sliding window shifts the score chunks by up to 15 keys (models/ops.h).
  ldk_ = round_up16(capacity) + (c.windowed() ? 16 : 0);
  k_.assign(c.n_layers * c.kv_dim() * ldk_, 0.0f);
  v_.assign(c.n_layers * capacity * c.kv_dim(), 0.0f);
}

Session::Session(const Model& model, std::shared_ptr<kv::PolicyCache> cache, int num_threads)
    : model_(&model), capacity_(0), ldk_(0), num_threads_(0), scratch_(new Scratch) {
  model.validate();
  SF_CHECK_ARG(cache != nullptr, "cache: expected a policy cache");
  const ModelConfig& c = model.config;
  const kv::CacheConfig& k = cache->cache().config();
  SF_CHECK_ARG(k.num_layers == c.n_layers && k.num_kv_heads == c.n_kv_heads &&
                   k.head_dim == c.head_dim && cache->cache().value_dim() == c.head_dim &&
                   cache->num_heads() == c.n_heads && !k.latent,
               "cache: built for (%zu layers, %zu/%zu heads of %zu), the model has (%zu layers, "
               "%zu/%zu heads of %zu)",
               k.num_layers, cache->num_heads(), k.num_kv_heads, k.head_dim, c.n_layers, c.n_heads,
               c.n_kv_heads, c.head_dim);
  const bool half = c.rope_style == models::RopeStyle::kHalf;
  SF_CHECK_ARG(k.rope_mode == kv::RopeMode::kOriginal ||
                   ((k.rope_style == kv::RopeStyle::kHalf) == half && k.rope_theta == c.rope_theta),
               "cache: its RoPE (style / theta) differs from the model's");
  SF_CHECK_ARG(cache->length() <= c.max_seq_len,
               "cache: holds %zu positions, more than max_seq_len=%zu", cache->length(),
               c.max_seq_len);
  capacity_ = c.max_seq_len;
  policy_ = std::move(cache);
  set_num_threads(num_threads);
}

Session::~Session() = default;

void Session::reset() {
  if (policy_) policy_->reset();
  length_ = 0;
}

void Session::set_model(const Model& model) {
  model.validate();
  const ModelConfig &a = model_->config, &b = model.config;
  SF_CHECK_ARG(a.n_layers == b.n_layers && a.n_kv_heads == b.n_kv_heads &&
                   a.head_dim == b.head_dim && a.n_heads == b.n_heads && a.dim == b.dim &&
                   capacity_ <= b.max_seq_len && a.windowed() == b.windowed(),
               "model: its layout (%zu layers, %zu/%zu heads of %zu) differs from the session's "
               "(%zu layers, %zu/%zu heads of %zu)",
               b.n_layers, b.n_heads, b.n_kv_heads, b.head_dim, a.n_layers, a.n_heads, a.n_kv_heads,
               a.head_dim);
  model_ = &model;
}

void Session::set_num_threads(int num_threads) { num_threads_ = resolve_num_threads(num_threads); }

size_t Session::kv_bytes() const {
  if (policy_) return policy_->bytes_in_use();
  return (k_.size() + v_.size()) * sizeof(float);
}

void Session::check_tokens(const int64_t* tokens, size_t T, const char* name) const {
  const ModelConfig& c = model_->config;
  SF_CHECK_ARG(T >= 1, "%s: expected at least one token id, got none", name);
  SF_CHECK_ARG(tokens != nullptr, "%s: null token ids", name);
  for (size_t t = 0; t < T; ++t) {
    SF_CHECK_ARG(tokens[t] >= 0 && static_cast<size_t>(tokens[t]) < c.vocab_size,
                 "%s: token id %lld at index %zu is outside [0, vocab_size=%zu)", name,
                 static_cast<long long>(tokens[t]), t, c.vocab_size);
  }
  SF_CHECK_ARG(length() + T <= capacity_,
               "%s: %zu more tokens do not fit the cache (%zu of %zu used)", name, T, length(),
               capacity_);
  // a policy's own checks (a budget larger than the prompt, ...) for every layer before
  // the first one appends anything
  if (policy_) policy_->check_attend(T);
  check_window(length() + T);
}

void Session::check_window(size_t total) const {
  // A policy cache attends every token it keeps: exact on a sliding-window model only
  // while the sequence fits the window.
  const ModelConfig& c = model_->config;
  if (!policy_ || !c.windowed()) return;
  size_t w = 0;
  for (size_t i = 0; i < c.n_layers; ++i) {
    if (c.window(i) > 0) w = w == 0 ? c.window(i) : std::min(w, c.window(i));
  }
  SF_CHECK_ARG(total <= w,
               "tokens: a KV policy cache attends every token it keeps, but this model has a "
               "sliding window of %zu tokens (exceeded at %zu tokens); use the contiguous cache",
               w, total);
}

void Session::prefill(const int64_t* tokens, size_t T, float* logits, bool last_only) {
  check_tokens(tokens, T, "tokens");
  SF_CHECK_ARG(logits != nullptr, "logits: expected a caller-owned output");
  forward(tokens, T, logits, last_only);
}

void Session::step(int64_t token, float* logits) { prefill(&token, 1, logits, true); }

void Session::forward(const int64_t* tokens, size_t T, float* logits, bool last_only) {
  const Model& m = *model_;
  const ModelConfig& c = m.config;
  Scratch& s = *scratch_;
  s.reserve(c, T);
  if (policy_) length_ = policy_->length();
  for (size_t t = 0; t < T; ++t) s.pos[t] = static_cast<int64_t>(length_ + t);
  // Embeddings, widened to float32 (exact).
  visit_dtype(m.embed.dtype, [&](auto tag) {
    using E = decltype(tag);
    const ConstMatrixView<E> table = m.embed.as<E>();
    for (size_t t = 0; t < T; ++t) {
      const E* row = table.row(static_cast<size_t>(tokens[t]));
      float* h = s.h.data() + t * c.dim;
      for (size_t d = 0; d < c.dim; ++d) h[d] = to_f32(row[d]);
      if (c.embed_scale != 1.0f) {
        for (size_t d = 0; d < c.dim; ++d) h[d] *= c.embed_scale;
      }
    }
  });
  for (size_t i = 0; i < c.n_layers; ++i) block(i, T);
  // Final norm and head over the rows asked for.
  const size_t r0 = last_only ? T - 1 : 0, n = T - r0;
  const ConstMatrixView<float> hv(s.h.data() + r0 * c.dim, n, c.dim);
  const MatrixView<float> xv(s.x.data(), n, c.dim);
  models::rms_norm(hv, m.final_norm, c.norm_eps, xv, num_threads_);
  const MatrixView<float> out(logits, n, c.vocab_size);
  if (c.tied_embeddings) {
    product(Weight::of(m.embed), xv, out, num_threads_);
  } else {
    linear(m.head, xv, out, s.masked, num_threads_);
  }
  if (c.final_softcap > 0.0f) {
    const float cap = c.final_softcap;
    for (size_t r = 0; r < n; ++r) {
      float* row = out.row(r);
      for (size_t j = 0; j < c.vocab_size; ++j) row[j] = cap * std::tanh(row[j] / cap);
    }
  }
  if (policy_) policy_->advance(T);
  length_ += T;
}

void Session::block(size_t i, size_t T) {
  const Model& m = *model_;
  const ModelConfig& c = m.config;
  const Block& b = m.blocks[i];
  Scratch& s = *scratch_;
  const int thr = num_threads_;
  const size_t D = c.head_dim, Hq = c.n_heads, Hkv = c.n_kv_heads;
  const MatrixView<float> h(s.h.data(), T, c.dim), x(s.x.data(), T, c.dim), y(s.y.data(), T, c.dim);
  const MatrixView<float> q(s.q.data(), T, c.q_dim()), a(s.a.data(), T, c.q_dim());
  const MatrixView<float> k(s.k.data(), T, c.kv_dim()), v(s.v.data(), T, c.kv_dim());
  const MatrixView<float> g(s.g.data(), T, c.hidden_dim), u(s.u.data(), T, c.hidden_dim);

  // Attention.
  models::rms_norm(h, b.attn_norm, c.norm_eps, x, thr);
  linear(b.q, x, q, s.masked, thr);
  linear(b.k, x, k, s.masked, thr);
  linear(b.v, x, v, s.masked, thr);
  if (c.qk_norm) {  // per head: (T * H, D) views of q and k
    const MatrixView<float> qh(s.q.data(), T * Hq, D), kh(s.k.data(), T * Hkv, D);
    models::rms_norm(qh, b.q_norm, c.norm_eps, qh, thr);
    models::rms_norm(kh, b.k_norm, c.norm_eps, kh, thr);
  }
  models::rope(q, Hq, D, s.pos.data(), c.theta(i), c.rope_style, thr);
  models::rope(k, Hkv, D, s.pos.data(), c.theta(i), c.rope_style, thr);
  const float scale = c.attention_scale();
  if (policy_) {
    // the paged cache with a policy: prefill or decode under the policy, one call a layer
    // (no sliding window there: forward() refuses a sequence past the model's window)
    policy_->attend(i, q, k, v, scale, a, thr);
  } else {
    float* kt = k_.data() + i * c.kv_dim() * ldk_;
    float* vc = v_.data() + i * capacity_ * c.kv_dim();
    models::store_transposed_keys(k, Hkv, D, length_, kt, ldk_);
    std::copy(s.v.begin(), s.v.begin() + static_cast<std::ptrdiff_t>(T * c.kv_dim()),
              vc + length_ * c.kv_dim());
    models::attention_transposed_keys(
        q, kt, ldk_, ConstMatrixView<float>(vc, capacity_, c.kv_dim()), length_,
        models::AttentionShape{Hq, Hkv, D}, scale, a, thr, c.window(i));
  }
  linear(b.o, a, y, s.masked, thr);
  if (c.sandwich_norms) models::rms_norm(y, b.attn_post_norm, c.norm_eps, y, thr);
  add_into(h, y);

  // MLP.
  models::rms_norm(h, b.mlp_norm, c.norm_eps, x, thr);
  const bool geglu = c.activation == ModelConfig::Activation::kGeluTanh;
  if (T == 1 && !geglu && fused_teal(b)) {
    kernels::SwiGLUWeights w;
    w.mode = kernels::SwiGLUMode::kTeal;
    w.gate = b.gate.wt.dense;
    w.up = b.up.wt.dense;
    w.down = b.down.wt.dense;
    kernels::swiglu(w, x.data, b.gate.threshold, b.down.threshold, y.data, thr);
  } else {
    linear(b.gate, x, g, s.masked, thr);
    linear(b.up, x, u, s.masked, thr);
    if (geglu) {
      models::geglu_gate(g, u, g, thr);
    } else {
      models::swiglu_gate(g, u, g, thr);
    }
    linear(b.down, g, y, s.masked, thr);
  }
  if (c.sandwich_norms) models::rms_norm(y, b.mlp_post_norm, c.norm_eps, y, thr);
  add_into(h, y);
}

std::vector<int64_t> Session::generate(const int64_t* prompt, size_t n, size_t max_new,
                                       const SamplingConfig& sampling,
                                       const std::vector<int64_t>& stop) {
  Sampler sampler(sampling);
  check_tokens(prompt, n, "prompt");
  const size_t past = length();
  SF_CHECK_ARG(past + n + max_new <= capacity_ + 1,
               "max_new_tokens: %zu cached + %zu prompt + %zu new tokens need a capacity of %zu, "
               "the cache holds %zu",
               past, n, max_new, past + n + max_new - 1, capacity_);
  if (max_new > 0) check_window(past + n + max_new - 1);
  std::vector<int64_t> out;
  if (max_new == 0) return out;
  const size_t vocab = model_->config.vocab_size;
  std::vector<float> logits(vocab);
  forward(prompt, n, logits.data(), true);
  for (;;) {
    const int64_t next = sampler.pick(logits.data(), vocab);
    out.push_back(next);
    if (out.size() == max_new || std::find(stop.begin(), stop.end(), next) != stop.end()) {
      return out;
    }
    forward(&next, 1, logits.data(), true);
  }
}

void Session::read_kv(size_t layer, float* k, float* v) const {
  const ModelConfig& c = model_->config;
  SF_CHECK_ARG(!policy_, "read_kv: a policy session's cache is paged (read its PagedKVCache)");
  SF_CHECK_ARG(layer < c.n_layers, "layer: expected < %zu, got %zu", c.n_layers, layer);
  const size_t kv = c.kv_dim();
  const float* kt = k_.data() + layer * kv * ldk_;
  for (size_t j = 0; j < length_; ++j) {
    for (size_t col = 0; col < kv; ++col) k[j * kv + col] = kt[col * ldk_ + j];
  }
  const float* vc = v_.data() + layer * capacity_ * kv;
  std::copy(vc, vc + length_ * kv, v);
}

}  // namespace runtime
}  // namespace sparseforge
