// N:M format and kernels: round trips, the canonical code layout, validation, and every
// kernel on every SIMD level against a float64 reference on the dense matrix.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/simd/nm.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/format/nm.h"
#include "sparseforge/kernels/nm.h"

namespace sf = sparseforge;
namespace fm = sparseforge::format;
namespace kn = sparseforge::kernels;

namespace {

struct Pat {
  int n, m;
};
const Pat kPatterns[] = {{1, 2}, {2, 4}, {1, 4}, {3, 4},  {2, 8},
                         {4, 8}, {1, 3}, {2, 5}, {5, 16}, {8, 16}};

// A random matrix obeying n:m with some groups degenerate (fewer non-zeros, all-zero).
std::vector<float> random_nm(size_t rows, size_t cols, int n, int m, std::mt19937& rng) {
  std::vector<float> W(rows * cols, 0.0f);
  std::normal_distribution<float> val(0.0f, 1.0f);
  std::uniform_int_distribution<int> fill(0, 9);
  for (size_t r = 0; r < rows; ++r)
    for (size_t g = 0; g < cols / static_cast<size_t>(m); ++g) {
      std::vector<int> idx(static_cast<size_t>(m));
      for (int i = 0; i < m; ++i) idx[static_cast<size_t>(i)] = i;
      std::shuffle(idx.begin(), idx.end(), rng);
      const int f = fill(rng);
      const int k = f == 0 ? 0 : f == 1 ? std::max(0, n - 1) : n;
      for (int j = 0; j < k; ++j)
        W[r * cols + g * static_cast<size_t>(m) +
          static_cast<size_t>(idx[static_cast<size_t>(j)])] = val(rng);
    }
  return W;
}

template <class T>
std::vector<T> convert(const std::vector<float>& w) {
  std::vector<T> out(w.size());
  for (size_t i = 0; i < w.size(); ++i) out[i] = sf::from_f32<T>(w[i]);
  return out;
}

template <class T>
std::vector<float> widen(const std::vector<T>& w) {
  std::vector<float> out(w.size());
  for (size_t i = 0; i < w.size(); ++i) out[i] = sf::to_f32(w[i]);
  return out;
}

template <class T>
void round_trip(size_t rows, size_t cols, Pat p, std::mt19937& rng) {
  const std::vector<T> W = convert<T>(random_nm(rows, cols, p.n, p.m, rng));
  const sf::ConstMatrixView<T> Wv(W.data(), rows, cols);
  fm::NMMatrix A = fm::nm_from_dense(Wv, p.n, p.m, fm::NMFromDense::kStrict, 2);
  fm::nm_validate(A);
  std::vector<T> back(rows * cols);
  fm::nm_to_dense(A, sf::MatrixView<T>(back.data(), rows, cols), 1);
  ASSERT_EQ(0, std::memcmp(back.data(), W.data(), W.size() * sizeof(T)))
      << rows << "x" << cols << " " << p.n << ":" << p.m;
  // canonical round trip
  const size_t slots = cols / static_cast<size_t>(p.m) * static_cast<size_t>(p.n);
  const size_t cb = fm::nm_code_row_bytes(cols, p.n, p.m);
  std::vector<T> values(rows * slots);
  std::vector<uint8_t> codes(rows * cb);
  fm::nm_to_canonical(A, sf::MatrixView<T>(values.data(), rows, slots),
                      sf::MatrixView<uint8_t>(codes.data(), rows, cb), 2);
  fm::NMMatrix B = fm::nm_from_canonical(sf::ConstMatrixView<T>(values.data(), rows, slots),
                                         sf::ConstMatrixView<uint8_t>(codes.data(), rows, cb), cols,
                                         p.n, p.m, 1);
  ASSERT_EQ(A.values.size(), B.values.size());
  ASSERT_EQ(0, std::memcmp(A.values.data(), B.values.data(), A.values.size()));
  ASSERT_EQ(0, std::memcmp(A.codes.data(), B.codes.data(), A.codes.size()));
  // canonical values: the kept values in column order
  const int bits = fm::nm_code_bits(p.m);
  for (size_t r = 0; r < rows; ++r)
    for (size_t s = 0; s < slots; ++s) {
      const size_t bit = s * static_cast<size_t>(bits);
      uint32_t word = codes[r * cb + bit / 8];
      if (bit / 8 + 1 < cb) word |= static_cast<uint32_t>(codes[r * cb + bit / 8 + 1]) << 8;
      const size_t code = (word >> (bit % 8)) & ((1u << bits) - 1u);
      const size_t col = s / static_cast<size_t>(p.n) * static_cast<size_t>(p.m) + code;
      ASSERT_EQ(0, std::memcmp(&values[r * slots + s], &W[r * cols + col], sizeof(T)));
    }
}

}  // namespace

