"""kvpress-style presses beyond the built-in policies, one module each (NVIDIA/kvpress 0.5.5
``presses/*.py``): research scorers in Python on the ``score(cache, layer, q, k)`` path of
the score-once policies, and the presses that rewrite what they keep (ThinK's channel
pruning, merging, composition). The token presses are registered in
:data:`sparseforge.kv.POLICIES`; ThinK and Composed take other presses, not a budget."""

from __future__ import annotations

from ..policies import POLICIES
from .chunkkv import ChunkKV
from .composed import Composed
from .cur import CUR
from .expected_attention import ExpectedAttention
from .keydiff import KeyDiff
from .lagkv import LagKV
from .merging import Merging
from .qfilter import QFilter, qfilters_from_queries
from .think import ThinK

__all__ = [
    "CUR",
    "ChunkKV",
    "Composed",
    "ExpectedAttention",
    "KeyDiff",
    "LagKV",
    "Merging",
    "QFilter",
    "ThinK",
    "qfilters_from_queries",
]

POLICIES.update(
    {p.name: p for p in (ExpectedAttention, KeyDiff, LagKV, CUR, ChunkKV, QFilter, Merging)}
)
