"""Presses that rewrite the keys or values they keep (channel pruning, merging, chains of
presses): the selection runs first on a scratch cache, then the rewritten prompt is stored
and the unselected tokens evicted -- the paged cache never rewrites a stored row."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cache import PagedKVCache, _cache_arg
from ..policies.base import KVPolicy
from ._common import scratch_like

Kept = list[np.ndarray]  # per kv head: prompt indices kept, increasing


def prompt_positions(cache: PagedKVCache, layer: int, T: int, positions: Any) -> np.ndarray:
    if positions is None:
        start = cache.last_position(layer) + 1
        return np.arange(start, start + T, dtype=np.int64)
    return np.asarray(positions, dtype=np.int64).reshape(-1)


def select(
    policy: KVPolicy,
    cache: PagedKVCache,
    layer: int,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    positions: np.ndarray,
    nt: int | None,
) -> tuple[Kept, int]:
    """Run ``policy``'s prefill on a scratch copy of one layer: the kept prompt indices per kv
    head and the policy's budget for the layer."""
    scratch = scratch_like(cache)
    policy.prefill(scratch, layer, q, k, v, positions, num_threads=nt)
    kept = [np.searchsorted(positions, scratch.positions(layer, h)) for h in range(k.shape[1])]
    return kept, policy.layer_budget(scratch, layer)


class _RewritingPolicy(KVPolicy):
    """Base: ``compress`` returns (kept indices per head or None, keys, values) for a fresh
    prompt; ``prefill`` stores them and evicts the rest."""

    def compress(
        self,
        cache: PagedKVCache,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        positions: np.ndarray,
        nt: int | None,
    ) -> tuple[Kept | None, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def prefill(
        self,
        cache: PagedKVCache,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray | None,
        positions: Any = None,
        *,
        num_threads: int | None = None,
    ) -> None:
        cache = _cache_arg(cache)
        layer = cache._layer(layer)
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or x.ndim != 3:
                raise ValueError(f"{name}: expected a (T, heads, head_dim) array")
        assert isinstance(v, np.ndarray)
        if not (q.shape[0] == k.shape[0] == v.shape[0]) or k.shape[1] != cache.num_kv_heads:
            raise ValueError(
                f"k: expected (T, {cache.num_kv_heads}, D) with q, k, v of one length T, got "
                f"{q.shape}, {k.shape}, {v.shape}"
            )
        if cache.length(layer, 0) != 0:
            raise ValueError(
                f"layer: {type(self).__name__} compresses a whole prompt at prefill, but layer "
                f"{layer} already holds {cache.length(layer, 0)} tokens"
            )
        pos = prompt_positions(cache, layer, k.shape[0], positions)
        kept, k2, v2 = self.compress(cache, layer, q, k, v, pos, num_threads)
        k2 = np.ascontiguousarray(k2, np.float32)
        cache.append(layer, k2, np.ascontiguousarray(v2, np.float32), pos)
        if kept is not None:
            for h, idx in enumerate(kept):
                if len(idx) < k.shape[0]:
                    cache.keep(layer, h, idx)
