"""Composition of presses: each stage compresses what the previous one kept."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..cache import PagedKVCache
from ..policies.adakv import AdaKV
from ..policies.base import KVPolicy
from ..policies.key_norm import KeyNorm
from ._rewrite import Kept, _RewritingPolicy, select
from .keydiff import KeyDiff
from .qfilter import QFilter
from .think import ThinK

# Scorers that do not look at positions or token order: they can score the tokens an
# earlier stage kept (stacked per kv head) exactly as kvpress scores its compressed tensors.
_LATER = (KeyNorm, KeyDiff, QFilter, ThinK)


class Composed(_RewritingPolicy):
    """kvpress ``ComposedPress`` (``presses/composed_press.py``): the stages run in order at
    prefill, each on what the stages before it kept (a ratio budget resolves against that
    length, so the kept fractions multiply). The first token stage may be any prefill
    policy but AdaKV (as in kvpress); later stages must be order- and position-free
    (KeyNorm, KeyDiff, QFilter with given filters, ThinK), since a per-head selection leaves
    each head a different set of positions. ThinK anywhere zeroes key channels that later
    stages then see. The layer's budget is the last token stage's."""

    name = "composed"

    def __init__(self, stages: Sequence[KVPolicy]) -> None:
        stages = list(stages)
        if not stages or not all(isinstance(s, KVPolicy) for s in stages):
            raise TypeError("stages: expected a non-empty sequence of KVPolicy instances")
        token = [s for s in stages if not isinstance(s, ThinK)]
        if not token:
            raise ValueError("stages: no stage evicts tokens; use ThinK alone")
        for i, s in enumerate(stages):
            if isinstance(s, AdaKV | Composed):
                raise TypeError(f"stages[{i}]: {type(s).__name__} cannot be composed")
            if s is not token[0] and not isinstance(s, _LATER):
                raise TypeError(
                    f"stages[{i}]: a later stage must be one of "
                    f"{', '.join(c.__name__ for c in _LATER)}, got {type(s).__name__}"
                )
            if isinstance(s, QFilter) and s.filters is None and s is not token[0]:
                raise ValueError(f"stages[{i}]: a later QFilter needs explicit filters")
        super().__init__(token[-1].budget)
        self.stages = stages

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
        kk = np.array(k, dtype=np.float32)
        kept: Kept = [np.arange(T) for _ in range(hkv)]
        whole = True
        for st in self.stages:
            if isinstance(st, ThinK):
                mask = st.pruned_channels(q, [kk[kept[h], h] for h in range(hkv)])
                kk[:, mask] = 0.0
                continue
            if whole:
                sel, b = select(st, cache, layer, q, kk, v, positions, nt)
            else:
                ks = np.stack([kk[kept[h], h] for h in range(hkv)], axis=1)
                vs = np.stack([v[kept[h], h] for h in range(hkv)], axis=1)
                n = ks.shape[0]
                sel, b = select(st, cache, layer, q[:n], ks, vs, np.arange(n), nt)
            kept = [kept[h][sel[h]] for h in range(hkv)]
            self._layer_budget[layer] = b
            whole = False
        return kept, kk, v

    def reset(self) -> None:
        super().reset()
        for s in self.stages:
            s.reset()
