// Registration functions, one per area (python/bindings/bind_<area>.cc).
#pragma once

#include <pybind11/pybind11.h>

namespace sfpy {

void register_errors(pybind11::module_& m);         // exception types and the C++ -> Python mapping
void register_core(pybind11::module_& m);           // build info, SIMD level, threads, dtype casts
void register_calib(pybind11::module_& m);          // LayerStats
void register_prune(pybind11::module_& m);          // masks, magnitude pruning, N:M checks
void register_prune_methods(pybind11::module_& m);  // Wanda, SparseGPT, OBS, OBD, reconstruct
void register_format_nm(pybind11::module_& m);      // NMTensor (bind_format_nm.cc)
void register_format_unstructured(
    pybind11::module_& m);                       // Bitmap/CSR (bind_format_unstructured.cc)
void register_kernels(pybind11::module_& m);     // dense and activation-sparse kernels
void register_models(pybind11::module_& m);      // forward ops: RMSNorm, RoPE, attention
void register_kvcache(pybind11::module_& m);     // PagedKVCache, decode attention, Quest
void register_moe(pybind11::module_& m);         // MoE routing, capacity, dispatch/combine, losses
void register_activation(pybind11::module_& m);  // Deja Vu predictor statistics and fit
void register_runtime(pybind11::module_& m);     // RuntimeModel, RuntimeSession: the decode loop

// num_threads from Python: 0 means the default; negative is an error.
int threads_arg(int num_threads);

}  // namespace sfpy
