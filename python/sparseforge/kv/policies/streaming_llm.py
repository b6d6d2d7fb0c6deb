"""StreamingLLM: attention sinks + a recent window."""

from __future__ import annotations

from typing import Any

from .._common import GroupReduce, _int_arg
from .base import EvictAt, _CorePolicy


class StreamingLLM(_CorePolicy):
    """Attention sinks + recent window (mit-han-lab/streaming-llm ``kv_cache.py``
    ``StartRecentKVCache``; kvpress ``StreamingLLMPress``): keeps the first ``sinks``
    positions and the newest ``B - sinks``. Same tokens in every head. With a cache in
    ``rope_mode="rerotate"`` this is the faithful position-shift variant (kvpress
    ``KeyRerotationPress(StreamingLLMPress())``). Attention sees the new token before the
    oldest non-sink token is evicted (the reference evicts after each forward)."""

    name = "streaming_llm"
    decode_evicts = True

    def __init__(
        self,
        budget: Any,
        *,
        sinks: int = 4,
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.sinks = _int_arg(sinks, "sinks")
        self._init_core(evict, sinks=self.sinks)
