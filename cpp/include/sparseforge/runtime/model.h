// The model the runtime runs: a Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2,
// llama2.c) whose every linear is held in the format it is stored in.
//
// Non-owning: a Model is a set of views into weights that someone else keeps alive (the
// Python LlamaModel's numpy arrays and compressed tensors, or a SavedModel read from a
// file, see runtime/container.h). Building one copies no weight.
//
// Per block i (pre-norm residual, Hugging Face names):
//   x = rms_norm(h, attn_norm);  q, k, v = Wq x + bq, Wk x + bk, Wv x + bv
//   q, k = rope(q), rope(k);     h += Wo attention(q, k, v)
//   x = rms_norm(h, mlp_norm);   h += Wdown (silu(Wgate x) * (Wup x))
// then logits = head (rms_norm(h, final_norm)), head = embed when tied.
//
// TEAL (activation sparsity): a linear with a threshold t multiplies x * (|x| > t) instead
// of x (sparseforge.activation's rule; at one token the kernels' rule, a NaN is active). A
// linear may then carry its weight transposed, Wt (in, out), dense or bitmap, which the
// decode step reads with column skip (kernels/activation.h, kernels/unstructured.h); its W
// serves prefill, and may be left empty when Wt is dense (prefill then runs the batched
// column skip on Wt) or bitmap (prefill runs one column skip per token).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "sparseforge/core/view.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/models/ops.h"

namespace sparseforge {
namespace runtime {

// Sizes and conventions (a struct that grows with the families: fields are added with
// defaults that keep the plain Llama meaning).
struct ModelConfig {
  size_t dim = 0;         // residual width
  size_t hidden_dim = 0;  // SwiGLU intermediate size
  size_t n_layers = 0;
  size_t n_heads = 0;     // Hq
  size_t n_kv_heads = 0;  // Hkv, divides Hq (grouped-query attention)
  size_t head_dim = 0;    // D, even (RoPE pairs)
  size_t vocab_size = 0;
  size_t max_seq_len = 0;  // positions the model was trained for
  float norm_eps = 1e-5f;
  double rope_theta = 10000.0;
  models::RopeStyle rope_style = models::RopeStyle::kInterleaved;
  bool tied_embeddings = false;  // head = embed
  std::string arch = "llama";

  // The model family (sparseforge.models.ModelConfig's fields; defaults are Llama's).
  // Norm weights with Gemma's (1 + w) convention are handed to the Model with the offset
  // already added, so every norm here is weight * x / rms.
  enum class Activation { kSiLU, kGeluTanh };  // SwiGLU or GeGLU gate
  Activation activation = Activation::kSiLU;
  float embed_scale = 1.0f;              // embeddings times this before block 0 (Gemma: sqrt(dim))
  float query_scale = 0.0f;              // attention scores scale; 0: 1 / sqrt(head_dim)
  float final_softcap = 0.0f;            // logits -> c tanh(logits / c); 0: none
  bool qk_norm = false;                  // RMSNorm per query/key head before RoPE (Block::q_norm)
  bool sandwich_norms = false;           // post-attention and post-MLP norms (Block::*_post_norm)
  std::vector<size_t> layer_window;      // per layer sliding window (0: full); empty: none
  std::vector<double> layer_rope_theta;  // per layer RoPE base; empty: rope_theta

  size_t window(size_t layer) const { return layer_window.empty() ? 0 : layer_window[layer]; }
  double theta(size_t layer) const {
    return layer_rope_theta.empty() ? rope_theta : layer_rope_theta[layer];
  }
  bool windowed() const;  // any layer with a sliding window
  float attention_scale() const;

  size_t q_dim() const { return n_heads * head_dim; }
  size_t kv_dim() const { return n_kv_heads * head_dim; }
  // Throws InvalidArgument naming the first bad field.
  void validate() const;
};

// One weight in the format it is stored in (a non-owning reference).
enum class WeightFormat { kNone, kDense, kNM, kBitmap };
const char* weight_format_name(WeightFormat f);  // "none", "dense", "nm", "bitmap"

struct Weight {
  WeightFormat format = WeightFormat::kNone;
  AnyConstMatrix dense;                          // kDense: fp32/fp16/bf16, unit column stride
  const format::NMMatrix* nm = nullptr;          // kNM
  const format::BitmapMatrix* bitmap = nullptr;  // kBitmap

  static Weight of(const AnyConstMatrix& m);
  static Weight of(const format::NMMatrix& m);
  static Weight of(const format::BitmapMatrix& m);
  bool empty() const { return format == WeightFormat::kNone; }
  size_t rows() const;
  size_t cols() const;
  size_t nbytes() const;  // bytes a product reads
};

// A linear layer y = W x (+ bias), W (out, in).
struct Linear {
  Weight w;                     // (out, in); may be empty only when wt is set
  Weight wt;                    // (in, out) for column skip (dense or bitmap), or empty
  const float* bias = nullptr;  // (out,) float32, or null
  bool teal = false;            // threshold the input: x * (|x| > threshold)
  float threshold = 0.0f;       // >= 0, finite or +inf

  size_t out_features() const { return w.empty() ? wt.cols() : w.rows(); }
  size_t in_features() const { return w.empty() ? wt.rows() : w.cols(); }
};

struct Block {
  const float* attn_norm = nullptr;  // (dim,) float32
  Linear q, k, v, o;
  const float* mlp_norm = nullptr;  // (dim,) float32
  Linear gate, up, down;
  // Family norms, set only when the config asks for them.
  const float* q_norm = nullptr;          // (head_dim,) qk_norm
  const float* k_norm = nullptr;          // (head_dim,) qk_norm
  const float* attn_post_norm = nullptr;  // (dim,) sandwich_norms: on o_proj's output
  const float* mlp_post_norm = nullptr;   // (dim,) sandwich_norms: on down_proj's output
};

struct Model {
  ModelConfig config;
  AnyConstMatrix embed;  // (vocab_size, dim), any float dtype
  std::vector<Block> blocks;
  const float* final_norm = nullptr;  // (dim,) float32
  Linear head;                        // (vocab_size, dim); w empty when tied (embed serves)

  // Checks the config, every pointer, shape, format and threshold against it; throws
  // InvalidArgument naming the tensor ("model.layers.3.self_attn.q_proj.weight: ...").
  void validate() const;
  // Bytes of every weight a decode step reads (linears in their formats, the head, the
  // norms; the embedding row read per token is not counted; a tied head counts once).
  size_t weight_bytes() const;
};

// Hugging Face name of block i's linear j (0..6: q, k, v, o, gate, up, down), for messages.
std::string linear_name(size_t block, int j);

}  // namespace runtime
}  // namespace sparseforge
