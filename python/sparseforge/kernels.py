"""Dense and activation-sparse CPU kernels: GEMV/GEMM, row skip, column skip, sparse SwiGLU.

Conventions
-----------
* A weight ``W`` has shape ``(out_features, in_features)`` (``torch.nn.Linear.weight``),
  row-major, dtype float32, float16 or ``ml_dtypes.bfloat16``; row slices of a larger array
  are accepted as views, other layouts raise ``ValueError`` (never a silent copy).
* Column skip (TEAL) reads the **transposed** weight ``Wt = W.T`` stored row-major, shape
  ``(in_features, out_features)``: input channel ``k`` owns the contiguous row ``Wt[k]``, so
  a zero activation skips a whole contiguous row. Build it once with
  ``np.ascontiguousarray(W.T)`` and keep only that layout for that matrix.
* Activations ``x`` are float32 ``(in_features,)``; batches ``X`` are float32
  ``(batch, in_features)``. Results are new float32 arrays, or written into ``out=``
  (float32, the result's shape, C-ordered rows, not overlapping an input) and returned.
* Compute is float32 (fp16/bf16 weights converted in registers; FMA on AVX2/AVX-512).
  Results are bitwise identical for any ``num_threads``; SIMD levels differ in the last bits.
* Threshold rule (TEAL's ``x.abs().gt(t) * x``): input ``k`` is active when
  ``|x_k| > threshold`` (or ``x_k`` is NaN, which then propagates as in the dense product).
  ``threshold`` is a number ``>= 0``; ``inf`` deactivates every finite input.
* ``num_threads``: ``None`` (or 0) = the default (``OMP_NUM_THREADS``, else all cores).

Compressed formats plug into :func:`gemv` / :func:`gemm`: an ``A`` that is not a numpy array
but has ``A._sf_gemv(x, out, num_threads)`` (resp. ``A._sf_gemm(X, out, num_threads)``) is
called with ``num_threads`` as ``None`` or a validated int ``>= 1``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from . import _core
from ._base import DTypeError, threads_arg

__all__ = [
    "SparseInputInfo",
    "SparseSwiGLU",
    "SwiGLUInfo",
    "gemm",
    "gemm_sparse_input",
    "gemv",
    "gemv_active_input",
    "gemv_rows",
    "gemv_sparse_input",
]

F32Array = npt.NDArray[np.float32]
SWIGLU_MODES = ("dense", "teal", "cats")


# ---------------------------------------------------------------------------------------
# Argument helpers


def _threads(num_threads: int | None) -> int:
    """``None`` and 0 mean the default (the core's 0); otherwise ``threads_arg``'s rules."""
    if num_threads is None:
        return 0
    if (
        isinstance(num_threads, numbers.Integral)
        and not isinstance(num_threads, bool)
        and num_threads == 0
    ):
        return 0
    return threads_arg(num_threads)


def _dispatch_threads(num_threads: int | None) -> int | None:
    """What a compressed tensor's ``_sf_gemv`` receives: ``None`` or an int >= 1."""
    n = _threads(num_threads)
    return None if n == 0 else n


def _threshold(t: Any, name: str) -> float:
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name}: expected a number >= 0, got {type(t).__name__}")
    value = float(t)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value}")
    return value


def _check_out(out: Any, **inputs: Any) -> None:
    """``out`` must not overlap an input (the kernels read inputs while writing out)."""
    if out is None or not isinstance(out, np.ndarray):
        return  # None, or the gate raises TypeError naming out
    for name, a in inputs.items():
        if isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            raise ValueError(f"out: overlaps {name}; pass a separate output array")


def _selection(sel: Any, name: str) -> Any:
    """An ndarray passes through (the gate checks it); a list/tuple/range of ints becomes an
    int64 index array (a small copy of the indices, never of weights)."""
    if isinstance(sel, np.ndarray):
        return sel
    if isinstance(sel, (list, tuple, range)):
        arr = np.asarray(sel)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            return np.ascontiguousarray(arr if arr.dtype == np.bool_ else arr.astype(np.int64))
        raise TypeError(f"{name}: expected integer indices or bools, got {arr.dtype}")
    raise TypeError(
        f"{name}: expected a bool mask or an int32/int64 index array, got {type(sel).__name__}"
    )


