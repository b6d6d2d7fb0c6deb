"""TOVA: Token Omission Via Attention."""

from __future__ import annotations

from typing import Any

from ..._validate import check_bool
from .._common import GroupReduce
from .base import EvictAt, _CorePolicy


class TOVA(_CorePolicy):
    """Token Omission Via Attention (schwartz-lab-NLP/TOVA ``src/tova_cache.py``): after each
    attention call, while the cache holds more than ``B`` tokens, drop the token with the
    lowest attention from the last query, averaged over all heads of the layer. Same tokens
    in every kv head (the kv heads' slot layouts stay identical). No sinks, no recent window;
    the new token may itself be dropped, as in the reference. Ties: the newer token goes.
    ``keep_last=True`` pins the prompt's last token at prefill, as kvpress's ``TOVAPress``
    does (its score above every other)."""

    name = "tova"
    decode_evicts = True

    def __init__(
        self,
        budget: Any,
        *,
        keep_last: bool = False,
        group_reduce: GroupReduce = "mean",
        evict: EvictAt | None = None,
    ) -> None:
        super().__init__(budget, group_reduce=group_reduce)
        self.keep_last = check_bool(keep_last, "keep_last")
        self._init_core(evict, keep_last=self.keep_last)
