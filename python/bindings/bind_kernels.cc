// Dense and activation-sparse kernels glue: gemv/gemm, row skip, column skip, sparse SwiGLU,
// the read-bandwidth probe. Arguments pass the numpy gate, outputs are allocated (or the
// caller's out= checked) before the GIL is released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <tuple>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/kernels/activation.h"
#include "sparseforge/kernels/dense.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sk = sparseforge::kernels;

namespace sfpy {
namespace {

sk::IndexSet index_set(const Selection& s) {
  switch (s.kind) {
    case Selection::kInt32:
      return sk::IndexSet::list(static_cast<const int32_t*>(s.data), s.size);
    case Selection::kInt64:
      return sk::IndexSet::list(static_cast<const int64_t*>(s.data), s.size);
    case Selection::kBool:
    default:
      return sk::IndexSet::mask(static_cast<const uint8_t*>(s.data), s.size);
  }
}

py::array gemv(py::handle W_obj, py::handle x_obj, const py::object& out, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const float* x = vector_f32_in(x_obj, "x", W.cols);
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, W.rows, &y);
  py::gil_scoped_release release;
  sk::gemv(W, x, yp, threads);
  return y;
}

py::array gemm(py::handle W_obj, py::handle X_obj, const py::object& out, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const sf::ConstMatrixView<float> X = matrix_in(X_obj, "X", kF32).as<float>();
  if (X.cols != W.cols) {
    throw sf::InvalidArgument("X: expected in_features=" + std::to_string(W.cols) +
                              " columns (W's), got shape (" + std::to_string(X.rows) + ", " +
                              std::to_string(X.cols) + ")");
  }
  const int threads = threads_arg(num_threads);
  py::array Y;
  const sf::MatrixView<float> Yv = out_matrix(out, X.rows, W.rows, &Y);
  py::gil_scoped_release release;
  sk::gemm(W, X, Yv, threads);
  return Y;
}

std::pair<py::array, size_t> gemv_rows(py::handle W_obj, py::handle x_obj, py::handle rows_obj,
                                       const py::object& out, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const float* x = vector_f32_in(x_obj, "x", W.cols);
  const sk::IndexSet rows = index_set(selection_in(rows_obj, "rows"));
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, W.rows, &y);
  size_t computed;
  {
    py::gil_scoped_release release;
    computed = sk::gemv_rows(W, x, rows, yp, threads);
  }
  return {y, computed};
}

std::pair<py::array, size_t> gemv_sparse_input(py::handle Wt_obj, py::handle x_obj, float threshold,
                                               const py::object& out, int num_threads) {
  const sf::AnyConstMatrix Wt = matrix_in(Wt_obj, "Wt");
  const float* x = vector_f32_in(x_obj, "x", Wt.rows);
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, Wt.cols, &y);
  sk::SparseInputInfo info;
  {
    py::gil_scoped_release release;
    info = sk::gemv_sparse_input(Wt, x, threshold, yp, threads);
  }
  return {y, info.active};
}

std::pair<py::array, size_t> gemv_active_input(py::handle Wt_obj, py::handle x_obj,
                                               py::handle active_obj, const py::object& out,
                                               int num_threads) {
  const sf::AnyConstMatrix Wt = matrix_in(Wt_obj, "Wt");
  const float* x = vector_f32_in(x_obj, "x", Wt.rows);
  const sk::IndexSet active = index_set(selection_in(active_obj, "active"));
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, Wt.cols, &y);
  sk::SparseInputInfo info;
  {
    py::gil_scoped_release release;
    info = sk::gemv_active_input(Wt, x, active, yp, threads);
  }
  return {y, info.active};
}

std::tuple<py::array, size_t, bool> gemm_sparse_input(py::handle Wt_obj, py::handle X_obj,
                                                      float threshold, double min_gain,
                                                      const py::object& out, int num_threads) {
  const sf::AnyConstMatrix Wt = matrix_in(Wt_obj, "Wt");
  const sf::ConstMatrixView<float> X = matrix_in(X_obj, "X", kF32).as<float>();
  if (X.cols != Wt.rows) {
    throw sf::InvalidArgument("X: expected in_features=" + std::to_string(Wt.rows) +
                              " columns (Wt's rows), got shape (" + std::to_string(X.rows) + ", " +
                              std::to_string(X.cols) + ")");
  }
  const int threads = threads_arg(num_threads);
  py::array Y;
  const sf::MatrixView<float> Yv = out_matrix(out, X.rows, Wt.cols, &Y);
  sk::SparseInputInfo info;
  {
    py::gil_scoped_release release;
    info = sk::gemm_sparse_input(Wt, X, threshold, Yv, min_gain, threads);
  }
  return {Y, info.active, info.dense_fallback};
}

std::tuple<py::array, size_t, size_t> swiglu(const std::string& mode, py::handle gate_obj,
                                             py::handle up_obj, py::handle down_obj,
                                             py::handle x_obj, float t_x, float t_h,
                                             const py::object& out, int num_threads) {
  sk::SwiGLUWeights w;
  w.mode = sk::parse_swiglu_mode(mode);
  w.gate = matrix_in(gate_obj, "gate");
  w.up = matrix_in(up_obj, "up");
  w.down = matrix_in(down_obj, "down");
  const sk::SwiGLUShape s = sk::swiglu_shape(w);
  const float* x = vector_f32_in(x_obj, "x", s.in);
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, s.out, &y);
  sk::SwiGLUInfo info;
  {
    py::gil_scoped_release release;
    info = sk::swiglu(w, x, t_x, t_h, yp, threads);
  }
  return {y, info.x_active, info.h_active};
}

float read_probe(py::handle buf_obj, int num_threads) {
  const FlatArray buf = flat_in(buf_obj, "buf", kF32);
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  return sk::read_probe(static_cast<const float*>(buf.data), buf.size, threads);
}

}  // namespace

void register_kernels(py::module_& m) {
  m.def("gemv", &gemv, py::arg("W"), py::arg("x"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, "y = W x (float32 (out_features,)).");
  m.def("gemm", &gemm, py::arg("W"), py::arg("X"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, "Y = X W^T (float32 (batch, out_features)).");
  m.def("gemv_rows", &gemv_rows, py::arg("W"), py::arg("x"), py::arg("rows"),
        py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "(y, rows computed): y[r] = W[r] x on the selected rows, 0 elsewhere.");
  m.def("gemv_sparse_input", &gemv_sparse_input, py::arg("Wt"), py::arg("x"), py::arg("threshold"),
        py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "(y, active inputs): y = Wt^T (x where |x| > threshold).");
  m.def("gemv_active_input", &gemv_active_input, py::arg("Wt"), py::arg("x"), py::arg("active"),
        py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "(y, active inputs): y = Wt^T (x restricted to the active set).");
  m.def("gemm_sparse_input", &gemm_sparse_input, py::arg("Wt"), py::arg("X"), py::arg("threshold"),
        py::arg("min_gain"), py::arg("out") = py::none(), py::arg("num_threads") = 0,
        "(Y, union active inputs, dense fallback used).");
  m.def("swiglu", &swiglu, py::arg("mode"), py::arg("gate"), py::arg("up"), py::arg("down"),
        py::arg("x"), py::arg("t_x"), py::arg("t_h"), py::arg("out") = py::none(),
        py::arg("num_threads") = 0, "(y, active inputs, active hidden units).");
  m.def("_read_probe", &read_probe, py::arg("buf"), py::arg("num_threads") = 0,
        "Sum of a float32 buffer streamed with the widest loads (read-bandwidth probe).");
}

}  // namespace sfpy
