"""KeyNorm: low-norm keys kept."""

from __future__ import annotations

import numpy as np

from ..cache import PagedKVCache
from .base import _ScorerPolicy


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
