// Bitmap and CSR formats and kernels: round trips, components against a direct reading of
// the layout, validate() on every kind of corruption, and GEMV/GEMM on every SIMD level
// against a double-precision reference (awkward shapes, 1 vs 2 vs 3 threads bitwise,
// outputs poisoned with NaN before each call).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/simd/unstructured.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/format/unstructured.h"
#include "sparseforge/kernels/unstructured.h"
#include "testing/random.h"

namespace sf = sparseforge;
namespace fm = sparseforge::format;
namespace sk = sparseforge::kernels;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

// Restores the SIMD level at the end of a test.
struct LevelGuard {
  sf::SimdLevel saved = sf::simd_level();
  ~LevelGuard() { sf::set_simd_level(saved); }
};

std::vector<sf::SimdLevel> levels() {
  std::vector<sf::SimdLevel> out;
  for (int l = 0; l <= static_cast<int>(sf::detected_simd_level()); ++l) {
    out.push_back(static_cast<sf::SimdLevel>(l));
  }
  return out;
}

// A dense weight in one storage dtype with its exact fp32 values.
struct Dense {
  sf::DType dtype;
  size_t rows, cols;
  std::vector<unsigned char> bytes;  // rows x cols elements of dtype
  std::vector<float> f32;            // the same values widened (exact)

  sf::AnyConstMatrix view() const { return {dtype, bytes.data(), rows, cols, cols}; }
};

// Normal values with a fraction `sparsity` set to zero (some of them -0.0).
Dense make_dense(sf::DType dtype, size_t rows, size_t cols, double sparsity, uint64_t seed) {
  std::vector<float> w = sf::testing::normal(rows * cols, seed);
  std::mt19937_64 rng(seed ^ 0x9E3779B97F4A7C15ull);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (float& v : w) {
    if (u(rng) < sparsity) v = u(rng) < 0.2 ? -0.0f : 0.0f;
  }
  Dense d{dtype, rows, cols, {}, {}};
  const size_t elem = sf::dtype_size(dtype);
  d.bytes.resize(rows * cols * elem);
  d.f32.resize(rows * cols);
  for (size_t i = 0; i < w.size(); ++i) {
    if (dtype == sf::DType::kF32) {
      std::memcpy(&d.bytes[i * 4], &w[i], 4);
      d.f32[i] = w[i];
    } else if (dtype == sf::DType::kF16) {
      const sf::Float16 h = sf::f32_to_f16(w[i]);
      std::memcpy(&d.bytes[i * 2], &h.bits, 2);
      d.f32[i] = sf::f16_to_f32(h);
    } else {
      const sf::BFloat16 h = sf::f32_to_bf16(w[i]);
      std::memcpy(&d.bytes[i * 2], &h.bits, 2);
      d.f32[i] = sf::bf16_to_f32(h);
    }
  }
  return d;
}

const sf::DType kDTypes[] = {sf::DType::kF32, sf::DType::kF16, sf::DType::kBF16};

std::vector<std::pair<size_t, size_t>> shapes() {
  return {{1, 1},  {1, 7},  {3, 8},   {2, 9},  {5, 15}, {4, 16},   {7, 17},   {17, 1},
          {6, 31}, {9, 33}, {13, 43}, {8, 64}, {5, 97}, {43, 129}, {11, 401}, {3, 500}};
}

// y_ref[b][r] = sum over c of W(r, c) X(b, c) in double, and sum |W(r, c) X(b, c)| as the
// scale of the rounding error.
void reference(const Dense& d, const std::vector<float>& X, size_t batch, std::vector<double>& y,
               std::vector<double>& scale) {
  y.assign(batch * d.rows, 0.0);
  scale.assign(batch * d.rows, 0.0);
  for (size_t b = 0; b < batch; ++b)
    for (size_t r = 0; r < d.rows; ++r)
      for (size_t c = 0; c < d.cols; ++c) {
        const double p = static_cast<double>(d.f32[r * d.cols + c]) * X[b * d.cols + c];
        y[b * d.rows + r] += p;
        scale[b * d.rows + r] += std::fabs(p);
      }
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want,
                  const std::vector<double>& scale, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(std::isnan(got[i])) << what << ": element " << i << " not written";
    EXPECT_LE(std::fabs(got[i] - want[i]), 1e-5 * scale[i] + 1e-30)
        << what << ": element " << i << " got " << got[i] << " want " << want[i];
  }
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// --- formats -----------------------------------------------------------------------------

