#include "sparseforge/core/build_info.h"

#include <string>
#include <thread>

#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {

std::vector<std::pair<std::string, std::string>> build_info() {
  std::string openmp = "no";
#if SF_HAVE_OPENMP && defined(_OPENMP)
  openmp =
      std::string("yes (") + SF_BUILD_OPENMP_VERSION + ", _OPENMP=" + std::to_string(_OPENMP) + ")";
#endif
  return {
      {"version", SF_VERSION},
      {"compiler", SF_BUILD_COMPILER},
      {"build_type", SF_BUILD_TYPE},
      {"cxx_flags", SF_BUILD_CXX_FLAGS},
      {"simd_flags_avx2", SF_HAVE_X86_KERNELS ? SF_BUILD_SIMD_FLAGS_AVX2 : ""},
      {"simd_flags_avx512", SF_HAVE_X86_KERNELS ? SF_BUILD_SIMD_FLAGS_AVX512 : ""},
      {"simd_detected", simd_level_name(detected_simd_level())},
      {"simd_active", simd_level_name(simd_level())},
      {"openmp", openmp},
      {"default_threads", std::to_string(resolve_num_threads(0))},
      {"hardware_threads", std::to_string(std::thread::hardware_concurrency())},
      {"eigen", SF_BUILD_EIGEN_VERSION},
      {"sanitized", SF_SANITIZED ? "asan+ubsan" : "no"},
  };
}

}  // namespace sparseforge
