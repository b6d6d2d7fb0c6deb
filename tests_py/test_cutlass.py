"""sparseforge._cutlass: PyTorch's CUTLASS 2:4 layout in numpy, and our canonical 2:4 codes.

Bit-identical against torch's own conversion functions (CPU torch) on random 2:4 and
arbitrary matrices, every group pattern, every dtype and several shapes; torch-free exact
cases (the code table from torch's source comment, hand-computed codes, golden meta words
recorded from torch 2.13) so the module is tested without torch too; round trips between
the dense, canonical and CUTLASS layouts; bad input.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf
from sparseforge import _cutlass as cut

F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
I8 = np.dtype(np.int8)
UINT = {F16: np.uint16, BF16: np.uint16, F32: np.uint32, I8: np.uint8}

# (dtype, shapes): torch's minimum and a few larger ones for each layout
SHAPES = {
    F16: [(32, 32), (64, 64), (96, 160)],
    BF16: [(32, 32), (32, 96), (128, 64)],
    I8: [(16, 64), (32, 128), (48, 192)],
    F32: [(32, 16), (64, 48), (96, 32)],
}
CASES = [(dt, shape) for dt, shapes in SHAPES.items() for shape in shapes]
CASE_IDS = [f"{dt}-{r}x{c}" for dt, (r, c) in CASES]

# torch's source comment: pattern (elements 0..3 non-zero) -> code
TORCH_TABLE = {
    (1, 1, 0, 0): 0b0100,
    (1, 0, 1, 0): 0b1000,
    (0, 1, 1, 0): 0b1001,
    (1, 0, 0, 1): 0b1100,
    (0, 1, 0, 1): 0b1101,
    (0, 0, 1, 1): 0b1110,
    (0, 0, 0, 0): 0b1110,
    (0, 0, 0, 1): 0b1110,
    (0, 0, 1, 0): 0b1110,
    (0, 1, 0, 0): 0b1001,
    (0, 1, 1, 1): 0b1101,
    (1, 0, 0, 0): 0b1000,
    (1, 0, 1, 1): 0b1100,
    (1, 1, 0, 1): 0b0100,
    (1, 1, 1, 0): 0b0100,
    (1, 1, 1, 1): 0b0100,
}


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(UINT[a.dtype])


def random_values(rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Non-zero values (no -0.0, no NaN) of the dtype."""
    if dtype == I8:
        v = rng.integers(1, 128, size=shape) * rng.choice([-1, 1], size=shape)
        return v.astype(np.int8)
    v = rng.standard_normal(shape).astype(np.float32)
    v[v == 0] = 1.0
    return v.astype(dtype)