TEST(NMFormat, RoundTripAllPatternsDtypesShapes) {
  std::mt19937 rng(1);
  for (const Pat p : kPatterns)
    for (size_t rows : {1, 3, 7, 8, 9, 17, 40})
      for (size_t groups : {1, 2, 7, 9, 17, 33}) {
        const size_t cols = groups * static_cast<size_t>(p.m);
        round_trip<float>(rows, cols, p, rng);
        round_trip<sf::BFloat16>(rows, cols, p, rng);
        round_trip<sf::Float16>(rows, cols, p, rng);
      }
}

TEST(NMFormat, TwoFourCodesArePyTorchNibbles) {
  // One row, 6 groups: the six legal patterns, then degenerate groups on the next row.
  const float a = 1.5f, b = -2.0f;
  const std::vector<float> W = {
      a, b, 0, 0, a, 0, b, 0, 0, a, b, 0, a, 0, 0, b, 0, a, 0, b, 0, 0, a, b,   // legal
      0, 0, 0, 0, a, 0, 0, 0, 0, a, 0, 0, 0, 0, a, 0, 0, 0, 0, a, a, b, 0, 0};  // degenerate
  fm::NMMatrix A = fm::nm_from_dense(sf::ConstMatrixView<float>(W.data(), 2, 24), 2, 4,
                                     fm::NMFromDense::kStrict, 1);
  std::vector<float> values(2 * 12);
  std::vector<uint8_t> codes(2 * 3);
  fm::nm_to_canonical(A, sf::MatrixView<float>(values.data(), 2, 12),
                      sf::MatrixView<uint8_t>(codes.data(), 2, 3), 1);
  // nibbles: 0b0100, 0b1000, 0b1001, 0b1100, 0b1101, 0b1110 (two per byte, low first)
  EXPECT_EQ(codes[0], 0x84);
  EXPECT_EQ(codes[1], 0xC9);
  EXPECT_EQ(codes[2], 0xED);
  // all-zero -> 1110, [x000] -> 1000, [0x00] -> 1001, [00x0] -> 1110, [000x] -> 1110, [xx00] ->
  // 0100
  EXPECT_EQ(codes[3], 0x8E);
  EXPECT_EQ(codes[4], 0xE9);
  EXPECT_EQ(codes[5], 0x4E);
  const std::vector<float> v1 = {0, 0, a, 0, a, 0, a, 0, 0, a, a, b};
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ(values[12 + i], v1[i]) << i;
}

TEST(NMFormat, StrictRejectsDenseGroupsMagnitudePrunes) {
  std::vector<float> W = {1, 2, 3, 4, 0, 0, 5, 0, -7, 1, 0, 0, 4, 4, 4, 0};
  const sf::ConstMatrixView<float> Wv(W.data(), 2, 8);
  try {
    fm::nm_from_dense(Wv, 2, 4, fm::NMFromDense::kStrict, 1);
    FAIL() << "no error";
  } catch (const sf::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("row 0, columns 0..3 hold 4 non-zeros"), std::string::npos)
        << e.what();
  }
  fm::NMMatrix A = fm::nm_from_dense(Wv, 2, 4, fm::NMFromDense::kMagnitude, 1);
  std::vector<float> d(16);
  fm::nm_to_dense(A, sf::MatrixView<float>(d.data(), 2, 8), 1);
  // ties (4, 4, 4): the lower index is pruned first
  const std::vector<float> expect = {0, 0, 3, 4, 0, 0, 5, 0, -7, 1, 0, 0, 0, 4, 4, 0};
  EXPECT_EQ(d, expect);
}

