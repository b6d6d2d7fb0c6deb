"""Activation sparsity without retraining: TEAL thresholds (uniform and greedy), CATS
gate-first thresholds, the exact-zero path of ReLU MLPs, and Deja Vu style predictors, with
a model forward (:class:`SparseForward`) that runs the column-skip / row-skip kernels.

Workflow::

    stats = sf.activation.calibrate(model, calib_ids, seqlen=256, max_windows=8)
    th = sf.activation.teal_uniform(stats, 0.5)            # or teal_greedy(...).thresholds(0.5)
    th.save("teal50.json"); th = sf.activation.Thresholds.load("teal50.json", model=model)
    fwd = sf.activation.SparseForward(model, th)           # mode "teal"
    sf.models.perplexity(model, text, hooks=...)            # see SparseForward.hooks
    model.generate(ids, 32, hooks=fwd.hooks)               # T = 1 steps run the kernels
    fwd.achieved()                                         # measured sparsity

Names: every threshold entry is keyed by the linear's weight name
(``model.layers.3.mlp.down_proj.weight``) and applies to that linear's **input**; q, k and v
share one input (and one histogram) but keep three entries, as in TEAL. CATS entries are
``model.layers.{i}.mlp.act`` and apply to ``|silu(gate x)|``.

Sparsity is the fraction of zeros, in ``[0, 1)``. "Model-wide" sparsity weights each
linear's input sparsity by its parameter count (the fraction of linear-weight bytes a
decode step does not read), TEAL's effective sparsity; ``lm_head`` is not counted.

See docs/activation.md for the algorithms and the measured results.
"""

from __future__ import annotations

import json
import numbers
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core, _progress
from . import kernels as _kernels
from ._base import threads_arg
from ._io import atomic_write, load_json
from ._validate import (
    check_array,
    check_choice,
    check_instance,
    check_int,
    check_number,
)
from .models.llama import LINEAR_SUFFIXES, Hooks, LlamaModel

__all__ = [
    "MODES",
    "PROJECTIONS",
    "ActivationStats",
    "DejaVuPredictors",
    "GreedyPath",
    "Histogram",
    "LayerPredictor",
    "SparseForward",
    "SparseModel",
    "Thresholds",
    "calibrate",
    "cats",
    "fit_predictor",
    "model_signature",
    "teal_greedy",
    "teal_uniform",
    "teal_uniform_sequential",
    "train_dejavu",
]

F32Array = npt.NDArray[np.float32]
#: The 7 projections of a block, in forward order (short names of ``LINEAR_SUFFIXES``).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_SUFFIX = dict(zip(PROJECTIONS, LINEAR_SUFFIXES, strict=True))
_FORMAT = "sparseforge.activation.thresholds"
_VERSION = 1


# ---------------------------------------------------------------------------------------
# Argument helpers


def _sparsity_arg(s: Any, name: str = "sparsity") -> float:
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(s).__name__}")
    v = float(s)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: expected a sparsity in [0, 1), got {v}")
    return v


