// Auxiliary MoE losses (see moe/routing.h for the formulas and which anchor each follows).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/moe/routing.h"

namespace sparseforge {
namespace moe {
namespace {

// Row softmax in double (the losses sum in double; the probabilities themselves are what
// softmax_rows computes, up to float rounding).
void softmax_row_f64(const float* l, size_t n, double* p) {
  float m = l[0];
  for (size_t i = 1; i < n; ++i) m = std::max(m, l[i]);
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp(static_cast<double>(l[i]) - static_cast<double>(m));
    s += p[i];
  }
  for (size_t i = 0; i < n; ++i) p[i] /= s;
}

// Top-k of one row by (value desc, index asc): the default ids.
void topk_row(const double* p, size_t k, std::vector<int32_t>& order) {
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(k), order.end(),
                    [p](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
}

}  // namespace

double load_balancing_loss(ConstMatrixView<float> logits, size_t num_layers, size_t top_k,
                           AuxLossKind kind, ConstMatrixView<int32_t> ids,
                           const uint8_t* token_mask) {
  const size_t E = logits.cols;
  SF_CHECK_ARG(E >= 1, "logits: expected at least one expert (column), got %zu", E);
  SF_CHECK_ARG(num_layers >= 1 && logits.rows % num_layers == 0,
               "num_layers: expected a divisor of the %zu logit rows, got %zu", logits.rows,
               num_layers);
  SF_CHECK_ARG(top_k >= 1 && top_k <= E, "top_k: expected 1 <= top_k <= num_experts=%zu, got %zu",
               E, top_k);
  const size_t T = logits.rows / num_layers;
  SF_CHECK_ARG(T >= 1, "logits: expected at least one token, got 0 rows");
  const bool given_ids = ids.data != nullptr;
  if (given_ids) {
    SF_CHECK_ARG(ids.rows == logits.rows && ids.cols == top_k,
                 "expert_ids: expected shape (%zu, %zu), got (%zu, %zu)", logits.rows, top_k,
                 ids.rows, ids.cols);
  }
  double tokens = static_cast<double>(T);
  if (token_mask != nullptr) {
    tokens = 0.0;
    for (size_t t = 0; t < T; ++t) tokens += token_mask[t] ? 1.0 : 0.0;
    SF_CHECK_ARG(tokens > 0.0, "token_mask: expected at least one token kept, got none");
  }
  // Per layer: counts (top-k or top-1) and probability sums over the kept tokens.
  std::vector<double> p(E), counts(E), probs(E), pooled_counts(E, 0.0), pooled_probs(E, 0.0);
  std::vector<int32_t> order(E);
  double per_layer_sum = 0.0;
  for (size_t l = 0; l < num_layers; ++l) {
    std::fill(counts.begin(), counts.end(), 0.0);
    std::fill(probs.begin(), probs.end(), 0.0);
    for (size_t t = 0; t < T; ++t) {
      if (token_mask != nullptr && !token_mask[t]) continue;
      const size_t r = l * T + t;
      const float* row = logits.row(r);
      for (size_t e = 0; e < E; ++e) {
        SF_CHECK_ARG(std::isfinite(row[e]),
                     "logits: expected finite values, got %g at row %zu, column %zu",
                     static_cast<double>(row[e]), r, e);
      }
      softmax_row_f64(row, E, p.data());
      for (size_t e = 0; e < E; ++e) probs[e] += p[e];
      const size_t counted = kind == AuxLossKind::kSwitch ? 1 : top_k;
      if (given_ids) {
        for (size_t j = 0; j < counted; ++j) {
          const int32_t e = ids(r, j);
          SF_CHECK_ARG(e >= 0 && static_cast<size_t>(e) < E,
                       "expert_ids: expected values in [0, %zu), got %d at (%zu, %zu)", E, e, r, j);
          counts[static_cast<size_t>(e)] += 1.0;
        }
      } else {
        topk_row(p.data(), counted, order);
        for (size_t j = 0; j < counted; ++j) counts[static_cast<size_t>(order[j])] += 1.0;
      }
    }
    double dot = 0.0;
    for (size_t e = 0; e < E; ++e) {
      dot += counts[e] * probs[e];
      pooled_counts[e] += counts[e];
      pooled_probs[e] += probs[e];
    }
    per_layer_sum += dot;
  }
  const auto Ed = static_cast<double>(E), Ld = static_cast<double>(num_layers);
  switch (kind) {
    case AuxLossKind::kSwitch:  // mean over layers of E * sum (c/T)(P/T)
      return Ed * per_layer_sum / (tokens * tokens * Ld);
    case AuxLossKind::kMegablocks:  // E / (L T k) * sum_l sum_e c_le * mean_t p_le
      return Ed * per_layer_sum / (Ld * tokens * static_cast<double>(top_k) * tokens);
    case AuxLossKind::kMixtral:
    default: {
      double dot = 0.0;
      for (size_t e = 0; e < E; ++e) dot += pooled_counts[e] * pooled_probs[e];
      return Ed * dot / (Ld * tokens * Ld * tokens);
    }
  }
}

double z_loss(ConstMatrixView<float> logits) {
  SF_CHECK_ARG(logits.cols >= 1, "logits: expected at least one expert (column), got %zu",
               logits.cols);
  SF_CHECK_ARG(logits.rows >= 1, "logits: expected at least one token, got 0 rows");
  double total = 0.0;
  for (size_t r = 0; r < logits.rows; ++r) {
    const float* row = logits.row(r);
    double m = -INFINITY;
    for (size_t e = 0; e < logits.cols; ++e) {
      SF_CHECK_ARG(std::isfinite(row[e]),
                   "logits: expected finite values, got %g at row %zu, column %zu",
                   static_cast<double>(row[e]), r, e);
      m = std::max(m, static_cast<double>(row[e]));
    }
    double s = 0.0;
    for (size_t e = 0; e < logits.cols; ++e) s += std::exp(static_cast<double>(row[e]) - m);
    const double lse = m + std::log(s);
    total += lse * lse;
  }
  return total / static_cast<double>(logits.rows);
}

}  // namespace moe
}  // namespace sparseforge
