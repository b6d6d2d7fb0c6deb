"""Layer-by-layer pruning of a :class:`LlamaModel`: :func:`prune` (the SparseGPT / Wanda
protocol) and its :class:`PruneReport`.

Calibration windows run through ``model.embed``; then for each block ``i``:

1. the block runs over the current calibration states with :class:`Hooks` capturing every
   linear's input into a :class:`sparseforge.calib.LayerStats` (one per distinct input:
   q/k/v share one, gate/up share one, o and down have their own);
2. the block's 7 linears are pruned with the chosen method, and written back with
   ``model.set_weight``;
3. the states for block ``i + 1`` are the block's outputs recomputed with the pruned
   weights (``sequential=True``, the references' protocol), or the dense outputs of step 1
   (``sequential=False``).

As in both references, the 7 linears of a block are calibrated together in one pass over
the block's (dense) weights; there is no "true-sequential" pass inside a block.

Methods come from :data:`METHODS`; :func:`register_method` adds one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _progress
from .. import prune as _prune
from .._validate import check_bool, check_fraction, check_int
from ..calib import LayerStats
from . import _calibration
from .llama import LlamaModel
from .perplexity import _int_arg, default_seqlen, token_stream

__all__ = [
    "METHODS",
    "LayerReport",
    "MethodSpec",
    "PruneReport",
    "calibration_windows",
    "check_method",
    "prune",
    "prune_linear",
    "register_method",
]

# A pruning method: (W, stats, sparsity, pattern, **kwargs) -> PruneResult. ``sparsity``
# is None when the caller gave none (0.5, or 1 - n/m with a pattern); ``pattern`` is None
# or what the caller gave ("2:4", (2, 4), NMPattern).
MethodFn = Callable[..., _prune.PruneResult]


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method for :func:`prune`: ``fn(W, stats, sparsity, pattern, **kwargs)``
    returning a :class:`sparseforge.prune.PruneResult`; ``needs_hessian`` says whether
    ``stats`` must hold ``X^T X`` (otherwise the column norms are enough);
    ``needs_data=False`` marks a data-free method (magnitude): with ``error=False`` no
    calibration forward runs and ``stats`` is None. ``share(stats, kwargs)``, when set,
    turns a LayerStats into what ``fn`` gets for all linears reading that input (made once:
    SparseGPT factorises the shared Hessian of q/k/v and of gate/up once)."""

    fn: MethodFn
    needs_hessian: bool
    needs_data: bool = True
    # share(stats, method_kwargs) -> what ``fn`` receives as ``stats`` for every linear of a
    # block that reads the same input (q/k/v, gate/up): made once per input (SparseGPT's
    # factorised Hessian), or None to pass the LayerStats itself.
    share: Callable[[LayerStats, dict[str, Any]], Any] | None = None


def _magnitude(
    W: np.ndarray, stats: LayerStats | None, sparsity: float | None, pattern: Any, **kw: Any
) -> _prune.PruneResult:
    return _prune.magnitude(W, sparsity, pattern=pattern, **kw)


def _wanda(
    W: np.ndarray, stats: LayerStats, sparsity: float | None, pattern: Any, **kw: Any
) -> _prune.PruneResult:
    return _prune.wanda(W, stats, sparsity, pattern=pattern, **kw)


def _sparsegpt(
    W: np.ndarray, stats: LayerStats, sparsity: float | None, pattern: Any, **kw: Any
) -> _prune.PruneResult:
    return _prune.sparsegpt(W, stats, sparsity, pattern=pattern, **kw)


def _sparsegpt_factor(stats: LayerStats, kw: dict[str, Any]) -> _prune.HessianFactor:
    # U depends on H, the damping and the precisions only; sparsegpt() checks that the
    # kwargs it then gets agree with the factor's.
    keys = ("percdamp", "max_percdamp", "precision", "factor_precision", "num_threads")
    return _prune.factor_hessian(stats, **{k: kw[k] for k in keys if kw.get(k) is not None})


METHODS: dict[str, MethodSpec] = {
    "magnitude": MethodSpec(_magnitude, needs_hessian=False, needs_data=False),
    "wanda": MethodSpec(_wanda, needs_hessian=False),
    "sparsegpt": MethodSpec(_sparsegpt, needs_hessian=True, share=_sparsegpt_factor),
}


