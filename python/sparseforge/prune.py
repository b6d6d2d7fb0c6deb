"""Weight pruning: masks, magnitude pruning, N:M patterns.

Conventions
-----------
* ``W`` has shape ``(out_features, in_features)``, row-major, dtype float32, float16 or
  ``ml_dtypes.bfloat16``. Rows may be a slice of a larger array (``W[:, :k]``); other
  layouts raise ``ValueError`` instead of being copied silently.
* A mask is a bool array of ``W``'s shape, **True = kept**.
* N:M (``pattern="2:4"``) keeps *n* of every *m* consecutive weights along
  ``in_features``; ``1 <= n < m <= 32``.
* Sparsity is the fraction of zeros, in ``[0, 1)``. The number pruned from ``count``
  weights is ``int(count * sparsity)``, as in the reference repositories.
* Ties: weights are ranked by ``(|w|, index)`` and the lowest are pruned, so among equal
  magnitudes the lower index goes first (a stable ascending sort, as locuslab/wanda's
  ``torch.sort(..., stable=True)``). Results are identical for any thread count and SIMD
  level.
* Inputs are never modified, except by functions whose name ends in ``_``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from ._base import threads_arg

__all__ = [
    "NMPattern",
    "PatternReport",
    "PruneResult",
    "apply_mask_",
    "block_magnitude",
    "check_pattern",
    "magnitude",
    "magnitude_global",
    "parse_pattern",
    "sparsity",
]


@dataclass(frozen=True)
class NMPattern:
    """N:M sparsity: ``n`` kept of every ``m`` consecutive weights along ``in_features``."""

    n: int
    m: int

    def __post_init__(self) -> None:
        for name in ("n", "m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"pattern: {name} must be an int, got {type(value).__name__}")
        if not 1 <= self.n < self.m <= 32:
            raise ValueError(
                f"pattern: expected 1 <= n < m <= 32 (n kept of every m), got {self.n}:{self.m}"
            )

    @property
    def sparsity(self) -> float:
        """Fraction of zeros the pattern implies, ``1 - n/m``."""
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(pattern: str | NMPattern | tuple[int, int]) -> NMPattern:
    """``"2:4"``, ``(2, 4)`` or an :class:`NMPattern` -> :class:`NMPattern`."""
    if isinstance(pattern, NMPattern):
        return pattern
    if isinstance(pattern, str):
        n, m = _core.parse_nm(pattern)
        return NMPattern(n, m)
    if isinstance(pattern, tuple) and len(pattern) == 2:
        return NMPattern(*pattern)
    raise TypeError(
        f"pattern: expected a string like '2:4', an (n, m) tuple or NMPattern, "
        f"got {type(pattern).__name__}"
    )


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What every pruning method returns.

    Attributes
    ----------
    weight : ndarray, W's shape and dtype
        A pruned copy of ``W`` (pruned entries are +0.0). ``W`` itself is untouched.
    mask : ndarray of bool, W's shape
        True where the weight is kept.
    sparsity : float
        Achieved fraction of zeros in ``weight`` (may exceed the target if ``W`` already
        had zeros among the kept weights).
    info : mapping
        Method-specific details: ``method``, ``target_sparsity``, ``pruned`` (weights the
        mask removed), and the arguments that shaped the mask.
    """

    weight: np.ndarray
    mask: np.ndarray
    sparsity: float
    info: Mapping[str, Any] = field(default_factory=dict)


def _check_sparsity(value: Any, name: str = "sparsity") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {type(value).__name__}")
    s = float(value)
    if not (0.0 <= s < 1.0):  # also rejects NaN
        raise ValueError(f"{name}: expected a value in [0, 1), got {s!r}")
    return s


def _check_scope(scope: Any) -> str:
    if scope not in ("row", "layer"):
        raise ValueError(f"scope: expected 'row' or 'layer', got {scope!r}")
    return str(scope)


def _result(W: np.ndarray, mask: np.ndarray, info: dict[str, Any], threads: int) -> PruneResult:
    weight, zeros = _core.masked_copy(W, mask, threads)  # one pass: copy, mask, count
    info["pruned"] = int(mask.size - np.count_nonzero(mask))
    return PruneResult(weight=weight, mask=mask, sparsity=zeros / weight.size, info=info)


