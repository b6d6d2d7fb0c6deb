"""Lottery tickets (Frankle & Carbin 2019; rewinding: Frankle et al. 2020), as open_lth runs
them: train, prune ``rate`` of the remaining weights by global magnitude, rewind the
survivors to their values at initialisation (``k = 0``) or at iteration ``k``, retrain with a
fresh optimizer; repeat. Controls: the same mask with a random re-initialisation
(:func:`random_reinit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._util import check_fraction, check_int, torch_module
from .masks import MASK_BUFFER, Sparsifier

__all__ = ["LotteryLevel", "LotteryTicket", "random_reinit", "rewind", "snapshot"]


def snapshot(model: Any) -> dict[str, Any]:
    """A detached CPU clone of every parameter and buffer (mask buffers excluded): the
    ``theta_k`` to rewind to."""
    return {
        k: v.detach().to("cpu", copy=True)
        for k, v in model.state_dict().items()
        if not k.endswith("." + MASK_BUFFER)
    }


def rewind(model: Any, state: dict[str, Any], sparsifier: Sparsifier | None = None) -> None:
    """Copy ``state`` (from :func:`snapshot`) into ``model`` bit for bit, then zero the
    masked weights. The model is checked against ``state`` (names and shapes) first."""
    torch = torch_module()
    current = {k: v for k, v in model.state_dict().items() if not k.endswith("." + MASK_BUFFER)}
    if set(current) != set(state):
        raise ValueError("state: the snapshot was taken from another model (other names)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(current[k].shape):
            raise ValueError(
                f"state: {k} has shape {tuple(v.shape)}, model {tuple(current[k].shape)}"
            )
    with torch.no_grad():
        for k, v in state.items():
            current[k].copy_(v)
    if sparsifier is not None:
        sparsifier.apply()


def random_reinit(model: Any, sparsifier: Sparsifier, seed: int = 0) -> None:
    """The random re-initialisation control: every masked linear gets a fresh
    ``reset_parameters()`` (torch's default init) from ``seed``; the mask is kept."""
    torch = torch_module()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mod in sparsifier.modules.values():
            mod.reset_parameters()
    sparsifier.apply()


@dataclass
class LotteryLevel:
    """One IMP level: its target sparsity, the masks and what ``train`` returned."""

    level: int
    sparsity: float
    masks: dict[str, Any]
    result: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class LotteryTicket:
    """Iterative magnitude pruning with rewinding.

    Parameters
    ----------
    model : torch.nn.Module
        At its initialisation θ₀ (or pass ``rewind_state`` taken at iteration k).
    rate : float in (0, 1)
        Fraction of the remaining weights pruned per level (open_lth: 0.2).
    scope : {"global", "layer", "row"}
        open_lth prunes globally.
    rewind_state : dict, optional
        :func:`snapshot` at iteration k (default: a snapshot of ``model`` now, k = 0).
    linear_filter
        Which linears are prunable (see :class:`Sparsifier`).

    ``run(train, levels)`` calls ``train(model, sparsifier, level)`` at every level (it must
    build a fresh optimizer and ``sparsifier.attach`` it, or call ``after_step``).
    """

    def __init__(
        self,
        model: Any,
        *,
        rate: float = 0.2,
        scope: str = "global",
        rewind_state: dict[str, Any] | None = None,
        linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
    ) -> None:
        if check_fraction(rate, "rate") == 0.0:
            raise ValueError("rate: expected a value in (0, 1), got 0.0")
        if scope not in ("global", "layer", "row"):
            raise ValueError(f"scope: expected 'global', 'layer' or 'row', got {scope!r}")
        self.model = model
        self.rate = float(rate)
        self.scope = scope
        self.rewind_state = snapshot(model) if rewind_state is None else rewind_state
        self.sparsifier = Sparsifier(model, linear_filter)
        self.levels: list[LotteryLevel] = []

    def sparsity(self, level: int) -> float:
        return 1.0 - (1.0 - self.rate) ** level

    def prune_level(self, level: int) -> dict[str, Any]:
        """Prune the (trained) model to level ``level``'s sparsity; masks only grow."""
        return self.sparsifier.prune(self.sparsity(level), scope=self.scope)

    def rewind(self) -> None:
        rewind(self.model, self.rewind_state, self.sparsifier)

    def run(self, train: Callable[[Any, Sparsifier, int], Any], levels: int) -> list[LotteryLevel]:
        """Level 0 trains the dense model from the rewind point; level L >= 1 prunes the
        previous level's trained weights, rewinds and retrains."""
        check_int(levels, "levels")
        for level in range(levels + 1):
            if level > 0:
                self.prune_level(level)
            self.rewind()
            result = train(self.model, self.sparsifier, level)
            masks = {n: m.clone() for n, m in self.sparsifier.masks.items()}
            self.levels.append(LotteryLevel(level, self.sparsifier.sparsity(), masks, result))
        return self.levels
