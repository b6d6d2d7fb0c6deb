"""Knowledge distillation into a sparse or structurally pruned student.

* :func:`kd_loss`: ``T^2 * KL(softmax(z_T / T) || softmax(z_S / T))`` summed over the
  vocabulary and **averaged over tokens** (``batchmean`` per token, not ``mean`` over
  token x vocab), computed in float32; tokens with ``mask == False`` contribute nothing.
  Minitron distils with logits only, ``T = 1``, no cross-entropy.
* :func:`hidden_loss`: Minitron's optional intermediate-state loss, the mean squared error
  between (optionally projected) student and teacher hidden states, each normalised by the
  teacher's mean square.
* :class:`Distiller`: ``loss = alpha_kd * kd + alpha_ce * ce + alpha_hidden * hidden`` for a
  teacher/student pair of causal LMs (transformers-style ``model(input_ids)`` returning
  ``.logits``); a teacher whose vocabulary differs from the student's is refused.
* :func:`to_transformers`: a ``transformers.LlamaForCausalLM`` from a
  :class:`sparseforge.models.LlamaModel` (e.g. :func:`sparseforge.structured.width` or
  :func:`~sparseforge.structured.depth` outputs), so a pruned model can be distilled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._util import check_float, torch_module

__all__ = ["Distiller", "hidden_loss", "kd_loss", "to_transformers"]


def _vocab_check(student: Any, teacher: Any) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"teacher: vocabulary of {teacher.shape[-1]} logits does not match the student's "
            f"{student.shape[-1]}"
        )
    if tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(
            f"teacher_logits: shape {tuple(teacher.shape)} differs from the student's "
            f"{tuple(student.shape)}"
        )


def kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    *,
    temperature: float = 1.0,
    mask: Any = None,
) -> Any:
    """Distillation loss, a scalar tensor (see the module docstring).

    Parameters
    ----------
    student_logits, teacher_logits : tensor (..., vocab)
        Same shape; the teacher's are detached.
    temperature : float > 0
    mask : bool tensor (...), optional
        Tokens to include (e.g. ``attention_mask``; ignore-index positions False).
    """
    torch = torch_module()
    F = torch.nn.functional
    _vocab_check(student_logits, teacher_logits)
    t = check_float(temperature, "temperature")
    if t <= 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float() / t, dim=-1)
    p = F.log_softmax(teacher_logits.detach().reshape(-1, v).float() / t, dim=-1)
    per_token = F.kl_div(s, p, reduction="none", log_target=True).sum(dim=-1)
    if mask is not None:
        m = mask.reshape(-1).to(per_token.dtype)
        if m.numel() != per_token.numel():
            raise ValueError(f"mask: expected {per_token.numel()} token flags, got {m.numel()}")
        n = m.sum()
        if float(n) == 0:
            raise ValueError("mask: no token selected")
        return t * t * (per_token * m).sum() / n
    return t * t * per_token.mean()


def hidden_loss(student: Sequence[Any], teacher: Sequence[Any], proj: Any = None) -> Any:
    """Mean over the given layer pairs of ``mean((proj(h_S) - h_T)^2) / mean(h_T^2)``."""
    if len(student) != len(teacher) or not student:
        raise ValueError(
            f"teacher: expected as many hidden states as the student ({len(student)}), "
            f"got {len(teacher)}"
        )
    total: Any = 0.0
    for hs, ht in zip(student, teacher, strict=True):
        hs = hs.float() if proj is None else proj(hs.float())
        ht = ht.detach().float()
        if hs.shape != ht.shape:
            raise ValueError(
                f"teacher: hidden state shape {tuple(ht.shape)} differs from the student's "
                f"{tuple(hs.shape)} (give proj=)"
            )
        term = ((hs - ht) ** 2).mean() / (ht * ht).mean().clamp_min(1e-12)
        total = total + term
    return total / len(student)


class Distiller:
    """Teacher -> student loss for causal LMs.

    Parameters
    ----------
    student, teacher : torch.nn.Module
        ``model(input_ids, output_hidden_states=...)`` returning ``.logits`` (and
        ``.hidden_states``). The teacher runs in eval mode under ``no_grad``.
    temperature : float
    alpha_kd, alpha_ce, alpha_hidden : float
        Weights of the KD, next-token cross-entropy and hidden-state terms.
    layer_map : sequence of (student_layer, teacher_layer), optional
        Hidden states compared when ``alpha_hidden > 0`` (indices into
        ``hidden_states``; default: the last of each).
    """

    def __init__(
        self,
        student: Any,
        teacher: Any,
        *,
        temperature: float = 1.0,
        alpha_kd: float = 1.0,
        alpha_ce: float = 0.0,
        alpha_hidden: float = 0.0,
        layer_map: Sequence[tuple[int, int]] | None = None,
        proj: Any = None,
    ) -> None:
        # every check before the teacher is switched to eval mode and frozen
        self.temperature = check_float(temperature, "temperature")
        self.alpha_kd = check_float(alpha_kd, "alpha_kd")
        self.alpha_ce = check_float(alpha_ce, "alpha_ce")
        self.alpha_hidden = check_float(alpha_hidden, "alpha_hidden")
        vs = _vocab_size(student)
        vt = _vocab_size(teacher)
        if vs is not None and vt is not None and vs != vt:
            raise ValueError(f"teacher: vocabulary size {vt} does not match the student's {vs}")
        self.student = student
        self.teacher = teacher.eval()
        self.layer_map = list(layer_map) if layer_map else [(-1, -1)]
        self.proj = proj
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def loss(self, input_ids: Any, attention_mask: Any = None) -> tuple[Any, dict[str, float]]:
        """The combined loss on a batch ``(B, T)`` and its parts (floats)."""
        torch = torch_module()
        F = torch.nn.functional
        hidden = self.alpha_hidden > 0
        with torch.no_grad():
            t_out = self.teacher(input_ids, output_hidden_states=hidden)
        s_out = self.student(input_ids, output_hidden_states=hidden)
        parts: dict[str, float] = {}
        total = s_out.logits.new_zeros(())
        if self.alpha_kd:
            kd = kd_loss(
                s_out.logits, t_out.logits, temperature=self.temperature, mask=attention_mask
            )
            parts["kd"] = float(kd.detach())
            total = total + self.alpha_kd * kd
        if self.alpha_ce:
            v = s_out.logits.shape[-1]
            ce = F.cross_entropy(
                s_out.logits[:, :-1].reshape(-1, v).float(), input_ids[:, 1:].reshape(-1)
            )
            parts["ce"] = float(ce.detach())
            total = total + self.alpha_ce * ce
        if hidden:
            hs = [s_out.hidden_states[i] for i, _ in self.layer_map]
            ht = [t_out.hidden_states[j] for _, j in self.layer_map]
            h = hidden_loss(hs, ht, self.proj)
            parts["hidden"] = float(h.detach())
            total = total + self.alpha_hidden * h
        return total, parts

    __call__ = loss


def _vocab_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if v is None and hasattr(model, "get_output_embeddings"):
        emb = model.get_output_embeddings()
        v = None if emb is None else emb.weight.shape[0]
    return None if v is None else int(v)


def to_transformers(model: Any, *, dtype: Any = None) -> Any:
    """A ``transformers.LlamaForCausalLM`` with ``model``'s weights (float32 copies).

    Width-pruned (``sf.structured.width``: other ``hidden_dim``, heads) and depth-pruned
    models are plain Llamas and convert; a SliceGPT-sliced model (``residual_dims``) or a
    model with biases does not (ValueError). llama2.c's interleaved RoPE rows are permuted
    to transformers' ``rotate_half`` order."""
    torch = torch_module()
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..models import LlamaModel

    if not isinstance(model, LlamaModel):
        raise TypeError(
            f"model: expected a sparseforge.models.LlamaModel, got {type(model).__name__}"
        )
    c = model.config
    if c.residual_dims:
        raise ValueError(
            "model: a SliceGPT-sliced model (residual_dims) has no transformers class; "
            "use sparseforge.torch.to_torch"
        )
    if any(n.endswith(".bias") for n in model._weights):
        raise ValueError("model: biases are not supported by this converter")
    hf = LlamaForCausalLM(
        LlamaConfig(  # type: ignore[call-arg]
            vocab_size=c.vocab_size,
            hidden_size=c.dim,
            intermediate_size=c.hidden_dim,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads,
            head_dim=c.head_dim,
            max_position_embeddings=c.max_seq_len,
            rms_norm_eps=c.norm_eps,
            rope_theta=c.rope_theta,
            tie_word_embeddings=c.tied_embeddings,
            attention_bias=False,
            mlp_bias=False,
        )
    )
    perm = np.concatenate([np.arange(0, c.head_dim, 2), np.arange(1, c.head_dim, 2)])
    state = {}
    for name in c.weight_shapes():
        w = model.weight(name)
        w = np.asarray(w.to_dense() if hasattr(w, "to_dense") else w, dtype=np.float32)
        if c.rope_style == "interleaved" and name.endswith(("q_proj.weight", "k_proj.weight")):
            w = w.reshape(-1, c.head_dim, w.shape[1])[:, perm].reshape(w.shape)
        state[name] = torch.from_numpy(np.array(w))
    if c.tied_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    bad = [k for k in missing if "rotary" not in k] + list(unexpected)
    if bad:
        raise ValueError(f"model: weights do not map onto LlamaForCausalLM: {bad[:3]}")
    hf.train(False)
    return hf if dtype is None else hf.to(dtype)


