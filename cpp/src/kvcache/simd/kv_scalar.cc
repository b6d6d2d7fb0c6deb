// The scalar kvcache-kernel table: kv.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcache/simd/kv.h"

namespace sparseforge {
namespace kv {
namespace kv_scalar {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "scalar"
#include "kvcache/simd/kv.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace kv_scalar

extern const KvTable kKvTableScalar;
const KvTable kKvTableScalar = kv_scalar::kTable;

}  // namespace kv
}  // namespace sparseforge
