"""StreamingLLM: attention sinks + a recent window."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from .base import _evict_oldest
from .sliding_window import SlidingWindow


class StreamingLLM(SlidingWindow):
    """Attention sinks + recent window (mit-han-lab/streaming-llm ``kv_cache.py``
    ``StartRecentKVCache``; kvpress ``StreamingLLMPress``): keeps the first ``sinks``
    positions and the newest ``B - sinks``. Same tokens in every head. With a cache in
    ``rope_mode="rerotate"`` this is the faithful position-shift variant (kvpress
    ``KeyRerotationPress(StreamingLLMPress())``). Attention sees the new token before the
    oldest non-sink token is evicted (the reference evicts after each forward)."""

    name = "streaming_llm"
    decode_evicts = True

    def __init__(self, budget: Any, *, sinks: int = 4, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.sinks = _int_arg(sinks, "sinks")

    def _trim(self, cache: PagedKVCache, layer: int) -> None:
        b = self.layer_budget(cache, layer)
        if b <= self.sinks:
            raise ValueError(f"budget: {b} tokens leaves no recent window after sinks={self.sinks}")
        for h in range(cache.num_kv_heads):
            L = cache.length(layer, h)
            if b < L:
                _evict_oldest(cache, layer, h, L - b, self.sinks)
