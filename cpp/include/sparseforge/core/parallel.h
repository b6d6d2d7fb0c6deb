// Exception-safe, deterministic parallel loops with a per-call thread count.
//
// parallel_for(n, num_threads, fn) calls fn(begin, end) over disjoint ranges covering
// [0, n). The thread count is per call (never omp_set_num_threads): num_threads <= 0 means
// the default (OMP_NUM_THREADS, else all cores). Work partitioned by output rows gives
// bitwise-identical results for any thread count, because each element is produced by
// exactly one call whose arithmetic does not depend on the partition.
//
// Exceptions thrown by fn inside the parallel region are caught (an exception must not
// leave an OpenMP region: that is std::terminate). Ranges after a failed one are skipped,
// ranges before it still run, and after all threads join the exception of the lowest
// failing range is rethrown: the error the caller sees is the one a serial loop would
// raise, whatever the thread count.
//
// Built without OpenMP (or called from inside another parallel region) the loop runs
// serially with the same semantics.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sparseforge {

// The default thread count (num_threads <= 0) and validation of an explicit one.
// Throws InvalidArgument for num_threads > 4096.
int resolve_num_threads(int num_threads);

// Keeps the exception of the lowest failing range; safe to call from many threads.
class ExceptionCollector {
 public:
  void capture(size_t index) noexcept;
  // True if a range before `index` has failed, so `index` need not run.
  bool skip(size_t index) const noexcept { return index > lowest_.load(std::memory_order_relaxed); }
  void rethrow_if_any();

 private:
  std::atomic<size_t> lowest_{static_cast<size_t>(-1)};
  std::mutex mutex_;
  std::exception_ptr error_;
};

// fn(begin, end) over ranges of `grain` indices (the last may be shorter). grain = 0 (the
// default) gives one contiguous range per thread, so fn can allocate its scratch once.
template <class F>
void parallel_for(size_t n, int num_threads, F&& fn, size_t grain = 0) {
  if (n == 0) return;
  int threads = resolve_num_threads(num_threads);
#ifdef _OPENMP
  if (omp_in_parallel()) threads = 1;
#endif
  if (static_cast<size_t>(threads) > n) threads = static_cast<int>(n);
  if (grain == 0) grain = (n + static_cast<size_t>(threads) - 1) / static_cast<size_t>(threads);
  const size_t num_ranges = (n + grain - 1) / grain;
  if (static_cast<size_t>(threads) > num_ranges) threads = static_cast<int>(num_ranges);
  if (threads <= 1) {
    fn(size_t{0}, n);
    return;
  }
  ExceptionCollector errors;
#ifdef _OPENMP
  // Contiguous blocks of ranges per thread (static schedule): neighbouring rows stay on
  // one core, and the partition is a pure function of (n, grain, threads).
#pragma omp parallel num_threads(threads)
  {
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t nt = static_cast<size_t>(omp_get_num_threads());
    const size_t r0 = num_ranges * t / nt, r1 = num_ranges * (t + 1) / nt;
    for (size_t r = r0; r < r1 && !errors.skip(r); ++r) {
      try {
        fn(r * grain, std::min(n, (r + 1) * grain));
      } catch (...) {
        errors.capture(r);
      }
    }
  }
#else
  for (size_t r = 0; r < num_ranges && !errors.skip(r); ++r) {
    try {
      fn(r * grain, std::min(n, (r + 1) * grain));
    } catch (...) {
      errors.capture(r);
    }
  }
#endif
  errors.rethrow_if_any();
}

// One call per index, tasks claimed dynamically (an atomic counter): for tasks of unequal
// cost. Results stay deterministic as long as each task's arithmetic does not depend on
// which thread runs it; the exception rule is the same as parallel_for's.
template <class F>
void parallel_for_dynamic(size_t n, int num_threads, F&& fn) {
  if (n == 0) return;
  int threads = resolve_num_threads(num_threads);
#ifdef _OPENMP
  if (omp_in_parallel()) threads = 1;
#endif
  if (static_cast<size_t>(threads) > n) threads = static_cast<int>(n);
  ExceptionCollector errors;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) {
      if (errors.skip(i)) continue;
      try {
        fn(i);
      } catch (...) {
        errors.capture(i);
      }
    }
  };
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    worker();
  } else {
    worker();
  }
#else
  worker();
#endif
  errors.rethrow_if_any();
}

// One call per index: fn(i).
template <class F>
void parallel_for_each(size_t n, int num_threads, F&& fn) {
  parallel_for(
      n, num_threads,
      [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) fn(i);
      },
      1);
}

}  // namespace sparseforge
