// Magnitude masks (row, layer, N:M, block, global) against oracles, for every dtype,
// awkward shapes, ties, strided views, 1 vs N threads, every SIMD level, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "sparseforge/core/cpu.h"
#include "sparseforge/core/error.h"
#include "sparseforge/prune/magnitude.h"
#include "testing/oracle.h"
#include "testing/random.h"

namespace sparseforge {
namespace prune {
namespace {

using testing::floor_count;

// A weight matrix in any dtype, kept as the values the core sees (rounded to the dtype).
template <class T>
struct Weights {
  size_t rows, cols, stride;
  std::vector<T> storage;
  std::vector<float> values;  // dense rows x cols of the stored values, for oracles

  Weights(size_t r, size_t c, const std::vector<float>& v, size_t pad = 0)
      : rows(r), cols(c), stride(c + pad), storage(r * (c + pad), from_f32<T>(99.0f)) {
    for (size_t i = 0; i < r; ++i) {
      for (size_t j = 0; j < c; ++j) {
        storage[i * stride + j] = from_f32<T>(v[i * c + j]);
        values.push_back(to_f32(storage[i * stride + j]));
      }
    }
  }
  AnyConstMatrix view() const { return ConstMatrixView<T>(storage.data(), rows, cols, stride); }
};

struct Mask {
  std::vector<uint8_t> data;
  size_t rows, cols;
  Mask(size_t r, size_t c) : data(r * c, 7), rows(r), cols(c) {}
  MaskView view() { return {data.data(), rows, cols}; }
};

template <class T>
class MagnitudeTyped : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, Float16, BFloat16>;
TYPED_TEST_SUITE(MagnitudeTyped, StorageTypes);

TYPED_TEST(MagnitudeTyped, RowScopeMatchesOracle) {
  for (size_t rows : {1, 3, 17}) {
    for (size_t cols : testing::awkward_sizes()) {
      if (cols > 1000) continue;
      for (double s : {0.0, 0.3, 0.5, 0.9}) {
        for (int ints = 0; ints < 2; ++ints) {
          const auto v = ints ? testing::small_ints(rows * cols, cols, 3)
                              : testing::normal(rows * cols, rows * 1000 + cols);
          Weights<TypeParam> W(rows, cols, v, /*pad=*/ints * 3);
          Mask keep(rows, cols);
          magnitude_mask(W.view(), s, Scope::kRow, keep.view(), 2);
          ASSERT_EQ(keep.data, testing::oracle_row(W.values, rows, cols, floor_count(s, cols)))
              << rows << "x" << cols << " s=" << s;
        }
      }
    }
  }
}

TYPED_TEST(MagnitudeTyped, LayerScopeMatchesOracle) {
  for (auto shape : {std::pair<size_t, size_t>{1, 1}, {1, 17}, {13, 7}, {43, 500}, {64, 64}}) {
    for (double s : {0.0, 0.25, 0.5, 0.75}) {
      for (int ints = 0; ints < 2; ++ints) {
        const size_t n = shape.first * shape.second;
        const auto v = ints ? testing::small_ints(n, n, 2) : testing::normal(n, n + 1);
        Weights<TypeParam> W(shape.first, shape.second, v, ints);
        Mask keep(shape.first, shape.second);
        magnitude_mask(W.view(), s, Scope::kLayer, keep.view(), 3);
        // The layer oracle is the row oracle over the flattened matrix.
        ASSERT_EQ(keep.data, testing::oracle_prune_lowest(W.values, floor_count(s, n)))
            << shape.first << "x" << shape.second << " s=" << s;
      }
    }
  }
}

TYPED_TEST(MagnitudeTyped, NMMatchesOracle) {
  for (auto p : {NMPattern{2, 4}, NMPattern{1, 4}, NMPattern{4, 8}, NMPattern{1, 2},
                 NMPattern{3, 7}, NMPattern{16, 32}, NMPattern{31, 32}}) {
    for (size_t groups : {1, 2, 5, 33}) {
      const size_t rows = 7, cols = groups * static_cast<size_t>(p.m);
      for (int ints = 0; ints < 2; ++ints) {
        const auto v =
            ints ? testing::small_ints(rows * cols, cols, 1) : testing::normal(rows * cols, cols);
        Weights<TypeParam> W(rows, cols, v, 2 * ints);
        Mask keep(rows, cols);
        magnitude_nm_mask(W.view(), p, keep.view(), 2);
        ASSERT_EQ(keep.data, testing::oracle_nm(W.values, rows, cols, p.n, p.m))
            << p.n << ":" << p.m << " cols=" << cols;
      }
    }
  }
}

// Block norms from values exactly representable so float64 sums are order-independent.
TEST(Magnitude, BlockMatchesOracle) {
  const size_t rows = 12, cols = 20;
  const auto v = testing::small_ints(rows * cols, 11, 4);
  Weights<float> W(rows, cols, v, 1);
  for (auto b : {std::pair<size_t, size_t>{1, 1}, {2, 2}, {3, 4}, {4, 5}, {12, 20}}) {
    const size_t tr = rows / b.first, tc = cols / b.second;
    std::vector<float> norms(tr * tc, 0.0f);  // exact: sums of squares of small ints
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < cols; ++c) {
        norms[(r / b.first) * tc + c / b.second] += v[r * cols + c] * v[r * cols + c];
      }
    }
    for (double s : {0.0, 0.3, 0.5, 0.8}) {
      for (Scope scope : {Scope::kLayer, Scope::kRow}) {
        std::vector<uint8_t> tile_keep;
        if (scope == Scope::kLayer) {
          tile_keep = testing::oracle_prune_lowest(norms, floor_count(s, tr * tc));
        } else {
          tile_keep = testing::oracle_row(norms, tr, tc, floor_count(s, tc));
        }
        Mask keep(rows, cols);
        magnitude_block_mask(W.view(), s, b.first, b.second, scope, keep.view(), 2);
        for (size_t r = 0; r < rows; ++r) {
          for (size_t c = 0; c < cols; ++c) {
            ASSERT_EQ(keep.data[r * cols + c], tile_keep[(r / b.first) * tc + c / b.second])
                << b.first << "x" << b.second << " s=" << s;
          }
        }
      }
    }
  }
}

// Matrices of >= 16384 weights take the sampled-band threshold; ties at the cut, several
// matrices, odd shapes and thread counts must all still match the oracle.
TEST(Magnitude, LayerAndGlobalSampledPathMatchOracle) {
  for (int ints = 0; ints < 2; ++ints) {
    const size_t rows = 97, cols = 401;
    const auto v = ints ? testing::small_ints(rows * cols, 5, 3) : testing::normal(rows * cols, 6);
    Weights<float> W(rows, cols, v, 3);
    Weights<BFloat16> B(211, 100,
                        ints ? testing::small_ints(21100, 8, 2) : testing::normal(21100, 9));
    for (double s : {0.001, 0.3, 0.5, 0.97}) {
      for (int threads : {1, 3}) {
        Mask keep(rows, cols);
        magnitude_mask(W.view(), s, Scope::kLayer, keep.view(), threads);
        ASSERT_EQ(keep.data, testing::oracle_prune_lowest(W.values, floor_count(s, rows * cols)))
            << "s=" << s << " ints=" << ints;
        Mask kw(rows, cols), kb(211, 100);
        magnitude_global_mask({W.view(), B.view()}, s, {kw.view(), kb.view()}, threads);
        std::vector<float> all = W.values;
        all.insert(all.end(), B.values.begin(), B.values.end());
        std::vector<uint8_t> got = kw.data;
        got.insert(got.end(), kb.data.begin(), kb.data.end());
        ASSERT_EQ(got, testing::oracle_prune_lowest(all, floor_count(s, all.size())));
      }
    }
  }
}

// Large values exactly at the strided sample positions (the formula in global_threshold)
// make the sampled band miss the target rank: the radix fallback must give the same mask.
TEST(Magnitude, LayerSampledBandMissFallsBackExactly) {
  const size_t rows = 64, cols = 1024, total = rows * cols, s = 4096;
  auto v = testing::normal(total, 12, 0.01f);
  for (size_t j = 0; j < s; ++j)
    v[(j * total + total / (2 * s)) / s] = 100.0f + static_cast<float>(j);
  Weights<float> W(rows, cols, v);
  Mask keep(rows, cols);
  magnitude_mask(W.view(), 0.5, Scope::kLayer, keep.view(), 2);
  ASSERT_EQ(keep.data, testing::oracle_prune_lowest(W.values, total / 2));
}

TEST(Magnitude, GlobalMatchesFlattenedConcatenationAcrossDtypes) {
  Weights<float> A(5, 8, testing::small_ints(40, 1, 3));
  Weights<Float16> B(3, 13, testing::small_ints(39, 2, 3), 2);
  Weights<BFloat16> C(7, 4, testing::normal(28, 3));
  std::vector<float> all;
  for (const auto* vals : {&A.values, &B.values, &C.values}) {
    all.insert(all.end(), vals->begin(), vals->end());
  }
  for (double s : {0.0, 0.1, 0.5, 0.95}) {
    Mask ka(5, 8), kb(3, 13), kc(7, 4);
    magnitude_global_mask({A.view(), B.view(), C.view()}, s, {ka.view(), kb.view(), kc.view()}, 2);
    std::vector<uint8_t> got;
    for (const auto* m : {&ka.data, &kb.data, &kc.data})
      got.insert(got.end(), m->begin(), m->end());
    ASSERT_EQ(got, testing::oracle_prune_lowest(all, floor_count(s, all.size()))) << s;
  }
}

TEST(Magnitude, IdenticalForAnyThreadCountAndSimdLevel) {
  const size_t rows = 37, cols = 1000;
  const auto v = testing::small_ints(rows * cols, 9, 20);  // ties spread over rows
  Weights<float> W(rows, cols, v);
  const SimdLevel before = simd_level();
  std::vector<std::vector<uint8_t>> results;
  for (int level = 0; level <= static_cast<int>(detected_simd_level()); ++level) {
    set_simd_level(static_cast<SimdLevel>(level));
    for (int threads : {1, 2, 3, 8}) {
      for (Scope scope : {Scope::kRow, Scope::kLayer}) {
        Mask keep(rows, cols);
        magnitude_mask(W.view(), 0.6, scope, keep.view(), threads);
        results.push_back(keep.data);
      }
      Mask nm(rows, cols);
      magnitude_nm_mask(W.view(), NMPattern{2, 4}, nm.view(), threads);
      results.push_back(nm.data);
    }
  }
  set_simd_level(before);
  for (size_t i = 3; i < results.size(); ++i) ASSERT_EQ(results[i], results[i % 3]) << i;
}

TEST(Magnitude, NonFiniteInputIsAnError) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    auto v = testing::normal(6 * 8, 1);
    v[4 * 8 + 3] = bad;
    Weights<float> W(6, 8, v);
    Weights<Float16> H(6, 8, v);
    Mask keep(6, 8);
    for (int threads : {1, 2}) {
      EXPECT_THROW(magnitude_mask(W.view(), 0.5, Scope::kRow, keep.view(), threads),
                   InvalidArgument);
      EXPECT_THROW(magnitude_mask(H.view(), 0.5, Scope::kLayer, keep.view(), threads),
                   InvalidArgument);
      EXPECT_THROW(magnitude_mask(W.view(), 0.0, Scope::kLayer, keep.view(), threads),
                   InvalidArgument);
      EXPECT_THROW(magnitude_nm_mask(W.view(), NMPattern{2, 4}, keep.view(), threads),
                   InvalidArgument);
      EXPECT_THROW(magnitude_block_mask(W.view(), 0.5, 2, 2, Scope::kLayer, keep.view(), threads),
                   InvalidArgument);
    }
    try {
      magnitude_mask(W.view(), 0.5, Scope::kRow, keep.view(), 2);
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("W: contains NaN or Inf (row 4)", 0), 0u) << e.what();
    }
  }
}

