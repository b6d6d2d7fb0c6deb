"""Token budgets: how many tokens a (layer, kv head) keeps."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._validate import check_number
from ._common import _int_arg


@dataclass(frozen=True)
class Budget:
    """How many tokens a (layer, kv head) keeps: exactly one of

    * ``tokens``: a count (>= 1);
    * ``ratio``: a fraction of the prompt length in (0, 1] (kvpress's ``1 - compression_ratio``;
      ``n = int(T * ratio)``, at least 1), fixed at prefill for the decode that follows;
    * ``per_layer``: one entry per layer, each a count (int) or a ratio (float) -- a curve.
    """

    tokens: int | None = None
    ratio: float | None = None
    per_layer: tuple[int | float, ...] | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.tokens, self.ratio, self.per_layer)]
        if sum(given) != 1:
            raise ValueError("budget: give exactly one of tokens, ratio or per_layer")
        if self.tokens is not None:
            _check_budget_entry(self.tokens, "budget.tokens")
        if self.ratio is not None:
            _check_budget_entry(float(self.ratio), "budget.ratio")
        if self.per_layer is not None:
            if len(self.per_layer) == 0:
                raise ValueError("budget.per_layer: expected one entry per layer, got none")
            for i, b in enumerate(self.per_layer):
                _check_budget_entry(b, f"budget.per_layer[{i}]")

    def resolve(self, layer: int, context: int, num_layers: int | None = None) -> int:
        """Tokens for ``layer`` given a prompt of ``context`` tokens."""
        if self.per_layer is not None:
            if num_layers is not None and len(self.per_layer) != num_layers:
                raise ValueError(
                    f"budget.per_layer: expected {num_layers} entries (one per layer), "
                    f"got {len(self.per_layer)}"
                )
            if layer >= len(self.per_layer):
                raise ValueError(
                    f"budget.per_layer: no entry for layer {layer} ({len(self.per_layer)} given)"
                )
            entry: int | float = self.per_layer[layer]
        elif self.tokens is not None:
            entry = self.tokens
        else:
            assert self.ratio is not None
            entry = float(self.ratio)
        if isinstance(entry, float):
            return max(1, int(context * entry))
        return int(entry)


def _check_budget_entry(b: Any, name: str) -> None:
    if isinstance(b, bool) or not isinstance(b, numbers.Real):
        raise TypeError(
            f"{name}: expected an int (tokens) or a float (ratio), got {type(b).__name__}"
        )
    if isinstance(b, numbers.Integral):
        if b < 1:
            raise ValueError(f"{name}: expected a token budget >= 1, got {b}")
    elif not (0.0 < float(b) <= 1.0):
        raise ValueError(f"{name}: expected a ratio in (0, 1], got {b}")


def _budget_arg(budget: Any) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool):
        raise TypeError("budget: expected an int, a float ratio, a sequence or a Budget, got bool")
    if isinstance(budget, numbers.Integral):
        return Budget(tokens=int(budget))
    if isinstance(budget, numbers.Real):
        return Budget(ratio=float(budget))
    if isinstance(budget, Sequence) and not isinstance(budget, str):
        return Budget(per_layer=tuple(budget))
    raise TypeError(
        f"budget: expected an int (tokens), a float (ratio), a per-layer sequence or a Budget, "
        f"got {type(budget).__name__}"
    )


def pyramid_budgets(
    num_layers: int, context: int, budget: int, *, window: int = 64, beta: float = 20.0
) -> list[int]:
    """PyramidKV's per-layer token budgets, as kvpress computes them.

    NVIDIA/kvpress ``presses/pyramidkv_press.py`` ``get_layer_budget``: with ``C = window +
    budget``, ``min = (C - w) / beta``, ``max = 2 (C - w) - min``; if ``max >= T - w`` then
    ``max = T - w`` and ``min = 2 (C - w) - max``; layer ``l`` keeps ``round(max - l (max -
    min) / (num_layers - 1))``. When ``T >= max >= min >= w`` fails it falls back to the
    uniform ``budget``. Lower layers get more; the mean is ``budget`` (up to rounding).
    """
    n = _int_arg(num_layers, "num_layers", minimum=1)
    T = _int_arg(context, "context", minimum=1)
    b = _int_arg(budget, "budget", minimum=1)
    w = _int_arg(window, "window")
    beta = check_number(beta, "beta", 1.0)
    if n > 1 << 14:
        raise ValueError(f"num_layers: expected at most {1 << 14}, got {n}")
    cap = w + b
    lo = (cap - w) / beta
    hi = (cap - w) * 2 - lo
    if hi >= T - w:
        hi = T - w
        lo = (cap - w) * 2 - hi
    if not (T >= hi >= lo >= w) or n == 1:
        return [b] * n
    steps = (hi - lo) / (n - 1)
    return [round(hi - layer * steps) for layer in range(n)]
