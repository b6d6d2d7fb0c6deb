"""Routing: Router (top-k softmax, sigmoid + bias, groups, capacity), RoutingResult, jitter,
router logits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .. import _core
from .._base import threads_arg
from .._validate import check_choice, check_int, check_number
from ..kernels import gemm
from ._common import (
    _MAX_EXPERTS,
    CAPACITY_MODES,
    GROUP_SCORES,
    PRIORITIES,
    SCORES,
    BoolArray,
    F32Array,
    I32Array,
    I64Array,
    _f32,
    _ids,
    _logits,
    _rng,
)

__all__ = ["Router", "RoutingResult", "expert_capacity", "jitter", "route", "router_logits"]


def _check_routing(r: Any, name: str = "routing") -> RoutingResult:
    """A RoutingResult whose arrays agree with each other (shapes, dtypes, ranges), checked
    before anything is sized from it: a tampered result (capacity 10^12, token rows out of
    range) is a ValueError, never a huge allocation or an out-of-bounds gather."""
    if not isinstance(r, RoutingResult):
        raise TypeError(f"{name}: expected a RoutingResult, got {type(r).__name__}")
    fields = ("expert_ids", "weights", "locations", "load", "expert_counts", "offsets")
    for f in (*fields, "token_of", "row_of"):
        if not isinstance(getattr(r, f), np.ndarray):
            raise TypeError(f"{name}.{f}: expected a numpy.ndarray")
    if r.expert_ids.ndim != 2:
        raise ValueError(f"{name}.expert_ids: expected 2-D, got shape {r.expert_ids.shape}")
    t, k = r.expert_ids.shape
    e = r.load.shape[0] if r.load.ndim == 1 else -1
    n = r.token_of.shape[0] if r.token_of.ndim == 1 else -1
    checks = [
        (r.weights.shape == (t, k), "weights", f"shape {(t, k)}"),
        (r.locations.shape == (t, k), "locations", f"shape {(t, k)}"),
        (r.row_of.shape == (t, k), "row_of", f"shape {(t, k)}"),
        (e >= 1, "load", "a 1-D array of E >= 1 counts"),
        (r.expert_counts.shape == (e,), "expert_counts", f"shape ({e},)"),
        (r.offsets.shape == (e + 1,), "offsets", f"shape ({e + 1},)"),
        (0 <= n <= t * k, "token_of", f"a 1-D array of at most {t * k} rows"),
        (
            isinstance(r.capacity, (int, np.integer)) and 0 <= int(r.capacity) <= max(t, 1),
            "capacity",
            f"an int in [0, {max(t, 1)}] (tokens)",
        ),
    ]
    for ok, f, want in checks:
        if not ok:
            raise ValueError(f"{name}.{f}: expected {want} (a tampered RoutingResult?)")
    if t * k:
        if int(r.expert_ids.min()) < 0 or int(r.expert_ids.max()) >= e:
            raise ValueError(f"{name}.expert_ids: expected values in [0, {e})")
        if int(r.locations.max()) >= max(int(r.capacity), 1) or int(r.locations.min()) < -1:
            raise ValueError(f"{name}.locations: expected values in [-1, capacity)")
        if int(r.row_of.min()) < -1 or int(r.row_of.max()) >= max(n, 1):
            raise ValueError(f"{name}.row_of: expected values in [-1, {n})")
    if n and (int(r.token_of.min()) < 0 or int(r.token_of.max()) >= t):
        raise ValueError(f"{name}.token_of: expected token indices in [0, {t})")
    return r


def expert_capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """``ceil(capacity_factor * top_k * tokens / num_experts)``, clipped to ``[1, tokens]``.

    The slots per expert of ``capacity_mode="fixed"`` (the Switch / GShard capacity with
    ``k`` slots per token; megablocks' ``int(cf * T / E)`` per top-k pass rounds down).
    """
    t = check_int(tokens, "tokens")
    k = check_int(top_k, "top_k", 1)
    e = check_int(num_experts, "num_experts", 1)
    cf = check_number(capacity_factor, "capacity_factor")
    if cf <= 0:
        raise ValueError(f"capacity_factor: expected > 0, got {capacity_factor}")
    return max(1, min(math.ceil(cf * k * t / e), max(t, 1)))


@dataclass(frozen=True, eq=False)
class RoutingResult:
    """What a router decided for ``T`` tokens, with drop statistics and the dispatch plan.

    Attributes
    ----------
    expert_ids : ndarray (T, k) int32
        Chosen experts per token, best first (selection score descending, ties by lower
        index). Dropped slots keep their expert id.
    weights : ndarray (T, k) float32
        Combine weights from the *unbiased* scores (renormalised over the chosen ``k`` and
        times ``routed_scaling_factor`` when the router says so). Dropped slots keep their
        weight; :func:`combine` skips them (a dropped token's output is 0: the residual
        carries it, as in Switch).
    scores : ndarray (T, E) float32
        Router scores: softmax or sigmoid of the logits (no bias).
    locations : ndarray (T, k) int32
        Slot of ``(t, j)`` in its expert's buffer, in priority order; -1 when dropped.
    load : ndarray (E,) int64
        Assignments per expert before dropping (``sum(load) == T * k``).
    expert_counts : ndarray (E,) int64
        Assignments per expert after dropping (the kept rows).
    capacity : int
        Slots per expert used: the largest load (dropless), the fixed capacity, or
        ``min(largest load, fixed capacity)`` (dynamic).
    num_dropped : int
        Dropped ``(token, slot)`` assignments.
    offsets : ndarray (E + 1,) int64
        Compact dispatch plan: expert ``e`` owns rows ``offsets[e]:offsets[e+1]`` of
        :func:`dispatch`'s buffer.
    token_of : ndarray (N,) int32
        The token of each compact buffer row (``N = sum(expert_counts)``).
    row_of : ndarray (T, k) int32
        The compact buffer row of ``(t, j)``, -1 when dropped.
    """

    expert_ids: I32Array
    weights: F32Array
    scores: F32Array
    locations: I32Array
    load: I64Array
    expert_counts: I64Array
    capacity: int
    num_dropped: int
    offsets: I64Array
    token_of: I32Array
    row_of: I32Array

    @property
    def num_tokens(self) -> int:
        return int(self.expert_ids.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.expert_ids.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.load.shape[0])

    @property
    def kept(self) -> BoolArray:
        """(T, k) bool: the slot reached its expert."""
        return self.locations >= 0

    @property
    def dropped(self) -> BoolArray:
        """(T, k) bool: the slot overflowed its expert's capacity."""
        return self.locations < 0

    @property
    def dropped_tokens(self) -> BoolArray:
        """(T,) bool: every slot of the token was dropped (its MoE output is 0)."""
        return cast(BoolArray, np.all(self.locations < 0, axis=1))

    @property
    def drop_fraction(self) -> float:
        """Dropped assignments / ``T * k`` (0 for an empty batch)."""
        n = self.expert_ids.size
        return float(self.num_dropped) / n if n else 0.0

    @property
    def load_fraction(self) -> npt.NDArray[np.float64]:
        """(E,) float64: ``load / (T * k)``, the routing frequency ``f_i`` of each expert."""
        n = self.expert_ids.size
        return self.load / n if n else np.zeros(self.num_experts)


@dataclass(frozen=True, eq=False)
class Router:
    """A router configuration: scoring, selection, capacity. Call :meth:`route`.

    Parameters
    ----------
    top_k : int
        Experts per token, ``1 <= top_k <= E``.
    score : {"softmax", "sigmoid"}
        Router scores from the logits (Mixtral / Switch: softmax; DeepSeek-V3: sigmoid).
    renormalize : bool
        Divide the chosen ``k`` weights by their sum (+1e-20): Mixtral, Qwen
        ``norm_topk_prob``, DeepSeek-V3. Off: weights are the scores (Switch).
    routed_scaling_factor : float
        Multiplies the weights after renormalisation (DeepSeek-V3: 2.5).
    bias : ndarray (E,) float32, optional
        Selection-only bias (DeepSeek-V3 ``e_score_correction_bias``): experts are chosen by
        ``score + bias``; weights come from ``score``.
    n_group, topk_group : int
        Group-limited selection: the ``E`` experts form ``n_group`` groups of consecutive
        experts; only the ``topk_group`` best groups are eligible (default: all groups).
    group_score : {"top2_sum", "max"}
        A group's score: the sum of its two best selection scores (DeepSeek-V3 with a bias,
        HF ``DeepseekV3TopkRouter``) or its best (DeepSeek-V3's reference ``Gate`` without a
        bias).
    capacity_mode : {"dropless", "fixed", "dynamic"}
        "dropless": nothing dropped (capacity = largest load). "fixed": ``capacity`` slots,
        else :func:`expert_capacity` from ``capacity_factor``. "dynamic": ``min(largest
        load, fixed capacity)`` (Tutel's negative capacity factor).
    capacity_factor : float, optional
        ``> 0``; default 1.0 for "fixed" / "dynamic". Must be unset for "dropless".
    capacity : int, optional
        Explicit slots per expert (``>= 1``) instead of the factor.
    priority : {"position", "score"}
        Which assignments keep their slot when an expert overflows. Both are slot-major
        (every token's first choice before any second choice). "position": batch order,
        earlier tokens first (Switch's cumsum; HF). "score": tokens by their best router
        score, highest first, ties by position (V-MoE / Tutel batch-prioritised routing).
    """

    top_k: int = 2
    score: str = "softmax"
    renormalize: bool = True
    routed_scaling_factor: float = 1.0
    bias: F32Array | None = field(default=None, repr=False)
    n_group: int = 1
    topk_group: int | None = None
    group_score: str = "top2_sum"
    capacity_mode: str = "dropless"
    capacity_factor: float | None = None
    capacity: int | None = None
    priority: str = "position"

    def __post_init__(self) -> None:
        check_int(self.top_k, "top_k", 1)
        check_choice(self.score, "score", SCORES)
        if not isinstance(self.renormalize, bool):
            raise TypeError(f"renormalize: expected a bool, got {type(self.renormalize).__name__}")
        check_number(self.routed_scaling_factor, "routed_scaling_factor")
        if self.bias is not None:
            b = _f32(self.bias, "bias", ndim=1)
            if not np.all(np.isfinite(b)):
                raise ValueError("bias: expected finite values")
        check_int(self.n_group, "n_group", 1)
        if self.topk_group is not None:
            check_int(self.topk_group, "topk_group", 1)
            if self.topk_group > self.n_group:
                raise ValueError(
                    f"topk_group: expected 1 <= topk_group <= n_group={self.n_group}, "
                    f"got {self.topk_group}"
                )
        check_choice(self.group_score, "group_score", GROUP_SCORES)
        check_choice(self.capacity_mode, "capacity_mode", CAPACITY_MODES)
        if self.capacity_factor is not None:
            cf = check_number(self.capacity_factor, "capacity_factor")
            if self.capacity_mode == "dropless":
                raise ValueError(
                    "capacity_factor: not used with capacity_mode='dropless'; choose 'fixed' or "
                    "'dynamic'"
                )
            if cf <= 0:
                raise ValueError(f"capacity_factor: expected > 0, got {self.capacity_factor}")
        if self.capacity is not None:
            check_int(self.capacity, "capacity", 1)
            if self.capacity_mode == "dropless":
                raise ValueError("capacity: not used with capacity_mode='dropless'")
        check_choice(self.priority, "priority", PRIORITIES)

    # Presets -------------------------------------------------------------------------

    @classmethod
    def mixtral(cls, top_k: int = 2, **kw: Any) -> Router:
        """Softmax, top-``k``, renormalised over the chosen ``k``, dropless (HF Mixtral)."""
        return cls(top_k=top_k, score="softmax", renormalize=True, **kw)

    @classmethod
    def switch(cls, capacity_factor: float = 1.0, **kw: Any) -> Router:
        """Softmax top-1, weight = the probability, fixed capacity with position priority."""
        kw.setdefault("capacity_mode", "fixed")
        return cls(
            top_k=1, score="softmax", renormalize=False, capacity_factor=capacity_factor, **kw
        )

    @classmethod
    def deepseek_v3(
        cls,
        bias: F32Array | None = None,
        *,
        top_k: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        **kw: Any,
    ) -> Router:
        """Sigmoid scores, selection-only bias, group-limited top-k (groups by the sum of
        their top-2 biased scores), renormalised, times ``routed_scaling_factor`` (V3: 256
        experts, 8 groups, top-4 groups, top-8 experts, 2.5)."""
        return cls(
            top_k=top_k,
            score="sigmoid",
            renormalize=True,
            routed_scaling_factor=routed_scaling_factor,
            bias=bias,
            n_group=n_group,
            topk_group=topk_group,
            **{"group_score": "top2_sum", **kw},
        )

    # Routing -------------------------------------------------------------------------

    def route(self, logits: F32Array, *, num_threads: int | None = None) -> RoutingResult:
        """Route ``T`` tokens.

        Parameters
        ----------
        logits : ndarray (T, E) float32, finite

        Returns
        -------
        RoutingResult
            New arrays (no views of ``logits``).

        Raises
        ------
        ValueError
            ``top_k > E``, ``n_group`` not dividing ``E``, too few experts in
            ``topk_group`` groups, NaN/Inf logits, a ``bias`` of the wrong length.
        """
        x = _logits(logits)
        threads = threads_arg(num_threads)
        n_experts = int(x.shape[1])
        if self.top_k > n_experts:
            raise ValueError(
                f"top_k: expected 1 <= top_k <= num_experts={n_experts}, got {self.top_k}"
            )
        if self.bias is not None and self.bias.shape != (n_experts,):
            raise ValueError(f"bias: expected shape ({n_experts},), got {self.bias.shape}")
        topk_group = self.n_group if self.topk_group is None else self.topk_group
        if x.shape[0] == 0:  # the numpy gate refuses empty arrays; nothing to route
            if n_experts % self.n_group:
                raise ValueError(f"n_group: expected a divisor of num_experts={n_experts}")
            empty = np.zeros((0, self.top_k), np.int32)
            return self.assign(
                empty, empty.astype(np.float32), scores=np.zeros((0, n_experts), np.float32)
            )
        ids, weights, scores = _core.moe.route(
            x,
            self.top_k,
            self.score,
            self.renormalize,
            float(self.routed_scaling_factor),
            self.bias,
            self.n_group,
            topk_group,
            self.group_score,
            threads,
        )
        return self.assign(ids, weights, scores=scores)

    def assign(
        self,
        expert_ids: Any,
        weights: Any,
        *,
        scores: F32Array | None = None,
        num_experts: int | None = None,
    ) -> RoutingResult:
        """Capacity and the dispatch plan for a routing decided elsewhere.

        Parameters
        ----------
        expert_ids : ndarray (T, k) integer, values in ``[0, E)``, best first
        weights : ndarray (T, k) float32
        scores : ndarray (T, E) float32, optional
            Needed for ``priority="score"``; gives ``E``.
        num_experts : int, optional
            ``E`` when ``scores`` is not given (default ``max(expert_ids) + 1``).
        """
        ids = _ids(expert_ids, "expert_ids")
        w = _f32(weights, "weights")
        if w.shape != ids.shape:
            raise ValueError(f"weights: expected shape {ids.shape} like expert_ids, got {w.shape}")
        if scores is not None:
            s = _f32(scores, "scores")
            if s.shape[0] != ids.shape[0]:
                raise ValueError(f"scores: expected {ids.shape[0]} rows, got shape {s.shape}")
            n_experts = int(s.shape[1])
        else:
            if num_experts is not None:
                n_experts = check_int(num_experts, "num_experts", 1)
                if n_experts > _MAX_EXPERTS:  # per-expert arrays are sized by it
                    raise ValueError(
                        f"num_experts: expected at most {_MAX_EXPERTS}, got {n_experts}"
                    )
            else:
                n_experts = int(ids.max()) + 1 if ids.size else 1
            s = np.zeros((ids.shape[0], 0), np.float32)
        prio = None
        if self.priority == "score":
            if scores is None:
                raise ValueError("scores: required for priority='score'")
            prio = np.ascontiguousarray(s.max(axis=1), dtype=np.float32)
        cf = 1.0 if self.capacity_factor is None else float(self.capacity_factor)
        cap = -1 if self.capacity is None else int(self.capacity)
        loc, load, kept, capacity, dropped = _core.moe.assign_capacity(
            ids, n_experts, prio, self.capacity_mode, cf, cap, self.priority
        )
        offsets, token_of, row_of = _core.moe.dispatch_plan(ids, loc, n_experts)
        return RoutingResult(
            expert_ids=ids,
            weights=w,
            scores=s,
            locations=loc,
            load=load,
            expert_counts=kept,
            capacity=int(capacity),
            num_dropped=int(dropped),
            offsets=offsets,
            token_of=token_of,
            row_of=row_of,
        )


def route(
    logits: F32Array, top_k: int = 2, *, num_threads: int | None = None, **config: Any
) -> RoutingResult:
    """``Router(top_k=top_k, **config).route(logits)``; see :class:`Router`."""
    return Router(top_k=top_k, **config).route(logits, num_threads=num_threads)


def jitter(x: F32Array, eps: float, seed: int | np.random.Generator | None = None) -> F32Array:
    """Switch's router jitter: ``x * uniform(1 - eps, 1 + eps)`` elementwise (a new array).

    Parameters
    ----------
    x : ndarray, float32, any shape
    eps : float in [0, 1)
    seed : int, numpy.random.Generator or None
        The noise source (an int seeds ``numpy.random.default_rng``).
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x: expected a float32 numpy.ndarray, got {getattr(x, 'dtype', type(x))}")
    e = check_number(eps, "eps")
    if not 0.0 <= e < 1.0:
        raise ValueError(f"eps: expected 0 <= eps < 1, got {eps}")
    noise = _rng(seed).uniform(1.0 - e, 1.0 + e, size=x.shape).astype(np.float32)
    return cast(F32Array, x * noise)


def router_logits(
    x: F32Array,
    router_weight: npt.NDArray[Any],
    *,
    jitter_eps: float = 0.0,
    training: bool = False,
    seed: int | np.random.Generator | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """Router logits ``x @ router_weight.T``, with Switch's input jitter when training.

    Parameters
    ----------
    x : ndarray (T, D) float32
    router_weight : ndarray (E, D) float32 | float16 | bfloat16
    jitter_eps : float
        When ``training`` and ``> 0``, the router sees ``x * uniform(1 - eps, 1 + eps)``
        (Switch / HF SwitchTransformers: only the router's input; HF Mixtral jitters the
        whole block's input, i.e. the experts see the noise too). Inference never jitters.
    seed : int, numpy.random.Generator or None

    Returns
    -------
    ndarray (T, E) float32, new.
    """
    _f32(x, "x")
    if training and check_number(jitter_eps, "jitter_eps") > 0:
        x = jitter(x, jitter_eps, seed)
    return cast(F32Array, gemm(router_weight, x, num_threads=num_threads))


def __dir__() -> list[str]:
    return sorted(__all__)
