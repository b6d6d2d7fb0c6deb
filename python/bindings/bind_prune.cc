// Pruning glue: masks, magnitude pruning (row, layer, global, N:M, block), N:M checks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "numpy_view.h"
#include "sparseforge/prune/magnitude.h"
#include "sparseforge/prune/mask.h"

namespace py = pybind11;
namespace sf = sparseforge;
namespace sp = sparseforge::prune;

namespace sfpy {
namespace {

py::array_t<bool> magnitude_mask(py::handle W_obj, double sparsity, const std::string& scope,
                                 int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const sp::Scope sc = sp::parse_scope(scope);
  const int threads = threads_arg(num_threads);
  py::array_t<bool> keep = new_mask(W.rows, W.cols);
  sf::MaskView kv = mask_view(keep);
  py::gil_scoped_release release;
  sp::magnitude_mask(W, sparsity, sc, kv, threads);
  return keep;
}

py::array_t<bool> magnitude_nm_mask(py::handle W_obj, int n, int m, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const int threads = threads_arg(num_threads);
  py::array_t<bool> keep = new_mask(W.rows, W.cols);
  sf::MaskView kv = mask_view(keep);
  py::gil_scoped_release release;
  sp::magnitude_nm_mask(W, sp::NMPattern{n, m}, kv, threads);
  return keep;
}

py::array_t<bool> magnitude_block_mask(py::handle W_obj, double sparsity, size_t block_rows,
                                       size_t block_cols, const std::string& scope,
                                       int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const sp::Scope sc = sp::parse_scope(scope);
  const int threads = threads_arg(num_threads);
  py::array_t<bool> keep = new_mask(W.rows, W.cols);
  sf::MaskView kv = mask_view(keep);
  py::gil_scoped_release release;
  sp::magnitude_block_mask(W, sparsity, block_rows, block_cols, sc, kv, threads);
  return keep;
}

py::list magnitude_global_mask(const py::sequence& weights, double sparsity, int num_threads) {
  std::vector<sf::AnyConstMatrix> Ws;
  std::vector<py::array_t<bool>> keeps;
  std::vector<sf::MaskView> views;
  const size_t count = py::len(weights);
  for (size_t i = 0; i < count; ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    Ws.push_back(matrix_in(weights[i], name.c_str()));
    keeps.push_back(new_mask(Ws.back().rows, Ws.back().cols));
    views.push_back(mask_view(keeps.back()));
  }
  const int threads = threads_arg(num_threads);
  {
    py::gil_scoped_release release;
    sp::magnitude_global_mask(Ws, sparsity, views, threads);
  }
  py::list out;
  for (auto& k : keeps) out.append(k);
  return out;
}

void apply_mask_inplace(py::handle W_obj, py::handle mask_obj, int num_threads) {
  const sf::AnyMatrix W = matrix_inout(W_obj, "W");
  const sf::ConstMaskView keep = mask_in(mask_obj, "mask", W.rows, W.cols);
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  sp::apply_mask(W, keep, threads);
}

std::pair<py::array, size_t> masked_copy(py::handle W_obj, py::handle mask_obj, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const sf::ConstMaskView keep = mask_in(mask_obj, "mask", W.rows, W.cols);
  const int threads = threads_arg(num_threads);
  py::array out =
      new_array(W.dtype, {static_cast<py::ssize_t>(W.rows), static_cast<py::ssize_t>(W.cols)});
  const sf::AnyMatrix ov = matrix_view(out);
  size_t zeros;
  {
    py::gil_scoped_release release;
    zeros = sp::masked_copy(W, keep, ov, threads);
  }
  return {out, zeros};
}

size_t count_zeros(py::handle W_obj, int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  return sp::count_zeros(W, threads);
}

std::tuple<size_t, size_t, std::vector<std::pair<size_t, size_t>>> nm_violations(py::handle W_obj,
                                                                                 int n, int m,
                                                                                 size_t max_report,
                                                                                 int num_threads) {
  const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
  const int threads = threads_arg(num_threads);
  py::gil_scoped_release release;
  sp::NMViolations v = sp::nm_violations(W, sp::NMPattern{n, m}, max_report, threads);
  return {v.groups, v.violating, std::move(v.first)};
}

}  // namespace

void register_prune(py::module_& m) {
  m.def("magnitude_mask", &magnitude_mask, py::arg("W"), py::arg("sparsity"), py::arg("scope"),
        py::arg("num_threads") = 0);
  m.def("magnitude_nm_mask", &magnitude_nm_mask, py::arg("W"), py::arg("n"), py::arg("m"),
        py::arg("num_threads") = 0);
  m.def("magnitude_block_mask", &magnitude_block_mask, py::arg("W"), py::arg("sparsity"),
        py::arg("block_rows"), py::arg("block_cols"), py::arg("scope"), py::arg("num_threads") = 0);
  m.def("magnitude_global_mask", &magnitude_global_mask, py::arg("weights"), py::arg("sparsity"),
        py::arg("num_threads") = 0);
  m.def("apply_mask_", &apply_mask_inplace, py::arg("W"), py::arg("mask"),
        py::arg("num_threads") = 0);
  m.def("masked_copy", &masked_copy, py::arg("W"), py::arg("mask"), py::arg("num_threads") = 0,
        "(W where mask else +0.0, number of zeros in it): a new C-contiguous array.");
  m.def("count_zeros", &count_zeros, py::arg("W"), py::arg("num_threads") = 0);
  m.def("nm_violations", &nm_violations, py::arg("W"), py::arg("n"), py::arg("m"),
        py::arg("max_report"), py::arg("num_threads") = 0);
  m.def(
      "parse_nm",
      [](const std::string& text) {
        const sp::NMPattern p = sp::parse_nm(text);
        return std::make_pair(p.n, p.m);
      },
      py::arg("pattern"));
}

}  // namespace sfpy
