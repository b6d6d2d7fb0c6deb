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
    ``1 - compression_ratio``; the layer's budget then reads the tokens actually kept). A
    token budget ``B`` is met exactly: whole chunks in score order while they fit, then the
    best tokens (summed score) of the next chunk. A prompt shorter than one chunk falls back
    to the scorer's per-head top ``B``. Ties: the earlier chunk (token) is kept."""

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
        order = np.lexsort((np.arange(n), -chunk))
        members = [np.arange(i * c, min((i + 1) * c, L)) for i in range(n)]
        assert self.budget is not None
        if self.budget.ratio is not None:  # kvpress: a number of whole chunks
            n_keep = max(1, int(n * self.budget.ratio))
            slots = np.concatenate([members[i] for i in order[:n_keep]])
        else:  # exactly b tokens
            take: list[np.ndarray] = []
            room = min(b, L)
            for i in order:
                m = members[i]
                if len(m) > room:
                    m = m[np.lexsort((m, -summed[m]))[:room]]
                take.append(m)
                room -= len(m)
                if room == 0:
                    break
            slots = np.concatenate(take)
        slots = np.sort(slots)
        self._layer_budget[layer] = len(slots)
        if len(slots) < L:
            for h in range(cache.num_kv_heads):
                cache.keep(layer, h, slots)
