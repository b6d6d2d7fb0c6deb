// MoE glue (sparseforge.moe): routing, capacity, dispatch plan, gather / combine, the SwiGLU
// MoE FFN and the auxiliary losses. Float arrays pass the numpy gate (float32 logits and
// activations; expert weights fp32/fp16/bf16); index arrays must already be int32 (the
// facade converts small index arrays once). Outputs are allocated before the GIL is
// released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/moe/dispatch.h"
#include "sparseforge/moe/routing.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sm = sparseforge::moe;

namespace sfpy {
namespace {

using I32 = py::array_t<int32_t>;
using I64 = py::array_t<int64_t>;

[[noreturn]] void fail(const std::string& msg) { throw sf::InvalidArgument(msg); }

// An int32 C-contiguous array with `ndim` dimensions, in the caller's memory.
py::array int32_in(py::handle obj, const char* name, int ndim) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray of int32, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<int32_t>())) {
    throw sf::DTypeError(std::string(name) + ": expected dtype int32, got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  if (a.ndim() != ndim) {
    fail(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
         std::to_string(a.ndim()) + "-D");
  }
  if (!(a.flags() & py::array::c_style)) {
    fail(std::string(name) + ": expected a C-contiguous array");
  }
  return a;
}

sf::ConstMatrixView<int32_t> i32_matrix(const py::array& a) {
  return {static_cast<const int32_t*>(a.data()), static_cast<size_t>(a.shape(0)),
          static_cast<size_t>(a.shape(1))};
}

sf::MatrixView<int32_t> i32_out(I32& a) {
  return {a.mutable_data(), static_cast<size_t>(a.shape(0)), static_cast<size_t>(a.shape(1))};
}

