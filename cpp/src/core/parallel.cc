#include "sparseforge/core/parallel.h"

#include "sparseforge/core/error.h"

namespace sparseforge {

int resolve_num_threads(int num_threads) {
  SF_CHECK_ARG(num_threads <= 4096, "num_threads: expected at most 4096, got %d", num_threads);
  if (num_threads > 0) return num_threads;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void ExceptionCollector::capture(size_t index) noexcept {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!error_ || index < lowest_.load(std::memory_order_relaxed)) {
    error_ = std::current_exception();
    lowest_.store(index, std::memory_order_relaxed);
  }
}

void ExceptionCollector::rethrow_if_any() {
  if (error_) std::rethrow_exception(error_);
}

}  // namespace sparseforge
