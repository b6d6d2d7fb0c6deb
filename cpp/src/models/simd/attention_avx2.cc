// The avx2 attention table: attention.inc with Eigen compiled for this level under its own
// namespace name (see core/linalg/linalg.h for why).
#include <algorithm>
#include <cstddef>

#define EIGEN_DONT_PARALLELIZE
#define Eigen sf_eigen_avx2  // NOLINT: per-level Eigen symbols
#include <Eigen/Core>

#include "models/simd/attention.h"

namespace sparseforge {
namespace models {
namespace {
namespace E = ::sf_eigen_avx2;
#define SF_LEVEL_NAME "avx2"
#include "models/simd/attention.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const AttentionTable kAttentionTableAVX2;
const AttentionTable kAttentionTableAVX2 = kTable;

}  // namespace models
}  // namespace sparseforge
