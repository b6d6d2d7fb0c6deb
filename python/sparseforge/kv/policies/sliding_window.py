"""SlidingWindow: the newest B tokens."""

from __future__ import annotations

import numpy as np

from ..cache import PagedKVCache
from .base import KVPolicy, _evict_oldest


class SlidingWindow(KVPolicy):
    """The newest ``B`` tokens (a window; no sinks)."""

    name = "sliding_window"
    decode_evicts = True

    def _trim(self, cache: PagedKVCache, layer: int) -> None:
        b = self.layer_budget(cache, layer)
        for h in range(cache.num_kv_heads):
            L = cache.length(layer, h)
            if b < L:
                _evict_oldest(cache, layer, h, L - b, 0)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        self._trim(cache, layer)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        out = super()._decode_step(cache, layer, q, scale, nt)
        self._trim(cache, layer)
        return out
