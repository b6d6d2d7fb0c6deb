// The avx2 unstructured kernel table: unstructured.inc compiled with this level's flags
// (cpp/CMakeLists.txt, sf_simd_family).
#include <immintrin.h>
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
#define SF_LEVEL_NAME "avx2"
#include "kernels/simd/unstructured.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const UnstructuredTable kTableAVX2;
const UnstructuredTable kTableAVX2 = kTable;

}  // namespace unstructured_simd
}  // namespace kernels
}  // namespace sparseforge
