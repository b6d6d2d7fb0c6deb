"""SlidingWindow: the newest B tokens."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce
from .base import EvictAt, _CorePolicy


class SlidingWindow(_CorePolicy):
    """The newest ``B`` tokens (a window; no sinks). Core: ``WindowPolicy`` with no sinks;
    the decode step evicts the oldest token by filling its hole from the tail."""

    name = "sliding_window"
    decode_evicts = True

    def __init__(
        self, budget: Any, *, group_reduce: GroupReduce = "mean", evict: EvictAt | None = None
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self._init_core(evict, sinks=0)
