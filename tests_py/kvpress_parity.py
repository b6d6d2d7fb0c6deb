"""Parity harness against NVIDIA/kvpress: the same model, token ids and compression ratio
through kvpress (transformers + a press) and through sparseforge (``LlamaModel.step`` +
:class:`sparseforge.kv.PolicyCache`), compared by the perplexity of a continuation.

Protocol ("perplexity per context"), the same on both sides:

1. the context ``ids[:T]`` is prefilled in one chunk; the press / policy compresses each
   layer's cache once, after the layer's exact causal attention (kvpress's forward hook;
   our ``PolicyCache`` prefill);
2. the continuation ``ids[T:]`` is fed after it at positions ``T, T+1, ...`` (kvpress's
   ``pipeline.generate_answer``: explicit ``position_ids``; nothing more is evicted --
   kvpress presses are prefill-only, so decode-time policies run with ``evict="prefill"``);
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


# ---------------------------------------------------------------------------------------
# The two sides


def hf_model(model: sm.LlamaModel, directory: Path, attn: str = "sdpa") -> Any:
    """transformers' model of the same weights (float32; sdpa attention, since kvpress's
    AdaKV refuses eager; ObservedAttention needs ``attn="eager"``)."""
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    if not (directory / "config.json").is_file():
        sm.export_hf(model, directory, tokenizer=False, overwrite=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation=attn
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
    ratios: tuple[float, ...] | None = None  # where the default ratios do not suit the press
    tokens: bool = True  # compresses tokens (ThinK compresses channels)
    eager: bool = False  # kvpress needs the eager attention matrix


def import_kvpress() -> Any:
    """``import kvpress`` with its import-time warnings silenced (fire imports ``pipes``,
    deprecated since Python 3.11; pytest turns warnings into errors)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import kvpress

    return kvpress


class _QRecorder(kv.KVPolicy):
    """Keeps every token; records each layer's prefill queries (Q-Filter calibration)."""

    name = "q_recorder"
    evicts = False

    def __init__(self) -> None:
        super().__init__(None)
        self.q: dict[int, np.ndarray] = {}

    def _after_prefill(self, cache: Any, layer: int, q: Any, k: Any, nt: Any) -> None:
        self.q[layer] = np.array(q)


def calibrate_qfilters(model: sm.LlamaModel, ids: np.ndarray) -> np.ndarray:
    """Q-Filters (n_layers, Hkv, D) from the queries of one prefill of ``ids`` (our forward)
    with :func:`sparseforge.kv.qfilters_from_queries` -- kvpress downloads its filters from
    the hub instead, so both sides are handed these."""
    rec = _QRecorder()
    model.step(ids, kv.PolicyCache(model, rec))
    c = model.config
    return np.stack([kv.qfilters_from_queries(rec.q[i], c.n_kv_heads) for i in range(c.n_layers)])


def _qfilter_press(kp: Any, r: float, filters: np.ndarray) -> Any:
    import torch

    press = kp.QFilterPress(r)
    press.q_filters = torch.tensor(filters, dtype=torch.float32)
    press.post_init_from_model = lambda model: None  # no hub download
    return press


def _duo_press(kp: Any, r: float, scores: np.ndarray, sink: int, recent: int) -> Any:
    import torch

    press = kp.DuoAttentionPress(head_compression_ratio=r)
    press.sink_size, press.recent_size = sink, recent
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    n = round(scores.size * r)
    if n > 0:  # kvpress post_init_from_model, with our scores instead of the hub's
        idx = np.argsort(scores, axis=None, kind="stable")[:n]
        mask[np.unravel_index(idx, scores.shape)] = True
    press.streaming_mask = mask
    press.post_init_from_model = lambda model: None
    return press