# ---------------------------------------------------------------------------------------
# Dense


def gemv(
    A: Any, x: F32Array, *, out: F32Array | None = None, num_threads: int | None = None
) -> Any:
    """``y = A x``.

    Parameters
    ----------
    A : ndarray (out_features, in_features), float32 | float16 | bfloat16, or a compressed
        tensor with ``_sf_gemv`` (N:M, bitmap, CSR), which then computes the product.
    x : ndarray (in_features,), float32, contiguous.
    out : ndarray (out_features,), float32, optional
        Written and returned instead of a new array.

    Returns
    -------
    ndarray (out_features,), float32: a new array, or ``out``.
    """
    if not isinstance(A, np.ndarray):
        fn = getattr(A, "_sf_gemv", None)
        if fn is None:
            raise TypeError(
                "A: expected a numpy.ndarray or a sparseforge compressed tensor (with "
                f"_sf_gemv), got {type(A).__name__}"
            )
        return fn(x, out, _dispatch_threads(num_threads))
    _check_out(out, A=A, x=x)
    return _core.kernels.gemv(A, x, out, _threads(num_threads))


def gemm(
    A: Any, X: F32Array, *, out: F32Array | None = None, num_threads: int | None = None
) -> Any:
    """``Y = X A^T`` (the linear-layer convention: row ``b`` of ``Y`` is ``A @ X[b]``).

    Parameters
    ----------
    A : ndarray (out_features, in_features), float32 | float16 | bfloat16, or a compressed
        tensor with ``_sf_gemm``.
    X : ndarray (batch, in_features), float32, C-ordered rows.
    out : ndarray (batch, out_features), float32, optional

    Returns
    -------
    ndarray (batch, out_features), float32: a new array, or ``out``.

    Notes
    -----
    Batches up to 8 run a direct register-blocked kernel that reads ``A`` once; larger
    batches the per-SIMD-level Eigen GEMM on fixed tiles of 128 rows (fp16/bf16 tiles are
    converted to float32 scratch first). Batch 1 equals :func:`gemv` bitwise.
    """
    if not isinstance(A, np.ndarray):
        fn = getattr(A, "_sf_gemm", None)
        if fn is None:
            raise TypeError(
                "A: expected a numpy.ndarray or a sparseforge compressed tensor (with "
                f"_sf_gemm), got {type(A).__name__}"
            )
        return fn(X, out, _dispatch_threads(num_threads))
    _check_out(out, A=A, X=X)
    return _core.kernels.gemm(A, X, out, _threads(num_threads))


