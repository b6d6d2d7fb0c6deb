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
    * ``keep``: the kept fraction of the prompt, in (0, 1] (``n = max(1, int(T * keep))``),
      fixed at prefill for the decode that follows;
    * ``compression_ratio``: kvpress's name, the fraction *removed*, in [0, 1) (keeps
      ``int(T * (1 - compression_ratio))``, kvpress's ``n_kept``);
    * ``per_layer``: one entry per layer, each a count (int) or a kept fraction (float).

    ``ratio`` is the old name of ``keep`` (the kept fraction, *not* kvpress's
    ``compression_ratio``) and still works. A bare float budget (``H2O(0.25)``,
    ``PolicyCache(model, "snapkv", 0.25)``) means ``keep=0.25``; write
    ``Budget(compression_ratio=0.75)`` (or ``compression_ratio=0.75`` to
    :class:`~sparseforge.kv.PolicyCache` / :func:`~sparseforge.kv.make_policy`) for
    kvpress's meaning.
    """

    tokens: int | None = None
    ratio: float | None = None
    per_layer: tuple[int | float, ...] | None = None
    keep: float | None = None
    compression_ratio: float | None = None

    def __post_init__(self) -> None:
        given = [
            x is not None
            for x in (self.tokens, self.ratio, self.per_layer, self.keep, self.compression_ratio)
        ]
        if sum(given) != 1:
            raise ValueError(
                "budget: give exactly one of tokens, keep (kept fraction), compression_ratio "
                "(fraction removed) or per_layer"
            )
        if self.tokens is not None:
            _check_budget_entry(self.tokens, "budget.tokens")
        if self.ratio is not None:
            _check_budget_entry(float(self.ratio), "budget.ratio")
        if self.keep is not None:
            _check_budget_entry(check_number(self.keep, "budget.keep"), "budget.keep")
        if self.compression_ratio is not None:
            check_number(self.compression_ratio, "budget.compression_ratio", 0.0, 1.0, hi_open=True)
        if self.per_layer is not None:
            if len(self.per_layer) == 0:
                raise ValueError("budget.per_layer: expected one entry per layer, got none")
            for i, b in enumerate(self.per_layer):
                _check_budget_entry(b, f"budget.per_layer[{i}]")

    def kept_fraction(self) -> float | None:
        """The uniform kept fraction (``keep``, ``ratio`` or ``1 - compression_ratio``)."""
        if self.keep is not None:
            return float(self.keep)
        if self.ratio is not None:
            return float(self.ratio)
        if self.compression_ratio is not None:
            return 1.0 - float(self.compression_ratio)
        return None

    def entries(self) -> tuple[list[tuple[bool, float]], bool]:
        """The core's form: ``([(is_fraction, value), ...], per_layer)``."""
        if self.per_layer is not None:
            return [(not isinstance(b, numbers.Integral), float(b)) for b in self.per_layer], True
        if self.tokens is not None:
            return [(False, float(self.tokens))], False
        f = self.kept_fraction()
        assert f is not None
        return [(True, f)], False

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
            f = self.kept_fraction()
            assert f is not None
            entry = float(f)
        if isinstance(entry, float):
            return max(1, int(context * entry))
        return int(entry)


def _check_budget_entry(b: Any, name: str) -> None:
    if isinstance(b, bool) or not isinstance(b, numbers.Real):
        raise TypeError(
            f"{name}: expected an int (tokens) or a float (kept fraction), got {type(b).__name__}"
        )
    if isinstance(b, numbers.Integral):
        if b < 1:
            raise ValueError(f"{name}: expected a token budget >= 1, got {b}")
    elif not (0.0 < float(b) <= 1.0):
        raise ValueError(f"{name}: expected a kept fraction in (0, 1], got {b}")


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
        f"budget: expected an int (tokens), a float (kept fraction), a per-layer sequence or a "
        f"Budget, got {type(budget).__name__}"
    )


def budget_from(
    budget: Any = None,
    *,
    tokens: Any = None,
    keep: Any = None,
    compression_ratio: Any = None,
) -> Budget | None:
    """One budget from the positional ``budget`` or exactly one named form (``tokens=``,
    ``keep=``, ``compression_ratio=``); ``None`` when none is given."""
    named = {
        k: v
        for k, v in (("tokens", tokens), ("keep", keep), ("compression_ratio", compression_ratio))
        if v is not None
    }
    if budget is not None and named:
        raise ValueError(
            f"budget: give either budget or one of tokens / keep / compression_ratio, got "
            f"budget and {', '.join(named)}"
        )
    if len(named) > 1:
        raise ValueError(f"budget: give one of tokens / keep / compression_ratio, got {named}")
    if named:
        ((k, v),) = named.items()
        if k == "tokens":
            _int_arg(v, "tokens", minimum=1)
        return Budget(**{k: v})
    return None if budget is None else _budget_arg(budget)


def pyramid_budgets(
    num_layers: int, context: int, budget: float, *, window: int = 64, beta: float = 20.0
) -> list[int]:
    """PyramidKV's per-layer token budgets, as kvpress computes them.

    NVIDIA/kvpress ``presses/pyramidkv_press.py`` ``get_layer_budget``: with ``C = window +
    budget``, ``min = (C - w) / beta``, ``max = 2 (C - w) - min``; if ``max >= T - w`` then
    ``max = T - w`` and ``min = 2 (C - w) - max``; layer ``l`` keeps ``round(max - l (max -
    min) / (num_layers - 1))``. When ``T >= max >= min >= w`` fails it falls back to the
    uniform ``max(1, round(budget))``. Lower layers get more; the mean is ``budget`` (up to
    rounding). ``budget`` is a token count or, as kvpress computes it from a
    ``compression_ratio``, the float ``T * (1 - r)`` (PyramidKV with a kept-fraction budget
    passes that float, so r = 0.9 matches kvpress's rounding).
    """
    n = _int_arg(num_layers, "num_layers", minimum=1)
    T = _int_arg(context, "context", minimum=1)
    if isinstance(budget, numbers.Integral):
        b: float = _int_arg(budget, "budget", minimum=1)
    else:
        b = check_number(budget, "budget", 0.0, lo_open=True)
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
        return [max(1, round(b))] * n
    steps = (hi - lo) / (n - 1)
    return [round(hi - layer * steps) for layer in range(n)]
