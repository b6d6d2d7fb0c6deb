// Forward-op glue (sparseforge.models.ops): RMSNorm, RoPE, causal GQA attention, decode
// attention, the SwiGLU gate. Per-head tensors arrive as 3-D (rows, heads, head_dim) float32
// C-contiguous arrays, which the core sees as (rows, heads * head_dim) matrices without a
// copy; outputs are allocated (or out= checked) before the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/error.h"
#include "sparseforge/models/block_forward.h"
#include "sparseforge/models/ops.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sm = sparseforge::models;

namespace sfpy {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw sf::InvalidArgument(msg); }

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A 3-D float32 C-contiguous (rows, heads, head_dim) array as a (rows, heads * head_dim)
// matrix. The dtype / contiguity / alignment checks are the gate's (flat_in).
struct Heads {
  sf::MatrixView<float> m;
  size_t heads = 0, head_dim = 0;
};

Heads heads_in(py::handle obj, const char* name, bool writeable) {
  const FlatArray flat = flat_in(obj, name, kF32);
  const py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != 3) {
    fail(std::string(name) + ": expected a 3-D (tokens, heads, head_dim) array, got shape " +
         shape_of(a));
  }
  if (writeable && !a.writeable()) fail(std::string(name) + ": expected a writeable array");
  const auto rows = static_cast<size_t>(a.shape(0));
  const auto heads = static_cast<size_t>(a.shape(1));
  const auto head_dim = static_cast<size_t>(a.shape(2));
  return {{static_cast<float*>(flat.data), rows, heads * head_dim}, heads, head_dim};
}

const int64_t* positions_in(py::handle obj, size_t n) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error("positions: expected a numpy.ndarray of int64");
  }
  const py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<int64_t>())) {
    throw sf::DTypeError("positions: expected dtype int64, got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  if (a.ndim() != 1 || static_cast<size_t>(a.shape(0)) != n || !(a.flags() & py::array::c_style)) {
    fail("positions: expected a C-contiguous (" + std::to_string(n) + ",) array, got shape " +
         shape_of(a));
  }
  return static_cast<const int64_t*>(a.data());
}

py::array rms_norm(py::handle x_obj, py::handle weight_obj, float eps, const py::object& out,
                   int num_threads) {
  const sf::ConstMatrixView<float> x = matrix_in(x_obj, "x", kF32).as<float>();
  const float* w = vector_f32_in(weight_obj, "weight", x.cols);
  const int threads = threads_arg(num_threads);
  py::array y;
  const sf::MatrixView<float> yv = out_matrix(out, x.rows, x.cols, &y);
  py::gil_scoped_release release;
  sm::rms_norm(x, w, eps, yv, threads);
  return y;
}

void rope(py::handle x_obj, py::handle pos_obj, double theta, const std::string& style,
          int num_threads) {
  const Heads x = heads_in(x_obj, "x", true);
  const int64_t* pos = positions_in(pos_obj, x.m.rows);
  const sm::RopeStyle st = sm::parse_rope_style(style);
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  sm::rope(x.m, x.heads, x.head_dim, pos, theta, st, threads);
}

py::array attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, float scale,
                    const py::object& out, int num_threads, size_t window) {
  const Heads q = heads_in(q_obj, "q", false);
  const Heads k = heads_in(k_obj, "k", false);
  const Heads v = heads_in(v_obj, "v", false);
  if (k.head_dim != q.head_dim) {
    fail("k: expected head_dim " + std::to_string(q.head_dim) + " (q's), got " +
         std::to_string(k.head_dim));
  }
  if (v.m.rows != k.m.rows || v.heads != k.heads || v.head_dim != k.head_dim) {
    fail("v: expected the shape of k");
  }
  const int threads = threads_arg(num_threads);
  py::array y;
  const sf::MatrixView<float> yv = out_matrix(out, q.m.rows, q.m.cols, &y);
  py::gil_scoped_release release;
  sm::causal_attention(q.m, k.m, v.m, {q.heads, k.heads, q.head_dim}, scale, yv, threads, window);
  return y;
}

