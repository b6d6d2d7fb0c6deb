// The calibration forward of one Llama-family decoder block over a batch of windows, in
// one call: what the pruning pipeline runs for every block (models/_calibration.py).
//
// h (W * T, dim) float32 holds W windows of T tokens stacked; each window is its own causal
// sequence at positions 0 .. T-1. The block is the Llama / Mistral / Qwen2 decoder layer:
//   x   = rms_norm(h, attn_norm)                     -> stats[kQKV]   (q/k/v's input)
//   q, k, v = x Wq^T (+bq), x Wk^T (+bk), x Wv^T (+bv); RoPE on q and k
//   a   = causal GQA attention per window            -> stats[kO]     (o_proj's input)
//   h2  = h + a Wo^T (+bo)
//   x2  = rms_norm(h2, mlp_norm)                      -> stats[kGateUp]
//   m   = silu(x2 Wg^T) * (x2 Wu^T)                   -> stats[kDown]
//   out = h2 + m Wd^T                                 (only when out is given)
// Each linear's input is added to its LayerStats (any may be null) by the core, once for the
// whole batch, in the order above. Without `out` the down projection's GEMM is skipped.
//
// Linears are GEMMs over the batch, split into fixed tiles of kRowTile tokens (Eigen,
// compiled per SIMD level, the core's linalg table): every output element's arithmetic is
// the same for any thread count, so outputs and statistics are bitwise identical for any
// num_threads. The norms, RoPE, attention and the gate are the ops of models/ops.h.
// Against the research forward (numpy/BLAS GEMMs) outputs agree to float32 rounding.
//
// Families not implemented here (QK-norm, sliding-window attention, Gemma's norms and
// scaled embeddings, sliced residuals, ...) are the caller's to route elsewhere: this call
// has no switch for them.
//
// Memory: scratch of N (3 dim + 2 kv_dim + 2 hidden) floats for N = W * T tokens, plus the
// attention's per-window scratch. Cost: 2 N (2 dim^2 + 2 dim kv_dim + 3 dim hidden) flops
// of GEMM (less the down projection's third without `out`), attention
// 2 W Hq D T^2 multiply-adds, and the LayerStats updates (layer_stats.h).
#pragma once

#include <array>
#include <cstddef>

#include "sparseforge/calib/layer_stats.h"
#include "sparseforge/core/view.h"
#include "sparseforge/models/ops.h"

namespace sparseforge {
namespace models {

struct BlockShape {
  size_t dim = 0;
  size_t hidden = 0;    // the MLP's intermediate size
  AttentionShape attn;  // n_heads * head_dim need not equal dim
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::kHalf;
  float norm_eps = 1e-5f;
  float attn_scale = 0.0f;  // 1/sqrt(head_dim) in Llama
};

// The 7 linears in block order; weights row-major (out, in) float32 like torch's Linear.
enum BlockLinear { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kNumBlockLinears };
// The 4 distinct linear inputs.
enum BlockInput { kQKV = 0, kOIn, kGateUp, kDownIn, kNumBlockInputs };

struct BlockWeights {
  const float* attn_norm = nullptr;  // (dim,)
  const float* mlp_norm = nullptr;   // (dim,)
  std::array<ConstMatrixView<float>, kNumBlockLinears> w{};
  std::array<const float*, kNumBlockLinears> bias{};  // (out,) or null
};

constexpr size_t kBlockRowTile = 256;

// See the file comment. h: (windows * seqlen, dim); out: the same shape, or empty (rows ==
// 0: statistics only). stats[i] must have in_features equal to input i's width (dim, Hq*D,
// dim, hidden). out must not overlap h. On bad arguments InvalidArgument is thrown before
// any statistics are touched; non-finite activations reaching a LayerStats make its update
// throw, after the earlier inputs' statistics were added.
void calibration_block_forward(ConstMatrixView<float> h, size_t seqlen, const BlockShape& shape,
                               const BlockWeights& weights,
                               const std::array<calib::LayerStats*, kNumBlockInputs>& stats,
                               MatrixView<float> out, int num_threads);

}  // namespace models
}  // namespace sparseforge