def random_2_4(rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A random 2:4 matrix (float32: 1:2) with some groups holding fewer non-zeros."""
    rows, cols = shape
    v = random_values(rng, shape, dtype)
    if dtype == F32:
        keep = np.zeros((rows, cols // 2, 2), dtype=bool)
        keep[..., 0] = rng.random((rows, cols // 2)) < 0.5
        keep[..., 1] = ~keep[..., 0]
    else:
        order = np.argsort(rng.random((rows, cols // 4, 4)), axis=-1)
        keep = np.zeros((rows, cols // 4, 4), dtype=bool)
        np.put_along_axis(keep, order[..., :2], True, axis=-1)
    keep = keep.reshape(shape) & (rng.random(shape) < 0.85)
    return np.where(keep, v, np.zeros((), dtype)).astype(dtype)


def all_patterns(shape: tuple[int, int], dtype: np.dtype, shift: int = 0) -> np.ndarray:
    """Every group's non-zero pattern cycles through all 16 patterns (each pattern at many
    rows and group positions); values 1..7 times a sign, so no -0.0."""
    rows, cols = shape
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    pattern = (r * 5 + (c // 4) * 3 + shift) % 16
    on = (pattern >> (c % 4)) & 1
    v = (1 + (r * cols + c) % 7) * np.where((r + c) % 3 == 0, -1, 1) * on
    return v.astype(dtype)


# ---------------------------------------------------------------- torch-free exact cases


def test_code_table_matches_torch_comment() -> None:
    for pattern, code in TORCH_TABLE.items():
        assert cut.code_of_pattern([bool(b) for b in pattern]) == code, pattern
    assert sorted(set(TORCH_TABLE.values())) == sorted(cut.LEGAL_CODES_2_4)


def test_canonical_codes_hand_computed() -> None:
    dense = np.array(
        [
            [1, 2, 0, 0, 0, 0, 0, 5, 0, 3, 0, 4],
            [0, 0, 0, 0, 7, 0, 8, 0, 0, 1, 1, 0],
            [9, 0, 0, 0, 0, 6, 0, 0, 1, 0, 0, 1],
        ],
        dtype=np.float32,
    )
    codes = cut.canonical_codes_2_4(dense)
    # row 0: [1,1,0,0] -> 0100, [0,0,0,1] -> 1110, [0,1,0,1] -> 1101 (odd last group: high 0)
    # row 1: [0,0,0,0] -> 1110, [1,0,1,0] -> 1000, [0,1,1,0] -> 1001
    # row 2: [1,0,0,0] -> 1000, [0,1,0,0] -> 1001, [1,0,0,1] -> 1100
    want = np.array([[0xE4, 0x0D], [0x8E, 0x09], [0x98, 0x0C]], dtype=np.uint8)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, want)
    values, codes2 = cut.canonical_from_dense(dense)
    np.testing.assert_array_equal(codes2, want)
    want_values = [[1, 2, 0, 5, 3, 4], [0, 0, 7, 8, 1, 1], [9, 0, 6, 0, 1, 1]]
    np.testing.assert_array_equal(values, np.array(want_values, dtype=np.float32))
    np.testing.assert_array_equal(cut.canonical_to_dense(values, codes), dense)


def test_canonical_codes_negative_zero_and_nan() -> None:
    # -0.0 counts as zero, NaN as non-zero (torch: x != 0); values keep their exact bits
    nan = np.array([0x7C01], dtype=np.uint16).view(np.float16)[0]  # a signalling NaN
    dense = np.array([[-0.0, nan, 0.0, 2.0]], dtype=np.float16)
    values, codes = cut.canonical_from_dense(dense)
    assert codes[0, 0] == 0b1101  # [0, 1, 0, 1]
    np.testing.assert_array_equal(bits(values), bits(np.array([[nan, 2.0]], np.float16)))


def test_golden_reorder_offsets_from_torch() -> None:
    # torch._calculate_meta_reordering_scatter_offsets(32, 2, int16) and (16, 2, int32)
    want16 = [0, 2, 8, 10, 16, 18, 24, 26, 32, 34, 40, 42, 48, 50, 56, 58]
    want16 += [1, 3, 9, 11, 17, 19, 25, 27, 33, 35, 41, 43, 49, 51, 57, 59]
    want16 += [4, 6, 12, 14, 20, 22, 28, 30, 36, 38, 44, 46, 52, 54, 60, 62]
    want16 += [5, 7, 13, 15, 21, 23, 29, 31, 37, 39, 45, 47, 53, 55, 61, 63]
    np.testing.assert_array_equal(cut._scatter_offsets(32, 2, 2), want16)
    want32 = list(range(0, 32, 2)) + list(range(1, 32, 2))
    np.testing.assert_array_equal(cut._scatter_offsets(16, 2, 4), want32)


@pytest.mark.parametrize(
    ("rows", "cols", "itemsize"), [(32, 2, 2), (64, 6, 2), (16, 4, 4), (48, 8, 4)]
)
def test_reorder_is_a_permutation(rows: int, cols: int, itemsize: int) -> None:
    off = cut._scatter_offsets(rows, cols, itemsize)
    np.testing.assert_array_equal(np.sort(off), np.arange(rows * cols))


# meta words torch 2.13 returned for all_patterns((32, 32), float16) and ((16, 64), int8)
GOLDEN_F16 = [-14002, -29362, -30386, -12978, -14002, -29362, -30386, -12978]
GOLDEN_F16 += [-11032, -27412, -11032, -27412, -11032, -27412, -11032, -27412]
GOLDEN_F16 += [20173, 20105, 20169, 20109, 20173, 20105, 20169, 20109]
GOLDEN_F16 += [-5996, -4908, -5932, -4972, -5996, -4908, -5932, -4972]
GOLDEN_F16 += [-12978, -30386, -14002, -29362, -12978, -30386, -14002, -29362]
GOLDEN_F16 += [-27412, -11032, -11032, -27412, -27412, -11032, -11032, -27412]
GOLDEN_F16 += [20109, 20169, 20173, 20105, 20109, 20169, 20173, 20105]
GOLDEN_F16 += [-4972, -5932, -5996, -4908, -4972, -5932, -5996, -4908]
GOLDEN_I8 = [-1991325362, -850490034, -850490034, -1991325362, -722938648, -1796434708]
GOLDEN_I8 += [-1796434708, -722938648, 1321815757, 1317883529, 1317883529, 1321815757]
GOLDEN_I8 += [-388700012, -325784364, -325784364, -388700012, -917582514, -1924232882]
GOLDEN_I8 += [-1924232882, -917582514, -722955028, -1796418328, -1796418328, -722955028]
GOLDEN_I8 += [1322077837, 1317621449, 1317621449, 1322077837, -392893292, -321591084]
GOLDEN_I8 += [-321591084, -392893292]


@pytest.mark.parametrize(
    ("dtype", "shape", "golden"), [(F16, (32, 32), GOLDEN_F16), (I8, (16, 64), GOLDEN_I8)]
)
def test_golden_meta_from_torch(dtype: np.dtype, shape: tuple[int, int], golden: list[int]) -> None:
    dense = all_patterns(shape, dtype)
    sparse, meta = cut.from_dense_cutlass(dense, strict=False)
    np.testing.assert_array_equal(meta.reshape(-1), golden)
    # the values are those the codes point at (torch's table keeps 2 of 3 or 4)
    values, _ = cut.canonical_from_dense(dense, strict=False)
    np.testing.assert_array_equal(sparse, values)


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=CASE_IDS)
def test_round_trips(dtype: np.dtype, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    dense = random_2_4(rng, shape, dtype)
    before = dense.copy()
    sparse, meta = cut.from_dense_cutlass(dense)
    np.testing.assert_array_equal(bits(dense), bits(before))  # input untouched
    assert sparse.shape == (shape[0], shape[1] // 2)
    assert sparse.dtype == dtype
    per_word = 32 if dtype == I8 else (8 if dtype == F32 else 16)
    assert meta.shape == (shape[0], shape[1] // per_word)
    assert meta.dtype == (np.int32 if dtype == I8 else np.int16)
    np.testing.assert_array_equal(bits(cut.to_dense_cutlass(sparse, meta)), bits(dense))
    values, codes = cut.canonical_from_dense(dense)
    assert codes.shape == (shape[0], shape[1] // 8)
    np.testing.assert_array_equal(bits(cut.canonical_to_dense(values, codes)), bits(dense))
    s2, m2 = cut.cutlass_from_canonical(values, codes)
    np.testing.assert_array_equal(bits(s2), bits(sparse))
    np.testing.assert_array_equal(m2, meta)
    v2, c2 = cut.canonical_from_cutlass(sparse, meta)
    np.testing.assert_array_equal(bits(v2), bits(values))
    np.testing.assert_array_equal(c2, codes)
    np.testing.assert_array_equal(cut.canonical_codes_2_4(dense), codes)


def test_values_keep_exact_bits() -> None:
    # NaN payloads, infinities and subnormals pass through unchanged
    raw = np.array([0x7C01, 0xFE03, 0x7C00, 0x0001] * 8, dtype=np.uint16)
    dense = np.zeros((32, 32), dtype=np.float16)
    dense[:, 0:2] = raw.view(np.float16)[:32, None]
    dense[:, 5] = raw.view(np.float16)[::-1][:32]
    sparse, meta = cut.from_dense_cutlass(dense)
    np.testing.assert_array_equal(bits(cut.to_dense_cutlass(sparse, meta)), bits(dense))


def test_non_contiguous_input_is_read() -> None:
    dense = random_2_4(np.random.default_rng(3), (64, 64), F16)
    wide = np.zeros((64, 128), dtype=np.float16)
    wide[:, ::2] = dense
    s1, m1 = cut.from_dense_cutlass(dense)
    s2, m2 = cut.from_dense_cutlass(wide[:, ::2])
    np.testing.assert_array_equal(bits(s1), bits(s2))
    np.testing.assert_array_equal(m1, m2)


@pytest.mark.parametrize("dtype", [F16, BF16, I8])
def test_strict_refuses_more_than_two(dtype: np.dtype) -> None:
    shape = (32, 64) if dtype != I8 else (16, 64)
    dense = all_patterns(shape, dtype)
    with pytest.raises(
        ValueError, match=r"dense: not 2:4: row 0, columns 20\.\.23 hold 4 non-zeros"
    ):
        cut.from_dense_cutlass(dense)
    with pytest.raises(ValueError, match="dense: not 2:4"):
        cut.canonical_codes_2_4(dense)
    cut.from_dense_cutlass(dense, strict=False)  # torch's behaviour: no error


def test_strict_fp32_is_1_2() -> None:
    dense = np.zeros((32, 16), dtype=np.float32)
    dense[3, 4:6] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"dense: not 1:2: row 3, columns 4\.\.5"):
        cut.from_dense_cutlass(dense)
    sparse, _meta = cut.from_dense_cutlass(dense, strict=False)  # keeps the first, like torch
    assert sparse[3, 2] == 1.0
    # a 2:4 fp32 matrix that is not 1:2 cannot go to the CUTLASS layout from canonical either
    values, codes = cut.canonical_from_dense(dense)
    with pytest.raises(ValueError, match="values: not 1:2"):
        cut.cutlass_from_canonical(values, codes)


# ------------------------------------------------------------------------- bad input


def test_bad_types_and_dtypes() -> None:
    with pytest.raises(TypeError, match=r"dense: expected a numpy\.ndarray, got list"):
        cut.from_dense_cutlass([[0.0] * 32] * 32)  # type: ignore[arg-type]
    for dtype in (np.float64, np.int16, np.uint8, np.bool_):
        with pytest.raises(sf.DTypeError, match="dense: expected dtype float16"):
            cut.from_dense_cutlass(np.zeros((32, 32), dtype=dtype))
        with pytest.raises(sf.DTypeError, match="dense: expected dtype"):
            cut.canonical_codes_2_4(np.zeros((32, 32), dtype=dtype))
    sparse, meta = cut.from_dense_cutlass(np.zeros((32, 32), np.float16))
    with pytest.raises(
        sf.DTypeError, match="meta: expected dtype int16 for float16 values, got int32"
    ):
        cut.to_dense_cutlass(sparse, meta.astype(np.int32))
    with pytest.raises(sf.DTypeError, match="meta: expected dtype int16"):
        cut.to_dense_cutlass(sparse, meta.view(np.uint16))
    with pytest.raises(sf.DTypeError, match="codes: expected dtype uint8"):
        cut.cutlass_from_canonical(sparse, meta)


@pytest.mark.parametrize(
    ("shape", "dtype", "msg"),
    [
        ((32,), F16, "dense: expected a 2-D array"),
        ((2, 32, 32), F16, "dense: expected a 2-D array"),
        ((0, 32), F16, "dense: expected a non-empty array"),
        ((16, 32), F16, r"rows % 32 == 0 and cols % 32 == 0, got rows=16, cols=32"),
        ((32, 16), F16, r"cols % 32 == 0, got rows=32, cols=16"),  # odd meta columns
        ((32, 48), BF16, r"cols % 32 == 0, got rows=32, cols=48"),
        ((8, 64), I8, r"rows % 16 == 0 and cols % 64 == 0"),
        ((16, 32), I8, r"rows % 16 == 0 and cols % 64 == 0"),
        ((16, 16), F32, r"rows % 32 == 0 and cols % 16 == 0"),
        ((32, 8), F32, r"rows % 32 == 0 and cols % 16 == 0"),
    ],
)
def test_bad_shapes(shape: tuple[int, ...], dtype: np.dtype, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        cut.from_dense_cutlass(np.zeros(shape, dtype=dtype))


def test_bad_canonical_shapes() -> None:
    with pytest.raises(ValueError, match="dense: cols=6 is not a multiple of 4"):
        cut.canonical_codes_2_4(np.zeros((2, 6), np.float32))
    values = np.zeros((32, 16), np.float16)
    codes = np.full((32, 4), 0xEE, np.uint8)
    with pytest.raises(ValueError, match=r"codes: expected shape \(32, 4\) for values"):
        cut.cutlass_from_canonical(values, codes[:, :3])
    with pytest.raises(ValueError, match="values: expected an even number of columns"):
        cut.canonical_to_dense(np.zeros((2, 3), np.float16), codes[:2, :1])
    with pytest.raises(ValueError, match=r"values: .* rows % 32 == 0 and 2 \* cols % 32 == 0"):
        cut.cutlass_from_canonical(values[:16], codes[:16])
    # an odd number of groups: the unused high nibble must be 0
    with pytest.raises(ValueError, match="unused high nibble"):
        cut.canonical_to_dense(np.zeros((1, 2), np.float16), np.array([[0xEE]], np.uint8))


def test_bad_meta_shape() -> None:
    sparse, meta = cut.from_dense_cutlass(np.zeros((64, 64), np.float16))
    with pytest.raises(ValueError, match=r"meta: expected shape \(64, 4\)"):
        cut.to_dense_cutlass(sparse, meta[:, :2])
    with pytest.raises(ValueError, match=r"meta: expected shape \(64, 4\)"):
        cut.to_dense_cutlass(sparse, meta[:32])
    with pytest.raises(ValueError, match=r"sparse: .* rows % 32 == 0"):
        cut.to_dense_cutlass(sparse[:16], meta[:16])


@pytest.mark.parametrize("dtype", [F16, I8, F32])
def test_illegal_meta_codes(dtype: np.dtype) -> None:
    shape = {F16: (32, 32), I8: (16, 64), F32: (32, 16)}[dtype]
    sparse, meta = cut.from_dense_cutlass(np.zeros(shape, dtype))
    illegal = [0b0000, 0b0101, 0b0011, 0b1111, 0b0001]
    if dtype == F32:
        illegal.append(0b1000)  # a legal 2:4 code splits an fp32 value into two halves
    for code in illegal:
        bad = meta.copy()
        flat = bad.reshape(-1).view(np.uint8)
        flat[5] = (flat[5] & 0xF0) | code
        with pytest.raises(ValueError, match=f"meta: illegal 2:4 code {code:#06b}"):
            cut.to_dense_cutlass(sparse, bad)
        with pytest.raises(ValueError, match="meta: illegal"):
            cut.canonical_from_cutlass(sparse, bad)
    codes = np.full((shape[0], shape[1] // 8), 0xEE, np.uint8)
    codes[1, 1] = 0x3E
    values = np.zeros((shape[0], shape[1] // 2), dtype)
    with pytest.raises(
        ValueError, match=r"codes: illegal 2:4 code 0b0011 for row 1, columns 12\.\.15"
    ):
        cut.cutlass_from_canonical(values, codes)


# -------------------------------------------------------------- against torch itself


def _torch() -> Any:
    return pytest.importorskip("torch")


def to_torch(a: np.ndarray) -> Any:
    torch = _torch()
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def from_torch(t: Any) -> np.ndarray:
    torch = _torch()
    if t.dtype == torch.bfloat16:
        return np.asarray(t.view(torch.int16).numpy()).view(ml_dtypes.bfloat16)
    return np.asarray(t.numpy())


def torch_from_dense(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    s, m = conv.sparse_semi_structured_from_dense_cutlass(to_torch(dense))
    return from_torch(s), from_torch(m)


def torch_to_dense(sparse: np.ndarray, meta: np.ndarray) -> np.ndarray:
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    return from_torch(
        conv.sparse_semi_structured_to_dense_cutlass(to_torch(sparse), to_torch(meta))
    )


def assert_same_as_torch(dense: np.ndarray, strict: bool) -> None:
    sparse, meta = cut.from_dense_cutlass(dense, strict=strict)
    t_sparse, t_meta = torch_from_dense(dense)
    assert t_sparse.dtype == sparse.dtype
    assert t_meta.dtype == meta.dtype
    np.testing.assert_array_equal(bits(sparse), bits(t_sparse))
    np.testing.assert_array_equal(meta, t_meta)
    ours = cut.to_dense_cutlass(sparse, meta)
    theirs = torch_to_dense(t_sparse, t_meta)
    if dense.dtype != F32:
        np.testing.assert_array_equal(bits(ours), bits(theirs))
        return
    # torch scatters an fp32 as two halves and (on CPU) quiets a low half that is an fp16
    # signalling NaN, flipping bit 9; elsewhere it agrees with ours, which copies bits
    diff = bits(ours) ^ bits(theirs)
    low = bits(ours) & 0xFFFF
    snan_low = ((low & 0x7C00) == 0x7C00) & ((low & 0x03FF) != 0) & ((low & 0x0200) == 0)
    assert np.all((diff == 0) | ((diff == 0x200) & snan_low))


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=CASE_IDS)
def test_random_2_4_matches_torch(dtype: np.dtype, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7 + shape[0] + shape[1])
    assert_same_as_torch(random_2_4(rng, shape, dtype), strict=True)


@pytest.mark.parametrize(("dtype", "shape"), CASES, ids=CASE_IDS)
def test_arbitrary_matrices_match_torch(dtype: np.dtype, shape: tuple[int, int]) -> None:
    """Any density (incl. > 2 non-zeros per group) with strict=False is torch exactly."""
    rng = np.random.default_rng(11 + shape[0] * shape[1])
    for density in (0.0, 0.3, 0.6, 1.0):
        v = random_values(rng, shape, dtype)
        keep = rng.random(shape) < density
        assert_same_as_torch(np.where(keep, v, np.zeros((), dtype)).astype(dtype), strict=False)


@pytest.mark.parametrize("dtype", [F16, BF16, I8])
def test_every_group_pattern_matches_torch(dtype: np.dtype) -> None:
    shape = (32, 64) if dtype != I8 else (32, 128)
    for shift in range(16):
        dense = all_patterns(shape, dtype, shift)
        assert_same_as_torch(dense, strict=False)


def test_every_fp32_pair_pattern_matches_torch() -> None:
    rows, cols = 32, 32
    c = np.arange(cols)[None, :]
    r = np.arange(rows)[:, None]
    pattern = (r + c // 2) % 4  # 0: none, 1: first, 2: second, 3: both
    on = ((pattern >> (c % 2)) & 1).astype(bool)
    dense = np.where(on, (1 + (r + c) % 5).astype(np.float32), np.float32(0))
    assert_same_as_torch(dense, strict=False)
    assert_same_as_torch(np.where(pattern == 3, 0, dense).astype(np.float32), strict=True)


def test_canonical_codes_equal_torch_meta_nibbles() -> None:
    """The canonical codes are the nibbles of torch's meta before reordering."""
    dense = all_patterns((64, 64), F16, 5)
    codes = cut.canonical_codes_2_4(dense, strict=False)
    _, t_meta = torch_from_dense(dense)
    unreordered = cut._unreorder(t_meta)
    np.testing.assert_array_equal(unreordered.view(np.uint8), codes)


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_nmtensor_canonical_codes_are_these(dtype: np.dtype) -> None:
    """sparseforge.format.NMTensor's canonical 2:4 layout is the one defined here."""
    fmt = pytest.importorskip("sparseforge.format")
    if not hasattr(fmt, "NMTensor"):
        pytest.skip("sparseforge.format.NMTensor is not there yet")
    for shift in range(16):
        dense = all_patterns((8, 64), dtype, shift)
        # keep at most 2 non-zeros per group (the 3- and 4-patterns lose their last ones)
        groups = dense.reshape(8, 16, 4).copy()
        rank = np.cumsum(groups != 0, axis=-1)
        groups[rank > 2] = 0
        dense = groups.reshape(8, 64)
        t = fmt.NMTensor.from_dense(dense, n=2, m=4)
        values, codes = cut.canonical_from_dense(dense)
        np.testing.assert_array_equal(t.codes, codes)
        np.testing.assert_array_equal(bits(t.values), bits(values))
