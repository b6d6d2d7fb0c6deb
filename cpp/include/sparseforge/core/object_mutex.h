// A mutex that a mutable core object carries for callers that share it between threads.
//
// The core objects (PagedKVCache, LayerStats, PredictorStats) do not lock themselves: a C++
// caller that owns one per thread pays nothing. A caller that shares one (the Python
// bindings, where any Python thread may call any method and heavy calls release the GIL)
// holds object.mutex() for the whole of each call, including the reads that size its
// outputs, so a call never sees a half-finished append or eviction of another thread.
//
// ObjectMutex is copyable and movable so that its owner stays a value type: a copy gets a
// fresh, unlocked mutex (the lock guards the object it lives in, never travels with it).
#pragma once

#include <mutex>

namespace sparseforge {

class ObjectMutex {
 public:
  ObjectMutex() = default;
  ObjectMutex(const ObjectMutex&) {}
  ObjectMutex& operator=(const ObjectMutex&) { return *this; }
  std::mutex& get() const { return mu_; }

 private:
  mutable std::mutex mu_;
};

}  // namespace sparseforge
