"""Helpers the presses share: RoPE as matrices (to undo it on queries and average it over
future positions), the values of a freshly prefilled layer, and selection on a scratch cache
(for presses that rewrite keys or values before they are stored)."""

from __future__ import annotations

import numpy as np

from ..cache import PagedKVCache


def rope_matrices(positions: np.ndarray, dim: int, style: str, theta: float) -> np.ndarray:
    """(n, D, D) float64 rotation matrices ``R_p`` with ``rope(x, p) = R_p @ x``.

    "half" (Hugging Face ``rotate_half``): ``R = diag(cos) + diag(sin) P`` with
    ``P = [[0, -I], [I, 0]]``; "interleaved" (Meta): the same on pairs ``(2i, 2i+1)``.
    Angles ``p * theta**(-2i/D)`` in float64, as :func:`sparseforge.kv.apply_rope`."""
    half = dim // 2
    inv = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv[None, :]  # (n, D/2)
    c, s = np.cos(ang), np.sin(ang)
    R = np.zeros((len(ang), dim, dim))
    if style == "half":
        lo, hi = np.arange(half), np.arange(half) + half
    else:
        lo, hi = np.arange(0, dim, 2), np.arange(1, dim, 2)
    R[:, lo, lo] = c
    R[:, hi, hi] = c
    R[:, lo, hi] = -s
    R[:, hi, lo] = s
    return R


def unrope(x: np.ndarray, positions: np.ndarray, style: str, theta: float) -> np.ndarray:
    """Undo RoPE on rows of ``x`` (n, heads, D) at ``positions`` (n,): float64 pre-RoPE rows
    (``R_p^T x``, the inverse rotation)."""
    R = rope_matrices(positions, x.shape[-1], style, theta)
    out: np.ndarray = np.einsum("nji,nhj->nhi", R, x.astype(np.float64))
    return out


def prompt_values(cache: PagedKVCache, layer: int) -> np.ndarray:
    """(Hkv, L, Dv) float32: the values of every kv head of ``layer``, in slot order (for a
    freshly prefilled layer: position order)."""
    return np.stack([cache.gather(layer, h)[1] for h in range(cache.num_kv_heads)])


def prompt_start(cache: PagedKVCache, layer: int, T: int) -> int:
    """Position of the first of the ``T`` prompt tokens just appended to ``layer``."""
    return cache.last_position(layer) + 1 - T


def scratch_like(cache: PagedKVCache) -> PagedKVCache:
    """An empty cache of the same shape and RoPE, for running a selection before the real
    cache stores (rewritten) keys and values."""
    return PagedKVCache(
        cache.num_layers,
        cache.num_kv_heads,
        cache.head_dim,
        cache.page_size,
        np.float32,
        value_dim=cache.value_dim if cache.value_dim != cache.head_dim else None,
        rope_mode=cache.rope_mode,
        rope_style=cache.rope_style,
        rope_theta=cache.rope_theta,
        page_bounds=False,
    )
