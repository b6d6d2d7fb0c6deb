"""Perplexity with the standard protocol of the SparseGPT / Wanda evaluation code.

The text is tokenized once into one stream (or given as token ids), cut into consecutive
non-overlapping windows of ``seqlen`` tokens (a trailing partial window is dropped), and
each window runs through the model on its own from position 0. Inside a window every
token but the first is scored given its prefix in the window, so a window scores
``seqlen - 1`` tokens, and the perplexity is ``exp`` of the mean negative log-likelihood
over all scored tokens (IST-DASLab/sparsegpt ``llama_eval``, locuslab/wanda
``lib/eval.py eval_ppl``: their per-window mean times ``seqlen`` over ``windows * seqlen``
is the same number, since every window scores as many tokens).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _progress
from .llama import Hooks, LlamaModel
from .tokenizer import check_token_ids

__all__ = ["PerplexityResult", "default_seqlen", "perplexity", "token_stream"]


@dataclass(frozen=True)
class PerplexityResult:
    """What :func:`perplexity` measured.

    Attributes
    ----------
    ppl : float
        ``exp(nll_mean)``.
    nll_mean : float
        Mean negative log-likelihood in nats per scored token (float64 sum).
    tokens_scored : int
        Predicted tokens: ``windows * (seqlen - 1)``.
    windows : int
        Windows of ``seqlen`` tokens evaluated.
    seqlen : int
        Window length in tokens.
    tokens_total : int
        Tokens in the whole stream (the windows cover ``windows * seqlen`` of them).
    """

    ppl: float
    nll_mean: float
    tokens_scored: int
    windows: int
    seqlen: int
    tokens_total: int

    def __str__(self) -> str:
        return (
            f"perplexity {self.ppl:.4f} (nll {self.nll_mean:.4f} nats/token) over "
            f"{self.windows} windows of {self.seqlen} tokens, {self.tokens_scored} tokens "
            f"scored of {self.tokens_total}"
        )


def default_seqlen(model: LlamaModel) -> int:
    """``min(model.config.max_seq_len, 2048)``: the papers' 2048 where the model allows."""
    return min(int(model.config.max_seq_len), 2048)


def _int_arg(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    v = int(value)
    if v < low or (high is not None and v > high):
        bound = f"{low} <= {name} <= {high}" if high is not None else f"{name} >= {low}"
        raise ValueError(f"{name}: expected {bound}, got {v}")
    return v


def token_stream(
    model: LlamaModel,
    text_or_ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    bos: bool = True,
    name: str = "text_or_ids",
) -> npt.NDArray[np.int64]:
    """One token stream: ``model.tokenizer.encode(text, bos=bos)`` for a ``str``, otherwise
    the ids themselves (1-D, each in ``[0, vocab_size)``; ``bos`` is then ignored)."""
    if not isinstance(bos, bool):
        raise TypeError(f"bos: expected a bool, got {type(bos).__name__}")
    if isinstance(text_or_ids, str):
        if model.tokenizer is None:
            raise ValueError(
                f"{name}: got a str but the model has no tokenizer; pass token ids instead"
            )
        ids: Any = model.tokenizer.encode(text_or_ids, bos=bos)
    else:
        ids = text_or_ids
    arr = check_token_ids(ids, model.config.vocab_size, name)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def perplexity(
    model: LlamaModel,
    text_or_ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    seqlen: int | None = None,
    max_windows: int | None = None,
    bos: bool = True,
    hooks: Hooks | None = None,
    progress: bool | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text, standard protocol (see the module notes).

    Parameters
    ----------
    model : LlamaModel
    text_or_ids : str, or a 1-D sequence / array of token ids
        A ``str`` is encoded once with ``model.tokenizer`` (the caller joins documents,
        e.g. WikiText-2's test split with ``"\\n\\n"`` as the references do).
    seqlen : int, optional
        Window length, ``2 <= seqlen <= max_seq_len``; default
        ``min(max_seq_len, 2048)``.
    max_windows : int, optional
        Evaluate only the first ``max_windows`` windows (a quick estimate); default all.
    bos : bool
        For a ``str``: encode with the tokenizer's BOS at the start of the stream (only
        there: windows are not given their own BOS, as in the references).
    hooks : Hooks, optional
        Passed to the forward (e.g. activation sparsity through ``Hooks.linear``).
    progress : bool or None
        A progress bar over the windows on stderr: None shows it when stderr is a terminal
        (``SPARSEFORGE_PROGRESS=1`` forces it), True always, False never.

    Raises
    ------
    ValueError
        If the stream holds fewer than ``seqlen`` tokens (not one full window), naming
        ``text_or_ids``, the token count and the window length.
    """
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    max_len = int(model.config.max_seq_len)
    s = default_seqlen(model) if seqlen is None else _int_arg(seqlen, "seqlen", 2, max_len)
    mw = None if max_windows is None else _int_arg(max_windows, "max_windows", 1)
    _progress.check_progress(progress)
    ids = token_stream(model, text_or_ids, bos=bos)
    n = int(ids.size) // s
    if n == 0:
        raise ValueError(
            f"text_or_ids: {ids.size} tokens are shorter than one window: expected at least "
            f"seqlen={s} tokens (a longer text, or a smaller seqlen)"
        )
    if mw is not None:
        n = min(n, mw)
    total = 0.0
    with _progress.bar(n, "perplexity", unit="windows", progress=progress) as bar:
        for w in range(n):
            window = ids[w * s : (w + 1) * s]
            nll = model.nll(window) if hooks is None else model.nll(window, hooks=hooks)
            total += float(nll.sum())
            bar.note(f"ppl {math.exp(total / ((w + 1) * (s - 1))):.3f}")
            bar.update()
    scored = n * (s - 1)
    mean = total / scored
    return PerplexityResult(
        ppl=math.exp(mean),
        nll_mean=mean,
        tokens_scored=scored,
        windows=n,
        seqlen=s,
        tokens_total=int(ids.size),
    )
