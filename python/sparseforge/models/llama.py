"""A CPU Llama-family forward: :class:`LlamaModel`, its :class:`Hooks` and :class:`KVCache`.

One forward serves evaluation (full causal sequence), calibration (hooks see every linear's
input and the attention's q/k/v) and generation (a decode loop over a contiguous KV cache).
Later work plugs in here through :class:`Hooks` and :meth:`LlamaModel.set_weight` instead
of copying the forward.

Per block ``i`` (pre-norm residual; names are Hugging Face's)::

    x = rms_norm(h, input_layernorm)
    q, k, v = x @ Wq.T, x @ Wk.T, x @ Wv.T        (T, Hq, D), (T, Hkv, D), (T, Hkv, D)
    q, k = rope(q), rope(k)                         positions 0..T-1 (or after the cache)
    h = h + attention(q, k, v) @ Wo.T               causal, grouped-query, 1/sqrt(D)
    x = rms_norm(h, post_attention_layernorm)
    h = h + (silu(x @ Wgate.T) * (x @ Wup.T)) @ Wdown.T

then ``logits = rms_norm(h, model.norm) @ lm_head.T`` (``embed_tokens`` when tied).
A SliceGPT-sliced model (``config.residual_dims``, :func:`sparseforge.structured.slicegpt`)
has per-block residual widths: its skip paths are ``h @ attn_shortcut.T`` and ``h @
mlp_shortcut.T`` instead of ``h``, and its norms divide by ``dim`` (see ``_rms_norm``).
Linears with dense float32 weights run as numpy ``x @ W.T`` (BLAS); float16/bfloat16 and
compressed weights run through :func:`sparseforge.kernels.gemm`. The norms, RoPE,
attention and the SwiGLU gate run in the compiled core (:mod:`sparseforge.models.ops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import ml_dtypes
import numpy as np
import numpy.typing as npt

from .. import _core
from .. import kernels as _kernels
from .._validate import UnknownNameError, check_int, check_number
from ..kernels import _threads
from .config import LlamaConfig
from .tokenizer import Tokenizer, check_token_ids

__all__ = ["LINEAR_SUFFIXES", "DecodeCache", "Hooks", "KVCache", "LlamaModel"]

F32Array = npt.NDArray[np.float32]

# The prunable linears of a block, in forward order (q, k, v, o, gate, up, down).
LINEAR_SUFFIXES = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


@dataclass
class Hooks:
    """Optional callbacks into the forward. Arrays passed to a hook are the forward's own
    buffers: read them (or copy), do not keep or modify them, except through a return value
    where one is allowed.

    Attributes
    ----------
    linear_input : callable(name, x) -> None
        Called before each linear runs with its weight name (e.g.
        ``"model.layers.3.mlp.down_proj.weight"``) and its input ``x``, float32 ``(T,
        in_features)`` (calibration capture: ``LayerStats.update(x)``). q, k and v receive
        the same ``x``.
    attention : callable(block, q, k, v) -> None
        After RoPE, before attention: ``q`` float32 ``(T, n_heads, head_dim)``, ``k`` and
        ``v`` ``(T, n_kv_heads, head_dim)``, the new tokens only (KV / activation research).
    mlp_hidden : callable(block, h) -> ndarray | None
        The SwiGLU hidden activation ``silu(gate) * up``, float32 ``(T, hidden_dim)``,
        before ``down_proj``. Returning an array of the same shape replaces it (activation
        sparsity); ``None`` keeps it.
    linear : callable(name, x) -> ndarray | None
        Runs a linear in place of the model (after ``linear_input``): given the weight
        name and the float32 ``(T, in_features)`` input, return float32 ``(T,
        out_features)`` ``x @ W.T`` computed another way (thresholded input with the
        column-skip kernels, predicted rows with the row-skip kernels), or ``None`` to let
        the model run it. Biases are added by the model afterwards either way.
    """

    linear_input: Callable[[str, F32Array], None] | None = None
    linear: Callable[[str, F32Array], F32Array | None] | None = None
    attention: Callable[[int, F32Array, F32Array, F32Array], None] | None = None
    mlp_hidden: Callable[[int, F32Array], F32Array | None] | None = None


@runtime_checkable
class DecodeCache(Protocol):
    """What :meth:`LlamaModel.step` needs from a key/value cache.

    :class:`KVCache` is the contiguous one; :mod:`sparseforge.kv` supplies caches that
    evict or select under a policy. Per step over T new tokens the model calls
    ``check_model`` and ``reserve(T)`` once, ``attend`` once per block, then
    ``advance(T)``.

    ``attend`` receives no window: on a model with a sliding window (or attention
    soft-capping) :meth:`LlamaModel.step` refuses a cache other than :class:`KVCache` once
    the sequence passes the window, unless the cache sets ``supports_model_family = True``
    (it then reads the windows from ``config.layer_window(block)`` in ``check_model``).
    """

    length: int  # tokens fed so far: the new tokens take positions length .. length+T-1

    def check_model(self, config: LlamaConfig) -> None:
        """Raise ValueError if the cache was built for another layer/head layout."""

    def reserve(self, T: int) -> None:
        """Raise ValueError if T more tokens cannot be taken."""

    def attend(
        self, block: int, q: F32Array, k: F32Array, v: F32Array, scale: float, num_threads: int
    ) -> F32Array:
        """Store block ``block``'s new post-RoPE keys ``k`` and values ``v`` (``(T,
        n_kv_heads, head_dim)``) and return the attention output float32 ``(T, n_heads *
        head_dim)`` of ``q`` (``(T, n_heads, head_dim)``) over the cached tokens and the new
        ones (causal among the new ones)."""

    def advance(self, T: int) -> None:
        """Account for the T tokens just fed (after the last block)."""


class KVCache:
    """A contiguous key/value cache for generation (a :class:`DecodeCache`).

    ``k`` and ``v`` are float32 ``(n_layers, capacity, n_kv_heads, head_dim)``; rows ``0 ..
    length-1`` of each layer hold the post-RoPE keys and the values of the tokens seen so
    far. A forward step over T new tokens writes rows ``length .. length+T-1`` of every
    layer, then advances ``length``.

    Two backings, chosen by the first step: :meth:`LlamaModel.step` without hooks keeps the
    tokens in a compiled session (:mod:`sparseforge.runtime`, whose cache stores keys
    transposed); a step with hooks keeps them in the numpy arrays. Reading ``k`` / ``v`` or
    stepping with hooks later moves a session's tokens into the arrays (a copy), and the
    cache stays on the arrays from then on.
    """

    def __init__(self, config: LlamaConfig, capacity: int) -> None:
        check_int(capacity, "capacity")
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(
                f"capacity: expected 1 <= capacity <= max_seq_len={config.max_seq_len}, "
                f"got {capacity}"
            )
        self._shape: tuple[int, int, int, int] = (
            config.n_layers,
            int(capacity),
            config.n_kv_heads,
            config.head_dim,
        )
        self._k: F32Array | None = None
        self._v: F32Array | None = None
        self._length: int = 0
        self._session: Any = None  # a _core.runtime.RuntimeSession backing the cache
        self._windows: list[int] = [0] * config.n_layers  # per layer sliding window (0: none)
        self._softcap = 0.0

    @property
    def length(self) -> int:
        return int(self._session.length) if self._session is not None else self._length

    @length.setter
    def length(self, value: int) -> None:
        self._to_arrays()
        self._length = int(value)

    @property
    def k(self) -> F32Array:
        self._to_arrays()
        assert self._k is not None
        return self._k

    @property
    def v(self) -> F32Array:
        self._to_arrays()
        assert self._v is not None
        return self._v

    @property
    def capacity(self) -> int:
        return int(self._shape[1])

    @property
    def nbytes(self) -> int:
        if self._session is not None:
            return int(self._session.kv_bytes)
        return 2 * int(np.prod(self._shape)) * 4

    def reset(self) -> None:
        """Forget every token (the memory is reused)."""
        if self._session is not None:
            self._session.reset()
        self._length = 0

    def _to_arrays(self) -> None:
        """Allocate the numpy arrays and move a session's tokens into them."""
        if self._k is None:
            self._k = np.zeros(self._shape, dtype=np.float32)
            self._v = np.zeros(self._shape, dtype=np.float32)
        s, self._session = self._session, None
        if s is not None:
            n = int(s.length)
            for layer in range(self._shape[0]):
                k, v = s.read_kv(layer)
                self._k[layer, :n] = k
                self._v[layer, :n] = v  # type: ignore[index]
            self._length = n

    def _runtime_session(self, rt: Any, num_threads: int) -> Any:
        """The session backing this cache for the runtime model ``rt``, or None when the
        tokens already live in the numpy arrays."""
        if self._session is None:
            if self._k is not None and self._length:
                return None
            from .. import _core

            self._session = _core.runtime.RuntimeSession(rt, self.capacity, num_threads)
            self._length = 0
        elif self._session.model is not rt:
            self._session.set_model(rt)
        if self._session.num_threads != num_threads:
            self._session.num_threads = num_threads
        return self._session

    def check_model(self, config: LlamaConfig) -> None:
        if self._shape[0] != config.n_layers or self._shape[2:] != (
            config.n_kv_heads,
            config.head_dim,
        ):
            raise ValueError("cache: was built for a different model configuration")
        self._windows = [config.layer_window(i) for i in range(config.n_layers)]
        self._softcap = float(config.attn_softcap)

    def reserve(self, T: int) -> None:
        if self.length + T > self.capacity:
            raise ValueError(
                f"tokens: {T} more tokens do not fit the cache "
                f"({self.length} of {self.capacity} used)"
            )

    def attend(
        self, block: int, q: F32Array, k: F32Array, v: F32Array, scale: float, num_threads: int
    ) -> F32Array:
        self._to_arrays()
        K, V = self.k, self.v
        start, T = self._length, q.shape[0]
        K[block, start : start + T] = k
        V[block, start : start + T] = v
        window = self._windows[block]
        if self._softcap:
            return softcap_attention(
                q, K[block, : start + T], V[block, : start + T], scale, window, self._softcap
            )
        if T == 1:
            a: F32Array = _core.models.decode_attention(
                q[0], K[block], V[block], start + 1, scale, None, num_threads, window
            )
            return a.reshape(1, -1)
        out: F32Array = _core.models.attention(
            q, K[block, : start + T], V[block, : start + T], scale, None, num_threads, window
        )
        return out

    def advance(self, T: int) -> None:
        self._to_arrays()
        self._length += int(T)

    def __repr__(self) -> str:
        return f"KVCache(length={self.length}, capacity={self.capacity}, nbytes={self.nbytes})"


