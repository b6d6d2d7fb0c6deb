// Internal helpers for the pruning sources: argument checks and per-row magnitude keys.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/simd/kernels.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/view.h"
#include "sparseforge/prune/select.h"

namespace sparseforge {
namespace prune {
namespace detail {

inline void check_matrix(const AnyConstMatrix& W, const char* arg) {
  SF_CHECK_ARG(W.data != nullptr, "%s: null data pointer", arg);
  SF_CHECK_ARG(W.rows > 0 && W.cols > 0, "%s: expected a non-empty matrix, got shape (%zu, %zu)",
               arg, W.rows, W.cols);
  SF_CHECK_ARG(W.stride >= W.cols, "%s: row stride %zu is smaller than cols %zu", arg, W.stride,
               W.cols);
}

inline void check_keep(ConstMaskView keep, size_t rows, size_t cols, const char* arg) {
  SF_CHECK_ARG(keep.data != nullptr, "%s: null data pointer", arg);
  SF_CHECK_ARG(keep.rows == rows && keep.cols == cols,
               "%s: expected shape (%zu, %zu), got (%zu, %zu)", arg, rows, cols, keep.rows,
               keep.cols);
  SF_CHECK_ARG(keep.stride >= keep.cols, "%s: row stride %zu is smaller than cols %zu", arg,
               keep.stride, keep.cols);
}

inline const void* row_ptr(const AnyConstMatrix& W, size_t r) {
  return static_cast<const char*>(W.data) + r * W.stride * dtype_size(W.dtype);
}

// keys[c] = score_key(|W[r, c]|); throws if the row holds NaN or Inf.
inline void row_abs_keys(const AnyConstMatrix& W, size_t r, uint32_t* keys, const char* arg) {
  const simd::KernelTable& kt = simd::kernels();
  const void* p = row_ptr(W, r);
  uint32_t mx;
  switch (W.dtype) {
    case DType::kF16:
      mx = kt.abs_keys_f16(static_cast<const uint16_t*>(p), W.cols, keys);
      break;
    case DType::kBF16:
      mx = kt.abs_keys_bf16(static_cast<const uint16_t*>(p), W.cols, keys);
      break;
    case DType::kF32:
    default:
      mx = kt.abs_keys_f32(static_cast<const float*>(p), W.cols, keys);
      break;
  }
  SF_CHECK_ARG(mx < kNonFiniteKey, "%s: contains NaN or Inf (row %zu)", arg, r);
}

// keys[c] = score_key(|W[r, c]| * scale[c]) (fp32 product); throws if a product is not finite.
inline void row_scaled_keys(const AnyConstMatrix& W, size_t r, const float* scale, uint32_t* keys,
                            const char* arg) {
  const simd::KernelTable& kt = simd::kernels();
  const void* p = row_ptr(W, r);
  uint32_t mx;
  switch (W.dtype) {
    case DType::kF16:
      mx = kt.scaled_abs_keys_f16(static_cast<const uint16_t*>(p), scale, W.cols, keys);
      break;
    case DType::kBF16:
      mx = kt.scaled_abs_keys_bf16(static_cast<const uint16_t*>(p), scale, W.cols, keys);
      break;
    case DType::kF32:
    default:
      mx = kt.scaled_abs_keys_f32(static_cast<const float*>(p), scale, W.cols, keys);
      break;
  }
  SF_CHECK_ARG(mx < kNonFiniteKey, "%s: contains NaN or Inf, or a score overflows (row %zu)", arg,
               r);
}

// Checks a per-column scale vector: finite and >= 0.
inline void check_col_scale(const float* v, size_t n, const char* arg) {
  SF_CHECK_ARG(v != nullptr, "%s: null data pointer", arg);
  for (size_t j = 0; j < n; ++j) {
    SF_CHECK_ARG(v[j] >= 0.0f && v[j] <= 3.4e38f, "%s: expected finite values >= 0, got %g at %zu",
                 arg, static_cast<double>(v[j]), j);
  }
}

// score_key(|W[r, c]|) of one element (no finiteness check: callers scan whole rows).
inline uint32_t element_abs_key(const AnyConstMatrix& W, size_t r, size_t c) {
  const void* p = row_ptr(W, r);
  return visit_dtype(W.dtype, [&](auto tag) {
    using T = decltype(tag);
    return f32_bits(to_f32(static_cast<const T*>(p)[c])) & 0x7FFFFFFFu;
  });
}

}  // namespace detail
}  // namespace prune
}  // namespace sparseforge
