"""Unstructured sparse weights: :class:`BitmapTensor` and :class:`CSRTensor`.

Both compress a weight ``W`` of shape ``(out_features, in_features)`` whose zeros are
scattered anywhere (magnitude, Wanda or SparseGPT at any sparsity) and run GEMV/GEMM on it
(``sf.kernels.gemv(A, x)`` dispatches to them). Values are stored as float32, float16 or
``ml_dtypes.bfloat16`` (W's dtype); compute is float32.

* **BitmapTensor**: one bit per weight (``in_features / 8`` bytes per row) plus the kept
  values packed row by row. Bytes: ``(1 - s) N K b + N K / 8``; at 50 % sparsity bf16 it is
  56 % of dense. Its GEMV expands 16 values per instruction (AVX-512) or 8 (AVX2); the
  speed-ups measured against the dense GEMV are in docs/kernels.md.
* **CSRTensor**: int64 ``indptr`` and int32 column ``indices`` per value. Bytes:
  ``(1 - s) N K (b + 4) + 8 N``; its GEMV gathers ``x`` and only beats dense at high
  sparsity (see docs/kernels.md). Interoperates with ``scipy.sparse`` (optional).

What is stored: ``from_dense(W)`` stores ``W != 0`` (so ``-0.0`` is not stored), and
``from_dense(W, mask=m)`` stores exactly the positions where ``m`` is True, zeros included.
Stored values must be finite: NaN/Inf raise ``ValueError``. A product uses only stored
weights: ``y[r] = sum of W[r, c] * x[c] over stored (r, c)``, equal to ``to_dense() @ x``
when ``x`` is finite (an Inf in ``x`` reaches only rows that store its column).

The layouts are specified in docs/formats.md ("Bitmap", "CSR"). Tensors are immutable:
component properties are read-only views of the tensor's own memory, and every
constructor copies its inputs and validates them.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import ml_dtypes
import numpy as np

from . import _core
from ._base import DTypeError, threads_arg

__all__ = ["BitmapTensor", "CSRTensor"]

_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

_T = TypeVar("_T", bound="_UnstructuredTensor")


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, tuple | list) or len(shape) != 2:
        raise TypeError(f"shape: expected a (rows, cols) tuple, got {shape!r}")
    out = []
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"shape: expected two ints, got {shape!r}")
        if v < 1:
            raise ValueError(f"shape: expected rows >= 1 and cols >= 1, got {tuple(shape)!r}")
        out.append(int(v))
    return out[0], out[1]


def _ndarray(a: Any, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    return a


def _index_array(arr: Any, name: str, dtype: type[np.integer[Any]]) -> np.ndarray:
    """An index array as ``dtype``: other integer dtypes are converted after a range check."""
    a = _ndarray(arr, name)
    target = np.dtype(dtype)
    if a.dtype == target:
        return a
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name}: expected an integer dtype ({target.name}), got {a.dtype}")
    info = np.iinfo(target)
    if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
        raise ValueError(
            f"{name}: values outside the {target.name} range "
            f"[{info.min}, {info.max}]: min {int(a.min())}, max {int(a.max())}"
        )
    return a.astype(target)


def _parse_meta(meta: Mapping[str, str], values: np.ndarray) -> tuple[int, int]:
    missing = {"shape", "dtype"} - set(meta)
    if missing:
        raise ValueError(f"meta: missing keys {sorted(missing)}, got {sorted(meta)}")
    try:
        rows_text, cols_text = str(meta["shape"]).split(",")
        shape = (int(rows_text), int(cols_text))
    except ValueError:
        raise ValueError(f"meta: shape must be 'rows,cols', got {meta['shape']!r}") from None
    dtype = _DTYPES.get(str(meta["dtype"]))
    if dtype is None:
        raise ValueError(f"meta: dtype must be one of {sorted(_DTYPES)}, got {meta['dtype']!r}")
    if values.dtype != dtype:
        raise ValueError(f"values: meta says dtype {meta['dtype']}, the array has {values.dtype}")
    return _check_shape(shape)


def _require(arrays: Mapping[str, np.ndarray], names: tuple[str, ...]) -> None:
    missing = set(names) - set(arrays)
    if missing:
        raise ValueError(f"arrays: missing {sorted(missing)}, got {sorted(arrays)}")


class _UnstructuredTensor:
    """What BitmapTensor and CSRTensor share (not public)."""

    __slots__ = ("_m",)
    _m: Any  # the compiled _core.format.BitmapMatrix / _core.format.CSRMatrix that owns the data
    _sf_kind: ClassVar[str]
    _components: ClassVar[tuple[str, ...]]

    def __init__(self, matrix: Any) -> None:
        raise TypeError(
            f"{type(self).__name__}: use {type(self).__name__}.from_dense() or .from_components()"
        )

    @classmethod
    def _wrap(cls: type[_T], matrix: Any) -> _T:
        obj = object.__new__(cls)
        obj._m = matrix
        return obj

    # --- properties ---------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)`` of the dense weight."""
        rows, cols = self._m.shape
        return int(rows), int(cols)

    @property
    def dtype(self) -> np.dtype[Any]:
        """Storage dtype of the values: float32, float16 or bfloat16."""
        dt: np.dtype[Any] = np.dtype(self._m.dtype)
        return dt

    @property
    def nnz(self) -> int:
        """Number of stored weights."""
        return int(self._m.nnz)

    @property
    def density(self) -> float:
        """``nnz / (rows * cols)``: the fraction stored (1 - sparsity)."""
        rows, cols = self.shape
        return self.nnz / (rows * cols)

    @property
    def nbytes(self) -> int:
        """Bytes the representation holds: every component array, plus 64 bytes of padding
        after the values (and 64 after CSR's indices) that lets vector loads read past
        the end."""
        return int(self._m.nbytes)

    @property
    def values(self) -> np.ndarray:
        """``(nnz,)`` stored values in row-major order, ``dtype``. A read-only view."""
        return self._m.values  # type: ignore[no-any-return]

    # --- conversion and checks ------------------------------------------------------------

    def to_dense(self, *, num_threads: int | None = None) -> np.ndarray:
        """The dense weight: a new ``(rows, cols)`` array of ``dtype``, +0.0 where nothing
        is stored."""
        return self._m.to_dense(threads_arg(num_threads))  # type: ignore[no-any-return]

    def validate(self) -> None:
        """Check every invariant of the layout (sizes, offsets, sorted/in-range indices,
        finite values); raises ``ValueError`` naming the broken component. Tensors are
        validated when built, so this passes unless memory was corrupted."""
        self._m.validate()

    # --- protocols other code relies on (container, sf.kernels) ---------------------------

    def _sf_state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        """String metadata and the canonical component arrays (read-only views, no padding)."""
        rows, cols = self.shape
        meta = {"shape": f"{rows},{cols}", "dtype": self.dtype.name}
        return meta, {name: getattr(self._m, name) for name in self._components}

    @classmethod
    def _sf_from_state(
        cls: type[_T], meta: Mapping[str, str], arrays: Mapping[str, np.ndarray]
    ) -> _T:
        """Rebuild from :meth:`_sf_state`'s output, validating everything."""
        _require(arrays, cls._components)
        shape = _parse_meta(meta, _ndarray(arrays["values"], "values"))
        return cls.from_components(shape, **{k: arrays[k] for k in cls._components})  # type: ignore[attr-defined, no-any-return]

    def _sf_gemv(
        self, x: np.ndarray, out: np.ndarray | None = None, num_threads: int | None = None
    ) -> np.ndarray:
        """``y = A x``: x ``(cols,)`` float32; returns ``out`` or a new ``(rows,)`` float32."""
        return self._m.gemv(x, out, threads_arg(num_threads))  # type: ignore[no-any-return]

    def _sf_gemm(
        self, X: np.ndarray, out: np.ndarray | None = None, num_threads: int | None = None
    ) -> np.ndarray:
        """``Y = X A^T``: X ``(batch, cols)`` float32; returns ``out`` or a new
        ``(batch, rows)`` float32."""
        return self._m.gemm(X, out, threads_arg(num_threads))  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[Any, ...]:
        meta, arrays = self._sf_state()
        return (type(self)._sf_from_state, (meta, {k: np.array(v) for k, v in arrays.items()}))

    def __repr__(self) -> str:
        rows, cols = self.shape
        return (
            f"{type(self).__name__}(shape=({rows}, {cols}), dtype={self.dtype.name}, "
            f"nnz={self.nnz}, density={self.density:.4g})"
        )


