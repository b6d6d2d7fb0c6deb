"""KeyDiff: keep the keys least similar to the mean key direction."""

from __future__ import annotations

import numpy as np

from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy


class KeyDiff(_ScorerPolicy):
    """kvpress ``KeyDiffPress`` (``presses/keydiff_press.py``; KeyDiff, arXiv 2504.15364):
    the anchor is the mean of the unit-normalised keys of a kv head; each key scores
    ``-cos(k, anchor)``, so the most distinctive keys are kept. Keys only (no queries), so
    it works for any prompt length. (The paper's block-wise iteration is kvpress's
    ``BlockPress`` around it; not provided here.)"""

    name = "keydiff"

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        K = k.astype(np.float64).transpose(1, 0, 2)  # (Hkv, T, D)
        norm = np.linalg.norm(K, axis=-1, keepdims=True)
        anchor = (K / np.maximum(norm, 1e-12)).mean(axis=1, keepdims=True)  # F.normalize eps
        dot = (K * anchor).sum(-1)
        den = np.sqrt(np.maximum((norm[..., 0] ** 2) * (anchor**2).sum(-1), 1e-16))
        return np.asarray(-dot / den)
