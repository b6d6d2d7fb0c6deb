# sparseforge._core.format: N:M, bitmap and CSR compressed tensors
# (bind_format_nm.cc, bind_format_unstructured.cc).
from typing import Any

import numpy as np
import numpy.typing as npt

class NMMatrix:
    @staticmethod
    def from_dense(
        W: npt.NDArray[Any], n: int, m: int, prune: bool, num_threads: int = 0
    ) -> NMMatrix: ...
    @staticmethod
    def from_canonical(
        values: npt.NDArray[Any],
        codes: npt.NDArray[np.uint8],
        cols: int,
        n: int,
        m: int,
        num_threads: int = 0,
    ) -> NMMatrix: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def n(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def canonical_nbytes(self) -> int: ...
    def to_canonical(
        self, num_threads: int = 0
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def validate(self) -> None: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

def nm_code_row_bytes(cols: int, n: int, m: int) -> int: ...

class BitmapMatrix:
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def values(self) -> npt.NDArray[Any]: ...
    @property
    def bitmap(self) -> npt.NDArray[np.uint8]: ...
    @property
    def row_offsets(self) -> npt.NDArray[np.int64]: ...
    def validate(self) -> None: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemv_sparse_input(
        self,
        x: npt.NDArray[np.float32],
        threshold: float,
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> tuple[npt.NDArray[np.float32], int]: ...

class CSRMatrix:
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def values(self) -> npt.NDArray[Any]: ...
    @property
    def indptr(self) -> npt.NDArray[np.int64]: ...
    @property
    def indices(self) -> npt.NDArray[np.int32]: ...
    def validate(self) -> None: ...
    def to_dense(self, num_threads: int = 0) -> npt.NDArray[Any]: ...
    def gemv(
        self,
        x: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...
    def gemm(
        self,
        X: npt.NDArray[np.float32],
        out: npt.NDArray[np.float32] | None = None,
        num_threads: int = 0,
    ) -> npt.NDArray[np.float32]: ...

def bitmap_from_dense(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None, num_threads: int = 0
) -> BitmapMatrix: ...
def csr_from_dense(
    W: npt.NDArray[Any], mask: npt.NDArray[np.bool_] | None = None, num_threads: int = 0
) -> CSRMatrix: ...
def bitmap_from_components(
    rows: int,
    cols: int,
    bitmap: npt.NDArray[np.uint8],
    values: npt.NDArray[Any],
    row_offsets: npt.NDArray[np.int64] | None = None,
) -> BitmapMatrix: ...
def csr_from_components(
    rows: int,
    cols: int,
    indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int32],
    values: npt.NDArray[Any],
) -> CSRMatrix: ...
