"""The decode runtime: a model's whole forward in one core call (:class:`Session`).

:func:`compile_model` gathers a :class:`~sparseforge.models.LlamaModel`'s weights, each in
the format it is stored in (dense float32/float16/bfloat16 arrays, ``NMTensor``,
``BitmapTensor``), its norms and embeddings, and optionally TEAL thresholds with the
transposed weights that column skip reads, into a ``_core.runtime.RuntimeModel`` made of views:
no weight is copied (norms and biases that are not float32 are converted, they are
vectors). A :class:`Session` owns a contiguous KV cache and runs ``prefill(tokens)``,
``step(token) -> logits`` and ``generate`` for all layers in one call each, with the GIL
released and threads inside the kernels; results are bitwise identical for any thread
count.

:class:`~sparseforge.models.LlamaModel`'s ``step`` / ``generate`` / ``nll`` (hence
:func:`~sparseforge.models.perplexity`) run on a session whenever no hook asks to see
intermediate values and the cache is the contiguous :class:`~sparseforge.models.KVCache`;
the Python forward with hooks is the research path and the oracle of the tests.

What the runtime does not run (the Python forward does): SliceGPT-sliced models, CSR
weights, KV policies (:mod:`sparseforge.kv`), CATS / ReLU / Deja Vu activation sparsity.
"""

from __future__ import annotations

import numbers
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._validate import check_int
from .kernels import _threads

if TYPE_CHECKING:
    from .activation import Thresholds
    from .models.llama import LlamaModel

__all__ = ["Session", "compile_model", "load", "unsupported_reason"]

_SUFFIXES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _core_weight(w: Any) -> Any:
    """The object the core reads: an ndarray, or a compressed tensor's compiled matrix."""
    if isinstance(w, np.ndarray):
        return w
    kind = getattr(type(w), "_sf_kind", None)
    if kind in ("nm", "bitmap"):
        return w._m
    return None


def unsupported_reason(model: LlamaModel) -> str | None:
    """Why ``model`` cannot run on the runtime (``None`` when it can)."""
    c = model.config
    if c.residual_dims:
        return "a SliceGPT-sliced model (per-block residual widths)"
    if c.attn_softcap:
        return f"attention logit soft-capping (attn_softcap={c.attn_softcap:g}, {c.arch})"
    for name in model._shapes:
        w = model.weight(name)
        if _core_weight(w) is None:
            return f"{name} is a {type(w).__name__} (the runtime reads dense, N:M and bitmap)"
        if isinstance(w, np.ndarray) and w.ndim == 2 and w.strides[-1] != w.itemsize:
            return f"{name} is not contiguous along its rows"
    return None


def _vec(a: Any) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(a, dtype=np.float32)


