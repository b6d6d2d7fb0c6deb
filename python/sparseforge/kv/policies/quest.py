"""Quest: query-aware page selection."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..attention import quest_select
from ..cache import PagedKVCache
from .base import KVPolicy


class Quest(KVPolicy):
    """Quest query-aware page selection (mit-han-lab/Quest): nothing is evicted; each decode
    step ranks pages by the upper bound of ``q . k`` from their key min/max
    (:func:`quest_select`) and attends only the top ``B // S`` pages (the newest page
    included), exactly, via page-sparse attention. The first ``dense_layers`` layers and the
    prefill use full attention (Quest skips layers 0-1)."""

    name = "quest"
    evicts = False

    def __init__(
        self, budget: Any, *, dense_layers: int = 2, group_reduce: GroupReduce = "sum"
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.dense_layers = _int_arg(dense_layers, "dense_layers")
        self.last_pages: np.ndarray | None = None

    def page_budget(self, cache: PagedKVCache, layer: int) -> int:
        return max(1, self.layer_budget(cache, layer) // cache.page_size)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        if layer < self.dense_layers:
            self.last_pages = None
            return super()._decode_step(cache, layer, q, scale, nt)
        pages = quest_select(
            cache,
            layer,
            q,
            self.page_budget(cache, layer),
            group_reduce=self.group_reduce,
            num_threads=nt,
        )
        self.last_pages = pages
        out: np.ndarray = cache.attend(layer, q, pages=pages, scale=scale, num_threads=nt)
        return out
