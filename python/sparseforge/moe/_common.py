"""Shared pieces of sparseforge.moe: option names, array and argument checks."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .._base import DTypeError
from .._validate import check_ndarray

F32Array = npt.NDArray[np.float32]
I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("top2_sum", "max")
CAPACITY_MODES = ("dropless", "fixed", "dynamic")
PRIORITIES = ("position", "score")
AUX_LOSS_KINDS = ("switch", "mixtral", "megablocks")
IMPORTANCE_METHODS = ("frequency", "weight", "output_norm")
LAYOUTS = ("compact", "padded")
Experts = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]
ExpertFn = Callable[[int, F32Array], npt.NDArray[Any]]


def _f32(x: Any, name: str, ndim: int = 2) -> F32Array:
    return check_ndarray(x, name, ndim=ndim)


def _logits(logits: Any, name: str = "logits") -> F32Array:
    x = _f32(logits, name)
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one expert (column), got shape {x.shape}")
    return x


def _ids(a: Any, name: str, shape: tuple[int, int] | None = None) -> I32Array:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of integers, got {type(a).__name__}")
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = f"{shape}" if shape is not None else "a 2-D (tokens, top_k) array"
        raise ValueError(f"{name}: expected {want}, got shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > _INT32_MAX):
        # checked before the int32 narrowing: 2**32 + 1 must not wrap to expert 1
        raise ValueError(
            f"{name}: expected values in [0, 2**31 - 1], got {int(a.min())}..{int(a.max())}"
        )
    return np.ascontiguousarray(a, dtype=np.int32)  # small: converted once


_INT32_MAX = 2**31 - 1


_MAX_EXPERTS = 1 << 20


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(None if seed is None else int(seed))
    raise TypeError(f"seed: expected None, an int or a numpy.random.Generator, got {seed!r}")
