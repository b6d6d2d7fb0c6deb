// Error macros: the right exception type, a formatted message and the raising function.
#include <gtest/gtest.h>

#include <string>

#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"

namespace sparseforge {
namespace {

void needs_multiple(size_t cols, int m) {
  SF_CHECK_ARG(cols % static_cast<size_t>(m) == 0, "W: in_features=%zu is not a multiple of m=%d",
               cols, m);
}

TEST(Error, CheckArgThrowsInvalidArgumentWithContext) {
  try {
    needs_multiple(10, 4);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "W: in_features=10 is not a multiple of m=4 [in needs_multiple]");
  }
  EXPECT_NO_THROW(needs_multiple(12, 4));
}

TEST(Error, KindsAreDistinct) {
  auto dtype = [] { SF_CHECK_DTYPE(false, "x: expected float32, got %s", "int8"); };
  auto numeric = [] { SF_CHECK_NUMERIC(false, "H: not positive definite after damping %g", 1.0); };
  auto internal = [] { SF_CHECK(1 + 1 == 3); };
  EXPECT_THROW(dtype(), DTypeError);
  EXPECT_THROW(numeric(), NumericalError);
  try {
    internal();
    FAIL();
  } catch (const InternalError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("'1 + 1 == 3' failed"), std::string::npos) << what;
    EXPECT_NE(what.find("core_error_test.cc"), std::string::npos) << what;
  }
}

TEST(Error, LongMessagesAreNotTruncated) {
  const std::string big(5000, 'x');
  try {
    SF_THROW(InvalidArgument, "%s", big.c_str());
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()).substr(0, 5000), big);
  }
}

TEST(Cpu, LevelsParseAndClamp) {
  EXPECT_EQ(parse_simd_level("avx2"), SimdLevel::kAVX2);
  EXPECT_THROW(parse_simd_level("sse9"), InvalidArgument);
  const SimdLevel before = simd_level();
  EXPECT_LE(static_cast<int>(before), static_cast<int>(detected_simd_level()));
  set_simd_level(SimdLevel::kScalar);
  EXPECT_EQ(simd_level(), SimdLevel::kScalar);
  if (detected_simd_level() != SimdLevel::kAVX512) {
    EXPECT_THROW(set_simd_level(SimdLevel::kAVX512), InvalidArgument);
  }
  set_simd_level(before);
}

}  // namespace
}  // namespace sparseforge