py::array decode_attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, size_t length,
                           float scale, const py::object& out, int num_threads, size_t window) {
  const sf::ConstMatrixView<float> q = matrix_in(q_obj, "q", kF32).as<float>();  // (Hq, D)
  if (!q.contiguous()) fail("q: expected a C-contiguous (n_heads, head_dim) array");
  const Heads k = heads_in(k_obj, "k_cache", false);
  const Heads v = heads_in(v_obj, "v_cache", false);
  if (k.head_dim != q.cols) {
    fail("k_cache: expected head_dim " + std::to_string(q.cols) + " (q's), got " +
         std::to_string(k.head_dim));
  }
  if (v.m.rows != k.m.rows || v.heads != k.heads || v.head_dim != k.head_dim) {
    fail("v_cache: expected the shape of k_cache");
  }
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, q.rows * q.cols, &y);
  py::gil_scoped_release release;
  sm::decode_attention(q.data, k.m, v.m, length, {q.rows, k.heads, q.cols}, scale, yp, threads,
                       window);
  return y;
}

py::array swiglu_gate(py::handle g_obj, py::handle u_obj, const py::object& out, int num_threads) {
  const sf::ConstMatrixView<float> g = matrix_in(g_obj, "g", kF32).as<float>();
  const sf::ConstMatrixView<float> u = matrix_in(u_obj, "u", kF32).as<float>();
  const int threads = threads_arg(num_threads);
  py::array y;
  const sf::MatrixView<float> yv = out_matrix(out, g.rows, g.cols, &y);
  py::gil_scoped_release release;
  sm::swiglu_gate(g, u, yv, threads);
  return y;
}

py::array geglu_gate(py::handle g_obj, py::handle u_obj, const py::object& out, int num_threads) {
  const sf::ConstMatrixView<float> g = matrix_in(g_obj, "g", kF32).as<float>();
  const sf::ConstMatrixView<float> u = matrix_in(u_obj, "u", kF32).as<float>();
  const int threads = threads_arg(num_threads);
  py::array y;
  const sf::MatrixView<float> yv = out_matrix(out, g.rows, g.cols, &y);
  py::gil_scoped_release release;
  sm::geglu_gate(g, u, yv, threads);
  return y;
}

