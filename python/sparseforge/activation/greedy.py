"""TEAL's greedy per-layer allocation: teal_greedy() and its GreedyPath."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _progress
from .._validate import check_fraction, check_number
from ..models.llama import Hooks, LlamaModel
from ._common import _SUFFIX, PROJECTIONS, F32Array, _dense, _model_arg
from .calibration import ActivationStats, _windows, model_signature
from .thresholds import Thresholds, _stats_arg

__all__ = ["GreedyPath", "teal_greedy"]


@dataclass
class GreedyPath:
    """TEAL's per-block greedy search result (``teal/greedyopt.py``'s lookup CSVs).

    ``steps[i]`` lists, for block ``i``, one row per greedy step: ``(effective sparsity,
    error, {projection: sparsity})``, starting at all-zero. :meth:`thresholds` takes in
    each block the row whose effective sparsity is closest to the target (TEAL's lookup)."""

    steps: list[list[tuple[float, float, dict[str, float]]]]
    weights: dict[str, float]
    base_step: float
    signature: dict[str, Any]

    def sparsities(self, target: float) -> list[dict[str, float]]:
        t = check_fraction(target, "target")
        out = []
        for rows in self.steps:
            best = min(rows, key=lambda r: (abs(r[0] - t), r[0]))
            out.append(dict(best[2]))
        return out

    def thresholds(self, stats: ActivationStats, target: float) -> Thresholds:
        """Thresholds for ``target`` from the histograms in ``stats``."""
        stats = _stats_arg(stats)
        if stats.signature != self.signature:
            raise ValueError("stats: calibrated on another model than the greedy path")
        per_block = self.sparsities(target)
        values: dict[str, float] = {}
        sp: dict[str, float] = {}
        for i, s in enumerate(per_block):
            for p in PROJECTIONS:
                n = f"model.layers.{i}.{_SUFFIX[p]}"
                sp[n] = min(s[p], 0.999)
                values[n] = stats.linear[n].threshold(sp[n])
        return Thresholds("teal", values, sp, float(target), "greedy", dict(self.signature))


def _block_error(target: F32Array, out: F32Array, windows: int, last_fraction: float) -> float:
    """TEAL's ``calculate_activation_error``: per window, the L2 norm over the last
    ``last_fraction`` of the positions of each hidden channel, averaged over channels and
    windows."""
    T = target.shape[0] // windows
    start = int(T * (1 - last_fraction))
    d = (target - out).reshape(windows, T, -1)[:, start:, :].astype(np.float64)
    return float(np.sqrt((d * d).sum(axis=1)).mean())


def _block_runner(
    model: LlamaModel, stats: ActivationStats, i: int, states: list[F32Array]
) -> Callable[[dict[str, float]], F32Array]:
    """Block ``i`` over ``states`` with each projection's input thresholded at the
    histogram threshold of its sparsity (``{projection: sparsity}``), outputs stacked."""
    names = model.linear_names(i)
    cache: dict[tuple[str, float], float] = {}

    def thr(n: str, s: float) -> float:
        key = (n, round(min(s, 0.999), 12))
        if key not in cache:
            cache[key] = stats.linear[n].threshold(key[1])
        return cache[key]

    def run(sp: dict[str, float]) -> F32Array:
        th = {
            n: thr(n, sp[p]) if sp[p] > 0 else None for p, n in zip(PROJECTIONS, names, strict=True)
        }

        def lin(name: str, x: F32Array) -> F32Array | None:
            t = th.get(name)
            if t is None:
                return None
            return _dense(model, name, np.where(np.abs(x) > t, x, np.float32(0)))

        hooks = Hooks(linear=lin)
        return np.concatenate([model.block(i, h, hooks=hooks) for h in states])

    return run


_MAX_GREEDY_STEPS = 10_000


def teal_greedy(
    model: LlamaModel,
    stats: ActivationStats,
    ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    max_sparsity: float = 0.9,
    base_step: float = 0.05,
    last_fraction: float = 0.25,
    seqlen: int | None = None,
    max_windows: int | None = 2,
    progress: bool | Callable[[int, int], None] | None = None,
) -> GreedyPath:
    """TEAL's block-wise greedy allocation (``teal/greedyopt.py``).

    For each block, on the dense model's block inputs over the calibration windows: start
    with all 7 projections at sparsity 0; at each step, try raising each projection ``p``
    by ``base_step / w_p`` (``w_p`` = its parameter count relative to q_proj, so every
    candidate costs the same parameter-weighted sparsity); keep the one whose block output
    has the smallest error against the dense block (:func:`_block_error`: L2 over the last
    ``last_fraction`` of positions per channel, averaged); stop when the effective
    sparsity ``sum_p w_p s_p / sum_p w_p`` reaches ``max_sparsity``. Thresholds for a
    sparsity come from the histograms in ``stats`` (as TEAL's ``set_threshold``).

    Cost: about ``7 * max_sparsity * sum_p(w_p) / base_step`` block forwards per block.

    ``progress``: a progress bar over the blocks on stderr (None: when stderr is a terminal,
    or ``SPARSEFORGE_PROGRESS=1``; True: always; False: never), or a callable
    ``progress(blocks_done, n_layers)`` called after each block instead.
    """
    model = _model_arg(model)
    callback = progress if callable(progress) else None
    show = None if callback is not None else _progress.check_progress(progress)
    stats = _stats_arg(stats)
    stats.check_model(model)
    smax = check_fraction(max_sparsity, "max_sparsity")
    check_number(base_step, "base_step", 0, 1, lo_open=True, hi_open=True)
    check_number(last_fraction, "last_fraction", 0, 1, lo_open=True)
    c = model.config
    shapes = c.weight_shapes()
    names0 = model.linear_names(0)
    q_params = float(np.prod(shapes[names0[0]]))
    weights = {
        p: float(np.prod(shapes[n])) / q_params for p, n in zip(PROJECTIONS, names0, strict=True)
    }
    wsum = sum(weights.values())
    # each greedy step raises the effective sparsity by base_step / wsum: refuse a step so
    # small that the walk would not finish (7 block forwards per step)
    n_steps = smax * wsum / float(base_step)
    if n_steps > _MAX_GREEDY_STEPS:
        raise ValueError(
            f"base_step: {base_step!r} needs about {n_steps:.3g} greedy steps per block "
            f"(at most {_MAX_GREEDY_STEPS}); use base_step >= "
            f"{smax * wsum / _MAX_GREEDY_STEPS:.2g}"
        )
    windows = _windows(model, ids, seqlen, max_windows)
    # Dense block inputs for every block, windows stacked along tokens (block runs per window).
    states = [model.embed(w) for w in windows]
    steps: list[list[tuple[float, float, dict[str, float]]]] = []
    bar = _progress.bar(
        c.n_layers, "TEAL greedy", unit="blocks", progress=False if callback else show
    )
    for i in range(c.n_layers):
        target = np.concatenate([model.block(i, h) for h in states])

        run = _block_runner(model, stats, i, states)

        sp = {p: 0.0 for p in PROJECTIONS}
        rows: list[tuple[float, float, dict[str, float]]] = [(0.0, 0.0, dict(sp))]
        eff = 0.0
        while eff < smax - 1e-12:
            best: tuple[float, str] | None = None
            for p in PROJECTIONS:
                if sp[p] >= 1.0:
                    continue
                trial = dict(sp)
                trial[p] = sp[p] + base_step / weights[p]
                err = _block_error(target, run(trial), len(windows), float(last_fraction))
                if best is None or err < best[0]:
                    best = (err, p)
            if best is None:
                break
            sp[best[1]] += base_step / weights[best[1]]
            eff = sum(min(sp[p], 1.0) * weights[p] for p in PROJECTIONS) / wsum
            rows.append((eff, best[0], dict(sp)))
        steps.append(rows)
        states = [model.block(i, h) for h in states]
        bar.note(f"{len(rows) - 1} steps, error {rows[-1][1]:.2e}")
        bar.update()
        if callback is not None:
            callback(i + 1, c.n_layers)
    bar.close()
    return GreedyPath(steps, weights, float(base_step), model_signature(model))


def __dir__() -> list[str]:
    return sorted(__all__)
