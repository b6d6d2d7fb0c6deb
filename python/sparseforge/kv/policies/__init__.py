"""The KV policies, one module each, and the registry :data:`POLICIES` by name.

New policies (kvpress-style presses included) are new modules here, registered below."""

from __future__ import annotations

from typing import Any

from ..budgets import budget_from
from .adakv import AdaKV
from .base import KVPolicy
from .full import FullCache
from .h2o import H2O
from .key_norm import KeyNorm
from .pyramidkv import PyramidKV
from .quest import Quest
from .random import RandomPolicy
from .sliding_window import SlidingWindow
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .tova import TOVA

__all__ = [
    "H2O",
    "POLICIES",
    "TOVA",
    "AdaKV",
    "FullCache",
    "KVPolicy",
    "KeyNorm",
    "PyramidKV",
    "Quest",
    "RandomPolicy",
    "SlidingWindow",
    "SnapKV",
    "StreamingLLM",
    "make_policy",
]

POLICIES: dict[str, type[KVPolicy]] = {
    p.name: p
    for p in (
        FullCache,
        SlidingWindow,
        StreamingLLM,
        H2O,
        TOVA,
        SnapKV,
        PyramidKV,
        AdaKV,
        Quest,
        RandomPolicy,
        KeyNorm,
    )
}


def make_policy(
    name: str,
    budget: Any = None,
    *,
    tokens: int | None = None,
    keep: float | None = None,
    compression_ratio: float | None = None,
    **options: Any,
) -> KVPolicy:
    """A policy from :data:`POLICIES` by name (``"h2o"``, ``"quest"``, ...).

    The budget: ``budget`` (an int = tokens, a float = the kept fraction, a per-layer list or
    a :class:`~sparseforge.kv.Budget`), or exactly one of ``tokens=``, ``keep=`` (kept
    fraction) and ``compression_ratio=`` (kvpress: the fraction removed). ``evict="prefill"``
    or ``"decode"`` chooses when an evicting policy holds its budget."""
    if name not in POLICIES:
        raise ValueError(f"name: unknown KV policy {name!r}; known: {sorted(POLICIES)}")
    b = budget_from(budget, tokens=tokens, keep=keep, compression_ratio=compression_ratio)
    return POLICIES[name](b, **options)
