"""Decode attention (dense and page-sparse), Quest's page selection, prefill attention mass
and RoPE."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from .. import _core
from .._base import threads_arg
from .._validate import check_bool, check_number
from ._common import (
    _REDUCES,
    GroupReduce,
    _float32_2d,
    _int_arg,
    _positions_arg,
    _reduce_arg,
    _tokens_2d,
)
from .cache import PagedKVCache, _cache_arg


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
