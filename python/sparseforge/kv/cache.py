"""The paged KV cache: one page table per (layer, kv head), pages from a shared pool."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .. import _core
from .._validate import check_array
from ._common import _INT64, GroupReduce, _int_arg, _positions_arg, _tokens_2d


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

    @classmethod
    def _wrap(cls, impl: Any, like: PagedKVCache) -> PagedKVCache:
        """A facade over an existing core cache (a fork's), shaped like ``like``."""
        new = cls.__new__(cls)
        new.__dict__.update(like.__dict__)
        new._impl = impl
        new._append_lock = threading.Lock()
        return new

    def copy(self) -> PagedKVCache:
        """A deep copy: its own pages with the same tokens, positions, scores and bounds."""
        return PagedKVCache._wrap(self._impl.copy(), self)

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
        return _attention.decode_attention(
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


def _cache_arg(cache: Any, name: str = "cache") -> PagedKVCache:
    if not isinstance(cache, PagedKVCache):
        raise TypeError(
            f"{name}: expected a sparseforge.kv.PagedKVCache, got {type(cache).__name__}"
        )
    return cache


# attention takes a cache: imported after the class so either module may be imported first
from . import attention as _attention  # noqa: E402
