"""KV-cache sparsity: a paged per-(layer, kv-head) cache that really frees memory, eviction
and selection policies, decode attention (dense and page-sparse), MLA, and offline metrics.

Notation: ``L`` tokens in a head's cache, ``H`` query heads, ``Hkv`` kv heads, ``G = H / Hkv``
(query head ``j`` belongs to kv head ``j // G``, Hugging Face's ``repeat_kv`` grouping), ``D``
head dim, ``S`` page size, ``B`` token budget. Arrays follow a model's projections: keys and
values of ``T`` tokens are ``(T, Hkv, D)``, queries ``(T, H, D)`` (prefill) or ``(H, D)``
(one decode step). Keys and queries arrive *after* RoPE, at their original positions.

The cache stores keys per kv head (GQA-native, never repeated per query head) in pages of
``S`` tokens taken from a pool with a free list: eviction compacts a head's slots and returns
whole pages, so :attr:`PagedKVCache.bytes_in_use` falls with the budget. Policies are one
class each (:data:`POLICIES`), all driven the same way::

    cache = sf.kv.PagedKVCache(n_layers, n_kv_heads, head_dim)
    policy = sf.kv.make_policy("h2o", budget=512)
    policy.prefill(cache, layer, q, k, v)           # the prompt: (T, H, D), (T, Hkv, D) x2
    out = policy.decode(cache, layer, q1, k1, v1)   # one token: (H, D), (Hkv, D) x2 -> (H, Dv)

Inside a model's decode loop, :class:`PolicyCache` is a ``sparseforge.models.DecodeCache``
running any policy (``model.step(ids, sf.kv.PolicyCache(model, "h2o", 256))``);
:func:`decode_nll` scores a sequence through it.

See docs/kvcache.md for the algorithms, which reference implementation each follows, and the
bytes-per-token table.

Layout: ``cache`` (:class:`PagedKVCache`), ``attention`` (decode attention, Quest's selection,
prefill mass, RoPE), ``budgets``, ``policies/`` (one module per policy; :data:`POLICIES`),
``policy_cache`` (:class:`PolicyCache`, :func:`decode_nll`), ``mla``, ``metrics``, ``sizes``.
"""

from __future__ import annotations

from .attention import (
    _decode_upkeep,
    apply_rope,
    decode_attention,
    quest_page_scores,
    quest_select,
    window_attention_mass,
)
from .budgets import Budget, pyramid_budgets
from .cache import PagedKVCache  # first: attention and the policies take a cache
from .metrics import attention_metrics, kept_mask, page_metrics
from .mla import LatentKVCache, mla_absorb_query, mla_decode_attention, mla_output
from .policies import (
    H2O,
    POLICIES,
    TOVA,
    AdaKV,
    FullCache,
    KeyNorm,
    KVPolicy,
    PyramidKV,
    Quest,
    RandomPolicy,
    SlidingWindow,
    SnapKV,
    StreamingLLM,
    make_policy,
)
from .policy_cache import PolicyCache, decode_nll
from .presses import (
    CUR,
    ChunkKV,
    Composed,
    DuoAttention,
    ExpectedAttention,
    KeyDiff,
    LagKV,
    Merging,
    ObservedAttention,
    QFilter,
    ThinK,
    duo_attention_scores,
    qfilters_from_queries,
)
from .sizes import KNOWN_CONFIGS, attention_kind, bytes_per_token, elements_per_token

__all__ = [
    "CUR",
    "H2O",
    "KNOWN_CONFIGS",
    "POLICIES",
    "TOVA",
    "AdaKV",
    "Budget",
    "ChunkKV",
    "Composed",
    "DuoAttention",
    "ExpectedAttention",
    "FullCache",
    "KVPolicy",
    "KeyDiff",
    "KeyNorm",
    "LagKV",
    "LatentKVCache",
    "Merging",
    "ObservedAttention",
    "PagedKVCache",
    "PolicyCache",
    "PyramidKV",
    "QFilter",
    "Quest",
    "RandomPolicy",
    "SlidingWindow",
    "SnapKV",
    "StreamingLLM",
    "ThinK",
    "apply_rope",
    "attention_kind",
    "attention_metrics",
    "bytes_per_token",
    "decode_attention",
    "decode_nll",
    "duo_attention_scores",
    "elements_per_token",
    "kept_mask",
    "make_policy",
    "mla_absorb_query",
    "mla_decode_attention",
    "mla_output",
    "page_metrics",
    "pyramid_budgets",
    "qfilters_from_queries",
    "quest_page_scores",
    "quest_select",
    "window_attention_mass",
]

_ = _decode_upkeep  # kept importable as sparseforge.kv._decode_upkeep (tests call it)


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