def _is_compressed(value: Any) -> bool:
    return not isinstance(value, np.ndarray) and hasattr(value, "_sf_gemm")


class LlamaModel:
    """A Llama-family decoder over a mapping of Hugging Face–named weights.

    Parameters
    ----------
    config : LlamaConfig
    weights : Mapping[str, ndarray]
        Every name of ``config.weight_shapes()``, each an ndarray of that shape, float32,
        float16 or bfloat16 (linear weights ``(out_features, in_features)``). The mapping
        may be lazy (memory-mapped): the model fetches a weight when it needs it and keeps
        no copy. Linear weights (and ``lm_head``) may also be compressed sparseforge
        tensors, as after :meth:`set_weight`. Optional ``...q_proj.bias`` / ``k_proj`` /
        ``v_proj`` biases (Qwen2) are added when present. Names are checked here, shapes and
        dtypes when fetched.
    tokenizer : Tokenizer, optional
        Its ``vocab_size`` must not exceed ``config.vocab_size``.
    source : str
        Where the weights came from, for messages.
    num_threads : int, optional
        Threads of the compiled ops and sparseforge kernels (numpy's BLAS keeps its own
        setting). ``None`` = the default.
    linear_backend : {"numpy", "sparseforge"}
        Dense float32 linears: numpy ``x @ W.T`` (BLAS, the default) or
        :func:`sparseforge.kernels.gemm` (``num_threads`` per call, bitwise identical for
        any thread count; no BLAS thread pool to wake, which matters for small matrices on
        a busy machine). float16/bfloat16 and compressed weights always use the latter.
    """

    def __init__(
        self,
        config: LlamaConfig,
        weights: Mapping[str, Any],
        tokenizer: Tokenizer | None = None,
        *,
        source: str = "",
        num_threads: int | None = None,
        linear_backend: str = "numpy",
    ) -> None:
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        if not isinstance(weights, Mapping):
            raise TypeError(
                f"weights: expected a Mapping[str, ndarray], got {type(weights).__name__}"
            )
        self.config = config
        self.source = str(source)
        self._weights = weights
        self._overrides: dict[str, Any] = {}
        self._shapes = config.weight_shapes()
        missing = [n for n in self._shapes if n not in weights]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ValueError(
                f"weights: {self._where()}missing {', '.join(missing[:3])}{more} "
                f"(expected the {len(self._shapes)} tensors of config.weight_shapes())"
            )
        if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"tokenizer: {tokenizer.name} has {tokenizer.vocab_size} tokens, more than the "
                f"model's vocab_size={config.vocab_size}: it does not match the model"
            )
        self.tokenizer = tokenizer
        self.num_threads = num_threads
        _threads(num_threads)  # validate early
        if linear_backend not in ("numpy", "sparseforge"):
            raise ValueError(
                f"linear_backend: expected 'numpy' or 'sparseforge', got {linear_backend!r}"
            )
        self.linear_backend = linear_backend
        self._scale = config.attention_scale
        # Weight version, shared with views of this model (SparseModel copies __dict__):
        # set_weight bumps it, which invalidates the compiled runtime model.
        self._version = [0]
        self._rt: tuple[int, Any] | None = None
        # Hooks a view runs by default when the runtime does not serve it (SparseModel).
        self._default_hooks: Hooks | None = None

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    # -- weights -----------------------------------------------------------------------
    def weight(self, name: str) -> Any:
        """The current weight ``name``: an ndarray (possibly a read-only memory map) or the
        compressed tensor given to :meth:`set_weight`. Not a copy."""
        if not isinstance(name, str):
            raise TypeError(f"name: expected a weight name (str), got {type(name).__name__}")
        if name in self._overrides:
            return self._overrides[name]
        if name not in self._shapes and not name.endswith(".bias"):
            raise UnknownNameError(
                f"name: {name!r} is not a weight of this {self.config.arch} model"
            )
        try:
            w = self._weights[name]
        except KeyError:
            raise KeyError(f"name: {self._where()}weight {name!r} is missing") from None
        if _is_compressed(w) and (name == "lm_head.weight" or name.endswith(LINEAR_SUFFIXES)):
            shape = tuple(int(s) for s in getattr(w, "shape", ()))
            if shape != self._shapes[name]:
                raise ValueError(
                    f"{name}: {self._where()}expected shape {self._shapes[name]}, got {shape}"
                )
            return w
        if not isinstance(w, np.ndarray):
            raise TypeError(
                f"{name}: {self._where()}expected a numpy.ndarray, got {type(w).__name__}"
            )
        if w.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"{name}: {self._where()}expected dtype float32, float16 or bfloat16, got {w.dtype}"
            )
        expected = self._shapes.get(name)
        if expected is not None and w.shape != expected:
            raise ValueError(f"{name}: {self._where()}expected shape {expected}, got {w.shape}")
        return w

    def set_weight(self, name: str, value: Any) -> None:
        """Replace weight ``name`` (the mapping given at construction is not modified).

        ``value`` is a dense ndarray of the same shape (float32/float16/bfloat16), or, for
        the linear weights and ``lm_head.weight``, a compressed sparseforge tensor
        (``sf.format.NMTensor``, ``BitmapTensor``, ``CSRTensor``) of the same shape, which
        then runs through :func:`sparseforge.kernels.gemm`.
        """
        if not isinstance(name, str):
            raise TypeError(f"name: expected a weight name (str), got {type(name).__name__}")
        expected = self._shapes.get(name)
        if expected is None:
            raise UnknownNameError(
                f"name: {name!r} is not a weight of this {self.config.arch} model"
            )
        if _is_compressed(value):
            linear = name == "lm_head.weight" or name.endswith(LINEAR_SUFFIXES)
            if not linear:
                raise ValueError(
                    f"value: a compressed tensor can replace a linear weight only, not {name!r}"
                )
            shape = tuple(int(s) for s in getattr(value, "shape", ()))
        elif isinstance(value, np.ndarray):
            if value.dtype not in _FLOAT_DTYPES:
                raise TypeError(
                    f"value: expected dtype float32, float16 or bfloat16, got {value.dtype}"
                )
            shape = value.shape
        else:
            raise TypeError(
                "value: expected a numpy.ndarray or a sparseforge compressed tensor, got "
                f"{type(value).__name__}"
            )
        if shape != expected:
            raise ValueError(f"value: {name} has shape {expected}, got {shape}")
        self._overrides[name] = value
        self._version[0] += 1

    # -- the compiled runtime ----------------------------------------------------------
    def _runtime_model(self) -> Any:
        """The current weights compiled for :mod:`sparseforge.runtime` (cached until
        :meth:`set_weight`), or None when the runtime cannot run this model (then the
        Python forward serves every call)."""
        if self._default_hooks is not None:
            return None
        return self._compiled({})

    def _compiled(self, kwargs: dict[str, Any]) -> Any:
        key = self._version[0]
        if self._rt is not None and self._rt[0] == key:
            return self._rt[1]
        from .. import runtime as _runtime

        rt = None
        if _runtime.unsupported_reason(self) is None:
            rt = _runtime.compile_model(self, **kwargs)
        self._rt = (key, rt)
        return rt

    def _session_for(self, cache: Any) -> Any:
        """The runtime session behind ``cache`` when the runtime serves this call (a
        :class:`KVCache`, or a cache with a ``_runtime_session`` such as a
        ``sparseforge.kv.PolicyCache`` with a built-in policy)."""
        if not isinstance(cache, KVCache) and not hasattr(cache, "_runtime_session"):
            return None
        rt = self._runtime_model()
        if rt is None:
            return None
        return cache._runtime_session(rt, _threads(self.num_threads))

    def linear_names(self, block: int) -> list[str]:
        """The 7 prunable linear weight names of ``block``: q, k, v, o, gate, up, down."""
        self._check_block(block)
        return [f"model.layers.{block}.{s}" for s in LINEAR_SUFFIXES]

    def _check_block(self, i: Any) -> None:
        check_int(i, "block")
        if not 0 <= int(i) < self.config.n_layers:
            raise ValueError(f"block: expected 0 <= block < {self.config.n_layers}, got {i}")

    def _vector(self, name: str) -> F32Array:
        w = self.weight(name)
        return np.ascontiguousarray(w, dtype=np.float32)

    def _linear(self, name: str, x: F32Array, hooks: Hooks | None) -> F32Array:
        if hooks is not None and hooks.linear_input is not None:
            hooks.linear_input(name, x)
        y = None
        if hooks is not None and hooks.linear is not None:
            y = hooks.linear(name, x)
            if y is not None:
                rows = self._shapes[name][0]
                if (
                    not isinstance(y, np.ndarray)
                    or y.dtype != np.float32
                    or y.shape != (x.shape[0], rows)
                ):
                    raise ValueError(
                        f"linear: the hook for {name} returned {_describe(y)}, expected a "
                        f"float32 array of shape {(x.shape[0], rows)}"
                    )
        if y is None:
            y = self._matmul(self.weight(name), x)
        bias_name = name[: -len("weight")] + "bias"
        if bias_name in self._weights:
            y += np.asarray(self._weights[bias_name], dtype=np.float32)
        return y

    def _matmul(self, w: Any, x: F32Array) -> F32Array:
        """``x @ w.T`` for a dense or compressed ``w`` (out, in); x float32 (T, in)."""
        if self.linear_backend == "numpy" and isinstance(w, np.ndarray) and w.dtype == np.float32:
            y: F32Array = x @ w.T
            return y
        return _kernels.gemm(w, np.ascontiguousarray(x), num_threads=self.num_threads)  # type: ignore[no-any-return]

    # -- forward pieces ----------------------------------------------------------------
    def _tokens(self, tokens: Any) -> npt.NDArray[np.int64]:
        ids = check_token_ids(tokens, self.config.vocab_size, "tokens")
        if ids.size == 0:
            raise ValueError("tokens: expected at least one token id, got an empty sequence")
        return ids

    def embed(self, tokens: Sequence[int] | npt.NDArray[np.integer[Any]]) -> F32Array:
        """Token embeddings, float32 ``(T, dim)`` (a new array)."""
        ids = self._tokens(tokens)
        table = self.weight("model.embed_tokens.weight")
        h = np.ascontiguousarray(table[ids], dtype=np.float32)
        if self.config.embed_scale != 1.0:
            h *= np.float32(self.config.embed_scale)  # Gemma: sqrt(dim) in float32
        return h

    def block(
        self,
        i: int,
        h: F32Array,
        *,
        hooks: Hooks | None = None,
        cache: DecodeCache | None = None,
    ) -> F32Array:
        """Block ``i`` over the residual stream ``h`` (float32 ``(T, dim)``); returns the new
        stream (a new array; ``h`` is not modified).

        Without ``cache`` the T rows are positions ``0..T-1`` under a causal mask. With
        ``cache`` they follow the ``cache.length`` cached tokens: their keys/values are
        written to rows ``cache.length ..`` of layer ``i`` and attention covers the cache
        too (``cache.length`` itself advances in :meth:`step`, after the last block).
        """
        self._check_block(i)
        c = self.config
        d_in = c.block_dims(int(i))[0]
        if not isinstance(h, np.ndarray) or h.dtype != np.float32 or h.ndim != 2:
            raise ValueError(f"h: expected a float32 (T, {d_in}) array, got {_describe(h)}")
        if h.shape[1] != d_in or h.shape[0] == 0:
            raise ValueError(f"h: expected shape (T >= 1, {d_in}), got {h.shape}")
        T = h.shape[0]
        start = 0 if cache is None else cache.length
        if start + T > c.max_seq_len:
            raise ValueError(f"h: {start} + {T} positions exceed max_seq_len ({c.max_seq_len})")
        thr = _threads(self.num_threads)
        p = f"model.layers.{i}."
        h = np.ascontiguousarray(h)
        x = self._rms_norm(h, p + "input_layernorm.weight", thr)
        pos = np.arange(start, start + T, dtype=np.int64)
        q, k, v = self._qkv(int(i), x, pos, hooks, thr)
        if hooks is not None and hooks.attention is not None:
            hooks.attention(i, q, k, v)
        if cache is None:
            a = self._attention(int(i), q, k, v, thr)
        else:
            cache.reserve(T)
            a = cache.attend(i, q, k, v, self._scale, thr)
        h = self._attn_residual(int(i), h, a, hooks, thr)
        x = self._rms_norm(h, c.mlp_norm_name(int(i)), thr)
        g = self._linear(p + LINEAR_SUFFIXES[4], x, hooks)
        u = self._linear(p + LINEAR_SUFFIXES[5], x, hooks)
        m = self._gate(g, u, thr)
        if hooks is not None and hooks.mlp_hidden is not None:
            r = hooks.mlp_hidden(i, m)
            if r is not None:
                if not isinstance(r, np.ndarray) or r.shape != m.shape:
                    raise ValueError(
                        f"mlp_hidden: block {i}'s hook returned {_describe(r)}, expected an "
                        f"array of shape {m.shape}"
                    )
                m = np.ascontiguousarray(r, dtype=np.float32)
        return self._mlp_residual(int(i), h, m, hooks, thr)

    # -- block pieces (shared with the calibration pipeline's batched block) -------------
    def _qkv(
        self, i: int, x: F32Array, pos: npt.NDArray[np.int64], hooks: Hooks | None, thr: int
    ) -> tuple[F32Array, F32Array, F32Array]:
        """Block ``i``'s q, k, v of the normed input ``x`` (T rows at positions ``pos``):
        projections (+ biases), QK-norm when the family has it, RoPE with the layer's base.
        Returns ``(T, n_heads, head_dim)``, ``(T, n_kv_heads, head_dim)`` twice."""
        c = self.config
        p = f"model.layers.{i}."
        T = x.shape[0]
        q = np.ascontiguousarray(self._linear(p + LINEAR_SUFFIXES[0], x, hooks))
        k = np.ascontiguousarray(self._linear(p + LINEAR_SUFFIXES[1], x, hooks))
        v = np.ascontiguousarray(self._linear(p + LINEAR_SUFFIXES[2], x, hooks))
        q = q.reshape(T, c.n_heads, c.head_dim)
        k = k.reshape(T, c.n_kv_heads, c.head_dim)
        v = v.reshape(T, c.n_kv_heads, c.head_dim)
        if c.qk_norm:
            for a, name in ((q, "self_attn.q_norm.weight"), (k, "self_attn.k_norm.weight")):
                flat = a.reshape(-1, c.head_dim)
                w = self._norm_weight(p + name)
                _core.models.rms_norm(flat, w, float(c.norm_eps), flat, thr)
        theta = c.layer_rope_theta(i)
        _core.models.rope(q, pos, theta, c.rope_style, thr)
        _core.models.rope(k, pos, theta, c.rope_style, thr)
        return q, k, v

    def _attention(
        self, i: int, q: F32Array, k: F32Array, v: F32Array, thr: int, out: F32Array | None = None
    ) -> F32Array:
        """Block ``i``'s causal attention over a whole sequence (its window, scale, cap)."""
        c = self.config
        if c.attn_softcap:
            a = softcap_attention(q, k, v, self._scale, c.layer_window(i), c.attn_softcap)
            if out is not None:
                out[...] = a
                return out
            return a
        r: F32Array = _core.models.attention(q, k, v, self._scale, out, thr, c.layer_window(i))
        return r

    def _attn_residual(
        self, i: int, h: F32Array, a: F32Array, hooks: Hooks | None, thr: int
    ) -> F32Array:
        """``h`` plus the output projection of the attention ``a`` (post-normed in a
        sandwich-norm family)."""
        p = f"model.layers.{i}."
        o = self._linear(p + LINEAR_SUFFIXES[3], a, hooks)
        if self.config.sandwich_norms:
            o = self._rms_norm(o, p + "post_attention_layernorm.weight", thr)
        out: F32Array = self._residual(p + "attn_shortcut.weight", h) + o
        return out

    def _gate(self, g: F32Array, u: F32Array, thr: int) -> F32Array:
        """The MLP's ``act(g) * u`` into ``g`` (SwiGLU or GeGLU)."""
        if self.config.activation == "gelu_tanh":
            r: F32Array = _core.models.geglu_gate(g, u, g, thr)
        else:
            r = _core.models.swiglu_gate(g, u, g, thr)
        return r

    def _mlp_residual(
        self, i: int, h: F32Array, m: F32Array, hooks: Hooks | None, thr: int
    ) -> F32Array:
        """``h`` plus the down projection of the MLP hidden ``m`` (post-normed in a
        sandwich-norm family)."""
        p = f"model.layers.{i}."
        y = self._linear(p + LINEAR_SUFFIXES[6], m, hooks)
        if self.config.sandwich_norms:
            y = self._rms_norm(y, p + "post_feedforward_layernorm.weight", thr)
        out: F32Array = self._residual(p + "mlp_shortcut.weight", h) + y
        return out

    def _norm_weight(self, name: str) -> F32Array:
        """A norm's float32 weight as the forward multiplies by it: ``norm_offset + w``."""
        w = self._vector(name)
        if self.config.norm_offset:
            w = w + np.float32(self.config.norm_offset)
        return w

    def _rms_norm(self, h: F32Array, name: str, thr: int) -> F32Array:
        """RMSNorm of ``h`` with weight ``name``. In a sliced model (``config.residual_dims``)
        a stream narrower than ``dim`` is normalised by ``sqrt(sum(h**2) / dim + eps)``,
        TransformerCompression's ``RMSN(hidden_size)``: written as the core's mean over the
        n columns with ``eps * dim / n`` and the weight times ``sqrt(dim / n)``."""
        c = self.config
        w = self._norm_weight(name)
        eps = float(c.norm_eps)
        n = int(h.shape[1])
        if n != c.dim:
            eps = eps * c.dim / n
            w = w * np.float32(math.sqrt(c.dim / n))
        out: F32Array = _core.models.rms_norm(h, w, eps, None, thr)
        return out

    def _residual(self, name: str, h: F32Array) -> F32Array:
        """The skip path: ``h`` itself, or ``h @ S.T`` with a sliced model's shortcut ``S``."""
        if not self.config.residual_dims:
            return h
        return self._matmul(self.weight(name), h)

    def final(self, h: F32Array) -> F32Array:
        """Final RMSNorm and output head: logits float32 ``(T, vocab_size)``."""
        c = self.config
        d = c.head_in_dim
        if not isinstance(h, np.ndarray) or h.dtype != np.float32 or h.ndim != 2:
            raise ValueError(f"h: expected a float32 (T, {d}) array, got {_describe(h)}")
        if h.shape[1] != d:
            raise ValueError(f"h: expected shape (T, {d}), got {h.shape}")
        x = self._rms_norm(np.ascontiguousarray(h), "model.norm.weight", _threads(self.num_threads))
        w = self.weight("model.embed_tokens.weight" if c.tied_embeddings else "lm_head.weight")
        logits = self._matmul(w, x)
        if c.final_softcap:
            cap = np.float32(c.final_softcap)
            logits = np.tanh(logits / cap) * cap
        return logits

    # -- whole model -------------------------------------------------------------------
    def forward(
        self, tokens: Sequence[int] | npt.NDArray[np.integer[Any]], *, hooks: Hooks | None = None
    ) -> F32Array:
        """Logits float32 ``(T, vocab_size)`` of a full causal sequence (positions
        ``0..T-1``, ``1 <= T <= max_seq_len``)."""
        ids = self._tokens(tokens)
        if ids.size > self.config.max_seq_len:
            raise ValueError(
                f"tokens: {ids.size} tokens exceed the model's max_seq_len="
                f"{self.config.max_seq_len}; evaluate in windows"
            )
        h = self.embed(ids)
        for i in range(self.config.n_layers):
            h = self.block(i, h, hooks=hooks)
        return self.final(h)

    def step(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer[Any]],
        cache: DecodeCache,
        *,
        hooks: Hooks | None = None,
        last_only: bool = False,
    ) -> F32Array:
        """Feed ``tokens`` after the ``cache.length`` cached ones; returns their logits
        float32 ``(T, vocab_size)`` and advances the cache by T. ``cache`` is a
        :class:`KVCache` or any :class:`DecodeCache` (e.g. a policy cache of
        :mod:`sparseforge.kv`). ``last_only=True``: a prefill that computes the last
        position's logits only, ``(1, vocab_size)`` (the head runs on one row)."""
        if not isinstance(cache, DecodeCache):
            raise TypeError(
                f"cache: expected a KVCache or another DecodeCache, got {type(cache).__name__}"
            )
        cache.check_model(self.config)
        ids = self._tokens(tokens)
        c = self.config
        if (
            not isinstance(cache, KVCache)
            and (c.sliding_window or c.attn_softcap)
            and not getattr(cache, "supports_model_family", False)
        ):
            window = min(c.layer_window(i) or c.max_seq_len for i in range(c.n_layers))
            if c.attn_softcap or cache.length + ids.size > window:
                raise ValueError(
                    f"cache: a {type(cache).__name__} attends every token it keeps, but this "
                    f"{c.arch} model has "
                    + (
                        "attention soft-capping"
                        if c.attn_softcap
                        else f"a sliding window of {window} tokens (exceeded at "
                        f"{cache.length + ids.size} tokens)"
                    )
                    + "; use a KVCache"
                )
        if cache.length + ids.size > self.config.max_seq_len:
            raise ValueError(
                f"tokens: {cache.length} cached + {ids.size} new tokens exceed "
                f"max_seq_len={self.config.max_seq_len}"
            )
        cache.reserve(int(ids.size))
        if hooks is None:
            session = self._session_for(cache)
            if session is not None:
                logits: F32Array = session.prefill(ids.tolist(), bool(last_only))
                return logits
            hooks = self._default_hooks
        h = self.embed(ids)
        for i in range(self.config.n_layers):
            h = self.block(i, h, hooks=hooks, cache=cache)
        cache.advance(int(ids.size))
        return self.final(h[-1:] if last_only else h)

    def nll(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer[Any]],
        *,
        hooks: Hooks | None = None,
    ) -> npt.NDArray[np.float64]:
        """Negative log-likelihoods (nats) of ``tokens[1:]`` given their prefixes, float64
        ``(T - 1,)``; ``mean()`` is the loss, ``exp(mean())`` the perplexity. ``hooks`` go
        to :meth:`forward`."""
        ids = self._tokens(tokens)
        if ids.size < 2:
            raise ValueError(f"tokens: expected at least 2 tokens to score, got {ids.size}")
        if ids.size > self.config.max_seq_len:
            raise ValueError(
                f"tokens: {ids.size} tokens exceed the model's max_seq_len="
                f"{self.config.max_seq_len}; evaluate in windows"
            )
        target = ids[1:]
        out = np.empty(target.size, dtype=np.float64)
        rt = self._runtime_model() if hooks is None else None
        if rt is None:
            if hooks is None:
                hooks = self._default_hooks
            logits = (self.forward(ids) if hooks is None else self.forward(ids, hooks=hooks))[:-1]
            _nll_rows(logits, target, out)
            return out
        # The runtime in chunks of prefill: logits of _NLL_CHUNK tokens at a time.
        session = _core.runtime.RuntimeSession(rt, int(ids.size), _threads(self.num_threads))
        for r0 in range(0, target.size, _NLL_CHUNK):
            r1 = min(target.size, r0 + _NLL_CHUNK)
            lg = session.prefill(ids[r0:r1].tolist(), False)
            _nll_rows(lg, target[r0:r1], out[r0:r1])
        return out

    def generate(
        self,
        prompt: Sequence[int] | npt.NDArray[np.integer[Any]],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        stop_at_eos: bool = True,
        hooks: Hooks | None = None,
        cache: DecodeCache | None = None,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> list[int]:
        """Continue ``prompt`` by up to ``max_new_tokens`` tokens; returns the new tokens only.

        The prompt runs as one chunk into a :class:`KVCache`, then one token per step.
        ``temperature == 0`` is greedy (argmax, ties to the lowest id as run.c);
        otherwise tokens are sampled from ``softmax(logits / temperature)`` restricted to
        the ``top_k`` most likely ids (0: all) and then to the smallest most-likely set of
        mass ``>= top_p``. Without hooks on a :class:`KVCache` generation runs in the core
        (:mod:`sparseforge.runtime`; its sampler is a ``mt19937_64`` seeded with ``seed``);
        the Python loop samples with ``numpy.random.default_rng(seed)``: the two draw
        different streams, greedy tokens are the same. With ``stop_at_eos`` generation ends
        after the tokenizer's EOS or BOS (llama2.c models emit BOS between stories; run.c stops
        there), which is then the last token returned. ``len(prompt) + max_new_tokens - 1``
        must not exceed ``max_seq_len``. ``cache``: a :class:`DecodeCache` to decode into (e.g.
        a policy cache of :mod:`sparseforge.kv`); default a new :class:`KVCache`. A cache that
        already holds tokens (a prefilled, compressed context, or a fork of one) is continued:
        the prompt follows its ``length`` cached tokens (``length + len(prompt) +
        max_new_tokens - 1 <= max_seq_len``).
        """
        ids = check_token_ids(prompt, self.config.vocab_size, "prompt")
        if ids.size == 0:
            raise ValueError(
                "prompt: expected at least one token (an empty text is [tokenizer.bos_id])"
            )
        max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 0)
        check_number(temperature, "temperature", 0, None)
        if max_new_tokens == 0:
            return []
        if cache is not None and not isinstance(cache, DecodeCache):
            raise TypeError(
                f"cache: expected a KVCache or another DecodeCache, got {type(cache).__name__}"
            )
        past = 0 if cache is None else int(cache.length)
        capacity = past + int(ids.size) + int(max_new_tokens) - 1
        if capacity > self.config.max_seq_len:
            raise ValueError(
                f"max_new_tokens: {f'{past} cached + ' if past else ''}{ids.size} prompt + "
                f"{max_new_tokens} new "
                f"tokens exceed max_seq_len={self.config.max_seq_len} "
                f"(by {capacity - self.config.max_seq_len})"
            )
        stop: set[int] = set()
        if stop_at_eos and self.tokenizer is not None:
            stop = {t for t in (self.tokenizer.eos_id, self.tokenizer.bos_id) if t is not None}
        if cache is None:
            cache = KVCache(self.config, capacity)
        from .. import runtime as _runtime

        session = self._session_for(cache) if hooks is None else None
        if session is not None:
            return _runtime.sample(
                session, ids.tolist(), max_new_tokens, temperature, top_k, top_p, seed, sorted(stop)
            )
        _runtime.check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
        rng = np.random.default_rng(seed)
        logits = self.step(ids, cache, hooks=hooks, last_only=True)[-1]
        out: list[int] = []
        while True:
            nxt = self._pick(logits, float(temperature), rng, int(top_k), float(top_p))
            out.append(nxt)
            if len(out) == max_new_tokens or nxt in stop:
                return out
            logits = self.step([nxt], cache, hooks=hooks)[-1]

    @staticmethod
    def _pick(
        logits: F32Array, temperature: float, rng: np.random.Generator, top_k: int, top_p: float
    ) -> int:
        if temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        if (0 < top_k < p.size) or top_p < 1.0:
            order = np.lexsort((np.arange(p.size), -p))  # most likely first, ties to lower id
            keep = top_k if 0 < top_k < p.size else p.size
            if top_p < 1.0:
                cum = np.cumsum(p[order[:keep]])
                keep = min(keep, int(np.searchsorted(cum, top_p * cum[-1])) + 1)
            p[order[keep:]] = 0.0
        return int(rng.choice(p.size, p=p / p.sum()))

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LlamaModel({c.arch}: dim={c.dim}, layers={c.n_layers}, heads={c.n_heads}/"
            f"{c.n_kv_heads}, vocab={c.vocab_size}, source={self.source!r})"
        )


