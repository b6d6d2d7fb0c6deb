// Router scoring and top-k selection (see moe/routing.h).
#include "sparseforge/moe/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"
#include "threads.h"

namespace sparseforge {
namespace moe {
namespace {

// Strict "a ranks before b": higher value first, then lower index. A total order, so every
// selection below is deterministic whatever the sort algorithm does with equal keys.
struct Before {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

void check_finite_rows(ConstMatrixView<float> m, const char* name) {
  for (size_t r = 0; r < m.rows; ++r) {
    const float* p = m.row(r);
    for (size_t c = 0; c < m.cols; ++c) {
      SF_CHECK_ARG(std::isfinite(p[c]), "%s: expected finite values, got %g at row %zu, column %zu",
                   name, static_cast<double>(p[c]), r, c);
    }
  }
}

void softmax_row(const float* l, size_t n, float* p) {
  float m = l[0];
  for (size_t i = 1; i < n; ++i) m = std::max(m, l[i]);
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) {
    p[i] = std::exp(l[i] - m);
    s += p[i];
  }
  const double inv = 1.0 / s;
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(p[i] * inv);
}

void check_router(ConstMatrixView<float> logits, const RouterOptions& o, MatrixView<int32_t> ids,
                  MatrixView<float> weights, MatrixView<float> scores) {
  const size_t E = logits.cols;
  SF_CHECK_ARG(E >= 1, "logits: expected at least one expert (column), got shape (%zu, %zu)",
               logits.rows, E);
  SF_CHECK_ARG(E <= 1u << 30, "logits: at most 2^30 experts, got %zu", E);
  SF_CHECK_ARG(o.top_k >= 1 && o.top_k <= E,
               "top_k: expected 1 <= top_k <= num_experts=%zu, got %zu", E, o.top_k);
  SF_CHECK_ARG(o.n_group >= 1 && E % o.n_group == 0,
               "n_group: expected a divisor of num_experts=%zu, got %zu", E, o.n_group);
  SF_CHECK_ARG(o.topk_group >= 1 && o.topk_group <= o.n_group,
               "topk_group: expected 1 <= topk_group <= n_group=%zu, got %zu", o.n_group,
               o.topk_group);
  SF_CHECK_ARG(o.topk_group * (E / o.n_group) >= o.top_k,
               "top_k: %zu experts cannot be chosen from topk_group=%zu groups of %zu experts",
               o.top_k, o.topk_group, E / o.n_group);
  SF_CHECK_ARG(std::isfinite(o.routed_scaling_factor),
               "routed_scaling_factor: expected a finite value, got %g",
               static_cast<double>(o.routed_scaling_factor));
  SF_CHECK_ARG(ids.rows == logits.rows && ids.cols == o.top_k,
               "expert_ids: expected shape (%zu, %zu), got (%zu, %zu)", logits.rows, o.top_k,
               ids.rows, ids.cols);
  SF_CHECK_ARG(weights.rows == logits.rows && weights.cols == o.top_k,
               "weights: expected shape (%zu, %zu), got (%zu, %zu)", logits.rows, o.top_k,
               weights.rows, weights.cols);
  SF_CHECK_ARG(scores.empty() || (scores.rows == logits.rows && scores.cols == E),
               "scores: expected shape (%zu, %zu), got (%zu, %zu)", logits.rows, E, scores.rows,
               scores.cols);
  if (o.bias != nullptr) {
    for (size_t e = 0; e < E; ++e) {
      SF_CHECK_ARG(std::isfinite(o.bias[e]), "bias: expected finite values, got %g at %zu",
                   static_cast<double>(o.bias[e]), e);
    }
  }
  check_finite_rows(logits, "logits");
}

// Per-thread scratch for one row.
struct RowScratch {
  std::vector<float> score, select, group_score;
  std::vector<int32_t> order, groups;
  explicit RowScratch(size_t E, size_t n_group)
      : score(E), select(E), group_score(n_group), order(E), groups(n_group) {}
};

void route_row(const float* logit, const RouterOptions& o, size_t E, RowScratch& s, int32_t* ids,
               float* w) {
  float* score = s.score.data();
  if (o.score == ScoreFunc::kSoftmax) {
    softmax_row(logit, E, score);
  } else {
    for (size_t e = 0; e < E; ++e) score[e] = 1.0f / (1.0f + std::exp(-logit[e]));
  }
  const float* select = score;
  if (o.bias != nullptr) {
    for (size_t e = 0; e < E; ++e) s.select[e] = score[e] + o.bias[e];
    select = s.select.data();
  }
  // Candidates: all experts, or those of the topk_group best groups.
  size_t n_cand = E;
  if (o.n_group > 1) {
    const size_t G = E / o.n_group;
    for (size_t g = 0; g < o.n_group; ++g) {
      const float* v = select + g * G;
      float best = v[0], second = -INFINITY;
      for (size_t i = 1; i < G; ++i) {
        if (v[i] > best) {
          second = best;
          best = v[i];
        } else if (v[i] > second) {
          second = v[i];
        }
      }
      s.group_score[g] = (o.group_score == GroupScore::kMax || G == 1) ? best : best + second;
    }
    std::iota(s.groups.begin(), s.groups.end(), 0);
    std::partial_sort(s.groups.begin(), s.groups.begin() + static_cast<ptrdiff_t>(o.topk_group),
                      s.groups.end(), Before{s.group_score.data()});
    n_cand = 0;
    for (size_t i = 0; i < o.topk_group; ++i) {
      const auto g = static_cast<size_t>(s.groups[i]);
      for (size_t j = 0; j < G; ++j) s.order[n_cand++] = static_cast<int32_t>(g * G + j);
    }
  } else {
    std::iota(s.order.begin(), s.order.end(), 0);
  }
  const auto k = static_cast<ptrdiff_t>(o.top_k);
  std::partial_sort(s.order.begin(), s.order.begin() + k,
                    s.order.begin() + static_cast<ptrdiff_t>(n_cand), Before{select});
  float sum = 0.0f;
  for (size_t j = 0; j < o.top_k; ++j) {
    ids[j] = s.order[j];
    w[j] = score[s.order[j]];
    sum += w[j];
  }
  // HF DeepseekV3TopkRouter's guard: a row of underflowed sigmoid scores gives weights 0,
  // not NaN. For sums above ~1e-13 the 1e-20 vanishes in float32.
  if (o.renormalize) {
    const float denom = sum + 1e-20f;
    for (size_t j = 0; j < o.top_k; ++j) w[j] /= denom;
  }
  if (o.routed_scaling_factor != 1.0f) {
    for (size_t j = 0; j < o.top_k; ++j) w[j] *= o.routed_scaling_factor;
  }
}

}  // namespace

void softmax_rows(ConstMatrixView<float> logits, MatrixView<float> probs, int num_threads) {
  SF_CHECK_ARG(probs.rows == logits.rows && probs.cols == logits.cols,
               "probs: expected shape (%zu, %zu), got (%zu, %zu)", logits.rows, logits.cols,
               probs.rows, probs.cols);
  if (logits.empty()) return;
  const int threads = light_threads(logits.size() * sizeof(float), num_threads);
  parallel_for(logits.rows, threads, [&](size_t b, size_t e) {
    for (size_t r = b; r < e; ++r) softmax_row(logits.row(r), logits.cols, probs.row(r));
  });
}

void route(ConstMatrixView<float> logits, const RouterOptions& opt, MatrixView<int32_t> ids,
           MatrixView<float> weights, MatrixView<float> scores) {
  check_router(logits, opt, ids, weights, scores);
  const size_t E = logits.cols;
  // Routing costs ~E log k compares and E exp per row: count it as 4x the logits bytes.
  const int threads = light_threads(4 * logits.size() * sizeof(float), opt.num_threads);
  parallel_for(logits.rows, threads, [&](size_t b, size_t e) {
    RowScratch s(E, opt.n_group);
    for (size_t r = b; r < e; ++r) {
      route_row(logits.row(r), opt, E, s, ids.row(r), weights.row(r));
      if (!scores.empty()) std::copy(s.score.begin(), s.score.end(), scores.row(r));
    }
  });
}

// ---------------------------------------------------------------------------------------
// Capacity

size_t expert_capacity(size_t tokens, size_t top_k, size_t experts, double capacity_factor) {
  SF_CHECK_ARG(std::isfinite(capacity_factor) && capacity_factor > 0.0,
               "capacity_factor: expected a finite value > 0, got %g", capacity_factor);
  SF_CHECK_ARG(experts >= 1, "num_experts: expected >= 1, got %zu", experts);
  const double c = std::ceil(capacity_factor * static_cast<double>(top_k) *
                             static_cast<double>(tokens) / static_cast<double>(experts));
  // Capacity never needs to exceed the tokens (one slot per token per expert at most).
  const double cap = std::min(c, static_cast<double>(std::max<size_t>(tokens, 1)));
  return std::max<size_t>(1, static_cast<size_t>(cap));
}

CapacityResult assign_capacity(ConstMatrixView<int32_t> ids, size_t num_experts,
                               const float* priority, const CapacityOptions& opt,
                               MatrixView<int32_t> locations, int64_t* load, int64_t* kept) {
  const size_t T = ids.rows, k = ids.cols, E = num_experts;
  SF_CHECK_ARG(E >= 1, "num_experts: expected >= 1, got %zu", E);
  SF_CHECK_ARG(locations.rows == T && locations.cols == k,
               "locations: expected shape (%zu, %zu), got (%zu, %zu)", T, k, locations.rows,
               locations.cols);
  std::fill(load, load + E, 0);
  for (size_t t = 0; t < T; ++t) {
    for (size_t j = 0; j < k; ++j) {
      const int32_t e = ids(t, j);
      SF_CHECK_ARG(e >= 0 && static_cast<size_t>(e) < E,
                   "expert_ids: expected values in [0, %zu), got %d at (%zu, %zu)", E, e, t, j);
      ++load[e];
    }
  }
  const int64_t max_load = E ? *std::max_element(load, load + E) : 0;
  size_t cap = static_cast<size_t>(max_load);
  if (opt.mode != CapacityMode::kDropless) {
    size_t fixed;
    if (opt.capacity >= 0) {
      SF_CHECK_ARG(opt.capacity >= 1, "capacity: expected >= 1, got %lld",
                   static_cast<long long>(opt.capacity));
      fixed = static_cast<size_t>(opt.capacity);
    } else {
      fixed = expert_capacity(T, k, E, opt.capacity_factor);
    }
    cap = opt.mode == CapacityMode::kFixed ? fixed : std::min(fixed, cap);
  }
  // Token order: batch order, or by priority descending (ties by position).
  std::vector<int32_t> order(T);
  std::iota(order.begin(), order.end(), 0);
  if (opt.priority == Priority::kScore) {
    SF_CHECK_ARG(priority != nullptr, "priority: required for priority='score'");
    for (size_t t = 0; t < T; ++t) {
      SF_CHECK_ARG(std::isfinite(priority[t]), "priority: expected finite values, got %g at %zu",
                   static_cast<double>(priority[t]), t);
    }
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return priority[a] > priority[b]; });
  }
  std::fill(kept, kept + E, 0);
  CapacityResult res;
  res.capacity = cap;
  for (size_t j = 0; j < k; ++j) {
    for (const int32_t t : order) {
      const int32_t e = ids(static_cast<size_t>(t), j);
      if (static_cast<size_t>(kept[e]) < cap) {
        locations(static_cast<size_t>(t), j) = static_cast<int32_t>(kept[e]++);
      } else {
        locations(static_cast<size_t>(t), j) = -1;
        ++res.num_dropped;
      }
    }
  }
  return res;
}

}  // namespace moe
}  // namespace sparseforge
