"""RandomPolicy: seeded random scores."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce, _int_arg
from .base import EvictAt, _CoreScorer


class RandomPolicy(_CoreScorer):
    """Random scores (kvpress ``RandomPress``), seeded: the floor any scorer must beat. The
    core draws numpy's ``default_rng([seed, layer]).random((Hkv, T))`` (SeedSequence + PCG64,
    reproduced bit for bit), so the kept tokens are numpy's."""

    name = "random"

    def __init__(
        self,
        budget: Any,
        *,
        seed: int = 0,
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.seed = _int_arg(seed, "seed", maximum=2**64 - 1)
        self._init_core(evict, seed=self.seed)
