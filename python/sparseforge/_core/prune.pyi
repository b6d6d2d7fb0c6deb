# sparseforge._core.prune: masks, magnitude, Wanda, SparseGPT, OBS, OBD (bind_prune.cc).
from typing import Any

import numpy as np
import numpy.typing as npt

from .calib import LayerStats

def magnitude_mask(
    W: npt.NDArray[Any], sparsity: float, scope: str, num_threads: int = 0
) -> npt.NDArray[np.bool_]: ...
def magnitude_nm_mask(
    W: npt.NDArray[Any], n: int, m: int, num_threads: int = 0
) -> npt.NDArray[np.bool_]: ...
def magnitude_block_mask(
    W: npt.NDArray[Any],
    sparsity: float,
    block_rows: int,
    block_cols: int,
    scope: str,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def magnitude_global_mask(
    weights: list[npt.NDArray[Any]], sparsity: float, num_threads: int = 0
) -> list[npt.NDArray[np.bool_]]: ...
def apply_mask_(W: npt.NDArray[Any], mask: npt.NDArray[np.bool_], num_threads: int = 0) -> None: ...
def masked_copy(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_], num_threads: int = 0
) -> tuple[npt.NDArray[Any], int]: ...
def count_zeros(W: npt.NDArray[Any], num_threads: int = 0) -> int: ...
def nm_violations(
    W: npt.NDArray[Any], n: int, m: int, max_report: int, num_threads: int = 0
) -> tuple[int, int, list[tuple[int, int]]]: ...
def parse_nm(pattern: str) -> tuple[int, int]: ...
def wanda_mask(
    W: npt.NDArray[Any],
    col_norms: npt.NDArray[np.float32],
    sparsity: float,
    n: int,
    m: int,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def wanda_variant_mask(
    W: npt.NDArray[Any], col_norms: npt.NDArray[np.float32], sparsity: float, num_threads: int = 0
) -> tuple[npt.NDArray[np.bool_], float, int, float]: ...

class HessianFactor:
    @property
    def n(self) -> int: ...
    @property
    def percdamp(self) -> float: ...
    @property
    def max_percdamp(self) -> float: ...
    @property
    def percdamp_used(self) -> float: ...
    @property
    def damp(self) -> float: ...
    @property
    def attempts(self) -> int: ...
    @property
    def float64(self) -> bool: ...
    @property
    def factor_float32(self) -> bool: ...
    @property
    def dead_columns(self) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...

def factor_hessian(
    H: npt.NDArray[Any] | LayerStats,
    percdamp: float,
    max_percdamp: float,
    factor_float32: bool,
    float64: bool,
    num_threads: int = 0,
) -> HessianFactor: ...
def reconstruction_error(
    W: npt.NDArray[Any],
    W_hat: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    num_threads: int = 0,
) -> float: ...
def sparsegpt(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats | HessianFactor,
    sparsity: float,
    n: int,
    m: int,
    block_size: int,
    percdamp: float,
    max_percdamp: float,
    float64: bool,
    factor_float32: bool,
    exact_count: bool,
    mask: npt.NDArray[np.bool_] | None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obs(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    sparsity: float,
    n: int,
    m: int,
    percdamp: float,
    max_percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obd_mask(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    sparsity: float,
    n: int,
    m: int,
    num_threads: int = 0,
) -> npt.NDArray[np.bool_]: ...
def reconstruct_exact(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any] | LayerStats,
    mask: npt.NDArray[np.bool_],
    percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], dict[str, Any]]: ...
