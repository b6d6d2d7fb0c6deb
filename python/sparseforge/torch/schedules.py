"""Pruning schedules: one-shot, iterative magnitude pruning (IMP) and gradual magnitude
pruning with Zhu & Gupta's cubic ramp (GMP), for unstructured, N:M and block patterns.

A schedule only says *when* and *how much*; :class:`Pruner` applies it to a model through a
:class:`~sparseforge.torch.masks.Sparsifier` (masks chosen by the core). Steps are
**optimizer steps** (not micro-batches); call ``pruner.step(t)`` once per optimizer step,
before the forward of step ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import prune as sfp
from ._util import check_fraction, check_int, linears
from .masks import Sparsifier, check_pattern_fits, partial_nm_mask

__all__ = [
    "GradualMagnitude",
    "IterativeMagnitude",
    "OneShot",
    "Pruner",
    "cubic_sparsity",
]


def cubic_sparsity(
    step: int,
    *,
    initial: float,
    final: float,
    start: int,
    end: int,
    frequency: int = 1,
    power: int = 3,
) -> float:
    """Zhu & Gupta's schedule as a staircase (tfmot ``PolynomialDecay`` semantics).

    Updates happen at ``start, start + frequency, ...`` and at ``end``; the value at step
    ``t`` is the one of the last update ``u <= t``:
    ``final + (initial - final) * (1 - (u - start) / (end - start)) ** power``
    (``initial`` before ``start``, ``final`` from ``end`` on)."""
    if step < start:
        return initial
    if step >= end:
        return final
    u = start + ((step - start) // frequency) * frequency
    p = (u - start) / (end - start)
    return final + (initial - final) * (1.0 - p) ** power


@dataclass(frozen=True)
class OneShot:
    """Prune to ``sparsity`` once, at step ``at``, then hold the mask."""

    sparsity: float
    at: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.sparsity, "sparsity")
        check_int(self.at, "at")

    def is_update(self, step: int) -> bool:
        return step == self.at

    def sparsity_at(self, step: int) -> float:
        return self.sparsity if step >= self.at else 0.0

    @property
    def final(self) -> float:
        return self.sparsity


@dataclass(frozen=True)
class GradualMagnitude:
    """Zhu & Gupta 2017: sparsity rises from ``initial`` to ``final`` between ``start`` and
    ``end`` along :func:`cubic_sparsity`, updated every ``frequency`` steps (and at ``end``).
    """

    final: float
    start: int
    end: int
    frequency: int = 1
    initial: float = 0.0
    power: int = 3

    def __post_init__(self) -> None:
        check_fraction(self.initial, "initial")
        check_fraction(self.final, "final")
        check_int(self.start, "start")
        check_int(self.end, "end")
        check_int(self.frequency, "frequency", 1)
        check_int(self.power, "power", 1)
        if self.end <= self.start:
            raise ValueError(f"end: expected end > start={self.start}, got {self.end}")
        if self.final < self.initial:
            raise ValueError(f"final: expected final >= initial={self.initial}, got {self.final}")

    def is_update(self, step: int) -> bool:
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.frequency == 0 or step == self.end

    def sparsity_at(self, step: int) -> float:
        return cubic_sparsity(
            step,
            initial=self.initial,
            final=self.final,
            start=self.start,
            end=self.end,
            frequency=self.frequency,
            power=self.power,
        )


@dataclass(frozen=True)
class IterativeMagnitude:
    """IMP: every ``steps_per_round`` steps (after ``start``), prune ``rate`` of the
    *remaining* weights, ``rounds`` times: sparsity after ``r`` rounds is
    ``1 - (1 - rate) ** r``."""

    rate: float
    rounds: int
    steps_per_round: int
    start: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.rate, "rate")
        check_int(self.rounds, "rounds", 1)
        check_int(self.steps_per_round, "steps_per_round", 1)
        check_int(self.start, "start")
        if self.rate == 0.0:
            raise ValueError("rate: expected a value in (0, 1), got 0.0")

    def _round(self, step: int) -> int:
        if step < self.start + self.steps_per_round:
            return 0
        return min(self.rounds, (step - self.start) // self.steps_per_round)

    def is_update(self, step: int) -> bool:
        r = (step - self.start) / self.steps_per_round
        return step > self.start and r == int(r) and 1 <= r <= self.rounds

    def sparsity_at(self, step: int) -> float:
        return 1.0 - (1.0 - self.rate) ** self._round(step)

    @property
    def final(self) -> float:
        return 1.0 - (1.0 - self.rate) ** self.rounds


Schedule = OneShot | GradualMagnitude | IterativeMagnitude


class Pruner:
    """Apply a schedule to a model's linears.

    Parameters
    ----------
    model : torch.nn.Module or Sparsifier
    schedule : OneShot, GradualMagnitude or IterativeMagnitude
    scope : {"row", "layer", "global"}, optional
        Ranking per row, per layer or across all masked linears (default: "row"
        unstructured, "layer" for blocks).
    pattern : "n:m", optional
        N:M: the schedule's sparsity must end at ``1 - n/m``; on the way, the fraction
        ``s_t / (1 - n/m)`` of each layer's groups takes the N:M mask
        (:func:`~sparseforge.torch.masks.partial_nm_mask`).
    block : int or (rows, cols), optional
        Whole tiles (the schedule's sparsity is the fraction of tiles pruned).
    scores : callable() -> {name: tensor}, optional
        Rank by these scores instead of ``|w|`` at each update (e.g. Taylor scores).
    linear_filter
        Which linears (see :class:`Sparsifier`); ignored when a Sparsifier is given.

    Every argument is checked (patterns against every selected layer) before the model is
    touched; a bad one raises ValueError/TypeError naming it.
    """

    def __init__(
        self,
        model: Any,
        schedule: Schedule,
        *,
        scope: str | None = None,
        pattern: Any = None,
        block: Any = None,
        scores: Callable[[], Mapping[str, Any]] | None = None,
        linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
    ) -> None:
        if not isinstance(schedule, OneShot | GradualMagnitude | IterativeMagnitude):
            raise TypeError(
                "schedule: expected OneShot, GradualMagnitude or IterativeMagnitude, got "
                f"{type(schedule).__name__}"
            )
        if scope not in (None, "row", "layer", "global"):
            raise ValueError(f"scope: expected 'row', 'layer' or 'global', got {scope!r}")
        self.nm = None if pattern is None else sfp.parse_pattern(pattern)
        if self.nm is not None:
            if isinstance(schedule, IterativeMagnitude):
                raise ValueError("pattern: IMP is unstructured or block; use GradualMagnitude")
            if not math.isclose(schedule.final, self.nm.sparsity, abs_tol=1e-9):
                raise ValueError(
                    f"schedule: pattern {self.nm} needs final sparsity {self.nm.sparsity:g}, "
                    f"got {schedule.final:g}"
                )
            if scope not in (None, "row"):
                raise ValueError("scope: an N:M pattern is per row; use scope='row'")
        if block is not None and scope == "global":
            raise ValueError("scope: block pruning is per layer or row, not 'global'")
        named = (
            list(model.modules.items())
            if isinstance(model, Sparsifier)
            else linears(model, linear_filter)
        )
        check_pattern_fits(((n, m.weight) for n, m in named), self.nm, block)
        self.sparsifier = (
            model if isinstance(model, Sparsifier) else Sparsifier(model, linear_filter)
        )
        self.schedule = schedule
        self.scope = scope
        self.block = block
        self.scores = scores
        self.level: float = 0.0

    def step(self, step: int) -> float | None:
        """Update masks if ``step`` is an update step of the schedule; returns the new
        target sparsity then, else None."""
        if not self.schedule.is_update(step):
            return None
        self.update(self.schedule.sparsity_at(step))
        return self.level

    def update(self, sparsity: float) -> None:
        """Prune to ``sparsity`` now (masks only grow)."""
        sp = self.sparsifier
        if self.nm is not None:
            level = sparsity / self.nm.sparsity
            sp.set_masks(
                {n: partial_nm_mask(w.detach(), self.nm, level) for n, w in sp.weights().items()},
                monotone=True,
            )
        else:
            sp.prune(
                sparsity,
                scope=self.scope,
                block=self.block,
                scores=None if self.scores is None else self.scores(),
            )
        self.level = sparsity
