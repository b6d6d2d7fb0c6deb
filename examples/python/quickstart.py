"""The README's quickstart, runnable: prune one matrix several ways and check the results.

Run: python examples/python/quickstart.py
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

import sparseforge as sf


def main() -> None:
    W = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    original = W.copy()

    r = sf.prune.magnitude(W, 0.5)  # 2048 smallest |w| pruned in every row
    assert r.sparsity == 0.5
    assert r.mask.dtype == np.bool_
    assert np.array_equal(W, original)  # inputs are never modified...

    r24 = sf.prune.magnitude(W, pattern="2:4")  # 2 kept of every 4 along in_features
    assert sf.prune.check_pattern(r24.weight, "2:4").ok

    layer = sf.prune.magnitude(W, 0.7, scope="layer")  # one threshold for the matrix
    both = sf.prune.magnitude_global([W, W[:1024]], 0.6)  # one threshold across matrices
    tiles = sf.prune.block_magnitude(W, 0.5, block=16)  # whole 16x16 tiles by L2 norm

    Wb = sf.cast(W, ml_dtypes.bfloat16)  # fp16/bf16 storage, fp32 compute
    r48 = sf.prune.magnitude(Wb, pattern="4:8", num_threads=1)
    assert np.array_equal(r48.mask, sf.prune.magnitude(Wb, pattern="4:8", num_threads=2).mask)

    sf.prune.apply_mask_(W, r.mask)  # ...unless the name ends in "_"
    assert sf.prune.sparsity(W) == 0.5

    for name, res in [
        ("row 50%", r),
        ("2:4", r24),
        ("layer 70%", layer),
        ("global 60% [0]", both[0]),
        ("block 16", tiles),
        ("bf16 4:8", r48),
    ]:
        print(f"{name:15s} sparsity {res.sparsity:.3f}  {res.info['method']}")
    print("simd:", sf.simd_level(), "| threads:", sf.default_num_threads())


if __name__ == "__main__":
    main()
