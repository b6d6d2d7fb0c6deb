// N:M format glue: the execution-layout matrix (format/nm.h) and its kernels (kernels/nm.h).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/kernels/nm.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace fm = sparseforge::format;

namespace sfpy {
namespace {

// A writeable C-contiguous float32 output of the given shape, or a new one if `out` is None.
// Rejects an `out` that overlaps [in, in + in_bytes) (the kernels read the input while
// writing the output).
py::array_t<float> float_out(const py::object& out, const std::vector<py::ssize_t>& shape,
                             const void* in, size_t in_bytes, const char* in_name) {
  if (out.is_none()) return py::array_t<float>(shape);
  if (!py::isinstance<py::array>(out)) {
    throw py::type_error("out: expected a numpy.ndarray or None, got " +
                         py::str(py::type::handle_of(out).attr("__name__")).cast<std::string>());
  }
  py::array a = py::reinterpret_borrow<py::array>(out);
  if (!a.dtype().equal(py::dtype::of<float>())) {
    throw sf::DTypeError("out: expected dtype float32, got " +
                         py::str(a.dtype()).cast<std::string>());
  }
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  std::string want = "(";
  for (size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
  want += shape.size() == 1 ? ",)" : ")";
  SF_CHECK_ARG(same, "out: expected shape %s, got %s", want.c_str(),
               py::str(a.attr("shape")).cast<std::string>().c_str());
  SF_CHECK_ARG((a.flags() & py::array::c_style) != 0, "out: expected a C-contiguous array");
  SF_CHECK_ARG(a.writeable(), "out: expected a writeable array, got a read-only one");
  const char* o = static_cast<const char*>(a.data());
  const char* i = static_cast<const char*>(in);
  const size_t out_bytes = static_cast<size_t>(a.nbytes());
  SF_CHECK_ARG(o + out_bytes <= i || i + in_bytes <= o, "out: overlaps %s", in_name);
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

fm::NMMatrix from_dense(py::handle W_obj, int n, int m, bool prune, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  return fm::nm_from_dense(W, n, m, prune ? fm::NMFromDense::kMagnitude : fm::NMFromDense::kStrict,
                           threads);
}

fm::NMMatrix from_canonical(py::handle values_obj, py::handle codes_obj, size_t cols, int n, int m,
                            int num_threads) {
  const sf::AnyConstMatrix values = matrix_in(values_obj, "values");
  const sf::ConstMatrixView<uint8_t> codes = u8_matrix_in(codes_obj, "codes");
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  return fm::nm_from_canonical(values, codes, cols, n, m, threads);
}

py::tuple to_canonical(const fm::NMMatrix& A, int num_threads) {
  const int threads = threads_arg(num_threads);
  py::array values = new_array(
      A.dtype, {static_cast<py::ssize_t>(A.rows), static_cast<py::ssize_t>(A.slots_per_row())});
  py::array_t<uint8_t> codes({static_cast<py::ssize_t>(A.rows),
                              static_cast<py::ssize_t>(fm::nm_code_row_bytes(A.cols, A.n, A.m))});
  const sf::AnyMatrix vv = matrix_view(values);
  sf::MatrixView<uint8_t> cv(codes.mutable_data(), A.rows, fm::nm_code_row_bytes(A.cols, A.n, A.m));
  {
    py::gil_scoped_release release;
    fm::nm_to_canonical(A, vv, cv, threads);
  }
  return py::make_tuple(values, codes);
}

py::array to_dense(const fm::NMMatrix& A, int num_threads) {
  const int threads = threads_arg(num_threads);
  py::array out =
      new_array(A.dtype, {static_cast<py::ssize_t>(A.rows), static_cast<py::ssize_t>(A.cols)});
  const sf::AnyMatrix ov = matrix_view(out);
  py::gil_scoped_release release;
  fm::nm_to_dense(A, ov, threads);
  return out;
}

py::array_t<float> gemv(const fm::NMMatrix& A, py::handle x_obj, const py::object& out,
                        int num_threads) {
  const float* x = vector_f32_in(x_obj, "x", A.cols);
  const int threads = threads_arg(num_threads);
  py::array_t<float> y =
      float_out(out, {static_cast<py::ssize_t>(A.rows)}, x, A.cols * sizeof(float), "x");
  float* yp = y.mutable_data();
  py::gil_scoped_release release;
  sf::kernels::nm_gemv(A, x, yp, threads);
  return y;
}

py::array_t<float> gemm(const fm::NMMatrix& A, py::handle X_obj, const py::object& out,
                        int num_threads) {
  const sf::AnyConstMatrix X = matrix_in(X_obj, "X", kF32);
  SF_CHECK_ARG(X.cols == A.cols, "X: expected %zu columns (in_features), got %zu", A.cols, X.cols);
  const int threads = threads_arg(num_threads);
  const size_t x_bytes = ((X.rows - 1) * X.stride + X.cols) * sizeof(float);
  py::array_t<float> Y =
      float_out(out, {static_cast<py::ssize_t>(X.rows), static_cast<py::ssize_t>(A.rows)}, X.data,
                x_bytes, "X");
  sf::MatrixView<float> Yv(Y.mutable_data(), X.rows, A.rows);
  py::gil_scoped_release release;
  sf::kernels::nm_gemm(A, X.as<float>(), Yv, threads);
  return Y;
}

}  // namespace

void register_format_nm(py::module_& m) {
  py::class_<fm::NMMatrix>(m, "NMMatrix",
                           "N:M weights in the execution layout (sparseforge.format.NMTensor).")
      .def_static("from_dense", &from_dense, py::arg("W"), py::arg("n"), py::arg("m"),
                  py::arg("prune"), py::arg("num_threads") = 0)
      .def_static("from_canonical", &from_canonical, py::arg("values"), py::arg("codes"),
                  py::arg("cols"), py::arg("n"), py::arg("m"), py::arg("num_threads") = 0)
      .def_property_readonly("rows", [](const fm::NMMatrix& A) { return A.rows; })
      .def_property_readonly("cols", [](const fm::NMMatrix& A) { return A.cols; })
      .def_property_readonly("n", [](const fm::NMMatrix& A) { return A.n; })
      .def_property_readonly("m", [](const fm::NMMatrix& A) { return A.m; })
      .def_property_readonly("dtype", [](const fm::NMMatrix& A) { return numpy_dtype(A.dtype); })
      .def_property_readonly("nbytes", &fm::NMMatrix::nbytes)
      .def_property_readonly("canonical_nbytes", &fm::NMMatrix::canonical_nbytes)
      .def("to_canonical", &to_canonical, py::arg("num_threads") = 0)
      .def("to_dense", &to_dense, py::arg("num_threads") = 0)
      .def("validate",
           [](const fm::NMMatrix& A) {
             py::gil_scoped_release release;
             fm::nm_validate(A);
           })
      .def("gemv", &gemv, py::arg("x"), py::arg("out") = py::none(), py::arg("num_threads") = 0)
      .def("gemm", &gemm, py::arg("X"), py::arg("out") = py::none(), py::arg("num_threads") = 0);
  m.def("nm_code_row_bytes", &fm::nm_code_row_bytes, py::arg("cols"), py::arg("n"), py::arg("m"));
}

}  // namespace sfpy
