"""Merge-on-evict: evicted tokens' values fold into their most similar kept token."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy
from ..policies.key_norm import KeyNorm
from ._rewrite import Kept, _RewritingPolicy, select

_EPS = 1e-6


def merge_values(
    k: np.ndarray, v: np.ndarray, kept: np.ndarray, threshold: float, fraction: float
) -> np.ndarray:
    """One kv head: ``k`` (T, D), ``v`` (T, Dv), ``kept`` indices. Returns the values with each
    kept row blended with the evicted rows that chose it (kvpress ``MergingPress.merge``)."""
    T = k.shape[0]
    out: np.ndarray = np.asarray(v, dtype=np.float64).copy()
    ev = np.setdiff1d(np.arange(T), kept)
    if len(ev) == 0 or len(kept) == 0:
        return out
    kk = k[kept].astype(np.float64)
    ek = k[ev].astype(np.float64)
    kk = kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), _EPS)
    ek = ek / np.maximum(np.linalg.norm(ek, axis=1, keepdims=True), _EPS)
    sim = ek @ kk.T
    target = sim.argmax(axis=1)
    best = sim[np.arange(len(ev)), target]
    ok = best >= threshold
    if fraction < 1.0 and ok.any():
        cut = np.quantile(np.where(ok, best, -np.inf), 1.0 - fraction)
        ok &= best >= cut
    kv_, evv = out[kept], out[ev]
    en = np.linalg.norm(evv, axis=1)
    tn = np.linalg.norm(kv_, axis=1)[target]
    w = np.maximum(best, 0.0) * ok * en / (en + tn + _EPS)
    acc = np.zeros_like(kv_)
    np.add.at(acc, target, w[:, None] * evv)
    wacc = np.zeros(len(kept))
    np.add.at(wacc, target, w)
    out[kept] = np.where((wacc > 0)[:, None], (kv_ + acc) / (1.0 + wacc)[:, None], kv_)
    return out


class Merging(_RewritingPolicy):
    """kvpress ``MergingPress`` (``presses/merging_press.py``; after Token Merging and D2O):
    ``scorer`` chooses the kept tokens per kv head as usual; each evicted token's value is
    then folded into the kept token whose key is most cosine-similar, weighted by
    ``max(sim, 0) * |v_e| / (|v_e| + |v_t| + 1e-6)``: ``v_t <- (v_t + sum w v_e) / (1 + sum
    w)``. Only merges with ``sim >= similarity_threshold`` happen, and with
    ``merge_fraction < 1`` only the most similar fraction of them. Keys are kept as they are
    (RoPE-safe). ``budget`` goes to the default scorer (KeyNorm); a given ``scorer``
    carries its own."""

    name = "merging"

    def __init__(
        self,
        budget: Any = None,
        *,
        scorer: _ScorerPolicy | None = None,
        similarity_threshold: float = 0.0,
        merge_fraction: float = 1.0,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        if scorer is None:
            if budget is None:
                raise ValueError("budget: Merging needs a budget or a scorer with one")
            scorer = KeyNorm(budget)
        if not isinstance(scorer, _ScorerPolicy):
            raise TypeError("scorer: expected a score-once policy (SnapKV, KeyNorm, ...)")
        super().__init__(scorer.budget if budget is None else budget, group_reduce=group_reduce)
        if not 0.0 <= similarity_threshold <= 1.0:
            raise ValueError(
                f"similarity_threshold: expected in [0, 1], got {similarity_threshold}"
            )
        if not 0.0 < merge_fraction <= 1.0:
            raise ValueError(f"merge_fraction: expected in (0, 1], got {merge_fraction}")
        self.scorer = scorer
        self.similarity_threshold = float(similarity_threshold)
        self.merge_fraction = float(merge_fraction)

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
        kept, b = select(self.scorer, cache, layer, q, k, v, positions, nt)
        self._layer_budget[layer] = b
        v2 = np.stack(
            [
                merge_values(
                    k[:, h], v[:, h], kept[h], self.similarity_threshold, self.merge_fraction
                )
                for h in range(k.shape[1])
            ],
            axis=1,
        )
        return kept, k, v2.astype(np.float32)

    def reset(self) -> None:
        super().reset()
        self.scorer.reset()
