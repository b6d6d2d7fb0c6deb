// The scalar kernel table: kernels.inc compiled with this level's flags (cpp/CMakeLists.txt).
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
#define SF_LEVEL_NAME "scalar"
#include "core/simd/kernels.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const KernelTable kTableScalar;
const KernelTable kTableScalar = kTable;

}  // namespace simd
}  // namespace sparseforge
