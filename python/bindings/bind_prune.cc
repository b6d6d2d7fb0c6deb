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
#include "sparseforge/prune/obs.h"
#include "sparseforge/prune/sparsegpt.h"
#include "sparseforge/prune/wanda.h"

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

// --- one-shot methods: Wanda, SparseGPT, OBS, OBD, reconstruction ----------------------

namespace sfpy {
namespace {

sp::NMPattern pattern_arg(int n, int m) { return sp::NMPattern{n, m}; }

py::array new_like(const sf::AnyConstMatrix& W) {
  return new_array(W.dtype, {static_cast<py::ssize_t>(W.rows), static_cast<py::ssize_t>(W.cols)});
}

py::dict obs_info(const sp::ObsResult& r) {
  py::dict d;
  d["percdamp_used"] = r.percdamp_used;
  d["damp"] = r.damp;
  d["attempts"] = r.attempts;
  d["dead_columns"] = r.dead_columns;
  d["loss"] = r.loss;
  py::array_t<double> rl(static_cast<py::ssize_t>(r.row_loss.size()));
  std::copy(r.row_loss.begin(), r.row_loss.end(), rl.mutable_data());
  d["row_loss"] = rl;
  return d;
}

}  // namespace

void register_prune_methods(py::module_& m) {
  m.def(
      "wanda_mask",
      [](py::handle W_obj, py::handle norms_obj, double sparsity, int n, int mm, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const float* norms = vector_f32_in(norms_obj, "col_norms", W.cols);
        const int threads = threads_arg(num_threads);
        py::array_t<bool> keep = new_mask(W.rows, W.cols);
        sf::MaskView kv = mask_view(keep);
        py::gil_scoped_release release;
        if (mm > 0) {
          sp::wanda_nm_mask(W, norms, pattern_arg(n, mm), kv, threads);
        } else {
          sp::wanda_mask(W, norms, sparsity, kv, threads);
        }
        return keep;
      },
      py::arg("W"), py::arg("col_norms"), py::arg("sparsity"), py::arg("n"), py::arg("m"),
      py::arg("num_threads") = 0);
  m.def(
      "wanda_variant_mask",
      [](py::handle W_obj, py::handle norms_obj, double sparsity, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const float* norms = vector_f32_in(norms_obj, "col_norms", W.cols);
        const int threads = threads_arg(num_threads);
        py::array_t<bool> keep = new_mask(W.rows, W.cols);
        sf::MaskView kv = mask_view(keep);
        sp::WandaVariantInfo info;
        {
          py::gil_scoped_release release;
          info = sp::wanda_variant_mask(W, norms, sparsity, kv, threads);
        }
        return py::make_tuple(keep, info.alpha, info.iterations, info.sparsity);
      },
      py::arg("W"), py::arg("col_norms"), py::arg("sparsity"), py::arg("num_threads") = 0);
  m.def(
      "sparsegpt",
      [](py::handle W_obj, py::handle H_obj, double sparsity, int n, int mm, size_t block_size,
         double percdamp, double max_percdamp, bool float64, bool factor_float32, bool exact_count,
         py::object mask, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const bool factored = py::isinstance<sp::HessianFactor>(H_obj);
        const sp::HessianFactor* F = factored ? &H_obj.cast<const sp::HessianFactor&>() : nullptr;
        const sp::HessianView H = factored ? sp::HessianView{} : hessian_in(H_obj, "H");
        sp::SparseGPTOptions o;
        o.sparsity = sparsity;
        o.pattern = pattern_arg(n, mm);
        o.block_size = block_size;
        o.percdamp = percdamp;
        o.max_percdamp = max_percdamp;
        o.precision = float64 ? sp::Precision::kFloat64 : sp::Precision::kFloat32;
        o.factor_precision = factor_float32 ? sp::Precision::kFloat32 : sp::Precision::kFloat64;
        o.block_count = exact_count ? sp::BlockCount::kExact : sp::BlockCount::kReference;
        const int threads = threads_arg(num_threads);
        py::array out = new_like(W);
        sf::AnyMatrix ov = matrix_view(out);
        py::array_t<bool> keep = new_mask(W.rows, W.cols);
        sf::MaskView kv = mask_view(keep);
        if (!mask.is_none()) {  // reconstruction: the given mask, copied into `keep`
          const sf::ConstMaskView given = mask_in(mask, "mask", W.rows, W.cols);
          for (size_t r = 0; r < W.rows; ++r) {
            std::copy(given.row(r), given.row(r) + W.cols, kv.row(r));
          }
          o.mask_given = true;
        }
        sp::SparseGPTResult r;
        {
          py::gil_scoped_release release;
          r = factored ? sp::sparsegpt(W, *F, o, ov, kv, threads)
                       : sp::sparsegpt(W, H, o, ov, kv, threads);
        }
        py::dict d;
        d["percdamp_used"] = r.percdamp_used;
        d["damp"] = r.damp;
        d["attempts"] = r.attempts;
        d["dead_columns"] = r.dead_columns;
        d["loss"] = r.loss;
        py::array_t<double> rl(static_cast<py::ssize_t>(r.row_loss.size()));
        std::copy(r.row_loss.begin(), r.row_loss.end(), rl.mutable_data());
        d["row_loss"] = rl;
        return py::make_tuple(out, keep, d);
      },
      py::arg("W"), py::arg("H"), py::arg("sparsity"), py::arg("n"), py::arg("m"),
      py::arg("block_size"), py::arg("percdamp"), py::arg("max_percdamp"), py::arg("float64"),
      py::arg("factor_float32"), py::arg("exact_count"), py::arg("mask"),
      py::arg("num_threads") = 0);
  py::class_<sp::HessianFactor>(m, "HessianFactor")
      .def_readonly("n", &sp::HessianFactor::n)
      .def_readonly("percdamp", &sp::HessianFactor::percdamp)
      .def_readonly("max_percdamp", &sp::HessianFactor::max_percdamp)
      .def_readonly("percdamp_used", &sp::HessianFactor::percdamp_used)
      .def_readonly("damp", &sp::HessianFactor::damp)
      .def_readonly("attempts", &sp::HessianFactor::attempts)
      .def_property_readonly(
          "float64",
          [](const sp::HessianFactor& f) { return f.precision == sp::Precision::kFloat64; })
      .def_property_readonly(
          "factor_float32",
          [](const sp::HessianFactor& f) { return f.factor_precision == sp::Precision::kFloat32; })
      .def_property_readonly("dead_columns",
                             [](const sp::HessianFactor& f) {
                               std::vector<size_t> d;
                               for (size_t j = 0; j < f.dead.size(); ++j) {
                                 if (f.dead[j]) d.push_back(j);
                               }
                               return d;
                             })
      .def_property_readonly("nbytes", [](const sp::HessianFactor& f) {
        return f.U32.size() * sizeof(float) + f.U64.size() * sizeof(double) + f.dead.size();
      });
  m.def(
      "factor_hessian",
      [](py::handle H_obj, double percdamp, double max_percdamp, bool factor_float32, bool float64,
         int num_threads) {
        const sp::HessianView H = hessian_in(H_obj, "H");
        const int threads = threads_arg(num_threads);
        py::gil_scoped_release release;
        return sp::factor_hessian(
            H, percdamp, max_percdamp,
            factor_float32 ? sp::Precision::kFloat32 : sp::Precision::kFloat64,
            float64 ? sp::Precision::kFloat64 : sp::Precision::kFloat32, threads);
      },
      py::arg("H"), py::arg("percdamp"), py::arg("max_percdamp"), py::arg("factor_float32"),
      py::arg("float64"), py::arg("num_threads") = 0);
  m.def(
      "reconstruction_error",
      [](py::handle W_obj, py::handle What_obj, py::handle H_obj, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const sf::AnyConstMatrix What = matrix_in(What_obj, "W_hat");
        const sp::HessianView H = hessian_in(H_obj, "H");
        const int threads = threads_arg(num_threads);
        py::gil_scoped_release release;
        return sp::reconstruction_error(W, What, H, threads);
      },
      py::arg("W"), py::arg("W_hat"), py::arg("H"), py::arg("num_threads") = 0);
  m.def(
      "obs",
      [](py::handle W_obj, py::handle H_obj, double sparsity, int n, int mm, double percdamp,
         double max_percdamp, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const sp::HessianView H = hessian_in(H_obj, "H");
        const int threads = threads_arg(num_threads);
        py::array out = new_like(W);
        sf::AnyMatrix ov = matrix_view(out);
        py::array_t<bool> keep = new_mask(W.rows, W.cols);
        sf::MaskView kv = mask_view(keep);
        sp::ObsResult r;
        {
          py::gil_scoped_release release;
          r = sp::obs(W, H, sparsity, pattern_arg(n, mm), percdamp, max_percdamp, ov, kv, threads);
        }
        return py::make_tuple(out, keep, obs_info(r));
      },
      py::arg("W"), py::arg("H"), py::arg("sparsity"), py::arg("n"), py::arg("m"),
      py::arg("percdamp"), py::arg("max_percdamp"), py::arg("num_threads") = 0);
  m.def(
      "obd_mask",
      [](py::handle W_obj, py::handle H_obj, double sparsity, int n, int mm, int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const sp::HessianView H = hessian_in(H_obj, "H");
        const int threads = threads_arg(num_threads);
        py::array_t<bool> keep = new_mask(W.rows, W.cols);
        sf::MaskView kv = mask_view(keep);
        py::gil_scoped_release release;
        sp::obd_mask(W, H, sparsity, pattern_arg(n, mm), kv, threads);
        return keep;
      },
      py::arg("W"), py::arg("H"), py::arg("sparsity"), py::arg("n"), py::arg("m"),
      py::arg("num_threads") = 0);
  m.def(
      "reconstruct_exact",
      [](py::handle W_obj, py::handle H_obj, py::handle mask_obj, double percdamp,
         int num_threads) {
        const sf::AnyConstMatrix W = matrix_in(W_obj, "W");
        const sp::HessianView H = hessian_in(H_obj, "H");
        const sf::ConstMaskView keep = mask_in(mask_obj, "mask", W.rows, W.cols);
        const int threads = threads_arg(num_threads);
        py::array out = new_like(W);
        sf::AnyMatrix ov = matrix_view(out);
        sp::ObsResult r;
        {
          py::gil_scoped_release release;
          r = sp::reconstruct_exact(W, H, keep, percdamp, ov, threads);
        }
        return py::make_tuple(out, obs_info(r));
      },
      py::arg("W"), py::arg("H"), py::arg("mask"), py::arg("percdamp"), py::arg("num_threads") = 0);
}

}  // namespace sfpy
