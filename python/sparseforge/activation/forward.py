"""The sparse forward: SparseForward (TEAL, CATS, ReLU, Deja Vu) and SparseModel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import kernels as _kernels
from .._base import threads_arg
from .._validate import check_choice
from ..models.llama import Hooks, LlamaModel
from ._common import F32Array, _block_of, _dense, _model_arg, _param_counts, _proj_of, _silu
from .calibration import _check_signature
from .dejavu import DejaVuPredictors
from .thresholds import Thresholds

__all__ = ["MODES", "SparseForward", "SparseModel"]


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
        check_choice(mode, "mode", MODES)
        check_choice(weight_format, "weight_format", ("dense", "bitmap"))
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
                    from ..format import BitmapTensor

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
    return sorted(__all__)
