"""Compressed weight formats: N:M (:class:`NMTensor`), bitmap (:class:`BitmapTensor`) and
CSR (:class:`CSRTensor`).

Every format holds a weight ``W`` of shape ``(out_features, in_features)`` compressed, knows
its real size (``nbytes``), converts back (``to_dense``), checks itself (``validate``), runs
the kernels of :mod:`sparseforge.kernels` (``sf.kernels.gemv(t, x)``) and is saved by
:func:`sparseforge.save`. Layouts are specified in docs/formats.md.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import _core, _cutlass
from ._base import threads_arg
from ._unstructured import BitmapTensor, CSRTensor
from .prune import parse_pattern

__all__ = [
    "BitmapTensor",
    "CSRTensor",
    "NMTensor",
    "from_torch_semi_structured",
    "to_torch_semi_structured",
]


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else np.dtype(dtype).name


def _parse_shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"shape: expected 'rows,cols', got {text!r}") from None
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape: expected positive sizes, got {text!r}")
    return rows, cols


class NMTensor:
    """A weight compressed to *n kept of every m* consecutive weights along in_features.

    Stored in the execution layout the kernels read (8 rows interleaved, 2-bit codes for
    m <= 4, 4-bit otherwise; docs/formats.md). The canonical layout — ``values`` of shape
    ``(rows, cols // m * n)`` and packed per-value index ``codes`` — is produced on demand
    and is what files and PyTorch conversion use. For 2:4 the codes are PyTorch's
    semi-structured nibbles.

    Build with :meth:`from_dense` or :meth:`from_components`; the constructor is private.
    """

    _sf_kind: ClassVar[str] = "nm"

    __slots__ = ("_m",)

    def __init__(self, matrix: _core.format.NMMatrix) -> None:
        if not isinstance(matrix, _core.format.NMMatrix):
            raise TypeError("NMTensor: build it with NMTensor.from_dense or from_components")
        self._m = matrix

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_dense(
        cls,
        W: np.ndarray,
        n: int = 2,
        m: int = 4,
        *,
        prune: str | None = None,
        num_threads: int | None = None,
    ) -> NMTensor:
        """Compress ``W`` (float32, float16 or bfloat16; finite; in_features % m == 0).

        By default every group of m must already hold at most n non-zeros (a ValueError
        names the first group that does not). ``prune="magnitude"`` keeps the n largest
        magnitudes of each group instead (ties: the lower index is pruned, as in
        :func:`sparseforge.prune.magnitude`). ``n``/``m`` may also be given as ``"2:4"`` in
        ``n``.
        """
        if isinstance(n, str):
            pat = parse_pattern(n)
            n, m = pat.n, pat.m
        if prune not in (None, "magnitude"):
            raise ValueError(f"prune: expected None or 'magnitude', got {prune!r}")
        _check_nm(n, m)
        return cls(
            _core.format.NMMatrix.from_dense(
                W, n, m, prune == "magnitude", threads_arg(num_threads)
            )
        )

    @classmethod
    def from_components(
        cls,
        values: np.ndarray,
        codes: np.ndarray,
        *,
        shape: tuple[int, int],
        n: int,
        m: int,
        num_threads: int | None = None,
    ) -> NMTensor:
        """From the canonical layout; every code is checked (ValueError naming ``codes``)."""
        _check_nm(n, m)
        rows, cols = (int(v) for v in shape)
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[0] != rows:
            raise ValueError(
                f"values: expected a 2-D array with {rows} rows for shape {tuple(shape)}, got "
                f"{getattr(values, 'shape', type(values).__name__)}"
            )
        return cls(
            _core.format.NMMatrix.from_canonical(
                values, codes, cols, n, m, threads_arg(num_threads)
            )
        )

    # -- properties -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self._m.rows, self._m.cols)

    @property
    def n(self) -> int:
        return self._m.n

    @property
    def m(self) -> int:
        return self._m.m

    @property
    def pattern(self) -> str:
        return f"{self._m.n}:{self._m.m}"

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._m.dtype

    @property
    def nbytes(self) -> int:
        """Bytes this tensor holds (execution layout, the last 8-row block padded)."""
        return self._m.nbytes

    @property
    def canonical_nbytes(self) -> int:
        """Bytes of the canonical layout (what a file stores)."""
        return self._m.canonical_nbytes

    @property
    def values(self) -> np.ndarray:
        """Canonical kept values, ``(rows, cols // m * n)`` (a new array)."""
        return self._m.to_canonical(0)[0]

    @property
    def codes(self) -> np.ndarray:
        """Canonical packed in-group indices, uint8 ``(rows, code bytes per row)`` (new)."""
        return self._m.to_canonical(0)[1]

    def components(self, num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(values, codes)`` of the canonical layout in one pass."""
        values, codes = self._m.to_canonical(threads_arg(num_threads))
        return values, codes

    # -- conversion and checks ----------------------------------------------------------
    def to_dense(self, num_threads: int | None = None) -> np.ndarray:
        """The dense ``(rows, cols)`` matrix in the tensor's dtype (zeros where pruned)."""
        return self._m.to_dense(threads_arg(num_threads))

    def validate(self) -> None:
        """Raise ValueError if any code is out of its group or not increasing."""
        self._m.validate()

    def __repr__(self) -> str:
        r, c = self.shape
        return (
            f"NMTensor(shape=({r}, {c}), pattern={self.pattern}, dtype={_dtype_name(self.dtype)}, "
            f"nbytes={self.nbytes})"
        )

    # -- protocols: sparseforge.save/load and sparseforge.kernels --------------------------
    def _sf_state(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        values, codes = self._m.to_canonical(0)
        r, c = self.shape
        meta = {
            "shape": f"{r},{c}",
            "n": str(self.n),
            "m": str(self.m),
            "dtype": _dtype_name(self.dtype),
        }
        return meta, {"values": values, "codes": codes}

    @classmethod
    def _sf_from_state(cls, meta: dict[str, str], arrays: dict[str, np.ndarray]) -> NMTensor:
        for key in ("shape", "n", "m", "dtype"):
            if key not in meta:
                raise ValueError(f"NMTensor: metadata is missing {key!r}")
        for key in ("values", "codes"):
            if key not in arrays:
                raise ValueError(f"NMTensor: component {key!r} is missing")
        try:
            n, m = int(meta["n"]), int(meta["m"])
        except ValueError:
            raise ValueError(f"NMTensor: bad n/m metadata {meta['n']!r}/{meta['m']!r}") from None
        values = arrays["values"]
        if _dtype_name(values.dtype) != meta["dtype"]:
            raise ValueError(
                f"NMTensor: values have dtype {_dtype_name(values.dtype)}, metadata says "
                f"{meta['dtype']}"
            )
        return cls.from_components(
            np.ascontiguousarray(values),
            np.ascontiguousarray(arrays["codes"]),
            shape=_parse_shape(meta["shape"]),
            n=n,
            m=m,
        )

    def _sf_gemv(
        self, x: np.ndarray, out: np.ndarray | None, num_threads: int | None
    ) -> np.ndarray:
        return self._m.gemv(x, out, threads_arg(num_threads))

    def _sf_gemm(
        self, X: np.ndarray, out: np.ndarray | None, num_threads: int | None
    ) -> np.ndarray:
        return self._m.gemm(X, out, threads_arg(num_threads))


def _check_nm(n: Any, m: Any) -> None:
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
    if not (1 <= n < m <= 16):
        raise ValueError(f"pattern {n}:{m}: need 1 <= n < m <= 16")


def to_torch_semi_structured(t: NMTensor) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's semi-structured (CUTLASS) 2:4 layout of a 2:4 (or 1:2) tensor.

    Returns numpy ``(sparse, meta)`` bit-identical to torch's
    ``sparse_semi_structured_from_dense_cutlass(torch.from_numpy(t.to_dense()))``:
    ``torch.from_numpy(sparse)`` (bfloat16: ``torch.from_numpy(sparse.view(np.int16))
    .view(torch.bfloat16)``) and ``torch.from_numpy(meta)`` give torch's tensors. float16 and
    bfloat16 tensors convert by reordering codes (no dense copy); float32 follows torch's 1:2
    rule (at most one non-zero per pair, else ValueError). torch's shape rules apply
    (rows % 32 == 0 and cols % 32 == 0 for 16-bit values; docs/formats.md).
    """
    if not isinstance(t, NMTensor):
        raise TypeError(f"t: expected an NMTensor, got {type(t).__name__}")
    if (t.n, t.m) == (2, 4):
        values, codes = t.components()
        return _cutlass.cutlass_from_canonical(values, codes)
    if (t.n, t.m) == (1, 2) or (t.n, t.m) == (1, 4):
        return _cutlass.from_dense_cutlass(t.to_dense())
    raise ValueError(f"t: pattern {t.pattern} has no PyTorch semi-structured layout (2:4 or 1:2)")


def from_torch_semi_structured(
    sparse: np.ndarray, meta: np.ndarray, *, num_threads: int | None = None
) -> NMTensor:
    """A 2:4 :class:`NMTensor` from PyTorch's CUTLASS ``(sparse, meta)`` (numpy arrays:
    ``tensor.numpy()``; for bfloat16 view the int16 bits as ``ml_dtypes.bfloat16``). Every
    meta code is checked; the result's dense matrix equals torch's
    ``sparse_semi_structured_to_dense_cutlass``."""
    values, codes = _cutlass.canonical_from_cutlass(sparse, meta)
    rows = values.shape[0]
    return NMTensor.from_components(
        values, codes, shape=(rows, values.shape[1] * 2), n=2, m=4, num_threads=num_threads
    )


# Kinds for sparseforge.save/load: _sf_kind -> class.
_KINDS: dict[str, type] = {"nm": NMTensor, "bitmap": BitmapTensor, "csr": CSRTensor}


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
