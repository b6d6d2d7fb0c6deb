// Dispatch / combine and the SwiGLU MoE FFN (see moe/dispatch.h).
#include "sparseforge/moe/dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "sparseforge/kernels/dense.h"
#include "sparseforge/models/ops.h"
#include "threads.h"

namespace sparseforge {
namespace moe {

size_t dispatch_plan(ConstMatrixView<int32_t> ids, ConstMatrixView<int32_t> locations,
                     size_t num_experts, int64_t* offsets, int32_t* token_of,
                     size_t token_of_capacity, MatrixView<int32_t> row_of) {
  const size_t T = ids.rows, k = ids.cols, E = num_experts;
  SF_CHECK_ARG(E >= 1, "num_experts: expected >= 1, got %zu", E);
  SF_CHECK_ARG(locations.rows == T && locations.cols == k,
               "locations: expected shape (%zu, %zu), got (%zu, %zu)", T, k, locations.rows,
               locations.cols);
  SF_CHECK_ARG(row_of.rows == T && row_of.cols == k,
               "row_of: expected shape (%zu, %zu), got (%zu, %zu)", T, k, row_of.rows, row_of.cols);
  // Kept rows per expert, then exclusive prefix sums.
  std::fill(offsets, offsets + E + 1, 0);
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < k; ++j) {
      const int32_t e = ids(t, j);
      SF_CHECK_ARG(e >= 0 && static_cast<size_t>(e) < E,
                   "expert_ids: expected values in [0, %zu), got %d at (%zu, %zu)", E, e, t, j);
      const int32_t loc = locations(t, j);
      SF_CHECK_ARG(loc >= -1, "locations: expected values >= -1, got %d at (%zu, %zu)", loc, t, j);
      if (loc >= 0) ++offsets[e + 1];
    }
  }
  for (size_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  const auto n = static_cast<size_t>(offsets[E]);
  SF_CHECK_ARG(n <= token_of_capacity, "token_of: expected room for %zu rows, got %zu", n,
               token_of_capacity);
  std::fill(token_of, token_of + n, -1);
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < k; ++j) {
      const int32_t loc = locations(t, j);
      if (loc < 0) {
        row_of(t, j) = -1;
        continue;
      }
      const auto e = static_cast<size_t>(ids(t, j));
      const int64_t count = offsets[e + 1] - offsets[e];
      SF_CHECK_ARG(loc < count,
                   "locations: expert %zu keeps %lld rows but (%zu, %zu) has location %d", e,
                   static_cast<long long>(count), t, j, loc);
      const int64_t r = offsets[e] + loc;
      SF_CHECK_ARG(token_of[r] == -1, "locations: location %d of expert %zu is used twice", loc, e);
      token_of[r] = static_cast<int32_t>(t);
      row_of(t, j) = static_cast<int32_t>(r);
    }
  }
  return n;
}

void gather_rows(ConstMatrixView<float> x, const int32_t* token_of, MatrixView<float> buffer,
                 int num_threads) {
  SF_CHECK_ARG(buffer.cols == x.cols, "buffer: expected %zu columns, got %zu", x.cols, buffer.cols);
  for (size_t r = 0; r < buffer.rows; ++r) {
    SF_CHECK_ARG(
        token_of[r] >= -1 && (token_of[r] < 0 || static_cast<size_t>(token_of[r]) < x.rows),
        "token_of: expected values in [-1, %zu), got %d at %zu", x.rows, token_of[r], r);
  }
  const size_t D = x.cols;
  const int threads = light_threads(buffer.rows * D * sizeof(float), num_threads);
  parallel_for(buffer.rows, threads, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) {
      float* dst = buffer.row(r);
      if (token_of[r] < 0) {
        std::fill(dst, dst + D, 0.0f);
      } else {
        std::memcpy(dst, x.row(static_cast<size_t>(token_of[r])), D * sizeof(float));
      }
    }
  });
}

