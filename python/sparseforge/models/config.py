"""The architecture of a Llama-family decoder: :class:`LlamaConfig`."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from .._validate import check_int, check_number

__all__ = ["ROPE_STYLES", "LlamaConfig"]

ROPE_STYLES = ("interleaved", "half")


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
    """Sizes and conventions of a Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2,
    llama2.c).

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
            shapes[p + "self_attn.o_proj.weight"] = (d_mid, self.q_dim)
            if self.residual_dims:
                shapes[p + "attn_shortcut.weight"] = (d_mid, d_in)
            shapes[p + "post_attention_layernorm.weight"] = (d_mid,)
            shapes[p + "mlp.gate_proj.weight"] = (self.hidden_dim, d_mid)
            shapes[p + "mlp.up_proj.weight"] = (self.hidden_dim, d_mid)
            shapes[p + "mlp.down_proj.weight"] = (d_out, self.hidden_dim)
            if self.residual_dims:
                shapes[p + "mlp_shortcut.weight"] = (d_out, d_mid)
        shapes["model.norm.weight"] = (self.head_in_dim,)
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, self.head_in_dim)
        return shapes
