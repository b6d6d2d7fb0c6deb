// Registration functions, one per area (python/bindings/bind_<area>.cc).
#pragma once

#include <pybind11/pybind11.h>

#include <mutex>

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
void register_kvpolicy(pybind11::module_& m);    // KV policies and PolicyCache (kvcache/policy.h)
void register_moe(pybind11::module_& m);         // MoE routing, capacity, dispatch/combine, losses
void register_activation(pybind11::module_& m);  // Deja Vu predictor statistics and fit
void register_runtime(pybind11::module_& m);     // RuntimeModel, RuntimeSession: the decode loop

// num_threads from Python: 0 means the default; negative is an error.
int threads_arg(int num_threads);

// Holds a shared object's mutex (core/object_mutex.h) for the rest of the scope: every
// method of a mutable core object that Python can share between threads runs under it, the
// sizing of its outputs included. Waits with the GIL released (a waiter holding the GIL
// would deadlock against a holder that needs the GIL back); a gil_scoped_release declared
// after the lock ends first, so the holder takes the GIL back while still holding the lock,
// which is safe because no thread ever waits for the lock while holding the GIL.
class ObjectLock {
 public:
  explicit ObjectLock(std::mutex& mu) : lock_(mu, std::try_to_lock) {
    if (!lock_.owns_lock()) {
      pybind11::gil_scoped_release nogil;
      lock_.lock();
    }
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

// A member function wrapped to run under the object's lock (for .def of plain methods).
template <class C, class R, class... A>
auto locked(R (C::*f)(A...)) {
  return [f](C& c, A... a) -> R {
    ObjectLock lock(c.mutex());
    return (c.*f)(a...);
  };
}
template <class C, class R, class... A>
auto locked(R (C::*f)(A...) const) {
  return [f](const C& c, A... a) -> R {
    ObjectLock lock(c.mutex());
    return (c.*f)(a...);
  };
}

}  // namespace sfpy
