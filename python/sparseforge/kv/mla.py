"""MLA (DeepSeek-V2/V3 multi-head latent attention): the latent cache and absorbed decode
attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validate import check_array
from ._common import _int_arg
from .cache import PagedKVCache


class LatentKVCache(PagedKVCache):
    """MLA's latent cache: per token and layer one row ``[c_kv (d_c) | k_rope (d_r)]`` shared
    by every head (deepseek-ai/DeepSeek-V3 ``inference/model.py`` ``MLA``, absorbed mode).
    It is a paged cache with one kv head, ``head_dim = d_c + d_r`` and values read from the
    first ``d_c`` elements of each row (no value pages). Every single-head policy applies in
    latent space: eviction drops a row for all heads at once, Quest's bounds cover
    ``[c_kv | k_rope]`` and score the absorbed query."""

    def __init__(
        self,
        num_layers: int,
        kv_lora_rank: int = 512,
        rope_dim: int = 64,
        page_size: int = 16,
        dtype: Any = np.float32,
        *,
        page_bounds: bool = True,
    ) -> None:
        d_c = _int_arg(kv_lora_rank, "kv_lora_rank", minimum=1)
        d_r = _int_arg(rope_dim, "rope_dim")
        super().__init__(
            num_layers,
            1,
            d_c + d_r,
            page_size,
            dtype,
            value_dim=d_c,
            page_bounds=page_bounds,
            _latent=True,
        )
        self.kv_lora_rank = d_c
        self.rope_dim = d_r

    def append_latent(
        self, layer: int, c_kv: np.ndarray, k_rope: np.ndarray, positions: Any = None
    ) -> None:
        """Append ``T`` tokens: ``c_kv`` (T, d_c) and ``k_rope`` (T, d_r) (post-RoPE)."""
        c = np.asarray(c_kv)
        r = np.asarray(k_rope)
        if c.ndim != 2 or c.shape[1] != self.kv_lora_rank:
            raise ValueError(f"c_kv: expected shape (tokens, {self.kv_lora_rank}), got {c.shape}")
        if r.ndim != 2 or r.shape != (c.shape[0], self.rope_dim):
            raise ValueError(
                f"k_rope: expected shape ({c.shape[0]}, {self.rope_dim}), got {r.shape}"
            )
        row = np.ascontiguousarray(np.concatenate([c, r], axis=1), dtype=c.dtype)
        self.append(layer, row, None, positions)


def mla_absorb_query(q_nope: np.ndarray, q_pe: np.ndarray, w_uk: np.ndarray) -> np.ndarray:
    """The absorbed query ``[W_UK[h]^T q_nope[h] | q_pe[h]]``, (H, d_c + d_r) float32.

    ``q_nope`` (H, d_h), ``q_pe`` (H, d_r) (post-RoPE), ``w_uk`` (H, d_h, d_c) (DeepSeek's
    ``wkv_b`` viewed as (H, d_h + d_v, d_c), first d_h rows)."""
    qn = check_array(q_nope, "q_nope", ndim=2, kinds="fiu", dtype=np.float64)
    wk = check_array(w_uk, "w_uk", kinds="fiu", dtype=np.float64)
    qp = check_array(q_pe, "q_pe", ndim=2, kinds="fiu")
    if qp.shape[0] != qn.shape[0]:
        raise ValueError(f"q_pe: expected {qn.shape[0]} rows (heads), got shape {qp.shape}")
    if wk.ndim != 3 or wk.shape[:2] != qn.shape:
        raise ValueError(
            f"w_uk: expected shape ({qn.shape[0]}, {qn.shape[1]}, d_c), got {wk.shape}"
        )
    q_lat = np.einsum("hd,hdc->hc", qn, wk)
    return np.ascontiguousarray(np.concatenate([q_lat, qp], axis=1), dtype=np.float32)


def mla_output(out_latent: np.ndarray, w_uv: np.ndarray) -> np.ndarray:
    """``o[h] = W_UV[h] o_lat[h]``: (H, d_c) latent outputs -> (H, d_v) float32."""
    ol = check_array(out_latent, "out_latent", ndim=2, kinds="fiu", dtype=np.float64)
    wv = check_array(w_uv, "w_uv", kinds="fiu", dtype=np.float64)
    if wv.ndim != 3 or wv.shape[0] != ol.shape[0] or wv.shape[2] != ol.shape[1]:
        raise ValueError(
            f"w_uv: expected shape ({ol.shape[0]}, d_v, {ol.shape[1]}), got {wv.shape}"
        )
    return np.asarray(np.einsum("hc,hdc->hd", ol, wv), dtype=np.float32)


def mla_decode_attention(
    cache: LatentKVCache,
    layer: int,
    q_nope: np.ndarray,
    q_pe: np.ndarray,
    w_uk: np.ndarray,
    w_uv: np.ndarray,
    *,
    scale: float | None = None,
    pages: np.ndarray | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Absorbed MLA decode attention over a :class:`LatentKVCache` -> (H, d_v) float32.

    ``score_t = (q_lat . c_t + q_pe . k_rope_t) * scale`` with ``q_lat = W_UK^T q_nope``;
    ``o = W_UV sum_t p_t c_t``. Equal to attention with per-head keys ``[W_UK c_t | k_rope_t]``
    and values ``W_UV c_t`` (the non-absorbed computation). ``scale`` defaults to
    ``1 / sqrt(d_h + d_r)`` (DeepSeek's ``softmax_scale`` without YaRN's mscale)."""
    if not isinstance(cache, LatentKVCache):
        raise TypeError(f"cache: expected a LatentKVCache, got {type(cache).__name__}")
    qn = np.asarray(q_nope)
    sc = 1.0 / math.sqrt(qn.shape[1] + cache.rope_dim) if scale is None else float(scale)
    q = mla_absorb_query(qn, q_pe, w_uk)
    out_lat = cache.attend(layer, q, scale=sc, pages=pages, num_threads=num_threads)
    return mla_output(out_lat, w_uv)
