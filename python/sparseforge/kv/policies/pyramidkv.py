"""PyramidKV: SnapKV scoring with budgets falling with depth."""

from __future__ import annotations

from typing import Any, Literal

from .._common import GroupReduce
from .base import EvictAt
from .snapkv import SnapKV


class PyramidKV(SnapKV):
    """PyramidKV: SnapKV scoring with a per-layer budget that falls linearly with depth
    (kvpress ``PyramidKVPress``; :func:`pyramid_budgets`, ``beta = 20``). ``budget`` is the
    average per layer."""

    name = "pyramidkv"

    def __init__(
        self,
        budget: Any,
        *,
        window: int = 64,
        kernel_size: int = 5,
        pooling: Literal["avg", "max"] = "avg",
        beta: float = 20.0,
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        if beta < 1:
            raise ValueError(f"beta: expected >= 1, got {beta}")
        self.beta = float(beta)
        super().__init__(
            budget,
            window=window,
            kernel_size=kernel_size,
            pooling=pooling,
            group_reduce=group_reduce,
            evict=evict,
        )

    def _snap_options(self) -> dict[str, Any]:
        return {**super()._snap_options(), "beta": self.beta}
