#include "sparseforge/models/block_forward.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/linalg/linalg.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace models {
namespace {

const char* const kLinearNames[kNumBlockLinears] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"};

// y (N, out) = x (N, in) W^T (+ bias) (+ y when accumulate): fixed tiles of kBlockRowTile
// rows, each one Eigen GEMM whose arithmetic does not depend on the thread running it.
void linear(ConstMatrixView<float> x, ConstMatrixView<float> w, const float* bias,
            MatrixView<float> y, bool accumulate, int num_threads) {
  const auto& la = linalg::linalg();
  const size_t n = x.rows, tiles = (n + kBlockRowTile - 1) / kBlockRowTile;
  parallel_for(
      tiles, num_threads,
      [&](size_t t0, size_t t1) {
        for (size_t t = t0; t < t1; ++t) {
          const size_t r0 = t * kBlockRowTile, m = std::min(kBlockRowTile, n - r0);
          la.gemm_nt_f32(m, w.rows, w.cols, 1.0f, x.row(r0), x.stride, w.data, w.stride,
                         accumulate ? 1.0f : 0.0f, y.row(r0), y.stride);
          if (bias != nullptr) {
            for (size_t r = r0; r < r0 + m; ++r) {
              float* yr = y.row(r);
              for (size_t j = 0; j < w.rows; ++j) yr[j] += bias[j];
            }
          }
        }
      },
      1);
}

void update(calib::LayerStats* st, ConstMatrixView<float> x, int num_threads) {
  if (st == nullptr) return;
  st->update(AnyConstMatrix(x), num_threads);
}

}  // namespace

