// The kvcache kernel family's table (internal to the core): score rows, weighted value sums
// and Quest page bounds for decode attention (kvcache/attention.cc drives them).
//
// kv.inc is compiled once per SIMD level (kv_{scalar,avx2,avx512}.cc, flags from
// cpp/CMakeLists.txt); kv_table() returns the active level's table. Entries are
// single-threaded; the driver splits work by kv heads.
//
// Entries indexed by storage dtype take rows as `const void*` with a leading dimension in
// elements; queries, scores, probabilities and outputs are fp32.
//
// Arithmetic contract: every dot product is one vector accumulator over whole SIMD chunks of
// D in order, a fixed horizontal-sum tree, then the D % lanes tail in order; value sums add
// rows in the order given, one fused multiply-add per element. A result does not depend on
// which other queries or rows share the call. Levels differ in the last bits.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparseforge {
namespace kv {

struct KvTable {
  const char* name;
  // s[g * lds + t] = scale * dot(q + g * ldq, K row t) for t < n, g < G; K row t at
  // K + t * ldk elements. [pf, pf + pf_bytes) (pf may be null) is prefetched, spread over the
  // rows (the driver passes a page ahead).
  void (*scores[3])(const void* K, size_t ldk, size_t n, size_t D, const float* q, size_t ldq,
                    size_t G, float scale, float* s, size_t lds, const void* pf, size_t pf_bytes);
  // o[g * ldo + d] += sum over t < n (in order) of p[g * ldp + t] * V[t, d], d < Dv; prefetch
  // as for scores.
  void (*accum[3])(const void* V, size_t ldv, size_t n, size_t Dv, const float* p, size_t ldp,
                   size_t G, float* o, size_t ldo, const void* pf, size_t pf_bytes);
  // u[g * ldu + j] = sum_i max(q_gi * hi_i, q_gi * lo_i) for page j < n, where the page's
  // bounds are b + j * ldb: lo = b[0:D], hi = b[D:2D].
  void (*page_bound)(const float* b, size_t ldb, size_t n, size_t D, const float* q, size_t ldq,
                     size_t G, float* u, size_t ldu);
  // max of s[0:n) (n >= 1).
  float (*row_max)(const float* s, size_t n);
  // s[t] = exp(s[t] - m) (s[t] <= m; ~2 ulp, arguments clamped at -87.3); returns the sum
  // (16 lane partial sums in a fixed order).
  float (*exp_sum)(float* s, size_t n, float m);
};

const KvTable& kv_table();               // the active SIMD level's table
const KvTable& kv_table_for(int level);  // a given level (tests)

}  // namespace kv
}  // namespace sparseforge
