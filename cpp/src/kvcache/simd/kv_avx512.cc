// The avx512 kvcache-kernel table: kv.inc compiled with this level's flags (cpp/CMakeLists.txt).
#include <immintrin.h>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvcache/simd/kv.h"

namespace sparseforge {
namespace kv {
namespace kv_avx512 {
namespace {
#define SF_SCALAR_FN static inline
#include "sparseforge/core/dtype_scalar.inc"  // NOLINT(build/include): internal-linkage copy
#undef SF_SCALAR_FN
#define SF_LEVEL_NAME "avx512"
#include "kvcache/simd/kv.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace
}  // namespace kv_avx512

extern const KvTable kKvTableAVX512;
const KvTable kKvTableAVX512 = kv_avx512::kTable;

}  // namespace kv
}  // namespace sparseforge
