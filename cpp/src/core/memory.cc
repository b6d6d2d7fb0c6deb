#include "sparseforge/core/memory.h"

#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sparseforge {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeThreshold = size_t{4} << 20;
}  // namespace

void* aligned_bytes_alloc(size_t bytes) {
  const size_t align = bytes >= kHugeThreshold ? kHugePage : 64;
  if (bytes > static_cast<size_t>(-1) - align) throw std::bad_alloc();
  const size_t rounded = bytes == 0 ? align : (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // Advice only: a kernel without transparent huge pages ignores it, and so do we.
  if (align == kHugePage) (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

void aligned_bytes_free(void* p) noexcept { std::free(p); }

}  // namespace sparseforge
