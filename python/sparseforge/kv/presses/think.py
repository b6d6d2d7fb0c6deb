"""ThinK: prune the least important key channels (dimensions), not tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._common import _int_arg
from ..cache import PagedKVCache
from ._rewrite import Kept, _RewritingPolicy


class ThinK(_RewritingPolicy):
    """kvpress ``ThinKPress`` (``presses/think_press.py``; ThinK, arXiv 2407.21018): per kv
    head, channel ``c`` scores ``mean_w(q_c^2) * mean_t(k_c^2)`` -- the squared queries of the
    last ``window`` prompt positions (post-RoPE, averaged over the group) times the squared
    keys -- and the ``int(D * key_channel_ratio)`` lowest channels of the prompt's keys are
    set to zero. Tokens are not evicted; like kvpress (which zeroes in place) the cache's
    bytes do not fall, the keys' information does. Keys appended later (decode) keep every
    channel. Compose with a token press (``Composed([SnapKV(B), ThinK(...)])``) for both.
    """

    name = "think"
    evicts = False

    def __init__(self, *, key_channel_ratio: float = 0.5, window: int = 32) -> None:
        super().__init__(None)
        r = float(key_channel_ratio)
        if not 0.0 <= r < 1.0:
            raise ValueError(f"key_channel_ratio: expected in [0, 1), got {key_channel_ratio}")
        self.key_channel_ratio = r
        self.window = _int_arg(window, "window", minimum=1)

    def pruned_channels(self, q: np.ndarray, keys: Sequence[np.ndarray]) -> np.ndarray:
        """(Hkv, D) bool, True where a channel is zeroed; ``keys[h]`` (n_h, D): the keys the
        head keeps; ``q`` (T, H, D) the prompt's queries."""
        hkv = len(keys)
        H, D = q.shape[1:]
        qn = (q[-self.window :].astype(np.float64) ** 2).mean(axis=0)  # (H, D)
        qn = qn.reshape(hkv, H // hkv, D).mean(axis=1)
        kn = np.stack([(np.asarray(x, np.float64) ** 2).mean(axis=0) for x in keys])
        sc = qn * kn
        n = int(D * self.key_channel_ratio)
        out = np.zeros((hkv, D), dtype=bool)
        for h in range(hkv):
            out[h, np.lexsort((np.arange(D), sc[h]))[:n]] = True
        return out

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
        mask = self.pruned_channels(q, [k[:, h] for h in range(k.shape[1])])
        return None, np.where(mask[None], 0.0, k).astype(np.float32), v
