"""ObservedAttention: the prompt's own attention, averaged over the queries that see a key."""

from __future__ import annotations

import numpy as np

from ..attention import window_attention_mass
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy


class ObservedAttention(_ScorerPolicy):
    """kvpress ``ObservedAttentionPress`` (``presses/observed_attention_press.py``; H2O's
    prefill score, normalised): the causal attention probabilities a key receives from every
    prompt query, summed and divided by the number of queries that can see it (``T - j`` for
    key ``j``), averaged over the kv head's group. kvpress needs the eager attention matrix
    (``attn_implementation="eager"``); here the column sums come from the one-pass
    :func:`window_attention_mass` over the whole prompt (never the T x T matrix)."""

    name = "observed_attention"

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        T, H = q.shape[0], q.shape[1]
        hkv = k.shape[1]
        mass = window_attention_mass(q, k, T, group_reduce="none", num_threads=nt)
        s = mass.astype(np.float64) / np.arange(T, 0, -1, dtype=np.float64)
        return np.asarray(s.reshape(hkv, H // hkv, T).mean(axis=1))