void calibration_block_forward(ConstMatrixView<float> h, size_t seqlen, const BlockShape& s,
                               const BlockWeights& wt,
                               const std::array<calib::LayerStats*, kNumBlockInputs>& stats,
                               MatrixView<float> out, int num_threads) {
  const size_t dim = s.dim, hid = s.hidden;
  const size_t Hq = s.attn.n_heads, Hkv = s.attn.n_kv_heads, D = s.attn.head_dim;
  SF_CHECK_ARG(dim > 0 && hid > 0, "shape: expected dim > 0 and hidden > 0, got %zu and %zu", dim,
               hid);
  SF_CHECK_ARG(
      Hq > 0 && Hkv > 0 && Hq % Hkv == 0 && D > 0 && D % 2 == 0,
      "shape: expected n_kv_heads dividing n_heads and an even head_dim, got %zu, %zu, %zu", Hq,
      Hkv, D);
  SF_CHECK_ARG(h.cols == dim, "h: expected %zu columns (dim), got %zu", dim, h.cols);
  SF_CHECK_ARG(h.data != nullptr && h.stride >= h.cols, "h: expected a (tokens, %zu) matrix", dim);
  SF_CHECK_ARG(seqlen > 0 && h.rows > 0 && h.rows % seqlen == 0,
               "seqlen: expected a positive divisor of h's %zu rows (windows * seqlen), got %zu",
               h.rows, seqlen);
  SF_CHECK_ARG(std::isfinite(s.attn_scale) && s.attn_scale > 0.0f,
               "attn_scale: expected a finite number > 0, got %g",
               static_cast<double>(s.attn_scale));
  SF_CHECK_ARG(wt.attn_norm != nullptr && wt.mlp_norm != nullptr,
               "weights: the two RMSNorm weights are required");
  const size_t qd = Hq * D, kvd = Hkv * D;
  const size_t rows[kNumBlockLinears] = {qd, kvd, kvd, dim, hid, hid, dim};
  const size_t cols[kNumBlockLinears] = {dim, dim, dim, qd, dim, dim, hid};
  for (int i = 0; i < kNumBlockLinears; ++i) {
    const ConstMatrixView<float>& w = wt.w[i];
    SF_CHECK_ARG(w.data != nullptr && w.rows == rows[i] && w.cols == cols[i] && w.stride >= w.cols,
                 "%s: expected a (%zu, %zu) float32 weight, got (%zu, %zu)", kLinearNames[i],
                 rows[i], cols[i], w.rows, w.cols);
  }
  const size_t widths[kNumBlockInputs] = {dim, qd, dim, hid};
  const char* const input_names[kNumBlockInputs] = {"q/k/v", "o_proj", "gate/up", "down_proj"};
  for (int i = 0; i < kNumBlockInputs; ++i) {
    SF_CHECK_ARG(stats[i] == nullptr || stats[i]->in_features() == widths[i],
                 "stats: the %s statistics have in_features=%zu, expected %zu", input_names[i],
                 stats[i] == nullptr ? size_t{0} : stats[i]->in_features(), widths[i]);
  }
  const bool need_out = out.rows != 0;
  if (need_out) {
    SF_CHECK_ARG(out.rows == h.rows && out.cols == dim && out.stride >= dim && out.data != nullptr,
                 "out: expected shape (%zu, %zu), got (%zu, %zu)", h.rows, dim, out.rows, out.cols);
    SF_CHECK_ARG(
        out.data + out.rows * out.stride <= h.data || h.data + h.rows * h.stride <= out.data,
        "out: must not overlap h");
  }

  const size_t N = h.rows, W = N / seqlen;
  // Scratch: x (N, dim) reused as x2; q (N, qd); k, v (N, kvd); a (N, qd); h2 (N, dim);
  // g, u (N, hid).
  std::vector<float> xb(N * dim), qb(N * qd), kb(N * kvd), vb(N * kvd);
  MatrixView<float> x{xb.data(), N, dim, dim};
  MatrixView<float> q{qb.data(), N, qd, qd};
  MatrixView<float> k{kb.data(), N, kvd, kvd};
  MatrixView<float> v{vb.data(), N, kvd, kvd};
  rms_norm(h, wt.attn_norm, s.norm_eps, x, num_threads);
  update(stats[kQKV], x, num_threads);
  linear(x, wt.w[kQ], wt.bias[kQ], q, false, num_threads);
  linear(x, wt.w[kK], wt.bias[kK], k, false, num_threads);
  linear(x, wt.w[kV], wt.bias[kV], v, false, num_threads);
  std::vector<int64_t> pos(N);
  for (size_t r = 0; r < N; ++r) pos[r] = static_cast<int64_t>(r % seqlen);
  rope(q, Hq, D, pos.data(), s.rope_theta, s.rope_style, num_threads);
  rope(k, Hkv, D, pos.data(), s.rope_theta, s.rope_style, num_threads);
  std::vector<float> ab(N * qd);
  MatrixView<float> a{ab.data(), N, qd, qd};
  for (size_t w = 0; w < W; ++w) {
    const size_t r0 = w * seqlen;
    causal_attention(ConstMatrixView<float>{q.row(r0), seqlen, qd, qd},
                     ConstMatrixView<float>{k.row(r0), seqlen, kvd, kvd},
                     ConstMatrixView<float>{v.row(r0), seqlen, kvd, kvd}, s.attn, s.attn_scale,
                     MatrixView<float>{a.row(r0), seqlen, qd, qd}, num_threads);
  }
  std::vector<float>().swap(qb);
  std::vector<float>().swap(kb);
  std::vector<float>().swap(vb);
  update(stats[kOIn], a, num_threads);
  // h2 = h + a Wo^T: the residual first, then the GEMM accumulates into it.
  std::vector<float> h2b(N * dim);
  MatrixView<float> h2{h2b.data(), N, dim, dim};
  for (size_t r = 0; r < N; ++r) std::copy(h.row(r), h.row(r) + dim, h2.row(r));
  linear(a, wt.w[kO], wt.bias[kO], h2, true, num_threads);
  std::vector<float>().swap(ab);
  rms_norm(h2, wt.mlp_norm, s.norm_eps, x, num_threads);
  update(stats[kGateUp], x, num_threads);
  std::vector<float> gb(N * hid), ub(N * hid);
  MatrixView<float> g{gb.data(), N, hid, hid};
  MatrixView<float> u{ub.data(), N, hid, hid};
  linear(x, wt.w[kGate], wt.bias[kGate], g, false, num_threads);
  linear(x, wt.w[kUp], wt.bias[kUp], u, false, num_threads);
  swiglu_gate(g, u, g, num_threads);
  std::vector<float>().swap(ub);
  update(stats[kDownIn], g, num_threads);
  if (!need_out) return;
  for (size_t r = 0; r < N; ++r) std::copy(h2.row(r), h2.row(r) + dim, out.row(r));
  linear(g, wt.w[kDown], wt.bias[kDown], out, true, num_threads);
}

}  // namespace models
}  // namespace sparseforge
