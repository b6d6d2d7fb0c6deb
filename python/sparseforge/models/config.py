"""The architecture of a Llama-family decoder: :class:`LlamaConfig`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .._validate import check_int, check_number

__all__ = ["ACTIVATIONS", "LAYER_TYPES", "ROPE_STYLES", "LlamaConfig", "ModelConfig"]

ROPE_STYLES = ("interleaved", "half")
#: MLP gate activations: SwiGLU's ``silu`` and GeGLU's tanh-approximated ``gelu_tanh``.
ACTIVATIONS = ("silu", "gelu_tanh")
#: Attention kinds of a layer (Hugging Face's ``layer_types`` spelling).
LAYER_TYPES = ("full_attention", "sliding_attention")


# Upper bounds far above any published model (405B Llama: 126 layers, 16384 wide, 128k
# vocabulary): a config claiming more is corrupt or hostile, and per-layer or per-row work
# sized by it would hang or exhaust memory before the tensors could disprove it.
LIMITS = {
    "dim": 1 << 20,
    "hidden_dim": 1 << 22,
    "n_layers": 1 << 14,
    "n_heads": 1 << 14,
    "n_kv_heads": 1 << 14,
    "vocab_size": 1 << 24,
    "max_seq_len": 1 << 31,
    "head_dim": 1 << 16,
}


def _positive_int(value: Any, name: str) -> None:
    check_int(value, name, 1, LIMITS.get(name))


def _positive_float(value: Any, name: str, *, allow_zero: bool = False) -> None:
    check_number(value, name, 0, None, lo_open=not allow_zero)


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes and conventions of a decoder-only transformer: the Llama family (Llama 2/3,
    SmolLM, llama2.c) and the families described by the fields after ``residual_dims``
    (Mistral, Qwen2/2.5, Qwen3, Gemma 3). Also spelled :data:`ModelConfig`; the defaults of
    the family fields are Llama's, so a plain ``LlamaConfig(...)`` is a Llama.

    Attributes
    ----------
    dim : int
        Model width (hidden size).
    hidden_dim : int
        SwiGLU intermediate size (rows of ``gate_proj`` / ``up_proj``).
    n_layers, n_heads, n_kv_heads : int
        Blocks, query heads and key/value heads; ``n_kv_heads`` divides ``n_heads``
        (grouped-query attention: query head ``h`` reads kv head ``h // (n_heads //
        n_kv_heads)``).
    vocab_size, max_seq_len : int
        Vocabulary and the longest sequence the model was trained for; ``forward`` and
        ``generate`` refuse longer inputs.
    norm_eps : float
        RMSNorm epsilon (``>= 0``).
    rope_theta : float
        RoPE base: pair ``i`` of a head turns by ``pos * rope_theta ** (-2 i / head_dim)``.
    rope_style : {"interleaved", "half"}
        Which dimensions form the rotated pairs: ``(x[2i], x[2i+1])`` (llama2.c, GGUF) or
        ``(x[i], x[i + head_dim/2])`` (Hugging Face ``rotate_half``). The stored ``q_proj``
        / ``k_proj`` rows must be in the matching order.
    tied_embeddings : bool
        The output head reuses ``model.embed_tokens.weight`` (no ``lm_head.weight``).
    arch : str
        Family name, for messages and loaders (``"llama"``, ``"mistral"``, ``"qwen2"``...).
    head_dim : int
        Per-head size; 0 (the default) means ``dim // n_heads``, which then must be exact.
        The field always reads as the resolved value.
    residual_dims : tuple of int
        Widths of the residual stream of a SliceGPT-sliced model (``sf.structured.slicegpt``),
        ``2 * n_layers + 1`` ints in ``[1, dim]``: entry ``2 i`` enters block ``i`` (entry 0
        is the embedding width), ``2 i + 1`` lies between block ``i``'s attention and MLP,
        ``2 i + 2`` leaves block ``i`` (the last is what the final norm and the head read).
        Empty (the default): every width is ``dim``, the ordinary model. When set, every
        block also has the residual shortcut matrices ``attn_shortcut.weight`` ``(r[2i+1],
        r[2i])`` and ``mlp_shortcut.weight`` ``(r[2i+2], r[2i+1])`` (the skip path becomes
        ``h @ S.T``), and every RMSNorm divides the sum of squares by ``dim`` rather than by
        its own width (TransformerCompression's ``RMSN(hidden_size)``).

    The model family (each default is Llama's):

    qk_norm : bool
        RMSNorm of every query and key head over ``head_dim`` before RoPE, weights
        ``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight`` ``(head_dim,)`` (Qwen3,
        Gemma 3).
    sliding_window : int
        0 (no window) or ``W >= 1``: a sliding layer's query at position ``p`` attends keys
        ``p - W + 1 .. p`` (``W`` keys, Hugging Face's ``kv_idx > q_idx - W``).
    layer_types : tuple of str
        Per layer ``"full_attention"`` or ``"sliding_attention"`` (``n_layers`` entries).
        Empty (the default): every layer slides when ``sliding_window`` is set (Mistral),
        none otherwise. Gemma 3 alternates five sliding layers and one full one.
    rope_theta_local : float
        RoPE base of the sliding layers (Gemma 3's ``rope_local_base_freq``); 0 (the
        default) means ``rope_theta`` everywhere.
    embed_scale : float
        The embeddings are multiplied by it before block 0 (Gemma: ``sqrt(dim)`` rounded to
        float32); the tied output head reads the unscaled table.
    norm_offset : float
        Every RMSNorm multiplies by ``norm_offset + weight`` (Gemma stores ``weight`` with
        1 subtracted: ``norm_offset=1``).
    sandwich_norms : bool
        Gemma 3's four norms per block: ``input_layernorm`` before attention,
        ``post_attention_layernorm`` on the attention output before the residual add,
        ``pre_feedforward_layernorm`` before the MLP and ``post_feedforward_layernorm`` on
        its output. Without it (Llama) ``post_attention_layernorm`` is the MLP's pre-norm.
    activation : {"silu", "gelu_tanh"}
        The MLP gate: SwiGLU ``silu(g) * u`` or GeGLU ``gelu_tanh(g) * u``.
    query_scale : float
        Attention scores are ``query_scale * q.k``; 0 (the default) means
        ``1 / sqrt(head_dim)`` (Gemma 3: ``query_pre_attn_scalar ** -0.5``).
    attn_softcap, final_softcap : float
        0 (none) or ``c > 0``: attention scores (after scaling) or the output logits become
        ``c * tanh(x / c)`` (Gemma 2's soft caps; Gemma 3 has none).
    """

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_style: str = "interleaved"
    tied_embeddings: bool = False
    arch: str = "llama"
    head_dim: int = 0
    residual_dims: tuple[int, ...] = ()
    qk_norm: bool = False
    sliding_window: int = 0
    layer_types: tuple[str, ...] = ()
    rope_theta_local: float = 0.0
    embed_scale: float = 1.0
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    activation: str = "silu"
    query_scale: float = 0.0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.max_seq_len, "max_seq_len")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"n_kv_heads: {self.n_kv_heads} does not divide n_heads={self.n_heads} "
                "(grouped-query attention)"
            )
        check_int(self.head_dim, "head_dim")
        if self.head_dim == 0:
            if self.dim % self.n_heads != 0:
                raise ValueError(
                    f"head_dim: dim={self.dim} is not a multiple of n_heads={self.n_heads}; "
                    "give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim <= 0 or self.head_dim % 2 != 0 or self.head_dim > LIMITS["head_dim"]:
            raise ValueError(
                f"head_dim: expected an even int in (0, {LIMITS['head_dim']}] (RoPE pairs), "
                f"got {self.head_dim}"
            )
        _positive_float(self.norm_eps, "norm_eps", allow_zero=True)
        _positive_float(self.rope_theta, "rope_theta")
        if self.rope_style not in ROPE_STYLES:
            raise ValueError(
                f"rope_style: expected 'interleaved' or 'half', got {self.rope_style!r}"
            )
        if not isinstance(self.tied_embeddings, bool):
            raise TypeError(
                f"tied_embeddings: expected a bool, got {type(self.tied_embeddings).__name__}"
            )
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch: expected a non-empty str, got {self.arch!r}")
        self._check_residual_dims()
        self._check_family()

    def _check_family(self) -> None:
        for name in ("qk_norm", "sandwich_norms"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"{name}: expected a bool, got {type(getattr(self, name)).__name__}"
                )
        w = self.sliding_window
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 0:
            raise ValueError(f"sliding_window: expected an int >= 0 (0: none), got {w!r}")
        object.__setattr__(self, "sliding_window", int(w))
        types = self.layer_types
        if isinstance(types, (str, bytes)) or not isinstance(types, (tuple, list)):
            raise TypeError(f"layer_types: expected a tuple of str, got {type(types).__name__}")
        types = tuple(types)
        object.__setattr__(self, "layer_types", types)
        if types:
            if len(types) != self.n_layers:
                raise ValueError(
                    f"layer_types: expected n_layers={self.n_layers} entries, got {len(types)}"
                )
            bad = [t for t in types if t not in LAYER_TYPES]
            if bad:
                raise ValueError(
                    f"layer_types: expected entries in {LAYER_TYPES}, got {bad[0]!r:.60}"
                )
            if "sliding_attention" in types and not self.sliding_window:
                raise ValueError("layer_types: sliding layers need sliding_window >= 1")
        for name in ("rope_theta_local", "embed_scale", "norm_offset", "query_scale",
                     "attn_softcap", "final_softcap"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, numbers.Real) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))  # plain floats (JSON, equality)
        _positive_float(self.rope_theta_local, "rope_theta_local", allow_zero=True)
        _positive_float(self.embed_scale, "embed_scale")
        for name in ("norm_offset",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
        for name in ("query_scale", "attn_softcap", "final_softcap"):
            _positive_float(getattr(self, name), name, allow_zero=True)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation: expected one of {ACTIVATIONS}, got {self.activation!r:.60}"
            )
        if self.residual_dims and not self.plain_blocks:
            raise ValueError(
                "residual_dims: a SliceGPT-sliced model must be a plain Llama-family block "
                "(no qk_norm, sandwich norms or norm_offset)"
            )

    @property
    def plain_blocks(self) -> bool:
        """Whether each block has Llama's norms (two pre-norms, no QK-norm, no offset)."""
        return not (self.qk_norm or self.sandwich_norms or self.norm_offset != 0.0)

    def is_sliding(self, layer: int) -> bool:
        """Whether ``layer`` attends within ``sliding_window`` (see ``layer_types``)."""
        if not self.sliding_window:
            return False
        if not self.layer_types:
            return True
        return self.layer_types[layer] == "sliding_attention"

    def layer_window(self, layer: int) -> int:
        """Keys a query of ``layer`` attends at most (0: all before it)."""
        return self.sliding_window if self.is_sliding(layer) else 0

    def layer_rope_theta(self, layer: int) -> float:
        """RoPE base of ``layer``: ``rope_theta_local`` on sliding layers when set."""
        if self.rope_theta_local and self.is_sliding(layer):
            return float(self.rope_theta_local)
        return float(self.rope_theta)

    @property
    def attention_scale(self) -> float:
        """The factor of ``q.k`` before the softmax."""
        return float(self.query_scale) if self.query_scale else 1.0 / math.sqrt(self.head_dim)

    def mlp_norm_name(self, block: int) -> str:
        """Name of the norm before block ``block``'s MLP."""
        kind = "pre_feedforward_layernorm" if self.sandwich_norms else "post_attention_layernorm"
        return f"model.layers.{block}.{kind}.weight"

    def _check_residual_dims(self) -> None:
        dims = self.residual_dims
        if isinstance(dims, (str, bytes)) or not isinstance(dims, (tuple, list)):
            raise TypeError(f"residual_dims: expected a tuple of ints, got {type(dims).__name__}")
        for r in dims:
            if isinstance(r, bool) or not isinstance(r, numbers.Integral):
                raise TypeError(f"residual_dims: expected ints, got {type(r).__name__}")
        dims = tuple(int(r) for r in dims)
        object.__setattr__(self, "residual_dims", dims)
        if not dims:
            return
        if len(dims) != 2 * self.n_layers + 1:
            raise ValueError(
                f"residual_dims: expected 2 * n_layers + 1 = {2 * self.n_layers + 1} widths, "
                f"got {len(dims)}"
            )
        if not all(1 <= r <= self.dim for r in dims):
            raise ValueError(f"residual_dims: expected widths in [1, dim={self.dim}], got {dims}")
        if self.tied_embeddings and dims[0] != dims[-1]:
            raise ValueError(
                f"residual_dims: the embedding width {dims[0]} differs from the head's "
                f"{dims[-1]}, so the embeddings cannot be tied (tied_embeddings=True)"
            )

    @property
    def sliced(self) -> bool:
        """Whether the residual stream has per-block widths (``residual_dims`` is set)."""
        return bool(self.residual_dims)

    def block_dims(self, block: int) -> tuple[int, int, int]:
        """Residual widths ``(entering, between attention and MLP, leaving)`` of ``block``."""
        if not self.residual_dims:
            return self.dim, self.dim, self.dim
        r = self.residual_dims
        return r[2 * block], r[2 * block + 1], r[2 * block + 2]

    @property
    def embed_dim(self) -> int:
        """Columns of ``embed_tokens``: the residual width entering block 0."""
        return self.residual_dims[0] if self.residual_dims else self.dim

    @property
    def head_in_dim(self) -> int:
        """Width of the final norm and columns of the output head."""
        return self.residual_dims[-1] if self.residual_dims else self.dim

    @property
    def q_dim(self) -> int:
        """Rows of ``q_proj``: ``n_heads * head_dim``."""
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Rows of ``k_proj`` / ``v_proj``: ``n_kv_heads * head_dim``."""
        return self.n_kv_heads * self.head_dim

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight the model reads, Hugging Face names -> shape, in forward order."""
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, self.embed_dim)
        }
        for i in range(self.n_layers):
            p = f"model.layers.{i}."
            d_in, d_mid, d_out = self.block_dims(i)
            shapes[p + "input_layernorm.weight"] = (d_in,)
            shapes[p + "self_attn.q_proj.weight"] = (self.q_dim, d_in)
            shapes[p + "self_attn.k_proj.weight"] = (self.kv_dim, d_in)
            shapes[p + "self_attn.v_proj.weight"] = (self.kv_dim, d_in)
            if self.qk_norm:
                shapes[p + "self_attn.q_norm.weight"] = (self.head_dim,)
                shapes[p + "self_attn.k_norm.weight"] = (self.head_dim,)
            shapes[p + "self_attn.o_proj.weight"] = (d_mid, self.q_dim)
            if self.residual_dims:
                shapes[p + "attn_shortcut.weight"] = (d_mid, d_in)
            shapes[p + "post_attention_layernorm.weight"] = (d_mid,)
            if self.sandwich_norms:
                shapes[p + "pre_feedforward_layernorm.weight"] = (d_mid,)
            shapes[p + "mlp.gate_proj.weight"] = (self.hidden_dim, d_mid)
            shapes[p + "mlp.up_proj.weight"] = (self.hidden_dim, d_mid)
            shapes[p + "mlp.down_proj.weight"] = (d_out, self.hidden_dim)
            if self.sandwich_norms:
                shapes[p + "post_feedforward_layernorm.weight"] = (d_out,)
            if self.residual_dims:
                shapes[p + "mlp_shortcut.weight"] = (d_out, d_mid)
        shapes["model.norm.weight"] = (self.head_in_dim,)
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.head_in_dim)
        return shapes


#: The family-neutral name of :class:`LlamaConfig` (the same class).
ModelConfig = LlamaConfig
