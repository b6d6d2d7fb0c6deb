#include "sparseforge/runtime/model.h"

#include <cmath>
#include <string>

#include "sparseforge/core/error.h"

namespace sparseforge {
namespace runtime {
namespace {

const char* const kLinearSuffixes[7] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj",
};

void check_vector(const float* p, const std::string& name, size_t n) {
  SF_CHECK_ARG(p != nullptr, "%s: expected a (%zu,) float32 vector, got none", name.c_str(), n);
}

void check_weight(const Weight& w, const std::string& name, size_t rows, size_t cols) {
  switch (w.format) {
    case WeightFormat::kDense:
      SF_CHECK_ARG(w.dense.data != nullptr, "%s: null data", name.c_str());
      SF_CHECK_ARG(w.dense.stride >= w.dense.cols || w.dense.rows <= 1,
                   "%s: row stride %zu is less than cols=%zu", name.c_str(), w.dense.stride,
                   w.dense.cols);
      break;
    case WeightFormat::kNM:
      SF_CHECK_ARG(w.nm != nullptr, "%s: null N:M tensor", name.c_str());
      break;
    case WeightFormat::kBitmap:
      SF_CHECK_ARG(w.bitmap != nullptr, "%s: null bitmap tensor", name.c_str());
      break;
    case WeightFormat::kNone:
    default:
      SF_THROW(InvalidArgument, "%s: missing", name.c_str());
  }
  SF_CHECK_ARG(w.rows() == rows && w.cols() == cols,
               "%s: expected shape (%zu, %zu), got (%zu, %zu)", name.c_str(), rows, cols, w.rows(),
               w.cols());
}

void check_linear(const Linear& l, const std::string& name, size_t out, size_t in) {
  SF_CHECK_ARG(!l.w.empty() || !l.wt.empty(), "%s: missing", (name + ".weight").c_str());
  if (!l.w.empty()) check_weight(l.w, name + ".weight", out, in);
  if (!l.wt.empty()) {
    SF_CHECK_ARG(l.wt.format == WeightFormat::kDense || l.wt.format == WeightFormat::kBitmap,
                 "%s: the transposed weight must be dense or bitmap, got %s",
                 (name + ".weight_t").c_str(), weight_format_name(l.wt.format));
    check_weight(l.wt, name + ".weight_t", in, out);
    SF_CHECK_ARG(l.teal, "%s: a transposed weight without a TEAL threshold is never read",
                 (name + ".weight_t").c_str());
  }
  if (l.teal) {
    SF_CHECK_ARG(!std::isnan(l.threshold) && l.threshold >= 0.0f,
                 "%s: expected a TEAL threshold >= 0, got %g", name.c_str(),
                 static_cast<double>(l.threshold));
  }
}

}  // namespace

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::kDense:
      return "dense";
    case WeightFormat::kNM:
      return "nm";
    case WeightFormat::kBitmap:
      return "bitmap";
    case WeightFormat::kNone:
    default:
      return "none";
  }
}

Weight Weight::of(const AnyConstMatrix& m) {
  Weight w;
  w.format = WeightFormat::kDense;
  w.dense = m;
  return w;
}

Weight Weight::of(const format::NMMatrix& m) {
  Weight w;
  w.format = WeightFormat::kNM;
  w.nm = &m;
  return w;
}

Weight Weight::of(const format::BitmapMatrix& m) {
  Weight w;
  w.format = WeightFormat::kBitmap;
  w.bitmap = &m;
  return w;
}

size_t Weight::rows() const {
  switch (format) {
    case WeightFormat::kDense:
      return dense.rows;
    case WeightFormat::kNM:
      return nm->rows;
    case WeightFormat::kBitmap:
      return bitmap->rows;
    case WeightFormat::kNone:
    default:
      return 0;
  }
}

size_t Weight::cols() const {
  switch (format) {
    case WeightFormat::kDense:
      return dense.cols;
    case WeightFormat::kNM:
      return nm->cols;
    case WeightFormat::kBitmap:
      return bitmap->cols;
    case WeightFormat::kNone:
    default:
      return 0;
  }
}

size_t Weight::nbytes() const {
  switch (format) {
    case WeightFormat::kDense:
      return dense.rows * dense.cols * dtype_size(dense.dtype);
    case WeightFormat::kNM:
      return nm->nbytes();
    case WeightFormat::kBitmap:
      return format::nbytes(*bitmap);
    case WeightFormat::kNone:
    default:
      return 0;
  }
}