def magnitude(
    W: np.ndarray,
    sparsity: float | None = None,
    *,
    scope: str = "row",
    pattern: str | NMPattern | tuple[int, int] | None = None,
    num_threads: int | None = None,
) -> PruneResult:
    """Prune the smallest-magnitude weights.

    Parameters
    ----------
    W : ndarray, shape (out_features, in_features), float32 | float16 | bfloat16
        Finite weights (NaN/Inf raise ``ValueError``). Not modified.
    sparsity : float in [0, 1), optional
        Fraction to prune. Defaults to 0.5, or to ``1 - n/m`` with a pattern (an explicit
        value must then equal ``1 - n/m``).
    scope : {"row", "layer"}
        ``"row"`` prunes exactly ``int(sparsity * in_features)`` weights in every output
        row; ``"layer"`` prunes exactly ``int(sparsity * W.size)`` over the whole matrix with
        one threshold (the Wanda repository's magnitude baseline thresholds the layer the
        same way, but with ``<=``, pruning one weight more).
    pattern : "n:m", optional
        N:M structured sparsity: in every group of m consecutive weights along
        ``in_features`` keep the n largest; ``in_features % m`` must be 0.
    num_threads : int, optional
        Threads for this call; results do not depend on it.

    Returns
    -------
    PruneResult
        ``weight`` a pruned copy, ``mask`` True = kept.
    """
    threads = threads_arg(num_threads)
    scope = _check_scope(scope)
    if pattern is not None:
        p = parse_pattern(pattern)
        if scope != "row":
            raise ValueError("scope: an N:M pattern is per row; use scope='row' (the default)")
        if sparsity is not None and not math.isclose(
            _check_sparsity(sparsity), p.sparsity, rel_tol=0, abs_tol=1e-9
        ):
            raise ValueError(
                f"sparsity: pattern {p} implies sparsity {p.sparsity:g}, got {sparsity!r}; "
                "leave sparsity unset with a pattern"
            )
        mask = _core.magnitude_nm_mask(W, p.n, p.m, threads)
        info = {"method": "magnitude", "pattern": str(p), "target_sparsity": p.sparsity}
        return _result(W, mask, info, threads)
    s = _check_sparsity(0.5 if sparsity is None else sparsity)
    mask = _core.magnitude_mask(W, s, scope, threads)
    info = {"method": "magnitude", "scope": scope, "target_sparsity": s}
    return _result(W, mask, info, threads)


def magnitude_global(
    weights: Sequence[np.ndarray], sparsity: float, *, num_threads: int | None = None
) -> list[PruneResult]:
    """Magnitude pruning with one threshold across several matrices.

    Exactly ``int(sparsity * total)`` weights are pruned over all matrices together, ranked
    by ``(|w|, matrix position, row-major index)``; per-matrix sparsities differ.

    Parameters
    ----------
    weights : sequence of ndarray, each 2-D float32 | float16 | bfloat16
        Dtypes and shapes may differ between matrices. Not modified.
    sparsity : float in [0, 1)

    Returns
    -------
    list of PruneResult, one per matrix, in order.
    """
    threads = threads_arg(num_threads)
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence):
        raise TypeError(
            f"weights: expected a list or tuple of 2-D arrays, got {type(weights).__name__}"
        )
    if len(weights) == 0:
        raise ValueError("weights: expected at least one matrix, got none")
    s = _check_sparsity(sparsity)
    masks = _core.magnitude_global_mask(list(weights), s, threads)
    results = []
    for i, (W, mask) in enumerate(zip(weights, masks, strict=True)):
        info = {"method": "magnitude_global", "target_sparsity": s, "index": i}
        results.append(_result(W, mask, info, threads))
    return results


def block_magnitude(
    W: np.ndarray,
    sparsity: float,
    block: int | tuple[int, int] = 16,
    *,
    scope: str = "layer",
    num_threads: int | None = None,
) -> PruneResult:
    """Prune whole ``block``-shaped tiles with the smallest L2 (Frobenius) norm.

    Parameters
    ----------
    W : ndarray, shape (out_features, in_features), float32 | float16 | bfloat16
        Both dimensions must be multiples of the block shape. Not modified.
    sparsity : float in [0, 1)
        Fraction of tiles pruned: ``int(sparsity * tiles)`` over the matrix
        (``scope="layer"``) or ``int(sparsity * tiles_per_row)`` in every row of tiles
        (``scope="row"``).
    block : int or (rows, cols)
        Tile shape; an int means square tiles.

    Notes
    -----
    Norms are computed in float64; ties go by tile index (row-major over tiles).
    """
    threads = threads_arg(num_threads)
    scope = _check_scope(scope)
    s = _check_sparsity(sparsity)
    if isinstance(block, numbers.Integral) and not isinstance(block, bool):
        br = bc = int(block)
    elif (
        isinstance(block, tuple)
        and len(block) == 2
        and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in block)
    ):
        br, bc = int(block[0]), int(block[1])
    else:
        raise TypeError(f"block: expected an int or a (rows, cols) tuple of ints, got {block!r}")
    if br < 1 or bc < 1:
        raise ValueError(f"block: expected positive sizes, got ({br}, {bc})")
    mask = _core.magnitude_block_mask(W, s, br, bc, scope, threads)
    info = {"method": "block_magnitude", "block": (br, bc), "scope": scope, "target_sparsity": s}
    return _result(W, mask, info, threads)


