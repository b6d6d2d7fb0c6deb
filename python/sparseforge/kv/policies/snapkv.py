"""SnapKV: observation-window voting."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .._common import GroupReduce, _int_arg
from ..attention import window_attention_mass
from ..cache import PagedKVCache
from .base import _ScorerPolicy


class SnapKV(_ScorerPolicy):
    """SnapKV observation-window voting, exactly as kvpress's ``SnapKVPress.score``: the last
    ``window`` queries attend causally to the prompt; the probabilities of the prefix keys
    are averaged over the window (``mean``), pooled along positions per query head (avg
    pool with zero padding, ``count_include_pad``, or max pool), averaged over each kv head's
    group (SnapKV issue #22), and the window itself gets the maximum score so it is always
    kept. Top ``B`` per kv head (``B`` includes the window). Needs ``B >= window`` and a
    prompt longer than the window."""

    name = "snapkv"

    def __init__(
        self,
        budget: Any,
        *,
        window: int = 64,
        kernel_size: int = 5,
        pooling: Literal["avg", "max"] = "avg",
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.window = _int_arg(window, "window", minimum=1)
        self.kernel_size = _int_arg(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling: expected 'avg' or 'max', got {pooling!r}")
        self.pooling = pooling

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        T, H = q.shape[0], q.shape[1]
        w = self.window
        if w >= T:
            raise ValueError(f"window: the prompt ({T} tokens) must be longer than window={w}")
        hkv = cache.num_kv_heads
        mass = window_attention_mass(q, k, w, group_reduce="none", num_threads=nt)
        s = mass[:, : T - w].astype(np.float64) / w
        s = _pool1d(s, self.kernel_size, self.pooling)
        s = s.reshape(hkv, H // hkv, T - w).mean(axis=1)
        return np.concatenate([s, np.full((hkv, w), s.max())], axis=1)

    def _check_context(self, cache: PagedKVCache, layer: int, b: int) -> None:
        super()._check_context(cache, layer, b)
        if b < self.window:
            raise ValueError(f"budget: {b} tokens is smaller than the window ({self.window})")


def _pool1d(s: np.ndarray, k: int, kind: str) -> np.ndarray:
    """torch ``avg_pool1d``/``max_pool1d`` with stride 1 and padding ``k // 2`` along the last
    axis (avg counts the zero padding, max ignores it)."""
    p = k // 2
    n = s.shape[-1]
    fill = 0.0 if kind == "avg" else -np.inf
    padded = np.concatenate(
        [np.full((*s.shape[:-1], p), fill), s, np.full((*s.shape[:-1], p), fill)], axis=-1
    )
    win = np.lib.stride_tricks.sliding_window_view(padded, k, axis=-1)[..., :n, :]
    out = win.mean(axis=-1) if kind == "avg" else win.max(axis=-1)
    return np.asarray(out)
