"""ExpectedAttention: the attention future queries are expected to pay, from query statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._common import GroupReduce, _int_arg
from ..cache import PagedKVCache
from ..policies.base import _ScorerPolicy
from ._common import prompt_start, prompt_values, rope_matrices, unrope


class ExpectedAttention(_ScorerPolicy):
    """kvpress ``ExpectedAttentionPress`` (``presses/expected_attention_press.py``): model the
    prompt's pre-RoPE queries (tokens after the first ``n_sink``) as a Gaussian with mean
    ``mu`` and covariance ``S`` per query head, rotate both by RoPE averaged over the next
    ``n_future_positions`` positions (``R = mean_p R_p``: ``mu <- R mu``, ``S <- R S R^T``),
    and score each key by the softmax over keys of ``mu.k / sqrt(D) + k^T S k / (2 D)`` (the
    log of ``E[exp(q.k / sqrt(D))]``), averaged over the kv head's group and scaled by
    ``(score + epsilon) * ||v||``. The first ``n_sink`` tokens are always kept. Computed in
    float64 from the post-RoPE queries (RoPE undone with the cache's ``rope_style`` /
    ``rope_theta``); needs a fresh prefill of more than ``n_sink`` tokens."""

    name = "expected_attention"

    def __init__(
        self,
        budget: Any,
        *,
        n_future_positions: int = 512,
        n_sink: int = 4,
        use_covariance: bool = True,
        use_vnorm: bool = True,
        epsilon: float = 0.0,
        group_reduce: GroupReduce = "mean",
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.n_future_positions = _int_arg(n_future_positions, "n_future_positions", minimum=1)
        self.n_sink = _int_arg(n_sink, "n_sink")
        self.use_covariance = bool(use_covariance)
        self.use_vnorm = bool(use_vnorm)
        self.epsilon = float(epsilon)
        if not np.isfinite(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"epsilon: expected a finite value >= 0, got {epsilon}")

    def score(
        self, cache: PagedKVCache, layer: int, q: np.ndarray, k: np.ndarray, nt: int | None
    ) -> np.ndarray:
        T, H, D = q.shape
        hkv = k.shape[1]
        s = self.n_sink
        if s >= T:
            raise ValueError(f"n_sink: the prompt ({T} tokens) must be longer than n_sink={s}")
        start = prompt_start(cache, layer, T)
        pos = np.arange(start, start + T)
        style, theta = cache.rope_style, cache.rope_theta
        qp = unrope(q[s:], pos[s:], style, theta)  # (T - s, H, D) pre-RoPE
        mu = qp.mean(axis=0)  # (H, D)
        future = np.arange(T + start, T + start + self.n_future_positions)
        R = rope_matrices(future, D, style, theta).mean(axis=0)
        mu = mu @ R.T
        keys = k[s:].astype(np.float64).transpose(1, 0, 2)  # (Hkv, n, D)
        G = H // hkv
        out = np.empty((hkv, T - s))
        for h in range(hkv):
            Kh = keys[h]
            acc = np.zeros(T - s)
            for j in range(h * G, (h + 1) * G):
                z = Kh @ mu[j] / np.sqrt(D)
                if self.use_covariance:
                    c = qp[:, j] - qp[:, j].mean(axis=0)
                    cov = R @ (c.T @ c / c.shape[0]) @ R.T
                    z = z + np.einsum("nd,de,ne->n", Kh, cov, Kh) / D / 2
                z = np.exp(z - z.max())
                acc += z / z.sum()
            out[h] = acc / G
        if self.use_vnorm:
            V = prompt_values(cache, layer)[:, s:].astype(np.float64)
            out = (out + self.epsilon) * np.linalg.norm(V, axis=-1)
        return np.concatenate([np.full((hkv, s), out.max() + 1.0), out], axis=1)