TEST(Unstructured, RoundTripAndComponents) {
  uint64_t seed = 1;
  for (sf::DType t : kDTypes) {
    for (auto [rows, cols] : shapes()) {
      for (double s : {0.0, 0.5, 0.9, 1.0}) {
        const Dense d = make_dense(t, rows, cols, s, ++seed);
        const size_t elem = sf::dtype_size(t);
        const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view(), 2);
        const fm::CSRMatrix C = fm::csr_from_dense(d.view(), 2);
        ASSERT_NO_THROW(fm::validate(B));
        ASSERT_NO_THROW(fm::validate(C));
        // Components read straight from the layout paragraph.
        size_t stored = 0;
        const size_t rb = (cols + 7) / 8;
        for (size_t r = 0; r < rows; ++r) {
          ASSERT_EQ(B.row_offsets[r], static_cast<int64_t>(stored));
          ASSERT_EQ(C.indptr[r], static_cast<int64_t>(stored));
          for (size_t c = 0; c < cols; ++c) {
            const bool nz = d.f32[r * cols + c] != 0.0f;
            ASSERT_EQ(((B.bitmap[r * rb + c / 8] >> (c % 8)) & 1) != 0, nz);
            if (!nz) continue;
            ASSERT_EQ(std::memcmp(&B.values[stored * elem], &d.bytes[(r * cols + c) * elem], elem),
                      0);
            ASSERT_EQ(C.indices[stored], static_cast<int32_t>(c));
            ASSERT_EQ(std::memcmp(&C.values[stored * elem], &d.bytes[(r * cols + c) * elem], elem),
                      0);
            ++stored;
          }
        }
        EXPECT_EQ(fm::nnz(B), stored);
        EXPECT_EQ(fm::nnz(C), stored);
        EXPECT_EQ(fm::nbytes(B), rows * rb + stored * elem + fm::kValuePadBytes + 8 * (rows + 1));
        EXPECT_EQ(fm::nbytes(C), 8 * (rows + 1) + 4 * (stored + fm::kIndexPad) + stored * elem +
                                     fm::kValuePadBytes);
        // to_dense gives W back, with -0.0 (not stored) as +0.0.
        for (int which = 0; which < 2; ++which) {
          std::vector<unsigned char> out(rows * cols * elem, 0xAB);
          const sf::AnyMatrix ov(t, out.data(), rows, cols, cols);
          if (which == 0) fm::to_dense(B, ov, 2);
          if (which == 1) fm::to_dense(C, ov, 2);
          for (size_t i = 0; i < rows * cols; ++i) {
            if (d.f32[i] == 0.0f) {
              for (size_t k = 0; k < elem; ++k) ASSERT_EQ(out[i * elem + k], 0);
            } else {
              ASSERT_EQ(std::memcmp(&out[i * elem], &d.bytes[i * elem], elem), 0);
            }
          }
        }
      }
    }
  }
}

TEST(Unstructured, MaskStoresExactlyTheMaskedInPositions) {
  const Dense d = make_dense(sf::DType::kF32, 5, 13, 0.5, 7);
  std::vector<uint8_t> keep(5 * 13);
  for (size_t i = 0; i < keep.size(); ++i) keep[i] = (i % 3) == 0;
  const sf::ConstMaskView kv(keep.data(), 5, 13);
  const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view(), kv);
  const fm::CSRMatrix C = fm::csr_from_dense(d.view(), kv);
  size_t expected = 0;
  for (uint8_t k : keep) expected += k;
  EXPECT_EQ(fm::nnz(B), expected);  // kept zeros included
  EXPECT_EQ(fm::nnz(C), expected);
  // A NaN where the mask is off is never read as a value.
  Dense bad = d;
  const float nan = kNaN;
  std::memcpy(&bad.bytes[1 * 4], &nan, 4);  // keep[1] == 0
  EXPECT_NO_THROW(fm::bitmap_from_dense(bad.view(), kv));
  std::memcpy(&bad.bytes[3 * 4], &nan, 4);  // keep[3] == 1
  EXPECT_THROW(fm::bitmap_from_dense(bad.view(), kv), sf::InvalidArgument);
  EXPECT_THROW(fm::csr_from_dense(bad.view(), kv), sf::InvalidArgument);
}

