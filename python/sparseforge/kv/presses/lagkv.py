"""LagKV: score a partition's tokens against the min/max of the partition after it."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy
from ._common import prompt_values


class LagKV(_ScorerPolicy):
    """kvpress ``LagKVPress`` (``presses/lagkv_press.py``; LagKV, arXiv 2504.04704). After
    ``n_sink`` sinks the prompt is cut into partitions of ``lag_size`` tokens; the tokens of
    partition ``i`` are normalised channel-wise by the min and max of partition ``i + 1``
    (their "lag" reference), the standard deviation over channels (unbiased) is
    softmax-ed over the partition, for keys and values, and averaged. Without
    ``cross_scoring`` the score is the token's rank within its partition divided by
    ``lag_size`` (so every partition keeps the same share). Sinks and the last full
    partition plus the remainder always score 1. Prompts shorter than ``n_sink + 2 *
    lag_size`` score by recency (the newest kept). Rank scores tie across partitions: ties
    keep the older token here (kvpress: torch.topk's order)."""

    name = "lagkv"

    def __init__(
        self,
        budget: Any,
        *,
        n_sink: int = 4,
        lag_size: int = 128,
        cross_scoring: bool = False,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.n_sink = _int_arg(n_sink, "n_sink")
        self.lag_size = _int_arg(lag_size, "lag_size", minimum=1)
        self.cross_scoring = bool(cross_scoring)

    def _states_score(self, x: np.ndarray) -> np.ndarray:
        """x: (Hkv, P, lag, D) -> (Hkv, P - 1, lag)."""
        ref, cur = x[:, 1:], x[:, :-1]
        lo = ref.min(axis=2, keepdims=True)
        hi = ref.max(axis=2, keepdims=True)
        sd = ((cur - lo) / (hi - lo)).std(axis=-1, ddof=1)
        e = np.exp(sd - sd.max(axis=-1, keepdims=True))
        return np.asarray(e / e.sum(axis=-1, keepdims=True))

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        T, hkv, D = k.shape
        s, lag = self.n_sink, self.lag_size
        if s + 2 * lag > T:
            out = np.ones((hkv, T))
            if s < T:
                out[:, s:] = np.arange(T - s) / (T - s)
            return out
        end = s + ((T - s) // lag) * lag
        tail = lag + T - end
        K = k[s:end].astype(np.float64).transpose(1, 0, 2).reshape(hkv, -1, lag, D)
        V = prompt_values(cache, layer)[:, s:end].astype(np.float64)
        V = V.reshape(hkv, -1, lag, V.shape[-1])
        sc = (self._states_score(K) + self._states_score(V)) / 2
        if not self.cross_scoring:
            sc = np.argsort(np.argsort(sc, axis=-1, kind="stable"), axis=-1) / lag
        return np.concatenate([np.ones((hkv, s)), sc.reshape(hkv, -1), np.ones((hkv, tail))], 1)
