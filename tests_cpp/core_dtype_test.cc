// fp16/bf16 <-> fp32: exhaustive over all 65,536 bit patterns, against an independent
// ldexp oracle and the round-to-nearest-even midpoints between every pair of neighbours.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "sparseforge/core/dtype.h"

namespace sparseforge {
namespace {

bool is_nan16(uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x3FFu) != 0; }

// The value of a binary16 pattern from its definition.
double f16_value(uint16_t h) {
  const int sign = (h & 0x8000u) ? -1 : 1;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 0x1F) return sign * std::numeric_limits<double>::infinity();
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(DType, F16ToF32MatchesDefinitionForAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(Float16{static_cast<uint16_t>(h)});
    if (is_nan16(static_cast<uint16_t>(h))) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << h;
      ASSERT_NE(f32_bits(f) & 0x00400000u, 0u) << "NaN must come out quiet: " << h;
      ASSERT_EQ((f32_bits(f) >> 13) & 0x1FFu, h & 0x1FFu) << "payload kept: " << h;
    } else {
      ASSERT_EQ(static_cast<double>(f), f16_value(static_cast<uint16_t>(h))) << h;
      ASSERT_EQ(std::signbit(f), (h & 0x8000u) != 0) << h;  // -0 stays -0
    }
  }
}

TEST(DType, F16RoundTripIsIdentityForAllNonNaNPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t b = static_cast<uint16_t>(h);
    const uint16_t back = f32_to_f16(f16_to_f32(Float16{b})).bits;
    if (is_nan16(b)) {
      EXPECT_TRUE(is_nan16(back)) << h;
      EXPECT_EQ(back & 0x8000u, b & 0x8000u);
    } else {
      ASSERT_EQ(back, b) << h;
    }
  }
}

// Between every pair of neighbouring halves lo < hi: the exact midpoint goes to the even
// one, and the floats just below / above it go to lo / hi. This visits every rounding
// boundary of binary16, normal and subnormal, both signs.
TEST(DType, F32ToF16RoundsToNearestEvenAtEveryMidpoint) {
  for (uint32_t h = 0; h < 0x7C00u; ++h) {
    const float lo = f16_to_f32(Float16{static_cast<uint16_t>(h)});
    const float hi =
        (h + 1 == 0x7C00u) ? 65536.0f : f16_to_f32(Float16{static_cast<uint16_t>(h + 1)});
    const float mid = lo + (hi - lo) / 2;  // exact: one bit more than binary16 has
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2) << h;
    const uint16_t even = (h & 1u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    for (int sign = 0; sign < 2; ++sign) {
      const float s = sign ? -1.0f : 1.0f;
      const uint16_t sb = sign ? 0x8000u : 0u;
      ASSERT_EQ(f32_to_f16(s * mid).bits, even | sb) << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, 0.0f)).bits, h | sb) << h;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, 1e30f)).bits, (h + 1) | sb) << h;
      ASSERT_EQ(f32_to_f16(s * lo).bits, h | sb) << h;
    }
  }
}

TEST(DType, F32ToF16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f32_to_f16(inf).bits, 0x7C00u);
  EXPECT_EQ(f32_to_f16(-inf).bits, 0xFC00u);
  EXPECT_EQ(f32_to_f16(1e10f).bits, 0x7C00u);
  EXPECT_EQ(f32_to_f16(65519.0f).bits, 0x7BFFu);  // below the midpoint to 65536
  EXPECT_EQ(f32_to_f16(65520.0f).bits, 0x7C00u);  // the midpoint rounds to even = Inf
  EXPECT_EQ(f32_to_f16(1e-10f).bits, 0x0000u);
  EXPECT_EQ(f32_to_f16(-1e-10f).bits, 0x8000u);
  // NaN: quiet, payload's top bits kept, sign kept (x86 F16C behaviour).
  EXPECT_EQ(f32_to_f16(f32_from_bits(0x7F800001u)).bits, 0x7E00u);
  EXPECT_EQ(f32_to_f16(f32_from_bits(0xFFC02000u)).bits, 0xFE01u);
}

bool is_nan_bf16(uint16_t b) { return (b & 0x7F80u) == 0x7F80u && (b & 0x7Fu) != 0; }

TEST(DType, BF16ToF32IsExactAndRoundTripsForAllPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(BFloat16{static_cast<uint16_t>(b)});
    ASSERT_EQ(f32_bits(f), b << 16) << b;
    const uint16_t back = f32_to_bf16(f).bits;
    if (is_nan_bf16(static_cast<uint16_t>(b))) {
      ASSERT_EQ(back, (b & 0x8000u) | 0x7FC0u) << b;
    } else {
      ASSERT_EQ(back, b) << b;
    }
  }
}

TEST(DType, F32ToBF16RoundsToNearestEvenAtEveryMidpoint) {
  for (uint32_t b = 0; b < 0x7F80u; ++b) {
    const float lo = bf16_to_f32(BFloat16{static_cast<uint16_t>(b)});
    const float hi = bf16_to_f32(BFloat16{static_cast<uint16_t>(b + 1)});  // b+1 may be Inf
    const float mid = f32_from_bits((b << 16) | 0x8000u);  // exact midpoint bit pattern
    const uint16_t even = (b & 1u) ? static_cast<uint16_t>(b + 1) : static_cast<uint16_t>(b);
    for (int sign = 0; sign < 2; ++sign) {
      const float s = sign ? -1.0f : 1.0f;
      const uint16_t sb = sign ? 0x8000u : 0u;
      ASSERT_EQ(f32_to_bf16(s * mid).bits, even | sb) << b;
      ASSERT_EQ(f32_to_bf16(s * std::nextafter(mid, 0.0f)).bits, b | sb) << b;
      ASSERT_EQ(f32_to_bf16(s * std::nextafter(mid, hi * 2)).bits, (b + 1) | sb) << b;
      ASSERT_EQ(f32_to_bf16(s * lo).bits, b | sb) << b;
    }
  }
}

TEST(DType, NamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::kF32), "float32");
  EXPECT_STREQ(dtype_name(DType::kF16), "float16");
  EXPECT_STREQ(dtype_name(DType::kBF16), "bfloat16");
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_of<Float16>(), DType::kF16);
  EXPECT_EQ(visit_dtype(DType::kBF16, [](auto t) { return sizeof(t); }), 2u);
}

}  // namespace
}  // namespace sparseforge