def gemv_rows(
    W: npt.NDArray[Any],
    x: F32Array,
    rows: Any,
    *,
    out: F32Array | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """Output-row skip (Deja Vu / CATS): ``y[r] = W[r] @ x`` for the selected rows, 0 elsewhere.

    Reads only the selected rows of ``W``. The result has full length, so it feeds a
    column-skip projection (:func:`gemv_sparse_input`) directly.

    Parameters
    ----------
    W : ndarray (out_features, in_features), float32 | float16 | bfloat16.
    x : ndarray (in_features,), float32.
    rows : bool ndarray (out_features,), or int32/int64 indices (ndarray, list or range)
        A set: order and duplicates do not matter, an empty list selects nothing; an
        index outside ``[0, out_features)`` raises ``ValueError``.
    out : ndarray (out_features,), float32, optional

    Returns
    -------
    ndarray (out_features,), float32: a new array, or ``out``.
    """
    sel = _selection(rows, "rows")
    _check_out(out, W=W, x=x, rows=sel)
    y, _ = _core.kernels.gemv_rows(W, x, sel, out, _threads(num_threads))
    return y


# ---------------------------------------------------------------------------------------
# Column skip


@dataclass(frozen=True)
class SparseInputInfo:
    """What a sparse-input call read.

    Attributes
    ----------
    active : int
        Input channels whose row of ``Wt`` was read (for a batch: the union of the tokens'
        masks).
    in_features : int
    dense_fallback : bool
        :func:`gemm_sparse_input` ran the dense path (predicted gain below ``min_gain``).
    """

    active: int
    in_features: int
    dense_fallback: bool = False

    @property
    def density(self) -> float:
        """``active / in_features``: the fraction of the weight bytes a sparse pass reads."""
        return self.active / self.in_features

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    @property
    def predicted_gain(self) -> float:
        """``in_features / active`` (the byte model's ideal speedup; inf if nothing active)."""
        return math.inf if self.active == 0 else self.in_features / self.active


def gemv_sparse_input(
    Wt: npt.NDArray[Any],
    x: F32Array,
    threshold: float,
    *,
    out: F32Array | None = None,
    num_threads: int | None = None,
    return_info: bool = False,
) -> Any:
    """TEAL column skip: ``y = Wt.T @ where(|x| > threshold, x, 0)``, reading only active rows.

    Parameters
    ----------
    Wt : ndarray (in_features, out_features), float32 | float16 | bfloat16, or a
        ``BitmapTensor`` of that matrix
        The transposed weight, ``np.ascontiguousarray(W.T)``. A pruned ``W`` (2:4 along
        ``in_features``, or unstructured) stored as ``BitmapTensor.from_dense(W.T)`` combines
        weight and activation sparsity: only the active rows' bits and stored values are
        read (docs/kernels.md).
    x : ndarray (in_features,), float32.
    threshold : float >= 0
        ``|x_k| > threshold`` is active (NaN inputs too). 0 skips exact zeros only.
    out : ndarray (out_features,), float32, optional
    return_info : bool
        Also return a :class:`SparseInputInfo`.

    Returns
    -------
    y : ndarray (out_features,), float32 (a new array, or ``out``)
    info : SparseInputInfo, if ``return_info``

    Notes
    -----
    The threshold test and compaction are an O(in_features) prologue inside the call; each
    thread owns a slice of ``y`` and streams the active rows over it (no atomics). Active
    rows are accumulated in increasing ``k``, so the result equals the dense product of the
    masked ``x`` up to float32 rounding order.
    """
    t = _threshold(threshold, "threshold")
    if not isinstance(Wt, np.ndarray) and hasattr(Wt, "_sf_gemv_sparse_input"):
        y, active = Wt._sf_gemv_sparse_input(x, t, out, _dispatch_threads(num_threads))
        if return_info:
            return y, SparseInputInfo(active, int(Wt.shape[0]))
        return y
    _check_out(out, Wt=Wt, x=x)
    y, active = _core.kernels.gemv_sparse_input(Wt, x, t, out, _threads(num_threads))
    if return_info:
        return y, SparseInputInfo(active, int(Wt.shape[0]))
    return y


def gemv_active_input(
    Wt: npt.NDArray[Any],
    x: F32Array,
    active: Any,
    *,
    out: F32Array | None = None,
    num_threads: int | None = None,
) -> F32Array:
    """Column skip over an explicit active set (Deja Vu style predicted inputs).

    ``y = Wt.T @ x_S`` where ``x_S`` keeps ``x`` on the set ``active`` and is 0 elsewhere,
    whatever ``x``'s values there.

    Parameters
    ----------
    Wt : ndarray (in_features, out_features), float32 | float16 | bfloat16.
    x : ndarray (in_features,), float32.
    active : bool ndarray (in_features,), or int32/int64 indices (ndarray, list or range)
        A set (order and duplicates do not matter).
    out : ndarray (out_features,), float32, optional

    Returns
    -------
    ndarray (out_features,), float32: a new array, or ``out``.
    """
    sel = _selection(active, "active")
    _check_out(out, Wt=Wt, x=x, active=sel)
    y, _ = _core.kernels.gemv_active_input(Wt, x, sel, out, _threads(num_threads))
    return y


def gemm_sparse_input(
    Wt: npt.NDArray[Any],
    X: F32Array,
    threshold: float,
    *,
    out: F32Array | None = None,
    min_gain: float = 1.1,
    num_threads: int | None = None,
    return_info: bool = False,
) -> Any:
    """Batched column skip: ``Y[b] = Wt.T @ where(|X[b]| > threshold, X[b], 0)`` per token.

    The rows of ``Wt`` are read once for the whole batch: those active for at least one
    token (the union of the masks, density ``1 - s**B`` for independent masks). When the
    predicted gain ``in_features / |union|`` is below ``min_gain`` the dense path runs
    instead (every row; the Eigen GEMM for batches above 8).

    Parameters
    ----------
    Wt : ndarray (in_features, out_features), float32 | float16 | bfloat16.
    X : ndarray (batch, in_features), float32.
    threshold : float >= 0
    out : ndarray (batch, out_features), float32, optional
    min_gain : float >= 1
        1 never falls back; ``math.inf`` always runs dense.
    return_info : bool
        Also return a :class:`SparseInputInfo` (``dense_fallback`` says which path ran).

    Returns
    -------
    Y : ndarray (batch, out_features), float32 (a new array, or ``out``)
    info : SparseInputInfo, if ``return_info``
    """
    t = _threshold(threshold, "threshold")
    if isinstance(min_gain, bool) or not isinstance(min_gain, numbers.Real):
        raise TypeError(f"min_gain: expected a number >= 1, got {type(min_gain).__name__}")
    gain = float(min_gain)
    if not gain >= 1.0:
        raise ValueError(f"min_gain: expected a number >= 1 (inf: always dense), got {gain}")
    _check_out(out, Wt=Wt, X=X)
    Y, active, dense = _core.kernels.gemm_sparse_input(Wt, X, t, gain, out, _threads(num_threads))
    if return_info:
        return Y, SparseInputInfo(active, int(Wt.shape[0]), bool(dense))
    return Y


# ---------------------------------------------------------------------------------------
# Sparse SwiGLU


@dataclass(frozen=True)
class SwiGLUInfo:
    """What one :meth:`SparseSwiGLU.block` call read.

    Attributes
    ----------
    x_active : int
        Inputs whose rows of gate/up were read (teal: ``|x| > t_x``; cats, dense: all).
    in_features : int
    h_active : int
        Hidden units whose rows of down (and, in cats, of up) were read.
    hidden_features : int
    """

    x_active: int
    in_features: int
    h_active: int
    hidden_features: int

    @property
    def x_sparsity(self) -> float:
        return 1.0 - self.x_active / self.in_features

    @property
    def h_sparsity(self) -> float:
        return 1.0 - self.h_active / self.hidden_features


def _weight(W: Any, name: str) -> npt.NDArray[Any]:
    if not isinstance(W, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(W).__name__}")
    if W.ndim != 2 or W.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D array, got shape {W.shape}")
    return W


_WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))