TEST(Magnitude, BadArgumentsAreErrors) {
  Weights<float> W(4, 8, testing::normal(32, 1));
  Mask keep(4, 8), small(4, 7);
  for (double s : {-0.1, 1.0, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_THROW(magnitude_mask(W.view(), s, Scope::kRow, keep.view(), 1), InvalidArgument) << s;
    EXPECT_THROW(magnitude_block_mask(W.view(), s, 2, 2, Scope::kRow, keep.view(), 1),
                 InvalidArgument);
  }
  EXPECT_THROW(magnitude_mask(W.view(), 0.5, Scope::kRow, small.view(), 1), InvalidArgument);
  EXPECT_THROW(magnitude_nm_mask(W.view(), NMPattern{2, 3}, keep.view(), 1), InvalidArgument);
  EXPECT_THROW(magnitude_nm_mask(W.view(), NMPattern{4, 4}, keep.view(), 1), InvalidArgument);
  EXPECT_THROW(magnitude_nm_mask(W.view(), NMPattern{0, 4}, keep.view(), 1), InvalidArgument);
  EXPECT_THROW(magnitude_block_mask(W.view(), 0.5, 3, 2, Scope::kRow, keep.view(), 1),
               InvalidArgument);
  EXPECT_THROW(magnitude_block_mask(W.view(), 0.5, 0, 2, Scope::kRow, keep.view(), 1),
               InvalidArgument);
  AnyConstMatrix empty(DType::kF32, W.storage.data(), 0, 8, 8);
  EXPECT_THROW(magnitude_mask(empty, 0.5, Scope::kRow, keep.view(), 1), InvalidArgument);
  EXPECT_THROW(magnitude_global_mask({}, 0.5, {}, 1), InvalidArgument);
  EXPECT_THROW(magnitude_global_mask({W.view()}, 0.5, {}, 1), InvalidArgument);
}

// A partly pruned matrix has many exact zeros: re-pruning must keep the tie rule.
TEST(Magnitude, RepruningAlreadySparseMatrix) {
  auto v = testing::normal(16 * 64, 4);
  for (size_t i = 0; i < v.size(); i += 2) v[i] = 0.0f;
  Weights<float> W(16, 64, v);
  for (Scope scope : {Scope::kRow, Scope::kLayer}) {
    Mask keep(16, 64);
    magnitude_mask(W.view(), 0.7, scope, keep.view(), 2);
    const auto expect = scope == Scope::kRow
                            ? testing::oracle_row(W.values, 16, 64, floor_count(0.7, 64))
                            : testing::oracle_prune_lowest(W.values, floor_count(0.7, 16 * 64));
    ASSERT_EQ(keep.data, expect);
  }
}

}  // namespace
}  // namespace prune
}  // namespace sparseforge
