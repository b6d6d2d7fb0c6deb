// Seeded data generators and awkward sizes for the C++ tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "sparseforge/core/dtype.h"

namespace sparseforge {
namespace testing {

// Sizes that break SIMD and tiling assumptions: 1..17, primes, powers of two and
// their neighbours.
inline std::vector<size_t> awkward_sizes() {
  return {1,  2,  3,  4,  5,  6,  7,  8,  9,   10,  11,  12,  13,  14,   15,
          16, 17, 31, 32, 33, 43, 64, 97, 127, 128, 129, 401, 500, 1000, 4099};
}

// Normal(0, scale) floats.
inline std::vector<float> normal(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Small signed integers: many exact ties in |x|, exercising tie-breaking by index.
inline std::vector<float> small_ints(size_t n, uint64_t seed, int range = 3) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> dist(-range, range);
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(dist(rng));
  return v;
}

template <class T>
std::vector<T> cast_to(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = from_f32<T>(v[i]);
  return out;
}

}  // namespace testing
}  // namespace sparseforge