def compile_model(
    model: LlamaModel,
    *,
    thresholds: Thresholds | None = None,
    transposed: Mapping[str, Any] | None = None,
) -> Any:
    """A ``_core.runtime.RuntimeModel`` of ``model``'s current weights (views, no copy).

    Parameters
    ----------
    model : LlamaModel
    thresholds : sparseforge.activation.Thresholds, optional
        A ``kind="teal"`` table for this model: every block linear multiplies ``x * (|x| >
        t)``. Checked against the model (``ValueError`` for another model's table).
    transposed : mapping of linear weight name to ``Wt``, optional
        The transposed weights ``(in, out)`` (float ndarray or ``BitmapTensor``) that decode
        steps read with column skip (``SparseForward``'s); only with ``thresholds``.

    Raises
    ------
    ValueError
        The model cannot run on the runtime (:func:`unsupported_reason`), or the thresholds
        / transposed weights do not match it.
    """
    from .models.llama import LlamaModel

    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    why = unsupported_reason(model)
    if why is not None:
        raise ValueError(f"model: the runtime cannot run it: {why}")
    values: dict[str, float] = {}
    if thresholds is not None:
        from .activation import Thresholds

        if not isinstance(thresholds, Thresholds):
            raise TypeError(
                f"thresholds: expected a Thresholds table, got {type(thresholds).__name__}"
            )
        if thresholds.kind != "teal":
            raise ValueError(f"thresholds: the runtime runs 'teal' tables, got {thresholds.kind!r}")
        thresholds.check_model(model)
        values = dict(thresholds.values)
    wts = dict(transposed or {})
    if wts and thresholds is None:
        raise ValueError("transposed: column-skip weights need TEAL thresholds")
    c = model.config
    rt = _core.runtime.RuntimeModel(
        dim=c.dim,
        hidden_dim=c.hidden_dim,
        n_layers=c.n_layers,
        n_heads=c.n_heads,
        n_kv_heads=c.n_kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        max_seq_len=c.max_seq_len,
        norm_eps=float(c.norm_eps),
        rope_theta=float(c.rope_theta),
        rope_style=c.rope_style,
        tied_embeddings=c.tied_embeddings,
        arch=c.arch,
    )
    rt.set_family(
        activation=c.activation,
        embed_scale=float(c.embed_scale),
        query_scale=float(c.attention_scale),
        final_softcap=float(c.final_softcap),
        qk_norm=c.qk_norm,
        sandwich_norms=c.sandwich_norms,
        layer_window=[c.layer_window(i) for i in range(c.n_layers)],
        layer_rope_theta=[c.layer_rope_theta(i) for i in range(c.n_layers)],
    )
    rt.set_embed(_core_weight(model.weight("model.embed_tokens.weight")))
    norm = model._norm_weight  # norm_offset + w, float32 (Gemma's 1 + w)
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        rt.set_norms(i, norm(p + "input_layernorm.weight"), norm(c.mlp_norm_name(i)))
        if c.qk_norm or c.sandwich_norms:
            rt.set_block_norms(
                i,
                norm(p + "self_attn.q_norm.weight") if c.qk_norm else None,
                norm(p + "self_attn.k_norm.weight") if c.qk_norm else None,
                norm(p + "post_attention_layernorm.weight") if c.sandwich_norms else None,
                norm(p + "post_feedforward_layernorm.weight") if c.sandwich_norms else None,
            )
        for j, s in enumerate(_SUFFIXES):
            name = f"{p}{s}.weight"
            bias_name = f"{p}{s}.bias"
            bias = _vec(model._weights[bias_name]) if bias_name in model._weights else None
            wt = wts.pop(name, None)
            rt.set_linear(
                i,
                j,
                _core_weight(model.weight(name)),
                None if wt is None else _core_weight(wt),
                bias,
                values.get(name),
            )
    if wts:
        raise ValueError(f"transposed: names that are not block linears: {sorted(wts)[:3]}")
    rt.set_norms(-1, norm("model.norm.weight"), None)
    if not c.tied_embeddings:
        rt.set_linear(-1, 0, _core_weight(model.weight("lm_head.weight")), None, None, None)
    rt.validate()
    return rt


def load(
    path: str | os.PathLike[str], *, verify: bool = True, num_threads: int | None = None
) -> Any:
    """Read a file written by :func:`sparseforge.models.save` with the core's own reader
    (``sparseforge::runtime::SavedModel``, no Python in the loop): a ``_core.runtime.RuntimeModel``
    for :class:`Session`. Dense weights are views of the memory-mapped file; N:M and bitmap
    tensors are built in their execution layouts. ``verify`` checks every tensor's CRC-32.

    Raises
    ------
    ValueError
        Naming the file: not a sparseforge model file, corrupt, weights that disagree with
        the config, formats the runtime does not read (CSR, sliced models).
    """
    return _core.runtime.RuntimeModel.load(os.fspath(path), bool(verify), _threads(num_threads))


def _ids(tokens: Any, vocab: int, name: str) -> list[int]:
    from .models.tokenizer import check_token_ids

    ids = check_token_ids(tokens, vocab, name)
    if ids.size == 0:
        raise ValueError(f"{name}: expected at least one token id, got an empty sequence")
    return [int(t) for t in ids]


