// Decode attention over a PagedKVCache (dense and page-sparse), Quest page selection, and
// the windowed attention mass that prefill scorers need (H2O, SnapKV, TOVA).
//
// Notation as in paged_cache.h. Query head j belongs to kv head j / G (the Llama / Hugging
// Face repeat_kv grouping). Compute is fp32: fp16/bf16 pages convert in registers; dot
// products and the weighted value sums use one fp32 accumulator chain per output in a fixed
// order (pages in page-table order, rows in slot order), so results are bitwise identical
// for any num_threads (work is split by kv heads).
//
// Per-key attention mass: the softmax probabilities are formed anyway, so both decode
// kernels return, from the same pass over K and V, mass[h, s] = reduce_g p_g[s] over the
// G query heads of kv head h (reduce = sum, mean or max), and can add it to the cache's
// per-slot scores (H2O's accumulator) -- no second pass, no eager attention matrix.
//
// Cost (one decode step, one layer): dense reads every page once (L * (Dk + Dv) elements per
// kv head) and does G dot products per key row while it is in registers; page-sparse reads
// only the selected pages. quest_select reads 2 * Dk bound floats per page (1/S of the
// K + V bytes in fp32), so a Quest step reads the fraction 1/S + B/L of the dense bytes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/view.h"
#include "sparseforge/kvcache/paged_cache.h"

namespace sparseforge {
namespace kv {

// How a group's G query heads combine into one score per key. kNone (window_attention_mass
// only) keeps one row per query head.
enum class GroupReduce : uint8_t { kMean = 0, kMax = 1, kSum = 2, kNone = 3 };

struct DecodeOptions {
  float scale = 0.0f;  // logit scale; 0 means 1 / sqrt(Dk)
  GroupReduce reduce = GroupReduce::kSum;
  bool accumulate_scores = false;  // scores(layer, h)[s] += mass[h, s]
  int64_t query_position = -1;     // kRerotate: the query's original position (-1: newest)
  int num_threads = 0;
};

// One decode step of one layer: out[j] = softmax(scale * K_h q_j) V_h for every query head
// j (h = j / G), over every slot (pages == nullptr) or over the listed pages only.
//   q     (H, Dk) fp32, H a multiple of Hkv
//   out   (H, Dv) fp32, caller-owned
//   mass  (Hkv, >= max_length(layer)) fp32 or empty: row h gets the mass of slot s at s;
//         entries of unselected pages and past a head's length are set to 0
//   pages (Hkv, page_stride) int32 page indices (ascending, -1 = unused entry) or nullptr
// A head with no slots gives out = 0 and no mass. Throws InvalidArgument naming q, out,
// mass or pages on a shape mismatch or an out-of-range page.
void decode_attention(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                      MatrixView<float> out, MatrixView<float> mass, const int32_t* pages,
                      size_t page_stride, const DecodeOptions& options);

// One fused decode-time score-upkeep step per layer (a single call from Python, no mass
// array handed out). Attention is decode_attention's dense pass (same out, bitwise); the
// per-key mass goes to a reused per-thread scratch buffer, never to the caller.
//   decode_attention_tova: mass reduced with options.reduce (TOVA: kMean), then, when the
//     layer holds more than `budget` tokens, evict_lowest_mean(layer, mass, length - budget).
//   decode_attention_h2o: mass added to the cache's scores (accumulate_scores forced on),
//     then evict_lowest_layer(layer, budget, 0, recent).
// options.accumulate_scores is ignored by the TOVA step (its scores are not touched).
void decode_attention_tova(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                           MatrixView<float> out, size_t budget, const DecodeOptions& options);
void decode_attention_h2o(PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                          MatrixView<float> out, size_t budget, size_t recent,
                          const DecodeOptions& options);

// Quest (mit-han-lab/Quest; paper Algorithm 1, evaluation/quest_attention.py 146-218,
// quest/utils/controller.py): for kv head h, the upper bound of q_j . k over page p is
// ub_j(p) = sum_i max(q_ji * max_i(p), q_ji * min_i(p)); the group's score is reduce_j ub_j(p)
// (sum ranks like mean). page_budget counts the last page, which is always selected and
// never ranked; the other page_budget - 1 are the top scores among the rest (ties: lower
// page index first). A head with <= page_budget pages selects all of them.
//   out (Hkv, page_budget) int32: the selected page indices ascending, -1 padded.
// Needs page_bounds and rope_mode kOriginal. q (H, Dk) fp32. page_budget >= 1.
void quest_select(const PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                  size_t page_budget, GroupReduce reduce, int32_t* out, int num_threads);

// Quest's upper bounds themselves: ub (Hkv, >= max pages) fp32, entry (h, p) = the group's
// reduced bound of page p (0 past the head's pages).
void quest_page_scores(const PagedKVCache& cache, size_t layer, ConstMatrixView<float> q,
                       GroupReduce reduce, MatrixView<float> ub, int num_threads);

// Attention mass received by each key from the last `window` queries of a causal prefill:
//   q (T, H * Dk), k (T, Hkv * Dk) any storage dtype (row t = token t, the (T, heads, D)
//   layout), scale 0 means 1 / sqrt(Dk).
//   out (Hkv, T) fp32: out[h, t] = reduce_g sum_{i in window} p_{i,g}(t), p_{i,g} the causal
//   softmax of query row i of query head g (keys 0..i); with reduce = kNone out is (H, T),
//   one row per query head (SnapKV pools per query head before averaging the group).
// window = T is H2O's prefill score (column sums of the causal attention); window = w is
// SnapKV's observation window (sum; kvpress divides by w); window = 1 is TOVA's last query.
// Cost O(window * T * H * Dk); never forms the T x T matrix.
void window_attention_mass(const AnyConstMatrix& q, const AnyConstMatrix& k, size_t num_heads,
                           size_t num_kv_heads, size_t window, float scale, GroupReduce reduce,
                           MatrixView<float> out, int num_threads);

}  // namespace kv
}  // namespace sparseforge
