// Activation-sparsity glue: Deja Vu predictor statistics and the closed-form low-rank fit.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/activation/predictor.h"

namespace py = pybind11;
namespace sf = sparseforge;
using sf::activation::PredictorStats;

namespace sfpy {

void register_activation(py::module_& m) {
  py::class_<PredictorStats>(m, "PredictorStats")
      .def(py::init<size_t, size_t>(), py::arg("in_features"), py::arg("out_features"))
      .def(
          "update",
          [](PredictorStats& self, py::handle X_obj, py::handle Y_obj, int num_threads) {
            const sf::ConstMatrixView<float> X = matrix_in(X_obj, "X", kF32).as<float>();
            const sf::ConstMatrixView<float> Y = matrix_in(Y_obj, "Y", kF32).as<float>();
            const int threads = threads_arg(num_threads);
            ObjectLock lock(self.mutex());
            py::gil_scoped_release release;
            self.update(X, Y, threads);
          },
          py::arg("X"), py::arg("Y"), py::arg("num_threads") = 0)
      .def_property_readonly("in_features", &PredictorStats::in_features)
      .def_property_readonly("out_features", &PredictorStats::out_features)
      .def_property_readonly("tokens", locked(&PredictorStats::tokens))
      .def("sums", [](const PredictorStats& self) {
        ObjectLock lock(self.mutex());
        const auto r = static_cast<py::ssize_t>(self.in_features() + 1);
        const auto c = static_cast<py::ssize_t>(self.in_features() + 1 + self.out_features());
        py::array_t<double> out({r, c});
        std::copy(self.sums().begin(), self.sums().end(), out.mutable_data());
        return out;
      });
  m.def(
      "fit_low_rank_predictor",
      [](const PredictorStats& stats, size_t rank, double ridge) {
        sf::activation::LowRankPredictor p;
        {
          ObjectLock lock(stats.mutex());
          py::gil_scoped_release release;
          p = sf::activation::fit_low_rank_predictor(stats, rank, ridge);
        }
        const auto d = static_cast<py::ssize_t>(p.in_features);
        const auto r = static_cast<py::ssize_t>(p.rank);
        const auto h = static_cast<py::ssize_t>(p.out_features);
        py::array_t<float> A({d, r}), a(r), B({r, h});
        std::copy(p.A.begin(), p.A.end(), A.mutable_data());
        std::copy(p.a.begin(), p.a.end(), a.mutable_data());
        std::copy(p.B.begin(), p.B.end(), B.mutable_data());
        return py::make_tuple(A, a, B);
      },
      py::arg("stats"), py::arg("rank"), py::arg("ridge"));
}

}  // namespace sfpy
