"""Mixture-of-experts routing: routers, capacity and token dropping, auxiliary losses,
dispatch/combine, a SwiGLU MoE FFN over numpy experts, and expert pruning.

Notation: ``T`` tokens, ``E`` experts, ``k`` experts per token (``top_k``), ``D`` model dim,
``H`` expert hidden dim, ``L`` layers (losses). Router logits are float32 ``(T, E)``
(``x @ W_r.T`` with a router weight ``W_r`` of shape ``(E, D)``); experts are stacked
SwiGLU weights ``w_gate (E, H, D)``, ``w_up (E, H, D)``, ``w_down (E, D, H)`` (Mixtral /
DeepSeek layout, ``f_e(x) = w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x))``).

One verb per job::

    router = sf.moe.Router(top_k=2)                               # Mixtral
    router = sf.moe.Router.deepseek_v3(bias=b)                    # sigmoid + groups
    router = sf.moe.Router(top_k=1, renormalize=False,
                           capacity_mode="fixed", capacity_factor=1.25)  # Switch
    r = router.route(logits)            # RoutingResult: ids, weights, drops, loads, plan
    y = sf.moe.moe_ffn(x, (w_gate, w_up, w_down), routing=r)
    aux = sf.moe.load_balancing_loss(logits, kind="mixtral", top_k=2)
    z = sf.moe.z_loss(logits)

Selection is deterministic: by selection score descending, ties by the lower expert index
(groups likewise). The C++ core does routing, capacity, dispatch/combine, the FFN and the
losses; results are bitwise identical for any ``num_threads``. docs/moe.md puts the
load-balancing normalisations of Switch, HF Mixtral and megablocks side by side.

Layout: ``routing`` (:class:`Router`, :class:`RoutingResult`, :func:`route`, capacity),
``dispatch`` (:func:`dispatch`, :func:`combine`, :func:`moe_ffn`), ``losses``, ``pruning``
(:func:`expert_importance`, :func:`prune_experts`).
"""

from __future__ import annotations

from ._common import AUX_LOSS_KINDS, CAPACITY_MODES
from .dispatch import combine, dispatch, moe_ffn
from .losses import load_balancing_loss, z_loss
from .pruning import ExpertPruneResult, expert_importance, prune_experts
from .routing import Router, RoutingResult, expert_capacity, jitter, route, router_logits

__all__ = [
    "AUX_LOSS_KINDS",
    "CAPACITY_MODES",
    "ExpertPruneResult",
    "Router",
    "RoutingResult",
    "combine",
    "dispatch",
    "expert_capacity",
    "expert_importance",
    "jitter",
    "load_balancing_loss",
    "moe_ffn",
    "prune_experts",
    "route",
    "router_logits",
    "z_loss",
]


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
