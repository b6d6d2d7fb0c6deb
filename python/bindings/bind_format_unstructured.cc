// Bitmap and CSR glue: construction (from dense, from components), read-only component
// views, to_dense, GEMV/GEMM. The matrices live in C++ (BitmapMatrix / CSRMatrix, owned
// by the Python object); component arrays are read-only numpy views into them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/error.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/kernels/unstructured.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sfmt = sparseforge::format;
namespace sk = sparseforge::kernels;

namespace sfpy {
namespace {

std::string shape_text(size_t a, size_t b) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

// A read-only numpy view of `size` elements at `data`, kept alive by `owner`.
py::array readonly_view(const py::dtype& dt, std::vector<py::ssize_t> shape, const void* data,
                        const py::object& owner) {
  py::array a(dt, std::move(shape), {}, data, owner);
  a.attr("setflags")(py::arg("write") = false);
  return a;
}

// A 1-D index array of one integer type (int32 or int64), possibly empty.
template <class I>
std::pair<const I*, size_t> index_in(py::handle obj, const char* name) {
  const Selection s = selection_in(obj, name);
  const bool ok = sizeof(I) == 8 ? s.kind == Selection::kInt64 : s.kind == Selection::kInt32;
  if (!ok) {
    throw sf::DTypeError(
        std::string(name) + ": expected dtype " + (sizeof(I) == 8 ? "int64" : "int32") + ", got " +
        py::str(py::reinterpret_borrow<py::array>(obj).dtype()).cast<std::string>());
  }
  return {static_cast<const I*>(s.data), s.size};
}

// 1-D float values (fp32/fp16/bf16), possibly empty.
FlatArray values_in(py::handle obj) {
  const FlatArray v = flat_in(obj, "values");
  const py::array a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != 1) {
    throw sf::InvalidArgument("values: expected a 1-D array, got " + std::to_string(a.ndim()) +
                              "-D");
  }
  return v;
}

template <class M, class Fn>
py::array gemv_glue(const M& A, py::handle x_obj, const py::object& out, int num_threads, Fn fn) {
  const float* x = vector_f32_in(x_obj, "x", A.cols);
  const int threads = threads_arg(num_threads);
  py::array y;
  float* yp = out_vector(out, A.rows, &y);
  py::gil_scoped_release release;
  fn(A, x, yp, threads);
  return y;
}

template <class M, class Fn>
py::array gemm_glue(const M& A, py::handle X_obj, const py::object& out, int num_threads, Fn fn) {
  const sf::ConstMatrixView<float> X = matrix_in(X_obj, "X", kF32).as<float>();
  if (X.cols != A.cols) {
    throw sf::InvalidArgument("X: expected in_features=" + std::to_string(A.cols) +
                              " columns, got shape " + shape_text(X.rows, X.cols));
  }
  const int threads = threads_arg(num_threads);
  py::array Y;
  const sf::MatrixView<float> Yv = out_matrix(out, X.rows, A.rows, &Y);
  py::gil_scoped_release release;
  fn(A, X, Yv, threads);
  return Y;
}

template <class M>
py::array to_dense_glue(const M& A, int num_threads) {
  const int threads = threads_arg(num_threads);
  py::array out =
      new_array(A.dtype, {static_cast<py::ssize_t>(A.rows), static_cast<py::ssize_t>(A.cols)});
  const sf::AnyMatrix ov = matrix_view(out);
  py::gil_scoped_release release;
  sfmt::to_dense(A, ov, threads);
  return out;
}

template <class M, class C>
void common_methods(C& cls) {
  cls.def_property_readonly("shape", [](const M& A) { return std::make_pair(A.rows, A.cols); })
      .def_property_readonly("dtype", [](const M& A) { return numpy_dtype(A.dtype); })
      .def_property_readonly("nnz", [](const M& A) { return sfmt::nnz(A); })
      .def_property_readonly("nbytes", [](const M& A) { return sfmt::nbytes(A); })
      .def("validate",
           [](const M& A) {
             py::gil_scoped_release release;
             sfmt::validate(A);
           })
      .def("to_dense", &to_dense_glue<M>, py::arg("num_threads") = 0)
      .def_property_readonly("values", [](const py::object& self) {
        const M& A = self.cast<const M&>();
        return readonly_view(numpy_dtype(A.dtype), {static_cast<py::ssize_t>(sfmt::nnz(A))},
                             sfmt::values_data(A), self);
      });
}

std::pair<sf::AnyConstMatrix, const sf::ConstMaskView*> dense_args(py::handle W_obj,
                                                                   const py::object& mask_obj,
                                                                   sf::ConstMaskView* storage) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  if (mask_obj.is_none()) return {W, nullptr};
  *storage = mask_in(mask_obj, "mask", W.rows, W.cols);
  return {W, storage};
}

}  // namespace