_NLL_CHUNK = 512  # tokens per runtime prefill in nll (bounds the logits held at once)


def _nll_rows(
    logits: F32Array, target: npt.NDArray[np.int64], out: npt.NDArray[np.float64]
) -> None:
    """out[r] = logsumexp(logits[r]) - logits[r, target[r]] (float64)."""
    for r0 in range(0, target.size, 64):  # bounded temporaries for large vocabularies
        lg = logits[r0 : r0 + 64]
        m = lg.max(axis=1, keepdims=True)
        lse = np.log(np.exp(lg - m).sum(axis=1, dtype=np.float64)) + m[:, 0]
        picked = lg[np.arange(lg.shape[0]), target[r0 : r0 + 64]]
        out[r0 : r0 + 64] = lse - picked


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def softcap_attention(
    q: F32Array, k: F32Array, v: F32Array, scale: float, window: int, cap: float
) -> F32Array:
    """Causal grouped-query attention with logit soft-capping (Gemma 2), in numpy: scores
    ``cap * tanh(scale * q.k / cap)``; the T queries follow ``S - T`` earlier keys;
    ``window > 0`` keeps each query's last ``window`` keys. Returns float32 ``(T, Hq * D)``.
    The research path only (the runtime refuses soft-capped attention)."""
    T, Hq, D = q.shape
    S, Hkv = k.shape[0], k.shape[1]
    group = Hq // Hkv
    kk = np.repeat(k.astype(np.float64), group, axis=1)  # (S, Hq, D)
    vv = np.repeat(v.astype(np.float64), group, axis=1)
    s = np.einsum("thd,shd->hts", q.astype(np.float64), kk) * scale
    s = cap * np.tanh(s / cap)
    qpos = np.arange(S - T, S)[:, None]
    kpos = np.arange(S)[None, :]
    allowed = kpos <= qpos
    if window:
        allowed &= kpos > qpos - window
    s = np.where(allowed[None], s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    out = np.einsum("hts,shd->thd", s, vv)
    return np.ascontiguousarray(out.reshape(T, Hq * D), dtype=np.float32)