class BitmapTensor(_UnstructuredTensor):
    """A weight stored as a bitmap plus packed values.

    Layout (docs/formats.md, "Bitmap"): ``bitmap`` uint8 ``(rows, ceil(cols / 8))``, bit
    ``c % 8`` of byte ``c // 8`` of row ``r`` (least significant first) set iff ``W[r, c]``
    is stored, bits past ``cols`` zero (``np.packbits(mask, axis=1, bitorder="little")``);
    ``values`` the stored values row by row, columns ascending; ``row_offsets`` int64
    ``(rows + 1,)``, row ``r``'s values are ``values[row_offsets[r]:row_offsets[r + 1]]``.
    """

    __slots__ = ()
    _sf_kind: ClassVar[str] = "bitmap"
    _components: ClassVar[tuple[str, ...]] = ("bitmap", "values", "row_offsets")

    @classmethod
    def from_dense(
        cls, W: np.ndarray, *, mask: np.ndarray | None = None, num_threads: int | None = None
    ) -> BitmapTensor:
        """Compress a dense weight.

        Parameters
        ----------
        W : ndarray, shape (rows, cols), float32 | float16 | bfloat16
            Row-major (row slices accepted). Not modified. Must be finite where stored.
        mask : ndarray of bool, W's shape, optional
            Store exactly where True (zeros included). Default: store ``W != 0``.
        num_threads : int, optional

        Returns
        -------
        BitmapTensor
            With W's dtype; owns a copy of the data.
        """
        return cls._wrap(_core.format.bitmap_from_dense(W, mask, threads_arg(num_threads)))

    @classmethod
    def from_components(
        cls,
        shape: tuple[int, int],
        *,
        bitmap: np.ndarray,
        values: np.ndarray,
        row_offsets: np.ndarray | None = None,
    ) -> BitmapTensor:
        """Build from raw arrays (copied), validating them.

        Parameters
        ----------
        shape : (rows, cols)
        bitmap : ndarray of uint8, shape (rows, ceil(cols / 8))
        values : ndarray, shape (nnz,), float32 | float16 | bfloat16
            nnz = the number of set bits; finite.
        row_offsets : ndarray of int, shape (rows + 1,), optional
            Checked against the bitmap's popcounts if given, else computed. Other integer
            dtypes are converted to int64.

        Raises
        ------
        ValueError
            If any component is inconsistent (sizes, popcounts, bits past ``cols``,
            non-finite values); the message names it.
        """
        rows, cols = _check_shape(shape)
        offsets = (
            None if row_offsets is None else _index_array(row_offsets, "row_offsets", np.int64)
        )
        return cls._wrap(_core.format.bitmap_from_components(rows, cols, bitmap, values, offsets))

    def _sf_gemv_sparse_input(
        self, x: np.ndarray, threshold: float, out: np.ndarray | None, num_threads: int | None
    ) -> tuple[np.ndarray, int]:
        """Column skip with this tensor as ``Wt`` (in_features, out_features); see
        :func:`sparseforge.kernels.gemv_sparse_input`."""
        y, active = self._m.gemv_sparse_input(x, threshold, out, threads_arg(num_threads))
        return y, int(active)

    @property
    def bitmap(self) -> np.ndarray:
        """``(rows, ceil(cols / 8))`` uint8, LSB-first bits. A read-only view."""
        return self._m.bitmap  # type: ignore[no-any-return]

    @property
    def row_offsets(self) -> np.ndarray:
        """``(rows + 1,)`` int64 offsets of each row's values. A read-only view."""
        return self._m.row_offsets  # type: ignore[no-any-return]


