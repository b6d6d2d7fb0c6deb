"""Library-wide helpers: errors, build facts, SIMD level, threads, dtype casts."""

from __future__ import annotations

import numbers
import platform
import sys
from typing import Any

import numpy as np

from . import _core

DTypeError = _core.DTypeError
NumericalError = _core.NumericalError


def build_info() -> dict[str, str]:
    """How this copy of sparseforge was built and what it runs on.

    Returns
    -------
    dict of str to str
        version, compiler, build_type, cxx_flags, simd_flags_avx2, simd_flags_avx512,
        simd_detected, simd_active, openmp, default_threads, hardware_threads, eigen,
        sanitized, pybind11, python, numpy, ml_dtypes, machine, cpu.
    """
    info = dict(_core.core.build_info())
    info["python"] = platform.python_version()
    info["numpy"] = np.__version__
    try:
        import ml_dtypes

        info["ml_dtypes"] = str(ml_dtypes.__version__)
    except ImportError:  # pragma: no cover - a declared dependency
        info["ml_dtypes"] = "missing"
    info["machine"] = platform.machine()
    info["cpu"] = _cpu_model()
    return info


def _cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or "unknown"


def simd_level() -> str:
    """The SIMD level kernels use now: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return str(_core.core.simd_level())


def detected_simd_level() -> str:
    """The highest SIMD level this CPU (and build) supports."""
    return str(_core.core.detected_simd_level())


def set_simd_level(level: str) -> None:
    """Lower (or restore) the SIMD level for the whole process.

    Every level gives bitwise-identical results; this exists for testing and for measuring
    what the vector code buys. The environment variable ``SPARSEFORGE_SIMD`` sets the
    starting level.

    Raises
    ------
    ValueError
        If ``level`` is unknown or above :func:`detected_simd_level`.
    """
    if not isinstance(level, str):
        raise TypeError(f"level: expected a str, got {type(level).__name__}")
    _core.core.set_simd_level(level)


def default_num_threads() -> int:
    """Threads used when ``num_threads=None`` (``OMP_NUM_THREADS``, else all cores)."""
    return int(_core.core.default_num_threads())


MAX_THREADS = 4096  # the core's limit (resolve_num_threads)


def threads_arg(num_threads: int | None) -> int:
    """Validate a ``num_threads`` argument; ``None`` maps to 0 (the core's default)."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads: expected None or an int, got {type(num_threads).__name__}")
    if not 1 <= num_threads <= MAX_THREADS:
        raise ValueError(
            f"num_threads: expected None or an int in [1, {MAX_THREADS}], got {num_threads}"
        )
    return int(num_threads)


def cast(x: np.ndarray, dtype: Any, *, num_threads: int | None = None) -> np.ndarray:
    """Convert between float32, float16 and bfloat16 with round-to-nearest-even.

    Parameters
    ----------
    x : ndarray, any shape, C-contiguous, float32 | float16 | bfloat16
    dtype : float32, float16 or ml_dtypes.bfloat16 (anything ``np.dtype`` accepts)

    Returns
    -------
    ndarray
        A new array of ``x``'s shape and the requested dtype (a copy, even when the dtype
        is unchanged). Identical to numpy's / ml_dtypes' ``astype`` except for NaN payloads.
    """
    return _core.core.cast(x, dtype, threads_arg(num_threads))
