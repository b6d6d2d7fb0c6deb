#include "sparseforge/core/dtype.h"

#include "core/simd/kernels.h"

namespace sparseforge {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "unknown";
}

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

void convert(const Float16* src, float* dst, size_t n) {
  simd::kernels().f16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}
void convert(const float* src, Float16* dst, size_t n) {
  simd::kernels().f32_to_f16(src, reinterpret_cast<uint16_t*>(dst), n);
}
void convert(const BFloat16* src, float* dst, size_t n) {
  simd::kernels().bf16_to_f32(reinterpret_cast<const uint16_t*>(src), dst, n);
}
void convert(const float* src, BFloat16* dst, size_t n) {
  simd::kernels().f32_to_bf16(src, reinterpret_cast<uint16_t*>(dst), n);
}

}  // namespace sparseforge
