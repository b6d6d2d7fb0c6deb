// The per-token operations of a Llama-family forward: RMSNorm, rotary position embedding
// (RoPE), causal grouped-query attention (a full sequence, a chunk after a cached prefix, or
// one decoded token over a cache) and the SwiGLU gate. The linear layers are not here: the
// Python model runs them through BLAS or the sparse kernels.
//
// Layouts (row-major, float32):
//   activations  x (T, dim): one row per token.
//   q            (T, Hq * D): token t's head h occupies q[t, h*D : (h+1)*D] (the
//                q_proj output as is; numpy sees it as (T, Hq, D) without a copy).
//   k, v         (S, Hkv * D), the same per kv head. A KV cache is this layout with
//                S = capacity rows, of which the first `length` are filled: appending a
//                token's k_proj output is one contiguous row write.
// Grouped-query attention: query head h reads kv head h / (Hq / Hkv) (Hq % Hkv == 0), so
// Hkv = Hq is multi-head and Hkv = 1 multi-query attention.
//
// Determinism: every output element is computed by one task whose arithmetic does not
// depend on the partition, so results are bitwise identical for any num_threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "sparseforge/core/view.h"

namespace sparseforge {
namespace models {

// out[t, :] = weight * x[t, :] / sqrt(mean(x[t, :]^2) + eps). x, out: (T, dim); weight:
// (dim,). The mean of squares is accumulated in double (so T and dim sizes do not change
// its rounding much); the scale is applied in float. out may alias x exactly (in place).
// eps must be finite and >= 0. Cost: 3 T dim flops.
void rms_norm(ConstMatrixView<float> x, const float* weight, float eps, MatrixView<float> out,
              int num_threads);

// Rotary position embedding, applied in place to x (T, heads * head_dim): within each head,
// pairs (a, b) of dimensions are rotated by the angle pos[t] * theta^(-2i / head_dim), i =
// 0 .. head_dim/2 - 1:
//   a' = a cos - b sin,  b' = a sin + b cos.
// The pairing is the style:
//   kInterleaved  (x[2i], x[2i+1])        llama2.c run.c, GGUF-stored Llama Q/K, Meta's
//                                         complex-number formulation
//   kHalf         (x[i], x[i + head_dim/2]) Hugging Face `rotate_half`
// The two are the same rotation up to a permutation of each head's rows of W_q / W_k.
// Angles and their cos/sin are computed in double, then rounded to float. head_dim must be
// even and > 0, theta > 0 and finite, positions >= 0. Cost: 6 T heads head_dim flops +
// T head_dim/2 cos/sin.
enum class RopeStyle { kInterleaved, kHalf };
RopeStyle parse_rope_style(const std::string& name);  // "interleaved" | "half"
const char* rope_style_name(RopeStyle style);

void rope(MatrixView<float> x, size_t heads, size_t head_dim, const int64_t* positions,
          double theta, RopeStyle style, int num_threads);

// The attention problem's sizes.
struct AttentionShape {
  size_t n_heads = 0;     // Hq
  size_t n_kv_heads = 0;  // Hkv, divides Hq
  size_t head_dim = 0;    // D
};

// Causal grouped-query attention for T queries that follow S - T earlier tokens:
// q (T, Hq*D), k and v (S, Hkv*D) with S >= T, out (T, Hq*D). Query t sits at position
// S - T + t and attends keys 0 .. S - T + t (inclusive):
//   out[t, h] = sum_j softmax_j(scale * q[t, h] . k[j, g]) v[j, g],  g = h / (Hq / Hkv).
// S = T is the full-sequence causal forward; T = 1 with S = cache length is decoding.
// The softmax subtracts the row maximum (stable for any logit size). scale > 0 and finite
// (1/sqrt(D) in Llama). The kernel is dispatched per SIMD level (src/models/simd/, Eigen
// compiled per level: scalar/SSE2, AVX2+FMA, AVX-512) and runs 4 consecutive queries of a
// head together so each key/value row is loaded once for them. Arithmetic: each score sums
// q[d] k[j, d] over d in order, each output sums p_j v[j, d] over j in order, the same
// operations for a query whichever block it runs in; exp and the softmax normaliser are
// Eigen's packet exp and sum, in an order that depends only on the number of keys. Both
// paths run this kernel, so decode_attention equals causal_attention's last row bitwise
// at a given SIMD level (levels differ in the last bits). Threads split (head, block of 32
// queries) tasks. Scratch: Hkv * D * round_up(S, 16) floats (k transposed per kv head so
// the score loop reads contiguous keys; v is read in place) + 4 * round_up(S, 16) floats
// per task.
// Cost: 2 Hq D (T S - T^2 / 2) multiply-adds and Hq (T S - T^2 / 2) exp.
//
// Sliding window (Mistral, Gemma 3's local layers): window > 0 restricts query t to the last
// `window` keys up to its position, S - T + t - window + 1 .. S - T + t (Hugging Face's
// kv_idx > q_idx - window); 0 attends them all. Windowed queries run one at a time through
// the same kernel on the shifted keys, so decode equals prefill bitwise there too.
void causal_attention(ConstMatrixView<float> q, ConstMatrixView<float> k, ConstMatrixView<float> v,
                      const AttentionShape& shape, float scale, MatrixView<float> out,
                      int num_threads, size_t window = 0);

// One decoded query over a contiguous cache: q (Hq*D,), k_cache and v_cache (capacity,
// Hkv*D) of which the first `length` rows (1 <= length <= capacity) are attended, out
// (Hq*D,). Equals causal_attention with T = 1 and S = length bit for bit (the same kernel);
// threads split the heads. Scratch: Hkv * D * round_up(length, 16) floats (k transposed).
// Cost: 2 Hq D length multiply-adds.
// window: as causal_attention's (0: none).
void decode_attention(const float* q, ConstMatrixView<float> k_cache,
                      ConstMatrixView<float> v_cache, size_t length, const AttentionShape& shape,
                      float scale, float* out, int num_threads, size_t window = 0);

// Attention over keys stored transposed per kv head: the layout a decode cache keeps so
// that no step copies or transposes it (sparseforge::runtime::Session's cache). Key j of
// kv head g, dimension d, lives at kt[(g * D + d) * ldk + j]; ldk is a multiple of 16 and
// >= round_up(past + T, 16) (scores run in whole 16-key chunks: entries past the attended
// keys are read and ignored). v (>= past + T rows, Hkv*D) holds the values in place. The T
// queries q (T, Hq*D) sit at positions past .. past + T - 1 and attend causally; out (T,
// Hq*D). causal_attention and decode_attention transpose their keys into scratch and call
// this, so all three give bitwise the same outputs for the same keys.
// Cost: as causal_attention with S = past + T, without the transposed copy.
// window: as causal_attention's; when it binds (0 < window < past + T) the shifted score
// chunks read up to 15 keys further, so ldk must then be >= past + T - window +
// round_up(window, 16) (round_up(past + T, 16) + 16 always is).
void attention_transposed_keys(ConstMatrixView<float> q, const float* kt, size_t ldk,
                               ConstMatrixView<float> v, size_t past, const AttentionShape& shape,
                               float scale, MatrixView<float> out, int num_threads,
                               size_t window = 0);

// Writes the rows of k (T, Hkv*D) into the transposed layout above as keys first ..
// first + T - 1 (first + T <= ldk). Cost: T Hkv D strided stores.
void store_transposed_keys(ConstMatrixView<float> k, size_t n_kv_heads, size_t head_dim,
                           size_t first, float* kt, size_t ldk);

// The SwiGLU gate, elementwise: out = silu(g) * u, silu(g) = g / (1 + exp(-g)). g, u, out:
// (T, hidden); out may alias g or u exactly.
void swiglu_gate(ConstMatrixView<float> g, ConstMatrixView<float> u, MatrixView<float> out,
                 int num_threads);

// The GeGLU gate (Gemma), elementwise: out = gelu_tanh(g) * u with PyTorch's
// gelu(approximate="tanh"): 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))). Shapes and
// aliasing as swiglu_gate.
void geglu_gate(ConstMatrixView<float> g, ConstMatrixView<float> u, MatrixView<float> out,
                int num_threads);

}  // namespace models
}  // namespace sparseforge
