"""AdaKV: head-wise budgets over a layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce
from ..cache import PagedKVCache
from .base import EvictAt, KVPolicy, _CorePolicy, _CoreScorer, _require_fresh, _ScorerPolicy
from .key_norm import KeyNorm
from .random import RandomPolicy
from .snapkv import SnapKV


class AdaKV(_CoreScorer):
    """Ada-KV head-wise budgets (kvpress ``AdaKVPress``): a layer keeps ``Hkv * B`` tokens in
    total, distributed over its kv heads by score. Each head first protects its top
    ``int(B * alpha_safeguard)``; then the ``Hkv * (T - B)`` lowest scores across all heads
    are evicted (ties: newer token, then higher head, first). Unlike kvpress (which masks),
    the evicted slots are really removed, so heads end with different lengths and pages
    really free. The scorer is any score-once policy (default :class:`SnapKV`): the built-in
    ones (SnapKV, PyramidKV's SnapKV scores, KeyNorm, RandomPolicy) run in the core, a
    Python scorer (a ``score()`` returning per-token scores, kvpress-style) in Python."""

    name = "adakv"

    def __init__(
        self,
        budget: Any,
        *,
        scorer: _ScorerPolicy | None = None,
        alpha_safeguard: float = 0.2,
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        KVPolicy.__init__(self, budget, group_reduce=group_reduce)
        if not 0.0 <= alpha_safeguard <= 1.0:
            raise ValueError(f"alpha_safeguard: expected in [0, 1], got {alpha_safeguard}")
        self.alpha_safeguard = float(alpha_safeguard)
        self.scorer = scorer if scorer is not None else SnapKV(budget)
        if not isinstance(self.scorer, _ScorerPolicy) or isinstance(self.scorer, AdaKV):
            raise TypeError("scorer: expected a score-once policy (SnapKV, KeyNorm, Random, ...)")
        opts: dict[str, Any] | None = None
        sc = self.scorer
        if isinstance(sc, SnapKV):
            opts = {"scorer": "snapkv", **SnapKV._snap_options(sc)}
        elif isinstance(sc, KeyNorm):
            opts = {"scorer": "key_norm"}
        elif isinstance(sc, RandomPolicy):
            opts = {"scorer": "random", "seed": sc.seed}
        if opts is not None:
            self._init_core(evict, alpha_safeguard=self.alpha_safeguard, **opts)
        elif evict == "decode":
            raise ValueError("evict: 'decode' needs a built-in scorer (SnapKV, KeyNorm, Random)")
        else:
            self._impl = None

    # a Python scorer: the Python path of the score-once machinery
    def prefill(
        self,
        cache: PagedKVCache,
        layer: int,
        q: Any,
        k: Any,
        v: Any,
        positions: Any = None,
        *,
        num_threads: int | None = None,
    ) -> None:
        if self._impl is None:
            _ScorerPolicy.prefill(self, cache, layer, q, k, v, positions, num_threads=num_threads)
        else:
            _CorePolicy.prefill(self, cache, layer, q, k, v, positions, num_threads=num_threads)

    def decode(
        self,
        cache: PagedKVCache,
        layer: int,
        q: Any,
        k: Any,
        v: Any,
        position: int | None = None,
        *,
        scale: float | None = None,
        num_threads: int | None = None,
    ) -> np.ndarray:
        if self._impl is None:
            return KVPolicy.decode(
                self, cache, layer, q, k, v, position, scale=scale, num_threads=num_threads
            )
        return _CorePolicy.decode(
            self, cache, layer, q, k, v, position, scale=scale, num_threads=num_threads
        )

    def layer_budget(self, cache: PagedKVCache, layer: int) -> int:
        if self._impl is None:
            return KVPolicy.layer_budget(self, cache, layer)
        return _CorePolicy.layer_budget(self, cache, layer)

    def _fix_budget(self, cache: PagedKVCache, layer: int, context: int) -> int:
        return KVPolicy._fix_budget(self, cache, layer, context)

    def reset(self) -> None:
        if self._impl is None:
            KVPolicy.reset(self)
        else:
            _CorePolicy.reset(self)

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        out: np.ndarray = self.scorer.score(cache, layer, q, k, nt)
        return out

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