def register_method(name: str, fn: MethodFn, *, needs_hessian: bool) -> None:
    """Make ``method=name`` available to :func:`prune` (replacing any method of that name).

    ``fn(W, stats, sparsity, pattern, **method_kwargs)`` gets the weight (``(out, in)``,
    float32/float16/bfloat16, read-only: do not modify it), the layer's
    :class:`LayerStats`, the ``sparsity`` and ``pattern`` given to :func:`prune` (either
    may be None) and returns a :class:`sparseforge.prune.PruneResult`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    check_bool(needs_hessian, "needs_hessian")
    METHODS[name] = MethodSpec(fn, needs_hessian)


@dataclass(frozen=True)
class LayerReport:
    """One pruned linear.

    Attributes
    ----------
    name : str
        Weight name (``model.layers.3.mlp.down_proj.weight``).
    shape : (int, int)
        ``(out_features, in_features)``.
    sparsity : float
        Achieved fraction of zeros.
    error : float or None
        ``sf.prune.reconstruction_error(W, W_pruned, H)`` on the calibration inputs this
        layer saw (``||(W - W') X||^2 / ||W X||^2``); None when no Hessian was gathered
        (``error=False`` with a method that needs none).
    seconds : float
        Wall time of the method on this layer (statistics gathering excluded).
    info : mapping
        The method's ``PruneResult.info``.
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    error: float | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PruneReport:
    """What :func:`prune` did: the settings and one :class:`LayerReport` per linear, in
    block order (q, k, v, o, gate, up, down)."""

    method: str
    sparsity: float | None
    pattern: str | None
    sequential: bool
    nsamples: int
    seqlen: int
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def calib_tokens(self) -> int:
        """Calibration tokens each linear saw: ``nsamples * seqlen``."""
        return self.nsamples * self.seqlen

    @property
    def overall_sparsity(self) -> float:
        """Zeros over all pruned linears, weighted by their sizes."""
        total = sum(r.shape[0] * r.shape[1] for r in self.layers)
        if total == 0:
            return 0.0
        return sum(r.sparsity * r.shape[0] * r.shape[1] for r in self.layers) / total

    def layer(self, name: str) -> LayerReport:
        """The report of weight ``name``."""
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"name: {name!r} was not pruned")

    def table(self) -> str:
        """A plain-text table: one line per linear."""
        width = max([len(r.name) for r in self.layers] + [4])
        lines = [f"{'name':<{width}}  {'shape':>11}  {'sparsity':>8}  {'rel.error':>10}  {'s':>7}"]
        for r in self.layers:
            err = "-" if r.error is None else f"{r.error:.3e}"
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(
                f"{r.name:<{width}}  {shape:>11}  {r.sparsity:>8.4f}  {err:>10}  {r.seconds:>7.3f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._headline() + "\n" + self.table()

    def _headline(self) -> str:
        target = self.pattern if self.pattern is not None else f"{self.sparsity or 0.5:g}"
        errors = [r.error for r in self.layers if r.error is not None]
        err = f", mean rel. error {sum(errors) / len(errors):.3e}" if errors else ""
        return (
            f"{self.method} {target}, {'sequential' if self.sequential else 'dense inputs'}, "
            f"{self.nsamples} x {self.seqlen} calibration tokens, {len(self.layers)} linears, "
            f"sparsity {self.overall_sparsity:.4f}{err}, {self.seconds:.2f} s"
        )

    def __repr__(self) -> str:
        return f"PruneReport({self._headline()})"

    def by_projection(self) -> list[tuple[str, int, float, float | None, float]]:
        """Per projection kind (``q_proj``, ..., ``down_proj``, in block order): the
        number of linears, their mean sparsity, mean reconstruction error (None when not
        measured) and total seconds."""
        groups: dict[str, list[LayerReport]] = {}
        for r in self.layers:
            groups.setdefault(_projection(r.name), []).append(r)
        out = []
        for kind, rs in groups.items():
            errs = [r.error for r in rs if r.error is not None]
            out.append(
                (
                    kind,
                    len(rs),
                    sum(r.sparsity for r in rs) / len(rs),
                    sum(errs) / len(errs) if errs else None,
                    sum(r.seconds for r in rs),
                )
            )
        return out

    def _repr_html_(self) -> str:
        import html as _html

        from .._display import html_table

        summary = html_table(
            ("projection", "linears", "mean sparsity", "mean rel. error", "seconds"),
            [
                (k, n, round(sp, 4), "-" if e is None else f"{e:.3e}", round(t, 3))
                for k, n, sp, e, t in self.by_projection()
            ],
        )
        layers = html_table(
            ("name", "shape", "sparsity", "rel. error", "seconds"),
            [
                (
                    r.name,
                    f"{r.shape[0]}x{r.shape[1]}",
                    round(r.sparsity, 4),
                    "-" if r.error is None else f"{r.error:.3e}",
                    round(r.seconds, 4),
                )
                for r in self.layers
            ],
        )
        return (
            f"<b>PruneReport</b>: {_html.escape(self._headline())}{summary}"
            f"<details><summary>{len(self.layers)} linears</summary>{layers}</details>"
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (:meth:`from_dict` reads it back): the settings,
        ``overall_sparsity``, ``calib_tokens`` and one entry per linear (``name``,
        ``shape``, ``sparsity``, ``error``, ``seconds`` and the JSON-representable part of
        ``info``)."""
        from .._display import jsonable

        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "pattern": self.pattern,
            "sequential": self.sequential,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seconds": self.seconds,
            "calib_tokens": self.calib_tokens,
            "overall_sparsity": self.overall_sparsity,
            "layers": [
                {
                    "name": r.name,
                    "shape": [int(r.shape[0]), int(r.shape[1])],
                    "sparsity": r.sparsity,
                    "error": r.error,
                    "seconds": r.seconds,
                    "info": jsonable(r.info),
                }
                for r in self.layers
            ],
        }

    def to_json(self, **json_kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **json_kwargs)``."""
        import json

        return json.dumps(self.to_dict(), **json_kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> PruneReport:
        """A report from :meth:`to_dict`'s data (``ValueError`` naming what is missing)."""
        if not isinstance(data, dict):
            raise TypeError(f"data: expected a dict, got {type(data).__name__}")
        try:
            layers = [
                LayerReport(
                    name=str(d["name"]),
                    shape=(int(d["shape"][0]), int(d["shape"][1])),
                    sparsity=float(d["sparsity"]),
                    error=None if d.get("error") is None else float(d["error"]),
                    seconds=float(d.get("seconds", 0.0)),
                    info=dict(d.get("info") or {}),
                )
                for d in data["layers"]
            ]
            return cls(
                method=str(data["method"]),
                sparsity=None if data.get("sparsity") is None else float(data["sparsity"]),
                pattern=data.get("pattern"),
                sequential=bool(data.get("sequential", True)),
                nsamples=int(data["nsamples"]),
                seqlen=int(data["seqlen"]),
                layers=layers,
                seconds=float(data.get("seconds", 0.0)),
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"data: not a PruneReport dict ({type(e).__name__}: {e})") from e

    def plot(self, *, ax: Any = None, path: Any = None) -> Any:
        """Per-linear sparsity (bars) and reconstruction error (points, log scale) in block
        order, one colour per projection kind; needs matplotlib (the ``plot`` extra).

        ``ax``: draw into this Axes (default: a new figure); ``path``: also save the figure
        there. Returns the matplotlib Figure.
        """
        try:
            import matplotlib

            if ax is None and path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "PruneReport.plot needs matplotlib: pip install matplotlib (or install "
                "sparseforge from a checkout with the 'plot' extra)"
            ) from e
        if ax is None:
            fig, ax = plt.subplots(figsize=(10, 3.6), layout="constrained")
        else:
            fig = ax.figure
        kinds = list(dict.fromkeys(_projection(r.name) for r in self.layers))
        colours = {k: f"C{i}" for i, k in enumerate(kinds)}
        x = np.arange(len(self.layers))
        ax.bar(
            x,
            [r.sparsity for r in self.layers],
            color=[colours[_projection(r.name)] for r in self.layers],
            alpha=0.35,
            width=1.0,
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity (bars)")
        ax.set_xlabel("linear, in block order")
        ax.set_title(self._headline(), fontsize=9)
        if any(r.error is not None for r in self.layers):
            ax2 = ax.twinx()
            for k in kinds:
                pts = [(i, r.error) for i, r in enumerate(self.layers) if _projection(r.name) == k]
                pts = [(i, e) for i, e in pts if e is not None and e > 0]
                if pts:
                    ax2.plot(*zip(*pts, strict=True), "o", ms=3, color=colours[k], label=k)
            ax2.set_yscale("log")
            ax2.set_ylabel("rel. reconstruction error (points)")
            ax2.legend(fontsize=7, ncol=len(kinds), loc="upper left")
        if path is not None:
            fig.savefig(path)
        return fig


def _projection(name: str) -> str:
    """``q_proj`` ... ``down_proj`` from a weight name (the name itself otherwise)."""
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 and parts[-1] == "weight" else name


def calibration_windows(
    model: LlamaModel,
    calib: Any,
    *,
    nsamples: int = 128,
    seqlen: int | None = None,
    seed: int = 0,
    bos: bool = True,
) -> npt.NDArray[np.int64]:
    """Calibration token windows, int64 ``(nsamples, seqlen)``.

    ``calib`` is a ``str`` (encoded with ``model.tokenizer``), a 1-D sequence of ids (one
    stream), or a 2-D integer array of ready windows (its first ``nsamples`` rows are used;
    ``seqlen`` must then be None or its width). From a stream, ``nsamples`` windows start at
    positions drawn uniformly from ``[0, len - seqlen]`` with
    ``numpy.random.default_rng(seed)`` (the references draw random C4 segments); they may
    overlap. ``seqlen`` defaults to ``min(max_seq_len, 2048)``. A stream with fewer than
    ``nsamples`` distinct window starts (``len - seqlen + 1 < nsamples``) is a ValueError:
    the windows could only repeat.
    """
    n = _int_arg(nsamples, "nsamples", 1)
    max_len = int(model.config.max_seq_len)
    s = None if seqlen is None else _int_arg(seqlen, "seqlen", 1, max_len)
    if isinstance(calib, np.ndarray) and calib.ndim == 2:
        if calib.dtype == np.bool_ or not np.issubdtype(calib.dtype, np.integer):
            raise TypeError(f"calib: expected integer token ids, got dtype {calib.dtype}")
        if s is not None and calib.shape[1] != s:
            raise ValueError(
                f"calib: windows have {calib.shape[1]} tokens but seqlen={s}; "
                "leave seqlen unset with 2-D calib"
            )
        if not 1 <= calib.shape[1] <= max_len or calib.shape[0] == 0:
            raise ValueError(
                f"calib: expected (nsamples >= 1, 1 <= seqlen <= {max_len}) windows, "
                f"got shape {calib.shape}"
            )
        rows = calib[:n]
        flat = token_stream(model, rows.reshape(-1), name="calib")
        return flat.reshape(rows.shape)
    check_int(seed, "seed")
    s = default_seqlen(model) if s is None else s
    ids = token_stream(model, calib, bos=bos, name="calib")
    if ids.size < s:
        raise ValueError(
            f"calib: {ids.size} tokens are shorter than one calibration window: expected at "
            f"least seqlen={s} tokens"
        )
    if ids.size - s + 1 < n:
        raise ValueError(
            f"calib: {ids.size} tokens hold only {ids.size - s + 1} distinct windows of "
            f"seqlen={s}, fewer than nsamples={n}: give more text, fewer or shorter windows"
        )
    rng = np.random.default_rng(int(seed))
    starts = rng.integers(0, ids.size - s + 1, size=n)
    return np.stack([ids[int(a) : int(a) + s] for a in starts])


def check_method(method: Any, sparsity: Any, pattern: Any) -> tuple[MethodSpec, Any]:
    """Validate the method name, sparsity and pattern shared by :func:`prune` and
    ``sparseforge.torch.prune_model``; returns the method and the parsed pattern (or None)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if sparsity is not None:
        check_fraction(sparsity, "sparsity")
    return METHODS[method], (None if pattern is None else _prune.parse_pattern(pattern))


def prune_linear(
    spec: MethodSpec,
    name: str,
    W: np.ndarray,
    stats: LayerStats | None,
    sparsity: float | None,
    pattern: Any,
    method_kwargs: dict[str, Any],
    shared: Any = None,
) -> tuple[_prune.PruneResult, LayerReport]:
    """Run one method on one weight and describe it: the result and its
    :class:`LayerReport` (the reconstruction error, computed in the core from ``stats``
    read in place, when ``stats`` holds ``X^T X``). ``shared``: what ``spec.share`` made
    from ``stats`` (passed to the method instead of ``stats``)."""
    t0 = time.perf_counter()
    res = spec.fn(W, stats if shared is None else shared, sparsity, pattern, **method_kwargs)
    seconds = time.perf_counter() - t0
    err = None
    if stats is not None and stats.has_hessian:
        err = _prune.reconstruction_error(
            W, res.weight, stats, num_threads=method_kwargs.get("num_threads")
        )
    report = LayerReport(
        name=name,
        shape=(int(W.shape[0]), int(W.shape[1])),
        sparsity=float(res.sparsity),
        error=err,
        seconds=seconds,
        info=dict(res.info),
    )
    return res, report


def prune(
    model: LlamaModel,
    calib: Any,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: Any = None,
    sequential: bool = True,
    nsamples: int = 128,
    seqlen: int | None = None,
    seed: int = 0,
    bos: bool = True,
    error: bool = True,
    progress: bool | None = None,
    activations: str = "float32",
    spill: str | os.PathLike[str] | None = None,
    batch_tokens: int = 8192,
    forward: str = "auto",
    **method_kwargs: Any,
) -> PruneReport:
    """Prune every block's 7 linears of ``model`` in place (``model.set_weight``), block by
    block, each block calibrated on the outputs of the blocks before it.

    Parameters
    ----------
    model : LlamaModel
        Its linear weights must be dense arrays (not compressed tensors). Embeddings, norms
        and the output head are not touched.
    calib : str, 1-D ids, or 2-D int array (nsamples, seqlen)
        Calibration text or tokens; see :func:`calibration_windows`.
    method : str
        A key of :data:`METHODS`: ``"magnitude"`` (per row), ``"wanda"``, ``"sparsegpt"``,
        or any registered later.
    sparsity : float in [0, 1), optional
        Target fraction of zeros per linear; default 0.5, or ``1 - n/m`` with a pattern.
    pattern : "n:m", optional
        N:M sparsity (n kept of every m along ``in_features``), e.g. ``"2:4"``.
    sequential : bool
        True (the references' protocol): block ``i + 1`` is calibrated on block ``i``'s
        outputs after pruning. False: on the dense model's outputs.
    nsamples, seqlen, seed, bos
        Calibration windows (default 128 windows of ``min(max_seq_len, 2048)`` tokens).
        Memory: two arrays of ``nsamples * seqlen * dim`` (``activations``) hold the
        states between blocks.
    error : bool
        Gather ``X^T X`` for every linear and report each layer's reconstruction error
        (always gathered when the method needs it). The cost is ``in_features^2``
        multiply-adds per calibration token per distinct input.
    progress : bool or None
        A progress bar over the blocks on stderr (tqdm when installed, else plain lines):
        None shows it when stderr is a terminal (``SPARSEFORGE_PROGRESS=1`` forces it),
        True always, False never.
    activations : {"float32", "bfloat16"}
        Storage of the calibration states between blocks (each block computes in float32;
        "bfloat16" halves their memory and rounds each block's inputs to bfloat16).
    spill : path of a folder, optional
        Keep the states in memory-mapped temporary files there (removed at the end)
        instead of in RAM.
    batch_tokens : int
        The calibration forward runs whole windows in batches of at most this many tokens
        (at least one window): each linear is one GEMM over the batch, attention runs per
        window. Bounds the block's intermediate activations (``batch_tokens *
        hidden_dim`` float32 values each).
    forward : {"auto", "core", "python"}
        The calibration forward: "core" runs each batch through a block in one C++ call
        (the statistics fed in the core; plain Llama / Mistral / Qwen2 blocks with dense
        weights), "python" the research forward (any family, numpy GEMMs); "auto" (default)
        takes the core when it implements the model. Outputs agree to float32 rounding.
    **method_kwargs
        Passed to the method (e.g. ``percdamp=``, ``block_size=`` for sparsegpt,
        ``scope=`` for magnitude, ``variant=`` for wanda).

    Returns
    -------
    PruneReport
    """
    t_start = time.perf_counter()
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    spec, nm_pattern = check_method(method, sparsity, pattern)
    for flag, value in (
        ("sequential", sequential),
        ("error", error),
        ("bos", bos),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {type(value).__name__}")
    _progress.check_progress(progress)
    act_dtype = _calibration.activation_dtype(activations)
    bt = _int_arg(batch_tokens, "batch_tokens", 1)
    pattern_str = None if nm_pattern is None else str(nm_pattern)
    fwd = _calibration.resolve_forward(model, forward)
    windows = calibration_windows(
        model, calib, nsamples=nsamples, seqlen=seqlen, seed=seed, bos=bos
    )
    n, s = int(windows.shape[0]), int(windows.shape[1])
    c = model.config
    # Dense linear weights (and whole N:M groups) are required: fail before touching anything.
    for i in range(c.n_layers):
        for name in model.linear_names(i):
            w = model.weight(name)
            if not isinstance(w, np.ndarray):
                raise ValueError(
                    f"model: {name} is a compressed {type(w).__name__}; prune needs dense weights"
                )
            if nm_pattern is not None and w.shape[1] % nm_pattern.m != 0:
                raise ValueError(
                    f"pattern: {nm_pattern} needs in_features divisible by {nm_pattern.m}, but "
                    f"{name} has in_features={w.shape[1]}"
                )
    report = PruneReport(
        method=method,
        sparsity=None if sparsity is None else float(sparsity),
        pattern=pattern_str,
        sequential=sequential,
        nsamples=n,
        seqlen=s,
    )
    hessian = spec.needs_hessian or error
    if not spec.needs_data and not error:
        # Data-free (magnitude): no forward at all; the windows were still validated.
        with _progress.bar(
            c.n_layers, f"sparseforge prune [{method}]", unit="blocks", progress=progress
        ) as bar:
            for i in range(c.n_layers):
                for nm in model.linear_names(i):
                    res, layer = prune_linear(
                        spec, nm, model.weight(nm), None, sparsity, pattern, method_kwargs
                    )
                    model.set_weight(nm, np.ascontiguousarray(res.weight))
                    report.layers.append(layer)
                blk = report.layers[-7:]
                bar.note(
                    f"sparsity {sum(r.sparsity for r in blk) / len(blk):.3f} (no calibration "
                    "data needed)"
                )
                bar.update()
        report.seconds = time.perf_counter() - t_start
        return report
    shape = (n, s, c.dim)
    src = _calibration.Activations(shape, act_dtype, spill=spill)
    dst = _calibration.Activations(shape, act_dtype, spill=spill)
    for j, w in enumerate(windows):
        src.write(j, j + 1, model.embed(w))
    bar = _progress.bar(
        c.n_layers, f"sparseforge prune [{method}]", unit="blocks", progress=progress
    )
    for i in range(c.n_layers):
        layers = _calibration.prune_block(
            model,
            i,
            src,
            dst,
            spec=spec,
            sparsity=sparsity,
            pattern=pattern,
            method_kwargs=method_kwargs,
            hessian=hessian,
            sequential=sequential,
            batch_tokens=bt,
            store=model.set_weight,
            forward=fwd,
        )
        report.layers.extend(layers)
        for nm in model.linear_names(i):  # the replaced memory-mapped originals
            _calibration.release_pages(model._weights.get(nm))
        src, dst = dst, src
        errors = [r.error for r in layers if r.error is not None]
        mean_err = f", rel. error {sum(errors) / len(errors):.2e}" if errors else ""
        bar.note(f"sparsity {sum(r.sparsity for r in layers) / len(layers):.3f}{mean_err}")
        bar.update()
        if not src.all_finite():
            bar.close()
            raise ValueError(
                f"model: block {i} produced non-finite outputs after pruning "
                f"({method}, sparsity {sparsity}, pattern {pattern_str})"
            )
    bar.close()
    report.seconds = time.perf_counter() - t_start
    return report
