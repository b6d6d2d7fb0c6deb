"""The forward's per-token operations, in the compiled core: RMSNorm, RoPE, causal
grouped-query attention (full sequence, chunk after a cache, one decoded token) and the
SwiGLU gate.

Layouts: activations ``x`` are float32 ``(T, dim)``; per-head tensors are float32
C-contiguous ``(T, heads, head_dim)`` (the q/k/v projection outputs reshaped, no copy).
Results are bitwise identical for any ``num_threads`` (``None`` = the default).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from .._validate import check_int
from ..kernels import _check_out, _threads

__all__ = ["attention", "decode_attention", "rms_norm", "rope", "swiglu_gate"]

F32Array = npt.NDArray[np.float32]


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def rms_norm(
    x: F32Array,
    weight: F32Array,
    eps: float = 1e-5,
    *,
    out: F32Array | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """``weight * x / sqrt(mean(x**2, axis=-1) + eps)`` per row.

    Parameters
    ----------
    x : ndarray (T, dim), float32, unit-stride rows.
    weight : ndarray (dim,), float32.
    eps : float >= 0.
    out : ndarray (T, dim), float32, optional; may be ``x`` itself (in place).

    Returns
    -------
    ndarray (T, dim), float32: a new array, or ``out``. The mean of squares is accumulated
    in float64.
    """
    return _core.models.rms_norm(x, weight, _real(eps, "eps"), out, _threads(num_threads))


def rope(
    x: F32Array,
    positions: Any,
    *,
    theta: float = 10000.0,
    style: str = "interleaved",
    num_threads: int | None = None,
) -> F32Array:
    """Rotary position embedding of ``x`` **in place**; returns ``x``.

    Pair ``i`` of each head turns by ``positions[t] * theta ** (-2 i / head_dim)``:
    ``a' = a cos - b sin``, ``b' = a sin + b cos``. ``style="interleaved"`` pairs
    ``(x[2i], x[2i+1])`` (llama2.c, GGUF); ``"half"`` pairs ``(x[i], x[i + head_dim/2])``
    (Hugging Face ``rotate_half``). Angles and cos/sin are computed in float64.

    Parameters
    ----------
    x : ndarray (T, heads, head_dim), float32, C-contiguous, writeable; head_dim even.
    positions : int sequence or ndarray (T,), values >= 0 (explicit: a chunk after a KV
        cache starts at the cache length).
    theta : float > 0.
    style : {"interleaved", "half"}
    """
    arr = np.asarray(positions)
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"positions: expected integers, got dtype {arr.dtype}")
    pos = np.ascontiguousarray(arr, dtype=np.int64)
    _core.models.rope(x, pos, _real(theta, "theta"), style, _threads(num_threads))
    return x


def _scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    value = _real(scale, "scale")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"scale: expected a finite number > 0, got {scale}")
    return value


def _head_dim(q: Any, name: str) -> int:
    if not isinstance(q, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(q).__name__}")
    if q.ndim < 2:
        raise ValueError(f"{name}: expected (..., heads, head_dim), got shape {q.shape}")
    return int(q.shape[-1])


def attention(
    q: F32Array,
    k: F32Array,
    v: F32Array,
    *,
    scale: float | None = None,
    out: F32Array | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """Causal grouped-query attention.

    Query ``t`` sits at position ``S - T + t`` and attends keys ``0 .. S - T + t``; query
    head ``h`` reads kv head ``h // (Hq // Hkv)``. ``S == T`` is the full-sequence forward;
    ``S > T`` a chunk after ``S - T`` cached tokens. The softmax subtracts the row maximum.

    Parameters
    ----------
    q : ndarray (T, Hq, D), float32, C-contiguous.
    k, v : ndarray (S, Hkv, D), float32, C-contiguous, ``S >= T``, ``Hkv`` divides ``Hq``.
    scale : float, optional. Default ``1 / sqrt(D)``.
    out : ndarray (T, Hq * D), float32, optional; must not overlap q, k or v.

    Returns
    -------
    ndarray (T, Hq * D), float32 (heads concatenated, ready for ``o_proj``).
    """
    s = _scale(scale, _head_dim(q, "q"))
    _check_out(out, q=q, k=k, v=v)
    return _core.models.attention(q, k, v, s, out, _threads(num_threads))


def decode_attention(
    q: F32Array,
    k_cache: F32Array,
    v_cache: F32Array,
    length: int,
    *,
    scale: float | None = None,
    out: F32Array | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """One query over the first ``length`` rows of a contiguous KV cache.

    Equals row ``length - 1`` of :func:`attention` on ``k_cache[:length]`` bit for bit.

    Parameters
    ----------
    q : ndarray (Hq, D), float32, C-contiguous.
    k_cache, v_cache : ndarray (capacity, Hkv, D), float32, C-contiguous.
    length : int, ``1 <= length <= capacity``.
    scale : float, optional. Default ``1 / sqrt(D)``.
    out : ndarray (Hq * D,), float32, optional; must not overlap the inputs.

    Returns
    -------
    ndarray (Hq * D,), float32.
    """
    length = check_int(length, "length", 1)
    s = _scale(scale, _head_dim(q, "q"))
    _check_out(out, q=q, k_cache=k_cache, v_cache=v_cache)
    return _core.models.decode_attention(
        q, k_cache, v_cache, int(length), s, out, _threads(num_threads)
    )


def swiglu_gate(
    g: F32Array, u: F32Array, *, out: F32Array | None = None, num_threads: int | None = None
) -> F32Array:
    """``silu(g) * u`` elementwise, ``silu(g) = g / (1 + exp(-g))``.

    Parameters
    ----------
    g, u : ndarray (T, hidden), float32, unit-stride rows.
    out : ndarray (T, hidden), float32, optional; may be ``g`` or ``u`` (in place).
    """
    return _core.models.swiglu_gate(g, u, out, _threads(num_threads))
