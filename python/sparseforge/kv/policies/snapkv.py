"""SnapKV: observation-window voting."""

from __future__ import annotations

from typing import Any, Literal

from .._common import GroupReduce, _int_arg
from .base import EvictAt, _CoreScorer


class SnapKV(_CoreScorer):
    """SnapKV observation-window voting, exactly as kvpress's ``SnapKVPress.score``: the last
    ``window`` queries attend causally to the prompt; the probabilities of the prefix keys
    are averaged over the window (``mean``), pooled along positions per query head (avg
    pool with zero padding, ``count_include_pad``, or max pool), averaged over each kv head's
    group (SnapKV issue #22), and the window itself gets the maximum score + 1 so it is always
    kept. Top ``B`` per kv head (``B`` includes the window). Needs ``B >= window`` and a
    prompt longer than the window."""

    name = "snapkv"

    def __init__(
        self,
        budget: Any,
        *,
        window: int = 64,
        kernel_size: int = 5,
        pooling: Literal["avg", "max"] = "avg",
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.window = _int_arg(window, "window", minimum=1)
        self.kernel_size = _int_arg(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling: expected 'avg' or 'max', got {pooling!r}")
        self.pooling = pooling
        self._init_core(evict, **self._snap_options())

    def _snap_options(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "kernel_size": self.kernel_size,
            "max_pool": self.pooling == "max",
        }
