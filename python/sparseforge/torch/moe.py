"""MoE router training aids with autograd.

* :func:`router_jitter`: Switch's multiplicative input noise ``x * U(1 - eps, 1 + eps)``.
* :func:`load_balancing_loss` (kinds ``"switch"``, ``"mixtral"``, ``"megablocks"``) and
  :func:`z_loss`: differentiable torch versions of :func:`sparseforge.moe.load_balancing_loss`
  and :func:`sparseforge.moe.z_loss` with the same formulas, normalisations, top-k tie order
  (lower expert index first) and float64 arithmetic, so the forward values agree with the
  core's to float64 rounding. Gradients flow through the router probabilities only (the
  expert counts are piecewise constant).
* :func:`sparsemixer`: SparseMixer-v2 (Liu et al. 2024, as transformers' PhiMoE ships it):
  experts sampled (Gumbel) among those within ``2 * jitter_eps`` relative distance of the
  best logit, gates weighted by Heun's-third-order mid-point mask, and a custom backward that
  gives the router a gradient estimate for the discrete choice. Generalised to any
  ``top_k``; for ``top_k = 2`` it draws random numbers in the same order as
  ``transformers.models.phimoe.modeling_phimoe.sparsemixer``, so with the same seed it
  returns the same gates, experts and gradients.
"""

from __future__ import annotations

from typing import Any

from ._util import check_fraction, check_int, torch_module

__all__ = ["load_balancing_loss", "router_jitter", "sparsemixer", "z_loss"]

torch = torch_module()
_Function: Any = torch.autograd.Function
KINDS = ("switch", "mixtral", "megablocks")


def router_jitter(x: Any, eps: float, *, generator: Any = None) -> Any:
    """``x * U(1 - eps, 1 + eps)`` elementwise (Switch / HF ``router_jitter_noise``); the
    noise is a constant for autograd."""
    e = check_fraction(eps, "eps")
    if e == 0.0:
        return x
    noise = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    noise.uniform_(1.0 - e, 1.0 + e, generator=generator)
    return x * noise


def _stack(logits: Any) -> tuple[Any, int]:
    if isinstance(logits, list | tuple):
        if not logits:
            raise ValueError("logits: expected at least one layer")
        if any(t.shape != logits[0].shape or t.ndim != 2 for t in logits):
            raise ValueError("logits: every layer must have the same (T, E) shape")
        return torch.stack(list(logits)), len(logits)
    if logits.ndim == 2:
        return logits[None], 1
    if logits.ndim == 3:
        return logits, int(logits.shape[0])
    raise ValueError(f"logits: expected (T, E) or (L, T, E), got shape {tuple(logits.shape)}")


def _topk_desc(p: Any, k: int) -> Any:
    """Indices of the k largest per row; ties -> lower index (stable descending sort)."""
    return torch.sort(p, dim=-1, descending=True, stable=True).indices[..., :k]


