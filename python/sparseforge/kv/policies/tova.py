"""TOVA: Token Omission Via Attention."""

from __future__ import annotations

import numpy as np

from ..attention import _decode_upkeep, window_attention_mass
from ..cache import PagedKVCache
from .base import KVPolicy, _require_fresh


class TOVA(KVPolicy):
    """Token Omission Via Attention (schwartz-lab-NLP/TOVA ``src/tova_cache.py``): after each
    attention call, while the cache holds more than ``B`` tokens, drop the token with the
    lowest attention from the last query, averaged over all heads of the layer. Same tokens
    in every kv head (the kv heads' slot layouts stay identical). No sinks, no recent window;
    the new token may itself be dropped, as in the reference. Ties: the newer token goes."""

    name = "tova"
    decode_evicts = True

    def _drop(self, cache: PagedKVCache, layer: int, per_head: np.ndarray) -> None:
        # score = per_head[:, :L].astype(float64).mean(axis=0) (bitwise), the L - b lowest go
        # (newer first on ties) from every kv head: PagedKVCache::evict_lowest_mean in C++.
        b = self.layer_budget(cache, layer)
        L = cache.length(layer, 0)
        if b < L:
            cache._impl.evict_lowest_mean(layer, per_head, L - b)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        _require_fresh(cache, layer, k, self)
        mass = window_attention_mass(q, k, 1, group_reduce="mean", num_threads=nt)
        self._drop(cache, layer, mass)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        # One C++ call: attention with the group-mean mass kept in C++, the float64 mean over
        # kv heads, the argmin (newer on ties) and the eviction from every kv head.
        b = self.layer_budget(cache, layer)
        return _decode_upkeep(cache, layer, q, scale, nt, True, b, 0, "mean")
