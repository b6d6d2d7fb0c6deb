"""Offline quality metrics against full attention (float64 numpy)."""

from __future__ import annotations

import math

import numpy as np

from .._validate import check_array
from ._common import _int_arg
from .cache import PagedKVCache


def _softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def kept_mask(cache: PagedKVCache, layer: int, context: int) -> np.ndarray:
    """(Hkv, context) bool: which original positions each kv head of ``layer`` still holds."""
    out = np.zeros((cache.num_kv_heads, context), dtype=bool)
    for h in range(cache.num_kv_heads):
        p = cache.positions(layer, h)
        p = p[p < context]
        out[h, p] = True
    return out


def attention_metrics(
    q: np.ndarray,
    K: np.ndarray,
    V: np.ndarray,
    kept: np.ndarray,
    *,
    scale: float | None = None,
) -> dict[str, float]:
    """How well a kept subset of tokens reproduces full attention, in float64.

    Parameters
    ----------
    q : (H, D) queries of one decode step
    K, V : (Hkv, L, D), (Hkv, L, Dv) the full cache
    kept : (Hkv, L) bool -- the tokens a policy keeps (or attends)

    Returns
    -------
    dict with, averaged over query heads:
    ``recall``: |kept ∩ oracle| / |kept|, the oracle being the head's top-|kept| tokens by
    true attention; ``mass``: full-attention probability on kept tokens (1 - "attention
    loss"); ``output_error``: ||o_kept - o_full|| / ||o_full||, o_kept the softmax over the
    kept tokens only.
    """
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    H, D = q.shape
    hkv, L, _ = K.shape
    if kept.shape != (hkv, L):
        raise ValueError(f"kept: expected shape ({hkv}, {L}), got {kept.shape}")
    if H % hkv:
        raise ValueError(f"q: num_heads={H} is not a multiple of num_kv_heads={hkv}")
    G = H // hkv
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    rec, mass, err = [], [], []
    for j in range(H):
        h = j // G
        s = K[h] @ q[j] * sc
        p = _softmax(s)
        o = p @ V[h]
        m = kept[h]
        n = int(m.sum())
        if n == 0:
            rec.append(0.0)
            mass.append(0.0)
            err.append(1.0)
            continue
        oracle = np.argsort(-p, kind="stable")[:n]
        rec.append(float(m[oracle].sum()) / n)
        mass.append(float(p[m].sum()))
        pk = _softmax(s[m])
        ok = pk @ V[h][m]
        err.append(float(np.linalg.norm(ok - o) / max(np.linalg.norm(o), 1e-300)))
    return {
        "recall": float(np.mean(rec)),
        "mass": float(np.mean(mass)),
        "output_error": float(np.mean(err)),
    }


def page_metrics(
    q: np.ndarray, K: np.ndarray, pages: np.ndarray, page_size: int, *, scale: float | None = None
) -> dict[str, float]:
    """Selected pages against the oracle pages (float64).

    ``pages``: (Hkv, n) selected page indices (-1 padded) over K (Hkv, L, D). ``recall``:
    overlap with each query head's top-|selected| pages by true attention mass in the page;
    ``mass``: the full-attention mass in the selected pages. Averaged over query heads."""
    q = check_array(q, "q", ndim=2, kinds="fiu", dtype=np.float64)
    K = check_array(K, "K", ndim=3, kinds="fiu", dtype=np.float64)
    H, D = q.shape
    hkv, L, _ = K.shape
    if hkv == 0 or H % hkv or K.shape[2] != D:
        raise ValueError(f"K: expected shape (Hkv, L, {D}) with Hkv dividing {H}, got {K.shape}")
    pages = check_array(pages, "pages", ndim=2, kinds="iu")
    if pages.shape[0] != hkv:
        raise ValueError(f"pages: expected {hkv} rows (kv heads), got shape {pages.shape}")
    G = H // hkv
    S = _int_arg(page_size, "page_size", minimum=1)
    npg = -(-L // S)
    sc = 1.0 / math.sqrt(D) if scale is None else float(scale)
    rec, mass = [], []
    for j in range(H):
        h = j // G
        p = _softmax(K[h] @ q[j] * sc)
        pm = np.zeros(npg)
        np.add.at(pm, np.arange(L) // S, p)
        sel = np.asarray(pages[h])
        sel = sel[sel >= 0]
        oracle = np.argsort(-pm, kind="stable")[: len(sel)]
        rec.append(len(np.intersect1d(oracle, sel)) / max(len(sel), 1))
        mass.append(float(pm[sel].sum()))
    return {"recall": float(np.mean(rec)), "mass": float(np.mean(mass))}
