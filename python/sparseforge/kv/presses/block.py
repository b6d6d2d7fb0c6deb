"""BlockPress: compress the prompt block by block, rescoring what was kept with each block."""

from __future__ import annotations

import numpy as np

from .._common import _int_arg
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy
from ..policies.key_norm import KeyNorm
from ._common import scratch_like
from ._rewrite import Kept, _RewritingPolicy
from .keydiff import KeyDiff
from .qfilter import QFilter

_ORDER_FREE = (KeyNorm, KeyDiff, QFilter)


class Block(_RewritingPolicy):
    """kvpress ``BlockPress`` (``presses/block_press.py``; KeyDiff's block-wise eviction):
    the first ``B`` prompt tokens are kept, then for each next block of ``block_size``
    tokens, ``scorer`` scores the kept tokens plus the block (per kv head) and the top ``B``
    stay. Memory during prefill is ``B + block_size`` per head in the reference; here the
    selection runs on the prompt before it is stored. ``scorer`` must score keys without
    positions or order (KeyNorm, KeyDiff, QFilter with given filters), as the kept set is
    re-stacked per head; its budget is ``B``. Ties: the earlier entry of the re-stacked set
    (kvpress: torch.topk's order)."""

    name = "block"

    def __init__(self, scorer: _ScorerPolicy, *, block_size: int = 128) -> None:
        if not isinstance(scorer, _ORDER_FREE) or scorer.budget is None:
            raise TypeError("scorer: expected KeyNorm, KeyDiff or QFilter with a budget")
        if isinstance(scorer, QFilter) and scorer.filters is None:
            raise ValueError("scorer: QFilter needs explicit filters inside Block")
        super().__init__(scorer.budget)
        self.scorer = scorer
        self.block_size = _int_arg(block_size, "block_size", minimum=1)

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
        T, hkv = k.shape[:2]
        assert self.budget is not None
        n = min(self.budget.resolve(layer, T, cache.num_layers), T)
        self._layer_budget[layer] = n
        bs = min(self.block_size, T)
        kept: Kept = [np.arange(n) for _ in range(hkv)]
        for i in range(n, T, bs):
            cur = [np.r_[kept[h], np.arange(i, min(i + bs, T))] for h in range(hkv)]
            ks = np.ascontiguousarray(np.stack([k[cur[h], h] for h in range(hkv)], axis=1))
            vs = np.ascontiguousarray(np.stack([v[cur[h], h] for h in range(hkv)], axis=1))
            m = ks.shape[0]
            scratch = scratch_like(cache)
            scratch.append(layer, ks, vs, np.arange(m))
            sc = np.asarray(self.scorer.score(scratch, layer, q[:m], ks, nt), dtype=np.float64)
            kept = [cur[h][np.lexsort((np.arange(m), -sc[h]))[:n]] for h in range(hkv)]
        return [np.sort(x) for x in kept], k, v
