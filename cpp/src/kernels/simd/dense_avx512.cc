// The avx512 dense-kernel table: dense.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/simd/dense.h"
#include "sparseforge/core/config.h"

namespace sparseforge {
namespace kernels {
namespace dense_avx512 {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx512"
#include "kernels/simd/dense.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace dense_avx512

extern const DenseTable kDenseTableAVX512;
const DenseTable kDenseTableAVX512 = dense_avx512::kTable;

}  // namespace kernels
}  // namespace sparseforge
