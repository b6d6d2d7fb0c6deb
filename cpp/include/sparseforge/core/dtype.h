// Storage dtypes: fp32, fp16 (IEEE binary16) and bf16 (bfloat16). Compute is fp32.
//
// Float16 and BFloat16 are 2-byte storage types holding raw bits. Conversions to fp32 are
// exact; conversions from fp32 round to nearest, ties to even, keep subnormals (no
// flush-to-zero) and map Inf to Inf. NaN maps to a NaN of the same sign:
//   fp32 -> fp16: quiet bit set, top 9 payload bits kept (what x86 F16C vcvtps2ph does);
//   fp32 -> bf16: the canonical quiet NaN 0x7FC0 | sign (what ml_dtypes does).
// The scalar functions here are the specification; convert_*() are the bulk versions,
// dispatched to F16C/AVX2/AVX-512 at run time and bitwise identical to the scalar ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace sparseforge {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

struct Float16 {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
static_assert(sizeof(Float16) == 2 && sizeof(BFloat16) == 2, "2-byte storage types");

template <class T>
constexpr DType dtype_of() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, Float16>::value ||
                    std::is_same<T, BFloat16>::value,
                "storage dtype must be float, Float16 or BFloat16");
  if (std::is_same<T, Float16>::value) return DType::kF16;
  if (std::is_same<T, BFloat16>::value) return DType::kBF16;
  return DType::kF32;
}

const char* dtype_name(DType t);  // "float32", "float16", "bfloat16"
size_t dtype_size(DType t);       // bytes per element

#define SF_SCALAR_FN inline
#include "sparseforge/core/dtype_scalar.inc"  // f32_bits, f16_bits_to_f32, f32_to_f16_bits, ...
#undef SF_SCALAR_FN

inline float f16_to_f32(Float16 h) { return f16_bits_to_f32(h.bits); }
inline Float16 f32_to_f16(float x) { return {f32_to_f16_bits(x)}; }
inline float bf16_to_f32(BFloat16 b) { return bf16_bits_to_f32(b.bits); }
inline BFloat16 f32_to_bf16(float x) { return {f32_to_bf16_bits(x)}; }

inline float to_f32(float x) { return x; }
inline float to_f32(Float16 x) { return f16_to_f32(x); }
inline float to_f32(BFloat16 x) { return bf16_to_f32(x); }

template <class T>
T from_f32(float x);
template <>
inline float from_f32<float>(float x) {
  return x;
}
template <>
inline Float16 from_f32<Float16>(float x) {
  return f32_to_f16(x);
}
template <>
inline BFloat16 from_f32<BFloat16>(float x) {
  return f32_to_bf16(x);
}

// --- bulk conversions (SIMD-dispatched, bitwise equal to the scalar functions) ---------

void convert(const Float16* src, float* dst, size_t n);
void convert(const float* src, Float16* dst, size_t n);
void convert(const BFloat16* src, float* dst, size_t n);
void convert(const float* src, BFloat16* dst, size_t n);

// Calls f(T{}) with T the storage type for `t`; returns what f returns.
template <class F>
decltype(auto) visit_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kF16:
      return std::forward<F>(f)(Float16{});
    case DType::kBF16:
      return std::forward<F>(f)(BFloat16{});
    case DType::kF32:
    default:
      return std::forward<F>(f)(float{});
  }
}

}  // namespace sparseforge
