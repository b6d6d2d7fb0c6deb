"""KV-cache sparsity: a paged per-(layer, kv-head) cache that really frees memory, eviction
and selection policies, decode attention (dense and page-sparse), MLA, and offline metrics.

Notation: ``L`` tokens in a head's cache, ``H`` query heads, ``Hkv`` kv heads, ``G = H / Hkv``
(query head ``j`` belongs to kv head ``j // G``, Hugging Face's ``repeat_kv`` grouping), ``D``
head dim, ``S`` page size, ``B`` token budget. Arrays follow a model's projections: keys and
values of ``T`` tokens are ``(T, Hkv, D)``, queries ``(T, H, D)`` (prefill) or ``(H, D)``
(one decode step). Keys and queries arrive *after* RoPE, at their original positions.

The cache stores keys per kv head (GQA-native, never repeated per query head) in pages of
``S`` tokens taken from a pool with a free list: eviction compacts a head's slots and returns
whole pages, so :attr:`PagedKVCache.bytes_in_use` falls with the budget. Policies are one
class each (:data:`POLICIES`), all driven the same way::

    cache = sf.kv.PagedKVCache(n_layers, n_kv_heads, head_dim)
    policy = sf.kv.make_policy("h2o", budget=512)
    policy.prefill(cache, layer, q, k, v)           # the prompt: (T, H, D), (T, Hkv, D) x2
    out = policy.decode(cache, layer, q1, k1, v1)   # one token: (H, D), (Hkv, D) x2 -> (H, Dv)

Inside a model's decode loop, :class:`PolicyCache` is a ``sparseforge.models.DecodeCache``
running any policy (``model.step(ids, sf.kv.PolicyCache(model, "h2o", 256))``);
:func:`decode_nll` scores a sequence through it.

See docs/kvcache.md for the algorithms, which reference implementation each follows, and the
bytes-per-token table.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from . import _core
from ._base import threads_arg
from ._validate import check_array, check_bool, check_number

__all__ = [
    "H2O",
    "KNOWN_CONFIGS",
    "POLICIES",
    "TOVA",
    "AdaKV",
    "Budget",
    "FullCache",
    "KVPolicy",
    "KeyNorm",
    "LatentKVCache",
    "PagedKVCache",
    "PolicyCache",
    "PyramidKV",
    "Quest",
    "RandomPolicy",
    "SlidingWindow",
    "SnapKV",
    "StreamingLLM",
    "apply_rope",
    "attention_kind",
    "attention_metrics",
    "bytes_per_token",
    "decode_attention",
    "decode_nll",
    "elements_per_token",
    "kept_mask",
    "make_policy",
    "mla_absorb_query",
    "mla_decode_attention",
    "mla_output",
    "page_metrics",
    "pyramid_budgets",
    "quest_page_scores",
    "quest_select",
    "window_attention_mass",
]

GroupReduce = Literal["mean", "max", "sum"]
_REDUCES = ("mean", "max", "sum")
_INT64 = np.int64


# ---------------------------------------------------------------------------------------
# Validation helpers


def _int_arg(value: Any, name: str, *, minimum: int = 0, maximum: int = 2**62) -> int:
    if type(value) is int and minimum <= value <= maximum:  # the common case, no ABC checks
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if int(value) > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")
    return int(value)


def _reduce_arg(value: Any, name: str = "group_reduce") -> str:
    if value not in _REDUCES:
        raise ValueError(f"{name}: expected 'mean', 'max' or 'sum', got {value!r}")
    return str(value)


def _float32_2d(x: Any, name: str, rows: int | None, cols: int | None) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise _core.DTypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if (
        x.ndim != 2
        or (rows is not None and x.shape[0] != rows)
        or (cols is not None and x.shape[1] != cols)
    ):
        want = f"({rows if rows is not None else 'n'}, {cols if cols is not None else 'd'})"
        raise ValueError(f"{name}: expected shape {want}, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return x


def _tokens_2d(x: Any, name: str, heads: int, dim: int) -> np.ndarray:
    """(T, heads, dim) or (T, heads * dim) -> a (T, heads * dim) view (no copy)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.ndim == 3:
        if x.shape[1:] != (heads, dim):
            raise ValueError(
                f"{name}: expected shape (tokens, {heads}, {dim}) = (tokens, heads, head_dim), "
                f"got {x.shape}"
            )
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array")
        return x.reshape(x.shape[0], heads * dim)
    if x.ndim == 2 and x.shape[1] == heads * dim:
        return x
    raise ValueError(
        f"{name}: expected shape (tokens, {heads}, {dim}) or (tokens, {heads * dim}), got {x.shape}"
    )


def _positions_arg(positions: Any, n: int, start: int) -> np.ndarray:
    if positions is None:
        return np.arange(start, start + n, dtype=_INT64)
    p = np.asarray(positions)
    if p.ndim == 0:
        p = p.reshape(1)
    if p.ndim != 1 or p.shape[0] != n:
        raise ValueError(f"positions: expected {n} positions, got shape {p.shape}")
    if n and not np.issubdtype(p.dtype, np.integer):
        raise TypeError(f"positions: expected integers, got dtype {p.dtype}")
    return np.ascontiguousarray(p, dtype=_INT64)


def _cache_arg(cache: Any, name: str = "cache") -> PagedKVCache:
    if not isinstance(cache, PagedKVCache):
        raise TypeError(
            f"{name}: expected a sparseforge.kv.PagedKVCache, got {type(cache).__name__}"
        )
    return cache


# ---------------------------------------------------------------------------------------
# The cache


