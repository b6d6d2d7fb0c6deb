"""H2O: heavy hitters + a recent window."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce
from ..attention import _decode_upkeep, window_attention_mass
from ..cache import PagedKVCache
from .base import KVPolicy


class H2O(KVPolicy):
    """Heavy hitters + recent window (FMInference/H2O ``h2o_hf/utils_real_drop/modify_llama.py``
    ``H2OKVCache_LayerWise``): per kv head, the accumulated attention each token received
    (summed over the group's query heads and over queries); keeps the newest ``recent`` and
    the top ``B - recent`` of the rest. Prefill scores are the column sums of the causal
    attention; each decode step adds the step's probabilities (exported by the attention pass,
    no second pass) and evicts one token, the lowest-score non-recent slot, by moving the
    head's last slot into the hole (FlexGen's O(1) replacement)."""

    name = "h2o"
    decode_evicts = True

    def __init__(
        self, budget: Any, *, recent_ratio: float = 0.5, group_reduce: GroupReduce = "sum"
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if not 0.0 <= recent_ratio <= 1.0:
            raise ValueError(f"recent_ratio: expected in [0, 1], got {recent_ratio}")
        self.recent_ratio = float(recent_ratio)

    def recent(self, budget: int) -> int:
        return min(budget, round(budget * self.recent_ratio))

    def _evict_to_budget(self, cache: PagedKVCache, layer: int) -> None:
        b = self.layer_budget(cache, layer)
        # evict_lowest on every kv head down to b, one C++ call for the layer
        cache._impl.evict_lowest_layer(layer, b, 0, self.recent(b))

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        # Column sums of the prompt's causal attention; earlier tokens keep their scores.
        mass = window_attention_mass(
            q, k, k.shape[0], group_reduce=self.group_reduce, num_threads=nt
        )
        T = mass.shape[1]
        for h in range(cache.num_kv_heads):
            s = cache.scores(layer, h)
            s[len(s) - T :] = mass[h]
            cache.set_scores(layer, h, s)
        self._evict_to_budget(cache, layer)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        # One C++ call: attention adding the step's mass to the scores (no mass array), then
        # evict_lowest per kv head down to the budget.
        b = self.layer_budget(cache, layer)
        return _decode_upkeep(
            cache, layer, q, scale, nt, False, b, self.recent(b), self.group_reduce
        )
