// Thread count for the light MoE passes (routing, gather, combine).
#pragma once

#include <algorithm>
#include <cstddef>

#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace moe {

// At most one thread per 64 KiB touched: below that a parallel region costs more than it
// saves (the same rule as the dense kernels). Results do not depend on the count.
inline int light_threads(size_t bytes, int num_threads) {
  const int t = resolve_num_threads(num_threads);
  const size_t cap = std::max<size_t>(1, bytes / (size_t{64} << 10));
  return static_cast<int>(std::min(static_cast<size_t>(t), cap));
}

}  // namespace moe
}  // namespace sparseforge
