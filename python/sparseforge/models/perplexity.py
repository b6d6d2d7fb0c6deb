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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _progress
from .._validate import check_bool, check_int
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
        Tokens in the stream (the windows cover ``windows * seqlen`` of them); with
        ``max_windows`` and a ``str``, the stream is the prefix of the text that was
        encoded (a little more than the windows need), not the whole text.
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


_int_arg = check_int  # the one int check (sparseforge._validate), under its old local name


_MARGIN_TOKENS = 64


def _last_word_start(text: str, end: int) -> int:
    """The last position ``k <= end`` with ``text[k] == " "`` after a non-space (a cut no
    token crosses), or 0 when there is none."""
    k = text.rfind(" ", 0, end + 1)
    while k > 0 and text[k - 1] == " ":
        k = text.rfind(" ", 0, k)
    return max(k, 0)


def _encode_prefix(tokenizer: Any, text: str, bos: bool, max_tokens: int) -> list[int]:
    """The ids of a prefix of ``text`` holding at least ``max_tokens`` tokens (the whole
    text when it has fewer): the prefix grows by doubling and ends before a space that
    follows a non-space, where pre-tokenizers split (GPT-2 style byte-level BPE,
    SentencePiece) and no llama2.c merge crosses (see ``Llama2cTokenizer``), so its first
    ``max_tokens`` ids are those of the whole text; a margin of 64 tokens is kept."""
    chars = 4 * (max_tokens + _MARGIN_TOKENS) + 256  # English: 3-5 characters per token
    while chars < len(text):
        cut = _last_word_start(text, chars)
        if cut > 0:
            ids: list[int] = tokenizer.encode(text[:cut], bos=bos)
            if len(ids) >= max_tokens + _MARGIN_TOKENS:
                return ids
        chars *= 2
    result: list[int] = tokenizer.encode(text, bos=bos)
    return result


def token_stream(
    model: LlamaModel,
    text_or_ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    bos: bool = True,
    name: str = "text_or_ids",
    max_tokens: int | None = None,
) -> npt.NDArray[np.int64]:
    """One token stream: ``model.tokenizer.encode(text, bos=bos)`` for a ``str``, otherwise
    the ids themselves (1-D, each in ``[0, vocab_size)``; ``bos`` is then ignored).

    ``max_tokens``: only the first ``max_tokens`` ids are needed; a ``str`` is then
    encoded only as far as needed (a prefix ending between words, a little longer than
    ``max_tokens`` tokens; see ``_encode_prefix``) instead of whole.
    """
    check_bool(bos, "bos")
    if isinstance(text_or_ids, str):
        if model.tokenizer is None:
            raise ValueError(
                f"{name}: got a str but the model has no tokenizer; pass token ids instead"
            )
        if max_tokens is None:
            ids: Any = model.tokenizer.encode(text_or_ids, bos=bos)
        else:
            ids = _encode_prefix(
                model.tokenizer, text_or_ids, bos, _int_arg(max_tokens, "max_tokens", 1)
            )
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
        A ``str`` is then encoded only as far as these windows need (the same ids as
        encoding it whole; see :func:`token_stream`'s ``max_tokens``).
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
    ids = token_stream(model, text_or_ids, bos=bos, max_tokens=None if mw is None else mw * s)
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
