#include "sparseforge/models/ops.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "models/simd/attention.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace models {
namespace {

using ArrayMap = Eigen::Map<Eigen::ArrayXf>;
using ConstArrayMap = Eigen::Map<const Eigen::ArrayXf>;

// Threads for a call: at most one per kMinWorkPerThread units of work (elements, or
// multiply-adds for attention; about 0.1 ms on one core). Waking a team for less costs
// about as much as the work, and far more on a loaded machine (a 2-thread rms_norm of
// 512 x 576 took 17 ms at load 7 on 2 cores, 0.05 ms on one).
constexpr size_t kMinWorkPerThread = size_t{1} << 18;

int threads_for(size_t work, int num_threads) {
  const size_t cap = std::max<size_t>(1, work / kMinWorkPerThread);
  return static_cast<int>(
      std::min<size_t>(static_cast<size_t>(resolve_num_threads(num_threads)), cap));
}

void check_matrix(const ConstMatrixView<float>& m, const char* name) {
  SF_CHECK_ARG(m.data != nullptr || m.empty(), "%s: null data for a (%zu, %zu) matrix", name,
               m.rows, m.cols);
  SF_CHECK_ARG(m.stride >= m.cols || m.rows <= 1, "%s: row stride %zu is less than cols=%zu", name,
               m.stride, m.cols);
}

void check_same_shape(const ConstMatrixView<float>& a, const char* a_name,
                      const ConstMatrixView<float>& b, const char* b_name) {
  SF_CHECK_ARG(a.rows == b.rows && a.cols == b.cols,
               "%s: expected shape (%zu, %zu) (%s's), got (%zu, %zu)", b_name, a.rows, a.cols,
               a_name, b.rows, b.cols);
}

void check_scale(float scale) {
  SF_CHECK_ARG(std::isfinite(scale) && scale > 0.0f, "scale: expected a finite number > 0, got %g",
               static_cast<double>(scale));
}

void check_shape(const AttentionShape& s) {
  SF_CHECK_ARG(s.n_heads > 0, "n_heads: expected > 0, got %zu", s.n_heads);
  SF_CHECK_ARG(s.n_kv_heads > 0, "n_kv_heads: expected > 0, got %zu", s.n_kv_heads);
  SF_CHECK_ARG(s.n_heads % s.n_kv_heads == 0,
               "n_kv_heads: %zu does not divide n_heads=%zu (grouped-query attention)",
               s.n_kv_heads, s.n_heads);
  SF_CHECK_ARG(s.head_dim > 0, "head_dim: expected > 0, got %zu", s.head_dim);
}

// Keys of every kv head, transposed and zero-padded: dst[(g * D + d) * ld + j] = src(j,
// g*D + d) for j < n, 0 for n <= j < ld. The kernel's score loop reads contiguous keys in
// whole 16-key chunks.
void transpose_heads(const ConstMatrixView<float>& src, size_t n, size_t Hkv, size_t D, size_t ld,
                     float* dst, int num_threads) {
  parallel_for(Hkv, threads_for(Hkv * D * n, num_threads), [&](size_t g0, size_t g1) {
    for (size_t g = g0; g < g1; ++g) {
      float* out = dst + g * D * ld;
      for (size_t j = 0; j < n; ++j) {
        const float* r = src.row(j) + g * D;
        for (size_t d = 0; d < D; ++d) out[d * ld + j] = r[d];
      }
      for (size_t d = 0; d < D; ++d) std::fill(out + d * ld + n, out + (d + 1) * ld, 0.0f);
    }
  });
}

size_t round_up16(size_t n) { return (n + 15) / 16 * 16; }

// n floats of 64-byte aligned scratch (the kernels' Eigen maps assume it).
class AlignedScratch {
 public:
  explicit AlignedScratch(size_t n) : buf_(n + 16) {}
  float* data() {
    const auto p = reinterpret_cast<std::uintptr_t>(buf_.data());
    return buf_.data() + ((64 - p % 64) % 64) / sizeof(float);
  }

