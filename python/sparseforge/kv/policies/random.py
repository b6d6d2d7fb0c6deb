"""RandomPolicy: seeded random scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from .base import _ScorerPolicy


class RandomPolicy(_ScorerPolicy):
    """Random scores (kvpress ``RandomPress``), seeded: the floor any scorer must beat."""

    name = "random"

    def __init__(self, budget: Any, *, seed: int = 0, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.seed = _int_arg(seed, "seed")

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        rng = np.random.default_rng([self.seed, layer])
        return rng.random((cache.num_kv_heads, cache.length(layer, 0)))
