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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from . import _core
from ._base import DTypeError, threads_arg
from .kernels import gemm

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

F32Array = npt.NDArray[np.float32]
I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("top2_sum", "max")
CAPACITY_MODES = ("dropless", "fixed", "dynamic")
PRIORITIES = ("position", "score")
AUX_LOSS_KINDS = ("switch", "mixtral", "megablocks")
IMPORTANCE_METHODS = ("frequency", "weight", "output_norm")
LAYOUTS = ("compact", "padded")

Experts = tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]
ExpertFn = Callable[[int, F32Array], npt.NDArray[Any]]


# ---------------------------------------------------------------------------------------
# Argument helpers


def _int(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return v


def _choice(value: Any, name: str, options: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")
    return value


def _f32(x: Any, name: str, ndim: int = 2) -> F32Array:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise DTypeError(f"{name}: expected dtype float32, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    return x


def _logits(logits: Any, name: str = "logits") -> F32Array:
    x = _f32(logits, name)
    if x.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one expert (column), got shape {x.shape}")
    return x


def _ids(a: Any, name: str, shape: tuple[int, int] | None = None) -> I32Array:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of integers, got {type(a).__name__}")
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = f"{shape}" if shape is not None else "a 2-D (tokens, top_k) array"
        raise ValueError(f"{name}: expected {want}, got shape {a.shape}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > _INT32_MAX):
        # checked before the int32 narrowing: 2**32 + 1 must not wrap to expert 1
        raise ValueError(
            f"{name}: expected values in [0, 2**31 - 1], got {int(a.min())}..{int(a.max())}"
        )
    return np.ascontiguousarray(a, dtype=np.int32)  # small: converted once


_INT32_MAX = 2**31 - 1
_MAX_EXPERTS = 1 << 20


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


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        return np.random.default_rng(None if seed is None else int(seed))
    raise TypeError(f"seed: expected None, an int or a numpy.random.Generator, got {seed!r}")


def expert_capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """``ceil(capacity_factor * top_k * tokens / num_experts)``, clipped to ``[1, tokens]``.

    The slots per expert of ``capacity_mode="fixed"`` (the Switch / GShard capacity with
    ``k`` slots per token; megablocks' ``int(cf * T / E)`` per top-k pass rounds down).
    """
    t = _int(tokens, "tokens")
    k = _int(top_k, "top_k", 1)
    e = _int(num_experts, "num_experts", 1)
    cf = _float(capacity_factor, "capacity_factor")
    if cf <= 0:
        raise ValueError(f"capacity_factor: expected > 0, got {capacity_factor}")
    return max(1, min(math.ceil(cf * k * t / e), max(t, 1)))


# ---------------------------------------------------------------------------------------
# Routing


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
        _int(self.top_k, "top_k", 1)
        _choice(self.score, "score", SCORES)
        if not isinstance(self.renormalize, bool):
            raise TypeError(f"renormalize: expected a bool, got {type(self.renormalize).__name__}")
        _float(self.routed_scaling_factor, "routed_scaling_factor")
        if self.bias is not None:
            b = _f32(self.bias, "bias", ndim=1)
            if not np.all(np.isfinite(b)):
                raise ValueError("bias: expected finite values")
        _int(self.n_group, "n_group", 1)
        if self.topk_group is not None:
            _int(self.topk_group, "topk_group", 1)
            if self.topk_group > self.n_group:
                raise ValueError(
                    f"topk_group: expected 1 <= topk_group <= n_group={self.n_group}, "
                    f"got {self.topk_group}"
                )
        _choice(self.group_score, "group_score", GROUP_SCORES)
        _choice(self.capacity_mode, "capacity_mode", CAPACITY_MODES)
        if self.capacity_factor is not None:
            cf = _float(self.capacity_factor, "capacity_factor")
            if self.capacity_mode == "dropless":
                raise ValueError(
                    "capacity_factor: not used with capacity_mode='dropless'; choose 'fixed' or "
                    "'dynamic'"
                )
            if cf <= 0:
                raise ValueError(f"capacity_factor: expected > 0, got {self.capacity_factor}")
        if self.capacity is not None:
            _int(self.capacity, "capacity", 1)
            if self.capacity_mode == "dropless":
                raise ValueError("capacity: not used with capacity_mode='dropless'")
        _choice(self.priority, "priority", PRIORITIES)

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
                n_experts = _int(num_experts, "num_experts", 1)
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
    e = _float(eps, "eps")
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
    if training and _float(jitter_eps, "jitter_eps") > 0:
        x = jitter(x, jitter_eps, seed)
    return cast(F32Array, gemm(router_weight, x, num_threads=num_threads))


# ---------------------------------------------------------------------------------------
# Dispatch / combine / FFN


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
    _choice(layout, "layout", LAYOUTS)
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


# ---------------------------------------------------------------------------------------
# Losses


def _stack_layers(logits: Any) -> tuple[F32Array, int]:
    if isinstance(logits, list | tuple):
        if not logits:
            raise ValueError("logits: expected at least one layer")
        arrs = [_logits(a, f"logits[{i}]") for i, a in enumerate(logits)]
        if any(a.shape != arrs[0].shape for a in arrs):
            raise ValueError("logits: every layer must have the same (T, E) shape")
        return np.ascontiguousarray(np.concatenate(arrs, axis=0)), len(arrs)
    if isinstance(logits, np.ndarray) and logits.ndim == 3:
        x = _f32(logits, "logits", ndim=3)
        return np.ascontiguousarray(x.reshape(-1, x.shape[2])), int(x.shape[0])
    return _logits(logits), 1


def load_balancing_loss(
    logits: F32Array | Sequence[F32Array],
    *,
    kind: str = "switch",
    top_k: int = 1,
    alpha: float = 1.0,
    expert_ids: Any = None,
    token_mask: BoolArray | None = None,
) -> float:
    """The load-balancing auxiliary loss, normalised as ``kind`` does it.

    With ``p = softmax(logits)``, ``P_e`` the mean of ``p[:, e]`` over tokens, ``c_e`` the
    number of tokens sending a slot to ``e`` and ``E`` experts (docs/moe.md compares them):

    * ``"switch"``: ``alpha * E * sum_e f_e P_e`` with ``f_e = c_e / T`` counting the
      **top-1** choice only (Switch eq. 4; Tutel's GShard loss). Minimum ``alpha`` at
      uniform routing. Several layers: the mean of the per-layer losses.
    * ``"mixtral"``: HF transformers' ``load_balancing_loss_func`` times ``alpha``: **top-k**
      counts, ``f_e = c_e / T`` (so ``sum f = k``), ``f`` and ``P`` pooled over layers
      before the product. Minimum ``alpha * k``.
    * ``"megablocks"``: megablocks' ``batched_load_balancing_loss`` with
      ``moe_loss_weight = alpha``: ``alpha * E / (L T k) * sum_l sum_e c_le P_le``.
      Minimum ``alpha``.

    Parameters
    ----------
    logits : ndarray (T, E) or (L, T, E) float32, or a sequence of (T, E) arrays (layers)
    kind : {"switch", "mixtral", "megablocks"}
    top_k : int
        Experts per token (used by "mixtral" / "megablocks", and the width of
        ``expert_ids``).
    expert_ids : ndarray (L*T, k) or (T, k) integer, optional
        The experts actually chosen (e.g. ``RoutingResult.expert_ids`` of a group-limited
        router), column 0 the top-1. Default: top-k of ``softmax(logits)``, ties by lower
        index (what HF recomputes).
    token_mask : ndarray (T,) bool, optional
        Tokens to include (HF Mixtral's ``attention_mask``), the same for every layer.

    Returns
    -------
    float (computed in float64).
    """
    x, n_layers = _stack_layers(logits)
    _choice(kind, "kind", AUX_LOSS_KINDS)
    k = _int(top_k, "top_k", 1)
    a = _float(alpha, "alpha")
    ids = None
    if expert_ids is not None:
        ids = _ids(expert_ids, "expert_ids")
        if ids.shape != (x.shape[0], k):
            raise ValueError(f"expert_ids: expected shape ({x.shape[0]}, {k}), got {ids.shape}")
    if token_mask is not None:
        if not isinstance(token_mask, np.ndarray) or token_mask.dtype != np.bool_:
            raise TypeError("token_mask: expected a numpy bool array")
        if token_mask.shape != (x.shape[0] // n_layers,):
            raise ValueError(
                f"token_mask: expected shape ({x.shape[0] // n_layers},), got {token_mask.shape}"
            )
        token_mask = np.ascontiguousarray(token_mask)
    return a * float(_core.moe.load_balancing_loss(x, n_layers, k, kind, ids, token_mask))


def z_loss(logits: F32Array | Sequence[F32Array], *, alpha: float = 1.0) -> float:
    """Router z-loss (ST-MoE): ``alpha * mean over tokens of logsumexp(logits_t)^2``.

    ``logits``: (T, E), (L, T, E) or a sequence of layers (the mean runs over all rows; HF
    SwitchTransformers uses ``alpha = 0.001``). float64 accumulation.
    """
    x, _ = _stack_layers(logits)
    return _float(alpha, "alpha") * float(_core.moe.z_loss(x))


# ---------------------------------------------------------------------------------------
# Expert pruning


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
    _choice(method, "method", IMPORTANCE_METHODS)
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
    n = _int(num_keep, "num_keep", 1)
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
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
