"""The policy base class and the helpers every policy shares."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import numpy as np

from ... import _core
from ..._base import threads_arg
from .._common import (
    _INT64,
    GroupReduce,
    _float32_2d,
    _int_arg,
    _positions_arg,
    _reduce_arg,
    _tokens_2d,
)
from ..budgets import Budget, _budget_arg
from ..cache import PagedKVCache, _cache_arg

EvictAt = Literal["prefill", "decode"]


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
    decode_evicts: bool = False  # the class default; an instance's ``evict=`` may change it

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
    ties: the older token (smaller position) is kept. Order-preserving compaction (the core's
    ``keep_top``, the numpy ``lexsort((pos, -score))`` rule)."""
    s = np.ascontiguousarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != cache.num_kv_heads:
        raise ValueError(
            f"scores: expected shape ({cache.num_kv_heads}, L) = (num_kv_heads, tokens), "
            f"got {s.shape}"
        )
    if s.size and not np.isfinite(s).all() and np.isnan(s).any():
        raise ValueError("scores: contains NaN")
    _core.kvcache.keep_top(cache._impl, layer, s, _int_arg(n_keep, "n_keep"))


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
        # the checks that need no scores run before the append: a refused prompt leaves the
        # cache as it was
        cache = _cache_arg(cache)
        layer = cache._layer(layer)
        if cache.length(layer, 0) != 0:
            raise ValueError(
                f"layer: {type(self).__name__} scores a whole prompt at prefill, but layer "
                f"{layer} already holds {cache.length(layer, 0)} tokens"
            )
        T = int(np.shape(k)[0]) if isinstance(k, np.ndarray) and k.ndim >= 2 else 0
        if T and self.budget is not None:
            pos = _positions_arg(positions, T, cache.last_position(layer) + 1)
            context = int(pos[-1]) + 1 if pos.size else T
            b = self._peek_budget(cache, layer, context)
            if self.budget.tokens is not None and b > T:
                raise ValueError(
                    f"budget: {b} tokens is larger than the context ({T} tokens); use a kept "
                    f"fraction (keep=) or a smaller budget"
                )
        super().prefill(cache, layer, q, k, v, positions, num_threads=num_threads)

    def _peek_budget(self, cache: PagedKVCache, layer: int, context: int) -> int:
        assert self.budget is not None
        return self.budget.resolve(layer, context, cache.num_layers)

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


_EVICT = ("prefill", "decode")


def _evict_arg(evict: Any) -> str:
    if evict is None:
        return "default"
    if evict not in _EVICT:
        raise ValueError(f"evict: expected 'prefill', 'decode' or None, got {evict!r}")
    return str(evict)


