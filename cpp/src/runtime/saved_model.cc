#include "sparseforge/runtime/saved_model.h"

#include <cstring>
#include <string>
#include <vector>

#include "format/json.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"

namespace sparseforge {
namespace runtime {
namespace {

bool float_dtype(const std::string& st, DType* out) {
  if (st == "F32") {
    *out = DType::kF32;
  } else if (st == "F16") {
    *out = DType::kF16;
  } else if (st == "BF16") {
    *out = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

DType dtype_from_name(const std::string& path, const std::string& name) {
  if (name == "float32") return DType::kF32;
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  SF_THROW(InvalidArgument, "%s: unsupported dtype '%s'", path.c_str(), name.c_str());
}

const json::Value& field(const json::Value& obj, const char* key, const std::string& path) {
  const json::Value* v = obj.find(key);
  SF_CHECK_ARG(v != nullptr, "%s: the stored model config has no '%s'", path.c_str(), key);
  return *v;
}

size_t size_field(const json::Value& obj, const char* key, const std::string& path) {
  return static_cast<size_t>(json::to_u64(field(obj, key, path), key));
}

ModelConfig parse_config(const std::string& text, const std::string& path) {
  const json::Value c = json::parse(text, "sfmodel.config");
  SF_CHECK_ARG(c.is(json::Value::Type::kObject), "%s: sfmodel.config is not an object",
               path.c_str());
  ModelConfig m;
  m.dim = size_field(c, "dim", path);
  m.hidden_dim = size_field(c, "hidden_dim", path);
  m.n_layers = size_field(c, "n_layers", path);
  m.n_heads = size_field(c, "n_heads", path);
  m.n_kv_heads = size_field(c, "n_kv_heads", path);
  m.vocab_size = size_field(c, "vocab_size", path);
  m.max_seq_len = size_field(c, "max_seq_len", path);
  m.head_dim = size_field(c, "head_dim", path);
  m.norm_eps = static_cast<float>(json::to_double(field(c, "norm_eps", path), "norm_eps"));
  m.rope_theta = json::to_double(field(c, "rope_theta", path), "rope_theta");
  m.rope_style = models::parse_rope_style(field(c, "rope_style", path).text);
  const json::Value& tied = field(c, "tied_embeddings", path);
  SF_CHECK_ARG(tied.is(json::Value::Type::kBool), "%s: tied_embeddings is not a bool",
               path.c_str());
  m.tied_embeddings = tied.boolean;
  m.arch = field(c, "arch", path).text;
  const json::Value* sliced = c.find("residual_dims");
  SF_CHECK_ARG(sliced == nullptr || sliced->items.empty(),
               "%s: a SliceGPT-sliced model (residual_dims) does not run on the runtime",
               path.c_str());
  // The family (optional keys: files of older versions are Llama).
  const auto number = [&](const char* key, double dflt) {
    const json::Value* v = c.find(key);
    return v == nullptr || v->is(json::Value::Type::kNull) ? dflt : json::to_double(*v, key);
  };
  const auto flag = [&](const char* key) {
    const json::Value* v = c.find(key);
    if (v == nullptr || v->is(json::Value::Type::kNull)) return false;
    SF_CHECK_ARG(v->is(json::Value::Type::kBool), "%s: %s is not a bool", path.c_str(), key);
    return v->boolean;
  };
  m.qk_norm = flag("qk_norm");
  m.sandwich_norms = flag("sandwich_norms");
  m.embed_scale = static_cast<float>(number("embed_scale", 1.0));
  m.query_scale = static_cast<float>(number("query_scale", 0.0));
  m.final_softcap = static_cast<float>(number("final_softcap", 0.0));
  SF_CHECK_ARG(number("attn_softcap", 0.0) == 0.0,
               "%s: attention logit soft-capping (attn_softcap) does not run on the runtime",
               path.c_str());
  const json::Value* act = c.find("activation");
  if (act != nullptr && act->is(json::Value::Type::kString) && act->text == "gelu_tanh") {
    m.activation = ModelConfig::Activation::kGeluTanh;
  } else {
    SF_CHECK_ARG(act == nullptr || (act->is(json::Value::Type::kString) && act->text == "silu"),
                 "%s: activation '%s' is not supported (expected 'silu' or 'gelu_tanh')",
                 path.c_str(), act->text.c_str());
  }
  const size_t window = static_cast<size_t>(number("sliding_window", 0.0));
  const double theta_local = number("rope_theta_local", 0.0);
  const json::Value* types = c.find("layer_types");
  if (window > 0 || theta_local > 0.0) {
    const bool per_layer = types != nullptr && !types->items.empty();
    SF_CHECK_ARG(!per_layer || types->items.size() == m.n_layers,
                 "%s: layer_types has %zu entries for %zu layers", path.c_str(),
                 per_layer ? types->items.size() : 0, m.n_layers);
    for (size_t i = 0; i < m.n_layers; ++i) {
      const bool sliding =
          window > 0 && (!per_layer || types->items[i].text == "sliding_attention");
      m.layer_window.push_back(sliding ? window : 0);
      m.layer_rope_theta.push_back(sliding && theta_local > 0.0 ? theta_local : m.rope_theta);
    }
  }
  m.validate();
  return m;
}

float norm_offset(const std::string& text) {
  const json::Value c = json::parse(text, "sfmodel.config");
  const json::Value* v = c.find("norm_offset");
  return v == nullptr || v->is(json::Value::Type::kNull)
             ? 0.0f
             : static_cast<float>(json::to_double(*v, "norm_offset"));
}

std::vector<size_t> shape2(size_t r, size_t c) { return {r, c}; }

}  // namespace

Weight SavedModel::weight(const std::string& name, size_t rows, size_t cols, int num_threads) {
  const std::string& path = file_->path();
  const auto& comp = file_->compressed();
  const auto it = comp.find(name);
  if (it == comp.end()) {
    SF_CHECK_ARG(file_->has_array(name), "%s: weight '%s' is missing", path.c_str(), name.c_str());
    const format::StoredArray& a = file_->array(name);
    DType dt;
    SF_CHECK_ARG(float_dtype(a.dtype, &dt), "%s: weight '%s' has dtype %s, expected F32/F16/BF16",
                 path.c_str(), name.c_str(), a.dtype.c_str());
    SF_CHECK_ARG(
        a.shape == shape2(rows, cols), "%s: weight '%s' has shape %s, expected (%zu, %zu)",
        path.c_str(), name.c_str(),
        a.shape.size() == 2
            ? ("(" + std::to_string(a.shape[0]) + ", " + std::to_string(a.shape[1]) + ")").c_str()
            : "not 2-D",
        rows, cols);
    return Weight::of(AnyConstMatrix(dt, a.data, rows, cols, cols));
  }
  const format::CompressedEntry& e = it->second;
  const auto meta = [&](const char* key) -> const std::string& {
    const auto m = e.meta.find(key);
    SF_CHECK_ARG(m != e.meta.end(), "%s: tensor '%s' has no '%s' metadata", path.c_str(),
                 name.c_str(), key);
    return m->second;
  };
  const std::string shape = std::to_string(rows) + "," + std::to_string(cols);
  SF_CHECK_ARG(meta("shape") == shape, "%s: weight '%s' has shape (%s), expected (%s)",
               path.c_str(), name.c_str(), meta("shape").c_str(), shape.c_str());
  const DType dt = dtype_from_name(path, meta("dtype"));
  const format::StoredArray& values = file_->component(name, "values");
  DType vdt;
  SF_CHECK_ARG(float_dtype(values.dtype, &vdt) && vdt == dt,
               "%s: tensor '%s': values dtype %s does not match its metadata", path.c_str(),
               name.c_str(), values.dtype.c_str());
  if (e.kind == "nm") {
    const int n = std::stoi(meta("n")), m = std::stoi(meta("m"));
    const format::StoredArray& codes = file_->component(name, "codes");
    SF_CHECK_ARG(values.shape.size() == 2 && codes.shape.size() == 2 && codes.dtype == "U8" &&
                     values.shape[0] == rows && codes.shape[0] == rows,
                 "%s: tensor '%s': bad N:M components", path.c_str(), name.c_str());
    nm_.push_back(format::nm_from_canonical(
        AnyConstMatrix(dt, values.data, rows, values.shape[1], values.shape[1]),
        ConstMatrixView<uint8_t>(codes.data, rows, codes.shape[1]), cols, n, m, num_threads));
    return Weight::of(nm_.back());
  }
  if (e.kind == "bitmap") {
    const format::StoredArray& bits = file_->component(name, "bitmap");
    const format::StoredArray& offsets = file_->component(name, "row_offsets");
    SF_CHECK_ARG(bits.dtype == "U8" && offsets.dtype == "I64" && offsets.numel() == rows + 1,
                 "%s: tensor '%s': bad bitmap components", path.c_str(), name.c_str());
    std::vector<uint8_t> bitmap(bits.data, bits.data + bits.nbytes);
    std::vector<int64_t> row_offsets(rows + 1);
    std::memcpy(row_offsets.data(), offsets.data, offsets.nbytes);
    bitmap_.push_back(format::bitmap_from_components(rows, cols, dt, std::move(bitmap), values.data,
                                                     values.numel(), std::move(row_offsets)));
    return Weight::of(bitmap_.back());
  }
  SF_THROW(InvalidArgument,
           "%s: weight '%s' is stored as '%s' (the runtime reads dense, nm, bitmap)", path.c_str(),
           name.c_str(), e.kind.c_str());
}

const float* SavedModel::vector(const std::string& name, size_t n, bool optional, float offset) {
  const std::string& path = file_->path();
  if (!file_->has_array(name)) {
    SF_CHECK_ARG(optional, "%s: weight '%s' is missing", path.c_str(), name.c_str());
    return nullptr;
  }
  const format::StoredArray& a = file_->array(name);
  DType dt;
  SF_CHECK_ARG(float_dtype(a.dtype, &dt) && a.shape.size() == 1 && a.shape[0] == n,
               "%s: weight '%s': expected a (%zu,) float vector, got dtype %s of %zu elements",
               path.c_str(), name.c_str(), n, a.dtype.c_str(), a.numel());
  if (dt == DType::kF32 && offset == 0.0f) return reinterpret_cast<const float*>(a.data);
  widened_.emplace_back(n);
  float* out = widened_.back().data();
  visit_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    for (size_t i = 0; i < n; ++i) {
      T v;
      std::memcpy(&v, a.data + i * sizeof(T), sizeof(T));
      out[i] = to_f32(v);
    }
  });
  if (offset != 0.0f) {
    for (size_t i = 0; i < n; ++i) out[i] = offset + out[i];  // Gemma's (1 + w)
  }
  return out;
}

std::unique_ptr<SavedModel> SavedModel::load(const std::string& path, bool verify,
                                             int num_threads) {
  std::unique_ptr<SavedModel> s(new SavedModel());
  s->file_ = format::ContainerFile::open(path, verify);
  const auto& meta = s->file_->metadata();
  const auto cfg = meta.find("sfmodel.config");
  SF_CHECK_ARG(cfg != meta.end(),
               "%s: not a sparseforge model file (no 'sfmodel.config' in its metadata; expected a "
               "file written by sparseforge.models.save)",
               path.c_str());
  Model& m = s->model_;
  m.config = parse_config(cfg->second, path);
  const ModelConfig& c = m.config;
  const float off = norm_offset(cfg->second);
  const std::string embed = "model.embed_tokens.weight";
  const Weight e = s->weight(embed, c.vocab_size, c.dim, num_threads);
  SF_CHECK_ARG(e.format == WeightFormat::kDense, "%s: %s must be stored dense", path.c_str(),
               embed.c_str());
  m.embed = e.dense;
  m.blocks.resize(c.n_layers);
  const char* const suffixes[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                   "mlp.down_proj"};
  const size_t outs[7] = {c.q_dim(),    c.kv_dim(),   c.kv_dim(), c.dim,
                          c.hidden_dim, c.hidden_dim, c.dim};
  const size_t ins[7] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.hidden_dim};
  for (size_t i = 0; i < c.n_layers; ++i) {
    Block& b = m.blocks[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    b.attn_norm = s->vector(p + "input_layernorm.weight", c.dim, false, off);
    if (c.sandwich_norms) {
      b.attn_post_norm = s->vector(p + "post_attention_layernorm.weight", c.dim, false, off);
      b.mlp_norm = s->vector(p + "pre_feedforward_layernorm.weight", c.dim, false, off);
      b.mlp_post_norm = s->vector(p + "post_feedforward_layernorm.weight", c.dim, false, off);
    } else {
      b.mlp_norm = s->vector(p + "post_attention_layernorm.weight", c.dim, false, off);
    }
    if (c.qk_norm) {
      b.q_norm = s->vector(p + "self_attn.q_norm.weight", c.head_dim, false, off);
      b.k_norm = s->vector(p + "self_attn.k_norm.weight", c.head_dim, false, off);
    }
    Linear* ls[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
    for (int j = 0; j < 7; ++j) {
      const std::string base = p + suffixes[j];
      ls[j]->w = s->weight(base + ".weight", outs[j], ins[j], num_threads);
      ls[j]->bias = s->vector(base + ".bias", outs[j], true);
    }
  }
  m.final_norm = s->vector("model.norm.weight", c.dim, false, off);
  if (!c.tied_embeddings) m.head.w = s->weight("lm_head.weight", c.vocab_size, c.dim, num_threads);
  m.validate();

  const auto tok = meta.find("sfmodel.tokenizer");
  if (tok != meta.end() && s->file_->has_array("sfmodel.tokenizer_data")) {
    const json::Value info = json::parse(tok->second, "sfmodel.tokenizer");
    const json::Value* kind = info.find("kind");
    s->tokenizer_kind_ = kind != nullptr ? kind->text : "";
    const format::StoredArray& blob = s->file_->array("sfmodel.tokenizer_data");
    s->tokenizer_data_ = blob.data;
    s->tokenizer_size_ = blob.nbytes;
    if (s->tokenizer_kind_ == "llama2c") {
      s->bos_id_ = 1;  // llama2.c's BOS and EOS (Llama2cTokenizer.BOS / EOS)
      s->eos_id_ = 2;
    } else {
      for (const char* key : {"bos_id", "eos_id"}) {
        const json::Value* v = info.find(key);
        if (v != nullptr && v->is(json::Value::Type::kNumber)) {
          (key[0] == 'b' ? s->bos_id_ : s->eos_id_) = static_cast<int64_t>(json::to_u64(*v, key));
        }
      }
    }
  }
  return s;
}

}  // namespace runtime
}  // namespace sparseforge
