"""BitmapTensor and CSRTensor (sparseforge._unstructured).

Layouts are checked against numpy readings of docs/formats.md (``np.packbits`` with
``bitorder="little"``, ``np.nonzero``), kernels against float64 numpy on every SIMD level
(awkward shapes, outputs poisoned with NaN, 1 vs 2 threads bitwise), and every kind of
corrupt component against a clear ValueError.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import sparseforge as sf
from reference import BF16, DTYPES, F16, F32
from sparseforge._unstructured import BitmapTensor, CSRTensor

CLASSES = (BitmapTensor, CSRTensor)
SHAPES = [
    (1, 1),
    (1, 7),
    (3, 8),
    (2, 9),
    (5, 15),
    (4, 16),
    (7, 17),
    (17, 1),
    (6, 31),
    (9, 33),
    (13, 43),
    (43, 129),
    (3, 500),
]


def sparse_weight(
    rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype, sparsity: float
) -> np.ndarray:
    """Normal weights with a fraction set to zero, a fifth of those -0.0."""
    W = rng.standard_normal(shape).astype(np.float32)
    zero = rng.random(shape) < sparsity
    W[zero] = 0.0
    W[zero & (rng.random(shape) < 0.2)] = -0.0
    return W.astype(dtype)


def stored(W: np.ndarray) -> np.ndarray:
    return ref.to_f32(W) != 0


def reference_matmul(W: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X W^T in float64, sum |W X| per element as the rounding scale)."""
    Wd = ref.to_f32(W).astype(np.float64)
    Xd = X.astype(np.float64)
    return Xd @ Wd.T, np.abs(Xd) @ np.abs(Wd).T


def assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray, dtype: np.dtype) -> None:
    assert not np.isnan(got).any(), "output not fully written"
    # The project's rule (max error relative to the largest output) ...
    tol = 1e-5 if dtype == F32 else 1e-2
    denom = max(float(np.abs(want).max()), 1e-30)
    assert float(np.abs(got - want).max()) / denom <= tol
    # ... and a stricter one: stored values are exact in fp32, so only the fp32 summation
    # differs, whatever the storage dtype.
    assert (np.abs(got - want) <= 1e-5 * scale + 1e-30).all()


def build(cls: Any, W: np.ndarray, **kw: Any) -> Any:
    return cls.from_dense(W, **kw)


