// sparseforge._core: the table of contents. One submodule per C++ area, filled by the
// register_<area>() of python/bindings/bind_<area>.cc; every binding is thin glue (numpy_view.h
// gate -> release the GIL -> core call). Each submodule has its stub in
// python/sparseforge/_core/<area>.pyi. The exception types live at the top (_core.DTypeError,
// _core.NumericalError): every area raises them.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/error.h"

namespace py = pybind11;

namespace {

// m.<name>, registered in sys.modules so that `import sparseforge._core.<name>` and
// `from sparseforge._core import <name>` both work (mypy.stubtest imports it by name).
py::module_ area(py::module_& m, const char* name, const char* doc) {
  py::module_ sub = m.def_submodule(name, doc);
  py::module_::import("sys").attr("modules")[py::str(std::string("sparseforge._core.") + name)] =
      sub;
  return sub;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "sparseforge's compiled core. Use the sparseforge package, not this module.";
  m.attr("__version__") = SF_VERSION;
  sfpy::register_errors(m);

  py::module_ core = area(m, "core", "Build info, SIMD level, threads, dtype casts.");
  sfpy::register_core(core);
  py::module_ calib = area(m, "calib", "Streaming calibration statistics (LayerStats).");
  sfpy::register_calib(calib);
  py::module_ prune = area(m, "prune", "Masks, magnitude, Wanda, SparseGPT, OBS, OBD.");
  sfpy::register_prune(prune);
  sfpy::register_prune_methods(prune);
  py::module_ format = area(m, "format", "N:M, bitmap and CSR compressed tensors.");
  sfpy::register_format_nm(format);
  sfpy::register_format_unstructured(format);
  py::module_ kernels = area(m, "kernels", "Dense and sparse GEMV/GEMM, sparse SwiGLU.");
  sfpy::register_kernels(kernels);
  py::module_ kvcache = area(m, "kvcache", "Paged KV cache, decode attention, Quest, RoPE.");
  sfpy::register_kvcache(kvcache);
  sfpy::register_kvpolicy(kvcache);
  py::module_ models = area(m, "models", "Forward ops: RMSNorm, RoPE, attention, SwiGLU gate.");
  sfpy::register_models(models);
  py::module_ moe = area(m, "moe", "MoE routing, capacity, dispatch/combine, losses.");
  sfpy::register_moe(moe);
  py::module_ activation = area(m, "activation", "Deja Vu predictor statistics and fit.");
  sfpy::register_activation(activation);
  py::module_ runtime = area(m, "runtime", "RuntimeModel, RuntimeSession: the decode loop.");
  sfpy::register_runtime(runtime);
}
