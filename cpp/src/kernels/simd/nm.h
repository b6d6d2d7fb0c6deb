// The table of N:M kernels (internal to the core), one per SIMD level: nm.inc compiled by
// nm_<level>.cc with that level's flags; nm_kernels() picks the active level's table.
//
// The kernels read format::NMMatrix's execution layout through NMExec (a plain struct, so
// the per-level translation units include nothing with inline functions).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparseforge {
namespace kernels {

struct NMExec {
  int dtype;  // DType: 0 fp32, 1 fp16, 2 bf16
  int n, m;
  size_t rows, cols;
  size_t slots;           // per row: cols / m * n
  size_t words;           // code words per row
  int exec_bits;          // 2 (m <= 4) or 4
  const void* values;     // [row block][slot][8]
  const uint32_t* codes;  // [row block][word][8]
};

struct NMKernelTable {
  const char* name;
  // y8 = the 8 outputs of each row block in [rb0, rb1): y8[(rb - rb0) * 8 + lane] =
  // sum over slots of value * x[g * m + code] (padding rows give 0).
  void (*gemv)(const NMExec& A, const float* x, size_t rb0, size_t rb1, float* y8);
  // For batch rows b < B: Y8[b * ldy + (rb - rb0) * 8 + lane], X row b at X + b * ldx.
  // B <= 8.
  void (*gemm_small)(const NMExec& A, const float* X, size_t ldx, size_t B, size_t rb0, size_t rb1,
                     float* Y8, size_t ldy);
  // The dense fp32 rows of row blocks [rb0, rb1): out row (rb - rb0) * 8 + lane, ld elements
  // (padding rows included, as zeros).
  void (*decompress_f32)(const NMExec& A, size_t rb0, size_t rb1, float* out, size_t ld);
  // The largest batch nm_gemm runs through gemm_small (in calls of <= 8 rows, over row
  // tiles that stay in L2); larger batches decompress tiles and use the dense GEMM.
  size_t (*direct_max_batch)(const NMExec& A);
};

const NMKernelTable& nm_kernels();
const NMKernelTable& nm_kernels_for(int level);  // tests: a level <= the detected one

}  // namespace kernels
}  // namespace sparseforge
