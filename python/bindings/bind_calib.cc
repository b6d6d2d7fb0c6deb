// Calibration glue: LayerStats as a Python class (the facade adds save/load and docs).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/calib/layer_stats.h"

namespace py = pybind11;
namespace sf = sparseforge;
using sf::calib::LayerStats;

namespace sfpy {

void register_calib(py::module_& m) {
  py::class_<LayerStats>(m, "LayerStats")
      .def(py::init<size_t, bool, bool>(), py::arg("in_features"), py::arg("hessian") = true,
           py::arg("float64") = false)
      .def(
          "update",
          [](LayerStats& self, py::handle X_obj, int num_threads) {
            const sf::AnyConstMatrix X = matrix_in(X_obj, "X");
            const int threads = threads_arg(num_threads);
            ObjectLock lock(self.mutex());
            py::gil_scoped_release release;
            self.update(X, threads);
          },
          py::arg("X"), py::arg("num_threads") = 0)
      .def(
          "merged",
          [](const LayerStats& self, const LayerStats& other) {
            // Both locks in address order (no deadlock against other.merged(self)).
            const LayerStats* first = &self < &other ? &self : &other;
            const LayerStats* second = &self < &other ? &other : &self;
            ObjectLock lock1(first->mutex());
            std::unique_ptr<ObjectLock> lock2;
            if (second != first) lock2 = std::make_unique<ObjectLock>(second->mutex());
            py::gil_scoped_release release;
            return self.merged(other);
          },
          py::arg("other"))
      .def_property_readonly("in_features", &LayerStats::in_features)
      .def_property_readonly("has_hessian", &LayerStats::has_hessian)
      .def_property_readonly("float64", &LayerStats::float64)
      .def_property_readonly("tokens", locked(&LayerStats::tokens))
      .def("col_norms",
           [](const LayerStats& self) {
             ObjectLock lock(self.mutex());
             py::array_t<float> out(static_cast<py::ssize_t>(self.in_features()));
             self.col_norms(out.mutable_data());
             return out;
           })
      .def("sum_squares",
           [](const LayerStats& self) {
             ObjectLock lock(self.mutex());
             py::array_t<double> out(static_cast<py::ssize_t>(self.in_features()));
             std::copy(self.sum_squares().begin(), self.sum_squares().end(), out.mutable_data());
             return out;
           })
      .def("hessian",
           [](const LayerStats& self) {
             const auto c = static_cast<py::ssize_t>(self.in_features());
             py::array_t<double> out({c, c});
             double* dst = out.mutable_data();
             ObjectLock lock(self.mutex());
             py::gil_scoped_release release;
             self.hessian(dst);
             return out;
           })
      .def("hessian_diag",
           [](const LayerStats& self) {
             py::array_t<double> out(static_cast<py::ssize_t>(self.in_features()));
             self.hessian_diag(out.mutable_data());
             return out;
           })
      .def("xtx_lower",
           [](const LayerStats& self) {
             const auto c = static_cast<py::ssize_t>(self.in_features());
             ObjectLock lock(self.mutex());
             py::array_t<double> out(self.has_hessian() ? std::vector<py::ssize_t>{c, c}
                                                        : std::vector<py::ssize_t>{0, c});
             std::copy(self.xtx_lower().begin(), self.xtx_lower().end(), out.mutable_data());
             return out;
           })
      .def_static(
          "from_state",
          [](size_t in_features, bool hessian, bool float64, uint64_t tokens,
             py::array_t<double> sum_squares, py::array_t<double> xtx_lower) {
            std::vector<double> s(sum_squares.data(), sum_squares.data() + sum_squares.size());
            std::vector<double> x(xtx_lower.data(), xtx_lower.data() + xtx_lower.size());
            return LayerStats::from_state(in_features, hessian, float64, tokens, std::move(s),
                                          std::move(x));
          },
          py::arg("in_features"), py::arg("hessian"), py::arg("float64"), py::arg("tokens"),
          py::arg("sum_squares"), py::arg("xtx_lower"));
}

}  // namespace sfpy