 private:
  std::vector<float> buf_;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Kernel dispatch

extern const AttentionTable kAttentionTableScalar;
#if SF_HAVE_X86_KERNELS
extern const AttentionTable kAttentionTableAVX2;
extern const AttentionTable kAttentionTableAVX512;
#endif

const AttentionTable& attention_table_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kAttentionTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kAttentionTableAVX2;
#endif
  return kAttentionTableScalar;
}

const AttentionTable& attention_table() {
  return attention_table_for(static_cast<int>(simd_level()));
}

// ---------------------------------------------------------------------------------------
// RMSNorm

void rms_norm(ConstMatrixView<float> x, const float* weight, float eps, MatrixView<float> out,
              int num_threads) {
  check_matrix(x, "x");
  check_matrix(out, "out");
  check_same_shape(x, "x", out, "out");
  SF_CHECK_ARG(x.cols > 0, "x: expected at least one column, got shape (%zu, 0)", x.rows);
  SF_CHECK_ARG(weight != nullptr, "weight: expected a non-null (%zu,) vector", x.cols);
  SF_CHECK_ARG(std::isfinite(eps) && eps >= 0.0f, "eps: expected a finite number >= 0, got %g",
               static_cast<double>(eps));
  SF_CHECK_ARG(out.data == x.data || out.data + out.rows * out.stride <= x.data ||
                   x.data + x.rows * x.stride <= out.data,
               "out: overlaps x without being x itself (in place is allowed)");
  const size_t n = x.cols;
  parallel_for(x.rows, threads_for(x.size(), num_threads), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* xr = x.row(r);
      float* yr = out.row(r);
      double ss = 0.0;
      for (size_t c = 0; c < n; ++c) ss += static_cast<double>(xr[c]) * xr[c];
      const float inv = static_cast<float>(
          1.0 / std::sqrt(ss / static_cast<double>(n) + static_cast<double>(eps)));
      for (size_t c = 0; c < n; ++c) yr[c] = weight[c] * (xr[c] * inv);
    }
  });
}

// ---------------------------------------------------------------------------------------
// RoPE

RopeStyle parse_rope_style(const std::string& name) {
  if (name == "interleaved") return RopeStyle::kInterleaved;
  if (name == "half") return RopeStyle::kHalf;
  SF_THROW(InvalidArgument, "style: expected 'interleaved' or 'half', got '%s'", name.c_str());
}

const char* rope_style_name(RopeStyle style) {
  return style == RopeStyle::kHalf ? "half" : "interleaved";
}