// The calibration forward of one block (block_forward.h). weights: [attn_norm, q, k, v, o,
// mlp_norm, gate, up, down] (float32; norms 1-D, linears 2-D (out, in)); biases: 7 entries,
// None or a float32 (out,) vector; stats: 4 entries, None or a LayerStats (core object), for
// q/k/v's, o's, gate/up's and down's inputs. Returns the (tokens, dim) outputs, or None
// when need_output is false.
py::object calib_block_forward(py::handle h_obj, size_t seqlen, size_t n_heads, size_t n_kv_heads,
                               size_t head_dim, double rope_theta, const std::string& rope_style,
                               float norm_eps, float scale, const py::sequence& weights,
                               const py::sequence& biases, const py::sequence& stats,
                               bool need_output, int num_threads) {
  const sf::ConstMatrixView<float> h = matrix_in(h_obj, "h", kF32).as<float>();
  if (py::len(weights) != 9) fail("weights: expected 9 arrays (2 norms, 7 linears)");
  if (py::len(biases) != 7) fail("biases: expected 7 entries (None or a vector)");
  if (py::len(stats) != 4) fail("stats: expected 4 entries (None or a LayerStats)");
  static const char* const kNames[9] = {"input_layernorm", "q_proj",  "k_proj",
                                        "v_proj",          "o_proj",  "post_attention_layernorm",
                                        "gate_proj",       "up_proj", "down_proj"};
  sm::BlockWeights w;
  std::array<sf::ConstMatrixView<float>, 9> mats{};
  for (int i = 0; i < 9; ++i) {
    if (i == 0 || i == 5) continue;
    mats[i] = matrix_in(weights[i], kNames[i], kF32).as<float>();
  }
  const size_t dim = h.cols;
  w.attn_norm = vector_f32_in(weights[0], kNames[0], dim);
  w.mlp_norm = vector_f32_in(weights[5], kNames[5], dim);
  const int lin[7] = {1, 2, 3, 4, 6, 7, 8};
  for (int j = 0; j < 7; ++j) {
    w.w[j] = mats[lin[j]];
    if (!biases[j].is_none())
      w.bias[j] = vector_f32_in(biases[j], kNames[lin[j]], mats[lin[j]].rows);
  }
  std::array<sf::calib::LayerStats*, sm::kNumBlockInputs> st{};
  std::vector<sf::calib::LayerStats*> distinct;
  for (int i = 0; i < 4; ++i) {
    if (stats[i].is_none()) continue;
    st[i] = stats[i].cast<sf::calib::LayerStats*>();
    if (std::find(distinct.begin(), distinct.end(), st[i]) != distinct.end()) {
      fail("stats: expected 4 distinct LayerStats objects (or None)");
    }
    distinct.push_back(st[i]);
  }
  sm::BlockShape shape;
  shape.dim = dim;
  shape.hidden = mats[6].rows;
  shape.attn = {n_heads, n_kv_heads, head_dim};
  shape.rope_theta = rope_theta;
  shape.rope_style = sm::parse_rope_style(rope_style);
  shape.norm_eps = norm_eps;
  shape.attn_scale = scale;
  const int threads = threads_arg(num_threads);
  py::array y;
  sf::MatrixView<float> yv{nullptr, 0, dim, dim};
  if (need_output) yv = out_matrix(py::none(), h.rows, dim, &y);
  std::sort(distinct.begin(), distinct.end());  // locks in address order
  std::vector<std::unique_ptr<ObjectLock>> locks;
  for (auto* p : distinct) locks.push_back(std::make_unique<ObjectLock>(p->mutex()));
  {
    py::gil_scoped_release release;
    sm::calibration_block_forward(h, seqlen, shape, w, st, yv, threads);
  }
  if (!need_output) return py::none();
  return std::move(y);
}

}  // namespace

void register_models(py::module_& m) {
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight"), py::arg("eps"),
        py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "weight * x / sqrt(mean(x^2) + eps) per row (float32 (T, dim)).");
  m.def("rope", &rope, py::arg("x"), py::arg("positions"), py::arg("theta"), py::arg("style"),
        py::arg("num_threads") = 0, "Rotary embedding of x (T, heads, head_dim) in place.");
  m.def("attention", &attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"),
        py::arg("out") = py::none(), py::arg("num_threads") = 0, py::arg("window") = 0,
        "Causal GQA attention: q (T, Hq, D), k/v (S, Hkv, D), S >= T -> (T, Hq*D); "
        "window > 0: each query attends its last `window` keys.");
  m.def("decode_attention", &decode_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("length"), py::arg("scale"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, py::arg("window") = 0,
        "One query (Hq, D) over the first `length` rows of a (capacity, Hkv, D) cache.");
  m.def("swiglu_gate", &swiglu_gate, py::arg("g"), py::arg("u"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, "silu(g) * u elementwise (float32 (T, hidden)).");
  m.def("geglu_gate", &geglu_gate, py::arg("g"), py::arg("u"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, "gelu_tanh(g) * u elementwise (float32 (T, hidden)).");
  m.def("calib_block_forward", &calib_block_forward, py::arg("h"), py::arg("seqlen"),
        py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("rope_theta"),
        py::arg("rope_style"), py::arg("norm_eps"), py::arg("scale"), py::arg("weights"),
        py::arg("biases"), py::arg("stats"), py::arg("need_output"), py::arg("num_threads") = 0,
        "One Llama block over windows of `seqlen` tokens stacked in h (tokens, dim), feeding "
        "each linear's input into its LayerStats; returns the outputs or None.");
}

}  // namespace sfpy