TEST(Unstructured, NonFiniteWeightsAreRejected) {
  for (sf::DType t : kDTypes) {
    for (float v : {kNaN, kInf, -kInf}) {
      Dense d = make_dense(t, 4, 9, 0.3, 3);
      const size_t elem = sf::dtype_size(t);
      if (t == sf::DType::kF32) {
        std::memcpy(&d.bytes[11 * elem], &v, 4);
      } else {
        const uint16_t h = t == sf::DType::kF16 ? sf::f32_to_f16(v).bits : sf::f32_to_bf16(v).bits;
        std::memcpy(&d.bytes[11 * elem], &h, 2);
      }
      try {
        fm::bitmap_from_dense(d.view(), 2);
        FAIL() << "expected InvalidArgument";
      } catch (const sf::InvalidArgument& e) {
        EXPECT_NE(std::string(e.what()).find("(1, 2)"), std::string::npos) << e.what();
      }
      EXPECT_THROW(fm::csr_from_dense(d.view(), 1), sf::InvalidArgument);
    }
  }
}

template <class F>
void expect_invalid(F&& f, const char* needle) {
  try {
    f();
    FAIL() << "expected InvalidArgument mentioning '" << needle << "'";
  } catch (const sf::InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Unstructured, ValidateCatchesCorruptBitmap) {
  const Dense d = make_dense(sf::DType::kBF16, 6, 13, 0.5, 11);
  const fm::BitmapMatrix good = fm::bitmap_from_dense(d.view());
  ASSERT_GT(fm::nnz(good), 4u);
  {
    fm::BitmapMatrix A = good;  // a bit past cols
    A.bitmap[1] = static_cast<uint8_t>(A.bitmap[1] | 0x80);
    expect_invalid([&] { fm::validate(A); }, "bitmap");
  }
  {
    fm::BitmapMatrix A = good;  // a bit flipped inside: popcount != row_offsets
    A.bitmap[2] ^= 1;
    expect_invalid([&] { fm::validate(A); }, "row_offsets");
  }
  {
    fm::BitmapMatrix A = good;
    A.row_offsets[3] += 1;
    expect_invalid([&] { fm::validate(A); }, "row_offsets");
  }
  {
    fm::BitmapMatrix A = good;
    A.row_offsets[0] = 1;
    expect_invalid([&] { fm::validate(A); }, "row_offsets");
  }
  {
    fm::BitmapMatrix A = good;
    A.row_offsets.pop_back();
    expect_invalid([&] { fm::validate(A); }, "row_offsets");
  }
  {
    fm::BitmapMatrix A = good;
    A.bitmap.pop_back();
    expect_invalid([&] { fm::validate(A); }, "bitmap");
  }
  {
    fm::BitmapMatrix A = good;  // one value too few
    A.values.erase(A.values.begin(), A.values.begin() + 2);
    expect_invalid([&] { fm::validate(A); }, "values");
  }
  {
    fm::BitmapMatrix A = good;  // a NaN value
    A.values[1] = 0x7F;
    A.values[0] = 0xC0;
    expect_invalid([&] { fm::validate(A); }, "values");
  }
  {
    fm::BitmapMatrix A = good;
    A.values.back() = 1;  // padding not zero
    expect_invalid([&] { fm::validate(A); }, "padding");
  }
  {
    fm::BitmapMatrix A = good;
    A.cols = 0;
    expect_invalid([&] { fm::validate(A); }, "shape");
  }
  // From components: same checks, and row_offsets derived when not given.
  const size_t nz = fm::nnz(good);
  EXPECT_NO_THROW(
      fm::bitmap_from_components(6, 13, sf::DType::kBF16, good.bitmap, good.values.data(), nz, {}));
  expect_invalid(
      [&] {
        fm::bitmap_from_components(6, 13, sf::DType::kBF16, good.bitmap, good.values.data(), nz - 1,
                                   {});
      },
      "values");
  std::vector<int64_t> offsets = good.row_offsets;
  offsets[2] -= 1;
  expect_invalid(
      [&] {
        fm::bitmap_from_components(6, 13, sf::DType::kBF16, good.bitmap, good.values.data(), nz,
                                   offsets);
      },
      "row_offsets");
  expect_invalid(
      [&] {
        fm::bitmap_from_components(6, 17, sf::DType::kBF16, good.bitmap, good.values.data(), nz,
                                   {});
      },
      "bitmap");
}

TEST(Unstructured, ValidateCatchesCorruptCsr) {
  const Dense d = make_dense(sf::DType::kF32, 6, 13, 0.4, 12);
  const fm::CSRMatrix good = fm::csr_from_dense(d.view());
  ASSERT_GT(good.indptr[2] - good.indptr[1], 2);
  const size_t p = static_cast<size_t>(good.indptr[1]);  // row 1's first value
  {
    fm::CSRMatrix A = good;
    A.indices[p] = 13;  // == cols
    expect_invalid([&] { fm::validate(A); }, "outside");
  }
  {
    fm::CSRMatrix A = good;
    A.indices[p] = -1;
    expect_invalid([&] { fm::validate(A); }, "outside");
  }
  {
    fm::CSRMatrix A = good;
    std::swap(A.indices[p], A.indices[p + 1]);  // unsorted
    expect_invalid([&] { fm::validate(A); }, "sorted");
  }
  {
    fm::CSRMatrix A = good;
    A.indices[p + 1] = A.indices[p];  // duplicate
    expect_invalid([&] { fm::validate(A); }, "unique");
  }
  {
    fm::CSRMatrix A = good;
    std::swap(A.indptr[2], A.indptr[3]);
    if (A.indptr[2] == A.indptr[3]) A.indptr[2] += 1;
    expect_invalid([&] { fm::validate(A); }, "indptr");
  }
  {
    fm::CSRMatrix A = good;
    A.indptr[0] = 1;
    expect_invalid([&] { fm::validate(A); }, "indptr");
  }
  {
    fm::CSRMatrix A = good;
    A.indptr.back() += 1;  // nnz disagrees with indices
    expect_invalid([&] { fm::validate(A); }, "indices");
  }
  {
    fm::CSRMatrix A = good;
    const float inf = kInf;
    std::memcpy(&A.values[4 * 3], &inf, 4);
    expect_invalid([&] { fm::validate(A); }, "finite");
  }
  const size_t nz = fm::nnz(good);
  std::vector<int64_t> ip = good.indptr;
  EXPECT_NO_THROW(fm::csr_from_components(6, 13, sf::DType::kF32, ip, good.indices.data(), nz,
                                          good.values.data(), nz));
  expect_invalid(
      [&] {
        fm::csr_from_components(6, 13, sf::DType::kF32, ip, good.indices.data(), nz,
                                good.values.data(), nz - 1);
      },
      "values");
  expect_invalid(
      [&] {
        fm::csr_from_components(6, 13, sf::DType::kF32, ip, good.indices.data(), nz - 1,
                                good.values.data(), nz - 1);
      },
      "indices");
  ip.pop_back();
  expect_invalid(
      [&] {
        fm::csr_from_components(6, 13, sf::DType::kF32, ip, good.indices.data(), nz,
                                good.values.data(), nz);
      },
      "indptr");
}

// --- kernels -----------------------------------------------------------------------------

std::vector<float> random_x(size_t n, uint64_t seed) { return sf::testing::normal(n, seed); }

TEST(UnstructuredKernels, GemvEveryLevelMatchesReference) {
  LevelGuard guard;
  uint64_t seed = 100;
  for (sf::SimdLevel level : levels()) {
    sf::set_simd_level(level);
    for (sf::DType t : kDTypes) {
      for (auto [rows, cols] : shapes()) {
        for (double s : {0.0, 0.5, 0.8, 1.0}) {
          const Dense d = make_dense(t, rows, cols, s, ++seed);
          const std::vector<float> x = random_x(cols, ++seed);
          std::vector<double> want, scale;
          reference(d, x, 1, want, scale);
          const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
          const fm::CSRMatrix C = fm::csr_from_dense(d.view());
          std::vector<float> y1, y2, y3;
          for (int which = 0; which < 2; ++which) {
            for (int threads : {1, 2, 3}) {
              std::vector<float>& y = threads == 1 ? y1 : threads == 2 ? y2 : y3;
              y.assign(rows, kNaN);
              if (which == 0) sk::bitmap_gemv(B, x.data(), y.data(), threads);
              if (which == 1) sk::csr_gemv(C, x.data(), y.data(), threads);
            }
            SCOPED_TRACE(testing::Message()
                         << sf::simd_level_name(level) << " " << sf::dtype_name(t) << " " << rows
                         << "x" << cols << " s=" << s << (which ? " csr" : " bitmap"));
            expect_close(y1, want, scale, "gemv");
            EXPECT_TRUE(same_bits(y1, y2));
            EXPECT_TRUE(same_bits(y1, y3));
          }
        }
      }
    }
  }
}

TEST(UnstructuredKernels, GemmEveryLevelMatchesReference) {
  LevelGuard guard;
  uint64_t seed = 500;
  for (sf::SimdLevel level : levels()) {
    sf::set_simd_level(level);
    for (sf::DType t : kDTypes) {
      for (auto [rows, cols] :
           {std::pair<size_t, size_t>{1, 1}, {7, 17}, {13, 43}, {43, 129}, {33, 500}}) {
        for (size_t batch : {1, 2, 3, 4, 5, 9, 17, 33, 70}) {
          const Dense d = make_dense(t, rows, cols, 0.6, ++seed);
          const std::vector<float> X = random_x(batch * cols, ++seed);
          std::vector<double> want, scale;
          reference(d, X, batch, want, scale);
          const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
          const fm::CSRMatrix C = fm::csr_from_dense(d.view());
          for (int which = 0; which < 2; ++which) {
            SCOPED_TRACE(testing::Message()
                         << sf::simd_level_name(level) << " " << sf::dtype_name(t) << " " << rows
                         << "x" << cols << " batch=" << batch << (which ? " csr" : " bitmap"));
            std::vector<float> Y1, Y2;
            for (int threads : {1, 2}) {
              std::vector<float>& Y = threads == 1 ? Y1 : Y2;
              Y.assign(batch * rows, kNaN);
              const sf::ConstMatrixView<float> Xv(X.data(), batch, cols);
              const sf::MatrixView<float> Yv(Y.data(), batch, rows);
              if (which == 0) sk::bitmap_gemm(B, Xv, Yv, threads);
              if (which == 1) sk::csr_gemm(C, Xv, Yv, threads);
            }
            expect_close(Y1, want, scale, "gemm");
            EXPECT_TRUE(same_bits(Y1, Y2));
            if (which == 0 && batch < sk::detail::kBitmapDenseGemmBatch) {
              // The direct bitmap kernel gives each element exactly its GEMV value.
              std::vector<float> y(rows);
              for (size_t b = 0; b < batch; ++b) {
                sk::bitmap_gemv(B, X.data() + b * cols, y.data(), 1);
                ASSERT_EQ(std::memcmp(y.data(), Y1.data() + b * rows, rows * 4), 0) << "b=" << b;
              }
            }
          }
        }
      }
    }
  }
}

TEST(UnstructuredKernels, BothBitmapGemmStrategiesMatchReference) {
  LevelGuard guard;
  uint64_t seed = 900;
  for (sf::SimdLevel level : levels()) {
    sf::set_simd_level(level);
    for (sf::DType t : kDTypes) {
      for (auto [rows, cols] : {std::pair<size_t, size_t>{1, 3}, {70, 17}, {129, 500}}) {
        for (size_t batch : {1, 8, 40}) {
          const Dense d = make_dense(t, rows, cols, 0.5, ++seed);
          const std::vector<float> X = random_x(batch * cols, ++seed);
          std::vector<double> want, scale;
          reference(d, X, batch, want, scale);
          const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
          for (int dense_path = 0; dense_path < 2; ++dense_path) {
            SCOPED_TRACE(testing::Message()
                         << sf::simd_level_name(level) << " " << sf::dtype_name(t) << " " << rows
                         << "x" << cols << " batch=" << batch << " dense=" << dense_path);
            std::vector<float> Y1(batch * rows, kNaN), Y2(batch * rows, kNaN);
            for (int threads : {1, 2}) {
              float* Y = threads == 1 ? Y1.data() : Y2.data();
              if (dense_path) {
                sk::detail::bitmap_gemm_dense_tiles(B, X.data(), cols, batch, Y, rows, threads);
              } else {
                sk::detail::bitmap_gemm_direct(B, X.data(), cols, batch, Y, rows, threads);
              }
            }
            expect_close(Y1, want, scale, "bitmap gemm");
            EXPECT_TRUE(same_bits(Y1, Y2));
          }
        }
      }
    }
  }
}

TEST(UnstructuredKernels, StridedInputsAndOutputs) {
  const Dense d = make_dense(sf::DType::kF32, 9, 21, 0.5, 77);
  const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
  const fm::CSRMatrix C = fm::csr_from_dense(d.view());
  const size_t batch = 5, ldx = 30, ldy = 14;
  const std::vector<float> Xs = random_x(batch * ldx, 78);
  std::vector<float> X(batch * 21);
  for (size_t b = 0; b < batch; ++b)
    for (size_t c = 0; c < 21; ++c) X[b * 21 + c] = Xs[b * ldx + c];
  std::vector<double> want, scale;
  reference(d, X, batch, want, scale);
  for (int which = 0; which < 2; ++which) {
    std::vector<float> Y(batch * ldy, kNaN);
    const sf::ConstMatrixView<float> Xv(Xs.data(), batch, 21, ldx);
    const sf::MatrixView<float> Yv(Y.data(), batch, 9, ldy);
    if (which == 0) sk::bitmap_gemm(B, Xv, Yv, 2);
    if (which == 1) sk::csr_gemm(C, Xv, Yv, 2);
    std::vector<float> got(batch * 9);
    for (size_t b = 0; b < batch; ++b) {
      for (size_t r = 0; r < 9; ++r) got[b * 9 + r] = Y[b * ldy + r];
      for (size_t r = 9; r < ldy; ++r) EXPECT_TRUE(std::isnan(Y[b * ldy + r]));  // untouched
    }
    expect_close(got, want, scale, which ? "csr strided" : "bitmap strided");
  }
}

TEST(UnstructuredKernels, OnlyStoredWeightsMeetInfiniteInputs) {
  LevelGuard guard;
  for (sf::SimdLevel level : levels()) {
    sf::set_simd_level(level);
    for (sf::DType t : kDTypes) {
      const Dense d = make_dense(t, 6, 37, 0.5, 91);
      const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
      const fm::CSRMatrix C = fm::csr_from_dense(d.view());
      std::vector<float> x = random_x(37, 92);
      // Inf / NaN in x at columns row 0 does not store.
      std::vector<bool> hit(6, false);
      for (size_t c = 0; c < 37; ++c) {
        if (d.f32[c] == 0.0f) {
          x[c] = c % 2 ? kInf : kNaN;
          for (size_t r = 0; r < 6; ++r) hit[r] = hit[r] || d.f32[r * 37 + c] != 0.0f;
        }
      }
      for (int which = 0; which < 2; ++which) {
        for (size_t batch : {size_t{1}, size_t{3}, sk::detail::kBitmapDenseGemmBatch + 1}) {
          std::vector<float> X(batch * 37), Y(batch * 6, 0.0f);
          for (size_t b = 0; b < batch; ++b) std::copy(x.begin(), x.end(), X.begin() + b * 37);
          const sf::ConstMatrixView<float> Xv(X.data(), batch, 37);
          const sf::MatrixView<float> Yv(Y.data(), batch, 6);
          if (which == 0) sk::bitmap_gemm(B, Xv, Yv, 1);
          if (which == 1) sk::csr_gemm(C, Xv, Yv, 1);
          for (size_t b = 0; b < batch; ++b) {
            EXPECT_TRUE(std::isfinite(Y[b * 6])) << sf::simd_level_name(level) << " " << which;
            for (size_t r = 0; r < 6; ++r) {
              if (!hit[r]) {
                EXPECT_TRUE(std::isfinite(Y[b * 6 + r]));
              }
            }
          }
        }
      }
    }
  }
}

TEST(UnstructuredKernels, BadArgumentsThrow) {
  const Dense d = make_dense(sf::DType::kF32, 4, 4, 0.5, 5);
  const fm::BitmapMatrix B = fm::bitmap_from_dense(d.view());
  const fm::CSRMatrix C = fm::csr_from_dense(d.view());
  std::vector<float> buf(16, 1.0f);
  EXPECT_THROW(sk::bitmap_gemv(B, buf.data(), buf.data() + 2, 1), sf::InvalidArgument);  // overlap
  EXPECT_THROW(sk::csr_gemv(C, buf.data(), nullptr, 1), sf::InvalidArgument);
  std::vector<float> Y(8);
  EXPECT_THROW(sk::bitmap_gemm(B, sf::ConstMatrixView<float>(buf.data(), 2, 3),
                               sf::MatrixView<float>(Y.data(), 2, 4), 1),
               sf::InvalidArgument);  // X has 3 columns, A 4
  EXPECT_THROW(sk::csr_gemm(C, sf::ConstMatrixView<float>(buf.data(), 2, 4),
                            sf::MatrixView<float>(Y.data(), 2, 3), 1),
               sf::InvalidArgument);  // Y has 3 columns, A 4 rows
  std::vector<unsigned char> out(16 * 2);
  EXPECT_THROW(fm::to_dense(B, sf::AnyMatrix(sf::DType::kF16, out.data(), 4, 4, 4)),
               sf::DTypeError);
  const sf::AnyConstMatrix empty(sf::DType::kF32, buf.data(), 0, 4, 4);
  EXPECT_THROW(fm::bitmap_from_dense(empty), sf::InvalidArgument);
}

}  // namespace
