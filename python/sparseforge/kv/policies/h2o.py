"""H2O: heavy hitters + a recent window."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce
from .base import EvictAt, _CorePolicy


class H2O(_CorePolicy):
    """Heavy hitters + recent window (FMInference/H2O ``h2o_hf/utils_real_drop/modify_llama.py``
    ``H2OKVCache_LayerWise``): per kv head, the accumulated attention each token received
    (summed over the group's query heads and over queries); keeps the newest ``recent`` and
    the top ``B - recent`` of the rest. Prefill scores are the column sums of the causal
    attention; each decode step adds the step's probabilities (exported by the attention pass,
    no second pass) and evicts one token, the lowest-score non-recent slot, by moving the
    head's last slot into the hole (FlexGen's O(1) replacement). One core call per step."""

    name = "h2o"
    decode_evicts = True

    def __init__(
        self,
        budget: Any,
        *,
        recent_ratio: float = 0.5,
        group_reduce: GroupReduce = "sum",
        evict: EvictAt | None = None,
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if not 0.0 <= recent_ratio <= 1.0:
            raise ValueError(f"recent_ratio: expected in [0, 1], got {recent_ratio}")
        self.recent_ratio = float(recent_ratio)
        self._init_core(evict, recent_ratio=self.recent_ratio)

    def recent(self, budget: int) -> int:
        return min(budget, round(budget * self.recent_ratio))
