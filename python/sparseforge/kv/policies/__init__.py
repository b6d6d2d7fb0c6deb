"""The KV policies, one module each, and the registry :data:`POLICIES` by name.

New policies (kvpress-style presses included) are new modules here, registered below."""

from __future__ import annotations

from typing import Any

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


def make_policy(name: str, budget: Any = None, **options: Any) -> KVPolicy:
    """A policy from :data:`POLICIES` by name (``"h2o"``, ``"quest"``, ...)."""
    if name not in POLICIES:
        raise ValueError(f"name: unknown KV policy {name!r}; known: {sorted(POLICIES)}")
    return POLICIES[name](budget, **options)
