// The avx2 dense-kernel table: dense.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/simd/dense.h"
#include "sparseforge/core/config.h"

namespace sparseforge {
namespace kernels {
namespace dense_avx2 {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx2"
#include "kernels/simd/dense.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace dense_avx2

extern const DenseTable kDenseTableAVX2;
const DenseTable kDenseTableAVX2 = dense_avx2::kTable;

}  // namespace kernels
}  // namespace sparseforge