def apply_mask_(W: np.ndarray, mask: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
    """Zero ``W`` where ``mask`` is False, in place.

    Parameters
    ----------
    W : ndarray, shape (rows, cols), float32 | float16 | bfloat16, writeable
        Modified in place (pruned entries become +0.0). Values are not checked.
    mask : ndarray of bool, W's shape
        True = kept.

    Returns
    -------
    ndarray
        ``W`` itself (the same object), for chaining.
    """
    _core.apply_mask_(W, mask, threads_arg(num_threads))
    return W


@dataclass(frozen=True)
class PatternReport:
    """Result of :func:`check_pattern`.

    Attributes
    ----------
    pattern : NMPattern
    groups : int
        Groups of m consecutive weights checked (``rows * cols / m``).
    violating : int
        Groups holding more than n non-zeros.
    first_violations : list of (row, col)
        Row and first column of the first violating groups, row-major order.
    """

    pattern: NMPattern
    groups: int
    violating: int
    first_violations: list[tuple[int, int]]

    @property
    def ok(self) -> bool:
        """True if every group satisfies the pattern."""
        return self.violating == 0

    def __bool__(self) -> bool:
        return self.ok


def check_pattern(
    W: np.ndarray,
    pattern: str | NMPattern | tuple[int, int],
    *,
    max_report: int = 10,
    num_threads: int | None = None,
) -> PatternReport:
    """Check that every group of m consecutive weights along a row has at most n non-zeros.

    Parameters
    ----------
    W : ndarray, shape (rows, cols), float32 | float16 | bfloat16, finite
        ``cols % m`` must be 0.
    pattern : "n:m"
    max_report : int
        How many violating groups to locate in ``first_violations``.
    """
    p = parse_pattern(pattern)
    if isinstance(max_report, bool) or not isinstance(max_report, numbers.Integral):
        raise TypeError(f"max_report: expected an int, got {type(max_report).__name__}")
    if max_report < 0:
        raise ValueError(f"max_report: expected >= 0, got {max_report}")
    groups, violating, first = _core.nm_violations(
        W, p.n, p.m, int(max_report), threads_arg(num_threads)
    )
    return PatternReport(p, int(groups), int(violating), [(int(r), int(c)) for r, c in first])


def sparsity(W: np.ndarray, *, num_threads: int | None = None) -> float:
    """Fraction of entries equal to zero (either sign; NaN counts as non-zero).

    Parameters
    ----------
    W : ndarray
        2-D float32/float16/bfloat16 arrays go through the core without a copy; any other
        non-empty numeric array is counted with numpy.
    """
    if not isinstance(W, np.ndarray):
        raise TypeError(f"W: expected a numpy.ndarray, got {type(W).__name__}")
    if W.size == 0:
        raise ValueError(f"W: expected a non-empty array, got shape {W.shape}")
    threads = threads_arg(num_threads)
    if _core_takes(W):
        return _core.count_zeros(W, threads) / W.size
    if W.dtype.kind not in "biufc" and W.dtype.name != "bfloat16":
        raise TypeError(f"W: expected a numeric array, got dtype {W.dtype}")
    return float(np.count_nonzero(W == 0)) / W.size


def _core_takes(W: np.ndarray) -> bool:
    """True if the core's numpy gate accepts W as a matrix view (no copy needed)."""
    item = W.itemsize
    return (
        W.ndim == 2
        and W.dtype.name in ("float32", "float16", "bfloat16")
        and W.dtype.byteorder != ">"
        and W.flags.aligned
        and (W.strides[1] == item or W.shape[1] <= 1)
        and (W.shape[0] <= 1 or (W.strides[0] >= W.shape[1] * item and W.strides[0] % item == 0))
    )
