// The avx512 kernel table: kernels.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/simd/kernels.h"
#include "sparseforge/core/config.h"

namespace sparseforge {
namespace simd {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx512"
#include "core/simd/kernels.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const KernelTable kTableAVX512;
const KernelTable kTableAVX512 = kTable;

}  // namespace simd
}  // namespace sparseforge