I32 new_i32(size_t rows, size_t cols) {
  return I32({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

sf::MatrixView<float> f32_out(py::array& a, size_t rows, size_t cols) {
  return {static_cast<float*>(a.mutable_data()), rows, cols};
}

py::array new_f32(size_t rows, size_t cols) {
  return new_array(sf::DType::kF32,
                   {static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

py::tuple route(py::handle logits_obj, size_t top_k, const std::string& score, bool renormalize,
                float routed_scaling_factor, py::handle bias_obj, size_t n_group, size_t topk_group,
                const std::string& group_score, int num_threads) {
  const sf::ConstMatrixView<float> logits = matrix_in(logits_obj, "logits", kF32).as<float>();
  sm::RouterOptions o;
  o.top_k = top_k;
  if (score == "softmax") {
    o.score = sm::ScoreFunc::kSoftmax;
  } else if (score == "sigmoid") {
    o.score = sm::ScoreFunc::kSigmoid;
  } else {
    fail("score: expected 'softmax' or 'sigmoid', got '" + score + "'");
  }
  if (group_score == "top2_sum") {
    o.group_score = sm::GroupScore::kTop2Sum;
  } else if (group_score == "max") {
    o.group_score = sm::GroupScore::kMax;
  } else {
    fail("group_score: expected 'top2_sum' or 'max', got '" + group_score + "'");
  }
  o.renormalize = renormalize;
  o.routed_scaling_factor = routed_scaling_factor;
  if (!bias_obj.is_none()) o.bias = vector_f32_in(bias_obj, "bias", logits.cols);
  o.n_group = n_group;
  o.topk_group = topk_group;
  o.num_threads = threads_arg(num_threads);
  const size_t T = logits.rows, E = logits.cols;
  if (top_k < 1 || top_k > E) {  // before allocating (T, top_k) outputs
    fail("top_k: expected 1 <= top_k <= num_experts=" + std::to_string(E) + ", got " +
         std::to_string(top_k));
  }
  I32 ids = new_i32(T, top_k);
  py::array w = new_f32(T, top_k), s = new_f32(T, E);
  sf::MatrixView<int32_t> iv = i32_out(ids);
  sf::MatrixView<float> wv = f32_out(w, T, top_k), sv = f32_out(s, T, E);
  {
    py::gil_scoped_release release;
    sm::route(logits, o, iv, wv, sv);
  }
  return py::make_tuple(ids, w, s);
}

py::tuple assign_capacity(py::handle ids_obj, size_t num_experts, py::handle priority_obj,
                          const std::string& mode, double capacity_factor, int64_t capacity,
                          const std::string& priority) {
  const py::array ids_a = int32_in(ids_obj, "expert_ids", 2);
  const sf::ConstMatrixView<int32_t> ids = i32_matrix(ids_a);
  sm::CapacityOptions o;
  if (mode == "dropless") {
    o.mode = sm::CapacityMode::kDropless;
  } else if (mode == "fixed") {
    o.mode = sm::CapacityMode::kFixed;
  } else if (mode == "dynamic") {
    o.mode = sm::CapacityMode::kDynamic;
  } else {
    fail("capacity_mode: expected 'dropless', 'fixed' or 'dynamic', got '" + mode + "'");
  }
  if (priority == "position") {
    o.priority = sm::Priority::kPosition;
  } else if (priority == "score") {
    o.priority = sm::Priority::kScore;
  } else {
    fail("priority: expected 'position' or 'score', got '" + priority + "'");
  }
  o.capacity_factor = capacity_factor;
  o.capacity = capacity;
  const float* pr = nullptr;
  if (!priority_obj.is_none()) pr = vector_f32_in(priority_obj, "priority_values", ids.rows);
  if (num_experts < 1) fail("num_experts: expected >= 1, got 0");
  I32 loc = new_i32(ids.rows, ids.cols);
  I64 load(static_cast<py::ssize_t>(num_experts)), kept(static_cast<py::ssize_t>(num_experts));
  sf::MatrixView<int32_t> lv = i32_out(loc);
  int64_t* loadp = load.mutable_data();
  int64_t* keptp = kept.mutable_data();
  sm::CapacityResult r;
  {
    py::gil_scoped_release release;
    r = sm::assign_capacity(ids, num_experts, pr, o, lv, loadp, keptp);
  }
  return py::make_tuple(loc, load, kept, r.capacity, r.num_dropped);
}

py::tuple dispatch_plan(py::handle ids_obj, py::handle loc_obj, size_t num_experts) {
  const py::array ids_a = int32_in(ids_obj, "expert_ids", 2);
  const py::array loc_a = int32_in(loc_obj, "locations", 2);
  const sf::ConstMatrixView<int32_t> ids = i32_matrix(ids_a), loc = i32_matrix(loc_a);
  if (num_experts < 1) fail("num_experts: expected >= 1, got 0");
  I64 offsets(static_cast<py::ssize_t>(num_experts + 1));
  std::vector<int32_t> token_of(ids.rows * ids.cols);
  I32 row_of = new_i32(ids.rows, ids.cols);
  const size_t n = sm::dispatch_plan(ids, loc, num_experts, offsets.mutable_data(), token_of.data(),
                                     token_of.size(), i32_out(row_of));
  I32 tok(static_cast<py::ssize_t>(n));
  std::copy(token_of.begin(), token_of.begin() + static_cast<ptrdiff_t>(n), tok.mutable_data());
  return py::make_tuple(offsets, tok, row_of);
}

py::array gather(py::handle x_obj, py::handle token_of_obj, int num_threads) {
  const sf::ConstMatrixView<float> x = matrix_in(x_obj, "x", kF32).as<float>();
  const py::array tok = int32_in(token_of_obj, "token_of", 1);
  const int threads = threads_arg(num_threads);
  const auto n = static_cast<size_t>(tok.shape(0));
  py::array out = new_f32(n, x.cols);
  const sf::MatrixView<float> ov = f32_out(out, n, x.cols);
  const auto* tp = static_cast<const int32_t*>(tok.data());
  py::gil_scoped_release release;
  sm::gather_rows(x, tp, ov, threads);
  return out;
}

py::array combine(py::handle buffer_obj, py::handle row_of_obj, py::handle weights_obj,
                  const py::object& out, bool accumulate, int num_threads) {
  const sf::ConstMatrixView<float> buf = matrix_in(buffer_obj, "buffer", kF32).as<float>();
  const py::array ro = int32_in(row_of_obj, "row_of", 2);
  const sf::ConstMatrixView<float> w = matrix_in(weights_obj, "weights", kF32).as<float>();
  const int threads = threads_arg(num_threads);
  const sf::ConstMatrixView<int32_t> rv = i32_matrix(ro);
  py::array y;
  const sf::MatrixView<float> yv = out_matrix(out, rv.rows, buf.cols, &y);
  py::gil_scoped_release release;
  sm::combine_rows(buf, rv, w, yv, accumulate, threads);
  return y;
}

py::tuple swiglu_ffn(py::handle x_obj, py::handle offsets_obj, py::handle token_of_obj,
                     py::handle row_of_obj, py::handle weights_obj, py::handle gate_obj,
                     py::handle up_obj, py::handle down_obj, bool want_norms, int num_threads) {
  const sf::ConstMatrixView<float> x = matrix_in(x_obj, "x", kF32).as<float>();
  const sf::ConstMatrixView<float> w = matrix_in(weights_obj, "weights", kF32).as<float>();
  const py::array ro = int32_in(row_of_obj, "row_of", 2);
  const py::array tok = int32_in(token_of_obj, "token_of", 1);
  const I64 offsets = py::cast<I64>(offsets_obj);
  const FlatArray g = flat_in(gate_obj, "w_gate"), u = flat_in(up_obj, "w_up"),
                  d = flat_in(down_obj, "w_down");
  const py::array ga = py::reinterpret_borrow<py::array>(gate_obj);
  const py::array da = py::reinterpret_borrow<py::array>(down_obj);
  const py::array ua = py::reinterpret_borrow<py::array>(up_obj);
  if (ga.ndim() != 3) fail("w_gate: expected a 3-D (E, H, D) array");
  const auto E = static_cast<size_t>(ga.shape(0)), H = static_cast<size_t>(ga.shape(1)),
             D = static_cast<size_t>(ga.shape(2));
  if (ua.ndim() != 3 || static_cast<size_t>(ua.shape(0)) != E ||
      static_cast<size_t>(ua.shape(1)) != H || static_cast<size_t>(ua.shape(2)) != D) {
    fail("w_up: expected shape (E, H, D) like w_gate");
  }
  if (da.ndim() != 3 || static_cast<size_t>(da.shape(0)) != E ||
      static_cast<size_t>(da.shape(1)) != D || static_cast<size_t>(da.shape(2)) != H) {
    fail("w_down: expected shape (E, D, H) with w_gate's E, H, D");
  }
  if (g.dtype != u.dtype || g.dtype != d.dtype) {
    throw sf::DTypeError("w_up, w_down: expected w_gate's dtype");
  }
  if (offsets.ndim() != 1 || static_cast<size_t>(offsets.shape(0)) != E + 1) {
    fail("offsets: expected E + 1 = " + std::to_string(E + 1) + " entries");
  }
  const auto N = static_cast<size_t>(tok.shape(0));
  if (static_cast<size_t>(offsets.at(static_cast<py::ssize_t>(E))) != N) {
    fail("offsets: the last offset must equal len(token_of)");
  }
  sm::SwiGLUExperts ex;
  ex.dtype = g.dtype;
  ex.gate = g.data;
  ex.up = u.data;
  ex.down = d.data;
  ex.num_experts = E;
  ex.hidden = H;
  ex.dim = D;
  const int threads = threads_arg(num_threads);
  py::array y = new_f32(x.rows, D);
  const sf::MatrixView<float> yv = f32_out(y, x.rows, D);
  py::object norms_obj = py::none();
  float* np = nullptr;
  if (want_norms) {
    py::array norms = new_array(sf::DType::kF32, {static_cast<py::ssize_t>(N)});
    np = static_cast<float*>(norms.mutable_data());
    norms_obj = norms;
  }
  const sf::ConstMatrixView<int32_t> rv = i32_matrix(ro);
  const auto* tp = static_cast<const int32_t*>(tok.data());
  const int64_t* op = offsets.data();
  {
    py::gil_scoped_release release;
    sm::moe_swiglu_ffn(x, op, tp, rv, w, ex, yv, np, threads);
  }
  return py::make_tuple(y, norms_obj);
}

double load_balancing_loss(py::handle logits_obj, size_t num_layers, size_t top_k,
                           const std::string& kind, py::handle ids_obj, py::handle mask_obj) {
  const sf::ConstMatrixView<float> logits = matrix_in(logits_obj, "logits", kF32).as<float>();
  sm::AuxLossKind k;
  if (kind == "switch") {
    k = sm::AuxLossKind::kSwitch;
  } else if (kind == "mixtral") {
    k = sm::AuxLossKind::kMixtral;
  } else if (kind == "megablocks") {
    k = sm::AuxLossKind::kMegablocks;
  } else {
    fail("kind: expected 'switch', 'mixtral' or 'megablocks', got '" + kind + "'");
  }
  py::array ids_a;
  sf::ConstMatrixView<int32_t> ids;
  if (!ids_obj.is_none()) {
    ids_a = int32_in(ids_obj, "expert_ids", 2);
    ids = i32_matrix(ids_a);
  }
  const uint8_t* mask = nullptr;
  py::array mask_a;
  if (!mask_obj.is_none()) {
    if (!py::isinstance<py::array>(mask_obj)) {
      throw py::type_error("token_mask: expected a numpy.ndarray of bool");
    }
    mask_a = py::reinterpret_borrow<py::array>(mask_obj);
    if (mask_a.dtype().num() != 0 /* NPY_BOOL */ || mask_a.ndim() != 1 ||
        !(mask_a.flags() & py::array::c_style) || num_layers == 0 ||
        static_cast<size_t>(mask_a.shape(0)) * num_layers != logits.rows) {
      fail("token_mask: expected a C-contiguous 1-D bool array of length tokens");
    }
    mask = static_cast<const uint8_t*>(mask_a.data());
  }
  py::gil_scoped_release release;
  return sm::load_balancing_loss(logits, num_layers, top_k, k, ids, mask);
}

double z_loss(py::handle logits_obj) {
  const sf::ConstMatrixView<float> logits = matrix_in(logits_obj, "logits", kF32).as<float>();
  py::gil_scoped_release release;
  return sm::z_loss(logits);
}

}  // namespace

void register_moe(py::module_& m) {
  using py::arg;
  m.def("route", &route, arg("logits"), arg("top_k"), arg("score"), arg("renormalize"),
        arg("routed_scaling_factor"), arg("bias"), arg("n_group"), arg("topk_group"),
        arg("group_score"), arg("num_threads"),
        "Top-k routing: (expert_ids (T, k) int32, weights (T, k) float32, scores (T, E)).");
  m.def("assign_capacity", &assign_capacity, arg("expert_ids"), arg("num_experts"),
        arg("priority_values"), arg("capacity_mode"), arg("capacity_factor"), arg("capacity"),
        arg("priority"), "Capacity and dropping: (locations, load, kept, capacity, num_dropped).");
  m.def("dispatch_plan", &dispatch_plan, arg("expert_ids"), arg("locations"), arg("num_experts"),
        "CSR plan by expert: (offsets (E+1,), token_of (N,), row_of (T, k)).");
  m.def("gather", &gather, arg("x"), arg("token_of"), arg("num_threads"),
        "buffer[r] = x[token_of[r]] (zeros for -1).");
  m.def("combine", &combine, arg("buffer"), arg("row_of"), arg("weights"), arg("out"),
        arg("accumulate"), arg("num_threads"),
        "y[t] = sum_j weights[t, j] * buffer[row_of[t, j]] over kept slots.");
  m.def("swiglu_ffn", &swiglu_ffn, arg("x"), arg("offsets"), arg("token_of"), arg("row_of"),
        arg("weights"), arg("w_gate"), arg("w_up"), arg("w_down"), arg("want_norms"),
        arg("num_threads"), "SwiGLU MoE FFN over a dispatch plan: (y, row_norms or None).");
  m.def("load_balancing_loss", &load_balancing_loss, arg("logits"), arg("num_layers"), arg("top_k"),
        arg("kind"), arg("expert_ids"), arg("token_mask"),
        "Load-balancing loss without the coefficient (kinds switch / mixtral / megablocks).");
  m.def("z_loss", &z_loss, arg("logits"), "Router z-loss: mean logsumexp(logits)^2.");
}

}  // namespace sfpy
