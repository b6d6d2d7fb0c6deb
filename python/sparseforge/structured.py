"""Structured pruning of a :class:`~sparseforge.models.LlamaModel`: models that are really
smaller (narrower matrices, fewer heads, fewer blocks), not masked.

* :func:`importance` — Minitron's activation importance from calibration text (NVIDIA
  Model-Optimizer ``mcore_minitron`` / ``nas/plugins/megatron.py``): MLP neurons, attention
  heads and GQA groups, hidden (embedding) channels, whole blocks.
* :func:`width` — keep the most important neurons, heads (whole GQA groups, optionally fewer
  query heads per group) and hidden channels; returns a new model with physically smaller
  weights and a consistent :class:`~sparseforge.models.LlamaConfig`.
* :func:`depth` — drop the least important blocks (or given ones).
* :func:`slicegpt` — SliceGPT (microsoft/TransformerCompression): fold the RMSNorm scales
  into the linears, rotate each block's residual stream onto its principal components and
  slice it to ``d'`` channels, with the residual shortcut matrices; :func:`fuse_norms` is
  its first step on its own.
* :func:`param_count` — parameters of a configuration (all, or the blocks only).

Importance statistics (one calibration pass over the dense model, every window of
``seqlen`` tokens counted as one "batch" element, ``|a|`` averaged over its tokens)::

    S_c      = sum over windows of (mean over tokens of |a_c|)^2     per channel c
    neuron j = sqrt(S_j)         a = the SwiGLU hidden, the input of down_proj
    head h   = || sqrt(S_c) for c in head h ||_2                     a = the input of o_proj
    group k  = || sqrt(S_c) for c in the heads of kv group k ||_2   (heads x head_dim)
    channel  = sum over blocks and both norms of sqrt(S_c)           a = each RMSNorm output
    block i  = sum over windows of (1 - mean over tokens of cos(x_in, x_out))

Everything is numpy float64 on top of the model's own forward (``LlamaModel.block`` with
:class:`~sparseforge.models.Hooks`); no compiled code is specific to this module.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _progress
from ._validate import check_bool, check_number
from .models.config import LlamaConfig
from .models.llama import LINEAR_SUFFIXES, Hooks, LlamaModel, _is_compressed
from .models.perplexity import _int_arg
from .models.pipeline import calibration_windows

__all__ = [
    "Importance",
    "depth",
    "fuse_norms",
    "importance",
    "param_count",
    "slicegpt",
    "width",
]

F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]

_Q, _K, _V, _O, _GATE, _UP, _DOWN = LINEAR_SUFFIXES
_BLOCK_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")
_PLACEHOLDER = np.zeros(0, dtype=np.float32)  # a weight a helper model never reads


# -- helpers -------------------------------------------------------------------------------


def _check_model(model: Any, what: str, *, sliced_ok: bool = False) -> LlamaModel:
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    if model.config.sliced and not sliced_ok:
        raise ValueError(
            f"model: {what} needs a model with one residual width (config.residual_dims is "
            "set: it was already sliced by slicegpt)"
        )
    return model


def _dense(model: LlamaModel, name: str) -> np.ndarray:
    w = model.weight(name)
    if _is_compressed(w) or not isinstance(w, np.ndarray):
        raise ValueError(
            f"model: {name} is a compressed {type(w).__name__}; structured pruning needs "
            "dense weights"
        )
    return w


def _take(
    model: LlamaModel, name: str, rows: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """A C-contiguous copy of ``weight[rows]`` or ``weight[rows][:, cols]`` (dtype kept)."""
    w = _dense(model, name)
    if cols is None:
        return np.ascontiguousarray(w[rows])
    return np.ascontiguousarray(w[np.ix_(rows, cols)])


def _biases(model: LlamaModel) -> list[str]:
    return sorted(n for n in model._weights if n.endswith(".bias"))


def _top(scores: np.ndarray, k: int) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` largest scores, ascending; ties go to the lower index."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def _new_model(
    model: LlamaModel, config: LlamaConfig, weights: dict[str, Any], what: str
) -> LlamaModel:
    source = f"{model.source} ({what})" if model.source else what
    return LlamaModel(
        config,
        weights,
        model.tokenizer,
        source=source,
        num_threads=model.num_threads,
        linear_backend=model.linear_backend,
    )


def _windows(
    model: LlamaModel, calib: Any, nsamples: int, seqlen: int | None, seed: int, bos: bool
) -> npt.NDArray[np.int64]:
    return calibration_windows(model, calib, nsamples=nsamples, seqlen=seqlen, seed=seed, bos=bos)


def param_count(config: LlamaConfig, *, blocks_only: bool = False) -> int:
    """Parameters of a model of ``config``: every tensor of ``config.weight_shapes()``
    (tied embeddings counted once), or with ``blocks_only`` the blocks' tensors only (the 7
    linears, the 2 norms and, for a sliced model, the 2 shortcut matrices per block; no
    embeddings, final norm or head). Biases are not counted."""
    if not isinstance(config, LlamaConfig):
        raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
    total = 0
    for name, shape in config.weight_shapes().items():
        if blocks_only and not name.startswith("model.layers."):
            continue
        total += math.prod(shape)
    return total


# -- importance ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Importance:
    """Minitron importance scores of one model (float64, larger = more important).

    Attributes
    ----------
    neurons : tuple of ndarray
        Per block, ``(hidden_dim,)``: MLP neurons (input channels of ``down_proj``).
    heads : tuple of ndarray
        Per block, ``(n_heads,)``: query heads (L2 over ``head_dim`` of the channel scores
        of ``o_proj``'s input).
    groups : tuple of ndarray
        Per block, ``(n_kv_heads,)``: GQA groups (L2 over the group's query heads and
        ``head_dim``).
    channels : ndarray
        ``(dim,)``: hidden channels, summed over every block's two RMSNorm outputs.
    layers : ndarray
        ``(n_layers,)``: ``sum over windows of (1 - mean cos(block input, block output))``.
    nsamples, seqlen : int
        Calibration windows used.
    config : LlamaConfig
        The configuration of the model the scores describe.
    """

    neurons: tuple[F64Array, ...]
    heads: tuple[F64Array, ...]
    groups: tuple[F64Array, ...]
    channels: F64Array
    layers: F64Array
    nsamples: int
    seqlen: int
    config: LlamaConfig


def importance(
    model: LlamaModel,
    calib: Any,
    *,
    nsamples: int = 32,
    seqlen: int | None = None,
    seed: int = 0,
    bos: bool = True,
    progress: bool | None = None,
) -> Importance:
    """Minitron activation importance of ``model``'s neurons, heads, GQA groups, hidden
    channels and blocks, from one forward pass over calibration windows (formulas in the
    module notes).

    Parameters
    ----------
    model : LlamaModel
        Not sliced (one residual width).
    calib : str, 1-D ids, or 2-D int array (nsamples, seqlen)
        Calibration text or tokens (:func:`sparseforge.models.calibration_windows`); a text
        shorter than one window raises ``ValueError`` naming ``calib``.
    nsamples, seqlen, seed, bos
        Calibration windows: ``nsamples`` windows of ``seqlen`` tokens (default
        ``min(max_seq_len, 2048)``) at random offsets drawn with ``seed``. Memory: one
        window's activations at a time.
    progress : bool or None
        A progress bar over the windows on stderr (None: when stderr is a terminal or
        ``SPARSEFORGE_PROGRESS=1``; False: quiet).

    Returns
    -------
    Importance
    """
    _check_model(model, "importance")
    _progress.check_progress(progress)
    c = model.config
    windows = _windows(model, calib, nsamples, seqlen, seed, bos)
    L = c.n_layers
    attn_in = np.zeros((L, c.dim))
    mlp_in = np.zeros((L, c.dim))
    o_in = np.zeros((L, c.q_dim))
    down_in = np.zeros((L, c.hidden_dim))
    layers = np.zeros(L)
    sinks = {_Q: attn_in, _GATE: mlp_in, _O: o_in, _DOWN: down_in}
    current = [0]

    def capture(name: str, x: np.ndarray) -> None:
        for suffix, acc in sinks.items():
            if name.endswith(suffix):
                m = np.abs(x).mean(axis=0, dtype=np.float64)
                acc[current[0]] += m * m
                return

    hooks = Hooks(linear_input=capture)
    bar = _progress.bar(len(windows), "importance", unit="windows", progress=progress)
    for w in windows:
        h = model.embed(w)
        for i in range(L):
            current[0] = i
            out = model.block(i, h, hooks=hooks)
            a = h.astype(np.float64)
            b = out.astype(np.float64)
            na = np.linalg.norm(a, axis=1)
            nb = np.linalg.norm(b, axis=1)
            cos = np.einsum("td,td->t", a, b) / np.maximum(na * nb, np.finfo(np.float64).tiny)
            layers[i] += 1.0 - float(cos.mean())
            h = out
        bar.update()
    bar.close()
    g = c.n_heads // c.n_kv_heads
    head_scores = np.sqrt(o_in).reshape(L, c.n_heads, c.head_dim)
    heads = np.sqrt((head_scores**2).sum(axis=2))
    groups = np.sqrt((heads**2).reshape(L, c.n_kv_heads, g).sum(axis=2))
    channels = (np.sqrt(attn_in) + np.sqrt(mlp_in)).sum(axis=0)
    return Importance(
        neurons=tuple(np.sqrt(down_in)),
        heads=tuple(heads),
        groups=tuple(groups),
        channels=channels,
        layers=layers,
        nsamples=int(windows.shape[0]),
        seqlen=int(windows.shape[1]),
        config=c,
    )


def _check_importance(imp: Any, model: LlamaModel) -> Importance:
    if not isinstance(imp, Importance):
        raise TypeError(
            f"importance: expected a sparseforge.structured.Importance (from importance()), "
            f"got {type(imp).__name__}"
        )
    if imp.config != model.config:
        raise ValueError(
            "importance: the scores were computed for another model configuration "
            f"({imp.config.dim=}, {imp.config.n_layers=}) than model's "
            f"({model.config.dim=}, {model.config.n_layers=})"
        )
    return imp


# -- width ---------------------------------------------------------------------------------


def _head_targets(c: LlamaConfig, n_heads: Any, n_kv_heads: Any) -> tuple[int, int]:
    g = c.n_heads // c.n_kv_heads
    if n_heads is None and n_kv_heads is None:
        return c.n_heads, c.n_kv_heads
    if n_kv_heads is None:
        nh = _int_arg(n_heads, "n_heads", 1, c.n_heads)
        if nh % g:
            raise ValueError(
                f"n_heads: {nh} breaks the GQA groups: each of the {c.n_kv_heads} kv heads "
                f"serves {g} query heads, so whole groups keep a multiple of {g} "
                "(give n_kv_heads too to keep fewer query heads per group)"
            )
        return nh, nh // g
    nkv = _int_arg(n_kv_heads, "n_kv_heads", 1, c.n_kv_heads)
    if n_heads is None:
        return nkv * g, nkv
    nh = _int_arg(n_heads, "n_heads", 1, c.n_heads)
    if nh % nkv:
        raise ValueError(
            f"n_heads: {nh} query heads cannot be shared evenly by n_kv_heads={nkv} GQA groups"
        )
    if nh // nkv > g:
        raise ValueError(
            f"n_heads: {nh} query heads over {nkv} groups is {nh // nkv} per group, more than "
            f"the {g} each group has (n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads})"
        )
    return nh, nkv


def width(
    model: LlamaModel,
    importance: Importance,
    *,
    hidden_dim: int | None = None,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    dim: int | None = None,
) -> LlamaModel:
    """Minitron width pruning: a new model keeping the most important MLP neurons, heads and
    hidden channels, with physically smaller weights.

    Parameters
    ----------
    model : LlamaModel
        Dense weights, not sliced. Not modified.
    importance : Importance
        From :func:`importance` on this model.
    hidden_dim : int, optional
        MLP neurons to keep per block, ``1 <= hidden_dim <= config.hidden_dim`` (rows of
        ``gate_proj``/``up_proj``, columns of ``down_proj``), each block its own top ones.
    n_heads, n_kv_heads : int, optional
        Attention heads to keep per block. A kv head goes with its query heads: the
        ``n_kv_heads`` GQA groups with the largest group importance are kept (k/v rows,
        their query heads' q rows and o columns). With ``n_heads`` alone whole groups go
        (``n_heads`` must be a multiple of ``n_heads / n_kv_heads`` of the model, else
        ``ValueError``); with both, each kept group keeps its ``n_heads / n_kv_heads`` most
        important query heads (must divide evenly, at most the group's size).
    dim : int, optional
        Hidden channels to keep, ``1 <= dim <= config.dim``: the same channels everywhere
        (embedding columns, every norm, the input columns of q/k/v/gate/up, the output rows
        of o/down, the head's columns). ``head_dim`` is kept.

    Returns
    -------
    LlamaModel
        The pruned model (new weights, float dtypes kept; the same tokenizer, threads and
        linear backend) with ``config`` = the old one with ``dim``, ``hidden_dim``,
        ``n_heads``, ``n_kv_heads`` replaced and ``head_dim`` explicit. Kept indices are in
        their original order.
    """
    _check_model(model, "width pruning")
    imp = _check_importance(importance, model)
    c = model.config
    hd = c.hidden_dim if hidden_dim is None else _int_arg(hidden_dim, "hidden_dim", 1, c.hidden_dim)
    nd = c.dim if dim is None else _int_arg(dim, "dim", 1, c.dim)
    nh, nkv = _head_targets(c, n_heads, n_kv_heads)
    g, g_new, D = c.n_heads // c.n_kv_heads, nh // nkv, c.head_dim
    ch = _top(imp.channels, nd)
    new_config = dataclasses.replace(
        c, dim=nd, hidden_dim=hd, n_heads=nh, n_kv_heads=nkv, head_dim=c.head_dim
    )
    weights: dict[str, Any] = {}
    vocab = np.arange(c.vocab_size)
    weights["model.embed_tokens.weight"] = _take(model, "model.embed_tokens.weight", vocab, ch)
    weights["model.norm.weight"] = _take(model, "model.norm.weight", ch)
    if not c.tied_embeddings:
        weights["lm_head.weight"] = _take(model, "lm_head.weight", vocab, ch)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        kept_groups = _top(imp.groups[i], nkv)
        kept_heads = np.concatenate(
            [k * g + _top(imp.heads[i][k * g : (k + 1) * g], g_new) for k in kept_groups]
        )
        q_rows = (kept_heads[:, None] * D + np.arange(D)).reshape(-1)
        kv_rows = (kept_groups[:, None] * D + np.arange(D)).reshape(-1)
        neurons = _top(imp.neurons[i], hd)
        for norm in _BLOCK_NORMS:
            weights[p + norm] = _take(model, p + norm, ch)
        weights[p + _Q] = _take(model, p + _Q, q_rows, ch)
        weights[p + _K] = _take(model, p + _K, kv_rows, ch)
        weights[p + _V] = _take(model, p + _V, kv_rows, ch)
        weights[p + _O] = _take(model, p + _O, ch, q_rows)
        weights[p + _GATE] = _take(model, p + _GATE, neurons, ch)
        weights[p + _UP] = _take(model, p + _UP, neurons, ch)
        weights[p + _DOWN] = _take(model, p + _DOWN, ch, neurons)
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            bias = f"{p}self_attn.{proj}.bias"
            if bias in model._weights:
                weights[bias] = np.ascontiguousarray(np.asarray(model.weight(bias))[rows])
    for name in _biases(model):
        if not name.startswith("model.layers."):
            weights[name] = model.weight(name)
    what = f"width-pruned: dim {nd}, hidden {hd}, heads {nh}/{nkv}"
    return _new_model(model, new_config, weights, what)


# -- depth ---------------------------------------------------------------------------------


def depth(
    model: LlamaModel,
    importance: Importance | None = None,
    *,
    n_layers: int | None = None,
    drop: Sequence[int] | None = None,
) -> LlamaModel:
    """Depth pruning: a new model without some blocks.

    Give either ``n_layers`` (keep that many blocks: those with the largest
    ``importance.layers``, ties to the lower index) or ``drop`` (the block indices to
    remove). The remaining blocks keep their order and are renumbered from 0; embeddings,
    the final norm and the head are unchanged.

    Raises
    ------
    ValueError
        Naming ``n_layers`` / ``drop``: both or neither given, out of range, duplicates, or
        nothing left.
    """
    _check_model(model, "depth pruning")
    c = model.config
    if (n_layers is None) == (drop is None):
        raise ValueError("n_layers: give exactly one of n_layers (with importance) or drop")
    if n_layers is not None:
        if importance is None:
            raise ValueError("importance: n_layers ranks blocks by importance; pass it")
        imp = _check_importance(importance, model)
        n = _int_arg(n_layers, "n_layers", 1, c.n_layers)
        keep = [int(k) for k in _top(imp.layers, n)]
    else:
        if isinstance(drop, (str, bytes)) or not isinstance(drop, Sequence):
            raise TypeError(
                f"drop: expected a sequence of block indices, got {type(drop).__name__}"
            )
        idx = [_int_arg(k, "drop", 0, c.n_layers - 1) for k in drop]
        if len(set(idx)) != len(idx):
            raise ValueError(f"drop: duplicate block indices in {list(drop)}")
        if len(idx) >= c.n_layers:
            raise ValueError(f"drop: removing {len(idx)} of {c.n_layers} blocks leaves none")
        keep = [k for k in range(c.n_layers) if k not in set(idx)]
    weights: dict[str, Any] = {}
    for name in list(c.weight_shapes()) + _biases(model):
        if not name.startswith("model.layers."):
            weights[name] = model.weight(name)
    for new, old in enumerate(keep):
        p_old, p_new = f"model.layers.{old}.", f"model.layers.{new}."
        for name in list(c.weight_shapes()) + _biases(model):
            if name.startswith(p_old):
                weights[p_new + name[len(p_old) :]] = model.weight(name)
    types = tuple(c.layer_types[k] for k in keep) if c.layer_types else ()
    new_config = dataclasses.replace(c, n_layers=len(keep), head_dim=c.head_dim, layer_types=types)
    dropped = [k for k in range(c.n_layers) if k not in keep]
    return _new_model(model, new_config, weights, f"depth-pruned: blocks {dropped} removed")


# -- SliceGPT ------------------------------------------------------------------------------


def fuse_norms(model: LlamaModel) -> LlamaModel:
    """SliceGPT's first step: fold every RMSNorm scale into the linears that read the norm
    (q/k/v, gate/up, the head: ``W <- W diag(w)``) and set the norms to ones; untie the
    head. The result computes the same function (up to float32 rounding).

    TransformerCompression also subtracts each embedding row's mean, which an RMSNorm model
    does not absorb (it only makes LayerNorm models' means vanish): not done here, so the
    fused model is the same function.

    Returns
    -------
    LlamaModel
        float32 weights, ``tied_embeddings=False``.
    """
    _check_model(model, "fuse_norms")
    fused = _fused_weights(model)
    weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in fused.items()}
    config = dataclasses.replace(
        model.config, tied_embeddings=False, head_dim=model.config.head_dim
    )
    return _new_model(model, config, weights, "norms fused")


def _fused_weights(model: LlamaModel) -> dict[str, Any]:
    """float64 weights with the norm scales folded in (norms -> ones, head untied);
    biases as they are."""
    c = model.config
    f64 = np.float64
    out: dict[str, Any] = {}
    out["model.embed_tokens.weight"] = np.asarray(_dense(model, "model.embed_tokens.weight"), f64)
    head = "model.embed_tokens.weight" if c.tied_embeddings else "lm_head.weight"
    final = np.asarray(_dense(model, "model.norm.weight"), f64)
    out["lm_head.weight"] = np.asarray(_dense(model, head), f64) * final[None, :]
    out["model.norm.weight"] = np.ones(c.dim)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        w_in = np.asarray(_dense(model, p + _BLOCK_NORMS[0]), f64)
        w_post = np.asarray(_dense(model, p + _BLOCK_NORMS[1]), f64)
        for s in (_Q, _K, _V):
            out[p + s] = np.asarray(_dense(model, p + s), f64) * w_in[None, :]
        for s in (_GATE, _UP):
            out[p + s] = np.asarray(_dense(model, p + s), f64) * w_post[None, :]
        for s in (_O, _DOWN):
            out[p + s] = np.asarray(_dense(model, p + s), f64)
        out[p + _BLOCK_NORMS[0]] = np.ones(c.dim)
        out[p + _BLOCK_NORMS[1]] = np.ones(c.dim)
    for name in _biases(model):
        out[name] = model.weight(name)
    return out


def _pca(H: F64Array, damping: float) -> F64Array:
    """Eigenvectors of ``H + damping * mean(diag H) * I`` by descending eigenvalue (float64,
    columns; TransformerCompression ``pca_calc``)."""
    H = H + damping * float(np.mean(np.diag(H))) * np.eye(H.shape[0])
    vals, vecs = np.linalg.eigh(H)
    order = np.argsort(-vals, kind="stable")
    Q: F64Array = np.ascontiguousarray(vecs[:, order])
    return Q


def _gram(states: F32Array) -> F64Array:
    X = states.reshape(-1, states.shape[-1]).astype(np.float64)
    G: F64Array = X.T @ X
    return G


def _f32(a: np.ndarray) -> F32Array:
    return np.ascontiguousarray(a, dtype=np.float32)


def _run(helper: LlamaModel, states: F32Array, hooks: Hooks | None, d_out: int) -> F32Array:
    out = np.empty((*states.shape[:2], d_out), dtype=np.float32)
    for j in range(states.shape[0]):
        out[j] = helper.block(0, states[j], hooks=hooks)
    return out


def _helper(model: LlamaModel, dims: tuple[int, int, int], block: dict[str, Any]) -> LlamaModel:
    """A one-block sliced model over ``block``'s weights (names under ``model.layers.0.``)
    for calibration; embeddings and head are placeholders it never reads."""
    config = dataclasses.replace(
        model.config,
        n_layers=1,
        residual_dims=dims,
        tied_embeddings=False,
        head_dim=model.config.head_dim,
    )
    weights: dict[str, Any] = {n: _PLACEHOLDER for n in config.weight_shapes()}
    weights.update(block)
    return LlamaModel(
        config, weights, None, num_threads=model.num_threads, linear_backend=model.linear_backend
    )


def _slice_dim(c: LlamaConfig, dim: Any, sparsity: Any, round_to: int) -> int:
    if (dim is None) == (sparsity is None):
        raise ValueError("dim: give exactly one of dim (the sliced width d') or sparsity")
    if dim is not None:
        d = _int_arg(dim, "dim", 1)
        if d > c.dim:
            raise ValueError(f"dim: d'={d} exceeds the model's dim={c.dim}")
        if d != c.dim and d % round_to:
            raise ValueError(f"dim: d'={d} is not a multiple of round_to={round_to}")
        return d
    check_number(sparsity, "sparsity", finite=False)
    s = float(sparsity)
    if not (0.0 <= s < 1.0):
        raise ValueError(f"sparsity: expected 0 <= sparsity < 1, got {sparsity}")
    if s == 0.0:
        return c.dim
    d = int(c.dim * (1.0 - s))
    d -= d % round_to
    if d < round_to:
        raise ValueError(
            f"sparsity: slicing {s:g} of dim={c.dim} leaves {int(c.dim * (1.0 - s))} channels, "
            f"fewer than round_to={round_to}"
        )
    return d


def slicegpt(
    model: LlamaModel,
    calib: Any,
    *,
    dim: int | None = None,
    sparsity: float | None = None,
    nsamples: int = 32,
    seqlen: int | None = None,
    seed: int = 0,
    bos: bool = True,
    damping: float = 0.01,
    round_to: int = 8,
    slice_head: bool = False,
    progress: bool | None = None,
) -> LlamaModel:
    """SliceGPT: rotate the residual stream of each block onto its principal components and
    keep the first ``d'`` (TransformerCompression ``rotate_and_slice_sequential``).

    Steps: :func:`fuse_norms`; PCA of the embeddings (``Q_0``: eigenvectors of the damped
    float64 Gram matrix ``sum X^T X + damping * mean(diag) I``, descending); embeddings
    ``E Q_0[:, :d']``. Then per block, with ``Q_in`` the rotation of its input: q/k/v
    ``W Q_in[:, :d']``; the signal between attention and MLP is computed with the sliced
    input, its PCA gives ``Q_mid``; o_proj ``Q_mid[:, :d']^T W``, gate/up ``W Q_mid[:, :d']``,
    attention shortcut ``Q_mid[:, :d']^T Q_in[:, :d']``; the block output (with the
    slicing so far) gives ``Q_out``; down_proj ``Q_out[:, :d']^T W``, MLP shortcut
    ``Q_out[:, :d']^T Q_mid[:, :d']``; the next block's input is the output rotated by
    ``Q_out`` and sliced. The head is ``W Q_last`` (not sliced unless ``slice_head``: the
    last block's output keeps ``dim`` channels, as TransformerCompression's default).

    At ``d' = dim`` nothing is sliced and the model computes the same function
    (computational invariance).

    Parameters
    ----------
    model : LlamaModel
        Dense weights, not sliced. Not modified.
    calib, nsamples, seqlen, seed, bos
        Calibration windows, as :func:`importance`.
    dim : int, optional
        The sliced width ``d'``: ``dim`` itself or a multiple of ``round_to`` below it.
    sparsity : float in [0, 1), optional
        Slicing fraction instead of ``dim``: ``d' = floor((1 - sparsity) dim)`` rounded down
        to a multiple of ``round_to`` (TransformerCompression's ``--sparsity``,
        ``--round-interval 8``).
    damping : float
        Fraction of the mean diagonal added before the eigendecomposition (0.01).
    slice_head : bool
        Also slice the last block's output and the head to ``d'``.
    progress : bool or None
        A progress bar over the blocks on stderr (None: when stderr is a terminal or
        ``SPARSEFORGE_PROGRESS=1``; False: quiet).

    Returns
    -------
    LlamaModel
        float32 weights; ``config.residual_dims`` holds the widths, the blocks carry
        ``attn_shortcut.weight`` / ``mlp_shortcut.weight``, the norms are ones (their mean
        runs over the original ``dim``), the head is untied.
    """
    _check_model(model, "slicegpt")
    c = model.config
    rt = _int_arg(round_to, "round_to", 1)
    d_new = _slice_dim(c, dim, sparsity, rt)
    check_number(damping, "damping", 0, None)
    check_bool(slice_head, "slice_head")
    _progress.check_progress(progress)
    damp = float(damping)
    windows = _windows(model, calib, nsamples, seqlen, seed, bos)
    L, d = c.n_layers, c.dim
    r = [d_new] * (2 * L + 1)
    if not slice_head:
        r[-1] = d
    fused = _fused_weights(model)
    out: dict[str, Any] = {}
    states = np.stack([model.embed(w) for w in windows])  # (n, T, d), original basis
    Q_in = _pca(_gram(states), damp)
    out["model.embed_tokens.weight"] = _f32(fused["model.embed_tokens.weight"] @ Q_in[:, : r[0]])
    states = _f32(states.astype(np.float64) @ Q_in[:, : r[0]])
    skip_mlp = _skip_mlp(c)
    bar = _progress.bar(L, f"slicegpt d'={d_new}", unit="blocks", progress=progress)
    for i in range(L):
        p = f"model.layers.{i}."
        r_in, r_mid, r_out = r[2 * i], r[2 * i + 1], r[2 * i + 2]
        Qi = Q_in[:, :r_in]
        blk: dict[str, Any] = {
            "model.layers.0." + _BLOCK_NORMS[0]: np.ones(r_in, np.float32),
            "model.layers.0." + _BLOCK_NORMS[1]: np.ones(d, np.float32),
        }
        for s in (_Q, _K, _V):
            blk["model.layers.0." + s] = _f32(fused[p + s] @ Qi)
        for name in fused:
            if name.startswith(p) and name.endswith(".bias"):
                blk["model.layers.0." + name[len(p) :]] = fused[name]
        # 1. the signal between attention and MLP, in the original basis
        blk["model.layers.0.attn_shortcut.weight"] = _f32(Qi)
        blk["model.layers.0." + _O] = _f32(fused[p + _O])
        blk["model.layers.0.mlp_shortcut.weight"] = np.eye(d, dtype=np.float32)
        helper = _helper(model, (r_in, d, d), blk)
        mids = _run(helper, states, Hooks(linear=skip_mlp), d)
        Q_mid = _pca(_gram(mids), damp)
        Qm = Q_mid[:, :r_mid]
        del mids
        # 2. the block's output with attention rotated and sliced, in the original basis
        blk["model.layers.0.attn_shortcut.weight"] = _f32(Qm.T @ Qi)
        blk["model.layers.0." + _O] = _f32(Qm.T @ fused[p + _O])
        blk["model.layers.0." + _BLOCK_NORMS[1]] = np.ones(r_mid, np.float32)
        for s in (_GATE, _UP):
            blk["model.layers.0." + s] = _f32(fused[p + s] @ Qm)
        blk["model.layers.0." + _DOWN] = _f32(fused[p + _DOWN])
        blk["model.layers.0.mlp_shortcut.weight"] = _f32(Qm)
        helper = _helper(model, (r_in, r_mid, d), blk)
        outs = _run(helper, states, None, d)
        Q_out = _pca(_gram(outs), damp)
        Qo = Q_out[:, :r_out]
        blk["model.layers.0." + _DOWN] = _f32(Qo.T @ fused[p + _DOWN])
        blk["model.layers.0.mlp_shortcut.weight"] = _f32(Qo.T @ Qm)
        for name, value in blk.items():
            out[p + name[len("model.layers.0.") :]] = value
        states = _f32(outs.astype(np.float64) @ Qo)
        del outs
        if not np.all(np.isfinite(states)):
            bar.close()
            raise ValueError(f"model: block {i} produced non-finite outputs while slicing")
        Q_in = Q_out
        bar.update()
    bar.close()
    out["lm_head.weight"] = _f32(fused["lm_head.weight"] @ Q_in[:, : r[-1]])
    out["model.norm.weight"] = np.ones(r[-1], np.float32)
    config = dataclasses.replace(
        c, residual_dims=tuple(r), tied_embeddings=False, head_dim=c.head_dim
    )
    return _new_model(model, config, out, f"SliceGPT d'={d_new}")


def _skip_mlp(c: LlamaConfig) -> Callable[[str, F32Array], F32Array | None]:
    """A ``Hooks.linear`` that returns zeros for the MLP's linears (the helper model then
    outputs the signal between attention and MLP through an identity shortcut)."""

    def hook(name: str, x: F32Array) -> F32Array | None:
        if name.endswith((_GATE, _UP)):
            return np.zeros((x.shape[0], c.hidden_dim), dtype=np.float32)
        if name.endswith(_DOWN):
            return np.zeros((x.shape[0], c.dim), dtype=np.float32)
        return None

    return hook


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