# -- SliceGPT-sliced students ----------------------------------------------------------


@functools.cache
def _sliced_modules() -> Any:
    """The torch classes of :func:`to_torch` for sliced models (built on first use so the
    module imports without torch)."""
    torch = torch_module()
    nn = torch.nn
    F = nn.functional
    Module: Any = nn.Module  # torch is untyped here: a dynamic base class
    from dataclasses import dataclass

    @dataclass
    class CausalLMOutput:
        logits: Any
        loss: Any = None
        hidden_states: Any = None

    class RMSNorm(Module):  # type: ignore[misc]
        """``h / sqrt(sum(h^2) / dim + eps) * w``: for a stream narrower than the model's
        ``dim`` this is TransformerCompression's ``RMSN(hidden_size)`` (as
        ``LlamaModel._rms_norm``); at full width the usual mean."""

        def __init__(self, width: int, dim: int, eps: float) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))
            self.dim = dim
            self.eps = eps

        def forward(self, h: Any) -> Any:
            x = h.float()
            r = torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.dim + self.eps)
            return (x * r).to(h.dtype) * self.weight

    class Attention(Module):  # type: ignore[misc]
        def __init__(self, c: Any, d_in: int, d_mid: int) -> None:
            super().__init__()
            self.c = c
            self.q_proj = nn.Linear(d_in, c.q_dim, bias=False)
            self.k_proj = nn.Linear(d_in, c.kv_dim, bias=False)
            self.v_proj = nn.Linear(d_in, c.kv_dim, bias=False)
            self.o_proj = nn.Linear(c.q_dim, d_mid, bias=False)

        def _rope(self, x: Any) -> Any:  # x (B, H, T, D)
            c = self.c
            D, T = c.head_dim, x.shape[2]
            inv = c.rope_theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
            ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
            cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
            if c.rope_style == "interleaved":  # pairs (2i, 2i+1), llama2.c
                a, b = x[..., 0::2], x[..., 1::2]
                return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)
            a, b = x[..., : D // 2], x[..., D // 2 :]  # pairs (i, i + D/2), rotate_half
            return torch.cat((a * cos - b * sin, a * sin + b * cos), -1)

        def forward(self, x: Any) -> Any:
            c = self.c
            B, T, _ = x.shape
            q = self.q_proj(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
            q, k = self._rope(q), self._rope(k)
            g = c.n_heads // c.n_kv_heads  # query head h reads kv head h // g
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(a.transpose(1, 2).reshape(B, T, c.q_dim))

    class MLP(Module):  # type: ignore[misc]
        def __init__(self, c: Any, d_mid: int, d_out: int) -> None:
            super().__init__()
            self.gate_proj = nn.Linear(d_mid, c.hidden_dim, bias=False)
            self.up_proj = nn.Linear(d_mid, c.hidden_dim, bias=False)
            self.down_proj = nn.Linear(c.hidden_dim, d_out, bias=False)

        def forward(self, x: Any) -> Any:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class Block(Module):  # type: ignore[misc]
        def __init__(self, c: Any, i: int) -> None:
            super().__init__()
            d_in, d_mid, d_out = c.block_dims(i)
            self.input_layernorm = RMSNorm(d_in, c.dim, c.norm_eps)
            self.self_attn = Attention(c, d_in, d_mid)
            self.attn_shortcut = nn.Linear(d_in, d_mid, bias=False)
            self.post_attention_layernorm = RMSNorm(d_mid, c.dim, c.norm_eps)
            self.mlp = MLP(c, d_mid, d_out)
            self.mlp_shortcut = nn.Linear(d_mid, d_out, bias=False)

        def forward(self, h: Any) -> Any:
            h = self.attn_shortcut(h) + self.self_attn(self.input_layernorm(h))
            return self.mlp_shortcut(h) + self.mlp(self.post_attention_layernorm(h))

    class Body(Module):  # type: ignore[misc]
        def __init__(self, c: Any) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(c.vocab_size, c.embed_dim)
            self.layers = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
            self.norm = RMSNorm(c.head_in_dim, c.dim, c.norm_eps)

    class SlicedLlamaForCausalLM(Module):  # type: ignore[misc]
        """A SliceGPT-sliced sparseforge Llama as a torch module (HF-style names, so
        :func:`prune_model`, :class:`Sparsifier` and :class:`Distiller` work on it);
        ``forward(input_ids, labels=None, output_hidden_states=False)``."""

        def __init__(self, c: Any) -> None:
            super().__init__()
            self.config = c
            self.model = Body(c)
            self.lm_head = nn.Linear(c.head_in_dim, c.vocab_size, bias=False)
            if c.tied_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight

        def get_output_embeddings(self) -> Any:
            return self.lm_head

        def forward(
            self, input_ids: Any, labels: Any = None, output_hidden_states: bool = False, **_: Any
        ) -> Any:
            h = self.model.embed_tokens(input_ids)
            hidden = [h] if output_hidden_states else None
            for layer in self.model.layers:
                h = layer(h)
                if hidden is not None:
                    hidden.append(h)
            logits = self.lm_head(self.model.norm(h))
            loss = None
            if labels is not None:
                v = logits.shape[-1]
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, v).float(), labels[:, 1:].reshape(-1)
                )
            return CausalLMOutput(logits, loss, tuple(hidden) if hidden is not None else None)

    return SlicedLlamaForCausalLM


