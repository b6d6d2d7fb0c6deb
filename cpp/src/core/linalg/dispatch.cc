#include "core/linalg/linalg.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"

namespace sparseforge {
namespace linalg {

extern const LinalgTable kTableScalar;
#if SF_HAVE_X86_KERNELS
extern const LinalgTable kTableAVX2;
extern const LinalgTable kTableAVX512;
#endif

const LinalgTable& linalg_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kTableAVX2;
#endif
  return kTableScalar;
}

const LinalgTable& linalg() { return linalg_for(static_cast<int>(simd_level())); }

}  // namespace linalg
}  // namespace sparseforge
