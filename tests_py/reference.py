"""Pure-numpy oracles for the pruning rules, written from the documented semantics.

Nothing here imports sparseforge: these are the slow, obviously-correct versions the
library is tested against. Conventions (docs/conventions.md, ``sparseforge.prune``):

* ``W`` has shape ``(out_features, in_features)``; magnitudes are ``|W|`` in float32
  (fp16/bf16 convert to float32 exactly).
* Masks are bool, **True = kept**.
* The number pruned from ``count`` weights is ``int(count * sparsity)``.
* Ties: a stable ascending argsort of the magnitudes; the first ``k`` are pruned, so among
  equal magnitudes the lower index goes first. ``-0.0`` and ``+0.0`` are equal.

The module also holds small test-data generators (pure numpy / ml_dtypes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = (F32, F16, BF16)


# --- helpers ---------------------------------------------------------------------------


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns of a float array (uint16 or uint32), same shape."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint16)


def to_f32(a: np.ndarray) -> np.ndarray:
    """Exact float32 values of a float32/float16/bfloat16 array (NaNs stay NaN)."""
    a = np.asarray(a)
    if a.dtype == BF16:  # bf16 is the top half of a float32: exact by construction
        return (bits(a).astype(np.uint32) << np.uint32(16)).view(np.float32)
    return a.astype(np.float32)


def magnitudes(W: np.ndarray) -> np.ndarray:
    """``|W|`` in float32."""
    return np.abs(to_f32(W))


def prune_count(count: int, sparsity: float) -> int:
    """How many of ``count`` weights a sparsity prunes (as the reference repositories)."""
    return int(count * sparsity)


def _prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep-mask over a 1-D array pruning the ``k`` lowest (stable order)."""
    keep = np.ones(scores.shape, dtype=bool)
    keep[np.argsort(scores, kind="stable")[:k]] = False
    return keep


# --- masks -----------------------------------------------------------------------------


