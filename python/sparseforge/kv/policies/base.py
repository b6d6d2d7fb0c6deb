"""The policy base class and the helpers every policy shares."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._common import _INT64, GroupReduce, _reduce_arg
from ..budgets import Budget, _budget_arg
from ..cache import PagedKVCache, _cache_arg


class KVPolicy:
    """Base of every KV policy: one instance drives every layer of one sequence.

    ``prefill(cache, layer, q, k, v)`` appends the prompt and compresses it per the policy;
    ``decode(cache, layer, q, k, v)`` appends one token, attends (dense or page-sparse) and
    keeps the cache within the policy's contract. Class attributes: ``name`` (registry key),
    ``evicts`` (removes tokens at all), ``decode_evicts`` (the budget also holds after
    every decode step; otherwise only after prefill, kvpress-style).
    """

    name: ClassVar[str] = ""
    evicts: ClassVar[bool] = True
    decode_evicts: ClassVar[bool] = False

    def __init__(self, budget: Any = None, *, group_reduce: GroupReduce = "mean") -> None:
        self.budget: Budget | None = None if budget is None else _budget_arg(budget)
        self.group_reduce: GroupReduce = _reduce_arg(group_reduce)  # type: ignore[assignment]
        self._layer_budget: dict[int, int] = {}

    # budget for a layer, fixed at prefill
    def layer_budget(self, cache: PagedKVCache, layer: int) -> int:
        if self.budget is None:
            raise ValueError(f"budget: {type(self).__name__} needs a budget")
        if layer not in self._layer_budget:
            ctx = cache.last_position(layer) + 1
            self._layer_budget[layer] = self.budget.resolve(layer, max(ctx, 1), cache.num_layers)
        return self._layer_budget[layer]

    def _fix_budget(self, cache: PagedKVCache, layer: int, context: int) -> int:
        if self.budget is None:
            raise ValueError(f"budget: {type(self).__name__} needs a budget")
        b = self.budget.resolve(layer, context, cache.num_layers)
        self._layer_budget[layer] = b
        return b

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
        _cache_arg(cache).append(layer, k, v, positions)
        self._after_prefill(cache, layer, q, k, num_threads)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        return None

    def decode(
        self,
        cache: PagedKVCache,
        layer: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray | None,
        position: int | None = None,
        *,
        scale: float | None = None,
        num_threads: int | None = None,
    ) -> np.ndarray:
        _cache_arg(cache)
        k1 = k.reshape(1, *k.shape) if isinstance(k, np.ndarray) and k.ndim == 2 else k
        v1 = v.reshape(1, *v.shape) if isinstance(v, np.ndarray) and v.ndim == 2 else v
        cache.append(layer, k1, v1, None if position is None else [position])
        return self._decode_step(cache, layer, q, scale, num_threads)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        out: np.ndarray = cache.attend(layer, q, scale=scale, num_threads=nt)
        return out

    def reset(self) -> None:
        """Forget per-sequence state (layer budgets) before a new sequence."""
        self._layer_budget.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget})"


def _keep_top(cache: PagedKVCache, layer: int, scores: np.ndarray, n_keep: int) -> None:
    """Keep the top ``n_keep`` slots of each head by score (rows of ``scores`` in slot order);
    ties: the older token (smaller position) is kept. Order-preserving compaction."""
    for h in range(cache.num_kv_heads):
        L = cache.length(layer, h)
        if n_keep >= L:
            continue
        pos = cache.positions(layer, h)
        order = np.lexsort((pos, -scores[h, :L].astype(np.float64)))
        cache.keep(layer, h, np.sort(order[:n_keep]))


def _evict_oldest(cache: PagedKVCache, layer: int, head: int, count: int, sinks: int) -> None:
    """Evict the ``count`` oldest tokens of one head after its first ``sinks``. One token (the
    decode step) is an O(L) argmin and an O(D) hole fill; several (prefill) compact in order.
    In "rerotate" mode the cache keeps slot order = position order either way."""
    pos = cache.positions(layer, head)
    if count == 1:
        if sinks == 0:
            cand = pos
        else:
            sink_cut = np.partition(pos, sinks - 1)[sinks - 1] if sinks <= len(pos) else pos.max()
            cand = np.where(pos > sink_cut, pos, np.iinfo(np.int64).max)
        cache._impl.evict(layer, head, np.array([np.argmin(cand)], dtype=_INT64), False)
        return
    order = np.argsort(pos, kind="stable")
    cache.evict(layer, head, order[sinks : sinks + count])


def _require_fresh(cache: PagedKVCache, layer: int, k: np.ndarray, policy: KVPolicy) -> None:
    if cache.length(layer, 0) != k.shape[0]:
        raise ValueError(
            f"layer: {type(policy).__name__} scores a whole prompt at prefill, but layer {layer} "
            f"already held {cache.length(layer, 0) - k.shape[0]} tokens"
        )


class _ScorerPolicy(KVPolicy):
    """kvpress's ScorerPress: score every prompt token per kv head once at prefill, keep the
    top ``B`` per head (``presses/scorer_press.py``); decode is dense over what was kept."""

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        raise NotImplementedError

    def _check_context(self, cache: PagedKVCache, layer: int, b: int) -> None:
        T = cache.length(layer, 0)
        if self.budget is not None and self.budget.tokens is not None and b > T:
            raise ValueError(
                f"budget: {b} tokens is larger than the context ({T} tokens); use a ratio "
                f"or a smaller budget"
            )

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        T = cache.last_position(layer) + 1
        b = self._fix_budget(cache, layer, T)
        _require_fresh(cache, layer, k, self)
        self._check_context(cache, layer, b)
        if cache.length(layer, 0) <= b:
            return
        _keep_top(cache, layer, self.score(cache, layer, q, k, nt), b)
