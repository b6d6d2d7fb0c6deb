"""Histogram: a streaming histogram of float32 values (TEAL's calibration statistic)."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from .._validate import check_fraction, check_number

__all__ = ["Histogram"]


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
        s = check_fraction(sparsity)
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


def __dir__() -> list[str]:
    return sorted(__all__)
