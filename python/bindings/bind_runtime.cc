// Runtime glue (sparseforge.runtime): RuntimeModel holds views of the caller's arrays and
// compressed tensors (and a reference to each, so they outlive it); RuntimeSession runs
// prefill / step / generate with the GIL released. A model becomes read-only once a
// session uses it, so no weight a running session reads can be replaced under it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/runtime/model.h"
#include "sparseforge/runtime/saved_model.h"
#include "sparseforge/runtime/session.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sr = sparseforge::runtime;

namespace sfpy {
namespace {

struct PyModel {
  sr::Model model;
  std::unique_ptr<sr::SavedModel> saved;   // owns what model views when read from a file
  std::map<std::string, py::object> refs;  // slot -> the Python object its views point into
  bool frozen = false;

  void check_writable() const {
    if (frozen) {
      throw sf::InvalidArgument(
          "model: a session runs on this RuntimeModel; build a new one to change weights");
    }
  }
  void keep(const std::string& slot, py::handle obj) {
    refs[slot] = py::reinterpret_borrow<py::object>(obj);
  }
};

sr::Weight weight_in(py::handle obj, const std::string& name) {
  if (obj.is_none()) return {};
  if (py::isinstance<sf::format::NMMatrix>(obj)) {
    return sr::Weight::of(obj.cast<const sf::format::NMMatrix&>());
  }
  if (py::isinstance<sf::format::BitmapMatrix>(obj)) {
    return sr::Weight::of(obj.cast<const sf::format::BitmapMatrix&>());
  }
  return sr::Weight::of(matrix_in(obj, name.c_str()));
}

const float* vector_in(py::handle obj, const std::string& name, size_t n) {
  return vector_f32_in(obj, name.c_str(), n);
}

std::unique_ptr<PyModel> make_model(size_t dim, size_t hidden_dim, size_t n_layers, size_t n_heads,
                                    size_t n_kv_heads, size_t head_dim, size_t vocab_size,
                                    size_t max_seq_len, float norm_eps, double rope_theta,
                                    const std::string& rope_style, bool tied_embeddings,
                                    const std::string& arch) {
  auto m = std::make_unique<PyModel>();
  sr::ModelConfig& c = m->model.config;
  c.dim = dim;
  c.hidden_dim = hidden_dim;
  c.n_layers = n_layers;
  c.n_heads = n_heads;
  c.n_kv_heads = n_kv_heads;
  c.head_dim = head_dim;
  c.vocab_size = vocab_size;
  c.max_seq_len = max_seq_len;
  c.norm_eps = norm_eps;
  c.rope_theta = rope_theta;
  c.rope_style = sf::models::parse_rope_style(rope_style);
  c.tied_embeddings = tied_embeddings;
  c.arch = arch;
  c.validate();
  m->model.blocks.resize(n_layers);
  return m;
}

sr::Linear& linear_slot(PyModel& m, int block, int j) {
  if (block == -1) return m.model.head;
  if (block < 0 || static_cast<size_t>(block) >= m.model.blocks.size()) {
    throw sf::InvalidArgument("block: expected -1 (the head) or 0 <= block < " +
                              std::to_string(m.model.blocks.size()) + ", got " +
                              std::to_string(block));
  }
  if (j < 0 || j > 6) throw sf::InvalidArgument("j: expected 0..6, got " + std::to_string(j));
  sr::Block& b = m.model.blocks[static_cast<size_t>(block)];
  sr::Linear* ls[7] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
  return *ls[j];
}

void set_linear(PyModel& m, int block, int j, py::handle w, py::handle wt, py::handle bias,
                const py::object& threshold) {
  m.check_writable();
  const std::string name = block == -1 ? "lm_head" : sr::linear_name(block, j);
  sr::Linear& slot = linear_slot(m, block, j);
  sr::Linear l;
  l.w = weight_in(w, name + ".weight");
  l.wt = weight_in(wt, name + ".weight_t");
  if (!bias.is_none()) {
    const size_t out = l.w.empty() ? l.wt.cols() : l.w.rows();
    l.bias = vector_in(bias, name + ".bias", out);
  }
  if (!threshold.is_none()) {
    l.teal = true;
    l.threshold = threshold.cast<float>();
  }
  slot = l;
  m.keep(name + ".weight", w);
  m.keep(name + ".weight_t", wt);
  m.keep(name + ".bias", bias);
}

void set_norms(PyModel& m, int block, py::handle attn, py::handle mlp) {
  m.check_writable();
  const size_t dim = m.model.config.dim;
  if (block == -1) {
    m.model.final_norm = vector_in(attn, "model.norm.weight", dim);
    m.keep("model.norm.weight", attn);
    return;
  }
  linear_slot(m, block, 0);  // range check
  sr::Block& b = m.model.blocks[static_cast<size_t>(block)];
  const std::string p = "model.layers." + std::to_string(block) + ".";
  b.attn_norm = vector_in(attn, p + "input_layernorm.weight", dim);
  b.mlp_norm = vector_in(mlp, p + "post_attention_layernorm.weight", dim);
  m.keep(p + "input_layernorm.weight", attn);
  m.keep(p + "post_attention_layernorm.weight", mlp);
}

void set_family(PyModel& m, const std::string& activation, float embed_scale, float query_scale,
                float final_softcap, bool qk_norm, bool sandwich_norms,
                const std::vector<size_t>& layer_window,
                const std::vector<double>& layer_rope_theta) {
  m.check_writable();
  sr::ModelConfig c = m.model.config;
  if (activation == "silu") {
    c.activation = sr::ModelConfig::Activation::kSiLU;
  } else if (activation == "gelu_tanh") {
    c.activation = sr::ModelConfig::Activation::kGeluTanh;
  } else {
    throw sf::InvalidArgument("activation: expected 'silu' or 'gelu_tanh', got '" + activation +
                              "'");
  }
  c.embed_scale = embed_scale;
  c.query_scale = query_scale;
  c.final_softcap = final_softcap;
  c.qk_norm = qk_norm;
  c.sandwich_norms = sandwich_norms;
  c.layer_window = layer_window;
  c.layer_rope_theta = layer_rope_theta;
  c.validate();
  m.model.config = c;
}

void set_block_norms(PyModel& m, int block, py::handle q_norm, py::handle k_norm,
                     py::handle attn_post, py::handle mlp_post) {
  m.check_writable();
  linear_slot(m, block, 0);  // range check
  if (block < 0) throw sf::InvalidArgument("block: expected 0 <= block, got -1");
  const sr::ModelConfig& c = m.model.config;
  sr::Block& b = m.model.blocks[static_cast<size_t>(block)];
  const std::string p = "model.layers." + std::to_string(block) + ".";
  // Keys of `refs` by role (the sandwich's post-attention norm and the Llama MLP pre-norm
  // share a Hugging Face name).
  const auto set = [&](const float** slot, py::handle obj, const char* name, const char* role,
                       size_t n) {
    *slot = obj.is_none() ? nullptr : vector_in(obj, p + name, n);
    m.keep(p + role, obj);
  };
  set(&b.q_norm, q_norm, "self_attn.q_norm.weight", "q_norm", c.head_dim);
  set(&b.k_norm, k_norm, "self_attn.k_norm.weight", "k_norm", c.head_dim);
  set(&b.attn_post_norm, attn_post, "post_attention_layernorm.weight", "attn_post_norm", c.dim);
  set(&b.mlp_post_norm, mlp_post, "post_feedforward_layernorm.weight", "mlp_post_norm", c.dim);
}

void set_embed(PyModel& m, py::handle embed) {
  m.check_writable();
  m.model.embed = matrix_in(embed, "model.embed_tokens.weight");
  m.keep("model.embed_tokens.weight", embed);
}

std::unique_ptr<PyModel> load_model(const std::string& path, bool verify, int num_threads) {
  const int threads = threads_arg(num_threads);
  auto m = std::make_unique<PyModel>();
  {
    py::gil_scoped_release release;
    m->saved = sr::SavedModel::load(path, verify, threads);
  }
  m->model = m->saved->model();
  m->frozen = true;
  return m;
}

struct PySession {
  std::unique_ptr<sr::Session> session;
  py::object model_ref;
  // One call at a time, the readers included (threads may share a session): every method
  // holds it through ObjectLock (bindings.h), which waits with the GIL released.
  std::mutex mutex;
};

std::unique_ptr<PySession> make_session(const py::object& model_obj, size_t capacity,
                                        int num_threads) {
  PyModel& m = model_obj.cast<PyModel&>();
  auto s = std::make_unique<PySession>();
  s->session = std::make_unique<sr::Session>(m.model, capacity, threads_arg(num_threads));
  s->model_ref = model_obj;
  m.frozen = true;
  return s;
}

// A policy session (kvcache/policy.h): the paged cache and policy are shared with the
// sparseforge.kv facade, so each call also holds their locks (policy cache, policy, paged
// cache: the order every kv binding takes them), taken with the GIL held (ObjectLock).
std::unique_ptr<PySession> make_policy_session(const py::object& model_obj,
                                               std::shared_ptr<sparseforge::kv::PolicyCache> pc,
                                               int num_threads) {
  PyModel& m = model_obj.cast<PyModel&>();
  auto s = std::make_unique<PySession>();
  s->session = std::make_unique<sr::Session>(m.model, std::move(pc), threads_arg(num_threads));
  s->model_ref = model_obj;
  m.frozen = true;
  return s;
}

struct PolicyLocks {
  explicit PolicyLocks(const sr::Session& s) {
    if (const auto& pc = s.policy_cache()) {
      a.emplace(pc->mutex());
      b.emplace(pc->policy().mutex());
      c.emplace(pc->cache().mutex());
    }
  }
  std::optional<ObjectLock> a, b, c;
};

py::array_t<float> prefill(PySession& s, const std::vector<int64_t>& tokens, bool last_only) {
  const size_t vocab = s.session->model().config.vocab_size;
  const size_t rows = last_only ? 1 : tokens.size();
  py::array_t<float> logits({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(vocab)});
  float* out = logits.mutable_data();
  {
    PolicyLocks locks(*s.session);
    ObjectLock lock(s.mutex);
    py::gil_scoped_release release;
    s.session->prefill(tokens.data(), tokens.size(), out, last_only);
  }
  return logits;
}

}  // namespace

void register_runtime(py::module_& m) {
  py::class_<PyModel>(m, "RuntimeModel",
                      "A model's weights as views in their formats (sparseforge.runtime).")
      .def(py::init(&make_model), py::arg("dim"), py::arg("hidden_dim"), py::arg("n_layers"),
           py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("vocab_size"),
           py::arg("max_seq_len"), py::arg("norm_eps"), py::arg("rope_theta"),
           py::arg("rope_style"), py::arg("tied_embeddings"), py::arg("arch"))
      .def("set_linear", &set_linear, py::arg("block"), py::arg("j"), py::arg("w"), py::arg("wt"),
           py::arg("bias"), py::arg("threshold"))
      .def("set_norms", &set_norms, py::arg("block"), py::arg("attn"), py::arg("mlp"))
      .def("set_embed", &set_embed, py::arg("embed"))
      .def("set_family", &set_family, py::arg("activation"), py::arg("embed_scale"),
           py::arg("query_scale"), py::arg("final_softcap"), py::arg("qk_norm"),
           py::arg("sandwich_norms"), py::arg("layer_window"), py::arg("layer_rope_theta"))
      .def("set_block_norms", &set_block_norms, py::arg("block"), py::arg("q_norm"),
           py::arg("k_norm"), py::arg("attn_post"), py::arg("mlp_post"))
      .def_static("load", &load_model, py::arg("path"), py::arg("verify") = true,
                  py::arg("num_threads") = 0)
      .def("validate", [](const PyModel& p) { p.model.validate(); })
      .def_property_readonly("vocab_size",
                             [](const PyModel& p) { return p.model.config.vocab_size; })
      .def_property_readonly(
          "tokenizer_kind",
          [](const PyModel& p) { return p.saved ? p.saved->tokenizer_kind() : std::string(); })
      .def_property_readonly("weight_bytes",
                             [](const PyModel& p) { return p.model.weight_bytes(); })
      .def_property_readonly("frozen", [](const PyModel& p) { return p.frozen; });

  py::class_<PySession>(m, "RuntimeSession",
                        "A KV cache and the decode loop (sparseforge.runtime).")
      .def(py::init(&make_session), py::arg("model"), py::arg("capacity"),
           py::arg("num_threads") = 0)
      .def(py::init(&make_policy_session), py::arg("model"), py::arg("policy_cache"),
           py::arg("num_threads") = 0)
      .def("prefill", &prefill, py::arg("tokens"), py::arg("last_only") = false)
      .def(
          "step",
          [](PySession& s, int64_t token) {
            return prefill(s, std::vector<int64_t>{token}, true).reshape({-1});
          },
          py::arg("token"))
      .def(
          "generate",
          [](PySession& s, const std::vector<int64_t>& prompt, size_t max_new, float temperature,
             size_t top_k, float top_p, uint64_t seed, const std::vector<int64_t>& stop) {
            sr::SamplingConfig cfg;
            cfg.temperature = temperature;
            cfg.top_k = top_k;
            cfg.top_p = top_p;
            cfg.seed = seed;
            PolicyLocks locks(*s.session);
            ObjectLock lock(s.mutex);
            py::gil_scoped_release release;
            return s.session->generate(prompt.data(), prompt.size(), max_new, cfg, stop);
          },
          py::arg("prompt"), py::arg("max_new_tokens"), py::arg("temperature"), py::arg("top_k"),
          py::arg("top_p"), py::arg("seed"), py::arg("stop"))
      .def(
          "read_kv",
          [](PySession& s, size_t layer) {
            const sr::ModelConfig& c = s.session->model().config;
            ObjectLock lock(s.mutex);
            const auto n = static_cast<py::ssize_t>(s.session->length());
            const std::vector<py::ssize_t> shape{n, static_cast<py::ssize_t>(c.n_kv_heads),
                                                 static_cast<py::ssize_t>(c.head_dim)};
            py::array_t<float> k(shape), v(shape);
            s.session->read_kv(layer, k.mutable_data(), v.mutable_data());
            return py::make_tuple(k, v);
          },
          py::arg("layer"))
      .def(
          "set_model",
          [](PySession& s, const py::object& model_obj) {
            PyModel& m = model_obj.cast<PyModel&>();
            ObjectLock lock(s.mutex);
            s.session->set_model(m.model);
            m.frozen = true;
            s.model_ref = model_obj;
          },
          py::arg("model"))
      .def("reset",
           [](PySession& s) {
             PolicyLocks locks(*s.session);
             ObjectLock lock(s.mutex);
             s.session->reset();
           })
      .def_property(
          "num_threads",
          [](PySession& s) {
            ObjectLock lock(s.mutex);
            return s.session->num_threads();
          },
          [](PySession& s, int n) {
            const int threads = threads_arg(n);
            ObjectLock lock(s.mutex);
            s.session->set_num_threads(threads);
          })
      .def_property_readonly("length",
                             [](PySession& s) {
                               ObjectLock lock(s.mutex);
                               return s.session->length();
                             })
      .def_property_readonly("capacity", [](const PySession& s) { return s.session->capacity(); })
      .def_property_readonly("kv_bytes",
                             [](PySession& s) {
                               ObjectLock lock(s.mutex);
                               return s.session->kv_bytes();
                             })
      .def_property_readonly("model", [](const PySession& s) { return s.model_ref; });
}

}  // namespace sfpy
