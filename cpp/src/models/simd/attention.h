// The attention kernel family (internal to the core): one query head against its first n
// keys, dispatched per SIMD level like core/linalg (Eigen renamed per level, see
// core/linalg/linalg.h for why).
//
// attention.inc is compiled once per level (attention_{scalar,avx2,avx512}.cc, flags from
// cpp/CMakeLists.txt). Entries are single-threaded; models/ops.cc splits (head, query)
// tasks over threads and picks one table per call, so every task of a call, and the
// decode path, runs the same arithmetic.
//
// Arithmetic contract (what makes results independent of the thread count and makes
// decode_attention equal causal_attention's last row): each score is summed over d in
// order (always in the 16-key chunk that holds it) and each output over keys j in order,
// in register blocks of 16 or 4 outputs with
// the same operations for every element (FMA where the level has it), whichever block of
// up to 4 queries a query runs in (the block only shares the loads of k and v rows); exp
// and the normaliser are Eigen's packet exp and sum over a 64-byte aligned buffer, so
// their order depends only on the query's key count. Levels differ in the last bits:
// compare levels with a tolerance.
#pragma once

#include <cstddef>

namespace sparseforge {
namespace models {

struct AttentionTable {
  const char* name;
  // nq consecutive queries of one head; query i attends its first n0 + i keys:
  //   out_i[0..D) = softmax_j(scale * q_i . k_j) v_j over j < n0 + i.
  //   q: query i at q + i * ldq (D floats). kt: the kv head's keys transposed,
  //   kt[d * ldk + j], ldk a multiple of 16 >= n0 + nq - 1 (scores run in whole 16-key
  //   chunks: the padding is read, its scores ignored). v: value rows, v[j * ldv + d] (the
  //   head's columns already offset). s: scratch, query i's round_up(n0 + i, 16) floats at
  //   s + (i % 4) * lds, 64-byte aligned (lds a multiple of 16). out: query i at
  //   out + i * ldo.
  void (*attend)(const float* q, size_t ldq, size_t nq, const float* kt, size_t ldk, const float* v,
                 size_t ldv, size_t n0, size_t D, float scale, float* s, size_t lds, float* out,
                 size_t ldo);
};

const AttentionTable& attention_table();               // the active SIMD level's table
const AttentionTable& attention_table_for(int level);  // a given level (tests)

}  // namespace models
}  // namespace sparseforge
