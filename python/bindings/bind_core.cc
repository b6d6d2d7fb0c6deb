// Core glue: errors, build info, SIMD level, dtype casts, the gate's test hook.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <Python.h>

#include <exception>
#include <new>
#include <string>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/core/build_info.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace py = pybind11;
namespace sf = sparseforge;

namespace sfpy {

int threads_arg(int num_threads) {
  if (num_threads < 0) {
    throw sf::InvalidArgument("num_threads: expected None or a positive integer, got " +
                              std::to_string(num_threads));
  }
  return sf::resolve_num_threads(num_threads);
}

void register_errors(py::module_& m) {
  // DTypeError is both a TypeError and a ValueError (like numpy's AxisError): code that
  // catches either sees a wrong dtype.
  static PyObject* dtype_error = PyErr_NewExceptionWithDoc(
      "sparseforge._core.DTypeError",
      "An array has the wrong dtype. Subclass of both TypeError and ValueError.",
      py::make_tuple(py::handle(PyExc_TypeError), py::handle(PyExc_ValueError)).release().ptr(),
      nullptr);
  static PyObject* numerical_error = PyErr_NewExceptionWithDoc(
      "sparseforge._core.NumericalError",
      "A numerical method failed (e.g. a Hessian stayed indefinite after the allowed damping); "
      "the message carries the diagnostics.",
      PyExc_ArithmeticError, nullptr);
  m.attr("DTypeError") = py::handle(dtype_error);
  m.attr("NumericalError") = py::handle(numerical_error);

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const sf::DTypeError& e) {
      PyErr_SetString(dtype_error, e.what());
    } catch (const sf::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const sf::NumericalError& e) {
      PyErr_SetString(numerical_error, e.what());
    } catch (const sf::InternalError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
}

namespace {

py::array cast_array(py::handle src_obj, py::handle dtype_obj, int num_threads) {
  const FlatArray src = flat_in(src_obj, "x");
  const sf::DType to = parse_dtype(dtype_obj, "dtype");
  const int threads = threads_arg(num_threads);
  const py::array src_arr = py::reinterpret_borrow<py::array>(src_obj);
  std::vector<py::ssize_t> shape(src_arr.shape(), src_arr.shape() + src_arr.ndim());
  py::array out = new_array(to, shape);
  void* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    const size_t chunk = 1 << 16;
    const size_t chunks = (src.size + chunk - 1) / chunk;
    sf::parallel_for(chunks, threads, [&](size_t c0, size_t c1) {
      std::vector<float> tmp;
      for (size_t c = c0; c < c1; ++c) {
        const size_t b = c * chunk, n = std::min(src.size, b + chunk) - b;
        const float* f32 = nullptr;
        if (src.dtype == sf::DType::kF32) {
          f32 = static_cast<const float*>(src.data) + b;
        } else {
          tmp.resize(n);
          if (src.dtype == sf::DType::kF16) {
            sf::convert(static_cast<const sf::Float16*>(src.data) + b, tmp.data(), n);
          } else {
            sf::convert(static_cast<const sf::BFloat16*>(src.data) + b, tmp.data(), n);
          }
          f32 = tmp.data();
        }
        if (to == sf::DType::kF32) {
          std::copy(f32, f32 + n, static_cast<float*>(dst) + b);
        } else if (to == sf::DType::kF16) {
          sf::convert(f32, static_cast<sf::Float16*>(dst) + b, n);
        } else {
          sf::convert(f32, static_cast<sf::BFloat16*>(dst) + b, n);
        }
      }
    });
  }
  return out;
}

}  // namespace

void register_core(py::module_& m) {
  m.def(
      "build_info",
      [] {
        py::dict d;
        for (const auto& kv : sf::build_info()) d[py::str(kv.first)] = py::str(kv.second);
        d["pybind11"] = py::str(std::to_string(PYBIND11_VERSION_MAJOR) + "." +
                                std::to_string(PYBIND11_VERSION_MINOR) + "." +
                                std::to_string(PYBIND11_VERSION_PATCH));
        return d;
      },
      "How this copy was built: compiler, flags, SIMD levels, OpenMP, Eigen.");
  m.def("simd_level", [] { return std::string(sf::simd_level_name(sf::simd_level())); });
  m.def("detected_simd_level",
        [] { return std::string(sf::simd_level_name(sf::detected_simd_level())); });
  m.def(
      "set_simd_level",
      [](const std::string& level) { sf::set_simd_level(sf::parse_simd_level(level)); },
      py::arg("level"));
  m.def(
      "default_num_threads", [] { return sf::resolve_num_threads(0); },
      "Threads used when num_threads is None (OMP_NUM_THREADS, else all cores).");
  m.def("cast", &cast_array, py::arg("x"), py::arg("dtype"), py::arg("num_threads") = 0,
        "Convert a C-contiguous fp32/fp16/bf16 array to another of these dtypes (round to "
        "nearest even). Returns a new array.");
  m.def(
      "_raise_for_test",
      [](const std::string& kind) {
        if (kind == "invalid_argument") SF_THROW(sf::InvalidArgument, "x: bad value %d", 1);
        if (kind == "dtype") SF_THROW(sf::DTypeError, "x: expected float32, got %s", "int8");
        if (kind == "numerical") SF_THROW(sf::NumericalError, "H: not positive definite (%g)", 0.5);
        if (kind == "internal") SF_CHECK(kind == "never");
        if (kind == "bad_alloc") throw std::bad_alloc();
        throw sf::InvalidArgument("kind: unknown '" + kind + "'");
      },
      py::arg("kind"),
      "Test hook: throws the C++ exception of `kind` so the Python mapping can be checked.");
  m.def(
      "_gate_address",
      [](py::handle a, bool writeable) -> size_t {
        if (writeable) return reinterpret_cast<size_t>(matrix_inout(a, "a").data);
        return reinterpret_cast<size_t>(matrix_in(a, "a").data);
      },
      py::arg("a"), py::arg("writeable") = false,
      "Test hook: the data pointer the core would receive for `a` (no copy is ever made).");
}

}  // namespace sfpy
