// The avx512 attention table: attention.inc with Eigen compiled for this level under its own
// namespace name (see core/linalg/linalg.h for why).
#include <algorithm>
#include <cstddef>

#define EIGEN_DONT_PARALLELIZE
#define Eigen sf_eigen_avx512  // NOLINT: per-level Eigen symbols
#include <Eigen/Core>

#include "models/simd/attention.h"

namespace sparseforge {
namespace models {
namespace {
namespace E = ::sf_eigen_avx512;
#define SF_LEVEL_NAME "avx512"
#include "models/simd/attention.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const AttentionTable kAttentionTableAVX512;
const AttentionTable kAttentionTableAVX512 = kTable;

}  // namespace models
}  // namespace sparseforge