void ModelConfig::validate() const {
  SF_CHECK_ARG(dim > 0, "dim: expected > 0, got %zu", dim);
  SF_CHECK_ARG(hidden_dim > 0, "hidden_dim: expected > 0, got %zu", hidden_dim);
  SF_CHECK_ARG(n_layers > 0, "n_layers: expected > 0, got %zu", n_layers);
  SF_CHECK_ARG(n_heads > 0, "n_heads: expected > 0, got %zu", n_heads);
  SF_CHECK_ARG(n_kv_heads > 0 && n_heads % n_kv_heads == 0,
               "n_kv_heads: expected a divisor of n_heads=%zu, got %zu", n_heads, n_kv_heads);
  SF_CHECK_ARG(head_dim > 0 && head_dim % 2 == 0, "head_dim: expected an even number > 0, got %zu",
               head_dim);
  SF_CHECK_ARG(vocab_size > 0 && vocab_size < (size_t{1} << 31),
               "vocab_size: expected 1 .. 2^31 - 1, got %zu", vocab_size);
  SF_CHECK_ARG(max_seq_len > 0, "max_seq_len: expected > 0, got %zu", max_seq_len);
  SF_CHECK_ARG(std::isfinite(norm_eps) && norm_eps >= 0.0f,
               "norm_eps: expected a finite number >= 0, got %g", static_cast<double>(norm_eps));
  SF_CHECK_ARG(std::isfinite(rope_theta) && rope_theta > 0.0,
               "rope_theta: expected a finite number > 0, got %g", rope_theta);
  SF_CHECK_ARG(std::isfinite(embed_scale) && embed_scale > 0.0f,
               "embed_scale: expected a finite number > 0, got %g",
               static_cast<double>(embed_scale));
  SF_CHECK_ARG(std::isfinite(query_scale) && query_scale >= 0.0f,
               "query_scale: expected a finite number >= 0, got %g",
               static_cast<double>(query_scale));
  SF_CHECK_ARG(std::isfinite(final_softcap) && final_softcap >= 0.0f,
               "final_softcap: expected a finite number >= 0, got %g",
               static_cast<double>(final_softcap));
  SF_CHECK_ARG(layer_window.empty() || layer_window.size() == n_layers,
               "layer_window: expected n_layers=%zu entries or none, got %zu", n_layers,
               layer_window.size());
  SF_CHECK_ARG(layer_rope_theta.empty() || layer_rope_theta.size() == n_layers,
               "layer_rope_theta: expected n_layers=%zu entries or none, got %zu", n_layers,
               layer_rope_theta.size());
  for (double t : layer_rope_theta) {
    SF_CHECK_ARG(std::isfinite(t) && t > 0.0,
                 "layer_rope_theta: expected finite numbers > 0, got %g", t);
  }
}

bool ModelConfig::windowed() const {
  for (size_t w : layer_window) {
    if (w > 0) return true;
  }
  return false;
}

float ModelConfig::attention_scale() const {
  return query_scale > 0.0f ? query_scale
                            : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
}

std::string linear_name(size_t block, int j) {
  SF_CHECK(j >= 0 && j < 7);
  return "model.layers." + std::to_string(block) + "." + kLinearSuffixes[j];
}

void Model::validate() const {
  config.validate();
  const ModelConfig& c = config;
  SF_CHECK_ARG(embed.data != nullptr, "model.embed_tokens.weight: missing");
  SF_CHECK_ARG(embed.rows == c.vocab_size && embed.cols == c.dim,
               "model.embed_tokens.weight: expected shape (%zu, %zu), got (%zu, %zu)", c.vocab_size,
               c.dim, embed.rows, embed.cols);
  SF_CHECK_ARG(embed.stride >= embed.cols, "model.embed_tokens.weight: row stride %zu < cols %zu",
               embed.stride, embed.cols);
  SF_CHECK_ARG(blocks.size() == c.n_layers, "blocks: expected n_layers=%zu blocks, got %zu",
               c.n_layers, blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Block& b = blocks[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    check_vector(b.attn_norm, p + "input_layernorm.weight", c.dim);
    check_vector(b.mlp_norm, p + "post_attention_layernorm.weight", c.dim);
    const Linear* ls[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
    const size_t outs[7] = {c.q_dim(),    c.kv_dim(),   c.kv_dim(), c.dim,
                            c.hidden_dim, c.hidden_dim, c.dim};
    const size_t ins[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.hidden_dim};
    for (int j = 0; j < 7; ++j) check_linear(*ls[j], linear_name(i, j), outs[j], ins[j]);
    for (int j = 3; j < 7; ++j) {
      SF_CHECK_ARG(ls[j]->bias == nullptr, "%s.bias: only q, k and v take a bias",
                   linear_name(i, j).c_str());
    }
    if (c.qk_norm) {
      check_vector(b.q_norm, p + "self_attn.q_norm.weight", c.head_dim);
      check_vector(b.k_norm, p + "self_attn.k_norm.weight", c.head_dim);
    }
    if (c.sandwich_norms) {
      check_vector(b.attn_post_norm, p + "post_attention_layernorm.weight", c.dim);
      check_vector(b.mlp_post_norm, p + "post_feedforward_layernorm.weight", c.dim);
    }
  }
  check_vector(final_norm, "model.norm.weight", c.dim);
  if (c.tied_embeddings) {
    SF_CHECK_ARG(head.w.empty() && head.wt.empty(),
                 "lm_head.weight: the config ties the head to the embeddings, got a separate head");
  } else {
    check_linear(head, "lm_head", c.vocab_size, c.dim);
  }
  SF_CHECK_ARG(head.bias == nullptr, "lm_head.bias: not supported");
  SF_CHECK_ARG(!head.teal, "lm_head: the output head takes no TEAL threshold");
}

size_t Model::weight_bytes() const {
  size_t bytes = 0;
  const auto lin = [](const Linear& l) {
    // A TEAL decode step reads Wt where it is set.
    return l.teal && !l.wt.empty() ? l.wt.nbytes() : l.w.nbytes();
  };
  for (const Block& b : blocks) {
    for (const Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) bytes += lin(*l);
    bytes += (config.sandwich_norms ? 4 : 2) * config.dim * sizeof(float);
    if (config.qk_norm) bytes += 2 * config.head_dim * sizeof(float);
  }
  bytes += config.dim * sizeof(float);
  bytes += config.tied_embeddings ? embed.rows * embed.cols * dtype_size(embed.dtype) : lin(head);
  return bytes;
}

}  // namespace runtime
}  // namespace sparseforge