TEST(NMFormat, BadInput) {
  std::vector<float> W(8, 0.0f);
  const sf::ConstMatrixView<float> Wv(W.data(), 1, 8);
  EXPECT_THROW(fm::nm_from_dense(Wv, 2, 3, fm::NMFromDense::kStrict, 1), sf::InvalidArgument);
  EXPECT_THROW(fm::nm_from_dense(Wv, 4, 4, fm::NMFromDense::kStrict, 1), sf::InvalidArgument);
  EXPECT_THROW(fm::nm_from_dense(Wv, 1, 32, fm::NMFromDense::kStrict, 1), sf::InvalidArgument);
  W[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(fm::nm_from_dense(Wv, 2, 4, fm::NMFromDense::kStrict, 1), sf::InvalidArgument);
  // canonical codes: out of group, not increasing (duplicate), spare bits set
  std::vector<float> vals(4, 1.0f);
  const sf::ConstMatrixView<float> vv(vals.data(), 1, 4);
  auto make = [&](std::vector<uint8_t> c) {
    return fm::nm_from_canonical(vv, sf::ConstMatrixView<uint8_t>(c.data(), 1, c.size()), 8, 2, 4,
                                 1);
  };
  EXPECT_NO_THROW(make({0xE4}));
  EXPECT_THROW(make({0x14}), sf::InvalidArgument);  // group 1: 0b0001 -> indices 1, 0
  EXPECT_THROW(make({0x55}), sf::InvalidArgument);  // duplicates 1, 1
  std::vector<float> vals3(3, 1.0f);
  std::vector<uint8_t> c3 = {0x03};  // 1:3: index 3 is outside a group of 3
  EXPECT_THROW(fm::nm_from_canonical(sf::ConstMatrixView<float>(vals3.data(), 1, 1),
                                     sf::ConstMatrixView<uint8_t>(c3.data(), 1, 1), 3, 1, 3, 1),
               sf::InvalidArgument);
  c3 = {0xC0};  // 1:4, 3 groups use 6 bits; the spare high bits must be 0
  EXPECT_THROW(fm::nm_from_canonical(sf::ConstMatrixView<float>(vals3.data(), 1, 3),
                                     sf::ConstMatrixView<uint8_t>(c3.data(), 1, 1), 12, 1, 4, 1),
               sf::InvalidArgument);
}

namespace {

template <class T>
void check_kernels(size_t rows, size_t cols, Pat p, std::mt19937& rng, double tol) {
  const std::vector<T> W = convert<T>(random_nm(rows, cols, p.n, p.m, rng));
  const std::vector<float> Wf = widen(W);
  fm::NMMatrix A = fm::nm_from_dense(sf::ConstMatrixView<T>(W.data(), rows, cols), p.n, p.m,
                                     fm::NMFromDense::kStrict, 1);
  std::normal_distribution<float> val(0.0f, 1.0f);
  for (size_t batch :
       {size_t{1}, size_t{2}, size_t{3}, size_t{5}, size_t{8}, size_t{9}, size_t{20}}) {
    std::vector<float> X(batch * cols);
    for (float& v : X) v = val(rng);
    double scale = 0.0;
    std::vector<double> ref(batch * rows);
    for (size_t b = 0; b < batch; ++b)
      for (size_t r = 0; r < rows; ++r) {
        double s = 0.0, a = 0.0;
        for (size_t c = 0; c < cols; ++c) {
          s += static_cast<double>(Wf[r * cols + c]) * X[b * cols + c];
          a += std::fabs(static_cast<double>(Wf[r * cols + c]) * X[b * cols + c]);
        }
        ref[b * rows + r] = s;
        scale = std::max(scale, a);
      }
    std::vector<float> first;
    for (int level = 0; level <= static_cast<int>(sf::detected_simd_level()); ++level) {
      sf::set_simd_level(static_cast<sf::SimdLevel>(level));
      for (int threads : {1, 2, 3}) {
        std::vector<float> Y(batch * rows, std::numeric_limits<float>::quiet_NaN());
        if (batch == 1)
          kn::nm_gemv(A, X.data(), Y.data(), threads);
        else
          kn::nm_gemm(A, sf::ConstMatrixView<float>(X.data(), batch, cols),
                      sf::MatrixView<float>(Y.data(), batch, rows), threads);
        for (size_t i = 0; i < Y.size(); ++i)
          ASSERT_LE(std::fabs(Y[i] - ref[i]), tol * std::max(scale, 1e-30))
              << "level " << level << " threads " << threads << " batch " << batch << " " << rows
              << "x" << cols << " " << p.n << ":" << p.m << " i=" << i;
        if (threads == 1)
          first = Y;
        else
          ASSERT_EQ(0, std::memcmp(first.data(), Y.data(), Y.size() * sizeof(float)))
              << "thread count changed the result";
      }
    }
    sf::set_simd_level(sf::detected_simd_level());
  }
}

}  // namespace

TEST(NMKernels, EveryLevelEveryPatternAgainstFloat64) {
  std::mt19937 rng(7);
  for (const Pat p : kPatterns)
    for (size_t rows : {1, 5, 8, 13, 67})
      for (size_t groups : {1, 3, 8, 9, 31}) {
        const size_t cols = groups * static_cast<size_t>(p.m);
        check_kernels<float>(rows, cols, p, rng, 1e-6);
        check_kernels<sf::BFloat16>(rows, cols, p, rng, 1e-6);
        check_kernels<sf::Float16>(rows, cols, p, rng, 1e-6);
      }
}

TEST(NMKernels, LargeTwoFour) {
  std::mt19937 rng(11);
  check_kernels<float>(300, 4096, {2, 4}, rng, 1e-6);
  check_kernels<sf::BFloat16>(129, 1032, {2, 4}, rng, 1e-6);
}