class CSRTensor(_UnstructuredTensor):
    """A weight stored in compressed sparse row form.

    Layout (docs/formats.md, "CSR"): ``indptr`` int64 ``(rows + 1,)``; ``indices`` int32
    ``(nnz,)``, row ``r``'s columns ``indices[indptr[r]:indptr[r + 1]]`` strictly increasing
    and in ``[0, cols)``; ``values`` ``(nnz,)`` in the same order.
    """

    __slots__ = ()
    _sf_kind: ClassVar[str] = "csr"
    _components: ClassVar[tuple[str, ...]] = ("indptr", "indices", "values")

    @classmethod
    def from_dense(
        cls, W: np.ndarray, *, mask: np.ndarray | None = None, num_threads: int | None = None
    ) -> CSRTensor:
        """Compress a dense weight; parameters as :meth:`BitmapTensor.from_dense`.
        ``cols`` must fit int32 column indices."""
        return cls._wrap(_core.format.csr_from_dense(W, mask, threads_arg(num_threads)))

    @classmethod
    def from_components(
        cls,
        shape: tuple[int, int],
        *,
        indptr: np.ndarray,
        indices: np.ndarray,
        values: np.ndarray,
    ) -> CSRTensor:
        """Build from raw arrays (copied), validating them.

        Parameters
        ----------
        shape : (rows, cols)
        indptr : ndarray of int, shape (rows + 1,)
            ``indptr[0] == 0``, non-decreasing, ``indptr[-1] == nnz``. Converted to int64.
        indices : ndarray of int, shape (nnz,)
            Column of each value, sorted and unique within a row, in ``[0, cols)``.
            Converted to int32 (after a range check).
        values : ndarray, shape (nnz,), float32 | float16 | bfloat16, finite

        Raises
        ------
        ValueError
            Naming the broken component (indptr non-monotone, index out of range, unsorted
            or duplicate indices, length mismatch, non-finite value).
        """
        rows, cols = _check_shape(shape)
        return cls._wrap(
            _core.format.csr_from_components(
                rows,
                cols,
                _index_array(indptr, "indptr", np.int64),
                _index_array(indices, "indices", np.int32),
                values,
            )
        )

    @property
    def indptr(self) -> np.ndarray:
        """``(rows + 1,)`` int64 row pointers. A read-only view."""
        return self._m.indptr  # type: ignore[no-any-return]

    @property
    def indices(self) -> np.ndarray:
        """``(nnz,)`` int32 column indices. A read-only view."""
        return self._m.indices  # type: ignore[no-any-return]

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.csr_array`` with the same stored entries (copies). scipy has no
        float16/bfloat16 sparse arrays, so those values are widened to float32 (exactly).
        Needs scipy (an optional dependency)."""
        sparse = _scipy_sparse()
        values = self.values
        data = values.astype(np.float32) if values.dtype != np.float32 else values.copy()
        return sparse.csr_array(
            (data, self.indices.copy(), self.indptr.copy()), shape=self.shape, copy=False
        )

    @classmethod
    def from_scipy(cls, S: Any, *, dtype: Any = None) -> CSRTensor:
        """From any ``scipy.sparse`` array or matrix (not modified).

        Entries are taken as scipy stores them, explicit zeros included; duplicates are
        summed and columns sorted (on a copy). ``dtype`` (float32, float16 or
        ``ml_dtypes.bfloat16``) converts the values with round-to-nearest-even; without it
        S's values must already be float32 or float16.
        """
        sparse = _scipy_sparse()
        if not sparse.issparse(S):
            raise TypeError(f"S: expected a scipy.sparse array or matrix, got {type(S).__name__}")
        A = sparse.csr_array(S, copy=True)
        A.sum_duplicates()
        data = np.asarray(A.data)
        if dtype is None:
            if data.dtype not in (np.float32, np.float16):
                raise DTypeError(
                    f"S: values have dtype {data.dtype}; pass dtype=np.float32, np.float16 or "
                    "ml_dtypes.bfloat16 to convert"
                )
            target = data.dtype
        else:
            target = np.dtype(dtype)
            if target not in _DTYPES.values():
                raise DTypeError(
                    f"dtype: expected float32, float16 or bfloat16 (ml_dtypes), got {target}"
                )
        rows, cols = A.shape
        return cls.from_components(
            (int(rows), int(cols)),
            indptr=np.asarray(A.indptr),
            indices=np.asarray(A.indices),
            values=np.ascontiguousarray(data.astype(target, copy=False)),
        )


def _scipy_sparse() -> Any:
    try:
        return importlib.import_module("scipy.sparse")
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "scipy is needed for CSRTensor.to_scipy/from_scipy: pip install scipy"
        ) from err
