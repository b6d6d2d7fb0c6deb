"""AdaKV: head-wise budgets over a layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce
from ..cache import PagedKVCache
from .base import _require_fresh, _ScorerPolicy
from .snapkv import SnapKV


class AdaKV(_ScorerPolicy):
    """Ada-KV head-wise budgets (kvpress ``AdaKVPress``): a layer keeps ``Hkv * B`` tokens in
    total, distributed over its kv heads by score. Each head first protects its top
    ``int(B * alpha_safeguard)``; then the ``Hkv * (T - B)`` lowest scores across all heads
    are evicted (ties: newer token, then higher head, first). Unlike kvpress (which masks),
    the evicted slots are really removed, so heads end with different lengths and pages
    really free. The scorer is any score-once policy (default :class:`SnapKV`)."""

    name = "adakv"

    def __init__(
        self,
        budget: Any,
        *,
        scorer: _ScorerPolicy | None = None,
        alpha_safeguard: float = 0.2,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if not 0.0 <= alpha_safeguard <= 1.0:
            raise ValueError(f"alpha_safeguard: expected in [0, 1], got {alpha_safeguard}")
        self.alpha_safeguard = float(alpha_safeguard)
        self.scorer = scorer if scorer is not None else SnapKV(budget)
        if not isinstance(self.scorer, _ScorerPolicy) or isinstance(self.scorer, AdaKV):
            raise TypeError("scorer: expected a score-once policy (SnapKV, KeyNorm, Random, ...)")

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        return self.scorer.score(cache, layer, q, k, nt)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        T = cache.last_position(layer) + 1
        b = self._fix_budget(cache, layer, T)
        _require_fresh(cache, layer, k, self)
        self._check_context(cache, layer, b)
        L = cache.length(layer, 0)
        if b >= L:
            return
        if isinstance(self.scorer, SnapKV):
            self.scorer._check_context(cache, layer, b)
        scores = np.array(self.score(cache, layer, q, k, nt), dtype=np.float64)
        hkv = cache.num_kv_heads
        n_safe = int(b * self.alpha_safeguard)
        pos = cache.positions(layer, 0)
        if n_safe > 0:
            for h in range(hkv):
                top = np.lexsort((pos, -scores[h]))[:n_safe]
                scores[h, top] = np.finfo(np.float64).max
        flat = scores.reshape(-1)
        heads = np.repeat(np.arange(hkv), L)
        order = np.lexsort((-heads, -np.tile(pos, hkv), flat))
        pruned = order[: hkv * (L - b)]
        for h in range(hkv):
            slots = pruned[heads[pruned] == h] - h * L
            cache.evict(layer, h, slots)