def _int_arg(v: Any, name: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if int(v) < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {v}")
    return int(v)


def _model_arg(model: Any) -> LlamaModel:
    if not isinstance(model, LlamaModel):
        raise TypeError(
            f"model: expected a sparseforge.models.LlamaModel, got {type(model).__name__}"
        )
    return model


def _silu(g: F32Array) -> F32Array:
    with np.errstate(over="ignore"):
        out: F32Array = (g / (1.0 + np.exp(-g))).astype(np.float32, copy=False)
    return out


def _block_of(name: str) -> int:
    return int(name.split(".")[2])


def _proj_of(name: str) -> str:
    for p, s in _SUFFIX.items():
        if name.endswith(s):
            return p
    raise KeyError(name)


def model_signature(model: LlamaModel) -> dict[str, Any]:
    """The facts a thresholds table or predictor must match: arch, layers, widths, heads."""
    c = _model_arg(model).config
    return {
        "arch": c.arch,
        "n_layers": int(c.n_layers),
        "dim": int(c.dim),
        "hidden_dim": int(c.hidden_dim),
        "n_heads": int(c.n_heads),
        "n_kv_heads": int(c.n_kv_heads),
        "head_dim": int(c.head_dim),
    }


def _linear_names(model: LlamaModel) -> list[str]:
    return [n for i in range(model.config.n_layers) for n in model.linear_names(i)]


def _param_counts(model: LlamaModel) -> dict[str, int]:
    shapes = model.config.weight_shapes()
    return {n: int(np.prod(shapes[n])) for n in _linear_names(model)}


def _dense(model: LlamaModel, name: str, x: F32Array) -> F32Array:
    """The model's own dense product ``x @ W.T`` (same backend as its forward)."""
    return model._matmul(model.weight(name), x)


# ---------------------------------------------------------------------------------------
# Histogram


class Histogram:
    """A streaming histogram of float32 values, exact to 1/128 relative bin width.

    Bins follow the float32 bit pattern: a value's bin is its sign and its top 15
    magnitude bits (8 exponent bits, 7 mantissa bits), so bin ``k`` covers
    ``[f(k), f(k+1))`` with ``f(k)`` the float whose bits are ``k << 16``. No range has to be
    known in advance (TEAL's 10,000 linear bins need its 1 %/99 % quantile range first),
    the relative resolution is the same from 1e-30 to 1e30, and histograms add exactly
    (:meth:`merge`). Memory: 2 x 32768 int64 counts (512 KiB).

    Thresholds (both linear interpolation inside a bin, like TEAL's ``icdf``):

    * :meth:`threshold` (``method="empirical"``): ``t`` with ``P(|x| <= t) = s`` on the
      folded distribution of ``|x|`` (exact zeros count as ``|x| = 0``; if they alone reach
      ``s`` the threshold is 0, which skips exact zeros only);
    * ``method="symmetric"``: TEAL's shortcut ``icdf(0.5 + s/2)`` of the signed values,
      exact for a zero-median symmetric distribution (clamped at 0).
    """

    _BINS = 1 << 15
    _SHIFT = 16

    def __init__(self) -> None:
        self._counts = np.zeros(2 * self._BINS, dtype=np.int64)  # [positive | negative]
        self._n = 0
        # update/merge from several threads: the bincount runs unlocked, the add under it.
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Values seen."""
        return self._n

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        """``(2, 32768)`` int64: counts of non-negative (row 0) and negative (row 1) values
        per magnitude bin (a copy)."""
        with self._lock:
            out: npt.NDArray[np.int64] = self._counts.reshape(2, self._BINS).copy()
        return out

    def update(self, x: npt.ArrayLike) -> None:
        """Add float32 values (any shape; other float dtypes are converted). Non-finite
        values raise ``ValueError`` and nothing is added."""
        a = np.asarray(x)
        if not np.issubdtype(a.dtype, np.floating) and a.dtype.kind != "V":
            raise TypeError(f"x: expected float values, got dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=np.float32).ravel()
        if a.size == 0:
            return
        bits = a.view(np.uint32)
        mag = bits & np.uint32(0x7FFFFFFF)
        if int(mag.max()) >= 0x7F800000:
            raise ValueError("x: contains NaN or Inf")
        key = (mag >> np.uint32(self._SHIFT)).astype(np.int64)
        key += (bits >> np.uint32(31)).astype(np.int64) * self._BINS
        add = np.bincount(key, minlength=2 * self._BINS)
        with self._lock:
            self._counts += add
            self._n += int(a.size)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this histogram."""
        if not isinstance(other, Histogram):
            raise TypeError(f"other: expected a Histogram, got {type(other).__name__}")
        if other is self:
            with self._lock:
                self._counts *= 2
                self._n *= 2
            return
        with other._lock:
            add, n = other._counts.copy(), other._n
        with self._lock:
            self._counts += add
            self._n += n

    @classmethod
    def _edges(cls) -> npt.NDArray[np.float64]:
        k = np.arange(cls._BINS + 1, dtype=np.uint64) << np.uint64(cls._SHIFT)
        k = np.minimum(k, np.uint64(0x7F800000))  # the last edge is +inf's bits
        e: npt.NDArray[np.float64] = k.astype(np.uint32).view(np.float32).astype(np.float64)
        e[-1] = float(np.finfo(np.float32).max)
        return e

    def _snapshot(self) -> tuple[npt.NDArray[np.int64], int]:
        """Counts and total taken together (another thread may be updating)."""
        with self._lock:
            counts, n = self._counts.copy(), self._n
        if n == 0:
            raise ValueError("histogram: no data (update() was never called with values)")
        return counts, n

    def sparsity_at(self, threshold: float) -> float:
        """Fraction of values with ``|x| <= threshold`` (interpolated inside a bin)."""
        counts, n = self._snapshot()
        t = check_number(threshold, "threshold", finite=False)
        folded = counts[: self._BINS] + counts[self._BINS :]
        edges = self._edges()
        cum = np.concatenate([[0], np.cumsum(folded)]).astype(np.float64)
        if t < 0:
            return 0.0
        k = int(np.searchsorted(edges, t, side="right")) - 1
        if k >= self._BINS:
            return 1.0
        lo, hi = edges[k], edges[k + 1]
        # the zero bin holds zeros and denormals: all of it counts as <= 0
        frac = 1.0 if k == 0 else min((t - lo) / (hi - lo), 1.0)
        return float((cum[k] + frac * folded[k]) / n)

    def threshold(self, sparsity: float, method: str = "empirical") -> float:
        """The threshold ``t`` that zeroes a fraction ``sparsity`` of the values under
        ``|x| > t`` (see the class notes for the two methods)."""
        counts, n = self._snapshot()
        s = _sparsity_arg(sparsity)
        if s == 0.0:
            return 0.0
        edges = self._edges()
        if method == "empirical":
            folded = (counts[: self._BINS] + counts[self._BINS :]).astype(np.float64)
            cum = np.concatenate([[0.0], np.cumsum(folded)]) / n
            if cum[1] >= s:  # the zero bin (zeros and denormals) already reaches s
                return 0.0
            k = int(np.searchsorted(cum, s, side="left")) - 1
            k = min(max(k, 0), self._BINS - 1)
            width = cum[k + 1] - cum[k]
            frac = 0.0 if width <= 0 else (s - cum[k]) / width
            return float(edges[k] + frac * (edges[k + 1] - edges[k]))
        if method == "symmetric":
            pos = counts[: self._BINS].astype(np.float64)
            neg = counts[self._BINS :].astype(np.float64)
            q = 0.5 + s / 2.0
            below0 = neg.sum() / n  # P(x < 0)
            if q <= below0:
                return 0.0  # the quantile is negative: the shortcut gives no positive cut
            cum = below0 + np.concatenate([[0.0], np.cumsum(pos)]) / n
            k = int(np.searchsorted(cum, q, side="left")) - 1
            k = min(max(k, 0), self._BINS - 1)
            width = cum[k + 1] - cum[k]
            frac = 0.0 if width <= 0 else (q - cum[k]) / width
            return float(edges[k] + frac * (edges[k + 1] - edges[k]))
        raise ValueError(f"method: expected 'empirical' or 'symmetric', got {method!r}")

    def __repr__(self) -> str:
        return f"Histogram(count={self._n})"


# ---------------------------------------------------------------------------------------
# Calibration


@dataclass
class ActivationStats:
    """Histograms of a model's activations over calibration text (:func:`calibrate`).

    Attributes
    ----------
    linear : dict str -> Histogram
        Per linear weight name, the histogram of its input (q/k/v map to one shared object).
    gate : dict int -> Histogram
        Per block, ``silu(gate x)`` (CATS).
    heads : dict int -> Histogram
        Per block, the L2 norm of each attention head's output (``(T, n_heads)`` values),
        the Deja Vu head labels.
    signature : dict
        :func:`model_signature` of the calibrated model.
    tokens : int
        Tokens seen.
    """

    linear: dict[str, Histogram]
    gate: dict[int, Histogram]
    heads: dict[int, Histogram]
    signature: dict[str, Any]
    tokens: int = 0

    def check_model(self, model: LlamaModel) -> None:
        _check_signature(self.signature, model, "stats")


def _check_signature(sig: dict[str, Any], model: LlamaModel, what: str) -> None:
    want = model_signature(model)
    diff = [f"{k}={sig.get(k)!r} (model: {v!r})" for k, v in want.items() if sig.get(k) != v]
    if diff:
        raise ValueError(f"{what}: made for another model: " + ", ".join(diff))


def _windows(
    model: LlamaModel, ids: Any, seqlen: int | None, max_windows: int | None
) -> list[npt.NDArray[np.int64]]:
    from .models.perplexity import default_seqlen, token_stream

    s = default_seqlen(model) if seqlen is None else _int_arg(seqlen, "seqlen", 2)
    if s > model.config.max_seq_len:
        raise ValueError(f"seqlen: {s} exceeds max_seq_len={model.config.max_seq_len}")
    stream = token_stream(model, ids, name="ids")
    n = stream.size // s
    if max_windows is not None:
        n = min(n, _int_arg(max_windows, "max_windows", 1))
    if n == 0:
        raise ValueError(f"ids: {stream.size} tokens are shorter than one window of {s}")
    return [stream[w * s : (w + 1) * s] for w in range(n)]


def calibrate(
    model: LlamaModel,
    ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    seqlen: int | None = None,
    max_windows: int | None = None,
    progress: bool | None = None,
) -> ActivationStats:
    """Stream calibration text through the dense model and histogram every linear's input,
    ``silu(gate)`` and the per-head attention output norms.

    Parameters
    ----------
    model : LlamaModel
    ids : str (encoded with the model's tokenizer) or a 1-D sequence of token ids
    seqlen, max_windows : int, optional
        Consecutive windows of ``seqlen`` tokens (default ``min(max_seq_len, 2048)``), at
        most ``max_windows`` of them.
    progress : bool or None
        A progress bar over the windows on stderr: None shows it when stderr is a terminal
        (``SPARSEFORGE_PROGRESS=1`` forces it), True always, False never.
    """
    model = _model_arg(model)
    _progress.check_progress(progress)
    c = model.config
    linear: dict[str, Histogram] = {}
    gate: dict[int, Histogram] = {i: Histogram() for i in range(c.n_layers)}
    heads: dict[int, Histogram] = {i: Histogram() for i in range(c.n_layers)}
    for i in range(c.n_layers):
        names = model.linear_names(i)
        shared = Histogram()
        for n in names[:3]:
            linear[n] = shared
        for n in names[3:]:
            linear[n] = Histogram()

    def linear_input(name: str, x: F32Array) -> None:
        p = _proj_of(name)
        if p in ("k", "v", "up"):
            return  # same input as q / gate
        linear[name].update(x)
        if p == "o":
            T = x.shape[0]
            norms = np.linalg.norm(x.reshape(T, c.n_heads, c.head_dim), axis=2)
            heads[_block_of(name)].update(norms)

    def linear_fn(name: str, x: F32Array) -> F32Array | None:
        if _proj_of(name) != "gate":
            return None
        g = _dense(model, name, x)
        gate[_block_of(name)].update(_silu(g))
        return g

    hooks = Hooks(linear_input=linear_input, linear=linear_fn)
    tokens = 0
    windows = _windows(model, ids, seqlen, max_windows)
    with _progress.bar(len(windows), "calibrate", unit="windows", progress=progress) as bar:
        for w in windows:
            model.forward(w, hooks=hooks)
            tokens += int(w.size)
            bar.update()
    # gate and up share one input: separate objects were filled identically; share one.
    for i in range(c.n_layers):
        names = model.linear_names(i)
        linear[names[5]] = linear[names[4]]
    return ActivationStats(linear, gate, heads, model_signature(model), tokens)


# ---------------------------------------------------------------------------------------
# Thresholds


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
        if kind not in ("teal", "cats"):
            raise ValueError(f"kind: expected 'teal' or 'cats', got {kind!r}")
        values: dict[str, float] = {}
        sparsities: dict[str, float] = {}
        for n, e in data["entries"].items():
            t, s = e["threshold"], e["sparsity"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
                raise ValueError(f"{n}: threshold must be a number >= 0, got {t!r}")
            values[n] = float(t)
            sparsities[n] = _sparsity_arg(s, f"{n}.sparsity")
        sig = data["signature"]
        if not isinstance(sig, dict):
            raise ValueError("signature: expected an object")
        return cls(
            kind,
            values,
            sparsities,
            _sparsity_arg(data["target"], "target"),
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
    s = _sparsity_arg(sparsity)
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
    s = _sparsity_arg(sparsity)
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
    s = _sparsity_arg(sparsity)
    values = {f"model.layers.{i}.mlp.act": h.threshold(s) for i, h in stats.gate.items()}
    return Thresholds("cats", values, {n: s for n in values}, s, "cats", dict(stats.signature))


# ---------------------------------------------------------------------------------------
# TEAL greedy allocation


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
        t = _sparsity_arg(target, "target")
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
    smax = _sparsity_arg(max_sparsity, "max_sparsity")
    if (
        isinstance(base_step, bool)
        or not isinstance(base_step, numbers.Real)
        or not 0 < base_step < 1
    ):
        raise ValueError(f"base_step: expected a number in (0, 1), got {base_step!r}")
    if not 0 < float(last_fraction) <= 1:
        raise ValueError(f"last_fraction: expected a number in (0, 1], got {last_fraction!r}")
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


# ---------------------------------------------------------------------------------------
# Deja Vu predictors


@dataclass
class LayerPredictor:
    """One low-rank predictor: ``scores = (x @ A + a) @ B``; the top ``keep`` are run.

    ``A`` float32 ``(in_features, rank)``, ``a`` ``(rank,)``, ``B`` ``(rank, out)``.
    """

    A: F32Array
    a: F32Array
    B: F32Array
    keep: int

    def __post_init__(self) -> None:
        self.A = check_array(self.A, "A", ndim=2, kinds="f", finite=True, dtype=np.float32)
        self.a = check_array(self.a, "a", ndim=1, kinds="f", finite=True, dtype=np.float32)
        self.B = check_array(self.B, "B", ndim=2, kinds="f", finite=True, dtype=np.float32)
        r = self.A.shape[1]
        if self.a.shape != (r,) or self.B.shape[0] != r:
            raise ValueError(
                f"a, B: expected shapes ({r},) and ({r}, out) for rank {r}, got "
                f"{self.a.shape} and {self.B.shape}"
            )
        self.keep = check_int(self.keep, "keep", 1, max(int(self.B.shape[1]), 1))

    def scores(self, x: F32Array) -> F32Array:
        """``(T, out)`` float32 scores of ``x`` ``(T, in_features)``."""
        s: F32Array = ((x @ self.A + self.a) @ self.B).astype(np.float32, copy=False)
        return s

    def select(self, x: F32Array) -> npt.NDArray[np.bool_]:
        """``(T, out)`` bool: the ``keep`` highest scores per token (ties to lower index)."""
        s = self.scores(x)
        order = np.argsort(-s, axis=1, kind="stable")[:, : self.keep]
        m = np.zeros(s.shape, dtype=bool)
        np.put_along_axis(m, order, True, axis=1)
        return m


def fit_predictor(
    X: F32Array,
    Y: F32Array,
    *,
    rank: int,
    ridge: float = 1e-3,
    keep: int | None = None,
    num_threads: int | None = None,
) -> LayerPredictor:
    """Fit a :class:`LayerPredictor` to inputs ``X`` ``(T, d)`` and targets ``Y`` ``(T, H)``
    (float32) by closed-form reduced-rank ridge regression in the core
    (``sparseforge::activation::fit_low_rank_predictor``, docs/activation.md)."""
    X = check_array(X, "X", ndim=2, kinds="f", finite=True)
    Y = check_array(Y, "Y", ndim=2, kinds="f", finite=True)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows (X's tokens), got shape {Y.shape}")
    out = int(Y.shape[1])
    r = check_int(rank, "rank", 1, max(min(int(X.shape[1]) + 1, out), 1))
    ridge = check_number(ridge, "ridge", 0.0)
    k = out if keep is None else check_int(keep, "keep", 1, out)
    st = _core.activation.PredictorStats(int(X.shape[1]), out)
    st.update(
        np.ascontiguousarray(X, np.float32),
        np.ascontiguousarray(Y, np.float32),
        threads_arg(num_threads),
    )
    A, a, B = _core.activation.fit_low_rank_predictor(st, r, ridge)
    return LayerPredictor(A, a, B, k)


@dataclass
class DejaVuPredictors:
    """Per-block MLP-neuron and attention-head predictors (:func:`train_dejavu`).

    ``lookahead``: block ``i``'s sets are predicted from block ``i - 1``'s attention input
    (block 0 from its own), so the prediction can run a block ahead (Deja Vu's asynchronous
    look-ahead). Otherwise the MLP predictor reads the MLP input and the head predictor the
    attention input of the same block.
    ``recall`` / ``precision``: per block, of the predicted sets against the oracle sets
    (units whose magnitude exceeds the calibrated threshold) on the evaluation text.
    """

    mlp: list[LayerPredictor]
    heads: list[LayerPredictor]
    lookahead: bool
    mlp_sparsity: float
    head_sparsity: float
    signature: dict[str, Any]
    recall: dict[str, list[float]] = field(default_factory=dict)
    precision: dict[str, list[float]] = field(default_factory=dict)


def _dejavu_capture(model: LlamaModel, w: npt.NDArray[np.int64]) -> dict[str, list[F32Array]]:
    """Per block: attention input, MLP input, |hidden|, head output norms (dense model)."""
    c = model.config
    cap: dict[str, list[Any]] = {k: [None] * c.n_layers for k in ("xa", "xm", "h", "hn")}

    def linear_input(name: str, x: F32Array) -> None:
        i, p = _block_of(name), _proj_of(name)
        if p == "q":
            cap["xa"][i] = x.copy()
        elif p == "gate":
            cap["xm"][i] = x.copy()
        elif p == "down":
            cap["h"][i] = np.abs(x)
        elif p == "o":
            cap["hn"][i] = np.linalg.norm(x.reshape(x.shape[0], c.n_heads, c.head_dim), axis=2)

    model.forward(w, hooks=Hooks(linear_input=linear_input))
    return cap


def _predictor_input(
    cap: dict[str, list[F32Array]], i: int, kind: str, lookahead: bool
) -> F32Array:
    if lookahead and i > 0:
        return cap["xa"][i - 1]
    return cap["xm"][i] if kind == "mlp" else cap["xa"][i]


def train_dejavu(
    model: LlamaModel,
    stats: ActivationStats,
    ids: str | Sequence[int] | npt.NDArray[np.integer[Any]],
    *,
    mlp_sparsity: float,
    head_sparsity: float | None = None,
    rank: int = 64,
    ridge: float = 1e-3,
    lookahead: bool = False,
    seqlen: int | None = None,
    max_windows: int | None = None,
    eval_ids: str | Sequence[int] | npt.NDArray[np.integer[Any]] | None = None,
    eval_windows: int | None = 2,
    num_threads: int | None = None,
) -> DejaVuPredictors:
    """Train Deja Vu predictors from calibration activations.

    Labels: a neuron (head) "matters" for a token when its ``|silu(g) * u|`` (the L2 norm
    of its attention output) exceeds the threshold that zeroes ``mlp_sparsity``
    (``head_sparsity``) of them over the calibration text (from ``stats``). The predictor is
    a rank-``rank`` map fitted in the core by reduced-rank ridge regression onto these 0/1
    labels (:func:`fit_predictor`); at run time the top ``round((1 - s) * units)`` scores are
    computed. With ``eval_ids``, per-block recall and precision of the predicted sets
    against the oracle label sets are measured on that text.
    """
    model = _model_arg(model)
    stats = _stats_arg(stats)
    stats.check_model(model)
    s_m = _sparsity_arg(mlp_sparsity, "mlp_sparsity")
    s_h = s_m if head_sparsity is None else _sparsity_arg(head_sparsity, "head_sparsity")
    if not isinstance(lookahead, bool):
        raise TypeError(f"lookahead: expected a bool, got {type(lookahead).__name__}")
    c = model.config
    thr = threads_arg(num_threads)
    t_mlp = [stats.linear[model.linear_names(i)[6]].threshold(s_m) for i in range(c.n_layers)]
    t_head = [stats.heads[i].threshold(s_h) for i in range(c.n_layers)]
    d = c.dim
    ps_m = [_core.activation.PredictorStats(d, c.hidden_dim) for _ in range(c.n_layers)]
    ps_h = [_core.activation.PredictorStats(d, c.n_heads) for _ in range(c.n_layers)]
    for w in _windows(model, ids, seqlen, max_windows):
        cap = _dejavu_capture(model, w)
        for i in range(c.n_layers):
            ym = (cap["h"][i] > t_mlp[i]).astype(np.float32)
            yh = (cap["hn"][i] > t_head[i]).astype(np.float32)
            ps_m[i].update(_predictor_input(cap, i, "mlp", lookahead), ym, thr)
            ps_h[i].update(_predictor_input(cap, i, "heads", lookahead), yh, thr)
    keep_m = max(1, round((1 - s_m) * c.hidden_dim))
    keep_h = max(1, round((1 - s_h) * c.n_heads))
    mlp, heads = [], []
    for i in range(c.n_layers):
        A, a, B = _core.activation.fit_low_rank_predictor(
            ps_m[i], min(rank, d + 1, c.hidden_dim), ridge
        )
        mlp.append(LayerPredictor(A, a, B, keep_m))
        A, a, B = _core.activation.fit_low_rank_predictor(
            ps_h[i], min(rank, d + 1, c.n_heads), ridge
        )
        heads.append(LayerPredictor(A, a, B, keep_h))
    pred = DejaVuPredictors(mlp, heads, lookahead, s_m, s_h, model_signature(model))
    if eval_ids is not None:
        hit = {k: np.zeros(c.n_layers) for k in ("mlp", "heads")}
        npred = {k: np.zeros(c.n_layers) for k in ("mlp", "heads")}
        norac = {k: np.zeros(c.n_layers) for k in ("mlp", "heads")}
        for w in _windows(model, eval_ids, seqlen, eval_windows):
            cap = _dejavu_capture(model, w)
            for i in range(c.n_layers):
                for kind, P, oracle in (
                    ("mlp", mlp[i], cap["h"][i] > t_mlp[i]),
                    ("heads", heads[i], cap["hn"][i] > t_head[i]),
                ):
                    sel = P.select(_predictor_input(cap, i, kind, lookahead))
                    hit[kind][i] += np.count_nonzero(sel & oracle)
                    npred[kind][i] += np.count_nonzero(sel)
                    norac[kind][i] += np.count_nonzero(oracle)
        for kind in ("mlp", "heads"):
            pred.recall[kind] = [
                float(h / max(o, 1)) for h, o in zip(hit[kind], norac[kind], strict=True)
            ]
            pred.precision[kind] = [
                float(h / max(p, 1)) for h, p in zip(hit[kind], npred[kind], strict=True)
            ]
    return pred


# ---------------------------------------------------------------------------------------
# The sparse forward

MODES = ("teal", "cats", "relu", "dejavu")


class SparseForward:
    """Run a :class:`LlamaModel` with activation sparsity through :attr:`hooks`.

    Parameters
    ----------
    model : LlamaModel
    thresholds : Thresholds, optional
        ``kind="teal"`` for mode ``"teal"``, ``kind="cats"`` for mode ``"cats"``.
    mode : {"teal", "cats", "relu", "dejavu"}
        * ``"teal"``: every linear's input is thresholded, ``x * (|x| > t)``. Decode steps
          (T = 1) run :func:`sparseforge.kernels.gemv_sparse_input` on the transposed
          weights ``Wt`` prepared here (the threshold test inside the kernel; only active
          rows are read). T > 1 computes the same masked product densely.
        * ``"cats"``: ``a = silu(gate x)`` dense; units with ``|a| > t`` are kept: their up
          rows (:func:`~sparseforge.kernels.gemv_rows`) and down columns
          (:func:`~sparseforge.kernels.gemv_active_input` on ``W_down.T``).
        * ``"relu"``: a ReLU MLP ``relu(gate x) * (up x)`` (this replaces the model's SiLU:
          the exact-zero path of ReLU-family models, ReLUfied without training here): the
          up rows and down columns of the exact zeros are skipped, no threshold needed.
        * ``"dejavu"``: ``predictors`` choose per token the MLP neurons (gate/up rows,
          down columns) and attention heads (q rows, o columns; k/v stay dense for the
          cache) that run.
    predictors : DejaVuPredictors, for mode ``"dejavu"``.
    weight_format : {"dense", "bitmap"}
        ``"bitmap"`` stores each transposed weight as a ``BitmapTensor`` (the model's
        weights pruned, e.g. 2:4): column skip then reads only the active rows' bits and
        kept values (mode ``"teal"`` only).
    num_threads : int, optional

    Memory: mode ``"teal"`` holds a transposed copy of every block linear (the blocks'
    weight bytes again, in the model's dtype); ``"cats"``/``"relu"`` of ``down`` only;
    ``"dejavu"`` of ``o`` and ``down``.
    """

    def __init__(
        self,
        model: LlamaModel,
        thresholds: Thresholds | None = None,
        *,
        mode: str = "teal",
        predictors: DejaVuPredictors | None = None,
        weight_format: str = "dense",
        num_threads: int | None = None,
    ) -> None:
        self.model = _model_arg(model)
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if weight_format not in ("dense", "bitmap"):
            raise ValueError(f"weight_format: expected 'dense' or 'bitmap', got {weight_format!r}")
        if weight_format == "bitmap" and mode != "teal":
            raise ValueError(f"weight_format: 'bitmap' needs mode 'teal', got mode {mode!r}")
        act = self.model.config.activation
        if mode in ("cats", "relu", "dejavu") and act != "silu":
            raise ValueError(
                f"mode: {mode!r} replaces or gates a SwiGLU MLP, this {self.model.config.arch} "
                f"model's gate is {act!r} (use mode 'teal')"
            )
        threads_arg(num_threads)
        self.mode = mode
        self.num_threads = num_threads
        self.thresholds = thresholds
        self.predictors = predictors
        if mode in ("teal", "cats"):
            if not isinstance(thresholds, Thresholds):
                raise TypeError(
                    f"thresholds: mode {mode!r} needs a Thresholds table, got "
                    f"{type(thresholds).__name__}"
                )
            if thresholds.kind != mode:
                raise ValueError(f"thresholds: a {thresholds.kind!r} table, mode is {mode!r}")
            thresholds.check_model(model)
        elif thresholds is not None:
            raise ValueError(f"thresholds: mode {mode!r} takes no thresholds")
        if mode == "dejavu":
            if not isinstance(predictors, DejaVuPredictors):
                raise TypeError(
                    f"predictors: mode 'dejavu' needs DejaVuPredictors, got "
                    f"{type(predictors).__name__}"
                )
            _check_signature(predictors.signature, model, "predictors")
        elif predictors is not None:
            raise ValueError(f"predictors: mode {mode!r} takes no predictors")
        self._wt: dict[str, Any] = {}
        c = model.config
        for i in range(c.n_layers):
            names = model.linear_names(i)
            wanted = {
                "teal": names,
                "cats": names[6:],
                "relu": names[6:],
                "dejavu": [names[3], names[6]],
            }[mode]
            for n in wanted:
                W = model.weight(n)
                if not isinstance(W, np.ndarray):
                    raise ValueError(
                        f"model: {n} is a compressed tensor; SparseForward needs "
                        "dense weights (weight_format='bitmap' compresses Wt)"
                    )
                Wt = np.ascontiguousarray(W.T)
                if weight_format == "bitmap":
                    from .format import BitmapTensor

                    self._wt[n] = BitmapTensor.from_dense(Wt)
                else:
                    self._wt[n] = Wt
        self._params = _param_counts(model)
        self._active: dict[str, float] = {}
        self._seen: dict[str, int] = {}
        self._state: dict[str, Any] = {}
        self.hooks = Hooks(linear=self._linear, mlp_hidden=self._mlp_hidden)

    # -- bookkeeping -------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Forget the achieved-sparsity counts."""
        self._active.clear()
        self._seen.clear()

    def _count(self, name: str, density: float, tokens: int) -> None:
        self._active[name] = self._active.get(name, 0.0) + density * tokens
        self._seen[name] = self._seen.get(name, 0) + tokens

    def achieved(self) -> dict[str, float]:
        """Measured sparsity per linear (fraction of its weight not needed, averaged over
        tokens) and ``"model"``: the parameter-weighted sparsity over all block linears
        (unvisited linears count as dense)."""
        out = {n: 1.0 - self._active[n] / self._seen[n] for n in self._seen}
        total = sum(self._params.values())
        out["model"] = sum(out.get(n, 0.0) * p for n, p in self._params.items()) / total
        return out

    # -- hooks -------------------------------------------------------------------------
    def _threads(self) -> int | None:
        return self.num_threads

    def _linear(self, name: str, x: F32Array) -> F32Array | None:
        if self.mode == "teal":
            return self._teal(name, x)
        if self.mode in ("cats", "relu"):
            return self._cats(name, x)
        return self._dejavu(name, x)

    def _mlp_hidden(self, block: int, m: F32Array) -> F32Array | None:
        if self.mode == "relu":
            g, u = self._state.pop("g"), self._state.pop("u")
            out: F32Array = np.maximum(g, 0) * u
            return out
        if self.mode == "dejavu" and m.shape[0] > 1:
            res: F32Array = m * self._state["mask_m"]
            return res
        return None

    def _teal(self, name: str, x: F32Array) -> F32Array:
        assert self.thresholds is not None
        t = self.thresholds.values[name]
        Wt = self._wt[name]
        T = x.shape[0]
        if T == 1:
            y, info = _kernels.gemv_sparse_input(
                Wt, x[0], t, num_threads=self.num_threads, return_info=True
            )
            self._count(name, info.density, 1)
            out: F32Array = y.reshape(1, -1)
            return out
        mask = np.abs(x) > t
        self._count(name, float(mask.mean()), T)
        xm = np.where(mask, x, np.float32(0))
        return self._masked_product(name, xm)

    def _masked_product(self, name: str, xm: F32Array) -> F32Array:
        W = self.model.weight(name)
        return self.model._matmul(W, np.ascontiguousarray(xm))

    def _cats(self, name: str, x: F32Array) -> F32Array | None:
        p = _proj_of(name)
        if p not in ("gate", "up", "down"):
            return None
        T = x.shape[0]
        i = _block_of(name)
        if p == "gate":
            g = _dense(self.model, name, x)
            if self.mode == "relu":
                self._state["g"] = g
                self._state["mask"] = g > 0
            else:
                assert self.thresholds is not None
                t = self.thresholds.values[f"model.layers.{i}.mlp.act"]
                self._state["mask"] = np.abs(_silu(g)) > t
            return g
        mask = self._state["mask"]
        if p == "up":
            self._count(name, float(mask.mean()), T)
            if T == 1:
                u = _kernels.gemv_rows(
                    self.model.weight(name), x[0], mask[0], num_threads=self.num_threads
                ).reshape(1, -1)
            else:
                u = _dense(self.model, name, x) * mask
            if self.mode == "relu":
                self._state["u"] = u
            return u
        # down: its input is exactly zero outside the mask (silu(g) * 0, or relu)
        self._count(name, float(mask.mean()), T)
        if T == 1:
            y = _kernels.gemv_active_input(
                self._wt[name], x[0], mask[0], num_threads=self.num_threads
            )
            return y.reshape(1, -1)
        return self._masked_product(name, np.where(mask, x, np.float32(0)))

    def _dejavu(self, name: str, x: F32Array) -> F32Array | None:
        assert self.predictors is not None
        P = self.predictors
        c = self.model.config
        i, p = _block_of(name), _proj_of(name)
        T = x.shape[0]
        if p == "q":
            src: F32Array = self._state["prev_xa"] if (P.lookahead and i > 0) else x
            self._state["mask_h"] = P.heads[i].select(src)
            if P.lookahead and i > 0:
                self._state["mask_m"] = P.mlp[i].select(src)
            self._state["prev_xa"] = x.copy()
            hmask = self._state["mask_h"]
            self._count(name, float(hmask.mean()), T)
            if T == 1:
                rows = np.repeat(hmask[0], c.head_dim)
                y = _kernels.gemv_rows(
                    self.model.weight(name), x[0], rows, num_threads=self.num_threads
                )
                return y.reshape(1, -1)
            return None
        if p in ("k", "v"):
            return None
        if p == "o":
            cols = np.repeat(self._state["mask_h"], c.head_dim, axis=1)
            self._count(name, float(cols.mean()), T)
            if T == 1:
                y = _kernels.gemv_active_input(
                    self._wt[name], x[0], cols[0], num_threads=self.num_threads
                )
                return y.reshape(1, -1)
            return self._masked_product(name, np.where(cols, x, np.float32(0)))
        if p == "gate" and not (P.lookahead and i > 0):
            self._state["mask_m"] = P.mlp[i].select(x)
        mask = self._state["mask_m"]
        self._count(name, float(mask.mean()), T)
        if p in ("gate", "up"):
            if T == 1:
                y = _kernels.gemv_rows(
                    self.model.weight(name), x[0], mask[0], num_threads=self.num_threads
                )
                return y.reshape(1, -1)
            return None
        if T == 1:
            y = _kernels.gemv_active_input(
                self._wt[name], x[0], mask[0], num_threads=self.num_threads
            )
            return y.reshape(1, -1)
        return self._masked_product(name, np.where(mask, x, np.float32(0)))

    def wrap(self) -> SparseModel:
        """A :class:`SparseModel` view of the model whose ``forward`` / ``nll`` / ``step`` /
        ``generate`` use :attr:`hooks` by default, so :func:`sparseforge.models.perplexity`
        runs sparse too. It shares the model's weights (no copy).

        In mode ``"teal"`` its ``step`` (on a :class:`~sparseforge.models.KVCache`),
        ``generate`` and ``nll`` run on the compiled runtime (:mod:`sparseforge.runtime`)
        with these thresholds and transposed weights (TEAL's fused sparse SwiGLU at decode);
        :meth:`achieved` then counts only what ran through :attr:`hooks` (``forward``, or
        calls given ``hooks=fwd.hooks``)."""
        return SparseModel(self)

    def __repr__(self) -> str:
        return f"SparseForward(mode={self.mode!r}, model={self.model!r})"


class SparseModel(LlamaModel):
    """A :class:`LlamaModel` that runs with a :class:`SparseForward`'s hooks unless
    given others (:meth:`SparseForward.wrap`). Shares the wrapped model's weights and
    overrides."""

    def __init__(self, sparse: SparseForward) -> None:
        self.__dict__.update(sparse.model.__dict__)
        self.sparse = sparse
        # Calls without hooks run these where the runtime does not serve them.
        self._default_hooks = sparse.hooks
        self._rt = None

    def _runtime_model(self) -> Any:
        if self.sparse.mode != "teal":
            return None
        return self._compiled({"thresholds": self.sparse.thresholds, "transposed": self.sparse._wt})

    def forward(
        self, tokens: Sequence[int] | npt.NDArray[np.integer[Any]], *, hooks: Hooks | None = None
    ) -> F32Array:
        return super().forward(tokens, hooks=self.sparse.hooks if hooks is None else hooks)

    def __repr__(self) -> str:
        return f"SparseModel(mode={self.sparse.mode!r}, {super().__repr__()})"


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