def _check_layout(a: npt.NDArray[Any], name: str) -> None:
    """What the numpy gate will require, checked at construction with the layout's name."""
    if a.dtype not in _WEIGHT_DTYPES:
        raise DTypeError(f"{name}: expected dtype float32, float16 or bfloat16, got {a.dtype}")
    rows, cols = a.shape
    if (cols > 1 and a.strides[1] != a.itemsize) or (
        rows > 1 and (a.strides[0] < cols * a.itemsize or a.strides[0] % a.itemsize)
    ):
        raise ValueError(
            f"{name}: expected C-ordered rows (unit stride along the last axis), got strides "
            f"{a.strides}; pass np.ascontiguousarray({name})"
        )


class SparseSwiGLU:
    """A SwiGLU FFN block ``y = W_down @ (silu(W_gate @ x) * (W_up @ x))`` with activation
    sparsity, holding each weight in the layout its mode reads.

    Parameters
    ----------
    W_gate, W_up : ndarray (hidden, in_features), float32 | float16 | bfloat16
    W_down : ndarray (out_features, hidden), same dtypes (each matrix may have its own)
        ``torch.nn.Linear`` weights, e.g. a Llama MLP's gate_proj, up_proj, down_proj.
    mode : {"teal", "cats", "dense"}
        * ``"teal"`` (TEAL): ``x`` thresholded by ``|x| > t_x`` for gate and up (column skip
          over transposed gate/up), then ``h = silu(g) * u`` thresholded by ``|h| > t_h``
          for down (column skip over transposed down). Ideal speedup by bytes
          ``1 / (1 - s)`` at uniform sparsity ``s``.
        * ``"cats"`` (CATS, gate-first): ``a = silu(W_gate @ x)`` dense; ``|a| > t_h`` picks
          the rows of ``W_up`` (row skip) and of ``W_down.T`` (column skip); ideal
          ``3 / (1 + 2 (1 - s))``: 1.5x at s = 0.5.
        * ``"dense"``: three dense GEMVs, the baseline.

    Memory
    ------
    ``teal`` stores ``W_gate.T``, ``W_up.T`` and ``W_down.T`` as new C-contiguous arrays
    (the FFN's size again while the caller also keeps the originals: drop them, or load the
    transposed layouts directly with :meth:`from_layouts`). ``cats`` references ``W_gate``
    and ``W_up`` (no copy) and stores ``W_down.T``. ``dense`` references all three.
    :attr:`nbytes` is the bytes of the held layouts, :attr:`copied_nbytes` those this
    object allocated.
    """

    def __init__(
        self,
        W_gate: npt.NDArray[Any],
        W_up: npt.NDArray[Any],
        W_down: npt.NDArray[Any],
        mode: str = "teal",
    ) -> None:
        mode = self._check_mode(mode)
        g, u, d = _weight(W_gate, "W_gate"), _weight(W_up, "W_up"), _weight(W_down, "W_down")
        hidden = g.shape[0]
        if u.shape != g.shape:
            raise ValueError(f"W_up: expected shape {g.shape} (W_gate's), got {u.shape}")
        if d.shape[1] != hidden:
            raise ValueError(
                f"W_down: expected shape (out_features, {hidden}) (hidden = W_gate's rows), "
                f"got {d.shape}"
            )
        if mode == "teal":
            layers = (
                np.ascontiguousarray(g.T),
                np.ascontiguousarray(u.T),
                np.ascontiguousarray(d.T),
            )
            copied = sum(a.nbytes for a in layers)
        elif mode == "cats":
            layers = (g, u, np.ascontiguousarray(d.T))
            copied = layers[2].nbytes
        else:
            layers = (g, u, d)
            copied = 0
        self._init(mode, layers, copied)

    @classmethod
    def from_layouts(
        cls,
        gate: npt.NDArray[Any],
        up: npt.NDArray[Any],
        down: npt.NDArray[Any],
        *,
        mode: str,
    ) -> SparseSwiGLU:
        """Wrap matrices already in the mode's layouts, without copying.

        ``teal``: gate, up ``(in, hidden)``, down ``(hidden, out)`` (all transposed);
        ``cats``: gate, up ``(hidden, in)``, down ``(hidden, out)``; ``dense``: gate, up
        ``(hidden, in)``, down ``(out, hidden)``.
        """
        mode = cls._check_mode(mode)
        layers = (_weight(gate, "gate"), _weight(up, "up"), _weight(down, "down"))
        obj = cls.__new__(cls)
        obj._init(mode, layers, 0)
        return obj

    @staticmethod
    def _check_mode(mode: Any) -> str:
        if not isinstance(mode, str) or mode not in SWIGLU_MODES:
            raise ValueError(f"mode: expected one of {SWIGLU_MODES}, got {mode!r}")
        return mode

    def _init(self, mode: str, layers: tuple[npt.NDArray[Any], ...], copied: int) -> None:
        for a, name in zip(layers, ("gate", "up", "down"), strict=True):
            _check_layout(a, name)
        gate, up, down = layers
        # (rows, cols) each layout must have, from gate's shape: teal reads transposes.
        if mode == "teal":
            n_in, hidden = gate.shape
            n_out = down.shape[1]
            want = {"up": (n_in, hidden), "down": (hidden, n_out)}
        else:
            hidden, n_in = gate.shape
            n_out = down.shape[1] if mode == "cats" else down.shape[0]
            want = {
                "up": (hidden, n_in),
                "down": (hidden, n_out) if mode == "cats" else (n_out, hidden),
            }
        for a, name in ((up, "up"), (down, "down")):
            if a.shape != want[name]:
                raise ValueError(
                    f"{name}: expected shape {want[name]} in mode {mode!r} (gate is "
                    f"{gate.shape}), got {a.shape}"
                )
        self._mode = mode
        self._gate, self._up, self._down = gate, up, down
        self._copied = int(copied)
        self._in, self._hidden, self._out = int(n_in), int(hidden), int(n_out)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def hidden_features(self) -> int:
        return self._hidden

    @property
    def out_features(self) -> int:
        return self._out

    @property
    def layouts(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
        """(gate, up, down) as held (read-only use: the kernels read them in place)."""
        return self._gate, self._up, self._down

    @property
    def nbytes(self) -> int:
        return int(self._gate.nbytes + self._up.nbytes + self._down.nbytes)

    @property
    def copied_nbytes(self) -> int:
        return self._copied

    def block(
        self,
        x: F32Array,
        *,
        t_x: float = 0.0,
        t_h: float = 0.0,
        out: F32Array | None = None,
        num_threads: int | None = None,
        return_info: bool = False,
    ) -> Any:
        """Run the FFN block on one token.

        Parameters
        ----------
        x : ndarray (in_features,), float32
        t_x : float >= 0
            teal only: inputs with ``|x| > t_x`` are read (0: skip exact zeros).
        t_h : float >= 0
            teal and cats: hidden units with ``|h| > t_h`` (teal) or ``|silu(gate x)| > t_h``
            (cats) are read.
        out : ndarray (out_features,), float32, optional
        return_info : bool
            Also return a :class:`SwiGLUInfo` with the achieved sparsities.

        Returns
        -------
        y : ndarray (out_features,), float32 (a new array, or ``out``)
        info : SwiGLUInfo, if ``return_info``

        Raises
        ------
        ValueError
            A threshold that the mode does not use is not 0 (never ignored silently).
        """
        tx = _threshold(t_x, "t_x")
        th = _threshold(t_h, "t_h")
        if tx != 0.0 and self._mode != "teal":
            raise ValueError(f"t_x: thresholds x only in mode 'teal', got {tx} in '{self._mode}'")
        if th != 0.0 and self._mode == "dense":
            raise ValueError(f"t_h: mode 'dense' takes no threshold, got {th}")
        _check_out(out, x=x, gate=self._gate, up=self._up, down=self._down)
        y, xa, ha = _core.kernels.swiglu(
            self._mode, self._gate, self._up, self._down, x, tx, th, out, _threads(num_threads)
        )
        if return_info:
            return y, SwiGLUInfo(int(xa), self._in, int(ha), self._hidden)
        return y

    __call__ = block

    def __repr__(self) -> str:
        return (
            f"SparseSwiGLU(mode={self._mode!r}, in_features={self._in}, "
            f"hidden_features={self._hidden}, out_features={self._out}, "
            f"dtypes=({self._gate.dtype}, {self._up.dtype}, {self._down.dtype}))"
        )


def _read_probe(buf: F32Array, num_threads: int | None = None) -> float:
    """Sum of a float32 buffer read with the widest SIMD loads: the benchmarks' same-run
    read-bandwidth probe (private)."""
    return float(_core.kernels._read_probe(buf, _threads(num_threads)))


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