def load_balancing_loss(
    logits: Any,
    *,
    kind: str = "switch",
    top_k: int = 1,
    alpha: float = 1.0,
    expert_ids: Any = None,
    token_mask: Any = None,
) -> Any:
    """Differentiable load-balancing loss (float64 scalar tensor); see
    :func:`sparseforge.moe.load_balancing_loss` for the three normalisations.

    Parameters
    ----------
    logits : tensor (T, E) or (L, T, E), or a sequence of (T, E) tensors (layers)
    kind : {"switch", "mixtral", "megablocks"}
    top_k : int
    expert_ids : int tensor (L*T, k), optional
        Experts actually chosen; default top-k of the softmax (ties: lower index).
    token_mask : bool tensor (T,), optional
    """
    x, L = _stack(logits)
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    k = check_int(top_k, "top_k", 1)
    T, E = int(x.shape[1]), int(x.shape[2])
    if k > E:
        raise ValueError(f"top_k: expected <= num_experts={E}, got {k}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("logits: expected finite values")
    p = torch.softmax(x.double(), dim=-1)  # (L, T, E)
    counted = 1 if kind == "switch" else k
    if expert_ids is not None:
        ids = torch.as_tensor(expert_ids).to(x.device).long()
        if tuple(ids.shape) != (L * T, k):
            raise ValueError(f"expert_ids: expected shape ({L * T}, {k}), got {tuple(ids.shape)}")
        if bool((ids < 0).any()) or bool((ids >= E).any()):
            raise ValueError(f"expert_ids: expected values in [0, {E})")
        ids = ids.reshape(L, T, k)[..., :counted]
    else:
        ids = _topk_desc(p.detach(), counted)
    counts = torch.zeros(L, T, E, dtype=torch.float64, device=x.device)
    counts.scatter_add_(-1, ids, torch.ones(ids.shape, dtype=torch.float64, device=x.device))
    tokens = float(T)
    if token_mask is not None:
        m = torch.as_tensor(token_mask, device=x.device)
        if m.dtype != torch.bool or tuple(m.shape) != (T,):
            raise ValueError(f"token_mask: expected a bool tensor of shape ({T},)")
        tokens = float(m.sum())
        if tokens == 0:
            raise ValueError("token_mask: expected at least one token kept, got none")
        w = m.double()[None, :, None]
        p = p * w
        counts = counts * w
    c = counts.sum(dim=1)  # (L, E)
    P = p.sum(dim=1)
    if kind == "switch":
        loss = E * (c * P).sum() / (tokens * tokens * L)
    elif kind == "megablocks":
        loss = E * (c * P).sum() / (L * tokens * k * tokens)
    else:
        loss = E * (c.sum(0) * P.sum(0)).sum() / (L * tokens * L * tokens)
    return alpha * loss


def z_loss(logits: Any, *, alpha: float = 1.0) -> Any:
    """ST-MoE router z-loss ``alpha * mean_rows logsumexp(row)^2`` (float64 scalar)."""
    x, _ = _stack(logits)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("logits: expected finite values")
    lse = torch.logsumexp(x.double().reshape(-1, x.shape[-1]), dim=-1)
    return alpha * (lse * lse).mean()


class _Multiplier(_Function):  # type: ignore[misc]
    """SparseMixer's gate: forward ``gate * midpoint``; backward the estimator of
    ``d gate / d scores`` for the sampled expert (PhiMoE's ``PhimoeMultiplier``)."""

    @staticmethod
    def forward(ctx: Any, scores: Any, gate: Any, selected: Any, probs: Any, midpoint: Any) -> Any:
        ctx.save_for_backward(gate, selected, probs)
        return gate * midpoint

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        gate, selected, probs = ctx.saved_tensors
        g = grad * gate
        out = probs * g.mul(-1)
        out.scatter_add_(dim=-1, index=selected, src=g)
        return out, None, None, None, None


def sparsemixer(
    scores: Any, *, top_k: int = 2, jitter_eps: float = 0.01, training: bool = True
) -> tuple[Any, Any]:
    """SparseMixer-v2 routing of router logits ``scores`` (T, E).

    Returns ``(gates, experts)``, both (T, top_k): gate values (differentiable with the
    SparseMixer estimator in training) and the chosen expert ids (column 0 first).
    Eval mode is deterministic (the best remaining expert each round)."""
    k = check_int(top_k, "top_k", 1)
    if scores.ndim != 2 or k > scores.shape[-1]:
        raise ValueError(f"scores: expected (T, E) with E >= top_k={k}, got {tuple(scores.shape)}")
    eps = float(jitter_eps)
    gates: list[Any] = []
    chosen: list[Any] = []
    masked_scores = scores
    for r in range(k):
        if r > 0:
            masked_scores = torch.scatter(scores, -1, torch.cat(chosen, dim=-1), float("-inf"))
        with torch.no_grad():
            thresh, max_ind = masked_scores.max(dim=-1, keepdim=True)
            factor = scores.abs().clamp(min=thresh)
            far = ((thresh - scores) / factor) > (2 * eps)
        masked = masked_scores.masked_fill(far, float("-inf"))
        if training:
            gumbel = torch.empty_like(masked).exponential_().log()
            sel = (masked - gumbel).max(dim=-1)[1].unsqueeze(-1)
        else:
            sel = max_ind
        probs = torch.softmax(masked, dim=-1)
        gate = probs.gather(dim=-1, index=sel)
        if training:
            top, top_ind = probs.max(dim=-1, keepdim=True)
            u = torch.rand_like(top) if r == 0 else torch.rand_like(top).uniform_()
            mid = torch.logical_or(sel == top_ind, u > 0.75)
            mid = torch.add(0.3333, mid, alpha=0.6667).type_as(probs)
            gate = _Multiplier.apply(scores, gate, sel, probs, mid)
        gates.append(gate)
        chosen.append(sel)
    return torch.cat(gates, dim=-1), torch.cat(chosen, dim=-1)
