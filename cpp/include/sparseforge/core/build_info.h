// How this copy of sparseforge was built, for sf.build_info() and benchmark reports.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace sparseforge {

// Ordered (key, value) pairs: version, compiler, build_type, cxx_flags, simd flags,
// simd_detected, simd_active, openmp, openmp_max_threads, eigen, sanitized.
std::vector<std::pair<std::string, std::string>> build_info();

}  // namespace sparseforge
