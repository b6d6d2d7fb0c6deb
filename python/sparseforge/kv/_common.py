"""Argument checks shared by the kv modules (thin wrappers over ``sparseforge._validate``)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .. import _core
from .._validate import check_choice, check_int

GroupReduce = Literal["mean", "max", "sum"]
_REDUCES = ("mean", "max", "sum")
_INT64 = np.int64


def _int_arg(value: Any, name: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    if type(value) is int and minimum <= value <= maximum:  # the common case, no ABC checks
        return value
    return check_int(value, name, minimum, maximum)


def _reduce_arg(value: Any, name: str = "group_reduce") -> str:
    return check_choice(value, name, _REDUCES)


def _float32_2d(x: Any, name: str, rows: int | None, cols: int | None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise _core.DTypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if (
        x.ndim != 2
        or (rows is not None and x.shape[0] != rows)
        or (cols is not None and x.shape[1] != cols)
    ):
        want = f"({rows if rows is not None else 'n'}, {cols if cols is not None else 'd'})"
        raise ValueError(f"{name}: expected shape {want}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def _tokens_2d(x: Any, name: str, heads: int, dim: int) -> np.ndarray:
    """(T, heads, dim) or (T, heads * dim) -> a (T, heads * dim) view (no copy)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 3:
        if x.shape[1:] != (heads, dim):
            raise ValueError(
                f"{name}: expected shape (tokens, {heads}, {dim}) = (tokens, heads, head_dim), "
                f"got {x.shape}"
            )
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array")
        return x.reshape(x.shape[0], heads * dim)
    if x.ndim == 2 and x.shape[1] == heads * dim:
        return x
    raise ValueError(
        f"{name}: expected shape (tokens, {heads}, {dim}) or (tokens, {heads * dim}), got {x.shape}"
    )


def _positions_arg(positions: Any, n: int, start: int) -> np.ndarray:
    if positions is None:
        return np.arange(start, start + n, dtype=_INT64)
    p = np.asarray(positions)
    if p.ndim == 0:
        p = p.reshape(1)
    if p.ndim != 1 or p.shape[0] != n:
        raise ValueError(f"positions: expected {n} positions, got shape {p.shape}")
    if n and not np.issubdtype(p.dtype, np.integer):
        raise TypeError(f"positions: expected integers, got dtype {p.dtype}")
    return np.ascontiguousarray(p, dtype=_INT64)
