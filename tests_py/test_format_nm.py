"""sf.format.NMTensor: layouts against numpy oracles, kernels against float64 references."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sparseforge as sf
from sparseforge.format import NMTensor

PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8), (1, 3), (3, 7), (5, 16)]

# PyTorch's 2:4 codes (idx0 | idx1 << 2) for every group of 4 with at most 2 non-zeros, from
# the table in torch/sparse/_semi_structured_conversions.py. Keys are written column 0 first
# (the leftmost bit is column 0), as in that table.
TORCH_24 = {
    0b1100: 0b0100, 0b1010: 0b1000, 0b0110: 0b1001, 0b1001: 0b1100, 0b0101: 0b1101,
    0b0011: 0b1110, 0b0000: 0b1110, 0b0001: 0b1110, 0b0010: 0b1110, 0b0100: 0b1001,
    0b1000: 0b1000,
}  # fmt: skip


def random_nm(rng: np.random.Generator, rows: int, cols: int, n: int, m: int, dtype) -> np.ndarray:
    """n:m weights with ~20% of groups degenerate (fewer non-zeros, some all-zero)."""
    W = reference.weights(rng, (rows, cols), dtype).astype(np.float32)
    W[W == 0] = 0.5
    groups = W.reshape(rows, cols // m, m)
    order = np.argsort(rng.random(groups.shape), axis=-1)
    kept = np.full(groups.shape[:2], n)
    kept[rng.random(kept.shape) < 0.1] = max(n - 1, 0)
    kept[rng.random(kept.shape) < 0.1] = 0
    keep = order < kept[..., None]
    return reference.cast_to(np.where(keep, groups, 0).reshape(rows, cols), dtype)


def canonical_oracle(W: np.ndarray, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The canonical layout from docs/formats.md, computed the slow way."""
    rows, cols = W.shape
    bits = 1 if m == 2 else 2 if m <= 4 else 3 if m <= 8 else 4
    slots = cols // m * n
    values = np.zeros((rows, slots), W.dtype)
    row_bytes = (slots * bits + 7) // 8
    codes = np.zeros((rows, row_bytes), np.uint8)
    for r in range(rows):
        bitpos = 0
        for g in range(cols // m):
            grp = W[r, g * m : (g + 1) * m].astype(np.float32)
            nz = [i for i in range(m) if grp[i] != 0]
            if n == 2 and m == 4:
                code = TORCH_24[sum(1 << (3 - i) for i in nz)]
                idx = [code & 3, code >> 2]
            else:
                zeros = [i for i in range(m) if grp[i] == 0]
                idx = sorted(nz + zeros[: n - len(nz)])
            for j, i in enumerate(idx):
                values[r, g * n + j] = W[r, g * m + i]
                for b in range(bits):
                    if (i >> b) & 1:
                        codes[r, (bitpos + b) // 8] |= 1 << ((bitpos + b) % 8)
                bitpos += bits
    return values, codes


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_round_trip_and_canonical_layout(rng, dtype, n, m):
    for rows, groups in [(1, 1), (7, 3), (9, 5), (17, 2)]:
        W = random_nm(rng, rows, groups * m, n, m, dtype)
        t = NMTensor.from_dense(W, n, m)
        t.validate()
        assert t.shape == W.shape
        assert t.dtype == W.dtype
        assert (t.n, t.m) == (n, m)
        back = t.to_dense()
        assert back.dtype == W.dtype
        np.testing.assert_array_equal(reference.bits(back), reference.bits(W + 0))  # -0 -> +0
        values, codes = canonical_oracle(W, n, m)
        np.testing.assert_array_equal(reference.bits(t.values), reference.bits(values))
        np.testing.assert_array_equal(t.codes, codes)
        t2 = NMTensor.from_components(t.values, t.codes, shape=W.shape, n=n, m=m)
        np.testing.assert_array_equal(reference.bits(t2.to_dense()), reference.bits(back))


def test_two_four_codes_match_torch_table(rng):
    # every boolean pattern of a group of 4 with at most 2 non-zeros, as one row
    pats = [p for p in range(16) if bin(p).count("1") <= 2]
    W = np.array(
        [[1.0 + i if (p >> (3 - i)) & 1 else 0.0 for p in pats for i in range(4)]], np.float32
    )
    codes = NMTensor.from_dense(W, 2, 4).codes
    nibbles = np.stack([codes & 0xF, codes >> 4], axis=-1).reshape(-1)[: len(pats)]
    assert [int(c) for c in nibbles] == [TORCH_24[p] for p in pats]


def test_strict_and_magnitude(rng, dtype):
    W = reference.weights(rng, (13, 32), dtype, kind="ints")
    with pytest.raises(ValueError, match=r"W: row \d+, columns \d+\.\.\d+ hold \d non-zeros"):
        NMTensor.from_dense(W, 2, 4)
    t = NMTensor.from_dense(W, 2, 4, prune="magnitude")
    expected = sf.prune.magnitude(W, pattern="2:4").weight
    np.testing.assert_array_equal(reference.bits(t.to_dense()), reference.bits(expected + 0))
    t2 = NMTensor.from_dense(W, "2:4", prune="magnitude")
    assert t2.pattern == "2:4"


def test_nbytes_really_shrink():
    W = sf.prune.magnitude(np.ones((4096, 4096), np.float32), pattern="2:4").weight
    t = NMTensor.from_dense(W, 2, 4)
    # values 0.5 x 4 B + a 2-bit code per kept value = 2.125 B per weight, in both layouts
    assert t.nbytes == 4096 * 4096 * 2 + 4096 * 4096 // 2 * 2 // 8
    assert t.canonical_nbytes == 4096 * 4096 * 2 + 4096 * 4096 // 8
    assert t.nbytes / W.nbytes == pytest.approx(0.53125)


def reference_product(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    return X.astype(np.float64) @ W.astype(np.float32).astype(np.float64).T


def _tol(dtype) -> float:
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-2


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_gemv_gemm_against_float64(rng, dtype, simd_level, n, m):
    for rows, groups in [(1, 1), (13, 7), (40, 33)]:
        cols = groups * m
        W = random_nm(rng, rows, cols, n, m, dtype)
        t = NMTensor.from_dense(W, n, m)
        for batch in (1, 2, 4, 7, 9, 33):
            X = rng.standard_normal((batch, cols), dtype=np.float32)
            ref = reference_product(W, X)
            scale = np.abs(X).astype(np.float64) @ np.abs(W.astype(np.float32)).astype(np.float64).T
            out = np.full((batch, rows), np.nan, np.float32)
            Y = sf.kernels.gemm(t, X, out=out, num_threads=2)
            assert Y is out
            assert np.isfinite(Y).all()
            assert np.all(np.abs(Y - ref) <= 1e-6 * scale.max() + 1e-30)
            assert np.array_equal(Y, sf.kernels.gemm(t, X, num_threads=1))
            y = sf.kernels.gemv(t, X[0], out=np.full(rows, np.nan, np.float32))
            assert np.all(np.abs(y - ref[0]) <= 1e-6 * scale.max() + 1e-30)
            # relative error against the dtype's tolerance, the yardstick
            err = np.abs(Y - ref).max() / max(np.abs(ref).max(), 1e-30)
            assert err <= _tol(dtype)


def test_kernels_threads_identical(rng):
    W = random_nm(rng, 1003, 4096, 2, 4, np.dtype(np.float32))
    t = NMTensor.from_dense(W, 2, 4)
    x = rng.standard_normal(4096, dtype=np.float32)
    y1 = sf.kernels.gemv(t, x, num_threads=1)
    for threads in (2, 3, 8):
        assert np.array_equal(y1, sf.kernels.gemv(t, x, num_threads=threads))
    X = rng.standard_normal((40, 4096), dtype=np.float32)
    Y1 = sf.kernels.gemm(t, X, num_threads=1)
    assert np.array_equal(Y1, sf.kernels.gemm(t, X, num_threads=2))


def test_bad_input(rng):
    W = random_nm(rng, 8, 16, 2, 4, np.dtype(np.float32))
    t = NMTensor.from_dense(W, 2, 4)
    with pytest.raises(ValueError, match="in_features=16 is not a multiple of m=3"):
        NMTensor.from_dense(W, 1, 3)
    with pytest.raises(ValueError, match="1 <= n < m <= 16"):
        NMTensor.from_dense(W, 4, 4)
    with pytest.raises(ValueError, match="1 <= n < m <= 16"):
        NMTensor.from_dense(np.zeros((2, 32), np.float32), 1, 32)
    with pytest.raises(ValueError, match="prune"):
        NMTensor.from_dense(W, 2, 4, prune="wanda")
    bad = W.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="W"):
        NMTensor.from_dense(bad, 2, 4)
    with pytest.raises(TypeError):
        NMTensor.from_dense(W.astype(np.float64), 2, 4)
    with pytest.raises(ValueError, match="empty"):
        NMTensor.from_dense(np.zeros((0, 8), np.float32), 2, 4)
    with pytest.raises(ValueError, match="x: expected shape"):
        sf.kernels.gemv(t, np.zeros(15, np.float32))
    with pytest.raises(TypeError, match="x"):
        sf.kernels.gemv(t, np.zeros(16, np.float64))
    with pytest.raises(ValueError, match="out: expected shape"):
        sf.kernels.gemv(t, np.zeros(16, np.float32), out=np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="X: expected 16 columns"):
        sf.kernels.gemm(t, np.zeros((2, 12), np.float32))
    buf = np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        t._sf_gemv(buf[:16], buf[8:16], None)
    # corrupt canonical codes: a duplicate index, an index out of its group
    values, codes = t.values, t.codes
    codes_dup = codes.copy()
    codes_dup[3, 0] = 0x55
    with pytest.raises(ValueError, match="codes: row 3, group 0"):
        NMTensor.from_components(values, codes_dup, shape=(8, 16), n=2, m=4)
    with pytest.raises(ValueError, match="codes: shape"):
        NMTensor.from_components(values, codes[:, :1], shape=(8, 16), n=2, m=4)
    with pytest.raises(TypeError, match="codes"):
        NMTensor.from_components(values, codes.astype(np.int8), shape=(8, 16), n=2, m=4)
    v3 = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="below m=3"):
        NMTensor.from_components(v3, np.array([[3]], np.uint8), shape=(1, 3), n=1, m=3)


def test_state_protocol_round_trip(rng, dtype):
    W = random_nm(rng, 11, 24, 3, 8, dtype)
    t = NMTensor.from_dense(W, 3, 8)
    meta, arrays = t._sf_state()
    assert all(isinstance(v, str) for v in meta.values())
    t2 = NMTensor._sf_from_state(meta, arrays)
    np.testing.assert_array_equal(reference.bits(t2.to_dense()), reference.bits(t.to_dense()))
    with pytest.raises(ValueError, match="dtype"):
        NMTensor._sf_from_state(
            {**meta, "dtype": "float16" if dtype != np.float16 else "float32"}, arrays
        )
    with pytest.raises(ValueError, match="missing"):
        NMTensor._sf_from_state(meta, {"values": arrays["values"]})


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32"])
def test_torch_semi_structured_round_trip(rng, dtype_name):
    torch = pytest.importorskip("torch")
    conv = pytest.importorskip("torch.sparse._semi_structured_conversions")
    dtype = np.dtype(reference.BF16 if dtype_name == "bfloat16" else dtype_name)
    n, m = (1, 2) if dtype_name == "float32" else (2, 4)
    W = random_nm(rng, 64, 64, n, m, dtype)
    t = NMTensor.from_dense(W, n, m)
    sparse, meta = sf.format.to_torch_semi_structured(t)

    def to_torch(a):
        if a.dtype == reference.BF16:
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)

    ts, tm = conv.sparse_semi_structured_from_dense_cutlass(to_torch(W))
    assert np.array_equal(
        sparse.view(np.uint8), ts.view(torch.uint8).numpy().reshape(sparse.view(np.uint8).shape)
    )
    assert np.array_equal(meta, tm.numpy())
    t2 = sf.format.from_torch_semi_structured(sparse, meta)
    assert t2.pattern == "2:4"
    np.testing.assert_array_equal(reference.bits(t2.to_dense()), reference.bits(t.to_dense()))


def test_torch_semi_structured_bad_input(rng):
    W = random_nm(rng, 32, 32, 2, 8, np.dtype(np.float16))
    with pytest.raises(ValueError, match="no PyTorch semi-structured layout"):
        sf.format.to_torch_semi_structured(NMTensor.from_dense(W, 2, 8))
    with pytest.raises(TypeError, match="NMTensor"):
        sf.format.to_torch_semi_structured(W)  # type: ignore[arg-type]
