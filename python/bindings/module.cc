// sparseforge._core: the table of contents. One register_<area>() per area; every
// binding is thin glue (numpy_view.h gate -> release the GIL -> core call).
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/error.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "sparseforge's compiled core. Use the sparseforge package, not this module.";
  m.attr("__version__") = SF_VERSION;
  sfpy::register_errors(m);
  sfpy::register_core(m);
  sfpy::register_calib(m);
  sfpy::register_prune(m);
  sfpy::register_prune_methods(m);
  sfpy::register_format_nm(m);
  sfpy::register_format_unstructured(m);
  sfpy::register_kernels(m);
  sfpy::register_kvcache(m);
  sfpy::register_kvpolicy(m);
  sfpy::register_models(m);
  sfpy::register_moe(m);
  sfpy::register_activation(m);
  sfpy::register_runtime(m);
}
