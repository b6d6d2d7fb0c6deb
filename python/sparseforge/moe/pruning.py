"""Expert pruning: expert importance and prune_experts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from .._base import threads_arg
from .._validate import check_choice, check_int
from ._common import IMPORTANCE_METHODS, ExpertFn, Experts, F32Array, I64Array, _f32
from .dispatch import _experts, _pad_offsets, _resolve_routing, dispatch
from .routing import Router, RoutingResult

__all__ = ["ExpertPruneResult", "expert_importance", "prune_experts"]


@dataclass(frozen=True, eq=False)
class ExpertPruneResult:
    """Which experts survive and the pruned arrays.

    Attributes
    ----------
    keep : ndarray (E',) int64
        Kept expert ids, ascending (the new expert ``i`` is old expert ``keep[i]``).
    importance : ndarray (E,) float64
        The criterion per old expert (higher = more important).
    method : str
    experts : tuple of three ndarrays, or None
        ``(w_gate[keep], w_up[keep], w_down[keep])`` (copies) for stacked experts.
    router_weight : ndarray (E', D) or None
        ``router_weight[keep]`` (a copy) when a router weight was given.
    bias : ndarray (E',) float32 or None
        The router's selection bias restricted to ``keep``.
    """

    keep: I64Array
    importance: npt.NDArray[np.float64]
    method: str
    experts: Experts | None
    router_weight: npt.NDArray[Any] | None
    bias: F32Array | None

    def router(self, router: Router) -> Router:
        """``router`` with its bias restricted to the kept experts."""
        return Router(**{**_router_fields(router), "bias": self.bias})


def _router_fields(r: Router) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


def expert_importance(
    x: F32Array,
    experts: Experts | ExpertFn | None = None,
    *,
    method: str = "frequency",
    routing: RoutingResult | None = None,
    logits: F32Array | None = None,
    router_weight: npt.NDArray[Any] | None = None,
    router: Router | None = None,
    num_threads: int | None = None,
) -> npt.NDArray[np.float64]:
    """Per-expert importance over calibration tokens ``x`` (T, D).

    method:
        * ``"frequency"``: ``load_e / (T k)``, the fraction of routed slots (before
          capacity) sent to ``e``.
        * ``"weight"``: ``sum of w[t, j] over slots routed to e, / T`` (soft frequency).
        * ``"output_norm"``: ``sum of w[t, j] * ||f_e(x_t)||_2 over kept slots, / T``: the
          mean norm of what ``e`` adds to the residual stream per token (needs ``experts``).

    Returns
    -------
    ndarray (E,) float64
    """
    _f32(x, "x")
    check_choice(method, "method", IMPORTANCE_METHODS)
    r = _resolve_routing(x, routing, logits, router_weight, router, num_threads)
    T = max(r.num_tokens, 1)
    if method == "frequency":
        return r.load_fraction.astype(np.float64)
    if method == "weight":
        return (
            np.bincount(
                r.expert_ids.ravel(),
                weights=r.weights.ravel().astype(np.float64),
                minlength=r.num_experts,
            )[: r.num_experts]
            / T
        )
    if experts is None:
        raise ValueError("experts: required for method='output_norm'")
    if callable(experts):
        buf = dispatch(x, r, num_threads=num_threads)
        norms = np.zeros(buf.shape[0], np.float64)
        for e in range(r.num_experts):
            a, b = int(r.offsets[e]), int(r.offsets[e + 1])
            if b > a:
                norms[a:b] = np.linalg.norm(np.asarray(experts(e, buf[a:b]), np.float64), axis=1)
    else:
        g, u, d = _experts(experts)
        _, n32 = _core.moe.swiglu_ffn(
            x,
            _pad_offsets(r, g.shape[0]),
            r.token_of,
            r.row_of,
            r.weights,
            g,
            u,
            d,
            True,
            threads_arg(num_threads),
        )
        norms = np.asarray(n32, np.float64)
    kept = r.row_of >= 0
    rows = r.row_of[kept]
    contrib = r.weights[kept].astype(np.float64) * norms[rows]
    return np.bincount(r.expert_ids[kept], weights=contrib, minlength=r.num_experts) / T


def prune_experts(
    x: F32Array,
    experts: Experts | ExpertFn | None = None,
    *,
    num_keep: int,
    method: str = "frequency",
    routing: RoutingResult | None = None,
    logits: F32Array | None = None,
    router_weight: npt.NDArray[Any] | None = None,
    router: Router | None = None,
    num_threads: int | None = None,
) -> ExpertPruneResult:
    """Keep the ``num_keep`` most important experts (see :func:`expert_importance`).

    Ties in importance keep the lower expert id. Needs ``num_keep >= router.top_k``;
    group-limited routers (``n_group > 1``) are refused (pruning would unbalance the
    groups). Returns the kept ids and the pruned router weight / bias / stacked experts.
    """
    if router is not None and not isinstance(router, Router):
        raise TypeError(f"router: expected a Router, got {type(router).__name__}")
    rt = router if router is not None else Router()
    if rt.n_group > 1:
        raise ValueError(
            "router: expert pruning with group-limited routing (n_group > 1) is not supported"
        )
    imp = expert_importance(
        x,
        experts,
        method=method,
        routing=routing,
        logits=logits,
        router_weight=router_weight,
        router=router,
        num_threads=num_threads,
    )
    n_exp = imp.shape[0]
    if not callable(experts) and experts is not None:
        n_exp = max(n_exp, _experts(experts)[0].shape[0])
        imp = np.concatenate([imp, np.zeros(n_exp - imp.shape[0])])
    n = check_int(num_keep, "num_keep", 1)
    if not rt.top_k <= n <= n_exp:
        raise ValueError(
            f"num_keep: expected top_k={rt.top_k} <= num_keep <= {n_exp}, got {num_keep}"
        )
    order = np.lexsort((np.arange(n_exp), -imp))  # importance desc, then lower id
    keep = np.sort(order[:n]).astype(np.int64)
    pruned: Experts | None = None
    if experts is not None and not callable(experts):
        g, u, d = _experts(experts)
        pruned = (g[keep], u[keep], d[keep])
    rw = None if router_weight is None else np.ascontiguousarray(router_weight[keep])
    bias = None if rt.bias is None else np.ascontiguousarray(rt.bias[keep])
    return ExpertPruneResult(keep, imp, method, pruned, rw, bias)


def __dir__() -> list[str]:
    return sorted(__all__)
