#include "sparseforge/prune/mask.h"

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/simd/kernels.h"
#include "prune/rows.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace prune {

NMPattern parse_nm(const std::string& text) {
  const size_t colon = text.find(':');
  bool ok = colon != std::string::npos && colon > 0 && colon + 1 < text.size();
  NMPattern p{0, 0};
  if (ok) {
    for (size_t i = 0; i < text.size(); ++i) {
      if (i != colon && (text[i] < '0' || text[i] > '9')) ok = false;
    }
  }
  if (ok && colon <= 3 && text.size() - colon - 1 <= 3) {
    p.n = std::atoi(text.substr(0, colon).c_str());
    p.m = std::atoi(text.substr(colon + 1).c_str());
  } else {
    ok = false;
  }
  SF_CHECK_ARG(ok, "pattern: expected 'n:m' such as '2:4' (n kept of every m), got '%s'",
               text.c_str());
  SF_CHECK_ARG(p.n >= 1 && p.n < p.m && p.m <= kMaxM,
               "pattern: expected 1 <= n < m <= %d (n kept of every m), got '%s'", kMaxM,
               text.c_str());
  return p;
}

void check_nm(NMPattern p, size_t cols) {
  SF_CHECK_ARG(p.n >= 1 && p.n < p.m && p.m <= kMaxM,
               "pattern: expected 1 <= n < m <= %d (n kept of every m), got %d:%d", kMaxM, p.n,
               p.m);
  SF_CHECK_ARG(cols % static_cast<size_t>(p.m) == 0,
               "W: in_features=%zu is not a multiple of m=%d (pattern %d:%d)", cols, p.m, p.n, p.m);
}

Scope parse_scope(const std::string& text) {
  if (text == "row") return Scope::kRow;
  if (text == "layer") return Scope::kLayer;
  SF_THROW(InvalidArgument, "scope: expected 'row' or 'layer', got '%s'", text.c_str());
}

void check_sparsity(double sparsity) {
  SF_CHECK_ARG(sparsity >= 0.0 && sparsity < 1.0, "sparsity: expected a value in [0, 1), got %g",
               sparsity);
}

size_t prune_count(double sparsity, size_t count) {
  check_sparsity(sparsity);
  const double k = std::floor(static_cast<double>(count) * sparsity);
  return k >= static_cast<double>(count) ? count : static_cast<size_t>(k);
}

void check_finite(const AnyConstMatrix& W, const char* arg, int num_threads) {
  detail::check_matrix(W, arg);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    for (size_t r = r0; r < r1; ++r) detail::row_abs_keys(W, r, keys.data(), arg);
  });
}

void apply_mask(const AnyMatrix& W, ConstMaskView keep, int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  const simd::KernelTable& kt = simd::kernels();
  const size_t es = dtype_size(W.dtype);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      char* row = static_cast<char*>(W.data) + r * W.stride * es;
      if (es == 4) {
        kt.apply_mask32(reinterpret_cast<uint32_t*>(row), keep.row(r), W.cols);
      } else {
        kt.apply_mask16(reinterpret_cast<uint16_t*>(row), keep.row(r), W.cols);
      }
    }
  });
}

size_t masked_copy(const AnyConstMatrix& W, ConstMaskView keep, const AnyMatrix& out,
                   int num_threads) {
  detail::check_matrix(W, "W");
  detail::check_keep(keep, W.rows, W.cols, "mask");
  detail::check_matrix(out, "out");
  SF_CHECK_ARG(out.dtype == W.dtype && out.rows == W.rows && out.cols == W.cols,
               "out: expected a %s matrix of shape (%zu, %zu), got %s (%zu, %zu)",
               dtype_name(W.dtype), W.rows, W.cols, dtype_name(out.dtype), out.rows, out.cols);
  const simd::KernelTable& kt = simd::kernels();
  const size_t es = dtype_size(W.dtype);
  std::vector<size_t> per_row(W.rows);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const void* src = detail::row_ptr(W, r);
      char* dst = static_cast<char*>(out.data) + r * out.stride * es;
      per_row[r] = es == 4 ? kt.masked_copy32(static_cast<const uint32_t*>(src), keep.row(r),
                                              reinterpret_cast<uint32_t*>(dst), W.cols)
                           : kt.masked_copy16(static_cast<const uint16_t*>(src), keep.row(r),
                                              reinterpret_cast<uint16_t*>(dst), W.cols);
    }
  });
  size_t total = 0;
  for (size_t c : per_row) total += c;
  return total;
}

size_t count_zeros(const AnyConstMatrix& W, int num_threads) {
  detail::check_matrix(W, "W");
  const simd::KernelTable& kt = simd::kernels();
  // One partial per row, summed in row order: integer sums, identical for any thread count.
  std::vector<size_t> per_row(W.rows);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r) {
      const void* p = detail::row_ptr(W, r);
      per_row[r] = W.dtype == DType::kF32
                       ? kt.count_zeros32(static_cast<const uint32_t*>(p), W.cols)
                       : kt.count_zeros16(static_cast<const uint16_t*>(p), W.cols);
    }
  });
  size_t total = 0;
  for (size_t c : per_row) total += c;
  return total;
}

NMViolations nm_violations(const AnyConstMatrix& W, NMPattern p, size_t max_report,
                           int num_threads) {
  detail::check_matrix(W, "W");
  check_nm(p, W.cols);
  const size_t m = static_cast<size_t>(p.m), groups_per_row = W.cols / m;
  std::vector<size_t> bad_per_row(W.rows);
  parallel_for(W.rows, num_threads, [&](size_t r0, size_t r1) {
    std::vector<uint32_t> keys(W.cols);
    for (size_t r = r0; r < r1; ++r) {
      detail::row_abs_keys(W, r, keys.data(), "W");
      size_t bad = 0;
      for (size_t g = 0; g < groups_per_row; ++g) {
        int nonzero = 0;
        for (size_t j = 0; j < m; ++j) nonzero += keys[g * m + j] != 0;
        bad += nonzero > p.n;
      }
      bad_per_row[r] = bad;
    }
  });
  NMViolations out;
  out.groups = W.rows * groups_per_row;
  for (size_t r = 0; r < W.rows; ++r) {
    out.violating += bad_per_row[r];
    if (bad_per_row[r] == 0 || out.first.size() >= max_report) continue;
    std::vector<uint32_t> keys(W.cols);
    detail::row_abs_keys(W, r, keys.data(), "W");
    for (size_t g = 0; g < groups_per_row && out.first.size() < max_report; ++g) {
      int nonzero = 0;
      for (size_t j = 0; j < m; ++j) nonzero += keys[g * m + j] != 0;
      if (nonzero > p.n) out.first.emplace_back(r, g * m);
    }
  }
  return out;
}

}  // namespace prune
}  // namespace sparseforge