def pairs(
    window: int = 64,
    qfilters: np.ndarray | None = None,
    duo: tuple[np.ndarray, int, int] | None = None,
    lag_size: int = 128,
    lag_ratios: tuple[float, ...] = (0.25, 0.5),
    n_layers: int = 3,
) -> dict[str, Pair]:
    """(kvpress press, our policy) by name. ``qfilters`` (n_layers, Hkv, D) enables the
    Q-Filter pair, ``duo`` (head scores, sink, recent) the DuoAttention pair (``r`` is then
    the fraction of streaming heads). LagKV's rank scores tie across partitions and
    torch.topk breaks ties in no documented order, so its pair runs at ``lag_ratios`` where
    the cut falls between tie groups (see the LagKV docstring)."""
    kp = import_kvpress()

    w = window

    def layer_ratios(r: float) -> list[float]:  # from 1.2 r (first layer) to 0.8 r (last)
        return [min(0.95, r * (1.2 - 0.4 * i / max(n_layers - 1, 1))) for i in range(n_layers)]

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
            lambda r, T, n: kv.StreamingLLM(n_kept(T, r), sinks=4, evict="prefill"),
        ),
        Pair(
            "tova",
            lambda r: kp.TOVAPress(r),
            lambda r, T, n: kv.TOVA(n_kept(T, r), evict="prefill"),
        ),
        Pair("key_norm", lambda r: kp.KnormPress(r), lambda r, T, n: kv.KeyNorm(n_kept(T, r))),
        Pair(
            "pyramidkv",
            lambda r: kp.PyramidKVPress(r, window_size=w),
            lambda r, T, n: kv.PyramidKV(n_kept(T, r), window=w),
        ),
        # presses added in sparseforge.kv.presses
        Pair(
            "expected_attention",
            lambda r: kp.ExpectedAttentionPress(r),
            lambda r, T, n: kv.ExpectedAttention(n_kept(T, r)),
        ),
        Pair(
            "adakv_expected",
            lambda r: kp.AdaKVPress(kp.ExpectedAttentionPress(r)),
            lambda r, T, n: kv.AdaKV(n_kept(T, r), scorer=kv.ExpectedAttention(n_kept(T, r))),
        ),
        Pair("keydiff", lambda r: kp.KeyDiffPress(r), lambda r, T, n: kv.KeyDiff(n_kept(T, r))),
        Pair(
            "observed_attention",
            lambda r: kp.ObservedAttentionPress(r),
            lambda r, T, n: kv.ObservedAttention(n_kept(T, r)),
            eager=True,
        ),
        Pair(  # per-layer ratios: kvpress's wrapper, our per-layer budget
            "per_layer",
            lambda r: kp.PerLayerCompressionPress(
                kp.SnapKVPress(window_size=w), compression_ratios=layer_ratios(r)
            ),
            lambda r, T, n: kv.SnapKV([n_kept(T, x) for x in layer_ratios(r)], window=w),
        ),
        Pair("cur", lambda r: kp.CURPress(r), lambda r, T, n: kv.CUR(n_kept(T, r))),
        Pair(
            "lagkv",
            lambda r: kp.LagKVPress(r, lag_size=lag_size),
            lambda r, T, n: kv.LagKV(n_kept(T, r), lag_size=lag_size),
            ratios=lag_ratios,
        ),
        Pair(
            "chunkkv",
            lambda r: kp.ChunkKVPress(kp.SnapKVPress(r, window_size=w), chunk_length=20),
            lambda r, T, n: kv.ChunkKV(1 - r, scorer=snap(r, T), chunk_length=20),
        ),
        Pair(
            "merging",
            lambda r: kp.MergingPress(press=kp.SnapKVPress(r, window_size=w)),
            lambda r, T, n: kv.Merging(scorer=snap(r, T)),
        ),
        Pair(
            "think",
            lambda r: kp.ThinKPress(key_channel_compression_ratio=r, window_size=32),
            lambda r, T, n: kv.ThinK(key_channel_ratio=r, window=32),
            tokens=False,
        ),
        Pair(
            "snapkv+think",
            lambda r: kp.ComposedPress(
                [kp.SnapKVPress(r, window_size=w), kp.ThinKPress(0.5, window_size=32)]
            ),
            lambda r, T, n: kv.Composed([snap(r, T), kv.ThinK(key_channel_ratio=0.5, window=32)]),
        ),
        Pair(
            "key_norm+keydiff",
            lambda r: kp.ComposedPress([kp.KnormPress(r), kp.KeyDiffPress(0.5)]),
            lambda r, T, n: kv.Composed([kv.KeyNorm(n_kept(T, r)), kv.KeyDiff(0.5)]),
        ),
    ]
    if qfilters is not None:
        f = qfilters
        out.append(
            Pair(
                "qfilter",
                lambda r: _qfilter_press(kp, r, f),
                lambda r, T, n: kv.QFilter(n_kept(T, r), filters=f),
            )
        )
    if duo is not None:
        hs, sink, recent = duo
        out.append(
            Pair(
                "duo_attention",
                lambda r: _duo_press(kp, r, hs, sink, recent),
                lambda r, T, n: kv.DuoAttention(
                    hs, head_compression_ratio=r, sink_size=sink, recent_size=recent
                ),
                tokens=False,
            )
        )
    return {p.name: p for p in out}


def compare(
    model: sm.LlamaModel,
    hf: Any,
    pair: Pair,
    ids: np.ndarray,
    T: int,
    ratio: float,
    hf_eager: Any = None,
) -> tuple[float, float, Any]:
    """Mean NLL of the continuation: (kvpress, ours, our cache). ``hf_eager``: the same
    model with eager attention, for the pairs that need it."""
    theirs = kvpress_nll(hf_eager if pair.eager else hf, pair.kvpress(ratio), ids, T)
    mine, cache = ours_nll(model, pair.ours(ratio, T, model.config.n_layers), ids, T)
    return float(theirs.mean()), float(mine.mean()), cache


def perplexity(nll: float) -> float:
    return math.exp(nll)
