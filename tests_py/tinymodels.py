"""Small random Llama-family models for tests that need a whole model but not real weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparseforge import models as sm

# A 2-layer GQA model small enough for every test file; each file overrides what it needs.
DEFAULTS: dict[str, Any] = dict(
    dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=80,
    max_seq_len=64, rope_style="half", tied_embeddings=False,
)  # fmt: skip


def random_model(seed: int = 0, *, linear_backend: str | None = None, **over: Any) -> sm.LlamaModel:
    """A :class:`LlamaModel` with N(0, 0.2^2) matrices and N(0, 1) norm weights (float32),
    drawn in ``weight_shapes()`` order from ``default_rng(seed)``; Qwen2 configs also get
    q/k/v biases (N(0, 0.1^2)), drawn after the weights."""
    c = sm.LlamaConfig(**{**DEFAULTS, **over})
    rng = np.random.default_rng(seed)
    weights = {
        n: (rng.standard_normal(s) * (1.0 if len(s) == 1 else 0.2)).astype(np.float32)
        for n, s in c.weight_shapes().items()
    }
    if c.arch == "qwen2":
        for i in range(c.n_layers):
            for proj, rows in (("q_proj", c.q_dim), ("k_proj", c.kv_dim), ("v_proj", c.kv_dim)):
                weights[f"model.layers.{i}.self_attn.{proj}.bias"] = (
                    rng.standard_normal(rows) * 0.1
                ).astype(np.float32)
    kw = {} if linear_backend is None else {"linear_backend": linear_backend}
    return sm.LlamaModel(c, weights, source="random", **kw)
