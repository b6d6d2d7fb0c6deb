// The avx2 linear algebra table: linalg.inc with Eigen compiled for this level under its
// own namespace name (see linalg.h for why).
#include <cmath>
#include <cstddef>
#include <cstdint>

#define EIGEN_DONT_PARALLELIZE
#define Eigen sf_eigen_avx2  // NOLINT: per-level Eigen symbols
#include <Eigen/Dense>

#include "core/linalg/linalg.h"

namespace sparseforge {
namespace linalg {
namespace {
namespace E = ::sf_eigen_avx2;
#define SF_LEVEL_NAME "avx2"
#include "core/linalg/linalg.inc"  // NOLINT(build/include)
#undef SF_LEVEL_NAME
}  // namespace

extern const LinalgTable kTableAVX2;
const LinalgTable kTableAVX2 = kTable;

}  // namespace linalg
}  // namespace sparseforge