def to_torch(model: Any, *, dtype: Any = None) -> Any:
    """A torch module computing ``model``'s forward, for any sparseforge Llama: a plain,
    width- or depth-pruned one becomes a transformers ``LlamaForCausalLM``
    (:func:`to_transformers`); a SliceGPT-sliced one (``config.residual_dims``) becomes a
    pure-torch ``SlicedLlamaForCausalLM`` with the shortcut matrices as linears
    (``attn_shortcut``/``mlp_shortcut``), the sliced norms of ``LlamaModel`` and both RoPE
    styles (logits equal sparseforge's forward within 1e-4, tested). Float32 copies; a
    model with biases raises ``ValueError``."""
    from ..models import LlamaModel

    if not isinstance(model, LlamaModel):
        raise TypeError(
            f"model: expected a sparseforge.models.LlamaModel, got {type(model).__name__}"
        )
    c = model.config
    if not c.residual_dims:
        return to_transformers(model, dtype=dtype)
    if any(n.endswith(".bias") for n in model._weights):
        raise ValueError("model: biases are not supported by this converter")
    torch = torch_module()
    net = _sliced_modules()(c)
    state = {}
    for name in c.weight_shapes():
        w = model.weight(name)
        w = np.asarray(w.to_dense() if hasattr(w, "to_dense") else w, dtype=np.float32)
        state[name] = torch.from_numpy(np.array(w))
    if c.tied_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"model: weights do not map onto the sliced module: {missing[:3]}")
    net.train(False)
    return net if dtype is None else net.to(dtype)
