// CPU feature detection and the run-time SIMD level.
//
// Levels: kScalar (any x86-64 or other CPU), kAVX2 (AVX2 + FMA + F16C, Haswell and later),
// kAVX512 (AVX-512 F/BW/VL/DQ plus the AVX2 set, Skylake-SP and later). The active level is
// the detected one, lowered by the environment variable SPARSEFORGE_SIMD=scalar|avx2|avx512
// or by set_simd_level() (tests use it to compare every level against the scalar one).
#pragma once

#include <string>

namespace sparseforge {

enum class SimdLevel : int { kScalar = 0, kAVX2 = 1, kAVX512 = 2 };

SimdLevel detected_simd_level();  // what this CPU and OS support (and this build has)
SimdLevel simd_level();           // the level kernels use now
// Sets the active level; throws InvalidArgument above detected_simd_level().
void set_simd_level(SimdLevel level);
const char* simd_level_name(SimdLevel level);         // "scalar", "avx2", "avx512"
SimdLevel parse_simd_level(const std::string& name);  // throws InvalidArgument

}  // namespace sparseforge
