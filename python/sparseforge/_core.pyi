# Hand-written stubs for the compiled module; checked by `python -m mypy.stubtest
# sparseforge._core` in .ci/run. Arrays are numpy; see the facade for shapes and dtypes.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class DTypeError(TypeError, ValueError): ...
class NumericalError(ArithmeticError): ...

# core
def build_info() -> dict[str, str]: ...
def simd_level() -> str: ...
def detected_simd_level() -> str: ...
def set_simd_level(level: str) -> None: ...
def default_num_threads() -> int: ...
def cast(x: npt.NDArray[Any], dtype: Any, num_threads: int = 0) -> npt.NDArray[Any]: ...
def _raise_for_test(kind: str) -> None: ...
def _gate_address(a: npt.NDArray[Any], writeable: bool = False) -> int: ...

# prune
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

# calib
class LayerStats:
    def __init__(self, in_features: int, hessian: bool = True) -> None: ...
    def update(self, X: npt.NDArray[Any], num_threads: int = 0) -> None: ...
    def merged(self, other: LayerStats) -> LayerStats: ...
    @property
    def in_features(self) -> int: ...
    @property
    def has_hessian(self) -> bool: ...
    @property
    def tokens(self) -> int: ...
    def col_norms(self) -> npt.NDArray[np.float32]: ...
    def sum_squares(self) -> npt.NDArray[np.float64]: ...
    def hessian(self) -> npt.NDArray[np.float64]: ...
    def xtx_lower(self) -> npt.NDArray[np.float64]: ...
    @staticmethod
    def from_state(
        in_features: int,
        hessian: bool,
        tokens: int,
        sum_squares: npt.NDArray[np.float64],
        xtx_lower: npt.NDArray[np.float64],
    ) -> LayerStats: ...

# one-shot pruning
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
def sparsegpt(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any],
    sparsity: float,
    n: int,
    m: int,
    block_size: int,
    percdamp: float,
    max_percdamp: float,
    float64: bool,
    exact_count: bool,
    mask: npt.NDArray[np.bool_] | None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obs(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any],
    sparsity: float,
    n: int,
    m: int,
    percdamp: float,
    max_percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_], dict[str, Any]]: ...
def obd_mask(
    W: npt.NDArray[Any], H: npt.NDArray[Any], sparsity: float, n: int, m: int, num_threads: int = 0
) -> npt.NDArray[np.bool_]: ...
def reconstruct_exact(
    W: npt.NDArray[Any],
    H: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_],
    percdamp: float,
    num_threads: int = 0,
) -> tuple[npt.NDArray[Any], dict[str, Any]]: ...
