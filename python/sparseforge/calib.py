"""Streaming calibration statistics.

One pass of calibration text through a model gives every linear layer's input activations
``X`` of shape ``(tokens, in_features)``. :class:`LayerStats` keeps what the pruning methods
need from them, in memory that does not grow with the number of tokens:

* ``col_norms``: Wanda's per-column norms ``sqrt(sum_t x_tj^2 / tokens)``;
* ``hessian``: SparseGPT's / OBS's ``X^T X / tokens``.

Statistics are sums, so shards calibrated in different processes or machines combine with
:meth:`LayerStats.merge` into what one stream would give (up to float64 rounding).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from ._base import threads_arg
from ._io import atomic_write, open_regular, read_npz
from ._validate import check_bool, check_int

__all__ = ["LayerStats"]

_FORMAT = "sparseforge.LayerStats"
_VERSION = 1


class LayerStats:
    """Streaming statistics of one linear layer's inputs.

    Parameters
    ----------
    in_features : int
        Columns of every ``X`` passed to :meth:`update`.
    hessian : bool
        Also accumulate ``X^T X`` (``in_features**2`` float64 values); Wanda needs only the
        column norms.
    precision : {"float32", "float64"}
        Arithmetic of each chunk's ``X^T X``. Each :meth:`update` is cut into chunks of at
        most 2048 tokens, whose ``X^T X`` is a symmetric rank-k update (one triangle); chunks
        are always accumulated in float64. "float32" (default) sums a chunk's products in
        fp32 (about 2x faster; relative error ~1e-6, better than the references, which keep
        all of H in fp32); "float64" does the rank-k update in float64 too. Column sums of
        squares are float64 either way. Results do not depend on ``num_threads``.
    """

    _impl: _core.calib.LayerStats

    def __init__(
        self, in_features: int, hessian: bool = True, *, precision: str = "float32"
    ) -> None:
        in_features = check_int(in_features, "in_features", 1)
        check_bool(hessian, "hessian")
        if precision not in ("float32", "float64"):
            raise ValueError(f"precision: expected 'float32' or 'float64', got {precision!r}")
        self._impl = _core.calib.LayerStats(int(in_features), hessian, precision == "float64")

    @classmethod
    def _wrap(cls, core: _core.calib.LayerStats) -> LayerStats:
        obj = cls.__new__(cls)
        obj._impl = core
        return obj

    def update(self, X: np.ndarray, *, num_threads: int | None = None) -> None:
        """Add the rows of ``X``.

        Parameters
        ----------
        X : ndarray, shape (tokens, in_features), float32 | float16 | bfloat16
            Finite, ``|x| < 2**50``. Read in place (rows may be a slice of a larger array).
            On bad input nothing is added.
        """
        self._impl.update(X, threads_arg(num_threads))

    def merge(self, other: LayerStats) -> LayerStats:
        """A new LayerStats holding both shards' statistics; ``self`` and ``other`` unchanged."""
        if not isinstance(other, LayerStats):
            raise TypeError(f"other: expected a LayerStats, got {type(other).__name__}")
        return LayerStats._wrap(self._impl.merged(other._impl))

    @property
    def in_features(self) -> int:
        return int(self._impl.in_features)

    @property
    def has_hessian(self) -> bool:
        return bool(self._impl.has_hessian)

    @property
    def precision(self) -> str:
        """Arithmetic of the chunk rank-k updates: "float32" or "float64"."""
        return "float64" if self._impl.float64 else "float32"

    @property
    def tokens(self) -> int:
        """Rows seen so far."""
        return int(self._impl.tokens)

    @property
    def col_norms(self) -> np.ndarray:
        """(in_features,) float32: ``sqrt(sum_t x_tj^2 / tokens)`` (a new array)."""
        return self._impl.col_norms()

    @property
    def sum_squares(self) -> np.ndarray:
        """(in_features,) float64: ``sum_t x_tj^2`` (a new array)."""
        return self._impl.sum_squares()

    @property
    def hessian(self) -> np.ndarray:
        """(in_features, in_features) float64: ``X^T X / tokens``, symmetric (a new array)."""
        return self._impl.hessian()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickling (multiprocessing, Ray's object store): the exact accumulator state.
        return (
            _from_state,
            (
                self.in_features,
                self.has_hessian,
                bool(self._impl.float64),
                self.tokens,
                self._impl.sum_squares(),
                self._impl.xtx_lower(),
            ),
        )

    def __repr__(self) -> str:
        return (
            f"LayerStats(in_features={self.in_features}, hessian={self.has_hessian}, "
            f"precision={self.precision!r}, tokens={self.tokens})"
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics to ``path`` (an ``.npz`` archive), atomically.

        The file is written beside ``path`` under a temporary name and renamed over it, so
        ``path`` never holds a partial file. Zip members carry CRC-32 checksums.
        """
        path = Path(path)
        arrays: dict[str, Any] = {
            "format": np.array(_FORMAT),
            "version": np.array(_VERSION, dtype=np.int64),
            "in_features": np.array(self.in_features, dtype=np.int64),
            "hessian": np.array(self.has_hessian),
            "precision": np.array(self.precision),
            "tokens": np.array(self.tokens, dtype=np.uint64),
            "sum_squares": self._impl.sum_squares(),
            "xtx_lower": self._impl.xtx_lower(),
        }
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LayerStats:
        """Read statistics written by :meth:`save`.

        Raises
        ------
        ValueError
            Naming the file, if it is not a LayerStats archive, is truncated or corrupt, or
            holds inconsistent values.
        """
        path = Path(path)
        # Our own file object: np.load(path) leaks its handle when the zip is corrupt.
        with open_regular(path, "LayerStats file") as f:
            data = read_npz(f, str(path))
        if str(data.get("format", "")) != _FORMAT:
            raise ValueError(f"{path}: not a sparseforge LayerStats file")
        if int(data.get("version", -1)) != _VERSION:
            raise ValueError(f"{path}: unsupported LayerStats version {data.get('version')}")
        tokens = data.get("tokens")
        if tokens is None or tokens.ndim != 0 or tokens.dtype.kind not in "iu":
            raise ValueError(f"{path}: tokens: expected an integer scalar")
        if not 0 <= int(tokens) <= 2**62:
            raise ValueError(f"{path}: tokens: expected in [0, 2^62], got {int(tokens)}")
        for key in ("sum_squares", "xtx_lower"):
            arr = data.get(key)
            if arr is None or arr.dtype.kind != "f":
                raise ValueError(f"{path}: {key}: expected a float array")
            if not np.isfinite(arr).all():
                raise ValueError(f"{path}: {key}: contains NaN or Inf")
        try:
            core = _core.calib.LayerStats.from_state(
                int(data["in_features"]),
                bool(data["hessian"]),
                str(data.get("precision", "float32")) == "float64",
                int(data["tokens"]),
                np.ascontiguousarray(data["sum_squares"], dtype=np.float64),
                np.ascontiguousarray(data["xtx_lower"], dtype=np.float64),
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: inconsistent LayerStats ({err})") from err
        return cls._wrap(core)


def _from_state(
    in_features: int,
    hessian: bool,
    float64: bool,
    tokens: int,
    sum_squares: np.ndarray,
    xtx_lower: np.ndarray,
) -> LayerStats:
    return LayerStats._wrap(
        _core.calib.LayerStats.from_state(
            int(in_features),
            bool(hessian),
            bool(float64),
            int(tokens),
            np.ascontiguousarray(sum_squares, dtype=np.float64),
            np.ascontiguousarray(xtx_lower, dtype=np.float64),
        )
    )


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
