"""Parity harness against NVIDIA/kvpress: the same model, token ids and compression ratio
through kvpress (transformers + a press) and through sparseforge (``LlamaModel.step`` +
:class:`sparseforge.kv.PolicyCache`), compared by the perplexity of a continuation.

Protocol ("perplexity per context"), the same on both sides:

1. the context ``ids[:T]`` is prefilled in one chunk; the press / policy compresses each
   layer's cache once, after the layer's exact causal attention (kvpress's forward hook;
   our ``PolicyCache`` prefill);
2. the continuation ``ids[T:]`` is fed after it at positions ``T, T+1, ...`` (kvpress's
   ``pipeline.generate_answer``: explicit ``position_ids``; nothing more is evicted --
   kvpress presses are prefill-only, so decode-time policies run as :class:`PrefillOnly`);
3. the result is the mean NLL (nats) of ``ids[T+1:]``, each token predicted from the
   logits of the token before it.

kvpress runs on a transformers ``LlamaForCausalLM`` loaded from :func:`export_hf` of the
same :class:`LlamaModel`, so both sides hold the same float32 weights (SmolLM2's GGUF
dequantised, or a small random Llama). Needs torch, transformers and kvpress (0.5.5: it pins
``transformers<5.3``); importing this module does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import sparseforge as sf
from sparseforge import models as sm

kv = sf.kv


def n_kept(k_len: int, compression_ratio: float) -> int:
    """kvpress ``utils.compute_n_kept``: ``max(1, int(k_len * (1 - r)))`` (float arithmetic,
    so ``r = 0.9`` on 1000 tokens keeps 99, not 100)."""
    if compression_ratio >= 1.0:
        return 0
    return max(1, int(k_len * (1 - compression_ratio)))


class PrefillOnly(kv.KVPolicy):
    """Compress the prompt with ``inner``'s prefill, then decode densely with no eviction
    (kvpress semantics for every press: compression at prefill only)."""

    name = "prefill_only"

    def __init__(self, inner: kv.KVPolicy) -> None:
        super().__init__(None, group_reduce=inner.group_reduce)
        self.budget = inner.budget
        self.inner = inner

    def _after_prefill(self, cache: Any, layer: int, q: Any, k: Any, nt: Any) -> None:
        self.inner._after_prefill(cache, layer, q, k, nt)

    def reset(self) -> None:
        super().reset()
        self.inner.reset()


# ---------------------------------------------------------------------------------------
# The two sides


def hf_model(model: sm.LlamaModel, directory: Path) -> Any:
    """transformers' model of the same weights (float32, sdpa attention: kvpress's AdaKV
    refuses eager)."""
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    if not (directory / "config.json").is_file():
        sm.export_hf(model, directory, tokenizer=False, overwrite=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="sdpa"
    )
    hf.eval()
    return hf


def _nll_rows(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    lg = logits.astype(np.float64)
    m = lg.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=-1))
    return np.asarray(lse - lg[np.arange(len(targets)), targets])


def kvpress_nll(hf: Any, press: Any, ids: np.ndarray, T: int) -> np.ndarray:
    """NLL (nats, float64) of ``ids[T+1:]`` after ``press`` compressed the context
    ``ids[:T]``; ``press=None`` is the full cache."""
    import contextlib

    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    ctx = torch.tensor(ids[None, :T], dtype=torch.long)
    cont = torch.tensor(ids[None, T:], dtype=torch.long)
    with torch.no_grad():
        with press(hf) if press is not None else contextlib.nullcontext():
            hf.model(input_ids=ctx, past_key_values=cache)
        # One token at a time, as generation does: a chunk fails in kvpress for AdaKV (its
        # fake-key search finds no hyperplane for a chunk's queries) and PyramidKV (the
        # causal mask is sized from layer 0's cache length).
        pos = torch.arange(T, ids.size).unsqueeze(0)
        logits = torch.cat(
            [
                hf(
                    input_ids=cont[:, i : i + 1],
                    past_key_values=cache,
                    position_ids=pos[:, i : i + 1],
                ).logits[0]
                for i in range(cont.shape[1] - 1)
            ]
        )
    return _nll_rows(logits.float().numpy(), ids[T + 1 :])


def ours_nll(model: sm.LlamaModel, policy: kv.KVPolicy | None, ids: np.ndarray, T: int) -> Any:
    """The same through ``PolicyCache``: ``(nll, cache)``."""
    cache = kv.PolicyCache(model, policy if policy is not None else kv.FullCache())
    model.step(ids[:T], cache)
    logits = model.step(ids[T:], cache)
    return _nll_rows(logits[:-1], ids[T + 1 :]), cache


# ---------------------------------------------------------------------------------------
# Pairs: (kvpress press, our policy) for a compression ratio and context length


@dataclass(frozen=True)
class Pair:
    name: str
    kvpress: Callable[[float], Any]  # compression_ratio -> press
    ours: Callable[[float, int, int], kv.KVPolicy]  # (ratio, context, n_layers) -> policy


def import_kvpress() -> Any:
    """``import kvpress`` with its import-time warnings silenced (fire imports ``pipes``,
    deprecated since Python 3.11; pytest turns warnings into errors)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import kvpress

    return kvpress


def pairs(window: int = 64) -> dict[str, Pair]:
    kp = import_kvpress()

    w = window

    def snap(r: float, T: int) -> kv.SnapKV:
        return kv.SnapKV(n_kept(T, r), window=w)

    out = [
        Pair("snapkv", lambda r: kp.SnapKVPress(r, window_size=w), lambda r, T, n: snap(r, T)),
        Pair(
            "adakv",
            lambda r: kp.AdaKVPress(kp.SnapKVPress(r, window_size=w)),
            lambda r, T, n: kv.AdaKV(n_kept(T, r), scorer=snap(r, T)),
        ),
        Pair(
            "streaming_llm",
            lambda r: kp.StreamingLLMPress(r, n_sink=4),
            lambda r, T, n: PrefillOnly(kv.StreamingLLM(n_kept(T, r), sinks=4)),
        ),
        Pair("tova", lambda r: kp.TOVAPress(r), lambda r, T, n: PrefillOnly(kv.TOVA(n_kept(T, r)))),
        Pair("key_norm", lambda r: kp.KnormPress(r), lambda r, T, n: kv.KeyNorm(n_kept(T, r))),
        Pair(
            "pyramidkv",
            lambda r: kp.PyramidKVPress(r, window_size=w),
            lambda r, T, n: kv.PyramidKV(n_kept(T, r), window=w),
        ),
    ]
    return {p.name: p for p in out}


def compare(
    model: sm.LlamaModel, hf: Any, pair: Pair, ids: np.ndarray, T: int, ratio: float
) -> tuple[float, float, Any]:
    """Mean NLL of the continuation: (kvpress, ours, our cache)."""
    theirs = kvpress_nll(hf, pair.kvpress(ratio), ids, T)
    mine, cache = ours_nll(model, pair.ours(ratio, T, model.config.n_layers), ids, T)
    return float(theirs.mean()), float(mine.mean()), cache


def perplexity(nll: float) -> float:
    return math.exp(nll)
