"""The argument checks every facade shares: one wording, one set of exception types.

Each check returns the normalised value or raises ``TypeError`` (wrong kind of object) or
``ValueError`` (right kind, wrong value) naming the argument, what was expected and what
came. Every facade uses these instead of private copies (``sparseforge.kv`` through thin
wrappers in ``kv/_common.py``). ``threads_arg`` (``_base.py``) is the ``num_threads`` check.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _core

__all__ = [
    "UnknownNameError",
    "check_array",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_instance",
    "check_int",
    "check_ndarray",
    "check_number",
]


class UnknownNameError(KeyError, ValueError):
    """A name that is not one of the known keys: a ``ValueError`` for the argument
    discipline, and still a ``KeyError`` for code that catches that."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _kind(v: Any) -> str:
    return type(v).__name__


def check_bool(v: Any, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {_kind(v)}")
    return bool(v)


def check_int(v: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float) in ``[lo, hi]``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {_kind(v)}")
    i = int(v)
    if (lo is not None and i < lo) or (hi is not None and i > hi):
        if hi is None:
            raise ValueError(f"{name}: expected an int >= {lo}, got {i}")
        if lo is None:
            raise ValueError(f"{name}: expected an int <= {hi}, got {i}")
        raise ValueError(f"{name}: expected an int in [{lo}, {hi}], got {i}")
    return i


def check_number(
    v: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
) -> float:
    """A real number (not a bool); NaN always refused, Inf unless ``finite=False``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {_kind(v)}")
    f = float(v)
    if math.isnan(f) or (finite and math.isinf(f)):
        raise ValueError(f"{name}: expected a finite number, got {f}")
    bad = (lo is not None and (f < lo or (lo_open and f == lo))) or (
        hi is not None and (f > hi or (hi_open and f == hi))
    )
    if bad:
        if hi is None:
            raise ValueError(f"{name}: expected a number {'>' if lo_open else '>='} {lo}, got {f}")
        if lo is None:
            raise ValueError(f"{name}: expected a number {'<' if hi_open else '<='} {hi}, got {f}")
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a number in {left}{lo}, {hi}{right}, got {f}")
    return f


def check_fraction(v: Any, name: str = "sparsity") -> float:
    """A sparsity-like fraction in ``[0, 1)`` (NaN refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {_kind(v)}")
    f = float(v)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1), got {f!r}")
    return f


def check_choice(v: Any, name: str, options: Iterable[str]) -> str:
    opts = tuple(options)
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected one of {opts}, got {_kind(v)}")
    if v not in opts:
        raise ValueError(f"{name}: expected one of {opts}, got {v!r:.60}")
    return v


def check_instance(v: Any, name: str, cls: type | tuple[type, ...]) -> Any:
    if not isinstance(v, cls):
        want = cls.__name__ if isinstance(cls, type) else " or ".join(c.__name__ for c in cls)
        raise TypeError(f"{name}: expected a {want}, got {_kind(v)}")
    return v


def check_ndarray(
    x: Any,
    name: str,
    *,
    dtypes: tuple[Any, ...] = (np.float32,),
    ndim: int | tuple[int, ...] | None = None,
    finite: bool = False,
) -> np.ndarray:
    """A ``numpy.ndarray`` used as is (never converted or copied): ``TypeError`` for another
    object, ``DTypeError`` (a ``TypeError`` and a ``ValueError``) for a dtype not in
    ``dtypes``, ``ValueError`` for ``ndim`` or, with ``finite``, NaN/Inf."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {_kind(x)}")
    if x.dtype not in tuple(np.dtype(d) for d in dtypes):
        want = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise _core.DTypeError(f"{name}: expected dtype {want}, got {x.dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name}: expected a {want} array, got shape {x.shape}")
    if finite and x.size and not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def check_array(
    a: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    kinds: str = "fiub",
    finite: bool = False,
    dtype: Any = None,
) -> np.ndarray:
    """``np.asarray(a)`` checked: numeric dtype kind in ``kinds`` (never object, complex or
    strings unless asked), ``ndim``, optionally all finite; converted to ``dtype``."""
    if isinstance(a, (str, bytes, dict)) or a is None:
        raise TypeError(f"{name}: expected an array, got {_kind(a)}")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name}: expected an array ({e})") from None
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in dims:
            want = " or ".join(f"{d}-D" for d in dims)
            raise ValueError(f"{name}: expected a {want} array, got shape {arr.shape}")
    if finite and arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or Inf")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr
