// The table of SIMD-dispatched kernels (internal to the core).
//
// kernels.inc is compiled three times, once per level, each time with that level's -m flags
// (cpp/CMakeLists.txt); kernels() returns the table for the active level (core/cpu.h).
// Every entry is bitwise identical across levels: tests_cpp/core_simd_test.cc runs each
// level against the scalar table on awkward sizes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/config.h"

namespace sparseforge {
namespace simd {

struct KernelTable {
  const char* name;
  // dtype conversions (spec: core/dtype.h scalar functions)
  void (*f16_to_f32)(const uint16_t* src, float* dst, size_t n);
  void (*f32_to_f16)(const float* src, uint16_t* dst, size_t n);
  void (*bf16_to_f32)(const uint16_t* src, float* dst, size_t n);
  void (*f32_to_bf16)(const float* src, uint16_t* dst, size_t n);
  // keys[i] = bits of |x[i]| as fp32: an unsigned integer whose order is the order of |x|.
  // Returns max(keys); a result >= 0x7F800000 means some x[i] is Inf or NaN.
  uint32_t (*abs_keys_f32)(const float* x, size_t n, uint32_t* keys);
  uint32_t (*abs_keys_f16)(const uint16_t* x, size_t n, uint32_t* keys);
  uint32_t (*abs_keys_bf16)(const uint16_t* x, size_t n, uint32_t* keys);
  // keys[i] = bits of (|x[i]| * scale[i]) in fp32 (the product rounded as fp32, like
  // torch's |W| * norms). scale[i] >= 0 and finite. Returns max(keys) as above.
  uint32_t (*scaled_abs_keys_f32)(const float* x, const float* scale, size_t n, uint32_t* keys);
  uint32_t (*scaled_abs_keys_f16)(const uint16_t* x, const float* scale, size_t n, uint32_t* keys);
  uint32_t (*scaled_abs_keys_bf16)(const uint16_t* x, const float* scale, size_t n, uint32_t* keys);
  // Returns #{i : keys[i] < lo} and copies, in index order, the keys in [lo, hi] to band
  // (capacity n); *band_n receives how many.
  size_t (*band_collect)(const uint32_t* keys, size_t n, uint32_t lo, uint32_t hi, uint32_t* band,
                         size_t* band_n);
  // keep[i] = keys[i] > t
  void (*keep_greater)(const uint32_t* keys, size_t n, uint32_t t, uint8_t* keep);
  // N:M keep-mask for m = 4 or 8 from keys < 2^31: in every group of m keep[i] = 1 unless
  // i is among the m - n lowest by (key, index). cols % m == 0.
  void (*nm4_keep)(const uint32_t* keys, size_t cols, int n, uint8_t* keep);
  void (*nm8_keep)(const uint32_t* keys, size_t cols, int n, uint8_t* keep);
  // #{i : (x[i] & 0x7FFFFFFF) == 0} and the 16-bit analogue (x & 0x7FFF): zeros of either sign.
  size_t (*count_zeros32)(const uint32_t* x, size_t n);
  size_t (*count_zeros16)(const uint16_t* x, size_t n);
  // out[i] = keep[i] ? x[i] : +0; returns #{i : out[i] is a zero of either sign}.
  size_t (*masked_copy32)(const uint32_t* x, const uint8_t* keep, uint32_t* out, size_t n);
  size_t (*masked_copy16)(const uint16_t* x, const uint8_t* keep, uint16_t* out, size_t n);
  // x[i] = keep[i] ? x[i] : +0, for 4- and 2-byte elements; keep[i] is 0 or 1.
  void (*apply_mask32)(uint32_t* x, const uint8_t* keep, size_t n);
  void (*apply_mask16)(uint16_t* x, const uint8_t* keep, size_t n);
};

const KernelTable& kernels();               // the active level's table
const KernelTable& kernels_for(int level);  // a given level's table (tests, benchmarks)

extern const KernelTable kTableScalar;
#if SF_HAVE_X86_KERNELS
extern const KernelTable kTableAVX2;
extern const KernelTable kTableAVX512;
#endif

}  // namespace simd
}  // namespace sparseforge
