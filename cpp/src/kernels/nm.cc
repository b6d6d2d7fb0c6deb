#include "sparseforge/kernels/nm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/linalg/linalg.h"
#include "kernels/simd/nm.h"
#include "sparseforge/core/config.h"
#include "sparseforge/core/cpu.h"
#include "sparseforge/core/dtype.h"
#include "sparseforge/core/error.h"
#include "sparseforge/core/parallel.h"

namespace sparseforge {
namespace kernels {

extern const NMKernelTable kNMTableScalar;
#if SF_HAVE_X86_KERNELS
extern const NMKernelTable kNMTableAVX2;
extern const NMKernelTable kNMTableAVX512;
#endif

const NMKernelTable& nm_kernels_for(int level) {
  SF_CHECK_ARG(level >= 0 && level <= static_cast<int>(detected_simd_level()),
               "level: %d is not supported here", level);
#if SF_HAVE_X86_KERNELS
  if (level == static_cast<int>(SimdLevel::kAVX512)) return kNMTableAVX512;
  if (level == static_cast<int>(SimdLevel::kAVX2)) return kNMTableAVX2;
#endif
  return kNMTableScalar;
}

const NMKernelTable& nm_kernels() { return nm_kernels_for(static_cast<int>(simd_level())); }

using format::kNMRowBlock;

namespace {

NMExec exec_of(const format::NMMatrix& A) {
  NMExec e;
  e.dtype = static_cast<int>(A.dtype);
  e.n = A.n;
  e.m = A.m;
  e.rows = A.rows;
  e.cols = A.cols;
  e.slots = A.slots_per_row();
  e.words = A.words_per_row();
  e.exec_bits = A.exec_bits();
  e.values = A.values.data();
  e.codes = reinterpret_cast<const uint32_t*>(A.codes.data());
  return e;
}

// Row blocks per parallel task: 32 blocks = 256 output rows, small enough to balance two
// threads on 4096 rows, large enough that the per-task overhead is noise.
constexpr size_t kBlocksPerTask = 32;
// Compressed bytes per row tile of the direct batch path (a part of L2, beside the X rows).
constexpr size_t kDirectTileBytes = size_t{384} << 10;
// Row blocks per decompressed tile in nm_gemm (64 rows).
constexpr size_t kTileBlocks = 8;

}  // namespace

void nm_gemv(const format::NMMatrix& A, const float* x, float* y, int num_threads) {
  SF_CHECK_ARG(x != nullptr && y != nullptr, "x, y: null pointer");
  const NMExec e = exec_of(A);
  const NMKernelTable& k = nm_kernels();
  const size_t blocks = A.row_blocks();
  const size_t full = A.rows / kNMRowBlock;  // blocks whose 8 rows all exist
  parallel_for(
      blocks, num_threads,
      [&](size_t b0, size_t b1) {
        const size_t f1 = std::min(b1, full);
        if (b0 < f1) k.gemv(e, x, b0, f1, y + b0 * kNMRowBlock);
        if (b1 > full && full >= b0) {  // the padded last block: through a scratch
          float tmp[kNMRowBlock];
          k.gemv(e, x, full, full + 1, tmp);
          std::memcpy(y + full * kNMRowBlock, tmp, (A.rows - full * kNMRowBlock) * sizeof(float));
        }
      },
      kBlocksPerTask);
}

void nm_gemm(const format::NMMatrix& A, ConstMatrixView<float> X, MatrixView<float> Y,
             int num_threads) {
  SF_CHECK_ARG(X.cols == A.cols, "X: has %zu columns, expected in_features=%zu", X.cols, A.cols);
  SF_CHECK_ARG(Y.rows == X.rows && Y.cols == A.rows, "out: shape (%zu, %zu), expected (%zu, %zu)",
               Y.rows, Y.cols, X.rows, A.rows);
  const size_t batch = X.rows;
  if (batch == 0 || A.rows == 0) return;
  const NMExec e = exec_of(A);
  const NMKernelTable& k = nm_kernels();
  const size_t blocks = A.row_blocks();
  if (batch <= k.direct_max_batch(e)) {
    // Row tiles of about kDirectTileBytes of compressed weights, so a tile stays in L2
    // while every chunk of 8 batch rows passes over it: the weights are read from memory
    // once, whatever the batch.
    const size_t block_bytes =
        e.slots * kNMRowBlock * dtype_size(A.dtype) + e.words * kNMRowBlock * sizeof(uint32_t);
    const size_t tile_blocks =
        std::max<size_t>(1, kDirectTileBytes / std::max<size_t>(1, block_bytes));
    const size_t tiles = (blocks + tile_blocks - 1) / tile_blocks;
    parallel_for(tiles, num_threads, [&](size_t t0, size_t t1) {
      std::vector<float> tmp(batch * tile_blocks * kNMRowBlock);
      const size_t ldt = tile_blocks * kNMRowBlock;
      for (size_t t = t0; t < t1; ++t) {
        const size_t b0 = t * tile_blocks, b1 = std::min(blocks, b0 + tile_blocks);
        for (size_t c0 = 0; c0 < batch; c0 += kNMDirectMaxBatch) {
          const size_t nb = std::min(kNMDirectMaxBatch, batch - c0);
          k.gemm_small(e, X.row(c0), X.stride, nb, b0, b1, tmp.data() + c0 * ldt, ldt);
        }
        const size_t r0 = b0 * kNMRowBlock, r1 = std::min(A.rows, b1 * kNMRowBlock);
        for (size_t b = 0; b < batch; ++b)
          std::memcpy(Y.row(b) + r0, tmp.data() + b * ldt, (r1 - r0) * sizeof(float));
      }
    });
    return;
  }
  // Larger batches: C' (tile rows x batch) = T (tile rows x cols) * X^T, T decompressed.
  std::vector<float> Xt(A.cols * batch);
  for (size_t b = 0; b < batch; ++b) {
    const float* xr = X.row(b);
    for (size_t c = 0; c < A.cols; ++c) Xt[c * batch + b] = xr[c];
  }
  const linalg::LinalgTable& la = linalg::linalg();
  const size_t tiles = (blocks + kTileBlocks - 1) / kTileBlocks;
  parallel_for(tiles, num_threads, [&](size_t t0, size_t t1) {
    const size_t tile_rows = kTileBlocks * kNMRowBlock;
    std::vector<float> T(tile_rows * A.cols), C(tile_rows * batch);
    for (size_t t = t0; t < t1; ++t) {
      const size_t rb0 = t * kTileBlocks, rb1 = std::min(blocks, rb0 + kTileBlocks);
      const size_t r0 = rb0 * kNMRowBlock, r1 = std::min(A.rows, rb1 * kNMRowBlock);
      k.decompress_f32(e, rb0, rb1, T.data(), A.cols);
      la.gemm_f32(false, r1 - r0, batch, A.cols, 1.0f, T.data(), A.cols, Xt.data(), batch, 0.0f,
                  C.data(), batch);
      for (size_t i = 0; i < r1 - r0; ++i)
        for (size_t b = 0; b < batch; ++b) Y(b, r0 + i) = C[i * batch + b];
    }
  });
}

}  // namespace kernels
}  // namespace sparseforge
