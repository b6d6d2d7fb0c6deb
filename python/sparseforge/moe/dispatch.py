"""Dispatch and combine, and the SwiGLU MoE FFN over numpy experts."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .. import _core
from .._base import threads_arg
from .._validate import check_choice
from ._common import LAYOUTS, ExpertFn, Experts, F32Array, I32Array, I64Array, _f32
from .routing import Router, RoutingResult, _check_routing, router_logits

__all__ = ["combine", "dispatch", "moe_ffn"]


def dispatch(
    x: F32Array,
    routing: RoutingResult,
    *,
    layout: str = "compact",
    num_threads: int | None = None,
) -> F32Array:
    """Gather each expert's tokens into one buffer.

    Parameters
    ----------
    x : ndarray (T, D) float32
    routing : RoutingResult
    layout : {"compact", "padded"}
        "compact": ``(N, D)`` rows grouped by expert (``routing.offsets``), no padding
        (megablocks' dropless layout). "padded": ``(E, capacity, D)`` with zero rows after
        each expert's ``expert_counts[e]`` tokens (Switch / GShard's dispatch tensor).
        Within an expert, rows follow capacity priority (``routing.locations``).

    Returns
    -------
    ndarray, float32, new.
    """
    _f32(x, "x")
    _check_routing(routing)
    check_choice(layout, "layout", LAYOUTS)
    if x.shape[0] != routing.num_tokens:
        raise ValueError(f"x: expected {routing.num_tokens} rows (tokens), got shape {x.shape}")
    threads = threads_arg(num_threads)
    if x.shape[0] == 0:
        shape = (0, x.shape[1]) if layout == "compact" else (routing.num_experts, 0, x.shape[1])
        return np.zeros(shape, np.float32)
    if layout == "compact":
        return _core.moe.gather(x, routing.token_of, threads)
    tok = _padded_token_of(routing)
    buf = _core.moe.gather(x, tok, threads)
    return cast(F32Array, buf.reshape(routing.num_experts, routing.capacity, x.shape[1]))


def _padded_token_of(r: RoutingResult) -> I32Array:
    tok = np.full(r.num_experts * r.capacity, -1, np.int32)
    kept = r.locations >= 0
    rows = r.expert_ids[kept].astype(np.int64) * r.capacity + r.locations[kept]
    tok[rows] = np.nonzero(kept)[0].astype(np.int32)
    return tok


def combine(
    expert_out: F32Array,
    routing: RoutingResult,
    *,
    out: F32Array | None = None,
    accumulate: bool = False,
    num_threads: int | None = None,
) -> F32Array:
    """Weighted scatter-add back to tokens: ``y[t] = sum_j w[t, j] * expert_out[row(t, j)]``.

    Parameters
    ----------
    expert_out : ndarray float32, ``(N, D)`` (compact) or ``(E, capacity, D)`` (padded)
        The experts' outputs for :func:`dispatch`'s buffer of the same layout.
    routing : RoutingResult
    out : ndarray (T, D) float32, optional
        Written (or added to when ``accumulate``: a residual or shared expert already
        there) and returned.

    Returns
    -------
    ndarray (T, D) float32. Slots are summed in order ``j = 0..k-1``; dropped slots are
    skipped; identical for any ``num_threads``.
    """
    _check_routing(routing)
    if not isinstance(expert_out, np.ndarray):
        raise TypeError(f"expert_out: expected a numpy.ndarray, got {type(expert_out).__name__}")
    if expert_out.ndim == 3:
        if expert_out.shape[:2] != (routing.num_experts, routing.capacity):
            raise ValueError(
                f"expert_out: expected shape ({routing.num_experts}, {routing.capacity}, D), got "
                f"{expert_out.shape}"
            )
        buf = expert_out.reshape(-1, expert_out.shape[2])
        rows = np.where(
            routing.locations >= 0,
            routing.expert_ids.astype(np.int64) * routing.capacity + routing.locations,
            -1,
        ).astype(np.int32)
    else:
        buf = _f32(expert_out, "expert_out")
        if buf.shape[0] != routing.token_of.shape[0]:
            raise ValueError(
                f"expert_out: expected {routing.token_of.shape[0]} rows (kept assignments), got "
                f"shape {buf.shape}"
            )
        rows = routing.row_of
    if not isinstance(accumulate, bool):
        raise TypeError("accumulate: expected a bool")
    if routing.num_tokens == 0:
        return np.zeros((0, buf.shape[1]), np.float32) if out is None else out
    return _core.moe.combine(buf, rows, routing.weights, out, accumulate, threads_arg(num_threads))


def _experts(experts: Any) -> Experts:
    if not isinstance(experts, tuple | list) or len(experts) != 3:
        raise TypeError(
            "experts: expected (w_gate (E, H, D), w_up (E, H, D), w_down (E, D, H)) or a callable"
        )
    g, u, d = experts
    for a, name in ((g, "w_gate"), (u, "w_up"), (d, "w_down")):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
        if a.ndim != 3:
            raise ValueError(f"{name}: expected a 3-D array, got shape {a.shape}")
    if u.shape != g.shape:
        raise ValueError(f"w_up: expected w_gate's shape {g.shape}, got {u.shape}")
    e, h, dim = g.shape
    if d.shape != (e, dim, h):
        raise ValueError(f"w_down: expected shape ({e}, {dim}, {h}) = (E, D, H), got {d.shape}")
    return g, u, d


def _resolve_routing(
    x: F32Array,
    routing: RoutingResult | None,
    logits: F32Array | None,
    router_weight: npt.NDArray[Any] | None,
    router: Router | None,
    num_threads: int | None,
) -> RoutingResult:
    given = sum(a is not None for a in (routing, logits, router_weight))
    if given != 1:
        raise ValueError("routing, logits, router_weight: pass exactly one")
    if routing is not None:
        return _check_routing(routing)
    if router is not None and not isinstance(router, Router):
        raise TypeError(f"router: expected a Router, got {type(router).__name__}")
    r = router if router is not None else Router()
    if logits is None:
        logits = router_logits(x, cast(npt.NDArray[Any], router_weight), num_threads=num_threads)
    return r.route(logits, num_threads=num_threads)


def moe_ffn(
    x: F32Array,
    experts: Experts | ExpertFn,
    *,
    routing: RoutingResult | None = None,
    logits: F32Array | None = None,
    router_weight: npt.NDArray[Any] | None = None,
    router: Router | None = None,
    return_routing: bool = False,
    num_threads: int | None = None,
) -> Any:
    """The MoE FFN forward: ``y[t] = sum_j w[t, j] f_{e(t, j)}(x[t])`` over kept slots.

    Parameters
    ----------
    x : ndarray (T, D) float32
    experts : (w_gate (E, H, D), w_up (E, H, D), w_down (E, D, H)) or callable
        Stacked SwiGLU weights (float32, float16 or bfloat16, one dtype, C-contiguous):
        the C++ path (each expert's tokens form one GEMM batch, experts in parallel). Or
        ``f(e, x_e) -> (n_e, D)`` called once per expert that received tokens.
    routing, logits, router_weight : exactly one
        A :class:`RoutingResult`; or logits ``(T, E)``; or the router weight ``(E, D)``
        (logits = ``x @ W_r.T``, no jitter). The last two are routed with ``router``
        (default ``Router()``: Mixtral top-2).
    return_routing : bool
        Also return the :class:`RoutingResult`.

    Returns
    -------
    ndarray (T, D) float32 (new), or ``(y, routing)``. Dropped tokens get 0.
    """
    _f32(x, "x")
    r = _resolve_routing(x, routing, logits, router_weight, router, num_threads)
    if x.shape[0] != r.num_tokens:
        raise ValueError(f"x: expected {r.num_tokens} rows (tokens), got shape {x.shape}")
    if x.shape[0] == 0:
        y = np.zeros(x.shape, np.float32)
    elif callable(experts):
        y = _ffn_callable(x, r, experts, num_threads)
    else:
        g, u, d = _experts(experts)
        if g.shape[0] < r.num_experts or g.shape[2] != x.shape[1]:
            raise ValueError(
                f"w_gate: expected shape ({r.num_experts}, H, {x.shape[1]}) = (E, H, D), got "
                f"{g.shape}"
            )
        y, _ = _core.moe.swiglu_ffn(
            x,
            _pad_offsets(r, g.shape[0]),
            r.token_of,
            r.row_of,
            r.weights,
            g,
            u,
            d,
            False,
            threads_arg(num_threads),
        )
    return (y, r) if return_routing else y


def _pad_offsets(r: RoutingResult, n_experts: int) -> I64Array:
    """The plan's offsets for ``n_experts >= r.num_experts`` (experts nobody chose)."""
    if n_experts == r.num_experts:
        return r.offsets
    extra = np.full(n_experts - r.num_experts, r.offsets[-1], np.int64)
    return np.concatenate([r.offsets, extra])


def _ffn_callable(x: F32Array, r: RoutingResult, fn: ExpertFn, num_threads: int | None) -> F32Array:
    buf = dispatch(x, r, num_threads=num_threads)
    out = np.empty_like(buf)
    for e in range(r.num_experts):
        a, b = int(r.offsets[e]), int(r.offsets[e + 1])
        if b > a:
            res = np.asarray(fn(e, buf[a:b]), dtype=np.float32)
            if res.shape != (b - a, x.shape[1]):
                want = (b - a, x.shape[1])
                raise ValueError(f"experts: expert {e} returned shape {res.shape}, expected {want}")
            out[a:b] = res
    return combine(out, r, num_threads=num_threads)


def __dir__() -> list[str]:
    return sorted(__all__)
