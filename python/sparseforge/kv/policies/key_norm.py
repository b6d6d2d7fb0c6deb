"""KeyNorm: low-norm keys kept."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce
from .base import EvictAt, _CoreScorer


class KeyNorm(_CoreScorer):
    """Key-norm baseline (kvpress ``KnormPress``): score ``-||k||_2`` (fp64), low-norm keys
    kept."""

    name = "key_norm"

    def __init__(
        self, budget: Any, *, group_reduce: GroupReduce = "mean", evict: EvictAt | None = None
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self._init_core(evict)
