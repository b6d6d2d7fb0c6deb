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
from ._validate import check_bool, check_choice, check_fraction, check_int, check_number

__all__ = [
    "HessianFactor",
    "NMPattern",
    "PatternReport",
    "PruneResult",
    "apply_mask_",
    "block_magnitude",
    "check_pattern",
    "factor_hessian",
    "magnitude",
    "magnitude_global",
    "obd",
    "obs",
    "parse_pattern",
    "reconstruct",
    "reconstruction_error",
    "sparsegpt",
    "sparsity",
    "wanda",
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
        n, m = _core.prune.parse_nm(pattern)
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

    def __repr__(self) -> str:
        # Arrays as dtype[shape], never their values (a notebook cell stays one line).
        from ._display import short

        info = {k: v for k, v in self.info.items() if k != "method"}
        kept = int(np.count_nonzero(self.mask))
        return (
            f"PruneResult(method={self.info.get('method', '?')!r}, weight={short(self.weight)}, "
            f"sparsity={self.sparsity:.4f}, kept={kept}/{self.mask.size}, info={short(info)})"
        )

    def _repr_html_(self) -> str:
        from ._display import html_table

        rows: list[tuple[str, Any]] = [
            ("method", str(self.info.get("method", "?"))),
            ("weight", self.weight),
            ("sparsity", round(float(self.sparsity), 6)),
            ("kept", f"{int(np.count_nonzero(self.mask))} of {self.mask.size}"),
        ]
        rows += [(str(k), v) for k, v in self.info.items() if k != "method"]
        return "<b>PruneResult</b>" + html_table(("", ""), rows)


def _check_scope(scope: Any) -> str:
    return check_choice(scope, "scope", ("row", "layer"))


def _result(W: np.ndarray, mask: np.ndarray, info: dict[str, Any], threads: int) -> PruneResult:
    weight, zeros = _core.prune.masked_copy(W, mask, threads)  # one pass: copy, mask, count
    info["pruned"] = int(mask.size - np.count_nonzero(mask))
    return PruneResult(weight=weight, mask=mask, sparsity=zeros / weight.size, info=info)


def _finish(
    weight: np.ndarray, mask: np.ndarray, info: dict[str, Any], threads: int
) -> PruneResult:
    """A PruneResult for a weight the core has already computed (with updates)."""
    info["pruned"] = int(mask.size - np.count_nonzero(mask))
    zeros = _core.prune.count_zeros(weight, threads)
    return PruneResult(weight=weight, mask=mask, sparsity=zeros / weight.size, info=info)


def _sparsity_and_pattern(
    sparsity: Any, pattern: str | NMPattern | tuple[int, int] | None
) -> tuple[float, NMPattern | None]:
    """Defaults and consistency: sparsity 0.5, or 1 - n/m with a pattern (must agree)."""
    if pattern is None:
        return check_fraction(0.5 if sparsity is None else sparsity), None
    p = parse_pattern(pattern)
    if sparsity is not None and not math.isclose(
        check_fraction(sparsity), p.sparsity, rel_tol=0, abs_tol=1e-9
    ):
        raise ValueError(
            f"sparsity: pattern {p} implies sparsity {p.sparsity:g}, got {sparsity!r}; "
            "leave sparsity unset with a pattern"
        )
    return p.sparsity, p


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
            check_fraction(sparsity), p.sparsity, rel_tol=0, abs_tol=1e-9
        ):
            raise ValueError(
                f"sparsity: pattern {p} implies sparsity {p.sparsity:g}, got {sparsity!r}; "
                "leave sparsity unset with a pattern"
            )
        mask = _core.prune.magnitude_nm_mask(W, p.n, p.m, threads)
        info: dict[str, Any] = {
            "method": "magnitude",
            "pattern": str(p),
            "target_sparsity": p.sparsity,
        }
        return _result(W, mask, info, threads)
    s = check_fraction(0.5 if sparsity is None else sparsity)
    mask = _core.prune.magnitude_mask(W, s, scope, threads)
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
    s = check_fraction(sparsity)
    masks = _core.prune.magnitude_global_mask(list(weights), s, threads)
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
    s = check_fraction(sparsity)
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
    mask = _core.prune.magnitude_block_mask(W, s, br, bc, scope, threads)
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
    _core.prune.apply_mask_(W, mask, threads_arg(num_threads))
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
    max_report = check_int(max_report, "max_report", 0)
    groups, violating, first = _core.prune.nm_violations(
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
        return _core.prune.count_zeros(W, threads) / W.size
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


# --- one-shot methods with calibration statistics ------------------------------------------


def _hessian_arg(H: Any) -> Any:
    """An ndarray, or a LayerStats' core object (the core reads its X^T X in place)."""
    from .calib import LayerStats

    if isinstance(H, LayerStats):
        if not H.has_hessian:
            raise ValueError("H: the LayerStats was created with hessian=False")
        return H._impl
    if isinstance(H, HessianFactor):
        raise TypeError(
            "H: a HessianFactor serves sparsegpt only; pass the Hessian or its LayerStats"
        )
    if not isinstance(H, np.ndarray):
        raise TypeError(f"H: expected a numpy.ndarray or a LayerStats, got {type(H).__name__}")
    return H


def _norms_arg(col_norms: Any) -> np.ndarray:
    from .calib import LayerStats

    if isinstance(col_norms, LayerStats):
        return col_norms.col_norms
    if not isinstance(col_norms, np.ndarray):
        raise TypeError(
            f"col_norms: expected a numpy.ndarray or a LayerStats, got {type(col_norms).__name__}"
        )
    return col_norms


def _dead_columns(H: Any) -> list[int]:
    """Inputs that never fired (H_jj == 0): SparseGPT zeroes those columns of W."""
    if isinstance(H, _core.calib.LayerStats):
        return [int(j) for j in np.flatnonzero(H.hessian_diag() == 0)]
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        return []  # the core reports the shape error
    return [int(j) for j in np.flatnonzero(np.diagonal(H) == 0)]


class HessianFactor:
    """SparseGPT's factorised Hessian ``U`` (``(H' + damp I)^-1 = U^T U``), made once by
    :func:`factor_hessian` and passed as ``H`` to :func:`sparsegpt` for every weight that
    reads the same input (q/k/v, gate/up): the factorisation (~2/3 in_features^3 flops)
    depends only on ``H``, the damping and the precisions, so each of those calls gives
    bitwise the result of ``sparsegpt(W, H, ...)`` with the same settings.

    Attributes (read-only): ``in_features``, ``percdamp``, ``max_percdamp`` (as asked),
    ``percdamp_used``, ``damp``, ``attempts``, ``precision``, ``factor_precision``,
    ``dead_columns`` (list of inputs with ``H_jj == 0``) and ``nbytes`` (memory held:
    ``in_features**2`` float32 values for a float32 sweep, float64 otherwise).
    """

    _impl: _core.prune.HessianFactor

    def __init__(self) -> None:
        raise TypeError("HessianFactor: make one with sparseforge.prune.factor_hessian(H)")

    @classmethod
    def _wrap(cls, core: _core.prune.HessianFactor) -> HessianFactor:
        obj = cls.__new__(cls)
        obj._impl = core
        return obj

    @property
    def in_features(self) -> int:
        return int(self._impl.n)

    @property
    def percdamp(self) -> float:
        return float(self._impl.percdamp)

    @property
    def max_percdamp(self) -> float:
        return float(self._impl.max_percdamp)

    @property
    def percdamp_used(self) -> float:
        return float(self._impl.percdamp_used)

    @property
    def damp(self) -> float:
        return float(self._impl.damp)

    @property
    def attempts(self) -> int:
        return int(self._impl.attempts)

    @property
    def precision(self) -> str:
        return "float64" if self._impl.float64 else "float32"

    @property
    def factor_precision(self) -> str:
        return "float32" if self._impl.factor_float32 else "float64"

    @property
    def dead_columns(self) -> list[int]:
        return [int(j) for j in self._impl.dead_columns]

    @property
    def nbytes(self) -> int:
        return int(self._impl.nbytes)

    def __repr__(self) -> str:
        return (
            f"HessianFactor(in_features={self.in_features}, percdamp_used={self.percdamp_used:g}, "
            f"precision={self.precision!r}, factor_precision={self.factor_precision!r})"
        )


def factor_hessian(
    H: Any,
    *,
    percdamp: float = 0.01,
    max_percdamp: float = 1.0,
    precision: str = "float32",
    factor_precision: str = "float64",
    num_threads: int | None = None,
) -> HessianFactor:
    """Factorise ``H`` once for several :func:`sparsegpt` calls (see :class:`HessianFactor`).

    Parameters
    ----------
    H : ndarray (in_features, in_features) float64 | float32, or LayerStats
        As in :func:`sparsegpt`; a LayerStats is read in place (no copy of its Hessian).
    percdamp, max_percdamp, precision, factor_precision
        As in :func:`sparsegpt` (``precision`` is the sweep's, in which ``U`` is stored).

    Raises
    ------
    sparseforge.NumericalError
        If ``H`` stays indefinite up to ``max_percdamp``.
    """
    Hm = _hessian_arg(H)
    pd = check_number(percdamp, "percdamp", 0, None)
    mpd = check_number(max_percdamp, "max_percdamp", 0, None)
    prec = check_choice(precision, "precision", ("float32", "float64"))
    fprec = check_choice(factor_precision, "factor_precision", ("float64", "float32"))
    core = _core.prune.factor_hessian(
        Hm, pd, mpd, fprec == "float32", prec == "float64", threads_arg(num_threads)
    )
    return HessianFactor._wrap(core)


def wanda(
    W: np.ndarray,
    col_norms: Any,
    sparsity: float | None = None,
    *,
    pattern: str | NMPattern | tuple[int, int] | None = None,
    variant: bool = False,
    num_threads: int | None = None,
) -> PruneResult:
    """Wanda: prune by ``|W_ij| * col_norms[j]``, compared within each output row.

    Parameters
    ----------
    W : ndarray, shape (out_features, in_features), float32 | float16 | bfloat16
    col_norms : ndarray, shape (in_features,), float32, finite and >= 0; or a LayerStats
        Input column norms (``LayerStats.col_norms``); any uniform scale gives the same mask.
    sparsity : float in [0, 1), optional
        Default 0.5, or ``1 - n/m`` with a pattern.
    pattern : "n:m", optional
        N:M groups along ``in_features``.
    variant : bool
        locuslab/wanda's ``--use_variant``: per-row cumulative-score cut with alpha found by
        bisection so the layer sparsity is within 0.001 of the target (unstructured only);
        ``info`` then holds ``alpha`` and ``iterations`` (alpha values evaluated, the first
        included: the reference's loop count + 1).

    Returns
    -------
    PruneResult
        No weight update: ``weight`` is W with pruned entries +0.0.

    Notes
    -----
    The score is the fp32 product ``|w| * col_norms[j]``, as the reference computes it, so
    masks equal locuslab/wanda's on the same inputs (ties: lower index pruned first, the
    order of its ``torch.sort(stable=True)``). The variant's cumulative sums are float64.
    """
    threads = threads_arg(num_threads)
    norms = _norms_arg(col_norms)
    s, p = _sparsity_and_pattern(sparsity, pattern)
    check_bool(variant, "variant")
    info: dict[str, Any] = {"method": "wanda", "target_sparsity": s}
    if variant:
        if p is not None:
            raise ValueError("variant: the cumulative-score variant is unstructured; drop pattern")
        mask, alpha, iterations, _achieved = _core.prune.wanda_variant_mask(W, norms, s, threads)
        info.update(variant=True, alpha=float(alpha), iterations=int(iterations))
        return _result(W, mask, info, threads)
    if p is not None:
        info["pattern"] = str(p)
    mask = _core.prune.wanda_mask(W, norms, s, p.n if p else 0, p.m if p else 0, threads)
    return _result(W, mask, info, threads)


def sparsegpt(
    W: np.ndarray,
    H: Any,
    sparsity: float | None = None,
    *,
    pattern: str | NMPattern | tuple[int, int] | None = None,
    block_size: int = 128,
    percdamp: float | None = None,
    max_percdamp: float | None = None,
    precision: str | None = None,
    factor_precision: str | None = None,
    block_count: str = "reference",
    num_threads: int | None = None,
) -> PruneResult:
    """SparseGPT: one-shot pruning with OBS weight updates (IST-DASLab/sparsegpt).

    Parameters
    ----------
    W : ndarray, shape (out_features, in_features), float32 | float16 | bfloat16
    H : ndarray, LayerStats or HessianFactor
        ``X^T X`` up to scale: an ndarray ``(in_features, in_features)``, float64 |
        float32, symmetric; a :class:`~sparseforge.calib.LayerStats` (its Hessian is read in
        place, no copy); or a :class:`HessianFactor` from :func:`factor_hessian`, shared by
        the weights that read the same input (its damping and precisions are used; passing
        different values here raises ``ValueError``).
    sparsity, pattern
        As in :func:`magnitude`. Unstructured masks are chosen per block of columns, jointly
        over all rows, so per-row sparsity varies.
    block_size : int
        Columns per block (the reference's 128); a multiple of m with a pattern.
    percdamp : float, default 0.01
        Damping ``percdamp * mean(diag H)`` added to the diagonal.
    max_percdamp : float, default 1.0
        If H + damping is not positive definite, the damping is retried 10x larger (from
        1e-4 when percdamp is 0) up to this; past it :class:`sparseforge.NumericalError` is
        raised. Never an identity fallback.
    precision : {"float32", "float64"}, default "float32"
        Arithmetic of the column sweep. "float32" is the reference's precision.
    factor_precision : {"float64", "float32"}, default "float64"
        Arithmetic of U, the inverse Cholesky factor (~2/3 in_features^3 flops, most of the
        time on wide layers). "float64" (default) is robust on ill-conditioned Hessians;
        "float32" is the reference's precision, about half the time and half the scratch
        memory, with the same damping escalation if the factorization fails.
    block_count : {"reference", "exact"}
        "reference" prunes every score <= the ``int(rows*B*sparsity)``-th smallest of a
        block (0-based), like the reference's ``sort(...)[k]`` with ``<=``: one weight more
        than the count, plus ties. "exact" prunes exactly ``int(rows*B*sparsity)``.

    Returns
    -------
    PruneResult
        ``weight`` pruned and updated, in W's dtype. ``info``: ``percdamp_used``, ``damp``,
        ``attempts``, ``dead_columns`` (list of the inputs with H_jj == 0, whose columns are
        zeroed),
        ``row_loss`` ((out_features,) float64, the OBS error estimate per row) and ``loss``.

    Notes
    -----
    At sparsity 0 nothing is pruned (the reference would prune each block's minimum); N:M
    ties go to the lower index. Results are identical for any ``num_threads``.
    """
    threads = threads_arg(num_threads)
    s, p = _sparsity_and_pattern(sparsity, pattern)
    block_size = check_int(block_size, "block_size", 1)
    given = {
        "percdamp": percdamp,
        "max_percdamp": max_percdamp,
        "precision": precision,
        "factor_precision": factor_precision,
    }
    if isinstance(H, HessianFactor):
        for name, value in given.items():
            have = getattr(H, name)
            if value is not None and value != have:
                raise ValueError(
                    f"{name}: {value!r} differs from the HessianFactor's {have!r}; leave it "
                    "unset or factor H again"
                )
        pd, mpd, prec, fprec = H.percdamp, H.max_percdamp, H.precision, H.factor_precision
        Hm: Any = H._impl
        dead = H.dead_columns
    else:
        pd = check_number(0.01 if percdamp is None else percdamp, "percdamp", 0, None)
        mpd = check_number(1.0 if max_percdamp is None else max_percdamp, "max_percdamp", 0, None)
        prec = check_choice(
            "float32" if precision is None else precision, "precision", ("float32", "float64")
        )
        fprec = check_choice(
            "float64" if factor_precision is None else factor_precision,
            "factor_precision",
            ("float64", "float32"),
        )
        Hm = _hessian_arg(H)
        dead = None
    count = check_choice(block_count, "block_count", ("reference", "exact"))
    weight, mask, core_info = _core.prune.sparsegpt(
        W,
        Hm,
        s,
        p.n if p else 0,
        p.m if p else 0,
        int(block_size),
        pd,
        mpd,
        prec == "float64",
        fprec == "float32",
        count == "exact",
        None,
        threads,
    )
    info: dict[str, Any] = {"method": "sparsegpt", "target_sparsity": s, **core_info}
    info["dead_columns"] = _dead_columns(Hm) if dead is None else dead
    info.update(
        block_size=int(block_size), precision=prec, factor_precision=fprec, block_count=count
    )
    if p is not None:
        info["pattern"] = str(p)
    return _finish(weight, mask, info, threads)


def obs(
    W: np.ndarray,
    H: Any,
    sparsity: float | None = None,
    *,
    pattern: str | NMPattern | tuple[int, int] | None = None,
    percdamp: float = 0.01,
    max_percdamp: float = 1.0,
    num_threads: int | None = None,
) -> PruneResult:
    """Exact greedy Optimal Brain Surgeon, row by row (float64).

    Each step prunes the weight with the least saliency ``w_q**2 / [H^-1]_qq`` (ties:
    lower index), updates every remaining weight of the row by ``-w_q / [H^-1]_qq *
    H^-1[:, q]`` and removes q from ``H^-1``. With a pattern, only weights in groups still
    keeping more than n are candidates. H is damped and dead inputs handled as in
    :func:`sparsegpt`. Cost ~``in_features * k**2 / 2`` per row for k pruned: ground truth
    for layers up to ~1024 inputs. ``info``: ``loss``, ``row_loss`` (sum of saliencies).
    """
    threads = threads_arg(num_threads)
    Hm = _hessian_arg(H)
    s, p = _sparsity_and_pattern(sparsity, pattern)
    pd = check_number(percdamp, "percdamp", 0, None)
    mpd = check_number(max_percdamp, "max_percdamp", 0, None)
    weight, mask, core_info = _core.prune.obs(
        W, Hm, s, p.n if p else 0, p.m if p else 0, pd, mpd, threads
    )
    info: dict[str, Any] = {"method": "obs", "target_sparsity": s, **core_info}
    info["dead_columns"] = _dead_columns(Hm)
    if p is not None:
        info["pattern"] = str(p)
    return _finish(weight, mask, info, threads)


def obd(
    W: np.ndarray,
    H: Any,
    sparsity: float | None = None,
    *,
    pattern: str | NMPattern | tuple[int, int] | None = None,
    num_threads: int | None = None,
) -> PruneResult:
    """Optimal Brain Damage: saliency ``0.5 * w**2 * H_qq`` (the undamped diagonal), the
    lowest ``int(sparsity * in_features)`` per row (or per group with a pattern) pruned,
    ties by index; no weight update."""
    threads = threads_arg(num_threads)
    Hm = _hessian_arg(H)
    s, p = _sparsity_and_pattern(sparsity, pattern)
    mask = _core.prune.obd_mask(W, Hm, s, p.n if p else 0, p.m if p else 0, threads)
    info: dict[str, Any] = {"method": "obd", "target_sparsity": s}
    if p is not None:
        info["pattern"] = str(p)
    return _result(W, mask, info, threads)


def reconstruct(
    W: np.ndarray,
    H: Any,
    mask: np.ndarray,
    *,
    method: str = "exact",
    percdamp: float = 0.01,
    precision: str = "float64",
    block_size: int = 128,
    num_threads: int | None = None,
) -> PruneResult:
    """The best weights for a given mask: mask selection and weight update as separate steps.

    Parameters
    ----------
    mask : ndarray of bool, W's shape, True = kept
        Any mask, e.g. ``wanda(...).mask``.
    method : {"exact", "sweep"}
        "exact": per row the least-squares optimum ``w_hat_S = solve(H'_SS, (H' w)_S)`` over
        the kept set S (float64, one Cholesky of |S| x |S| per row: ~|S|**3/3 flops per row,
        fine to a few thousand inputs). "sweep": SparseGPT's column sweep with this mask (no
        selection), the "mask-given SparseGPT" of locuslab/wanda's ablations: fast, not
        optimal (kept weights left of a pruned one are not revisited).
    precision : {"float64", "float32"}
        The sweep's arithmetic ("exact" is always float64).

    Returns
    -------
    PruneResult
        ``info``: ``loss``/``row_loss`` (for "exact": ``0.5 (w - w_hat)^T H' (w - w_hat)``).
    """
    threads = threads_arg(num_threads)
    Hm = _hessian_arg(H)
    meth = check_choice(method, "method", ("exact", "sweep"))
    pd = check_number(percdamp, "percdamp", 0, None)
    prec = check_choice(precision, "precision", ("float32", "float64"))
    info: dict[str, Any] = {"method": f"reconstruct:{meth}"}
    if meth == "exact":
        weight, core_info = _core.prune.reconstruct_exact(W, Hm, mask, pd, threads)
        info.update(core_info, dead_columns=_dead_columns(Hm))
        return _finish(weight, np.array(mask, dtype=bool, copy=True), info, threads)
    block_size = check_int(block_size, "block_size", 1)
    weight, keep, core_info = _core.prune.sparsegpt(
        W, Hm, 0.0, 0, 0, int(block_size), pd, 1.0, prec == "float64", False, False, mask, threads
    )
    info.update(core_info, precision=prec, dead_columns=_dead_columns(Hm))
    return _finish(weight, keep, info, threads)


def reconstruction_error(
    W: np.ndarray, W_hat: np.ndarray, H: Any, *, num_threads: int | None = None
) -> float:
    """Relative layer error ``||(W - W_hat) X||**2 / ||W X||**2`` with ``H = X^T X``.

    Computed in the core in float64 as ``trace(D H D^T) / trace(W H W^T)``, ``D = W -
    W_hat``, reading ``H`` (an ndarray or a LayerStats, read in place) through its lower
    triangle: no copy of ``H``, about ``2 * out * in**2`` flops, the same value for any
    ``num_threads``.

    Parameters
    ----------
    W, W_hat : ndarray (out_features, in_features), float32 | float16 | bfloat16
    H : ndarray (in_features, in_features) float64 | float32, or LayerStats
    """
    for name, a in (("W", W), ("W_hat", W_hat)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if W.ndim != 2 or W_hat.shape != W.shape:
        raise ValueError(f"W_hat: expected shape {W.shape}, got {W_hat.shape}")
    Hm = _hessian_arg(H)
    n = int(W.shape[1])
    shape = (Hm.in_features,) * 2 if isinstance(Hm, _core.calib.LayerStats) else Hm.shape
    if tuple(shape) != (n, n):
        raise ValueError(f"H: expected shape ({n}, {n}), got {tuple(shape)}")
    return float(_core.prune.reconstruction_error(W, W_hat, Hm, threads_arg(num_threads)))


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
