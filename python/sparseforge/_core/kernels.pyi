# sparseforge._core.kernels: dense and activation-sparse kernels (bind_kernels.cc).
from typing import Any

import numpy as np
import numpy.typing as npt

def gemv(
    W: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def gemm(
    W: npt.NDArray[Any],
    X: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]: ...
def gemv_rows(
    W: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    rows: npt.NDArray[Any],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemv_sparse_input(
    Wt: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    threshold: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemv_active_input(
    Wt: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    active: npt.NDArray[Any],
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int]: ...
def gemm_sparse_input(
    Wt: npt.NDArray[Any],
    X: npt.NDArray[np.float32],
    threshold: float,
    min_gain: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int, bool]: ...
def swiglu(
    mode: str,
    gate: npt.NDArray[Any],
    up: npt.NDArray[Any],
    down: npt.NDArray[Any],
    x: npt.NDArray[np.float32],
    t_x: float,
    t_h: float,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.float32], int, int]: ...
def _read_probe(buf: npt.NDArray[np.float32], num_threads: int = 0) -> float: ...