def magnitude_row_mask(W: np.ndarray, sparsity: float) -> np.ndarray:
    """Every row prunes ``int(cols * sparsity)`` lowest magnitudes."""
    a = magnitudes(W)
    k = prune_count(W.shape[1], sparsity)
    order = np.argsort(a, axis=1, kind="stable")[:, :k]
    keep = np.ones(W.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def magnitude_layer_mask(W: np.ndarray, sparsity: float) -> np.ndarray:
    """Exactly ``int(W.size * sparsity)`` lowest magnitudes over the whole matrix
    (row-major index breaks ties)."""
    keep = _prune_lowest(magnitudes(W).ravel(), prune_count(W.size, sparsity))
    return keep.reshape(W.shape)


def magnitude_global_masks(weights: Sequence[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """One ranking over several matrices: the flattened matrices concatenated in order."""
    flat = np.concatenate([magnitudes(W).ravel() for W in weights])
    keep = _prune_lowest(flat, prune_count(flat.size, sparsity))
    out = []
    start = 0
    for W in weights:
        out.append(keep[start : start + W.size].reshape(W.shape))
        start += W.size
    return out


def nm_mask(W: np.ndarray, n: int, m: int) -> np.ndarray:
    """N:M, n kept of every m consecutive weights along a row: the ``m - n`` lowest of each
    group are pruned (stable order inside the group)."""
    rows, cols = W.shape
    assert cols % m == 0
    a = magnitudes(W).reshape(rows, cols // m, m)
    order = np.argsort(a, axis=2, kind="stable")[:, :, : m - n]
    keep = np.ones(a.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=2)
    return keep.reshape(W.shape)


def tile_norms(W: np.ndarray, br: int, bc: int) -> np.ndarray:
    """L2 norms (float64) of the ``br x bc`` tiles, shape ``(rows // br, cols // bc)``."""
    rows, cols = W.shape
    a = to_f32(W).astype(np.float64)
    sq = (a * a).reshape(rows // br, br, cols // bc, bc).sum(axis=(1, 3))
    return np.sqrt(sq)


def block_mask(W: np.ndarray, sparsity: float, br: int, bc: int, scope: str) -> np.ndarray:
    """Whole tiles with the lowest L2 norm pruned; ties by row-major tile index.

    ``scope="layer"``: ``int(sparsity * tiles)`` over the matrix; ``scope="row"``:
    ``int(sparsity * tiles_per_row)`` in every row of tiles.
    """
    norms = tile_norms(W, br, bc)
    tr, tc = norms.shape
    if scope == "layer":
        tile_keep = _prune_lowest(norms.ravel(), prune_count(tr * tc, sparsity)).reshape(tr, tc)
    elif scope == "row":
        k = prune_count(tc, sparsity)
        tile_keep = np.stack([_prune_lowest(norms[i], k) for i in range(tr)])
    else:
        raise ValueError(scope)
    return np.repeat(np.repeat(tile_keep, br, axis=0), bc, axis=1)


def apply_mask(W: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """A copy of ``W`` with +0.0 where ``keep`` is False; kept entries bit-identical."""
    b = bits(W).copy()
    b[~keep] = 0
    return b.view(W.dtype)


# --- checks ----------------------------------------------------------------------------


def nm_violations(
    W: np.ndarray, n: int, m: int, max_report: int
) -> tuple[int, int, list[tuple[int, int]]]:
    """(groups, violating groups, first violating (row, first col) in row-major order)."""
    rows, cols = W.shape
    nonzero = (to_f32(W) != 0).reshape(rows, cols // m, m).sum(axis=2)
    bad = nonzero > n
    where = np.argwhere(bad)  # row-major order
    first = [(int(r), int(g) * m) for r, g in where[:max_report]]
    return rows * (cols // m), int(bad.sum()), first


def nm_violation_count(W: np.ndarray, n: int, m: int) -> int:
    return nm_violations(W, n, m, 0)[1]


def sparsity(W: np.ndarray) -> float:
    """Fraction of entries equal to zero (either sign; NaN is not zero)."""
    values = to_f32(W) if W.dtype in DTYPES else W
    return float(np.count_nonzero(values == 0)) / W.size


# --- test data -------------------------------------------------------------------------

KINDS = ("normal", "ints", "special")


def cast_to(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """numpy / ml_dtypes conversion (round to nearest even)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(a).astype(dtype)


def weights(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, kind: str = "normal"
) -> np.ndarray:
    """Finite test weights of ``dtype``.

    * ``normal``: Gaussian, scale 0.02 like LLM weights;
    * ``ints``: small integers in [-3, 3] with random signs on zero (+0.0 and -0.0):
      many ties, the case the tie rule decides;
    * ``special``: a mix of magnitudes spanning the dtype's range, subnormals, signed zeros
      and repeated values.
    """
    if kind == "normal":
        a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    elif kind == "ints":
        a = rng.integers(-3, 4, size=shape).astype(np.float32)
        a = np.where(rng.random(shape) < 0.5, -a, a)  # -0.0 where a == 0
    elif kind == "special":
        tiny = {F32: 1e-45, F16: 6e-8, BF16: 1e-40}[np.dtype(dtype)]
        big = {F32: 3e38, F16: 6e4, BF16: 3e38}[np.dtype(dtype)]
        pool = np.array(
            [0.0, -0.0, tiny, -tiny, 2 * tiny, 1e-3, -1e-3, 0.5, 1.0, -1.0, 1.5, big, -big],
            dtype=np.float32,
        )
        a = rng.choice(pool, size=shape) * rng.choice(np.float32([1.0, 1.0, 0.75]), size=shape)
        scale = np.float32(2.0) ** rng.integers(-20, 5, size=shape).astype(np.float32)
        with np.errstate(over="ignore"):
            mixed = np.where(rng.random(shape) < 0.5, a, rng.standard_normal(shape) * scale)
        a = np.clip(mixed, -big, big).astype(np.float32)
    else:
        raise ValueError(kind)
    out = cast_to(a, dtype)
    assert np.isfinite(to_f32(out)).all()
    return out


def runc_encode(tok: Any, text: str, bos: bool = True) -> list[int]:
    """llama2.c ``run.c``'s ``encode()`` as written: BOS, a dummy-prefix space, one piece
    per UTF-8 character (byte fallback ``<0xNN>`` = byte + 3), then merge the adjacent pair
    whose merged piece has the best score, scanning every pair each time (quadratic).
    ``tok`` is anything with ``vocab_size``, ``piece(i) -> bytes`` and ``score(i)``."""
    lookup: dict[bytes, int] = {}
    for i in range(tok.vocab_size):
        lookup.setdefault(tok.piece(i), i)
    ids = [1] if bos else []
    if text:
        ids.append(lookup[b" "])
    for ch in text:
        b = ch.encode()
        ids += [lookup[b]] if b in lookup else [x + 3 for x in b]
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(ids) - 1):
            t = lookup.get(tok.piece(ids[i]) + tok.piece(ids[i + 1]))
            if t is not None and tok.score(t) > best:
                best, best_i, best_id = tok.score(t), i, t
        if best_i < 0:
            return ids
        ids[best_i : best_i + 2] = [best_id]
