"""Prune one linear layer with SparseGPT from calibration statistics streamed in chunks.

The Python twin of examples/cpp/sparsegpt_stream_example.cc: the same layer and inputs
(a splitmix64 generator, rebuilt bit for bit), the same calls into the core, the same
printed numbers. A calibration pass rarely holds all its activations at once:
``LayerStats.update`` takes them chunk by chunk (X^T X and the column sums of squares are
sums; memory O(in_features^2)), and ``sparsegpt`` reads the Hessian X^T X / tokens from the
statistics in place.

Run: python examples/python/sparsegpt_layer.py
"""

from __future__ import annotations

import sys

import numpy as np

import sparseforge as sf

OUT, IN = 128, 256  # W: (out_features, in_features)
CHUNKS, CHUNK = 8, 64  # 512 calibration tokens, 64 at a time
GROUP = 16  # inputs sharing a component (correlated columns)
_M = np.uint64(0xFFFFFFFFFFFFFFFF)


def uniform(seed: int, i: np.ndarray) -> np.ndarray:
    """splitmix64's outputs number ``i`` as float32 in [-1, 1): 24 random bits, exact."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (i.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = (z ^ (z >> np.uint64(31))) & _M
    return ((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-23)) - np.float32(1.0)


def chunk(c: int) -> np.ndarray:
    """Chunk ``c`` of the calibration inputs: x[t, j] = z[t, j] + z[t, j - j % 16]."""
    t = np.arange(CHUNK, dtype=np.uint64)[:, None]
    j = np.arange(IN, dtype=np.uint64)[None, :]
    row = (np.uint64(c * CHUNK) + t) * np.uint64(IN)
    return uniform(2, row + j) + uniform(2, row + j - j % np.uint64(GROUP))


def main() -> int:
    W = np.float32(0.05) * uniform(1, np.arange(OUT * IN)).reshape(OUT, IN)

    # 1. Stream the calibration chunks into LayerStats (and, to check, all at once).
    stats = sf.calib.LayerStats(IN, hessian=True)
    parts = []
    for c in range(CHUNKS):
        X = chunk(c)
        stats.update(X)
        parts.append(X)
    once = sf.calib.LayerStats(IN, hessian=True)
    once.update(np.concatenate(parts))
    H, H1 = stats.hessian, once.hessian
    worst = float(np.max(np.abs(H - H1)) / np.max(np.abs(H1)))
    print(
        f"tokens {stats.tokens} in {CHUNKS} chunks; streamed vs one-shot Hessian: "
        f"max diff {worst:.1e} of max |H|"
    )

    # 2. SparseGPT from the streamed statistics (read in place), 2:4 and 50 %.
    gpt24 = sf.prune.sparsegpt(W, stats, pattern="2:4")
    violating = sf.prune.check_pattern(gpt24.weight, "2:4").violating
    err_gpt24 = sf.prune.reconstruction_error(W, gpt24.weight, stats)
    gpt50 = sf.prune.sparsegpt(W, stats, 0.5)
    err_gpt50 = sf.prune.reconstruction_error(W, gpt50.weight, stats)
    zeros = int(np.count_nonzero(gpt50.weight == 0))

    # 3. Magnitude 2:4 (no calibration) for comparison.
    mag24 = sf.prune.magnitude(W, pattern="2:4")
    err_mag24 = sf.prune.reconstruction_error(W, mag24.weight, stats)

    print("relative layer error ||(W - W') X||^2 / ||W X||^2:")
    print(f"  magnitude 2:4  {err_mag24:.6f}")
    print(f"  SparseGPT 2:4  {err_gpt24:.6f} ({violating} groups violate 2:4)")
    print(f"  SparseGPT 50%  {err_gpt50:.6f} (sparsity {zeros / W.size:.4f})")
    ok = (
        worst < 1e-5
        and violating == 0
        and err_gpt24 < err_mag24
        and err_gpt50 < err_gpt24
        and zeros >= W.size // 2
    )
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
