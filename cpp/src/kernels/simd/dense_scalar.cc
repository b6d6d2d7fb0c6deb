// The scalar dense-kernel table: dense.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/simd/dense.h"
#include "sparseforge/core/config.h"

namespace sparseforge {
namespace kernels {
namespace dense_scalar {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "scalar"
#include "kernels/simd/dense.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace dense_scalar

extern const DenseTable kDenseTableScalar;
const DenseTable kDenseTableScalar = dense_scalar::kTable;

}  // namespace kernels
}  // namespace sparseforge
