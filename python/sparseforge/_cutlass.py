"""PyTorch's semi-structured (CUTLASS) 2:4 layout in numpy, bit-identical to torch.

A faithful port of ``torch/sparse/_semi_structured_conversions.py``
(``sparse_semi_structured_from_dense_cutlass`` / ``..._to_dense_cutlass`` and
``_calculate_meta_reordering_scatter_offsets``), vectorised, without importing torch, plus
conversions to and from sparseforge's canonical 2:4 layout (kept values + one 4-bit code per
group of 4). ``docs/formats.md`` ("PyTorch semi-structured") specifies both layouts.

Differences from torch, all on input torch would mishandle:

* ``strict=True`` (the default) refuses a group of 4 with more than 2 non-zeros (fp32: a
  pair with 2 non-zeros) instead of silently dropping values; ``strict=False`` reproduces
  torch exactly, dropping the values its table does not keep.
* Shapes whose meta matrix would have an odd number of columns (fp16/bf16 ``cols % 32 ==
  16``, int8 ``cols % 64 == 32``) are refused up front: torch's reordering indexes out of
  bounds there and raises an IndexError-like RuntimeError.
* ``to_dense_cutlass`` refuses meta words holding a nibble that is not a legal code (torch
  would scatter two values to one place or split an fp32 value in halves).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

from ._base import DTypeError

__all__ = [
    "LEGAL_CODES_2_4",
    "canonical_codes_2_4",
    "canonical_from_cutlass",
    "canonical_from_dense",
    "canonical_to_dense",
    "code_of_pattern",
    "cutlass_from_canonical",
    "from_dense_cutlass",
    "to_dense_cutlass",
]

_F16 = np.dtype(np.float16)
_BF16 = np.dtype(ml_dtypes.bfloat16)
_F32 = np.dtype(np.float32)
_I8 = np.dtype(np.int8)
_DTYPES = (_F16, _BF16, _I8, _F32)
_DTYPE_NAMES = "float16, bfloat16 (ml_dtypes), int8 or float32"

# Unsigned integer type of the same width, used to move values bit for bit.
_BITS: dict[np.dtype[Any], np.dtype[Any]] = {
    _F16: np.dtype(np.uint16),
    _BF16: np.dtype(np.uint16),
    _I8: np.dtype(np.uint8),
    _F32: np.dtype(np.uint32),
}
# Bits that make a value non-zero (``x != 0`` in torch: -0.0 is zero, NaN is not).
_NONZERO_MASK = {_F16: 0x7FFF, _BF16: 0x7FFF, _I8: 0xFF, _F32: 0x7FFFFFFF}

#: The six codes of a group with exactly two kept values, ``idx0 | idx1 << 2`` (idx0 < idx1).
LEGAL_CODES_2_4 = (0b0100, 0b1000, 0b1001, 0b1100, 0b1101, 0b1110)
# fp32 is 1:2: each pair is encoded as 4 halves, the first (0b0100) or the second (0b1110).
_LEGAL_CODES_1_2 = (0b0100, 0b1110)


def code_of_pattern(nonzero: Sequence[bool]) -> int:
    """torch's 4-bit code for one group of 4, given which of its elements are non-zero.

    The boolean functions of ``sparse_semi_structured_from_dense_cutlass`` (chosen with the
    Espresso minimiser): exact for groups with two non-zeros, a fixed choice for the others
    (all-zero -> ``0b1110``, ``[1, 0, 0, 0]`` -> ``0b1000``, three or four non-zeros keep two
    of them). Element 2 does not enter the formulas.
    """
    if len(nonzero) != 4:
        raise ValueError(f"nonzero: expected 4 flags (one group), got {len(nonzero)}")
    m0, m1, _m2, m3 = (bool(b) for b in nonzero)
    expr0 = m0 and m1
    expr1 = (not m0) and m1
    expr2 = (not m0) and (not m1)
    idx0 = int(expr1) | (int(expr2) << 1)
    idx1 = int(expr0 or expr2 or m3) | (int(expr1 or not m1) << 1)
    return idx0 | (idx1 << 2)


# code of every pattern ``m0 | m1 << 1 | m2 << 2 | m3 << 3``, and its number of non-zeros.
_CODE_LUT = np.array(
    [code_of_pattern([bool(p >> i & 1) for i in range(4)]) for p in range(16)],
    dtype=np.uint8,
)
_POPCOUNT = np.array([bin(p).count("1") for p in range(16)], dtype=np.uint8)


def _legal_lut(codes: tuple[int, ...]) -> np.ndarray:
    lut = np.zeros(16, dtype=bool)
    lut[list(codes)] = True
    return lut


_LEGAL_2_4 = _legal_lut(LEGAL_CODES_2_4)
_LEGAL_1_2 = _legal_lut(_LEGAL_CODES_1_2)


# ----------------------------------------------------------------------------- checks


def _check_matrix(a: Any, name: str, dtypes: tuple[np.dtype[Any], ...], names: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in dtypes:
        raise DTypeError(f"{name}: expected dtype {names}, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _layout(dtype: np.dtype[Any]) -> tuple[np.dtype[Any], int, int]:
    """(meta dtype, row multiple, dense column multiple) of torch's CUTLASS layout.

    torch checks rows % 32 (int8: % 16) and cols % 16 (int8: % 32, fp32: % 16), but its
    reordering needs an even number of meta columns, which doubles the column multiple
    for 16-bit and int8 values.
    """
    if dtype == _I8:
        return np.dtype(np.int32), 16, 64
    if dtype == _F32:
        return np.dtype(np.int16), 32, 16
    return np.dtype(np.int16), 32, 32


def _check_cutlass_shape(rows: int, cols: int, dtype: np.dtype[Any], name: str, what: str) -> None:
    _, row_mult, col_mult = _layout(dtype)
    if rows % row_mult or cols % col_mult:
        raise ValueError(
            f"{name}: PyTorch's CUTLASS layout for {dtype} needs rows % {row_mult} == 0 and "
            f"{what} % {col_mult} == 0, got rows={rows}, {what}={cols}"
        )


def _first(bad: np.ndarray) -> tuple[int, int]:
    r, g = np.argwhere(bad)[0]
    return int(r), int(g)


# ------------------------------------------------------------------- meta reordering


@functools.lru_cache(maxsize=8)
def _scatter_offsets(rows: int, meta_cols: int, meta_itemsize: int) -> np.ndarray:
    """Where meta[r, c] goes in the flat reordered meta (torch's
    ``_calculate_meta_reordering_scatter_offsets``): rows permuted within groups of 32
    (int32 meta: 16), 2x2 blocks swizzled, stored ColumnMajorInterleaved<2>."""
    dst_rows = np.repeat(np.arange(rows, dtype=np.int64)[:, None], meta_cols, axis=1)
    dst_cols = np.repeat(np.arange(meta_cols, dtype=np.int64)[None, :], rows, axis=0)
    group = 32 if meta_itemsize == 2 else 16
    interweave = 4 if meta_itemsize == 2 else 2
    dst_rows = dst_rows // group * group + (dst_rows % 8) * interweave + (dst_rows % group) // 8
    topright = ((dst_rows % 2 == 0) & (dst_cols % 2 == 1)).astype(np.int64)
    bottomleft = ((dst_rows % 2 == 1) & (dst_cols % 2 == 0)).astype(np.int64)
    dst_rows += topright - bottomleft
    dst_cols -= topright - bottomleft
    interleave = 2
    offsets = (dst_cols // interleave) * rows * interleave + dst_rows * interleave
    offsets += dst_cols % interleave
    offsets = offsets.reshape(-1)
    offsets.flags.writeable = False
    return offsets


def _reorder(meta: np.ndarray) -> np.ndarray:
    rows, cols = meta.shape
    out = np.empty(rows * cols, dtype=meta.dtype)
    out[_scatter_offsets(rows, cols, meta.dtype.itemsize)] = meta.reshape(-1)
    return out.reshape(rows, cols)


def _unreorder(meta_reordered: np.ndarray) -> np.ndarray:
    rows, cols = meta_reordered.shape
    offsets = _scatter_offsets(rows, cols, meta_reordered.dtype.itemsize)
    meta: np.ndarray = meta_reordered.reshape(-1)[offsets]
    return meta.reshape(rows, cols)


# ------------------------------------------------------------ nibbles <-> bytes / words


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(rows, groups) codes -> (rows, ceil(groups / 2)) uint8, low nibble = lower group."""
    rows, groups = codes.shape
    if groups % 2:
        codes = np.concatenate([codes, np.zeros((rows, 1), dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4))


def _unpack_nibbles(packed: np.ndarray, groups: int) -> np.ndarray:
    rows = packed.shape[0]
    codes = np.empty((rows, packed.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    return codes[:, :groups]


def _check_codes(codes: np.ndarray, legal: np.ndarray, name: str, unit: int) -> None:
    bad = ~legal[codes]
    if bad.any():
        r, g = _first(bad)
        raise ValueError(
            f"{name}: illegal 2:4 code {int(codes[r, g]):#06b} for row {r}, columns "
            f"{g * unit}..{g * unit + unit - 1} (legal: "
            f"{', '.join(f'{c:#06b}' for c in np.flatnonzero(legal))})"
        )


# ----------------------------------------------------------------- dense -> codes/values


def _group_codes(dense: np.ndarray, strict: bool, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes (rows, cols/4) uint8, groups (rows, cols/4, 4) raw bits) of a 2:4 matrix."""
    rows, cols = dense.shape
    groups = dense.view(_BITS[dense.dtype]).reshape(rows, cols // 4, 4)
    nonzero = (groups & _NONZERO_MASK[dense.dtype]) != 0
    pattern = (
        nonzero[..., 0].astype(np.uint8)
        | (nonzero[..., 1].astype(np.uint8) << 1)
        | (nonzero[..., 2].astype(np.uint8) << 2)
        | (nonzero[..., 3].astype(np.uint8) << 3)
    )
    if strict:
        excess = _POPCOUNT[pattern] > 2
        if excess.any():
            r, g = _first(excess)
            raise ValueError(
                f"{name}: not 2:4: row {r}, columns {4 * g}..{4 * g + 3} hold "
                f"{int(_POPCOUNT[pattern[r, g]])} non-zeros, the layout keeps 2 of every 4 "
                "(strict=False drops the excess like torch)"
            )
    return _CODE_LUT[pattern], groups


def _gather_values(groups: np.ndarray, codes: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    rows, ngroups, _ = groups.shape
    idx = np.stack([codes & 3, codes >> 2], axis=-1).astype(np.intp)
    kept = np.take_along_axis(groups, idx, axis=-1)
    return kept.reshape(rows, ngroups * 2).view(dtype)


def _check_canonical_dense(dense: Any, name: str) -> np.ndarray:
    arr = _check_matrix(dense, name, _DTYPES, _DTYPE_NAMES)
    if arr.shape[1] % 4:
        raise ValueError(f"{name}: cols={arr.shape[1]} is not a multiple of 4 (pattern 2:4)")
    return arr


def canonical_codes_2_4(dense: np.ndarray, *, strict: bool = True) -> np.ndarray:
    """Per-group 2:4 codes of a dense matrix, in torch's code table, packed two per byte.

    Parameters
    ----------
    dense : (rows, cols) float16, bfloat16, int8 or float32, ``cols % 4 == 0``
        Any layout (read only). Non-zero means ``x != 0`` (-0.0 is zero, NaN is not).
    strict : bool
        Raise ``ValueError`` if a group of 4 holds more than 2 non-zeros (default). With
        ``False`` such groups get torch's code, which keeps two of them.

    Returns
    -------
    (rows, ceil(cols / 8)) uint8, a new array
        Group ``g`` of row ``r`` (columns ``4g..4g+3``) in byte ``g // 2``, low nibble for
        even ``g``. Each nibble is ``idx0 | idx1 << 2``, the two kept positions (idx0 <
        idx1), one of :data:`LEGAL_CODES_2_4`; groups with fewer than two non-zeros use
        torch's fixed choice (all-zero -> ``0b1110``). An odd last group leaves the high
        nibble of the last byte 0.
    """
    dense = _check_canonical_dense(dense, "dense")
    codes, _ = _group_codes(dense, strict, "dense")
    return _pack_nibbles(codes)


def canonical_from_dense(
    dense: np.ndarray, *, strict: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Canonical 2:4 layout of a dense matrix: ``(values, codes)``.

    Parameters
    ----------
    dense : (rows, cols) float16, bfloat16, int8 or float32, ``cols % 4 == 0``
    strict : bool
        As in :func:`canonical_codes_2_4`.

    Returns
    -------
    values : (rows, cols // 2), dense's dtype, a new array
        The two elements each code points at, in column order (bit copies).
    codes : (rows, ceil(cols / 8)) uint8
        As :func:`canonical_codes_2_4`.
    """
    dense = _check_canonical_dense(dense, "dense")
    codes, groups = _group_codes(dense, strict, "dense")
    return _gather_values(groups, codes, dense.dtype), _pack_nibbles(codes)


def _check_canonical(values: Any, codes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (values, unpacked codes (rows, groups))."""
    values = _check_matrix(values, "values", _DTYPES, _DTYPE_NAMES)
    rows, half = values.shape
    if half % 2:
        raise ValueError(f"values: expected an even number of columns (2 per group), got {half}")
    groups = half // 2
    packed = _check_matrix(codes, "codes", (np.dtype(np.uint8),), "uint8")
    want = (rows, (groups + 1) // 2)
    if packed.shape != want:
        raise ValueError(
            f"codes: expected shape {want} for values {values.shape}, got {packed.shape}"
        )
    unpacked = _unpack_nibbles(packed, groups)
    _check_codes(unpacked, _LEGAL_2_4, "codes", 4)
    if groups % 2 and (packed[:, -1] >> 4).any():
        raise ValueError("codes: the unused high nibble of each row's last byte must be 0")
    return values, unpacked


def canonical_to_dense(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Dense matrix of a canonical 2:4 pair (the inverse of :func:`canonical_from_dense`).

    Parameters
    ----------
    values : (rows, cols // 2) float16, bfloat16, int8 or float32
    codes : (rows, ceil(cols / 8)) uint8, legal nibbles only (else ``ValueError``)

    Returns
    -------
    (rows, cols), values' dtype, a new array: values at the coded positions, +0 elsewhere.
    """
    values, unpacked = _check_canonical(values, codes)
    return _scatter_dense(values, unpacked)


def _scatter_dense(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    rows, groups = codes.shape
    bits = _BITS[values.dtype]
    out = np.zeros((rows, groups, 4), dtype=bits)
    idx = np.stack([codes & 3, codes >> 2], axis=-1).astype(np.intp)
    np.put_along_axis(out, idx, values.view(bits).reshape(rows, groups, 2), axis=-1)
    return out.reshape(rows, groups * 4).view(values.dtype)


# ----------------------------------------------------------------- torch's CUTLASS layout


def from_dense_cutlass(dense: np.ndarray, *, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``.

    Parameters
    ----------
    dense : (rows, cols) float16, bfloat16, int8 or float32
        Any layout (read only). 16-bit: ``rows % 32 == 0``, ``cols % 32 == 0``; int8:
        ``rows % 16 == 0``, ``cols % 64 == 0``; float32: ``rows % 32 == 0``,
        ``cols % 16 == 0``. float32 is **1:2** (one kept of every pair), as in torch.
    strict : bool
        ``True`` (default): ``ValueError`` naming ``dense`` and the first offending group if
        a group of 4 (float32: a pair) holds more non-zeros than the layout keeps.
        ``False``: exactly torch, which keeps the values its code table picks and silently
        drops the others.

    Returns
    -------
    sparse : (rows, cols // 2), dense's dtype, a new array
        Kept values in column order (bit copies, so NaN payloads and -0.0 survive).
    meta : (rows, cols // 16) int16, or (rows, cols // 32) int32 for int8
        Four (int8: eight) 4-bit codes per word, low nibble first, reordered to CUTLASS's
        ColumnMajorInterleaved<2> with 2x2 swizzle. Bit-identical to torch's
        ``meta_reordered``.
    """
    dense = _check_matrix(dense, "dense", _DTYPES, _DTYPE_NAMES)
    rows, cols = dense.shape
    _check_cutlass_shape(rows, cols, dense.dtype, "dense", "cols")
    meta_dtype, _, _ = _layout(dense.dtype)
    if dense.dtype == _F32:
        sparse, codes = _from_dense_1_2(dense, strict, "dense")
    else:
        codes, groups = _group_codes(dense, strict, "dense")
        sparse = _gather_values(groups, codes, dense.dtype)
    words = _pack_nibbles(codes).view(meta_dtype.newbyteorder("<")).astype(meta_dtype)
    return sparse, _reorder(words)


def _from_dense_1_2(dense: np.ndarray, strict: bool, name: str) -> tuple[np.ndarray, np.ndarray]:
    """float32: each pair is encoded as four halves, first kept (0b0100) or second (0b1110)."""
    rows, cols = dense.shape
    pairs = dense.view(np.uint32).reshape(rows, cols // 2, 2)
    first = (pairs[..., 0] & 0x7FFFFFFF) != 0
    if strict:
        both = first & ((pairs[..., 1] & 0x7FFFFFFF) != 0)
        if both.any():
            r, p = _first(both)
            raise ValueError(
                f"{name}: not 1:2: row {r}, columns {2 * p}..{2 * p + 1} are both non-zero; "
                "PyTorch's float32 CUTLASS layout keeps one of every pair (strict=False keeps "
                "the first like torch)"
            )
    codes = np.where(first, np.uint8(0b0100), np.uint8(0b1110))
    sparse = np.where(first, pairs[..., 0], pairs[..., 1]).view(np.float32)
    return sparse, codes


def _check_cutlass(sparse: Any, meta: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (sparse, unreordered unpacked codes (rows, cols // 4 or cols // 2 for fp32))."""
    sparse = _check_matrix(sparse, "sparse", _DTYPES, _DTYPE_NAMES)
    rows, half = sparse.shape
    cols = 2 * half
    meta_dtype, _, _ = _layout(sparse.dtype)
    meta = _check_matrix(meta, "meta", (meta_dtype,), f"{meta_dtype} for {sparse.dtype} values")
    _check_cutlass_shape(rows, cols, sparse.dtype, "sparse", "2 * cols")
    unit = 2 if sparse.dtype == _F32 else 4
    words = cols // unit // (2 * meta_dtype.itemsize)
    if meta.shape != (rows, words):
        raise ValueError(
            f"meta: expected shape {(rows, words)} for sparse {sparse.shape} {sparse.dtype}, "
            f"got {meta.shape}"
        )
    packed = _unreorder(meta).astype(meta_dtype.newbyteorder("<")).view(np.uint8)
    codes = _unpack_nibbles(packed, cols // unit)
    _check_codes(codes, _LEGAL_1_2 if unit == 2 else _LEGAL_2_4, "meta", unit)
    return sparse, codes


def to_dense_cutlass(sparse: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """``torch.sparse._semi_structured_conversions.sparse_semi_structured_to_dense_cutlass``.

    Parameters
    ----------
    sparse : (rows, cols // 2) float16, bfloat16, int8 or float32
    meta : (rows, cols // 16) int16, or (rows, cols // 32) int32 for int8
        As returned by :func:`from_dense_cutlass` or torch. Every nibble must be a legal
        code (float32: ``0b0100`` or ``0b1110``), else ``ValueError`` naming ``meta``.

    Returns
    -------
    (rows, cols), sparse's dtype, a new array: the kept values at their places, +0
    elsewhere. Bit-identical to torch.
    """
    sparse, codes = _check_cutlass(sparse, meta)
    if sparse.dtype != _F32:
        return _scatter_dense(sparse, codes)
    rows, pairs = codes.shape
    out = np.zeros((rows, pairs, 2), dtype=np.uint32)
    slot = (codes == 0b1110).astype(np.intp)[..., None]
    np.put_along_axis(out, slot, sparse.view(np.uint32)[..., None], axis=-1)
    return out.reshape(rows, 2 * pairs).view(np.float32)


def cutlass_from_canonical(values: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torch's ``(sparse, meta_reordered)`` from a canonical 2:4 pair.

    For float16, bfloat16 and int8 this is a pure reorder: ``sparse`` is a copy of
    ``values`` and ``meta`` is ``codes`` read as little-endian words, reordered; the result
    equals :func:`from_dense_cutlass` of the dense matrix. For float32 (torch's layout is
    1:2) it goes through the dense matrix and raises ``ValueError`` if a pair holds two
    non-zeros; a -0.0 at a position the codes do not keep becomes +0.0.

    Parameters
    ----------
    values : (rows, cols // 2) float16, bfloat16, int8 or float32
    codes : (rows, cols // 8) uint8, legal nibbles (see :func:`canonical_codes_2_4`)
        Shapes as :func:`from_dense_cutlass` requires of ``(rows, cols)``.

    Returns
    -------
    sparse, meta : new arrays, as :func:`from_dense_cutlass`.
    """
    values, unpacked = _check_canonical(values, codes)
    rows, half = values.shape
    _check_cutlass_shape(rows, 2 * half, values.dtype, "values", "2 * cols")
    if values.dtype == _F32:
        sparse, pair_codes = _from_dense_1_2(_scatter_dense(values, unpacked), True, "values")
        packed = _pack_nibbles(pair_codes)
    else:
        sparse = values.copy()
        packed = np.ascontiguousarray(codes)
    meta_dtype, _, _ = _layout(values.dtype)
    return sparse, _reorder(packed.view(meta_dtype.newbyteorder("<")).astype(meta_dtype))


def canonical_from_cutlass(sparse: np.ndarray, meta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical 2:4 ``(values, codes)`` from torch's ``(sparse, meta_reordered)``.

    For float16, bfloat16 and int8 a pure reorder (``values`` is a copy of ``sparse``); for
    float32 through the dense matrix (a 1:2 matrix is 2:4, coded with torch's table).

    Returns
    -------
    values : (rows, cols // 2), sparse's dtype; codes : (rows, cols // 8) uint8. New arrays.
    """
    sparse, unpacked = _check_cutlass(sparse, meta)
    if sparse.dtype == _F32:
        return canonical_from_dense(to_dense_cutlass(sparse, meta))
    return sparse.copy(), _pack_nibbles(unpacked)