def _q_rows(q: Any, head_dim: int) -> np.ndarray:
    """A prompt's queries (T, H, D) or (T, H * D) as a float32 (T, H * D) array."""
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q: expected a numpy.ndarray, got {type(q).__name__}")
    if q.ndim == 3 and q.shape[2] == head_dim:
        q = q.reshape(q.shape[0], -1)
    if q.ndim != 2 or q.shape[1] % head_dim:
        raise ValueError(f"q: expected shape (tokens, heads, {head_dim}), got {q.shape}")
    out: np.ndarray = np.ascontiguousarray(q, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError("q: contains NaN or Inf")
    return out


class _CorePolicy(KVPolicy):
    """A built-in policy: a thin view of the core's (``kvcache/policy.h``), which runs the
    whole prefill compression and decode step (append, attention with its mass, eviction)
    in one call. ``evict``: ``"prefill"`` (compress the prompt only, kvpress's presses),
    ``"decode"`` (also hold the budget after every decode step) or ``None`` (the policy's
    default)."""

    _impl: Any = None

    def _init_core(self, evict: Any, **options: Any) -> None:
        entries, per_layer = (None, False) if self.budget is None else self.budget.entries()
        opts: dict[str, Any] = {
            "sinks": 4,
            "recent_ratio": 0.5,
            "window": 64,
            "kernel_size": 5,
            "max_pool": False,
            "beta": 20.0,
            "alpha_safeguard": 0.2,
            "scorer": "snapkv",
            "dense_layers": 2,
            "seed": 0,
            "keep_last": False,
        }
        opts.update(options)
        self.evict = None if evict is None else _evict_arg(evict)
        self._impl = _core.kvcache.KVPolicyCore(
            self.name,
            entries,
            per_layer,
            self.group_reduce,
            True,
            _evict_arg(evict),
            **opts,
        )
        self.decode_evicts = bool(self._impl.decode_evicts)

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
        k2 = _tokens_2d(k, "k", cache.num_kv_heads, cache.head_dim)
        v2 = None
        if not cache._latent:
            if v is None:
                raise ValueError("v: expected values (only a latent cache takes v=None)")
            v2 = _tokens_2d(v, "v", cache.num_kv_heads, cache.value_dim)
            if v2.shape[0] != k2.shape[0]:
                raise ValueError(f"v: expected {k2.shape[0]} tokens (k's), got {v2.shape[0]}")
        q2 = _q_rows(q, cache.head_dim)
        if q2.shape[0] != k2.shape[0]:
            raise ValueError(f"q: expected {k2.shape[0]} tokens (k's), got {q2.shape[0]}")
        pos = None if positions is None else _positions_arg(positions, k2.shape[0], 0)
        with cache._append_lock:
            self._impl.prefill(cache._impl, layer, q2, k2, v2, pos, threads_arg(num_threads))

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
        cache = _cache_arg(cache)
        layer = cache._layer(layer)
        q = _float32_2d(q, "q", None, cache.head_dim)
        k2 = _tokens_2d(
            k.reshape(1, *k.shape) if isinstance(k, np.ndarray) and k.ndim == 2 else k,
            "k",
            cache.num_kv_heads,
            cache.head_dim,
        )
        v2 = None
        if not cache._latent:
            if v is None:
                raise ValueError("v: expected values (only a latent cache takes v=None)")
            v1 = v.reshape(1, *v.shape) if isinstance(v, np.ndarray) and v.ndim == 2 else v
            v2 = _tokens_2d(v1, "v", cache.num_kv_heads, cache.value_dim)
        if k2.shape[0] != 1 or (v2 is not None and v2.shape[0] != 1):
            raise ValueError(f"k: expected one token, got {k2.shape[0]}")
        sc = 0.0 if scale is None else float(scale)
        if scale is not None and (not math.isfinite(sc) or sc <= 0):
            raise ValueError(f"scale: expected a finite value > 0, got {scale}")
        pos = -1 if position is None else _int_arg(position, "position")
        with cache._append_lock:
            out: np.ndarray = self._impl.decode(
                cache._impl, layer, q, k2, v2, pos, sc, threads_arg(num_threads)
            )
        return out

    def layer_budget(self, cache: PagedKVCache, layer: int) -> int:
        if self.budget is None:
            raise ValueError(f"budget: {type(self).__name__} needs a budget")
        cache = _cache_arg(cache)
        return int(self._impl.layer_budget(cache._impl, cache._layer(layer)))

    def _fix_budget(self, cache: PagedKVCache, layer: int, context: int) -> int:
        raise TypeError(f"{type(self).__name__}: the core fixes its budgets (layer_budget)")

    def reset(self) -> None:
        """Forget per-sequence state (layer budgets) before a new sequence."""
        self._impl.reset()

    def __repr__(self) -> str:
        ev = "" if getattr(self, "evict", None) is None else f", evict={self.evict!r}"
        return f"{type(self).__name__}(budget={self.budget}{ev})"


class _CoreScorer(_CorePolicy, _ScorerPolicy):
    """A built-in score-once policy: the core scores and keeps; :meth:`score` returns the
    core's per-token scores (for inspection and for AdaKV)."""

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        cache = _cache_arg(cache)
        k2 = _tokens_2d(k, "k", cache.num_kv_heads, cache.head_dim)
        out: np.ndarray = self._impl.score(
            cache._impl, cache._layer(layer), _q_rows(q, cache.head_dim), k2, threads_arg(nt)
        )
        return out
