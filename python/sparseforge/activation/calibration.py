"""Calibration: ActivationStats (one histogram per linear input), calibrate(), model_signature()."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _progress
from .._validate import check_int
from ..models.llama import Hooks, LlamaModel
from ._common import F32Array, _block_of, _dense, _model_arg, _proj_of, _silu
from .histogram import Histogram

__all__ = ["ActivationStats", "calibrate", "model_signature"]


def model_signature(model: LlamaModel) -> dict[str, Any]:
    """The facts a thresholds table or predictor must match: arch, layers, widths, heads."""
    c = _model_arg(model).config
    return {
        "arch": c.arch,
        "n_layers": int(c.n_layers),
        "dim": int(c.dim),
        "hidden_dim": int(c.hidden_dim),
        "n_heads": int(c.n_heads),
        "n_kv_heads": int(c.n_kv_heads),
        "head_dim": int(c.head_dim),
    }


@dataclass
class ActivationStats:
    """Histograms of a model's activations over calibration text (:func:`calibrate`).

    Attributes
    ----------
    linear : dict str -> Histogram
        Per linear weight name, the histogram of its input (q/k/v map to one shared object).
    gate : dict int -> Histogram
        Per block, ``silu(gate x)`` (CATS).
    heads : dict int -> Histogram
        Per block, the L2 norm of each attention head's output (``(T, n_heads)`` values),
        the Deja Vu head labels.
    signature : dict
        :func:`model_signature` of the calibrated model.
    tokens : int
        Tokens seen.
    """

    linear: dict[str, Histogram]
    gate: dict[int, Histogram]
    heads: dict[int, Histogram]
    signature: dict[str, Any]
    tokens: int = 0

    def check_model(self, model: LlamaModel) -> None:
        _check_signature(self.signature, model, "stats")


def _check_signature(sig: dict[str, Any], model: LlamaModel, what: str) -> None:
    want = model_signature(model)
    diff = [f"{k}={sig.get(k)!r} (model: {v!r})" for k, v in want.items() if sig.get(k) != v]
    if diff:
        raise ValueError(f"{what}: made for another model: " + ", ".join(diff))


def _windows(
    model: LlamaModel, ids: Any, seqlen: int | None, max_windows: int | None
) -> list[npt.NDArray[np.int64]]:
    from ..models.perplexity import default_seqlen, token_stream

    s = default_seqlen(model) if seqlen is None else check_int(seqlen, "seqlen", 2)
    if s > model.config.max_seq_len:
        raise ValueError(f"seqlen: {s} exceeds max_seq_len={model.config.max_seq_len}")
    stream = token_stream(model, ids, name="ids")
    n = stream.size // s
    if max_windows is not None:
        n = min(n, check_int(max_windows, "max_windows", 1))
    if n == 0:
        raise ValueError(f"ids: {stream.size} tokens are shorter than one window of {s}")
    return [stream[w * s : (w + 1) * s] for w in range(n)]


def calibrate(
    model: LlamaModel,
    ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    seqlen: int | None = None,
    max_windows: int | None = None,
    progress: bool | None = None,
) -> ActivationStats:
    """Stream calibration text through the dense model and histogram every linear's input,
    ``silu(gate)`` and the per-head attention output norms.

    Parameters
    ----------
    model : LlamaModel
    ids : str (encoded with the model's tokenizer) or a 1-D sequence of token ids
    seqlen, max_windows : int, optional
        Consecutive windows of ``seqlen`` tokens (default ``min(max_seq_len, 2048)``), at
        most ``max_windows`` of them.
    progress : bool or None
        A progress bar over the windows on stderr: None shows it when stderr is a terminal
        (``SPARSEFORGE_PROGRESS=1`` forces it), True always, False never.
    """
    model = _model_arg(model)
    _progress.check_progress(progress)
    c = model.config
    linear: dict[str, Histogram] = {}
    gate: dict[int, Histogram] = {i: Histogram() for i in range(c.n_layers)}
    heads: dict[int, Histogram] = {i: Histogram() for i in range(c.n_layers)}
    for i in range(c.n_layers):
        names = model.linear_names(i)
        shared = Histogram()
        for n in names[:3]:
            linear[n] = shared
        for n in names[3:]:
            linear[n] = Histogram()

    def linear_input(name: str, x: F32Array) -> None:
        p = _proj_of(name)
        if p in ("k", "v", "up"):
            return  # same input as q / gate
        linear[name].update(x)
        if p == "o":
            T = x.shape[0]
            norms = np.linalg.norm(x.reshape(T, c.n_heads, c.head_dim), axis=2)
            heads[_block_of(name)].update(norms)

    def linear_fn(name: str, x: F32Array) -> F32Array | None:
        if _proj_of(name) != "gate":
            return None
        g = _dense(model, name, x)
        gate[_block_of(name)].update(_silu(g))
        return g

    hooks = Hooks(linear_input=linear_input, linear=linear_fn)
    tokens = 0
    windows = _windows(model, ids, seqlen, max_windows)
    with _progress.bar(len(windows), "calibrate", unit="windows", progress=progress) as bar:
        for w in windows:
            model.forward(w, hooks=hooks)
            tokens += int(w.size)
            bar.update()
    # gate and up share one input: separate objects were filled identically; share one.
    for i in range(c.n_layers):
        names = model.linear_names(i)
        linear[names[5]] = linear[names[4]]
    return ActivationStats(linear, gate, heads, model_signature(model), tokens)


def __dir__() -> list[str]:
    return sorted(__all__)
