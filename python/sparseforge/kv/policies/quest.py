"""Quest: query-aware page selection."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from .base import _CorePolicy


class Quest(_CorePolicy):
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
        self._init_core(None, dense_layers=self.dense_layers)

    @property
    def last_pages(self) -> np.ndarray | None:
        """(Hkv, B // S) int32: the pages the last decode step of a sparse layer attended
        (-1 padded); None after a dense layer."""
        lp: np.ndarray | None = self._impl.last_pages
        return lp

    def page_budget(self, cache: PagedKVCache, layer: int) -> int:
        return max(1, self.layer_budget(cache, layer) // cache.page_size)
