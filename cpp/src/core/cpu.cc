#include "sparseforge/core/cpu.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/simd/kernels.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/error.h"

namespace sparseforge {
namespace {

SimdLevel detect() {
#if SF_HAVE_X86_KERNELS && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XGETBV).
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  if (avx512) return SimdLevel::kAVX512;
  if (avx2) return SimdLevel::kAVX2;
#endif
  return SimdLevel::kScalar;
}

SimdLevel initial_level() {
  SimdLevel level = detected_simd_level();
  if (const char* env = std::getenv("SPARSEFORGE_SIMD")) {
    // An unknown or too-high value is ignored rather than thrown from static init.
    try {
      SimdLevel want = parse_simd_level(env);
      if (static_cast<int>(want) < static_cast<int>(level)) level = want;
    } catch (const std::exception&) {
    }
  }
  return level;
}

std::atomic<int>& active_level() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

SimdLevel detected_simd_level() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel simd_level() { return static_cast<SimdLevel>(active_level().load()); }

void set_simd_level(SimdLevel level) {
  SF_CHECK_ARG(static_cast<int>(level) >= 0 &&
                   static_cast<int>(level) <= static_cast<int>(detected_simd_level()),
               "level: %s is not supported here (this CPU/build supports up to %s)",
               simd_level_name(level), simd_level_name(detected_simd_level()));
  active_level().store(static_cast<int>(level));
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return "scalar";
    case SimdLevel::kAVX2:
      return "avx2";
    case SimdLevel::kAVX512:
      return "avx512";
  }
  return "unknown";
}

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::kScalar;
  if (name == "avx2") return SimdLevel::kAVX2;
  if (name == "avx512") return SimdLevel::kAVX512;
  SF_THROW(InvalidArgument, "level: expected 'scalar', 'avx2' or 'avx512', got '%s'", name.c_str());
}

namespace simd {

const KernelTable& kernels_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kTableAVX2;
#endif
  return kTableScalar;
}

const KernelTable& kernels() {
#if SF_HAVE_X86_KERNELS
  switch (active_level().load(std::memory_order_relaxed)) {
    case static_cast<int>(SimdLevel::kAVX512):
      return kTableAVX512;
    case static_cast<int>(SimdLevel::kAVX2):
      return kTableAVX2;
    default:
      break;
  }
#endif
  return kTableScalar;
}

}  // namespace simd
}  // namespace sparseforge