# --- layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_layout_matches_the_spec(
    rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, int], sparsity: float
) -> None:
    W = sparse_weight(rng, shape, dtype, sparsity)
    keep = stored(W)
    counts = keep.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    b = BitmapTensor.from_dense(W)
    np.testing.assert_array_equal(b.bitmap, np.packbits(keep, axis=1, bitorder="little"))
    assert b.bitmap.shape == (shape[0], (shape[1] + 7) // 8)
    np.testing.assert_array_equal(b.row_offsets, offsets)
    np.testing.assert_array_equal(ref.bits(b.values), ref.bits(W[keep]))
    assert b.values.dtype == dtype
    assert b.row_offsets.dtype == np.int64

    c = CSRTensor.from_dense(W)
    np.testing.assert_array_equal(c.indptr, offsets)
    np.testing.assert_array_equal(c.indices, np.nonzero(keep)[1])
    np.testing.assert_array_equal(ref.bits(c.values), ref.bits(W[keep]))
    assert c.indices.dtype == np.int32
    assert c.indptr.dtype == np.int64

    nnz = int(keep.sum())
    size = dtype.itemsize
    for t in (b, c):
        assert t.shape == shape
        assert t.dtype == dtype
        assert t.nnz == nnz
        assert t.density == pytest.approx(nnz / W.size)
        dense = t.to_dense()
        assert dense.dtype == dtype
        assert dense.shape == shape
        # W back, with -0.0 (never stored) as +0.0
        np.testing.assert_array_equal(ref.bits(dense), ref.bits(np.where(keep, W, dtype.type(0))))
    rows, cols = shape
    assert b.nbytes == rows * ((cols + 7) // 8) + nnz * size + 8 * (rows + 1) + 64
    assert c.nbytes == 8 * (rows + 1) + 4 * (nnz + 16) + nnz * size + 64


def test_minus_zero_is_not_stored_but_a_masked_zero_is() -> None:
    W = np.array([[0.0, -0.0, 1.0, 0.0]], dtype=np.float32)
    for cls in CLASSES:
        assert cls.from_dense(W).nnz == 1
        t = cls.from_dense(W, mask=np.array([[True, True, True, False]]))
        assert t.nnz == 3
        np.testing.assert_array_equal(ref.bits(t.values), ref.bits(W[0, :3]))


def test_mask_stores_exactly_the_masked_positions(
    rng: np.random.Generator, dtype: np.dtype
) -> None:
    W = sparse_weight(rng, (11, 37), dtype, 0.5)
    mask = rng.random(W.shape) < 0.4
    W[~mask & (rng.random(W.shape) < 0.3)] = np.nan  # never read: not stored
    b = BitmapTensor.from_dense(W, mask=mask)
    c = CSRTensor.from_dense(W, mask=mask)
    np.testing.assert_array_equal(b.bitmap, np.packbits(mask, axis=1, bitorder="little"))
    np.testing.assert_array_equal(c.indices, np.nonzero(mask)[1])
    for t in (b, c):
        assert t.nnz == mask.sum()
        np.testing.assert_array_equal(ref.bits(t.values), ref.bits(W[mask]))


def test_row_slices_are_read_without_a_copy(rng: np.random.Generator) -> None:
    big = sparse_weight(rng, (9, 40), F32, 0.5)
    W = big[2:7, 3:30]  # a view with a row stride
    for cls in CLASSES:
        np.testing.assert_array_equal(cls.from_dense(W).to_dense(), np.where(W == 0, 0, W))


# --- errors on construction -------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_raise(cls: Any, dtype: np.dtype, bad: float) -> None:
    W = np.ones((3, 5), dtype=np.float32)
    W[1, 2] = bad
    with pytest.raises(ValueError, match=r"W: expected finite values.*\(1, 2\)"):
        cls.from_dense(W.astype(dtype))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_bad_dense_inputs_raise(cls: Any) -> None:
    with pytest.raises(sf.DTypeError, match="W: expected dtype"):
        cls.from_dense(np.ones((2, 2)))  # float64
    with pytest.raises(TypeError, match=r"W: expected a numpy\.ndarray"):
        cls.from_dense([[1.0]])
    with pytest.raises(ValueError, match="W: expected a non-empty"):
        cls.from_dense(np.ones((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="W: expected a 2-D"):
        cls.from_dense(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="ascontiguousarray"):
        cls.from_dense(np.ones((4, 3), dtype=np.float32).T)
    W = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="mask: expected shape"):
        cls.from_dense(W, mask=np.ones((3, 2), dtype=bool))
    with pytest.raises(sf.DTypeError, match="mask: expected dtype bool"):
        cls.from_dense(W, mask=np.ones((2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="num_threads"):
        cls.from_dense(W, num_threads=0)
    with pytest.raises(TypeError):
        cls(W)  # only the classmethods build tensors


def test_inputs_are_untouched(rng: np.random.Generator, dtype: np.dtype) -> None:
    W = sparse_weight(rng, (7, 19), dtype, 0.5)
    x = rng.standard_normal(19).astype(np.float32)
    W0, x0 = W.copy(), x.copy()
    for cls in CLASSES:
        t = cls.from_dense(W, mask=stored(W))
        t._sf_gemv(x)
        t._sf_gemm(x[None, :])
        assert ref.bits(W).tobytes() == ref.bits(W0).tobytes()
        assert x.tobytes() == x0.tobytes()


# --- components, state, pickling --------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_components_are_read_only_views(cls: Any, rng: np.random.Generator) -> None:
    t = cls.from_dense(sparse_weight(rng, (5, 20), BF16, 0.5))
    for name in cls._components:
        a = getattr(t, name)
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="WRITEABLE"):
            a.flags.writeable = True
        with pytest.raises(ValueError, match="read-only"):
            a[...] = 0
        assert np.shares_memory(a, getattr(t, name))  # a view of the tensor, not a copy


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_state_round_trip_and_pickle(cls: Any, rng: np.random.Generator, dtype: np.dtype) -> None:
    W = sparse_weight(rng, (13, 43), dtype, 0.6)
    t = cls.from_dense(W)
    meta, arrays = t._sf_state()
    assert cls._sf_kind == ("bitmap" if cls is BitmapTensor else "csr")
    assert meta == {"shape": "13,43", "dtype": dtype.name}
    assert set(arrays) == set(cls._components)
    assert all(isinstance(v, str) for v in meta.values())
    assert arrays["values"].shape == (t.nnz,)  # no padding
    t2 = cls._sf_from_state(meta, {k: np.array(v) for k, v in arrays.items()})
    t3 = pickle.loads(pickle.dumps(t))
    for u in (t2, t3):
        assert type(u) is cls
        assert u.shape == t.shape
        assert u.dtype == t.dtype
        np.testing.assert_array_equal(ref.bits(u.to_dense()), ref.bits(t.to_dense()))
    assert "nnz=" in repr(t)


def test_from_components_round_trip(rng: np.random.Generator, dtype: np.dtype) -> None:
    W = sparse_weight(rng, (9, 21), dtype, 0.5)
    keep = stored(W)
    b = BitmapTensor.from_components(
        W.shape, bitmap=np.packbits(keep, axis=1, bitorder="little"), values=W[keep]
    )
    c = CSRTensor.from_components(
        W.shape,
        indptr=np.concatenate([[0], np.cumsum(keep.sum(axis=1))]),  # int64 from numpy
        indices=np.nonzero(keep)[1],  # int64: converted after a range check
        values=W[keep],
    )
    for t in (b, c):
        np.testing.assert_array_equal(ref.to_f32(t.to_dense()), np.where(keep, ref.to_f32(W), 0))
        t.validate()


def _bitmap_parts(rng: np.random.Generator) -> dict[str, Any]:
    W = sparse_weight(rng, (6, 13), F32, 0.5)
    W[:, 0] = 1.0  # every row stores something
    keep = stored(W)
    return {
        "bitmap": np.packbits(keep, axis=1, bitorder="little"),
        "values": W[keep],
        "row_offsets": np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64),
    }


def _corrupt_bitmap(parts: dict[str, Any], kind: str) -> dict[str, Any]:
    p = {k: np.array(v) for k, v in parts.items()}
    if kind == "values too short":
        p["values"] = p["values"][:-1]
    elif kind == "values too long":
        p["values"] = np.concatenate([p["values"], p["values"][:1]])
    elif kind == "bit past cols":
        p["bitmap"][2, 1] |= 0x80  # column 15 of 13
    elif kind == "bit flipped":
        p["bitmap"][1, 0] ^= 0x02
    elif kind == "offset off by one":
        p["row_offsets"][3] += 1
    elif kind == "offsets not from zero":
        p["row_offsets"] += 1
    elif kind == "offsets decreasing":
        p["row_offsets"][2], p["row_offsets"][3] = p["row_offsets"][3], p["row_offsets"][2]
    elif kind == "offsets wrong length":
        p["row_offsets"] = p["row_offsets"][:-1]
    elif kind == "bitmap wrong shape":
        p["bitmap"] = p["bitmap"][:, :1]
    elif kind == "nan value":
        p["values"][2] = np.nan
    elif kind == "inf value":
        p["values"][0] = -np.inf
    return p


BITMAP_CORRUPTIONS = {
    "values too short": "values",
    "values too long": "values",
    "bit past cols": "bitmap",
    "bit flipped": "row_offsets",
    "offset off by one": "row_offsets",
    "offsets not from zero": "row_offsets",
    "offsets decreasing": "row_offsets",
    "offsets wrong length": "row_offsets",
    "bitmap wrong shape": "bitmap",
    "nan value": "values",
    "inf value": "values",
}


@pytest.mark.parametrize("kind", sorted(BITMAP_CORRUPTIONS))
def test_corrupt_bitmap_components_raise(rng: np.random.Generator, kind: str) -> None:
    parts = _bitmap_parts(rng)
    BitmapTensor.from_components((6, 13), **parts).validate()  # the uncorrupted parts pass
    bad = _corrupt_bitmap(parts, kind)
    name = BITMAP_CORRUPTIONS[kind]
    with pytest.raises(ValueError, match=name):
        BitmapTensor.from_components((6, 13), **bad)
    meta = {"shape": "6,13", "dtype": "float32"}
    with pytest.raises(ValueError, match=name):
        BitmapTensor._sf_from_state(meta, bad)


def _csr_parts(rng: np.random.Generator) -> dict[str, Any]:
    W = sparse_weight(rng, (6, 13), F16, 0.4)
    W[:, :3] = 1.0  # every row stores at least three
    keep = stored(W)
    return {
        "indptr": np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64),
        "indices": np.nonzero(keep)[1].astype(np.int32),
        "values": W[keep],
    }


CSR_CORRUPTIONS = {
    "index == cols": "indices.*outside",
    "negative index": "indices.*outside",
    "unsorted": "indices.*sorted",
    "duplicate": "indices.*unique",
    "indptr decreasing": "indptr.*non-decreasing",
    "indptr not from zero": "indptr",
    "indptr end != nnz": "indices",
    "indptr wrong length": "indptr",
    "values too short": "values",
    "nan value": "values",
    "index beyond int32": "indices",
}


def _corrupt_csr(parts: dict[str, Any], kind: str) -> dict[str, Any]:
    p = {k: np.array(v) for k, v in parts.items()}
    s = int(p["indptr"][2])  # row 2's first value
    if kind == "index == cols":
        p["indices"][s] = 13
    elif kind == "negative index":
        p["indices"][s] = -1
    elif kind == "unsorted":
        p["indices"][s], p["indices"][s + 1] = p["indices"][s + 1], p["indices"][s]
    elif kind == "duplicate":
        p["indices"][s + 1] = p["indices"][s]
    elif kind == "indptr decreasing":
        p["indptr"][2] = p["indptr"][3] + 1
    elif kind == "indptr not from zero":
        p["indptr"][0] = 1
    elif kind == "indptr end != nnz":
        p["indptr"][-1] += 1
    elif kind == "indptr wrong length":
        p["indptr"] = p["indptr"][:-1]
    elif kind == "values too short":
        p["values"] = p["values"][:-1]
    elif kind == "nan value":
        p["values"][1] = np.nan
    elif kind == "index beyond int32":
        p["indices"] = p["indices"].astype(np.int64)
        p["indices"][s] = 2**32 + int(p["indices"][s])  # would wrap to a valid column
    return p


@pytest.mark.parametrize("kind", sorted(CSR_CORRUPTIONS))
def test_corrupt_csr_components_raise(rng: np.random.Generator, kind: str) -> None:
    parts = _csr_parts(rng)
    CSRTensor.from_components((6, 13), **parts).validate()
    bad = _corrupt_csr(parts, kind)
    with pytest.raises(ValueError, match=CSR_CORRUPTIONS[kind]):
        CSRTensor.from_components((6, 13), **bad)
    with pytest.raises(ValueError, match=CSR_CORRUPTIONS[kind]):
        CSRTensor._sf_from_state({"shape": "6,13", "dtype": "float16"}, bad)


def test_component_dtypes_and_state_metadata(rng: np.random.Generator) -> None:
    parts = _csr_parts(rng)
    with pytest.raises(sf.DTypeError, match="indices: expected an integer dtype"):
        CSRTensor.from_components((6, 13), **{**parts, "indices": parts["indices"] * 1.0})
    with pytest.raises(sf.DTypeError, match="values: expected dtype"):
        CSRTensor.from_components(
            (6, 13), **{**parts, "values": parts["values"].astype(np.float64)}
        )
    with pytest.raises(ValueError, match="values: expected a 1-D"):
        CSRTensor.from_components((6, 13), **{**parts, "values": parts["values"][None, :]})
    with pytest.raises(ValueError, match="shape"):
        CSRTensor.from_components((0, 13), **parts)
    with pytest.raises(TypeError, match="shape"):
        CSRTensor.from_components(13, **parts)  # type: ignore[arg-type]
    bparts = _bitmap_parts(rng)
    with pytest.raises(sf.DTypeError, match="bitmap: expected dtype uint8"):
        BitmapTensor.from_components((6, 13), **{**bparts, "bitmap": bparts["bitmap"].astype(bool)})
    with pytest.raises(ValueError, match="meta: missing"):
        BitmapTensor._sf_from_state({"shape": "6,13"}, bparts)
    with pytest.raises(ValueError, match="meta: shape"):
        BitmapTensor._sf_from_state({"shape": "6x13", "dtype": "float32"}, bparts)
    with pytest.raises(ValueError, match="meta says dtype bfloat16"):
        BitmapTensor._sf_from_state({"shape": "6,13", "dtype": "bfloat16"}, bparts)
    with pytest.raises(ValueError, match="arrays: missing"):
        BitmapTensor._sf_from_state(
            {"shape": "6,13", "dtype": "float32"}, {"values": bparts["values"]}
        )


# --- kernels ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_gemv_every_level(
    cls: Any, simd_level: str, dtype: np.dtype, rng: np.random.Generator
) -> None:
    for shape in SHAPES:
        for sparsity in (0.0, 0.5, 0.8, 1.0):
            W = sparse_weight(rng, shape, dtype, sparsity)
            x = rng.standard_normal(shape[1]).astype(np.float32)
            want, scale = reference_matmul(W, x[None, :])
            t = cls.from_dense(W)
            outs = []
            for threads in (1, 2):
                out = np.full(shape[0], np.nan, dtype=np.float32)
                assert t._sf_gemv(x, out, threads) is out
                outs.append(out)
            assert_close(outs[0], want[0], scale[0], dtype)
            assert outs[0].tobytes() == outs[1].tobytes()
            y = t._sf_gemv(x)  # a new array
            assert y.dtype == np.float32
            assert y.shape == (shape[0],)
            assert y.tobytes() == outs[0].tobytes()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_gemm_every_level(
    cls: Any, simd_level: str, dtype: np.dtype, rng: np.random.Generator
) -> None:
    for shape in ((1, 1), (7, 17), (13, 43), (43, 129), (33, 500)):
        for batch in (1, 2, 3, 5, 9, 17, 33, 70):
            W = sparse_weight(rng, shape, dtype, 0.6)
            X = rng.standard_normal((batch, shape[1])).astype(np.float32)
            want, scale = reference_matmul(W, X)
            t = cls.from_dense(W)
            outs = []
            for threads in (1, 2):
                out = np.full((batch, shape[0]), np.nan, dtype=np.float32)
                assert t._sf_gemm(X, out, threads) is out
                outs.append(out)
            assert_close(outs[0], want, scale, dtype)
            assert outs[0].tobytes() == outs[1].tobytes()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_only_stored_weights_meet_non_finite_inputs(
    cls: Any, simd_level: str, rng: np.random.Generator
) -> None:
    W = sparse_weight(rng, (8, 45), BF16, 0.5)
    keep = stored(W)
    x = rng.standard_normal(45).astype(np.float32)
    x[~keep[0]] = np.where(np.arange(45)[~keep[0]] % 2, np.inf, np.nan)
    t = cls.from_dense(W)
    y = t._sf_gemv(x)
    Y = t._sf_gemm(np.stack([x] * 3))
    Y40 = t._sf_gemm(np.stack([x] * 40))  # a batch large enough for the dense-tile path
    # row 0 stores none of the non-finite columns: finite and equal to the dense product of
    # its stored entries
    want = np.dot(ref.to_f32(W)[0][keep[0]].astype(np.float64), x[keep[0]])
    assert np.isfinite(y[0])
    assert np.isfinite(Y[:, 0]).all()
    assert y[0] == pytest.approx(want, rel=1e-5, abs=1e-6)
    hit = (keep & ~keep[0]).any(axis=1)
    assert np.isfinite(y[~hit]).all()
    assert np.isfinite(Y40[:, ~hit]).all()
    want40 = np.broadcast_to(y[~hit], (40, int((~hit).sum())))
    np.testing.assert_allclose(Y40[:, ~hit], want40, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_kernel_argument_errors(cls: Any, rng: np.random.Generator) -> None:
    t = cls.from_dense(sparse_weight(rng, (4, 6), F32, 0.5))
    with pytest.raises(ValueError, match=r"x: expected shape \(6,\)"):
        t._sf_gemv(np.ones(5, dtype=np.float32))
    with pytest.raises(sf.DTypeError, match="x: expected dtype float32"):
        t._sf_gemv(np.ones(6))
    with pytest.raises(ValueError, match=r"out: expected shape \(4,\)"):
        t._sf_gemv(np.ones(6, dtype=np.float32), np.empty(3, dtype=np.float32))
    ro = np.empty(4, dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        t._sf_gemv(np.ones(6, dtype=np.float32), ro)
    with pytest.raises(ValueError, match="X: expected in_features=6"):
        t._sf_gemm(np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 4\)"):
        t._sf_gemm(np.ones((2, 6), dtype=np.float32), np.empty((4, 2), dtype=np.float32))
    with pytest.raises(sf.DTypeError, match="out: expected dtype float32"):
        t._sf_gemm(np.ones((2, 6), dtype=np.float32), np.empty((2, 4)))
    with pytest.raises(ValueError, match="X: expected a non-empty"):
        t._sf_gemm(np.ones((0, 6), dtype=np.float32))
    buf = np.ones(6, dtype=np.float32)
    with pytest.raises(ValueError, match="overlap"):
        t._sf_gemv(buf, buf[:4])


def test_strided_gemm_input_and_output(rng: np.random.Generator) -> None:
    W = sparse_weight(rng, (9, 21), F32, 0.5)
    big_x = rng.standard_normal((5, 30)).astype(np.float32)
    X = big_x[:, :21]
    want, scale = reference_matmul(W, X)
    for cls in CLASSES:
        big_out = np.full((5, 14), np.nan, dtype=np.float32)
        out = big_out[:, :9]
        cls.from_dense(W)._sf_gemm(X, out, 2)
        assert_close(out, want, scale, F32)
        assert np.isnan(big_out[:, 9:]).all()  # nothing outside the view written


def test_python_threads_share_a_tensor(rng: np.random.Generator) -> None:
    W = sparse_weight(rng, (301, 257), BF16, 0.7)
    xs = rng.standard_normal((8, 257)).astype(np.float32)
    for cls in CLASSES:
        t = cls.from_dense(W)
        serial = [t._sf_gemv(x, None, 1) for x in xs]
        results: list[np.ndarray | None] = [None] * len(xs)

        def work(i: int, t: Any = t, results: list[np.ndarray | None] = results) -> None:
            results[i] = t._sf_gemv(xs[i], None, 1)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for a, b in zip(serial, results, strict=True):
            assert b is not None
            assert a.tobytes() == b.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 70),
    sparsity=st.floats(0.0, 1.0),
    dtype=st.sampled_from(DTYPES),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_round_trip_and_products(
    rows: int, cols: int, sparsity: float, dtype: np.dtype, batch: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    W = sparse_weight(rng, (rows, cols), dtype, sparsity)
    X = rng.standard_normal((batch, cols)).astype(np.float32)
    want, scale = reference_matmul(W, X)
    for cls in CLASSES:
        t = cls.from_dense(W)
        np.testing.assert_array_equal(
            ref.to_f32(t.to_dense()), np.where(stored(W), ref.to_f32(W), 0)
        )
        Y = t._sf_gemm(X)
        assert (np.abs(Y - want) <= 1e-5 * scale + 1e-30).all()
        meta, arrays = t._sf_state()
        assert cls._sf_from_state(meta, arrays).nnz == t.nnz


def test_kernels_facade_dispatches_if_present(rng: np.random.Generator) -> None:
    kernels = pytest.importorskip("sparseforge.kernels")
    if not hasattr(kernels, "gemv"):
        pytest.skip("sparseforge.kernels.gemv not available in this build")
    W = sparse_weight(rng, (17, 33), BF16, 0.5)
    x = rng.standard_normal(33).astype(np.float32)
    for cls in CLASSES:
        t = cls.from_dense(W)
        assert kernels.gemv(t, x).tobytes() == t._sf_gemv(x).tobytes()


# --- scipy (optional) -------------------------------------------------------------------


def test_scipy_round_trip(rng: np.random.Generator, dtype: np.dtype) -> None:
    sparse = pytest.importorskip("scipy.sparse")
    W = sparse_weight(rng, (12, 29), dtype, 0.6)
    c = CSRTensor.from_dense(W)
    S = c.to_scipy()
    assert S.dtype == np.float32
    assert S.shape == W.shape
    np.testing.assert_array_equal(S.toarray(), np.where(stored(W), ref.to_f32(W), 0))
    back = CSRTensor.from_scipy(S, dtype=dtype)
    np.testing.assert_array_equal(ref.bits(back.values), ref.bits(c.values))
    np.testing.assert_array_equal(back.indices, c.indices)
    # Unsorted columns, duplicates and float64 values: sorted and summed on a copy.
    coo = sparse.coo_array(
        (np.array([1.0, 2.0, 3.0, 4.0]), (np.array([0, 0, 1, 0]), np.array([3, 1, 2, 3]))),
        shape=(2, 5),
    )
    before = (coo.data.copy(), coo.row.copy(), coo.col.copy())
    with pytest.raises(sf.DTypeError, match="pass dtype"):
        CSRTensor.from_scipy(coo)
    t = CSRTensor.from_scipy(coo, dtype=np.float32)
    np.testing.assert_array_equal(t.indices, [1, 3, 2])
    np.testing.assert_array_equal(t.values, np.array([2.0, 5.0, 3.0], dtype=np.float32))
    for a, b in zip(before, (coo.data, coo.row, coo.col), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"scipy\.sparse"):
        CSRTensor.from_scipy(np.eye(3))
    with pytest.raises(sf.DTypeError, match="dtype"):
        CSRTensor.from_scipy(S, dtype=np.float64)


# --- column skip on a bitmap-compressed transposed weight ---------------------------------


def masked_reference(Wt: np.ndarray, x: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """(Wt^T (x masked by |x| > t) in float64, the rounding scale), stored entries only."""
    xm = np.where(np.abs(x) > t, x, 0.0).astype(np.float64)
    Wd = ref.to_f32(Wt).astype(np.float64)
    return Wd.T @ xm, np.abs(Wd).T @ np.abs(xm)


@pytest.mark.parametrize(
    "shape", [(1, 1), (7, 17), (16, 16), (33, 31), (40, 100), (129, 47), (64, 500)], ids=str
)
def test_bitmap_column_skip_every_level(
    shape: tuple[int, int], simd_level: str, dtype: np.dtype, rng: np.random.Generator
) -> None:
    for sparsity, t in [(0.0, 0.0), (0.5, 0.5), (0.8, 1.5), (1.0, 0.0)]:
        Wt = sparse_weight(rng, shape, dtype, sparsity)  # (in_features, out_features)
        x = rng.standard_normal(shape[0]).astype(np.float32)
        x[rng.random(shape[0]) < 0.2] = 0.0
        want, scale = masked_reference(Wt, x, t)
        b = BitmapTensor.from_dense(Wt)
        outs = []
        for threads in (1, 2):
            out = np.full(shape[1], np.nan, dtype=np.float32)
            y, info = sf.kernels.gemv_sparse_input(
                b, x, t, out=out, num_threads=threads, return_info=True
            )
            assert y is out
            assert info.active == int((np.abs(x) > t).sum())
            assert info.in_features == shape[0]
            outs.append(out)
        assert_close(outs[0], want, scale, dtype)
        assert outs[0].tobytes() == outs[1].tobytes()
        # the same numbers as column skip on the dense Wt, up to summation rounding
        dense = sf.kernels.gemv_sparse_input(Wt, x, t)
        np.testing.assert_allclose(outs[0], dense, rtol=1e-5, atol=1e-5 * scale.max() + 1e-30)


def test_bitmap_column_skip_two_four_weight(rng: np.random.Generator) -> None:
    """A 2:4-pruned W (along in_features) as a bitmap Wt: weight and activation sparsity."""
    W = sf.prune.magnitude(rng.standard_normal((96, 256)).astype(np.float32), pattern="2:4").weight
    b = BitmapTensor.from_dense(np.ascontiguousarray(W.T))
    assert b.density == pytest.approx(0.5)
    x = rng.standard_normal(256).astype(np.float32)
    y, info = sf.kernels.gemv_sparse_input(b, x, 0.7, return_info=True)
    want = W.astype(np.float64) @ np.where(np.abs(x) > 0.7, x, 0.0)
    assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    assert 0 < info.active < 256


@pytest.mark.parametrize("dtype", [F32, BF16], ids=["f32", "bf16"])
def test_bitmap_column_skip_any_column_split(dtype: np.dtype, rng: np.random.Generator) -> None:
    """Threads split the columns at 16-column blocks, so a range may start off the 32- and
    64-column steps of the kernel (bf16: y held de-interleaved per 32 columns): every split
    gives the same bits, and the reference's values."""
    for cols in (16 * 7 + 5, 576, 96 + 16):
        Wt = sparse_weight(rng, (300, cols), dtype, 0.5)
        x = rng.standard_normal(300).astype(np.float32)
        want, scale = masked_reference(Wt, x, 0.6)
        b = BitmapTensor.from_dense(Wt)
        outs = [sf.kernels.gemv_sparse_input(b, x, 0.6, num_threads=n) for n in (1, 2, 3, 5)]
        assert_close(outs[0], want, scale, dtype)
        for o in outs[1:]:
            assert o.tobytes() == outs[0].tobytes()


def test_bitmap_column_skip_non_finite_inputs(rng: np.random.Generator) -> None:
    Wt = sparse_weight(rng, (20, 40), F32, 0.5)
    b = BitmapTensor.from_dense(Wt)
    x = rng.standard_normal(20).astype(np.float32)
    x[3] = np.nan  # active (the threshold rule): reaches only the columns row 3 stores
    x[5] = np.inf
    y = sf.kernels.gemv_sparse_input(b, x, 0.5)
    hit = stored(Wt)[3] | stored(Wt)[5]
    assert np.isnan(y[stored(Wt)[3]]).all()
    assert np.isfinite(y[~hit]).all()
    xs = np.where(np.abs(x) > 0.5, x, 0.0)
    xs[[3, 5]] = 0.0
    want = ref.to_f32(Wt)[:, ~hit].astype(np.float64).T @ xs
    np.testing.assert_allclose(y[~hit], want, rtol=1e-5, atol=1e-6)


def test_bitmap_column_skip_errors(rng: np.random.Generator) -> None:
    b = BitmapTensor.from_dense(sparse_weight(rng, (6, 4), F32, 0.5))
    x = np.ones(6, np.float32)
    with pytest.raises(ValueError, match="threshold"):
        sf.kernels.gemv_sparse_input(b, x, float("nan"))
    with pytest.raises(ValueError, match="threshold"):
        sf.kernels.gemv_sparse_input(b, x, -1.0)
    with pytest.raises(ValueError, match="x"):
        sf.kernels.gemv_sparse_input(b, np.ones(4, np.float32), 0.5)
    with pytest.raises(ValueError, match="out"):
        sf.kernels.gemv_sparse_input(b, x, 0.5, out=np.zeros(6, np.float32))
    with pytest.raises(TypeError):
        sf.kernels.gemv_sparse_input(b, x.astype(np.float64), 0.5)
