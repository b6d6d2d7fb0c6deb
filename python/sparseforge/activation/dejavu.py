"""Deja Vu style predictors: LayerPredictor, fit_predictor, train_dejavu."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from .._base import threads_arg
from .._validate import check_array, check_bool, check_fraction, check_int, check_number
from ..models.llama import Hooks, LlamaModel
from ._common import F32Array, _block_of, _model_arg, _proj_of
from .calibration import ActivationStats, _windows, model_signature
from .thresholds import _stats_arg

__all__ = ["DejaVuPredictors", "LayerPredictor", "fit_predictor", "train_dejavu"]


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
    s_m = check_fraction(mlp_sparsity, "mlp_sparsity")
    s_h = s_m if head_sparsity is None else check_fraction(head_sparsity, "head_sparsity")
    check_bool(lookahead, "lookahead")
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


def __dir__() -> list[str]:
    return sorted(__all__)