void combine_rows(ConstMatrixView<float> buffer, ConstMatrixView<int32_t> row_of,
                  ConstMatrixView<float> weights, MatrixView<float> y, bool accumulate,
                  int num_threads) {
  const size_t T = row_of.rows, k = row_of.cols, D = buffer.cols;
  SF_CHECK_ARG(weights.rows == T && weights.cols == k,
               "weights: expected shape (%zu, %zu), got (%zu, %zu)", T, k, weights.rows,
               weights.cols);
  SF_CHECK_ARG(y.rows == T && y.cols == D, "out: expected shape (%zu, %zu), got (%zu, %zu)", T, D,
               y.rows, y.cols);
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < k; ++j) {
      const int32_t r = row_of(t, j);
      SF_CHECK_ARG(r >= -1 && (r < 0 || static_cast<size_t>(r) < buffer.rows),
                   "row_of: expected values in [-1, %zu), got %d at (%zu, %zu)", buffer.rows, r, t,
                   j);
    }
  }
  const int threads = light_threads(T * (k + 1) * D * sizeof(float), num_threads);
  parallel_for(T, threads, [&](size_t b, size_t e) {
    for (size_t t = b; t < e; ++t) {
      float* out = y.row(t);
      if (!accumulate) std::fill(out, out + D, 0.0f);
      for (size_t j = 0; j < k; ++j) {
        const int32_t r = row_of(t, j);
        if (r < 0) continue;
        const float w = weights(t, j);
        const float* src = buffer.row(static_cast<size_t>(r));
        for (size_t d = 0; d < D; ++d) out[d] += w * src[d];
      }
    }
  });
}

namespace {

AnyConstMatrix expert_matrix(const SwiGLUExperts& x, const void* base, size_t e, size_t rows,
                             size_t cols) {
  const size_t bytes = rows * cols * dtype_size(x.dtype);
  const auto* p = static_cast<const unsigned char*>(base) + e * bytes;
  return {x.dtype, p, rows, cols, cols};
}

}  // namespace

void moe_swiglu_ffn(ConstMatrixView<float> x, const int64_t* offsets, const int32_t* token_of,
                    ConstMatrixView<int32_t> row_of, ConstMatrixView<float> weights,
                    const SwiGLUExperts& experts, MatrixView<float> y, float* row_norms,
                    int num_threads) {
  const size_t E = experts.num_experts, H = experts.hidden, D = experts.dim;
  SF_CHECK_ARG(E >= 1 && H >= 1 && D >= 1,
               "experts: expected non-empty (E, H, D) weights, got E=%zu H=%zu D=%zu", E, H, D);
  SF_CHECK_ARG(x.cols == D, "x: expected %zu features (the experts' D), got %zu", D, x.cols);
  SF_CHECK_ARG(row_of.rows == x.rows, "row_of: expected %zu rows (tokens), got %zu", x.rows,
               row_of.rows);
  SF_CHECK_ARG(offsets[0] == 0, "offsets: expected offsets[0] == 0, got %lld",
               static_cast<long long>(offsets[0]));
  for (size_t e = 0; e < E; ++e) {
    SF_CHECK_ARG(offsets[e + 1] >= offsets[e], "offsets: expected non-decreasing values at %zu", e);
  }
  const auto N = static_cast<size_t>(offsets[E]);
  std::vector<float> out(N * D);
  const MatrixView<float> buffer(out.data(), N, D);
  const int threads = resolve_num_threads(num_threads);
  // Experts in parallel, each gemm on one thread: gemm's results do not depend on its
  // thread count, so the output is the same for any num_threads. Each expert writes only
  // its own rows of `out`.
  parallel_for_dynamic(E, threads, [&](size_t e) {
    const auto r0 = static_cast<size_t>(offsets[e]);
    const size_t n = static_cast<size_t>(offsets[e + 1]) - r0;
    if (n == 0) return;
    std::vector<float> xe(n * D), g(n * H), u(n * H);
    const MatrixView<float> X(xe.data(), n, D), G(g.data(), n, H), U(u.data(), n, H);
    gather_rows(x, token_of + r0, X, 1);
    kernels::gemm(expert_matrix(experts, experts.gate, e, H, D), X, G, 1);
    kernels::gemm(expert_matrix(experts, experts.up, e, H, D), X, U, 1);
    models::swiglu_gate(G, U, G, 1);
    const MatrixView<float> O(out.data() + r0 * D, n, D);
    kernels::gemm(expert_matrix(experts, experts.down, e, D, H), G, O, 1);
    if (row_norms != nullptr) {
      for (size_t i = 0; i < n; ++i) {
        double s = 0.0;
        const float* o = O.row(i);
        for (size_t d = 0; d < D; ++d) s += static_cast<double>(o[d]) * o[d];
        row_norms[r0 + i] = static_cast<float>(std::sqrt(s));
      }
    }
  });
  combine_rows(buffer, row_of, weights, y, false, threads);
}

}  // namespace moe
}  // namespace sparseforge
