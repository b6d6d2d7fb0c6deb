"""The numpy reference implementations of the KV policies (the Python classes before the
policies moved into the core, kept verbatim as test oracles): the core's policies must keep
the same tokens and give the same outputs bitwise (tests_py/test_kv_core_policies.py).

They drive a ``sparseforge.kv.PagedKVCache`` through its public methods and the fused C++
decode steps, exactly as ``sparseforge.kv`` did up to the commit that moved them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from sparseforge import kv as _sf_kv
from sparseforge.kv import PagedKVCache, pyramid_budgets, window_attention_mass
from sparseforge.kv._common import (
    _INT64,
    GroupReduce,
    _int_arg,
    _reduce_arg,
)
from sparseforge.kv.attention import _decode_upkeep, quest_select
from sparseforge.kv.budgets import Budget, _budget_arg
from sparseforge.kv.cache import _cache_arg


class KVPolicy(_sf_kv.KVPolicy):
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


class FullCache(KVPolicy):
    """No eviction, dense attention: the baseline every metric compares against."""

    name = "full"
    evicts = False

    def __init__(self, budget: Any = None, *, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(None, group_reduce=group_reduce)


class SlidingWindow(KVPolicy):
    """The newest ``B`` tokens (a window; no sinks)."""

    name = "sliding_window"
    decode_evicts = True

    def _trim(self, cache: PagedKVCache, layer: int) -> None:
        b = self.layer_budget(cache, layer)
        for h in range(cache.num_kv_heads):
            L = cache.length(layer, h)
            if b < L:
                _evict_oldest(cache, layer, h, L - b, 0)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        self._trim(cache, layer)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        out = super()._decode_step(cache, layer, q, scale, nt)
        self._trim(cache, layer)
        return out


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


class H2O(KVPolicy):
    """Heavy hitters + recent window (FMInference/H2O ``h2o_hf/utils_real_drop/modify_llama.py``
    ``H2OKVCache_LayerWise``): per kv head, the accumulated attention each token received
    (summed over the group's query heads and over queries); keeps the newest ``recent`` and
    the top ``B - recent`` of the rest. Prefill scores are the column sums of the causal
    attention; each decode step adds the step's probabilities (exported by the attention pass,
    no second pass) and evicts one token, the lowest-score non-recent slot, by moving the
    head's last slot into the hole (FlexGen's O(1) replacement)."""

    name = "h2o"
    decode_evicts = True

    def __init__(
        self, budget: Any, *, recent_ratio: float = 0.5, group_reduce: GroupReduce = "sum"
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if not 0.0 <= recent_ratio <= 1.0:
            raise ValueError(f"recent_ratio: expected in [0, 1], got {recent_ratio}")
        self.recent_ratio = float(recent_ratio)

    def recent(self, budget: int) -> int:
        return min(budget, round(budget * self.recent_ratio))

    def _evict_to_budget(self, cache: PagedKVCache, layer: int) -> None:
        b = self.layer_budget(cache, layer)
        # evict_lowest on every kv head down to b, one C++ call for the layer
        cache._impl.evict_lowest_layer(layer, b, 0, self.recent(b))

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        # Column sums of the prompt's causal attention; earlier tokens keep their scores.
        mass = window_attention_mass(
            q, k, k.shape[0], group_reduce=self.group_reduce, num_threads=nt
        )
        T = mass.shape[1]
        for h in range(cache.num_kv_heads):
            s = cache.scores(layer, h)
            s[len(s) - T :] = mass[h]
            cache.set_scores(layer, h, s)
        self._evict_to_budget(cache, layer)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        # One C++ call: attention adding the step's mass to the scores (no mass array), then
        # evict_lowest per kv head down to the budget.
        b = self.layer_budget(cache, layer)
        return _decode_upkeep(
            cache, layer, q, scale, nt, False, b, self.recent(b), self.group_reduce
        )


class TOVA(KVPolicy):
    """Token Omission Via Attention (schwartz-lab-NLP/TOVA ``src/tova_cache.py``): after each
    attention call, while the cache holds more than ``B`` tokens, drop the token with the
    lowest attention from the last query, averaged over all heads of the layer. Same tokens
    in every kv head (the kv heads' slot layouts stay identical). No sinks, no recent window;
    the new token may itself be dropped, as in the reference. Ties: the newer token goes."""

    name = "tova"
    decode_evicts = True

    def _drop(self, cache: PagedKVCache, layer: int, per_head: np.ndarray) -> None:
        # score = per_head[:, :L].astype(float64).mean(axis=0) (bitwise), the L - b lowest go
        # (newer first on ties) from every kv head: PagedKVCache::evict_lowest_mean in C++.
        b = self.layer_budget(cache, layer)
        L = cache.length(layer, 0)
        if b < L:
            cache._impl.evict_lowest_mean(layer, per_head, L - b)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)
        _require_fresh(cache, layer, k, self)
        mass = window_attention_mass(q, k, 1, group_reduce="mean", num_threads=nt)
        self._drop(cache, layer, mass)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        # One C++ call: attention with the group-mean mass kept in C++, the float64 mean over
        # kv heads, the argmin (newer on ties) and the eviction from every kv head.
        b = self.layer_budget(cache, layer)
        return _decode_upkeep(cache, layer, q, scale, nt, True, b, 0, "mean")


class RandomPolicy(_ScorerPolicy):
    """Random scores (kvpress ``RandomPress``), seeded: the floor any scorer must beat."""

    name = "random"

    def __init__(self, budget: Any, *, seed: int = 0, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.seed = _int_arg(seed, "seed")

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        rng = np.random.default_rng([self.seed, layer])
        return rng.random((cache.num_kv_heads, cache.length(layer, 0)))


class KeyNorm(_ScorerPolicy):
    """Key-norm baseline (kvpress ``KnormPress``): score ``-||k||_2``, low-norm keys kept."""

    name = "key_norm"

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        out = np.empty((cache.num_kv_heads, cache.length(layer, 0)))
        for h in range(cache.num_kv_heads):
            K, _ = cache.gather(layer, h)
            out[h] = -np.linalg.norm(K.astype(np.float64), axis=1)
        return out


class SnapKV(_ScorerPolicy):
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
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.window = _int_arg(window, "window", minimum=1)
        self.kernel_size = _int_arg(kernel_size, "kernel_size", minimum=1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size, got {kernel_size}")
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling: expected 'avg' or 'max', got {pooling!r}")
        self.pooling = pooling

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        T, H = q.shape[0], q.shape[1]
        w = self.window
        if w >= T:
            raise ValueError(f"window: the prompt ({T} tokens) must be longer than window={w}")
        hkv = cache.num_kv_heads
        mass = window_attention_mass(q, k, w, group_reduce="none", num_threads=nt)
        s = mass[:, : T - w].astype(np.float64) / w
        s = _pool1d(s, self.kernel_size, self.pooling)
        s = s.reshape(hkv, H // hkv, T - w).mean(axis=1)
        return np.concatenate([s, np.full((hkv, w), s.max() + 1)], axis=1)

    def _check_context(self, cache: PagedKVCache, layer: int, b: int) -> None:
        super()._check_context(cache, layer, b)
        if b < self.window:
            raise ValueError(f"budget: {b} tokens is smaller than the window ({self.window})")


def _pool1d(s: np.ndarray, k: int, kind: str) -> np.ndarray:
    """torch ``avg_pool1d``/``max_pool1d`` with stride 1 and padding ``k // 2`` along the last
    axis (avg counts the zero padding, max ignores it)."""
    p = k // 2
    n = s.shape[-1]
    fill = 0.0 if kind == "avg" else -np.inf
    padded = np.concatenate(
        [np.full((*s.shape[:-1], p), fill), s, np.full((*s.shape[:-1], p), fill)], axis=-1
    )
    win = np.lib.stride_tricks.sliding_window_view(padded, k, axis=-1)[..., :n, :]
    out = win.mean(axis=-1) if kind == "avg" else win.max(axis=-1)
    return np.asarray(out)


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
    ) -> None:
        super().__init__(
            budget,
            window=window,
            kernel_size=kernel_size,
            pooling=pooling,
            group_reduce=group_reduce,
        )
        if beta < 1:
            raise ValueError(f"beta: expected >= 1, got {beta}")
        self.beta = float(beta)

    def _fix_budget(self, cache: PagedKVCache, layer: int, context: int) -> int:
        avg = super()._fix_budget(cache, layer, context)
        b = pyramid_budgets(cache.num_layers, context, avg, window=self.window, beta=self.beta)
        self._layer_budget[layer] = b[layer]
        return b[layer]


class AdaKV(_ScorerPolicy):
    """Ada-KV head-wise budgets (kvpress ``AdaKVPress``): a layer keeps ``Hkv * B`` tokens in
    total, distributed over its kv heads by score. Each head first protects its top
    ``int(B * alpha_safeguard)``; then the ``Hkv * (T - B)`` lowest scores across all heads
    are evicted (ties: newer token, then higher head, first). Unlike kvpress (which masks),
    the evicted slots are really removed, so heads end with different lengths and pages
    really free. The scorer is any score-once policy (default :class:`SnapKV`)."""

    name = "adakv"

    def __init__(
        self,
        budget: Any,
        *,
        scorer: _ScorerPolicy | None = None,
        alpha_safeguard: float = 0.2,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        if not 0.0 <= alpha_safeguard <= 1.0:
            raise ValueError(f"alpha_safeguard: expected in [0, 1], got {alpha_safeguard}")
        self.alpha_safeguard = float(alpha_safeguard)
        self.scorer = scorer if scorer is not None else SnapKV(budget)
        if not isinstance(self.scorer, _ScorerPolicy) or isinstance(self.scorer, AdaKV):
            raise TypeError("scorer: expected a score-once policy (SnapKV, KeyNorm, Random, ...)")

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        return self.scorer.score(cache, layer, q, k, nt)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        T = cache.last_position(layer) + 1
        b = self._fix_budget(cache, layer, T)
        _require_fresh(cache, layer, k, self)
        self._check_context(cache, layer, b)
        L = cache.length(layer, 0)
        if b >= L:
            return
        if isinstance(self.scorer, SnapKV):
            self.scorer._check_context(cache, layer, b)
        scores = np.array(self.score(cache, layer, q, k, nt), dtype=np.float64)
        hkv = cache.num_kv_heads
        n_safe = int(b * self.alpha_safeguard)
        pos = cache.positions(layer, 0)
        if n_safe > 0:
            for h in range(hkv):
                top = np.lexsort((pos, -scores[h]))[:n_safe]
                scores[h, top] = np.finfo(np.float64).max
        flat = scores.reshape(-1)
        heads = np.repeat(np.arange(hkv), L)
        order = np.lexsort((-heads, -np.tile(pos, hkv), flat))
        pruned = order[: hkv * (L - b)]
        for h in range(hkv):
            slots = pruned[heads[pruned] == h] - h * L
            cache.evict(layer, h, slots)


class Quest(KVPolicy):
    """Quest query-aware page selection (mit-han-lab/Quest): nothing is evicted; each decode
    step ranks pages by the upper bound of ``q . k`` from their key min/max
    (:func:`quest_select`) and attends only the top ``B // S`` pages (the newest page
    included), exactly, via page-sparse attention. The first ``dense_layers`` layers and the
    prefill use full attention (Quest skips layers 0-1)."""

    name = "quest"
    evicts = False

    def __init__(
        self, budget: Any, *, dense_layers: int = 2, group_reduce: GroupReduce = "sum"
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.dense_layers = _int_arg(dense_layers, "dense_layers")
        self.last_pages: np.ndarray | None = None

    def page_budget(self, cache: PagedKVCache, layer: int) -> int:
        return max(1, self.layer_budget(cache, layer) // cache.page_size)

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self._fix_budget(cache, layer, cache.last_position(layer) + 1)

    def _decode_step(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, scale: float | None, nt: int | None
    ) -> np.ndarray:
        if layer < self.dense_layers:
            self.last_pages = None
            return super()._decode_step(cache, layer, q, scale, nt)
        pages = quest_select(
            cache,
            layer,
            q,
            self.page_budget(cache, layer),
            group_reduce=self.group_reduce,
            num_threads=nt,
        )
        self.last_pages = pages
        out: np.ndarray = cache.attend(layer, q, pages=pages, scale=scale, num_threads=nt)
        return out


POLICIES: dict[str, type[KVPolicy]] = {
    p.name: p
    for p in (
        FullCache,
        SlidingWindow,
        StreamingLLM,
        H2O,
        TOVA,
        SnapKV,
        PyramidKV,
        AdaKV,
        Quest,
        RandomPolicy,
        KeyNorm,
    )
}


def make_policy(name: str, budget: Any = None, **options: Any) -> KVPolicy:
    """A policy from :data:`POLICIES` by name (``"h2o"``, ``"quest"``, ...)."""
    if name not in POLICIES:
        raise ValueError(f"name: unknown KV policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](budget, **options)
