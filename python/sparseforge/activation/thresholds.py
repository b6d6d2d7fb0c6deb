"""Thresholds: TEAL uniform (one-shot and sequential) and CATS thresholds, saved as JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._io import atomic_write, load_json
from .._validate import check_choice, check_fraction, check_instance, check_number
from ..models.llama import Hooks, LlamaModel
from ._common import (
    _FORMAT,
    _VERSION,
    F32Array,
    _dense,
    _linear_names,
    _model_arg,
    _param_counts,
)
from .calibration import ActivationStats, _check_signature, _windows, model_signature
from .histogram import Histogram

__all__ = ["Thresholds", "cats", "teal_uniform", "teal_uniform_sequential"]


@dataclass
class Thresholds:
    """A table of activation thresholds for one model.

    Attributes
    ----------
    kind : str
        ``"teal"`` (entries keyed by linear weight name, threshold on its input) or
        ``"cats"`` (entries ``model.layers.{i}.mlp.act``, threshold on ``|silu(gate x)|``).
    values : dict str -> float
        The thresholds (``>= 0``; ``|x| > t`` is kept).
    sparsities : dict str -> float
        The calibrated sparsity each threshold was chosen for.
    target : float
        The model-wide target.
    method : str
        How they were chosen (``"uniform-empirical"``, ``"uniform-symmetric"``,
        ``"greedy"``, ``"cats"``).
    signature : dict
        :func:`model_signature` of the model.
    """

    kind: str
    values: dict[str, float]
    sparsities: dict[str, float]
    target: float
    method: str
    signature: dict[str, Any]

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", ("teal", "cats"))
        for field_name in ("values", "sparsities"):
            table = getattr(self, field_name)
            check_instance(table, field_name, dict)
            for n, v in table.items():
                check_instance(n, f"{field_name} key", str)
                if field_name == "values":
                    check_number(v, f"values[{n!r}]", 0.0, finite=False)
                else:
                    check_number(v, f"sparsities[{n!r}]", 0.0, 1.0)
        check_number(self.target, "target", 0.0, 1.0)
        check_instance(self.method, "method", str)
        check_instance(self.signature, "signature", dict)

    def effective_sparsity(self, model: LlamaModel) -> float:
        """The parameter-weighted calibrated sparsity over the model's linears."""
        params = _param_counts(model)
        if self.kind == "teal":
            return sum(self.sparsities[n] * p for n, p in params.items()) / sum(params.values())
        total = sum(params.values())
        skipped = 0.0
        for i in range(model.config.n_layers):
            names = model.linear_names(i)
            s = self.sparsities[f"model.layers.{i}.mlp.act"]
            skipped += s * (params[names[5]] + params[names[6]])
        return skipped / total

    def check_model(self, model: LlamaModel) -> None:
        """Raise ``ValueError`` unless this table matches ``model`` (signature, names)."""
        _check_signature(self.signature, model, "thresholds")
        want = set(_expected_keys(model, self.kind))
        got = set(self.values)
        if got != want or set(self.sparsities) != want:
            missing = sorted(want - got)[:3]
            extra = sorted(got - want)[:3]
            raise ValueError(
                f"thresholds: entries do not match the model ({len(got)} given, {len(want)} "
                f"expected; missing {missing}, unexpected {extra})"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "kind": self.kind,
            "method": self.method,
            "target": self.target,
            "signature": self.signature,
            "entries": {
                n: {"threshold": self.values[n], "sparsity": self.sparsities[n]}
                for n in sorted(self.values)
            },
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON, atomically (temporary file + rename)."""
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        with atomic_write(path, "w") as f:
            f.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, model: LlamaModel | None = None) -> Thresholds:
        """Read a table written by :meth:`save`; with ``model``, also :meth:`check_model`.

        Raises ``ValueError`` naming the file if it is not valid JSON, not a thresholds
        table, or holds bad values."""
        path = Path(path)
        try:
            data = load_json(path, "thresholds table")
        except ValueError as err:
            raise ValueError(f"{path}: not a JSON thresholds table ({err})") from None
        try:
            th = cls._from_json(data)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad thresholds table: {err}") from None
        if model is not None:
            th.check_model(model)
        return th

    @classmethod
    def _from_json(cls, data: Any) -> Thresholds:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"expected format {_FORMAT!r}")
        if data.get("version") != _VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        kind = data["kind"]
        check_choice(kind, "kind", ("teal", "cats"))
        values: dict[str, float] = {}
        sparsities: dict[str, float] = {}
        for n, e in data["entries"].items():
            t, s = e["threshold"], e["sparsity"]
            values[n] = check_number(t, f"{n}.threshold", 0, None, finite=False)
            sparsities[n] = check_fraction(s, f"{n}.sparsity")
        sig = data["signature"]
        if not isinstance(sig, dict):
            raise ValueError("signature: expected an object")
        return cls(
            kind,
            values,
            sparsities,
            check_fraction(data["target"], "target"),
            str(data["method"]),
            sig,
        )


def _expected_keys(model: LlamaModel, kind: str) -> list[str]:
    if kind == "teal":
        return _linear_names(model)
    return [f"model.layers.{i}.mlp.act" for i in range(model.config.n_layers)]


def _stats_arg(stats: Any) -> ActivationStats:
    if not isinstance(stats, ActivationStats):
        raise TypeError(
            f"stats: expected ActivationStats (calibrate()), got {type(stats).__name__}"
        )
    return stats


def teal_uniform(
    stats: ActivationStats, sparsity: float, *, method: str = "empirical"
) -> Thresholds:
    """TEAL uniform: every linear's input at the same sparsity.

    ``method="empirical"`` takes the quantile of ``|x|``; ``"symmetric"`` TEAL's
    ``icdf(0.5 + s/2)`` shortcut (see :class:`Histogram`)."""
    stats = _stats_arg(stats)
    s = check_fraction(sparsity)
    if method not in ("empirical", "symmetric"):
        raise ValueError(f"method: expected 'empirical' or 'symmetric', got {method!r}")
    values = {n: h.threshold(s, method) for n, h in stats.linear.items()}
    return Thresholds(
        "teal", values, {n: s for n in values}, s, f"uniform-{method}", dict(stats.signature)
    )


def teal_uniform_sequential(
    model: LlamaModel,
    ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    sparsity: float,
    *,
    method: str = "empirical",
    seqlen: int | None = None,
    max_windows: int | None = None,
) -> Thresholds:
    """TEAL uniform, calibrated on the sparsified model instead of the dense one.

    Thresholds taken from the dense model's activations (:func:`teal_uniform`) drift in
    the sparse forward: sparsifying a projection changes the inputs of everything after
    it, so the achieved sparsity can exceed the target by points (SmolLM2 at 50 %: 53 %).
    Here the calibration windows run block by block, and inside a block input by input
    (q/k/v, o, gate/up, down): each histogram is taken with every earlier threshold already
    applied, so the calibrated sparsity is the one the sparse forward sees. Cost: five
    block passes per block over the windows (about five forwards). Histograms are not kept.
    """
    model = _model_arg(model)
    s = check_fraction(sparsity)
    if method not in ("empirical", "symmetric"):
        raise ValueError(f"method: expected 'empirical' or 'symmetric', got {method!r}")
    states = [model.embed(w) for w in _windows(model, ids, seqlen, max_windows)]
    values: dict[str, float] = {}
    for i in range(model.config.n_layers):
        names = model.linear_names(i)
        for group in (names[0:3], names[3:4], names[4:6], names[6:7]):
            hist = Histogram()
            hooks = Hooks(linear=_applying(model, values, group[0], hist))
            for h in states:
                model.block(i, h, hooks=hooks)
            t = hist.threshold(s, method)
            for n in group:
                values[n] = t
        hooks = Hooks(linear=_applying(model, values, None, None))
        states = [model.block(i, h, hooks=hooks) for h in states]
    return Thresholds(
        "teal", values, {n: s for n in values}, s, f"uniform-{method}-sequential",
        model_signature(model),
    )  # fmt: skip


def _applying(
    model: LlamaModel, values: dict[str, float], capture: str | None, hist: Histogram | None
) -> Callable[[str, F32Array], F32Array | None]:
    """A linear hook applying the thresholds in ``values`` (others dense), recording the
    input of ``capture`` into ``hist`` first."""

    def lin(name: str, x: F32Array) -> F32Array | None:
        if name == capture and hist is not None:
            hist.update(x)
        t = values.get(name)
        if t is None:
            return None
        return _dense(model, name, np.where(np.abs(x) > t, x, np.float32(0)))

    return lin


def cats(stats: ActivationStats, sparsity: float) -> Thresholds:
    """CATS: per block, the threshold on ``|silu(gate x)|`` that zeroes ``sparsity`` of the
    hidden units (the empirical quantile, CATS's ``get_threshold``)."""
    stats = _stats_arg(stats)
    s = check_fraction(sparsity)
    values = {f"model.layers.{i}.mlp.act": h.threshold(s) for i, h in stats.gate.items()}
    return Thresholds("cats", values, {n: s for n in values}, s, "cats", dict(stats.signature))


def __dir__() -> list[str]:
    return sorted(__all__)
