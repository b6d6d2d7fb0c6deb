"""DuoAttention: retrieval heads keep everything, streaming heads keep sinks + a window."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .._common import _int_arg
from ..budgets import Budget
from ..cache import PagedKVCache
from ..policies.base import KVPolicy
from ._common import rope_matrices, unrope


class _Recorder(KVPolicy):
    """Keeps every token; records each layer's prefill q and k (post-RoPE)."""

    name = "recorder"
    evicts = False

    def __init__(self) -> None:
        super().__init__(None)
        self.qk: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        self.qk[layer] = (np.array(q), np.array(k))


def duo_attention_scores(model: Any, batches: Iterable[Any], q_len: int = 500) -> np.ndarray:
    """Head scores ``(n_layers, Hkv)`` float64 for :class:`DuoAttention`, by kvpress's
    on-the-fly method (``duo_attention_press.duo_attention_on_the_fly``) on our forward: per
    calibration sequence and layer, the mean pre-RoPE query and key over its tokens are
    repeated at positions ``0 .. q_len - 1`` and rotated; the last query's attention over
    those keys gives the area under its cumulative curve (mean of the cumulative sum), per
    query head, averaged over the group and over the sequences. Low scores = heads whose
    attention is local (streaming heads). kvpress draws 50 BookSum chapters from the hub;
    pass any token sequences (e.g. WikiText) instead. ``model``: a ``LlamaModel``."""
    from ..policy_cache import PolicyCache

    c = model.config
    H, hkv, D = c.n_heads, c.n_kv_heads, c.head_dim
    G = H // hkv
    n = _int_arg(q_len, "q_len", minimum=1)
    R = rope_matrices(np.arange(n), D, c.rope_style, float(c.rope_theta))
    scores = np.zeros((c.n_layers, hkv))
    count = 0
    for ids in batches:
        rec = _Recorder()
        model.step(np.asarray(ids), PolicyCache(model, rec))
        count += 1
        for layer in range(c.n_layers):
            q, k = rec.qk[layer]
            pos = np.arange(q.shape[0])
            qm = unrope(q, pos, c.rope_style, float(c.rope_theta)).mean(axis=0)  # (H, D)
            km = unrope(k, pos, c.rope_style, float(c.rope_theta)).mean(axis=0)  # (Hkv, D)
            Q = R[-1] @ qm.T  # (D, H): the last position's query
            K = np.einsum("pde,he->hpd", R, km)  # (Hkv, n, D)
            for j in range(H):
                a = K[j // G] @ Q[:, j] / np.sqrt(D)
                a = np.exp(a - a.max())
                a /= a.sum()
                scores[layer, j // G] += np.cumsum(a).mean() / G
    if count == 0:
        raise ValueError("batches: expected at least one calibration sequence")
    return scores / count


class DuoAttention(KVPolicy):
    """kvpress ``DuoAttentionPress`` (DuoAttention, arXiv 2410.10819): the
    ``round(n_layers * Hkv * head_compression_ratio)`` (layer, kv head) pairs with the lowest
    ``head_scores`` become streaming heads and keep only the first ``sink_size`` and the last
    ``recent_size`` prompt tokens; the others (retrieval heads) keep everything. At prefill
    only; decode grows every head. Unlike kvpress (which masks the evicted keys), the
    streaming heads really drop them: their pages return to the pool. ``head_scores``: from
    :func:`duo_attention_scores` (kvpress's on-the-fly calibration, run on our forward) or
    the DuoAttention repository's ``full_attention_heads.tsv`` (trained gates; kvpress
    downloads those, this offline build cannot)."""

    name = "duo_attention"

    def __init__(
        self,
        head_scores: Any,
        *,
        head_compression_ratio: float = 0.5,
        sink_size: int = 128,
        recent_size: int = 256,
    ) -> None:
        s = np.asarray(head_scores, dtype=np.float64)
        if s.ndim != 2 or s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError(f"head_scores: expected a finite (n_layers, Hkv) array, got {s.shape}")
        r = float(head_compression_ratio)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"head_compression_ratio: expected in [0, 1], got {r}")
        self.sink_size = _int_arg(sink_size, "sink_size")
        self.recent_size = _int_arg(recent_size, "recent_size", minimum=1)
        super().__init__(Budget(tokens=max(1, self.sink_size + self.recent_size)))
        self.head_scores = s
        self.head_compression_ratio = r
        n = round(s.size * r)
        self.streaming = np.zeros(s.shape, dtype=bool)
        self.streaming.reshape(-1)[np.argsort(s, axis=None, kind="stable")[:n]] = True

    def _after_prefill(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> None:
        if tuple(self.streaming.shape) != (cache.num_layers, cache.num_kv_heads):
            raise ValueError(
                f"head_scores: expected shape ({cache.num_layers}, {cache.num_kv_heads}), got "
                f"{self.streaming.shape}"
            )
        for h in np.flatnonzero(self.streaming[layer]):
            L = cache.length(layer, int(h))
            if self.sink_size + self.recent_size < L:
                order = np.argsort(cache.positions(layer, int(h)), kind="stable")
                cache.evict(layer, int(h), order[self.sink_size : L - self.recent_size])

    def layer_budget(self, cache: PagedKVCache, layer: int) -> int:
        return self.sink_size + self.recent_size