void rope(MatrixView<float> x, size_t heads, size_t head_dim, const int64_t* positions,
          double theta, RopeStyle style, int num_threads) {
  check_matrix(x, "x");
  SF_CHECK_ARG(heads > 0, "heads: expected > 0, got %zu", heads);
  SF_CHECK_ARG(head_dim > 0 && head_dim % 2 == 0, "head_dim: expected an even number > 0, got %zu",
               head_dim);
  SF_CHECK_ARG(x.cols == heads * head_dim,
               "x: expected heads * head_dim = %zu * %zu = %zu columns, got %zu", heads, head_dim,
               heads * head_dim, x.cols);
  SF_CHECK_ARG(std::isfinite(theta) && theta > 0.0, "theta: expected a finite number > 0, got %g",
               theta);
  SF_CHECK_ARG(positions != nullptr || x.rows == 0, "positions: expected %zu positions", x.rows);
  for (size_t t = 0; t < x.rows; ++t) {
    SF_CHECK_ARG(positions[t] >= 0, "positions: expected values >= 0, got %lld at index %zu",
                 static_cast<long long>(positions[t]), t);
  }
  const size_t half = head_dim / 2;
  // inv_freq[i] = theta^(-2i / head_dim), as llama2.c and Hugging Face define it.
  std::vector<double> inv_freq(half);
  for (size_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(theta, -static_cast<double>(2 * i) / static_cast<double>(head_dim));
  }
  // Pair i of a head: elements (lo(i), hi(i)).
  const size_t lo_step = style == RopeStyle::kInterleaved ? 2 : 1;
  const size_t hi_offset = style == RopeStyle::kInterleaved ? 1 : half;
  parallel_for(x.rows, threads_for(x.size(), num_threads), [&](size_t t0, size_t t1) {
    std::vector<float> cs(half), sn(half);
    for (size_t t = t0; t < t1; ++t) {
      const double pos = static_cast<double>(positions[t]);
      for (size_t i = 0; i < half; ++i) {
        const double angle = pos * inv_freq[i];
        cs[i] = static_cast<float>(std::cos(angle));
        sn[i] = static_cast<float>(std::sin(angle));
      }
      float* row = x.row(t);
      for (size_t h = 0; h < heads; ++h) {
        float* xh = row + h * head_dim;
        for (size_t i = 0; i < half; ++i) {
          float& a = xh[i * lo_step];
          float& b = xh[i * lo_step + hi_offset];
          const float a0 = a, b0 = b;
          a = a0 * cs[i] - b0 * sn[i];
          b = a0 * sn[i] + b0 * cs[i];
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Attention

void attention_transposed_keys(ConstMatrixView<float> q, const float* kt, size_t ldk,
                               ConstMatrixView<float> v, size_t past, const AttentionShape& shape,
                               float scale, MatrixView<float> out, int num_threads, size_t window) {
  check_shape(shape);
  check_scale(scale);
  check_matrix(q, "q");
  check_matrix(v, "v");
  check_matrix(out, "out");
  const size_t Hq = shape.n_heads, Hkv = shape.n_kv_heads, D = shape.head_dim;
  const size_t T = q.rows, S = past + T;
  SF_CHECK_ARG(q.cols == Hq * D, "q: expected n_heads * head_dim = %zu columns, got %zu", Hq * D,
               q.cols);
  SF_CHECK_ARG(T > 0, "q: expected at least one query row, got 0");
  SF_CHECK_ARG(v.cols == Hkv * D, "v: expected n_kv_heads * head_dim = %zu columns, got %zu",
               Hkv * D, v.cols);
  SF_CHECK_ARG(v.rows >= S, "v: expected at least past + T = %zu rows, got %zu", S, v.rows);
  SF_CHECK_ARG(kt != nullptr, "kt: expected non-null transposed keys");
  SF_CHECK_ARG(ldk % 16 == 0 && ldk >= round_up16(S),
               "ldk: expected a multiple of 16 >= round_up(past + T, 16) = %zu, got %zu",
               round_up16(S), ldk);
  check_same_shape(q, "q", out, "out");
  const size_t group = Hq / Hkv;
  constexpr size_t kBlock = 32;
  const size_t blocks = (T + kBlock - 1) / kBlock;
  const AttentionTable& kernel = attention_table();
  if (window > 0 && window < S) {
    // Each query alone on its last `window` keys: kt and v shifted to the first of them.
    const size_t need = S - window + round_up16(window);
    SF_CHECK_ARG(ldk >= need,
                 "ldk: a sliding window of %zu over %zu keys needs ldk >= %zu, got %zu", window, S,
                 need, ldk);
    const size_t work = Hq * D * T * window;
    parallel_for_dynamic(Hq * blocks, threads_for(work, num_threads), [&](size_t task) {
      const size_t b = blocks - 1 - task / Hq, h = task % Hq, g = h / group;
      const size_t t0 = b * kBlock, t1 = std::min(T, t0 + kBlock);
      AlignedScratch s(round_up16(window));
      for (size_t t = t0; t < t1; ++t) {
        const size_t end = past + t + 1, lo = end > window ? end - window : 0;
        kernel.attend(q.row(t) + h * D, q.stride, 1, kt + g * D * ldk + lo, ldk,
                      v.data + lo * v.stride + g * D, v.stride, end - lo, D, scale, s.data(),
                      round_up16(window), out.row(t) + h * D, out.stride);
      }
    });
    return;
  }
  const size_t work = Hq * D * (T * S - T * T / 2);
  // Task i: the heaviest (latest) query blocks first, so the dynamic queue ends on light ones.
  parallel_for_dynamic(Hq * blocks, threads_for(work, num_threads), [&](size_t task) {
    const size_t b = blocks - 1 - task / Hq, h = task % Hq, g = h / group;
    const size_t t0 = b * kBlock, nq = std::min(T, t0 + kBlock) - t0;
    const size_t lds = round_up16(past + t0 + nq);
    AlignedScratch s(std::min<size_t>(nq, 4) * lds);
    kernel.attend(q.row(t0) + h * D, q.stride, nq, kt + g * D * ldk, ldk, v.data + g * D, v.stride,
                  past + t0 + 1, D, scale, s.data(), lds, out.row(t0) + h * D, out.stride);
  });
}

void causal_attention(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                      const AttentionShape& shape, float scale, MatrixView<float> out,
                      int num_threads, size_t window) {
  check_shape(shape);
  check_matrix(k, "k");
  check_matrix(v, "v");
  const size_t Hkv = shape.n_kv_heads, D = shape.head_dim;
  const size_t T = q.rows, S = k.rows;
  SF_CHECK_ARG(k.cols == Hkv * D, "k: expected n_kv_heads * head_dim = %zu columns, got %zu",
               Hkv * D, k.cols);
  check_same_shape(k, "k", v, "v");
  SF_CHECK_ARG(T > 0, "q: expected at least one query row, got 0");
  SF_CHECK_ARG(S >= T, "k: expected at least as many rows as q (%zu), got %zu", T, S);
  // Keys transposed per kv head, padded to whole 16-key chunks (see simd/attention.h).
  const size_t ldk = round_up16(S) + (window > 0 && window < S ? 16 : 0);
  std::vector<float> kt(Hkv * D * ldk);
  transpose_heads(k, S, Hkv, D, ldk, kt.data(), num_threads);
  attention_transposed_keys(q, kt.data(), ldk, v, S - T, shape, scale, out, num_threads, window);
}

void decode_attention(const float* q, ConstMatrixView<float> k_cache,
                      ConstMatrixView<float> v_cache, size_t length, const AttentionShape& shape,
                      float scale, float* out, int num_threads, size_t window) {
  check_shape(shape);
  check_matrix(k_cache, "k_cache");
  check_matrix(v_cache, "v_cache");
  const size_t Hq = shape.n_heads, Hkv = shape.n_kv_heads, D = shape.head_dim;
  SF_CHECK_ARG(q != nullptr, "q: expected a non-null (%zu,) vector", Hq * D);
  SF_CHECK_ARG(out != nullptr, "out: expected a non-null (%zu,) vector", Hq * D);
  SF_CHECK_ARG(k_cache.cols == Hkv * D,
               "k_cache: expected n_kv_heads * head_dim = %zu columns, got %zu", Hkv * D,
               k_cache.cols);
  check_same_shape(k_cache, "k_cache", v_cache, "v_cache");
  SF_CHECK_ARG(length >= 1 && length <= k_cache.rows,
               "length: expected 1 <= length <= cache capacity %zu, got %zu", k_cache.rows, length);
  const size_t ldk = round_up16(length) + (window > 0 && window < length ? 16 : 0);
  std::vector<float> kt(Hkv * D * ldk);
  transpose_heads(k_cache, length, Hkv, D, ldk, kt.data(), num_threads);
  attention_transposed_keys(ConstMatrixView<float>(q, 1, Hq * D), kt.data(), ldk, v_cache,
                            length - 1, shape, scale, MatrixView<float>(out, 1, Hq * D),
                            num_threads, window);
}

void store_transposed_keys(ConstMatrixView<float> k, size_t n_kv_heads, size_t head_dim,
                           size_t first, float* kt, size_t ldk) {
  check_matrix(k, "k");
  SF_CHECK_ARG(k.cols == n_kv_heads * head_dim,
               "k: expected n_kv_heads * head_dim = %zu columns, got %zu", n_kv_heads * head_dim,
               k.cols);
  SF_CHECK_ARG(first + k.rows <= ldk, "k: rows %zu .. %zu do not fit ldk=%zu", first,
               first + k.rows, ldk);
  for (size_t t = 0; t < k.rows; ++t) {
    const float* r = k.row(t);
    for (size_t c = 0; c < k.cols; ++c) kt[c * ldk + first + t] = r[c];
  }
}

// ---------------------------------------------------------------------------------------
// SwiGLU gate

void swiglu_gate(ConstMatrixView<float> g, ConstMatrixView<float> u, MatrixView<float> out,
                 int num_threads) {
  check_matrix(g, "g");
  check_matrix(u, "u");
  check_matrix(out, "out");
  check_same_shape(g, "g", u, "u");
  check_same_shape(g, "g", out, "out");
  parallel_for(g.rows, threads_for(g.size(), num_threads), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const float* gr = g.row(r);
      const float* ur = u.row(r);
      float* yr = out.row(r);
      // Eigen's packet exp: the scalar std::exp cost 11 ms for 512 x 1536.
      const auto n = static_cast<Eigen::Index>(g.cols);
      const ConstArrayMap ga(gr, n), ua(ur, n);
      ArrayMap(yr, n) = ga / (1.0f + (-ga).exp()) * ua;
    }
  });
}

void geglu_gate(ConstMatrixView<float> g, ConstMatrixView<float> u, MatrixView<float> out,
                int num_threads) {
  check_matrix(g, "g");
  check_matrix(u, "u");
  check_matrix(out, "out");
  check_same_shape(g, "g", u, "u");
  check_same_shape(g, "g", out, "out");
  // PyTorch's constants: kBeta = sqrt(2) * (2 / sqrt(pi)) * 0.5, kKappa = 0.044715.
  const float beta = 0.7978845608028654f;
  const float kappa = 0.044715f;
  parallel_for(g.rows, threads_for(g.size(), num_threads), [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const auto n = static_cast<Eigen::Index>(g.cols);
      const ConstArrayMap ga(g.row(r), n), ua(u.row(r), n);
      const Eigen::ArrayXf inner = beta * (ga + kappa * ga * ga * ga);
      ArrayMap(out.row(r), n) = 0.5f * ga * (1.0f + inner.tanh()) * ua;
    }
  });
}

}  // namespace models
}  // namespace sparseforge