void register_format_unstructured(py::module_& m) {
  py::class_<sfmt::BitmapMatrix> bitmap(
      m, "BitmapMatrix",
      "Bitmap + packed values (docs/formats.md). Built by bitmap_from_dense / "
      "bitmap_from_components; arrays are read-only views.");
  common_methods<sfmt::BitmapMatrix>(bitmap);
  bitmap
      .def_property_readonly("bitmap",
                             [](const py::object& self) {
                               const auto& A = self.cast<const sfmt::BitmapMatrix&>();
                               return readonly_view(
                                   py::dtype::of<uint8_t>(),
                                   {static_cast<py::ssize_t>(A.rows),
                                    static_cast<py::ssize_t>(sfmt::bitmap_row_bytes(A.cols))},
                                   A.bitmap.data(), self);
                             })
      .def_property_readonly("row_offsets",
                             [](const py::object& self) {
                               const auto& A = self.cast<const sfmt::BitmapMatrix&>();
                               return readonly_view(py::dtype::of<int64_t>(),
                                                    {static_cast<py::ssize_t>(A.rows + 1)},
                                                    A.row_offsets.data(), self);
                             })
      .def(
          "gemv",
          [](const sfmt::BitmapMatrix& A, py::handle x, const py::object& out, int num_threads) {
            return gemv_glue(A, x, out, num_threads, sk::bitmap_gemv);
          },
          py::arg("x"), py::arg("out") = py::none(), py::arg("num_threads") = 0)
      .def(
          "gemm",
          [](const sfmt::BitmapMatrix& A, py::handle X, const py::object& out, int num_threads) {
            return gemm_glue(A, X, out, num_threads, sk::bitmap_gemm);
          },
          py::arg("X"), py::arg("out") = py::none(), py::arg("num_threads") = 0)
      .def(
          "gemv_sparse_input",
          [](const sfmt::BitmapMatrix& Wt, py::handle x_obj, float threshold, const py::object& out,
             int num_threads) {
            // this matrix is W^T: x has in_features = rows, y out_features = cols
            const float* x = vector_f32_in(x_obj, "x", Wt.rows);
            const int threads = threads_arg(num_threads);
            py::array y;
            float* yp = out_vector(out, Wt.cols, &y);
            sk::SparseInputInfo info;
            {
              py::gil_scoped_release release;
              info = sk::bitmap_gemv_sparse_input(Wt, x, threshold, yp, threads);
            }
            return py::make_tuple(y, info.active);
          },
          py::arg("x"), py::arg("threshold"), py::arg("out") = py::none(),
          py::arg("num_threads") = 0);

  py::class_<sfmt::CSRMatrix> csr(m, "CSRMatrix",
                                  "CSR with int64 indptr and int32 indices (docs/formats.md). "
                                  "Built by csr_from_dense / csr_from_components.");
  common_methods<sfmt::CSRMatrix>(csr);
  csr.def_property_readonly("indptr",
                            [](const py::object& self) {
                              const auto& A = self.cast<const sfmt::CSRMatrix&>();
                              return readonly_view(py::dtype::of<int64_t>(),
                                                   {static_cast<py::ssize_t>(A.rows + 1)},
                                                   A.indptr.data(), self);
                            })
      .def_property_readonly("indices",
                             [](const py::object& self) {
                               const auto& A = self.cast<const sfmt::CSRMatrix&>();
                               return readonly_view(py::dtype::of<int32_t>(),
                                                    {static_cast<py::ssize_t>(sfmt::nnz(A))},
                                                    A.indices.data(), self);
                             })
      .def(
          "gemv",
          [](const sfmt::CSRMatrix& A, py::handle x, const py::object& out, int num_threads) {
            return gemv_glue(A, x, out, num_threads, sk::csr_gemv);
          },
          py::arg("x"), py::arg("out") = py::none(), py::arg("num_threads") = 0)
      .def(
          "gemm",
          [](const sfmt::CSRMatrix& A, py::handle X, const py::object& out, int num_threads) {
            return gemm_glue(A, X, out, num_threads, sk::csr_gemm);
          },
          py::arg("X"), py::arg("out") = py::none(), py::arg("num_threads") = 0);

  m.def(
      "bitmap_from_dense",
      [](py::handle W_obj, const py::object& mask, int num_threads) {
        sf::ConstMaskView storage;
        const auto args = dense_args(W_obj, mask, &storage);
        const int threads = threads_arg(num_threads);
        py::gil_scoped_release release;
        return args.second ? sfmt::bitmap_from_dense(args.first, *args.second, threads)
                           : sfmt::bitmap_from_dense(args.first, threads);
      },
      py::arg("W"), py::arg("mask") = py::none(), py::arg("num_threads") = 0);
  m.def(
      "csr_from_dense",
      [](py::handle W_obj, const py::object& mask, int num_threads) {
        sf::ConstMaskView storage;
        const auto args = dense_args(W_obj, mask, &storage);
        const int threads = threads_arg(num_threads);
        py::gil_scoped_release release;
        return args.second ? sfmt::csr_from_dense(args.first, *args.second, threads)
                           : sfmt::csr_from_dense(args.first, threads);
      },
      py::arg("W"), py::arg("mask") = py::none(), py::arg("num_threads") = 0);
  m.def(
      "bitmap_from_components",
      [](size_t rows, size_t cols, py::handle bitmap_obj, py::handle values_obj,
         const py::object& row_offsets_obj) {
        const sf::ConstMatrixView<uint8_t> bm = u8_matrix_in(bitmap_obj, "bitmap");
        const size_t rb = sfmt::bitmap_row_bytes(cols);
        if (bm.rows != rows || bm.cols != rb) {
          throw sf::InvalidArgument("bitmap: expected shape " + shape_text(rows, rb) +
                                    " (rows, ceil(cols / 8)), got " + shape_text(bm.rows, bm.cols));
        }
        const FlatArray v = values_in(values_obj);
        std::vector<int64_t> offsets;
        if (!row_offsets_obj.is_none()) {
          const auto ro = index_in<int64_t>(row_offsets_obj, "row_offsets");
          offsets.assign(ro.first, ro.first + ro.second);
          if (offsets.empty()) {
            throw sf::InvalidArgument("row_offsets: expected " + std::to_string(rows + 1) +
                                      " entries (rows + 1), got 0");
          }
        }
        std::vector<uint8_t> bits(rows * rb);
        for (size_t r = 0; r < rows; ++r) {
          std::copy(bm.row(r), bm.row(r) + rb, bits.begin() + static_cast<std::ptrdiff_t>(r * rb));
        }
        py::gil_scoped_release release;
        return sfmt::bitmap_from_components(rows, cols, v.dtype, std::move(bits), v.data, v.size,
                                            std::move(offsets));
      },
      py::arg("rows"), py::arg("cols"), py::arg("bitmap"), py::arg("values"),
      py::arg("row_offsets") = py::none());
  m.def(
      "csr_from_components",
      [](size_t rows, size_t cols, py::handle indptr_obj, py::handle indices_obj,
         py::handle values_obj) {
        const auto ip = index_in<int64_t>(indptr_obj, "indptr");
        const auto ix = index_in<int32_t>(indices_obj, "indices");
        const FlatArray v = values_in(values_obj);
        std::vector<int64_t> indptr(ip.first, ip.first + ip.second);
        py::gil_scoped_release release;
        return sfmt::csr_from_components(rows, cols, v.dtype, std::move(indptr), ix.first,
                                         ix.second, v.data, v.size);
      },
      py::arg("rows"), py::arg("cols"), py::arg("indptr"), py::arg("indices"), py::arg("values"));
}

}  // namespace sfpy
