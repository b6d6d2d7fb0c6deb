// Mixture-of-experts routing: router scores and top-k selection (softmax, sigmoid with a
// selection-only bias, DeepSeek-V3 group-limited selection), capacity assignment with
// token dropping, and the auxiliary losses (Switch / HF Mixtral / megablocks load balancing,
// router z-loss).
//
// Notation: T tokens, E experts, k experts per token (top_k), L layers (losses only).
//   logits  (T, E)  float32, the router's pre-activation outputs W_r x
//   scores  (T, E)  float32, softmax(logits) or sigmoid(logits): the *unbiased* scores
//   ids     (T, k)  int32, chosen experts, best first
//   weights (T, k)  float32, combine weights, gathered from the unbiased scores
//
// Selection order is total and deterministic: by selection score descending, ties by lower
// expert index (groups likewise by lower group index). Everything here is per row or a
// sequential O(T k) pass, so results are bitwise identical for any thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/view.h"

namespace sparseforge {
namespace moe {

enum class ScoreFunc : uint8_t { kSoftmax, kSigmoid };
// How a group of experts is scored for group-limited selection: the sum of its two best
// selection scores (DeepSeek-V3 with a bias, HF DeepseekV3TopkRouter always) or its best
// one (DeepSeek-V3's reference Gate without a bias). A group of one expert sums one score.
enum class GroupScore : uint8_t { kTop2Sum, kMax };

struct RouterOptions {
  size_t top_k = 2;
  ScoreFunc score = ScoreFunc::kSoftmax;
  // weights /= (sum of the k chosen unbiased scores + 1e-20) (Mixtral's renormalisation,
  // DeepSeek-V3's norm_topk_prob). Off: weights are the scores themselves.
  bool renormalize = true;
  float routed_scaling_factor = 1.0f;  // weights *= this, after renormalisation
  // Selection-only bias (E,) (DeepSeek-V3 e_score_correction_bias), or nullptr: experts are
  // chosen by score + bias, weights come from the score alone.
  const float* bias = nullptr;
  size_t n_group = 1;     // E is split into n_group equal groups of consecutive experts
  size_t topk_group = 1;  // experts are chosen only inside the topk_group best groups
  GroupScore group_score = GroupScore::kTop2Sum;
  int num_threads = 0;
};

// Routes T tokens. logits must be finite (InvalidArgument naming the row otherwise).
// ids/weights: (T, top_k) caller-owned. scores: (T, E) caller-owned, or empty to skip.
// Checks: 1 <= top_k <= E; n_group divides E; 1 <= topk_group <= n_group; the chosen groups
// hold at least top_k experts. Cost O(T E log k) plus O(T E) exp.
void route(ConstMatrixView<float> logits, const RouterOptions& opt, MatrixView<int32_t> ids,
           MatrixView<float> weights, MatrixView<float> scores);

// Row-wise softmax of logits (max-subtracted, float32 exp, sum in double), into probs (T, E).
void softmax_rows(ConstMatrixView<float> logits, MatrixView<float> probs, int num_threads);

// ---------------------------------------------------------------------------------------
// Capacity and dropping

enum class CapacityMode : uint8_t {
  kDropless,  // capacity = the largest load this batch: nothing is dropped
  kFixed,     // capacity = ceil(capacity_factor * k * T / E) (or `capacity`)
  kDynamic,   // capacity = min(largest load, the fixed capacity): a cap that shrinks the
              // buffers when the batch is balanced (Tutel's capacity_factor < 0)
};
// The order in which assignments claim expert slots. Both are slot-major: every token's
// first choice before any token's second choice (GShard / Tutel / V-MoE; for k = 1 this is
// Switch's cumsum over tokens). kPosition: tokens in batch order (Switch, HF). kScore:
// tokens by a priority value descending, ties by position (V-MoE / Tutel batch-prioritised
// routing, priority = the token's best router score).
enum class Priority : uint8_t { kPosition, kScore };

struct CapacityOptions {
  CapacityMode mode = CapacityMode::kDropless;
  double capacity_factor = 1.0;  // > 0 for kFixed / kDynamic (ignored by kDropless)
  int64_t capacity = -1;         // >= 1 overrides the factor (kFixed / kDynamic)
  Priority priority = Priority::kPosition;
};

// ceil(capacity_factor * top_k * tokens / experts), at least 1 (computed in double).
size_t expert_capacity(size_t tokens, size_t top_k, size_t experts, double capacity_factor);

struct CapacityResult {
  size_t capacity = 0;     // slots per expert actually used (the buffer height)
  size_t num_dropped = 0;  // assignments (token, slot) dropped
};

// Assigns each (token t, slot j) of ids (T, k) a location in its expert's buffer:
// locations[t, j] in [0, capacity) or -1 when dropped. The locations of expert e's kept
// assignments are exactly 0 .. kept[e]-1, in priority order. priority: (T,) for kScore
// (finite), else ignored (may be nullptr). load (E,): assignments per expert before
// dropping; kept (E,): after. ids must lie in [0, num_experts).
CapacityResult assign_capacity(ConstMatrixView<int32_t> ids, size_t num_experts,
                               const float* priority, const CapacityOptions& opt,
                               MatrixView<int32_t> locations, int64_t* load, int64_t* kept);

// ---------------------------------------------------------------------------------------
// Auxiliary losses. logits: (L * T, E), layer l's tokens in rows [l T, (l+1) T).
// ids: (L * T, k) chosen experts (column 0 = top-1), or an empty view for top-k of
// softmax(logits) (ties by lower index). token_mask: (T,) 0/1 bytes applied to every layer
// (HF Mixtral's attention_mask), or nullptr. With f_e the fraction of tokens sent to e and
// P_e the mean router probability softmax(logits)_e:
//   kSwitch      E * sum_e f1_e P_e per layer, f1 from column 0 only (top-1 counting),
//                averaged over layers; minimum 1 under uniform routing (Switch: x alpha).
//   kMixtral     E * sum_e fbar_e Pbar_e with fbar = top-k counts pooled over layers / (L T)
//                and Pbar pooled the same way: HF transformers' load_balancing_loss_func
//                exactly; minimum k.
//   kMegablocks  E / (L T k) * sum_l sum_e count_{l,e} P_{l,e}: megablocks'
//                batched_load_balancing_loss with moe_loss_weight 1; minimum 1.
// Sums in double. Cost O(L T E).
enum class AuxLossKind : uint8_t { kSwitch, kMixtral, kMegablocks };
double load_balancing_loss(ConstMatrixView<float> logits, size_t num_layers, size_t top_k,
                           AuxLossKind kind, ConstMatrixView<int32_t> ids,
                           const uint8_t* token_mask);

// Router z-loss (ST-MoE): mean over rows of logsumexp(logits_row)^2, in double.
double z_loss(ConstMatrixView<float> logits);

}  // namespace moe
}  // namespace sparseforge