class Session:
    """A KV cache of ``capacity`` tokens and the model's forward over it, in the core.

    Parameters
    ----------
    model : LlamaModel or _core.runtime.RuntimeModel
        A model (compiled here, its weights viewed), or one read by :func:`load`.
    capacity : int
        Tokens the cache holds, ``1 <= capacity <= max_seq_len``.
    thresholds, transposed
        TEAL, as in :func:`compile_model`.
    num_threads : int, optional
        Threads inside the kernels (``None``: the default). Results do not depend on it.

    The cache's memory: :attr:`kv_bytes` (float32 keys and values of every layer).
    A call that raises (a token id out of range, more tokens than the capacity) leaves the
    cache as it was.
    """

    def __init__(
        self,
        model: LlamaModel | _core.runtime.RuntimeModel,
        capacity: int,
        *,
        thresholds: Thresholds | None = None,
        transposed: Mapping[str, Any] | None = None,
        num_threads: int | None = None,
    ) -> None:
        check_int(capacity, "capacity")
        if isinstance(model, _core.runtime.RuntimeModel):
            if thresholds is not None or transposed is not None:
                raise ValueError("thresholds: a loaded RuntimeModel takes no TEAL arguments")
            self._rt: _core.runtime.RuntimeModel = model
        else:
            self._rt = compile_model(model, thresholds=thresholds, transposed=transposed)
        self._vocab: int = int(self._rt.vocab_size)
        self._s: _core.runtime.RuntimeSession = _core.runtime.RuntimeSession(
            self._rt, int(capacity), _threads(num_threads)
        )

    @property
    def length(self) -> int:
        """Tokens in the cache."""
        return int(self._s.length)

    @property
    def capacity(self) -> int:
        return int(self._s.capacity)

    @property
    def kv_bytes(self) -> int:
        return int(self._s.kv_bytes)

    def reset(self) -> None:
        """Forget every cached token."""
        self._s.reset()

    def prefill(self, tokens: Sequence[int] | npt.NDArray[Any], *, last_only: bool = False) -> Any:
        """Feed ``tokens`` after the cached ones; float32 logits ``(T, vocab_size)``, or
        ``(1, vocab_size)`` of the last token with ``last_only``."""
        ids = _ids(tokens, self._vocab, "tokens")
        return self._s.prefill(ids, bool(last_only))

    def step(self, token: int) -> Any:
        """Feed one token; float32 logits ``(vocab_size,)``."""
        (t,) = _ids([token], self._vocab, "token")
        return self._s.step(t)

    def generate(
        self,
        prompt: Sequence[int] | npt.NDArray[Any],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[int] = (),
    ) -> list[int]:
        """Continue from the cache + ``prompt`` by up to ``max_new_tokens`` tokens (see
        ``sparseforge::runtime::SamplingConfig``: greedy at temperature 0, else top-k /
        top-p sampling with a seeded ``mt19937_64``); stops after a token in ``stop``."""
        ids = _ids(prompt, self._vocab, "prompt")
        return sample(self._s, ids, max_new_tokens, temperature, top_k, top_p, seed, stop)

    def __repr__(self) -> str:
        return f"Session(length={self.length}, capacity={self.capacity}, kv_bytes={self.kv_bytes})"


def check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any) -> int:
    """Validates generation arguments (``ValueError`` / ``TypeError`` naming them); returns
    the 64-bit seed (a random one for ``seed=None``)."""
    for name, v in (("max_new_tokens", max_new_tokens), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        if v < 0:
            raise ValueError(f"{name}: expected >= 0, got {v}")
    for name, v in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}: expected a number, got {type(v).__name__}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p}")
    if seed is None:
        return secrets.randbits(64)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected None or an int >= 0, got {seed!r}")
    return int(seed) % (1 << 64)


def sample(
    session: Any,
    ids: list[int],
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    seed: Any,
    stop: Sequence[int],
) -> list[int]:
    """Validated arguments -> ``_core.runtime.RuntimeSession.generate`` (shared with LlamaModel)."""
    s = check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if isinstance(stop, (str, bytes)) or not isinstance(stop, (Sequence, np.ndarray)):
        raise TypeError(f"stop: expected a sequence of token ids, got {type(stop).__name__}")
    stop = [check_int(t, f"stop[{i}]", 0) for i, t in enumerate(stop)]
    out: list[int] = session.generate(
        ids,
        int(max_new_tokens),
        float(temperature),
        int(top_k),
        float(top_p),
        s,
        stop,
    )
    return out
