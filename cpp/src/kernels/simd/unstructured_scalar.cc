// The scalar unstructured kernel table: unstructured.inc compiled with this level's flags
// (cpp/CMakeLists.txt, sf_simd_family).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/simd/unstructured.h"
#include "sparseforge/core/config.h"

namespace sparseforge {
namespace kernels {
namespace unstructured_simd {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "scalar"
#include "kernels/simd/unstructured.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const UnstructuredTable kTableScalar;
const UnstructuredTable kTableScalar = kTable;

}  // namespace unstructured_simd
}  // namespace kernels
}  // namespace sparseforge
