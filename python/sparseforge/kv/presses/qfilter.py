"""Q-Filters: project keys on the dominant direction of the queries."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy


def qfilters_from_queries(q: np.ndarray, num_kv_heads: int) -> np.ndarray:
    """Q-Filters of one layer from calibration queries ``q`` (n, H, D) (post-RoPE, as the
    attention sees them): per kv head, the first right singular vector ``u`` of its group's
    stacked queries (n * G, D), oriented so that the mean query projects positively, and
    returned negated, ``(Hkv, D)`` float64 -- kvpress's convention (its score is
    ``-(filter . k)``, so keys along the queries' dominant direction are kept). Stack one
    per layer for :class:`QFilter`'s ``filters`` (n_layers, Hkv, D)."""
    H, D = q.shape[1:]
    if H % num_kv_heads:
        raise ValueError(f"q: {H} heads is not a multiple of num_kv_heads={num_kv_heads}")
    G = H // num_kv_heads
    out = np.empty((num_kv_heads, D))
    for h in range(num_kv_heads):
        Q = q[:, h * G : (h + 1) * G].astype(np.float64).reshape(-1, D)
        u = np.linalg.svd(Q, full_matrices=False)[2][0]
        if (Q @ u).mean() < 0:
            u = -u
        out[h] = -u
    return out


class QFilter(_ScorerPolicy):
    """kvpress ``QFilterPress`` (``presses/qfilter_press.py``; Q-Filters, arXiv 2503.02812):
    score ``-(f . k)`` with one filter ``f`` per (layer, kv head). kvpress downloads
    pre-computed filters per model from the Hugging Face hub (``nthngdy/<model>_qfilt``),
    which this offline build cannot; pass ``filters`` ``(n_layers, Hkv, D)`` (kvpress's
    tensors, or :func:`qfilters_from_queries` on calibration queries), or leave it None to
    estimate each layer's filters from the prompt's own queries (the same SVD on the
    prompt instead of a calibration set)."""

    name = "qfilter"

    def __init__(
        self, budget: Any, *, filters: Any = None, group_reduce: GroupReduce = "mean"
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if filters is not None:
            f = np.asarray(filters, dtype=np.float64)
            if f.ndim != 3 or not np.all(np.isfinite(f)):
                raise ValueError(
                    f"filters: expected a finite (n_layers, Hkv, D) array, got shape {f.shape}"
                )
            filters = f
        self.filters: np.ndarray | None = filters

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        hkv, D = k.shape[1], k.shape[2]
        if self.filters is None:
            f = qfilters_from_queries(q, hkv)
        else:
            if self.filters.shape[1:] != (hkv, D) or layer >= self.filters.shape[0]:
                raise ValueError(
                    f"filters: expected shape (>{layer}, {hkv}, {D}), got {self.filters.shape}"
                )
            f = self.filters[layer]
        return np.asarray(-np.einsum("thd,hd->ht", k.astype(np.float64), f))
