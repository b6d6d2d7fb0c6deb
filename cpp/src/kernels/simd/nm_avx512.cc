// The avx512 N:M kernel table: nm.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/simd/nm.h"

namespace sparseforge {
namespace kernels {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx512"
#include "kernels/simd/nm.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const NMKernelTable kNMTableAVX512;
const NMKernelTable kNMTableAVX512 = kTable;

}  // namespace kernels
}  // namespace sparseforge