class PagedKVCache:
    """A paged KV cache: one page table per (layer, kv head), pages from a shared pool.

    Parameters
    ----------
    num_layers, num_kv_heads, head_dim : int
        Shape of the model's cache (``head_dim`` is the key dim ``Dk``).
    page_size : int
        Tokens per page ``S`` (Quest's default 16).
    dtype : float32, float16 or ml_dtypes.bfloat16
        Storage dtype of K and V (compute is fp32).
    value_dim : int, optional
        ``Dv`` when it differs from ``head_dim``.
    rope_mode : {"original", "rerotate"}
        "original" stores keys as given (rotated at their original positions; kvpress, H2O,
        Quest). "rerotate" is StreamingLLM's position shift: keys are stored un-rotated and
        attention rotates slot ``s``'s key to position ``s`` and the query to ``L - 1`` (so a
        sink + window cache never sees positions beyond its length). Needs ``rope_style``
        and ``rope_theta`` to match the model's.
    rope_style : {"half", "interleaved"}
        "half" rotates ``(x[i], x[i + D/2])`` (Hugging Face ``rotate_half``), "interleaved"
        rotates ``(x[2i], x[2i+1])`` (Meta / llama2.c); angle ``position * theta**(-2i/D)``.
    page_bounds : bool
        Keep Quest's per-page channel min/max of keys (``2 * Dk`` fp32 per page).

    Memory: a page holds ``S * (Dk + Dv)`` elements; :attr:`bytes_in_use` counts pages held
    by page tables, :attr:`peak_bytes` its maximum, :attr:`reserved_bytes` those plus the
    free list (:meth:`trim` returns the free list to the allocator).
    """

    _impl: _core.kvcache.PagedKVCache

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int = 16,
        dtype: Any = np.float32,
        *,
        value_dim: int | None = None,
        rope_mode: str = "original",
        rope_style: str = "half",
        rope_theta: float = 10000.0,
        page_bounds: bool = True,
        _latent: bool = False,
    ) -> None:
        self._num_layers = _int_arg(num_layers, "num_layers", minimum=1)
        self._num_kv_heads = _int_arg(num_kv_heads, "num_kv_heads", minimum=1)
        self._head_dim = _int_arg(head_dim, "head_dim", minimum=1)
        self._page_size = _int_arg(page_size, "page_size", minimum=1)
        vd = 0 if value_dim is None else _int_arg(value_dim, "value_dim", minimum=1)
        if rope_mode not in ("original", "rerotate"):
            raise ValueError(f"rope_mode: expected 'original' or 'rerotate', got {rope_mode!r}")
        if rope_style not in ("half", "interleaved"):
            raise ValueError(f"rope_style: expected 'half' or 'interleaved', got {rope_style!r}")
        if not isinstance(page_bounds, bool):
            raise TypeError(f"page_bounds: expected a bool, got {type(page_bounds).__name__}")
        self._rope_mode = rope_mode
        self._rope_style = rope_style
        self._rope_theta = float(rope_theta)
        self._latent = bool(_latent)
        self._impl = _core.kvcache.PagedKVCache(
            self._num_layers,
            self._num_kv_heads,
            self._head_dim,
            vd,
            self._page_size,
            np.dtype(dtype),
            self._latent,
            page_bounds,
            rope_mode,
            rope_style,
            self._rope_theta,
        )
        self._dtype: np.dtype[Any] = np.dtype(dtype)
        self._page_bounds = page_bounds
        self._append_lock = threading.Lock()

    # -- shape ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def num_kv_heads(self) -> int:
        return self._num_kv_heads

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def value_dim(self) -> int:
        return int(self._impl.value_dim)

    @property
    def page_size(self) -> int:
        return self._page_size

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def rope_mode(self) -> str:
        return self._rope_mode

    @property
    def rope_style(self) -> str:
        return self._rope_style

    @property
    def rope_theta(self) -> float:
        return self._rope_theta

    @property
    def has_page_bounds(self) -> bool:
        return self._page_bounds

    # -- accounting -----------------------------------------------------------------------
    @property
    def bytes_in_use(self) -> int:
        """Bytes of K/V pages held by page tables (whole pages, measured from the pool)."""
        return int(self._impl.bytes_in_use)

    @property
    def peak_bytes(self) -> int:
        return int(self._impl.peak_bytes)

    @property
    def reserved_bytes(self) -> int:
        """Pages in use plus the free list."""
        return int(self._impl.reserved_bytes)

    @property
    def metadata_bytes(self) -> int:
        """Positions (8 B), scores (4 B) per slot and page bounds (``2 * Dk * 4`` B per page)."""
        return int(self._impl.metadata_bytes)

    @property
    def page_bytes(self) -> int:
        return int(self._impl.page_bytes)

    @property
    def pages_in_use(self) -> int:
        return int(self._impl.pages_in_use)

    @property
    def tokens_in_use(self) -> int:
        """Slots over every (layer, kv head)."""
        return int(self._impl.tokens_in_use)

    def reset_peak(self) -> None:
        self._impl.reset_peak()

    def trim(self) -> int:
        """Return the free list to the allocator; returns the bytes released."""
        return int(self._impl.trim())

    def clear(self) -> None:
        """Drop every token (pages return to the free list)."""
        self._impl.clear()

    # -- contents -------------------------------------------------------------------------
    def _layer(self, layer: int) -> int:
        layer = _int_arg(layer, "layer")
        if layer >= self._num_layers:
            raise ValueError(f"layer: expected in [0, {self._num_layers}), got {layer}")
        return layer

    def _head(self, head: int) -> int:
        head = _int_arg(head, "head")
        if head >= self._num_kv_heads:
            raise ValueError(f"head: expected in [0, {self._num_kv_heads}), got {head}")
        return head

    def length(self, layer: int, head: int) -> int:
        return int(self._impl.length(self._layer(layer), self._head(head)))

    def lengths(self, layer: int) -> np.ndarray:
        """(Hkv,) int64: tokens held by each kv head of ``layer``."""
        layer = self._layer(layer)
        return np.array(
            [self._impl.length(layer, h) for h in range(self._num_kv_heads)], dtype=_INT64
        )

    def num_pages(self, layer: int, head: int) -> int:
        return int(self._impl.num_pages(self._layer(layer), self._head(head)))

    def last_position(self, layer: int) -> int:
        """Newest position appended to ``layer`` (-1 when none)."""
        return int(self._impl.last_position(self._layer(layer)))

    def positions(self, layer: int, head: int) -> np.ndarray:
        """(L,) int64, a copy: the original position of each slot, in slot order."""
        return self._impl.positions(self._layer(layer), self._head(head))

    def scores(self, layer: int, head: int) -> np.ndarray:
        """(L,) float32, a copy: the per-slot accumulator policies use (H2O)."""
        return self._impl.scores(self._layer(layer), self._head(head))

    def set_scores(self, layer: int, head: int, scores: np.ndarray) -> None:
        self._impl.set_scores(self._layer(layer), self._head(head), scores)

    def page_bounds(self, layer: int, head: int) -> np.ndarray:
        """(pages, 2, Dk) float32, a copy: per page the channel-wise [min, max] of keys."""
        if not self._page_bounds:
            raise ValueError("page_bounds: this cache was built with page_bounds=False")
        return self._impl.page_bounds(self._layer(layer), self._head(head))

    def gather(self, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
        """One head's keys (L, Dk) and values (L, Dv) as float32 copies, in slot order.

        In "rerotate" mode the keys come rotated to their cache positions (as attention sees
        them)."""
        K, V = self._impl.gather(self._layer(layer), self._head(head))
        return np.asarray(K), np.asarray(V)

    # -- updates --------------------------------------------------------------------------
    def append(
        self, layer: int, k: np.ndarray, v: np.ndarray | None, positions: Any = None
    ) -> None:
        """Append ``T`` tokens to every kv head of ``layer``.

        Parameters
        ----------
        k : ndarray (T, Hkv, Dk) or (T, Hkv * Dk), float32 | float16 | bfloat16
        v : ndarray (T, Hkv, Dv) or (T, Hkv * Dv); ``None`` for a latent cache
        positions : (T,) ints, optional
            Strictly increasing and greater than every position appended to the layer before
            (default: continuing from :meth:`last_position`). Out of order -> ValueError.
        """
        layer = self._layer(layer)
        k2 = _tokens_2d(k, "k", self._num_kv_heads, self._head_dim)
        v2: np.ndarray | None = None
        if not self._latent:
            if v is None:
                raise ValueError("v: expected values (only a latent cache takes v=None)")
            v2 = _tokens_2d(v, "v", self._num_kv_heads, self.value_dim)
            if v2.shape[0] != k2.shape[0]:
                raise ValueError(f"v: expected {k2.shape[0]} tokens (k's), got {v2.shape[0]}")
        # default positions and the append as one step: two threads appending to a layer
        # each get the next positions instead of one failing as out of order
        with self._append_lock:
            pos = _positions_arg(positions, k2.shape[0], self.last_position(layer) + 1)
            self._impl.append(layer, k2, v2, pos)

    def evict(self, layer: int, head: int, slots: Any, *, keep_order: bool = True) -> None:
        """Remove the given slots (indices into the head's slot order) for real.

        ``keep_order=True`` shifts the survivors down (slot order stays position order);
        ``False`` fills each hole with the last slot (O(D) per evicted slot, FlexGen's
        replacement). Pages past the new length return to the pool."""
        s = np.asarray(slots)
        if s.size and not np.issubdtype(s.dtype, np.integer):
            raise TypeError(f"slots: expected integers, got dtype {s.dtype}")
        self._impl.evict(
            self._layer(layer), self._head(head), s.astype(_INT64).reshape(-1), bool(keep_order)
        )

    def keep(self, layer: int, head: int, slots: Any, *, keep_order: bool = True) -> None:
        """Evict every slot of the head except ``slots``."""
        n = self.length(layer, head)
        s = check_array(slots, "slots", kinds="iu").astype(_INT64).reshape(-1)
        if s.size and (s.min() < 0 or s.max() >= n):
            raise ValueError(f"slots: indices must be in [0, {n})")
        mask = np.ones(n, dtype=bool)
        mask[s] = False
        self.evict(layer, head, np.flatnonzero(mask), keep_order=keep_order)

    def evict_lowest(
        self, layer: int, head: int, count: int, *, protect_below: int = 0, protect_recent: int = 0
    ) -> np.ndarray:
        """Evict ``count`` slots with the lowest :meth:`scores`, never a sink (position <
        ``protect_below``) or one of the ``protect_recent`` newest positions. Ties: the newer
        token goes first. Returns the evicted positions (sorted)."""
        ev = self._impl.evict_lowest(
            self._layer(layer),
            self._head(head),
            _int_arg(count, "count"),
            _int_arg(protect_below, "protect_below"),
            _int_arg(protect_recent, "protect_recent"),
        )
        return np.asarray(ev, dtype=_INT64)

    # -- attention ------------------------------------------------------------------------
    def attend(
        self,
        layer: int,
        q: np.ndarray,
        *,
        pages: np.ndarray | None = None,
        group_reduce: GroupReduce = "sum",
        accumulate_scores: bool = False,
        scale: float | None = None,
        query_position: int | None = None,
        return_mass: bool = False,
        num_threads: int | None = None,
    ) -> Any:
        """Decode attention of one token's queries over the cache (see
        :func:`decode_attention`)."""
        return decode_attention(
            self,
            layer,
            q,
            pages=pages,
            group_reduce=group_reduce,
            accumulate_scores=accumulate_scores,
            scale=scale,
            query_position=query_position,
            return_mass=return_mass,
            num_threads=num_threads,
        )

    def __repr__(self) -> str:
        return (
            f"PagedKVCache(num_layers={self._num_layers}, num_kv_heads={self._num_kv_heads}, "
            f"head_dim={self._head_dim}, page_size={self._page_size}, dtype={self._dtype.name}, "
            f"tokens={self.tokens_in_use}, bytes_in_use={self.bytes_in_use})"
        )


def decode_attention(
    cache: PagedKVCache,
    layer: int,
    q: np.ndarray,
    *,
    pages: np.ndarray | None = None,
    group_reduce: GroupReduce = "sum",
    accumulate_scores: bool = False,
    scale: float | None = None,
    query_position: int | None = None,
    return_mass: bool = False,
    num_threads: int | None = None,
) -> Any:
    """One decode step of attention for ``layer``, dense or over selected pages.

    Parameters
    ----------
    q : ndarray (H, Dk) float32
        The new token's queries (post-RoPE at its original position), H a multiple of Hkv.
    pages : ndarray (Hkv, n) int, optional
        Page indices per kv head (ascending, -1 = unused), e.g. from :func:`quest_select`;
        ``None`` attends every slot.
    group_reduce : {"sum", "mean", "max"}
        How the G query heads of a kv head combine into the per-key mass.
    accumulate_scores : bool
        Add the mass to the cache's per-slot scores (H2O's accumulator).
    scale : float, optional
        Logit scale, default ``1 / sqrt(Dk)``.
    query_position : int, optional
        "rerotate" caches: the query's original position (default: the newest appended).
    return_mass : bool
        Also return the per-key mass.

    Returns
    -------
    out : ndarray (H, Dv) float32
    mass : ndarray (Hkv, max length) float32, only with ``return_mass``
        ``mass[h, s]`` = reduce over the group of the softmax probability of slot ``s``
        (0 for unselected pages and past a head's length) -- from the same pass as ``out``.
    """
    if not isinstance(cache, PagedKVCache):
        raise TypeError(f"cache: expected a PagedKVCache, got {type(cache).__name__}")
    layer = _cache_arg(cache)._layer(layer)
    return_mass = check_bool(return_mass, "return_mass")
    q = _float32_2d(q, "q", None, cache.head_dim)
    red = _reduce_arg(group_reduce)
    sc = 0.0 if scale is None else float(scale)
    if scale is not None and (not math.isfinite(sc) or sc <= 0):
        raise ValueError(f"scale: expected a finite value > 0, got {scale}")
    qp = -1 if query_position is None else _int_arg(query_position, "query_position")
    if pages is not None:
        pages = np.asarray(pages)
        if pages.ndim != 2 or pages.shape[0] != cache.num_kv_heads:
            raise ValueError(
                f"pages: expected shape ({cache.num_kv_heads}, n) = (num_kv_heads, pages), "
                f"got {pages.shape}"
            )
    out, mass = _core.kvcache.decode_attention(
        cache._impl,
        layer,
        q,
        pages,
        red,
        bool(accumulate_scores),
        sc,
        qp,
        bool(return_mass),
        threads_arg(num_threads),
    )
    return (out, mass) if return_mass else out


def quest_select(
    cache: PagedKVCache,
    layer: int,
    q: np.ndarray,
    page_budget: int,
    *,
    group_reduce: GroupReduce = "sum",
    num_threads: int | None = None,
) -> np.ndarray:
    """Quest's query-aware page selection (mit-han-lab/Quest, Algorithm 1).

    Each page's score is the upper bound ``sum_i max(q_i * max_i, q_i * min_i)`` of ``q . k``
    over its keys, reduced over the kv head's query group. ``page_budget`` counts the last
    (newest) page, which is always selected and never ranked (quest/utils/controller.py);
    the others are the top ``page_budget - 1`` (ties: lower page index). Heads with at most
    ``page_budget`` pages select all.

    Returns
    -------
    ndarray (Hkv, page_budget) int32 -- page indices ascending, -1 padded.
    """
    layer = _cache_arg(cache)._layer(layer)
    q = _float32_2d(q, "q", None, cache.head_dim)
    pb = _int_arg(page_budget, "page_budget", minimum=1)
    if pb > 1 << 24:  # the output is (Hkv, page_budget): refuse before allocating it
        raise ValueError(f"page_budget: expected at most 2^24 pages, got {pb}")
    return _core.kvcache.quest_select(
        cache._impl, layer, q, pb, _reduce_arg(group_reduce), threads_arg(num_threads)
    )


def quest_page_scores(
    cache: PagedKVCache,
    layer: int,
    q: np.ndarray,
    *,
    group_reduce: GroupReduce = "sum",
    num_threads: int | None = None,
) -> np.ndarray:
    """(Hkv, max pages) float32: Quest's reduced upper bound of every page (0 past a head's
    pages)."""
    layer = _cache_arg(cache)._layer(layer)
    q = _float32_2d(q, "q", None, cache.head_dim)
    return _core.kvcache.quest_page_scores(
        cache._impl, layer, q, _reduce_arg(group_reduce), threads_arg(num_threads)
    )


def window_attention_mass(
    q: np.ndarray,
    k: np.ndarray,
    window: int,
    *,
    group_reduce: GroupReduce | Literal["none"] = "sum",
    scale: float | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Attention mass each key receives from the last ``window`` queries of a causal prefill.

    Parameters
    ----------
    q : ndarray (T, H, D), float32 | float16 | bfloat16
    k : ndarray (T, Hkv, D)
    window : int in [1, T]
        ``T``: H2O's prefill score (column sums of the causal attention); ``w``: SnapKV's
        observation window; 1: TOVA's last query.
    group_reduce : {"sum", "mean", "max", "none"}
        "none" returns one row per query head.

    Returns
    -------
    ndarray (Hkv, T) float32 (or (H, T) for "none"): ``sum over window queries i`` of the
    causal softmax ``p_i(t)``, reduced over each kv head's group. O(window * T * H * D),
    never the T x T matrix.
    """
    if not isinstance(q, np.ndarray) or q.ndim != 3:
        raise ValueError("q: expected a (T, num_heads, head_dim) array")
    if not isinstance(k, np.ndarray) or k.ndim != 3:
        raise ValueError("k: expected a (T, num_kv_heads, head_dim) array")
    T, H, D = q.shape
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"k: expected shape ({T}, Hkv, {D}), got {k.shape}")
    hkv = k.shape[1]
    if hkv == 0 or H % hkv:
        raise ValueError(f"q: num_heads={H} is not a multiple of num_kv_heads={hkv}")
    w = _int_arg(window, "window", minimum=1)
    if w > T:
        raise ValueError(f"window: expected <= the number of tokens {T}, got {w}")
    if group_reduce not in (*_REDUCES, "none"):
        raise ValueError(
            f"group_reduce: expected 'mean', 'max', 'sum' or 'none', got {group_reduce!r}"
        )
    return _core.kvcache.window_mass(
        _tokens_2d(q, "q", H, D),
        _tokens_2d(k, "k", hkv, D),
        H,
        hkv,
        w,
        0.0 if scale is None else float(scale),
        str(group_reduce),
        threads_arg(num_threads),
    )


def apply_rope(
    x: np.ndarray, positions: Any, *, rope_style: str = "half", rope_theta: float = 10000.0
) -> np.ndarray:
    """RoPE of rows of ``x`` (n, D) float32 at ``positions`` (n,) -- a new array.

    Same convention as the cache: "half" pairs ``(x[i], x[i + D/2])``, "interleaved" pairs
    ``(x[2i], x[2i+1])``; angle ``p * theta**(-2i/D)``; angles in float64."""
    x = _float32_2d(x, "x", None, None)
    if rope_style not in ("half", "interleaved"):
        raise ValueError(f"rope_style: expected 'half' or 'interleaved', got {rope_style!r}")
    pos = _positions_arg(positions, x.shape[0], 0)
    theta = check_number(rope_theta, "rope_theta", 0.0, lo_open=True)
    return _core.kvcache.apply_rope(np.ascontiguousarray(x), pos, rope_style, theta)


# ---------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class Budget:
    """How many tokens a (layer, kv head) keeps: exactly one of

    * ``tokens``: a count (>= 1);
    * ``ratio``: a fraction of the prompt length in (0, 1] (kvpress's ``1 - compression_ratio``;
      ``n = int(T * ratio)``, at least 1), fixed at prefill for the decode that follows;
    * ``per_layer``: one entry per layer, each a count (int) or a ratio (float) -- a curve.
    """

    tokens: int | None = None
    ratio: float | None = None
    per_layer: tuple[int | float, ...] | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.tokens, self.ratio, self.per_layer)]
        if sum(given) != 1:
            raise ValueError("budget: give exactly one of tokens, ratio or per_layer")
        if self.tokens is not None:
            _check_budget_entry(self.tokens, "budget.tokens")
        if self.ratio is not None:
            _check_budget_entry(float(self.ratio), "budget.ratio")
        if self.per_layer is not None:
            if len(self.per_layer) == 0:
                raise ValueError("budget.per_layer: expected one entry per layer, got none")
            for i, b in enumerate(self.per_layer):
                _check_budget_entry(b, f"budget.per_layer[{i}]")

    def resolve(self, layer: int, context: int, num_layers: int | None = None) -> int:
        """Tokens for ``layer`` given a prompt of ``context`` tokens."""
        if self.per_layer is not None:
            if num_layers is not None and len(self.per_layer) != num_layers:
                raise ValueError(
                    f"budget.per_layer: expected {num_layers} entries (one per layer), "
                    f"got {len(self.per_layer)}"
                )
            if layer >= len(self.per_layer):
                raise ValueError(
                    f"budget.per_layer: no entry for layer {layer} ({len(self.per_layer)} given)"
                )
            entry: int | float = self.per_layer[layer]
        elif self.tokens is not None:
            entry = self.tokens
        else:
            assert self.ratio is not None
            entry = float(self.ratio)
        if isinstance(entry, float):
            return max(1, int(context * entry))
        return int(entry)


def _check_budget_entry(b: Any, name: str) -> None:
    if isinstance(b, bool) or not isinstance(b, numbers.Real):
        raise TypeError(
            f"{name}: expected an int (tokens) or a float (ratio), got {type(b).__name__}"
        )
    if isinstance(b, numbers.Integral):
        if b < 1:
            raise ValueError(f"{name}: expected a token budget >= 1, got {b}")
    elif not (0.0 < float(b) <= 1.0):
        raise ValueError(f"{name}: expected a ratio in (0, 1], got {b}")


def _budget_arg(budget: Any) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise TypeError("budget: expected an int, a float ratio, a sequence or a Budget, got bool")
    if isinstance(budget, numbers.Integral):
        return Budget(tokens=int(budget))
    if isinstance(budget, numbers.Real):
        return Budget(ratio=float(budget))
    if isinstance(budget, Sequence) and not isinstance(budget, str):
        return Budget(per_layer=tuple(budget))
    raise TypeError(
        f"budget: expected an int (tokens), a float (ratio), a per-layer sequence or a Budget, "
        f"got {type(budget).__name__}"
    )


def pyramid_budgets(
    num_layers: int, context: int, budget: int, *, window: int = 64, beta: float = 20.0
) -> list[int]:
    """PyramidKV's per-layer token budgets, as kvpress computes them.

    NVIDIA/kvpress ``presses/pyramidkv_press.py`` ``get_layer_budget``: with ``C = window +
    budget``, ``min = (C - w) / beta``, ``max = 2 (C - w) - min``; if ``max >= T - w`` then
    ``max = T - w`` and ``min = 2 (C - w) - max``; layer ``l`` keeps ``round(max - l (max -
    min) / (num_layers - 1))``. When ``T >= max >= min >= w`` fails it falls back to the
    uniform ``budget``. Lower layers get more; the mean is ``budget`` (up to rounding).
    """
    n = _int_arg(num_layers, "num_layers", minimum=1)
    T = _int_arg(context, "context", minimum=1)
    b = _int_arg(budget, "budget", minimum=1)
    w = _int_arg(window, "window")
    beta = check_number(beta, "beta", 1.0)
    if n > 1 << 14:
        raise ValueError(f"num_layers: expected at most {1 << 14}, got {n}")
    cap = w + b
    lo = (cap - w) / beta
    hi = (cap - w) * 2 - lo
    if hi >= T - w:
        hi = T - w
        lo = (cap - w) * 2 - hi
    if not (T >= hi >= lo >= w) or n == 1:
        return [b] * n
    steps = (hi - lo) / (n - 1)
    return [round(hi - layer * steps) for layer in range(n)]


# ---------------------------------------------------------------------------------------
# Policies


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


class FullCache(KVPolicy):
    """No eviction, dense attention: the baseline every metric compares against."""

    name = "full"
    evicts = False

    def __init__(self, budget: Any = None, *, group_reduce: GroupReduce = "mean") -> None:
        super().__init__(None, group_reduce=group_reduce)


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


def _decode_upkeep(
    cache: PagedKVCache,
    layer: int,
    q: np.ndarray,
    scale: float | None,
    nt: int | None,
    tova: bool,
    budget: int,
    recent: int,
    group_reduce: str,
) -> np.ndarray:
    """H2O's / TOVA's decode step after the append, in one C++ call (dense attention as
    :func:`decode_attention`, then the policy's selection and eviction; see
    ``decode_attention_tova`` / ``decode_attention_h2o`` in ``kvcache/attention.h``)."""
    layer = _cache_arg(cache)._layer(layer)
    q = _float32_2d(q, "q", None, cache.head_dim)
    sc = 0.0 if scale is None else float(scale)
    if scale is not None and (not math.isfinite(sc) or sc <= 0):
        raise ValueError(f"scale: expected a finite value > 0, got {scale}")
    out: np.ndarray = _core.kvcache.decode_upkeep(
        cache._impl, layer, q, tova, budget, recent, group_reduce, sc, threads_arg(nt)
    )
    return out


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
    group (SnapKV issue #22), and the window itself gets the maximum score so it is always
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
        return np.concatenate([s, np.full((hkv, w), s.max())], axis=1)

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


# ---------------------------------------------------------------------------------------
# Metrics against full attention (float64 numpy)


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def kept_mask(cache: PagedKVCache, layer: int, context: int) -> np.ndarray:
    """(Hkv, context) bool: which original positions each kv head of ``layer`` still holds."""
    out = np.zeros((cache.num_kv_heads, context), dtype=bool)
    for h in range(cache.num_kv_heads):
        p = cache.positions(layer, h)
        p = p[p < context]
        out[h, p] = True
    return out


def attention_metrics(
    q: np.ndarray,
    K: np.ndarray,
    V: np.ndarray,
    kept: np.ndarray,
    *,
    scale: float | None = None,
) -> dict[str, float]:
    """How well a kept subset of tokens reproduces full attention, in float64.

    Parameters
    ----------
    q : (H, D) queries of one decode step
    K, V : (Hkv, L, D), (Hkv, L, Dv) the full cache
    kept : (Hkv, L) bool -- the tokens a policy keeps (or attends)

    Returns
    -------
    dict with, averaged over query heads:
    ``recall``: |kept ∩ oracle| / |kept|, the oracle being the head's top-|kept| tokens by
    true attention; ``mass``: full-attention probability on kept tokens (1 - "attention
    loss"); ``output_error``: ||o_kept - o_full|| / ||o_full||, o_kept the softmax over the
    kept tokens only.
    """
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    H, D = q.shape
    hkv, L, _ = K.shape
    if kept.shape != (hkv, L):
        raise ValueError(f"kept: expected shape ({hkv}, {L}), got {kept.shape}")
    if H % hkv:
        raise ValueError(f"q: num_heads={H} is not a multiple of num_kv_heads={hkv}")
    G = H // hkv
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    rec, mass, err = [], [], []
    for j in range(H):
        h = j // G
        s = K[h] @ q[j] * sc
        p = _softmax(s)
        o = p @ V[h]
        m = kept[h]
        n = int(m.sum())
        if n == 0:
            rec.append(0.0)
            mass.append(0.0)
            err.append(1.0)
            continue
        oracle = np.argsort(-p, kind="stable")[:n]
        rec.append(float(m[oracle].sum()) / n)
        mass.append(float(p[m].sum()))
        pk = _softmax(s[m])
        ok = pk @ V[h][m]
        err.append(float(np.linalg.norm(ok - o) / max(np.linalg.norm(o), 1e-300)))
    return {
        "recall": float(np.mean(rec)),
        "mass": float(np.mean(mass)),
        "output_error": float(np.mean(err)),
    }


def page_metrics(
    q: np.ndarray, K: np.ndarray, pages: np.ndarray, page_size: int, *, scale: float | None = None
) -> dict[str, float]:
    """Selected pages against the oracle pages (float64).

    ``pages``: (Hkv, n) selected page indices (-1 padded) over K (Hkv, L, D). ``recall``:
    overlap with each query head's top-|selected| pages by true attention mass in the page;
    ``mass``: the full-attention mass in the selected pages. Averaged over query heads."""
    q = check_array(q, "q", ndim=2, kinds="fiu", dtype=np.float64)
    K = check_array(K, "K", ndim=3, kinds="fiu", dtype=np.float64)
    H, D = q.shape
    hkv, L, _ = K.shape
    if hkv == 0 or H % hkv or K.shape[2] != D:
        raise ValueError(f"K: expected shape (Hkv, L, {D}) with Hkv dividing {H}, got {K.shape}")
    pages = check_array(pages, "pages", ndim=2, kinds="iu")
    if pages.shape[0] != hkv:
        raise ValueError(f"pages: expected {hkv} rows (kv heads), got shape {pages.shape}")
    G = H // hkv
    S = _int_arg(page_size, "page_size", minimum=1)
    npg = -(-L // S)
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    rec, mass = [], []
    for j in range(H):
        h = j // G
        p = _softmax(K[h] @ q[j] * sc)
        pm = np.zeros(npg)
        np.add.at(pm, np.arange(L) // S, p)
        sel = np.asarray(pages[h])
        sel = sel[sel >= 0]
        oracle = np.argsort(-pm, kind="stable")[: len(sel)]
        rec.append(len(np.intersect1d(oracle, sel)) / max(len(sel), 1))
        mass.append(float(pm[sel].sum()))
    return {"recall": float(np.mean(rec)), "mass": float(np.mean(mass))}


# ---------------------------------------------------------------------------------------
# MLA (DeepSeek-V2/V3 multi-head latent attention)


class LatentKVCache(PagedKVCache):
    """MLA's latent cache: per token and layer one row ``[c_kv (d_c) | k_rope (d_r)]`` shared
    by every head (deepseek-ai/DeepSeek-V3 ``inference/model.py`` ``MLA``, absorbed mode).
    It is a paged cache with one kv head, ``head_dim = d_c + d_r`` and values read from the
    first ``d_c`` elements of each row (no value pages). Every single-head policy applies in
    latent space: eviction drops a row for all heads at once, Quest's bounds cover
    ``[c_kv | k_rope]`` and score the absorbed query."""

    def __init__(
        self,
        num_layers: int,
        kv_lora_rank: int = 512,
        rope_dim: int = 64,
        page_size: int = 16,
        dtype: Any = np.float32,
        *,
        page_bounds: bool = True,
    ) -> None:
        d_c = _int_arg(kv_lora_rank, "kv_lora_rank", minimum=1)
        d_r = _int_arg(rope_dim, "rope_dim")
        super().__init__(
            num_layers,
            1,
            d_c + d_r,
            page_size,
            dtype,
            value_dim=d_c,
            page_bounds=page_bounds,
            _latent=True,
        )
        self.kv_lora_rank = d_c
        self.rope_dim = d_r

    def append_latent(
        self, layer: int, c_kv: np.ndarray, k_rope: np.ndarray, positions: Any = None
    ) -> None:
        """Append ``T`` tokens: ``c_kv`` (T, d_c) and ``k_rope`` (T, d_r) (post-RoPE)."""
        c = np.asarray(c_kv)
        r = np.asarray(k_rope)
        if c.ndim != 2 or c.shape[1] != self.kv_lora_rank:
            raise ValueError(f"c_kv: expected shape (tokens, {self.kv_lora_rank}), got {c.shape}")
        if r.ndim != 2 or r.shape != (c.shape[0], self.rope_dim):
            raise ValueError(
                f"k_rope: expected shape ({c.shape[0]}, {self.rope_dim}), got {r.shape}"
            )
        row = np.ascontiguousarray(np.concatenate([c, r], axis=1), dtype=c.dtype)
        self.append(layer, row, None, positions)


def mla_absorb_query(q_nope: np.ndarray, q_pe: np.ndarray, w_uk: np.ndarray) -> np.ndarray:
    """The absorbed query ``[W_UK[h]^T q_nope[h] | q_pe[h]]``, (H, d_c + d_r) float32.

    ``q_nope`` (H, d_h), ``q_pe`` (H, d_r) (post-RoPE), ``w_uk`` (H, d_h, d_c) (DeepSeek's
    ``wkv_b`` viewed as (H, d_h + d_v, d_c), first d_h rows)."""
    qn = check_array(q_nope, "q_nope", ndim=2, kinds="fiu", dtype=np.float64)
    wk = check_array(w_uk, "w_uk", kinds="fiu", dtype=np.float64)
    qp = check_array(q_pe, "q_pe", ndim=2, kinds="fiu")
    if qp.shape[0] != qn.shape[0]:
        raise ValueError(f"q_pe: expected {qn.shape[0]} rows (heads), got shape {qp.shape}")
    if wk.ndim != 3 or wk.shape[:2] != qn.shape:
        raise ValueError(
            f"w_uk: expected shape ({qn.shape[0]}, {qn.shape[1]}, d_c), got {wk.shape}"
        )
    q_lat = np.einsum("hd,hdc->hc", qn, wk)
    return np.ascontiguousarray(np.concatenate([q_lat, qp], axis=1), dtype=np.float32)


def mla_output(out_latent: np.ndarray, w_uv: np.ndarray) -> np.ndarray:
    """``o[h] = W_UV[h] o_lat[h]``: (H, d_c) latent outputs -> (H, d_v) float32."""
    ol = check_array(out_latent, "out_latent", ndim=2, kinds="fiu", dtype=np.float64)
    wv = check_array(w_uv, "w_uv", kinds="fiu", dtype=np.float64)
    if wv.ndim != 3 or wv.shape[0] != ol.shape[0] or wv.shape[2] != ol.shape[1]:
        raise ValueError(
            f"w_uv: expected shape ({ol.shape[0]}, d_v, {ol.shape[1]}), got {wv.shape}"
        )
    return np.asarray(np.einsum("hc,hdc->hd", ol, wv), dtype=np.float32)


def mla_decode_attention(
    cache: LatentKVCache,
    layer: int,
    q_nope: np.ndarray,
    q_pe: np.ndarray,
    w_uk: np.ndarray,
    w_uv: np.ndarray,
    *,
    scale: float | None = None,
    pages: np.ndarray | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Absorbed MLA decode attention over a :class:`LatentKVCache` -> (H, d_v) float32.

    ``score_t = (q_lat . c_t + q_pe . k_rope_t) * scale`` with ``q_lat = W_UK^T q_nope``;
    ``o = W_UV sum_t p_t c_t``. Equal to attention with per-head keys ``[W_UK c_t | k_rope_t]``
    and values ``W_UV c_t`` (the non-absorbed computation). ``scale`` defaults to
    ``1 / sqrt(d_h + d_r)`` (DeepSeek's ``softmax_scale`` without YaRN's mscale)."""
    if not isinstance(cache, LatentKVCache):
        raise TypeError(f"cache: expected a LatentKVCache, got {type(cache).__name__}")
    qn = np.asarray(q_nope)
    sc = 1.0 / math.sqrt(qn.shape[1] + cache.rope_dim) if scale is None else float(scale)
    q = mla_absorb_query(qn, q_pe, w_uk)
    out_lat = cache.attend(layer, q, scale=sc, pages=pages, num_threads=num_threads)
    return mla_output(out_lat, w_uv)


# ---------------------------------------------------------------------------------------
# Bytes per token


KNOWN_CONFIGS: dict[str, dict[str, int]] = {
    # meta-llama/Llama-2-7b-hf config.json: MHA
    "llama-2-7b": {"num_layers": 32, "num_heads": 32, "num_kv_heads": 32, "head_dim": 128},
    # meta-llama/Meta-Llama-3-8B config.json: GQA, 8 kv heads
    "llama-3-8b": {"num_layers": 32, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128},
    # deepseek-ai/DeepSeek-V2 config.json: MLA, kv_lora_rank 512, qk_rope_head_dim 64
    "deepseek-v2": {
        "num_layers": 60,
        "num_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
    # deepseek-ai/DeepSeek-V2-Lite: 27 layers (the V2 report's "small MoE" row)
    "deepseek-v2-lite": {
        "num_layers": 27,
        "num_heads": 16,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
    # deepseek-ai/DeepSeek-V3 inference/configs/config_671B.json: 61 layers
    "deepseek-v3": {
        "num_layers": 61,
        "num_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
    },
}

_ALIASES = {
    "num_hidden_layers": "num_layers",
    "n_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "n_heads": "num_heads",
    "num_key_value_heads": "num_kv_heads",
    "n_kv_heads": "num_kv_heads",
}


def _config_dict(config: Any) -> dict[str, int]:
    if isinstance(config, str):
        if config.lower() not in KNOWN_CONFIGS:
            raise ValueError(f"config: unknown name {config!r}; known: {sorted(KNOWN_CONFIGS)}")
        return dict(KNOWN_CONFIGS[config.lower()])
    if isinstance(config, Mapping):
        raw = dict(config)
    else:
        raw = {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = _ALIASES.get(k, k)
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            out.setdefault(key, int(v))
    if "head_dim" not in out and "hidden_size" in out and "num_heads" in out:
        out["head_dim"] = out["hidden_size"] // out["num_heads"]
    if "head_dim" not in out and "dim" in out and "num_heads" in out:
        out["head_dim"] = out["dim"] // out["num_heads"]
    if "num_kv_heads" not in out and "num_heads" in out:
        out["num_kv_heads"] = out["num_heads"]
    if "num_layers" not in out:
        raise ValueError("config: missing num_layers (or num_hidden_layers / n_layers)")
    return out


def attention_kind(config: Any) -> str:
    """The attention kind of a configuration: "MHA", "GQA", "MQA" or "MLA"."""
    c = _config_dict(config)
    if c.get("kv_lora_rank"):
        return "MLA"
    if c.get("num_kv_heads") == 1:
        return "MQA"
    if c.get("num_kv_heads") == c.get("num_heads"):
        return "MHA"
    return "GQA"


def elements_per_token(config: Any) -> int:
    """Cached elements per token over all layers: MHA ``2 n_h d_h l``, GQA ``2 n_g d_h l``,
    MQA ``2 d_h l``, MLA ``(d_c + d_h^R) l`` (DeepSeek-V2 report, Table 1)."""
    c = _config_dict(config)
    layers = c["num_layers"]
    if c.get("kv_lora_rank"):
        return (c["kv_lora_rank"] + c.get("qk_rope_head_dim", 0)) * layers
    for key in ("num_kv_heads", "head_dim"):
        if key not in c:
            raise ValueError(f"config: missing {key}")
    return 2 * c["num_kv_heads"] * c["head_dim"] * layers


def bytes_per_token(config: Any, dtype: Any = "bfloat16") -> int:
    """KV-cache bytes per token of context for a model configuration.

    ``config``: a name from :data:`KNOWN_CONFIGS`, a mapping or an object with
    ``num_layers``/``num_hidden_layers``, ``num_heads``, ``num_kv_heads``, ``head_dim`` (or
    ``hidden_size``), or for MLA ``kv_lora_rank`` and ``qk_rope_head_dim``. ``dtype``: the
    cache dtype (default bfloat16, 2 bytes)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}
    if name not in sizes:
        raise ValueError(f"dtype: expected one of {sorted(sizes)}, got {dtype!r}")
    return elements_per_token(config) * sizes[name]


# ---------------------------------------------------------------------------------------
# The model's decode loop: a policy-driven DecodeCache


_PREFILL_MODES = ("compress", "decode")


class PolicyCache:
    """A :class:`sparseforge.models.DecodeCache` that runs a KV policy inside
    :meth:`LlamaModel.step <sparseforge.models.LlamaModel.step>`.

    The keys and values live in a :class:`PagedKVCache` (per layer and kv head, GQA-native:
    the G query heads of a kv head combine into one score per key with ``group_reduce``),
    and the policy keeps it within its budget:

    * **prefill** (the first chunk, ``T > 1`` tokens into an empty cache, with
      ``prefill="compress"``): the chunk's outputs are exact causal attention over the chunk
      (what the model computes without a cache); then the policy appends and compresses it
      (:meth:`KVPolicy.prefill`: SnapKV / PyramidKV / AdaKV / KeyNorm / Random score it
      once, H2O takes the column sums, TOVA the last query, StreamingLLM / SlidingWindow keep
      their windows, Quest and FullCache keep everything).
    * **decode** (every other token, one at a time, including a later chunk's tokens and,
      with ``prefill="decode"``, the prompt's): :meth:`KVPolicy.decode` appends the token,
      attends (dense, or page-sparse for Quest) with the attention mass from the same pass
      (H2O's accumulator, TOVA's last-query score) and evicts to the budget.

    Parameters
    ----------
    config_or_model : LlamaConfig or LlamaModel
        The model's layout: ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``,
        ``rope_style``, ``rope_theta``.
    policy : str or KVPolicy
        A name of :data:`POLICIES` (built with ``budget`` and ``policy_options``) or a policy
        instance (then ``budget`` must be None: the instance has its own). One policy
        instance serves one cache.
    budget : int, float, sequence or Budget
        Tokens per (layer, kv head); see :class:`Budget`. Required by every policy except
        ``"full"``. Ratios resolve against the prefill's length.
    page_size : int
        Tokens per page ``S`` of the paged cache.
    dtype : float32, float16 or ml_dtypes.bfloat16
        Storage dtype of K and V (compute is fp32).
    group_reduce : {"mean", "max", "sum"}, optional
        How a kv head's query heads combine into one score (default: the policy's).
    prefill : {"compress", "decode"}
        "compress": the first multi-token chunk is a prefill (exact attention, then the
        policy compresses). "decode": every token goes through the decode path, so the
        policy applies from the first token (score-once policies then never evict).
    rope_mode : {"original", "rerotate"}
        See :class:`PagedKVCache` ("rerotate" is StreamingLLM's position shift).
    **policy_options
        Passed to the policy's constructor when ``policy`` is a name (``sinks=4``,
        ``window=32``, ``dense_layers=2``, ...).

    Attributes
    ----------
    length : int
        Tokens fed so far (positions ``0 .. length-1``), whatever the policy evicted.
    paged : PagedKVCache
        The storage: ``paged.bytes_in_use`` is the measured K/V memory.
    policy : KVPolicy
    """

    def __init__(
        self,
        config_or_model: Any,
        policy: str | KVPolicy,
        budget: Any = None,
        *,
        page_size: int = 16,
        dtype: Any = np.float32,
        group_reduce: GroupReduce | None = None,
        prefill: str = "compress",
        rope_mode: str = "original",
        **policy_options: Any,
    ) -> None:
        cfg = getattr(config_or_model, "config", config_or_model)
        need = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "rope_style", "rope_theta")
        missing = [a for a in need if not hasattr(cfg, a)]
        if missing:
            raise TypeError(
                "config_or_model: expected a LlamaConfig or a LlamaModel, got "
                f"{type(config_or_model).__name__} (no {', '.join(missing)})"
            )
        self.config = cfg
        if prefill not in _PREFILL_MODES:
            raise ValueError(f"prefill: expected 'compress' or 'decode', got {prefill!r}")
        self.prefill_mode = prefill
        if isinstance(policy, KVPolicy):
            if budget is not None or policy_options or group_reduce is not None:
                raise ValueError(
                    "budget: a policy instance carries its own budget and options; pass "
                    "budget/group_reduce/options only with a policy name"
                )
            pol = policy
        elif isinstance(policy, str):
            if group_reduce is not None:
                policy_options["group_reduce"] = _reduce_arg(group_reduce)
            if policy not in POLICIES:
                raise ValueError(f"policy: unknown KV policy {policy!r}; known: {sorted(POLICIES)}")
            if budget is None and POLICIES[policy] is not FullCache:
                raise ValueError(f"budget: policy {policy!r} needs a budget (tokens per kv head)")
            pol = make_policy(policy, budget, **policy_options)
        else:
            raise TypeError(
                f"policy: expected a policy name or a KVPolicy, got {type(policy).__name__}"
            )
        if pol.evicts and pol.budget is None:
            raise ValueError(f"budget: {type(pol).__name__} needs a budget")
        per_layer = None if pol.budget is None else pol.budget.per_layer
        if per_layer is not None and len(per_layer) != cfg.n_layers:
            raise ValueError(
                f"budget: expected {cfg.n_layers} per-layer entries, got {len(per_layer)}"
            )
        self.policy = pol
        self.paged = PagedKVCache(
            cfg.n_layers,
            cfg.n_kv_heads,
            cfg.head_dim,
            page_size,
            dtype,
            rope_mode=rope_mode,
            rope_style=cfg.rope_style,
            rope_theta=float(cfg.rope_theta),
            page_bounds=isinstance(pol, Quest) or rope_mode == "original",
        )
        self.length: int = 0

    # -- DecodeCache -----------------------------------------------------------------------
    def check_model(self, config: Any) -> None:
        c = self.config
        mine = (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim)
        theirs = tuple(getattr(config, a, None) for a in ("n_layers", "n_heads", "n_kv_heads"))
        theirs = (*theirs, getattr(config, "head_dim", None))
        if mine != theirs:
            raise ValueError(
                "cache: was built for (n_layers, n_heads, n_kv_heads, head_dim) = "
                f"{mine}, the model has {theirs}"
            )
        if (config.rope_style, float(config.rope_theta)) != (c.rope_style, float(c.rope_theta)):
            raise ValueError("cache: was built for another RoPE (rope_style / rope_theta)")

    def reserve(self, T: int) -> None:
        _int_arg(T, "T", minimum=1)

    def attend(
        self,
        block: int,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        scale: float,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Store block ``block``'s new tokens under the policy and return their attention
        output, float32 ``(T, n_heads * head_dim)``; ``q`` ``(T, n_heads, head_dim)``, ``k`` and
        ``v`` ``(T, n_kv_heads, head_dim)`` post-RoPE at positions ``length .. length+T-1``."""
        c = self.config
        layer = self.paged._layer(block)
        if not isinstance(q, np.ndarray) or q.ndim != 3 or q.shape[1:] != (c.n_heads, c.head_dim):
            raise ValueError(
                f"q: expected shape (T, {c.n_heads}, {c.head_dim}), got {_shape_of(q)}"
            )
        T = q.shape[0]
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, np.ndarray) or x.shape != (T, c.n_kv_heads, c.head_dim):
                want = (T, c.n_kv_heads, c.head_dim)
                raise ValueError(f"{name}: expected shape {want}, got {_shape_of(x)}")
        if T == 0:
            raise ValueError("q: expected at least one token")
        start = self.length
        have = self.paged.last_position(layer) + 1
        if have != start:
            raise ValueError(
                f"block: layer {layer} holds positions up to {have - 1}, but the new tokens "
                f"start at {start} (blocks must be fed in order, each once per step)"
            )
        # The model passes its thread count as an int, 0 meaning the default.
        nt = None if not num_threads else threads_arg(num_threads)
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = np.ascontiguousarray(k, dtype=np.float32)
        v = np.ascontiguousarray(v, dtype=np.float32)
        if T > 1 and start == 0 and self.prefill_mode == "compress":
            out: np.ndarray = _core.models.attention(q, k, v, float(scale), None, threads_arg(nt))
            self.policy.prefill(self.paged, layer, q, k, v, num_threads=nt)
            return out
        out = np.empty((T, c.n_heads * c.head_dim), dtype=np.float32)
        for t in range(T):
            o = self.policy.decode(
                self.paged,
                layer,
                q[t],
                k[t],
                v[t],
                start + t,
                scale=float(scale),
                num_threads=nt,
            )
            out[t] = o.reshape(-1)
        return out

    def advance(self, T: int) -> None:
        self.length += _int_arg(T, "T", minimum=1)

    # -- accounting / lifecycle -------------------------------------------------------------
    @property
    def bytes_in_use(self) -> int:
        """K/V bytes held by the cache's pages, measured from the pool."""
        return self.paged.bytes_in_use

    @property
    def peak_bytes(self) -> int:
        return self.paged.peak_bytes

    def lengths(self) -> np.ndarray:
        """(n_layers, n_kv_heads) int64: tokens each (layer, kv head) holds."""
        return np.stack([self.paged.lengths(i) for i in range(self.config.n_layers)])

    def reset(self) -> None:
        """Forget the sequence (pages return to the free list; the policy's state too)."""
        self.paged.clear()
        self.paged.reset_peak()
        self.policy.reset()
        self.length = 0

    def __repr__(self) -> str:
        return (
            f"PolicyCache(policy={self.policy!r}, length={self.length}, "
            f"tokens={self.paged.tokens_in_use}, bytes_in_use={self.bytes_in_use})"
        )


def _shape_of(x: Any) -> str:
    return str(x.shape) if isinstance(x, np.ndarray) else type(x).__name__


def decode_nll(
    model: Any,
    tokens: Any,
    cache: Any,
    *,
    prefill: int = 0,
) -> np.ndarray:
    """Negative log-likelihoods through the model's decode loop, float64.

    ``tokens[:prefill]`` run as one chunk (``prefill >= 2``; 0 or 1 feeds the first token
    alone), then every further token is fed one at a time with :meth:`LlamaModel.step`
    into ``cache`` (a :class:`PolicyCache` or any ``DecodeCache``, empty). Returns the NLL
    (nats) of ``tokens[s + 1:]``, ``s = max(prefill, 1) - 1``: every token predicted from
    the decode loop (the prefill's own tokens but its last are not scored). ``exp(mean())``
    is the perplexity under the cache's policy.
    """
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"tokens: expected a 1-D sequence of >= 2 token ids, got {_shape_of(ids)}")
    p = _int_arg(prefill, "prefill")
    if p > ids.size - 1:
        raise ValueError(f"prefill: expected <= {ids.size - 1} (tokens - 1), got {p}")
    if getattr(cache, "length", None) != 0:
        raise ValueError("cache: expected an empty cache (length 0); call cache.reset()")
    first = max(p, 1)
    logits = model.step(ids[:first], cache)[-1]
    out = np.empty(ids.size - first, dtype=np.float64)
    for i in range(first, ids.size):
        lg = logits.astype(np.float64)
        m = lg.max()
        out[i - first] = m + math.log(float(np.exp(lg - m).sum())) - lg[int(ids[i])]
        if i + 1 < ids.size:
            logits = model.step(ids[i : i + 1], cache)[-1]
    return out


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
