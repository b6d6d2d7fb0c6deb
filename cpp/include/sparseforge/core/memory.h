// Aligned heap buffers for weight formats that the kernels stream.
//
// aligned_bytes_alloc(n) returns n bytes (n may be 0) aligned to 64 bytes, a cache line and
// any vector register. Buffers of 4 MiB or more are aligned to 2 MiB and, on Linux, marked
// MADV_HUGEPAGE, as numpy does for its own large arrays: a kernel streaming a 32 MiB
// weight through 4 KiB pages takes a TLB miss every 64 cache lines, which costs a GEMV
// several percent of its bandwidth against a dense baseline that sits on huge pages.
// Throws std::bad_alloc on failure. Release with aligned_bytes_free.
#pragma once

#include <cstddef>

namespace sparseforge {

void* aligned_bytes_alloc(size_t bytes);
void aligned_bytes_free(void* p) noexcept;

}  // namespace sparseforge
