"""kvpress-style presses beyond the built-in policies, one module each (NVIDIA/kvpress 0.5.5
``presses/*.py``): research scorers in Python on the ``score(cache, layer, q, k)`` path of
the score-once policies, and the presses that rewrite what they keep (ThinK's channel
pruning, merging, composition). The token presses are registered in
:data:`sparseforge.kv.POLICIES`; ThinK and Composed take other presses and DuoAttention
head scores, not a budget."""

from __future__ import annotations

from ..policies import POLICIES
from .chunkkv import ChunkKV
from .composed import Composed
from .cur import CUR
from .duo_attention import DuoAttention, duo_attention_scores
from .expected_attention import ExpectedAttention
from .keydiff import KeyDiff
from .lagkv import LagKV
from .merging import Merging
from .observed_attention import ObservedAttention
from .qfilter import QFilter, qfilters_from_queries
from .think import ThinK

__all__ = [
    "CUR",
    "ChunkKV",
    "Composed",
    "DuoAttention",
    "ExpectedAttention",
    "KeyDiff",
    "LagKV",
    "Merging",
    "ObservedAttention",
    "QFilter",
    "ThinK",
    "duo_attention_scores",
    "qfilters_from_queries",
]

POLICIES.update(
    {
        p.name: p
        for p in (
            ExpectedAttention,
            KeyDiff,
            LagKV,
            CUR,
            ChunkKV,
            QFilter,
            Merging,
            ObservedAttention,
        )
    }
)
