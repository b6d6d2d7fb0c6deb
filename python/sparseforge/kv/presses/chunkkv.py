"""ChunkKV: keep whole chunks of consecutive tokens, ranked by a scorer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from ..policies.base import _keep_top, _require_fresh, _ScorerPolicy
from ..policies.key_norm import KeyNorm


class ChunkKV(_ScorerPolicy):
    """kvpress ``ChunkKVPress`` (``presses/chunkkv_press.py``; ChunkKV, arXiv 2502.00299):
    the prompt is cut into chunks of ``chunk_length`` tokens (the remainder is one more,
    shorter chunk); a chunk's score is the mean over its tokens of ``scorer``'s scores summed
    over kv heads; the top chunks are kept whole, the same tokens in every kv head. Chunks
    kept: ``max(1, int(n_chunks * ratio))`` for a ratio budget (kvpress's
    ``1 - compression_ratio``), ``max(1, B // chunk_length)`` for a token budget; the layer's
    budget then reads the tokens actually kept. A prompt shorter than one chunk falls back
    to the scorer's per-head top ``B``. Ties: the earlier chunk is kept."""

    name = "chunkkv"

    def __init__(
        self,
        budget: Any,
        *,
        scorer: _ScorerPolicy | None = None,
        chunk_length: int = 20,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.scorer = scorer if scorer is not None else KeyNorm(budget)
        if not isinstance(self.scorer, _ScorerPolicy) or isinstance(self.scorer, ChunkKV):
            raise TypeError("scorer: expected a score-once policy (SnapKV, KeyNorm, ...)")
        self.chunk_length = _int_arg(chunk_length, "chunk_length", minimum=1)

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
        scores = np.asarray(self.score(cache, layer, q, k, nt), dtype=np.float64)
        c = self.chunk_length
        n_full, rem = divmod(L, c)
        if n_full == 0:
            _keep_top(cache, layer, scores, b)
            return
        summed = scores.sum(axis=0)
        chunk = summed[: n_full * c].reshape(n_full, c).mean(axis=1)
        if rem:
            chunk = np.append(chunk, summed[n_full * c :].mean())
        n = len(chunk)
        assert self.budget is not None
        ratio = self.budget.ratio
        n_keep = max(1, int(n * ratio)) if ratio is not None else max(1, min(n, b // c))
        top = np.lexsort((np.arange(n), -chunk))[:n_keep]
        slots = np.concatenate([np.arange(i * c, min((i + 1) * c, L)) for i in np.sort(top)])
        self._layer_budget[layer] = len(slots)
        if len(slots) < L:
            for h in range(cache.num_kv_heads):
                cache.keep(layer, h, slots)
