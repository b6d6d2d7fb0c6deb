"""FullCache: no eviction."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce
from .base import _CorePolicy


class FullCache(_CorePolicy):
    """No eviction, dense attention: the baseline every metric compares against."""

    name = "full"
    evicts = False

    def __init__(self, budget: Any = None, *, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(None, group_reduce=group_reduce)
        self._init_core(None)
