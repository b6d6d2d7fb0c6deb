// The avx2 kvcache-kernel table: kv.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcache/simd/kv.h"

namespace sparseforge {
namespace kv {
namespace kv_avx2 {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx2"
#include "kvcache/simd/kv.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace kv_avx2

extern const KvTable kKvTableAVX2;
const KvTable kKvTableAVX2 = kv_avx2::kTable;

}  // namespace kv
}  // namespace sparseforge
