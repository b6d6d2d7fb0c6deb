"""CUR (CurDKV): approximate leverage scores of keys and values."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy
from ._common import prompt_values

_TYPES = ("key", "value", "kv_avg", "kv_product")


class CUR(_ScorerPolicy):
    """kvpress ``CURPress`` (``presses/cur_press.py``; CurDKV, arXiv 2509.15038): squared
    row norms of keys (``k2``) and values (``v2``) as leverage-score proxies, normalised
    within local windows of ``local_window_size`` tokens (zero-padded at the end) when
    ``use_local_approximation``, combined per ``leverage_type`` (``k2``, ``v2``, their mean or,
    by default, their product), normalised to sum 1 per kv head; the first ``num_sinks``
    tokens score 1 (always kept). kvpress's optional random projection
    (``use_random_leverage``, torch's RNG) is not provided."""

    name = "cur"

    def __init__(
        self,
        budget: Any,
        *,
        num_sinks: int = 4,
        leverage_type: Literal["key", "value", "kv_avg", "kv_product"] = "kv_product",
        use_local_approximation: bool = True,
        local_window_size: int = 16,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.num_sinks = _int_arg(num_sinks, "num_sinks")
        if leverage_type not in _TYPES:
            raise ValueError(f"leverage_type: expected one of {_TYPES}, got {leverage_type!r}")
        self.leverage_type = leverage_type
        self.use_local_approximation = bool(use_local_approximation)
        self.local_window_size = _int_arg(local_window_size, "local_window_size", minimum=1)

    def _local(self, x: np.ndarray) -> np.ndarray:
        h, n = x.shape
        w = self.local_window_size
        pad = np.concatenate([x, np.zeros((h, (w - n % w) % w))], axis=1).reshape(h, -1, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = pad / pad.sum(axis=-1, keepdims=True)
        return np.asarray(y.reshape(h, -1)[:, :n])

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        k2 = (k.astype(np.float64) ** 2).sum(-1).T  # (Hkv, T)
        v2 = (prompt_values(cache, layer).astype(np.float64) ** 2).sum(-1)
        if self.use_local_approximation:
            k2, v2 = self._local(k2), self._local(v2)
        sc = {"key": k2, "value": v2, "kv_avg": (k2 + v2) / 2, "kv_product": k2 * v2}[
            self.leverage_type
        ]
        sc = sc / sc.sum(axis=-1, keepdims=True)
        sc[:, : self.num_sinks] = 1.0
        return np.asarray(sc)
