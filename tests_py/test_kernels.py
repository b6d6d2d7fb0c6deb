"""sparseforge.kernels against float64 numpy references.

Every kernel runs on fresh random data, awkward shapes (1..17, primes, K not a SIMD
multiple, row-sliced views), every dtype and SIMD level, with NaN-poisoned outputs that
must be fully written, and 1 vs 2 threads bitwise. Errors are checked by type and by the
argument named in the message.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
import sparseforge as sf
from reference import BF16, DTYPES, F16, F32
from sparseforge import kernels

SHAPES = [(1, 1), (3, 17), (17, 3), (7, 9), (16, 16), (5, 33), (43, 401), (97, 130), (301, 257)]
TOL = 1e-5  # against float64 of the stored (exactly converted) weights
TOL_16 = 1e-2  # fp16/bf16 against float64 of the original float32 weights


# --- oracles (float64 numpy) -----------------------------------------------------------


def f64(W: np.ndarray) -> np.ndarray:
    return ref.to_f32(W).astype(np.float64)


def masked(x: np.ndarray, t: float) -> np.ndarray:
    xm: np.ndarray = np.where(np.abs(x) > t, x, np.float32(0))
    return xm


def silu(g: np.ndarray) -> np.ndarray:
    out: np.ndarray = g / (1.0 + np.exp(-g))
    return out


def rel_err(y: np.ndarray, want: np.ndarray) -> float:
    den = float(np.max(np.abs(want))) if want.size else 0.0
    num = float(np.max(np.abs(y.astype(np.float64) - want))) if want.size else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def weight(rng: np.random.Generator, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    W32 = rng.standard_normal(shape, dtype=np.float32)
    return W32 if dtype == F32 else sf.cast(W32, dtype)


def poisoned(shape: int | tuple[int, ...]) -> np.ndarray:
    return np.full(shape, np.nan, dtype=np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


# --- dense -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gemv_matches_reference(
    simd_level: str, dtype: np.dtype, shape: tuple[int, int], rng: np.random.Generator
) -> None:
    W = weight(rng, shape, dtype)
    x = rng.standard_normal(shape[1], dtype=np.float32)
    want = f64(W) @ x.astype(np.float64)
    y1 = kernels.gemv(W, x, out=poisoned(shape[0]), num_threads=1)
    assert np.isfinite(y1).all()
    assert rel_err(y1, want) <= TOL
    y2 = kernels.gemv(W, x, out=poisoned(shape[0]), num_threads=2)
    assert same_bits(y1, y2)


def test_gemv_16bit_against_float32_weights(dtype: np.dtype, rng: np.random.Generator) -> None:
    W32 = rng.standard_normal((129, 515), dtype=np.float32)
    W = W32 if dtype == F32 else sf.cast(W32, dtype)
    x = rng.standard_normal(515, dtype=np.float32)
    tol = TOL if dtype == F32 else TOL_16
    assert rel_err(kernels.gemv(W, x), W32.astype(np.float64) @ x) <= tol


def test_gemv_on_row_sliced_view_and_out(rng: np.random.Generator) -> None:
    big = rng.standard_normal((40, 70), dtype=np.float32)
    W = big[3:30, 5:66]  # a view with a row stride: no copy
    x = rng.standard_normal(61, dtype=np.float32)
    out = poisoned(27)
    y = kernels.gemv(W, x, out=out)
    assert y is out
    assert rel_err(y, W.astype(np.float64) @ x) <= TOL


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8, 9, 16, 33])
def test_gemm_matches_reference(
    simd_level: str, dtype: np.dtype, batch: int, rng: np.random.Generator
) -> None:
    W = weight(rng, (131, 67), dtype)
    X = rng.standard_normal((batch, 67), dtype=np.float32)
    want = X.astype(np.float64) @ f64(W).T
    Y1 = kernels.gemm(W, X, out=poisoned((batch, 131)), num_threads=1)
    assert np.isfinite(Y1).all()
    assert rel_err(Y1, want) <= TOL
    assert same_bits(Y1, kernels.gemm(W, X, num_threads=2))
    if batch <= 8:  # the direct kernel: each row of Y is gemv's result bitwise
        for b in range(batch):
            assert same_bits(Y1[b], kernels.gemv(W, X[b]))


def test_gemm_large_batch_threads_and_dtypes(dtype: np.dtype, rng: np.random.Generator) -> None:
    W = weight(rng, (300, 257), dtype)
    X = rng.standard_normal((70, 257), dtype=np.float32)
    Y1 = kernels.gemm(W, X, num_threads=1)
    assert rel_err(Y1, X.astype(np.float64) @ f64(W).T) <= TOL
    assert same_bits(Y1, kernels.gemm(W, X, num_threads=2))


# --- row skip --------------------------------------------------------------------------


def test_gemv_rows_selection_forms(
    simd_level: str, dtype: np.dtype, rng: np.random.Generator
) -> None:
    W = weight(rng, (53, 45), dtype)
    x = rng.standard_normal(45, dtype=np.float32)
    rows = [40, 2, 2, 52, 0, 17]  # unsorted, with a duplicate: a set
    mask = np.zeros(53, dtype=bool)
    mask[rows] = True
    want = np.where(mask, f64(W) @ x, 0.0)
    dense = kernels.gemv(W, x)
    results = [
        kernels.gemv_rows(W, x, np.array(rows, dtype=np.int64), out=poisoned(53), num_threads=1),
        kernels.gemv_rows(W, x, np.array(rows, dtype=np.int32), num_threads=2),
        kernels.gemv_rows(W, x, mask, num_threads=2),
        kernels.gemv_rows(W, x, rows),
    ]
    for y in results:
        assert rel_err(y, want) <= TOL
        assert same_bits(y, results[0])
        assert np.all(y[~mask] == 0)
        assert same_bits(y[mask], dense[mask])  # the dense kernel's values on the selected rows
    assert not kernels.gemv_rows(W, x, np.array([], dtype=np.int64)).any()
    assert not kernels.gemv_rows(W, x, []).any()


@pytest.mark.parametrize(
    ("rows", "exc", "match"),
    [
        (np.array([0, 53]), ValueError, r"^rows: index 53 at position 1 is out of range \[0, 53\)"),
        (np.array([-1], dtype=np.int32), ValueError, "rows: index -1"),
        (np.zeros(52, dtype=bool), ValueError, "rows: expected a mask of length 53, got 52"),
        (np.array([1.0, 2.0]), sf.DTypeError, "rows: expected dtype bool, int32 or int64"),
        (np.array([[1, 2]]), ValueError, "rows: expected a 1-D array"),
        (np.arange(10)[::2], ValueError, "rows: expected a contiguous vector"),
        ("0,1", TypeError, "rows: expected a bool mask"),
    ],
)
def test_gemv_rows_bad_selection(rows: Any, exc: type[Exception], match: str) -> None:
    W = np.ones((53, 8), dtype=np.float32)
    with pytest.raises(exc, match=match):
        kernels.gemv_rows(W, np.ones(8, dtype=np.float32), rows)


# --- column skip -----------------------------------------------------------------------

COLSKIP_SHAPES = [(1, 1), (9, 17), (17, 15), (64, 33), (401, 43), (300, 1000), (129, 4099)]


@pytest.mark.parametrize("shape", COLSKIP_SHAPES, ids=str)
def test_gemv_sparse_input_matches_masked_dense(
    simd_level: str, dtype: np.dtype, shape: tuple[int, int], rng: np.random.Generator
) -> None:
    n_in, n_out = shape
    Wt = weight(rng, shape, dtype)
    x = rng.standard_normal(n_in, dtype=np.float32)
    for t in (0.0, 0.3, 0.67, 1.5, math.inf):
        xm = masked(x, t)
        y1, info = kernels.gemv_sparse_input(
            Wt, x, t, out=poisoned(n_out), num_threads=1, return_info=True
        )
        assert np.isfinite(y1).all()
        assert info == kernels.SparseInputInfo(int(np.count_nonzero(xm)), n_in, False)
        assert rel_err(y1, f64(Wt).T @ xm.astype(np.float64)) <= TOL
        assert same_bits(y1, kernels.gemv_sparse_input(Wt, x, t, num_threads=2))


def test_gemv_sparse_input_threshold_rule_and_nan(rng: np.random.Generator) -> None:
    Wt = rng.standard_normal((6, 5), dtype=np.float32)
    x = np.array([0.5, -0.5, 0.50001, 0.0, -2.0, 0.25], dtype=np.float32)
    # strict |x| > t: the two entries equal to 0.5 in magnitude are skipped
    _, info = kernels.gemv_sparse_input(Wt, x, 0.5, return_info=True)
    assert info.active == 2
    assert info.density == pytest.approx(2 / 6)
    assert info.predicted_gain == pytest.approx(3.0)
    x[3] = np.nan  # NaN inputs are active and propagate, as in the dense product
    y = kernels.gemv_sparse_input(Wt, x, 0.5)
    assert np.isnan(y).all()
    _, none = kernels.gemv_sparse_input(Wt, np.zeros(6, np.float32), 0.0, return_info=True)
    assert none.active == 0
    assert none.predicted_gain == math.inf


@pytest.mark.parametrize(
    ("threshold", "exc"),
    [(-0.1, ValueError), (math.nan, ValueError), (True, TypeError), ("0.5", TypeError)],
)
def test_bad_thresholds(threshold: Any, exc: type[Exception]) -> None:
    Wt = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(exc, match=r"^threshold: expected a number >= 0"):
        kernels.gemv_sparse_input(Wt, np.ones(4, np.float32), threshold)
    with pytest.raises(exc, match=r"^threshold: expected a number >= 0"):
        kernels.gemm_sparse_input(Wt, np.ones((2, 4), np.float32), threshold)


def test_gemv_active_input(simd_level: str, rng: np.random.Generator) -> None:
    Wt = weight(rng, (77, 130), BF16)
    x = rng.standard_normal(77, dtype=np.float32)
    active = [76, 3, 40, 3, 0, 41]
    xs = np.zeros(77, np.float32)
    xs[active] = x[active]
    want = f64(Wt).T @ xs.astype(np.float64)
    mask = np.zeros(77, dtype=bool)
    mask[active] = True
    y1 = kernels.gemv_active_input(Wt, x, np.array(active), out=poisoned(130), num_threads=1)
    assert rel_err(y1, want) <= TOL
    assert same_bits(y1, kernels.gemv_active_input(Wt, x, mask, num_threads=2))
    assert same_bits(y1, kernels.gemv_active_input(Wt, x, active))
    assert not kernels.gemv_active_input(Wt, x, []).any()


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 9, 17])
def test_gemm_sparse_input_union_and_fallback(
    simd_level: str, batch: int, rng: np.random.Generator
) -> None:
    for dtype in (F32, BF16):
        Wt = weight(rng, (203, 131), dtype)
        X = rng.standard_normal((batch, 203), dtype=np.float32)
        t = 1.2
        union = int(np.count_nonzero((np.abs(X) > t).any(axis=0)))
        want = masked(X, t).astype(np.float64) @ f64(Wt)
        for min_gain, fallback in ((1.0, False), (math.inf, True)):
            Y1, info = kernels.gemm_sparse_input(
                Wt,
                X,
                t,
                out=poisoned((batch, 131)),
                min_gain=min_gain,
                num_threads=1,
                return_info=True,
            )
            assert info == kernels.SparseInputInfo(union, 203, fallback)
            assert np.isfinite(Y1).all()
            assert rel_err(Y1, want) <= TOL
            Y2 = kernels.gemm_sparse_input(Wt, X, t, min_gain=min_gain, num_threads=2)
            assert same_bits(Y1, Y2)


def test_gemm_sparse_input_auto_fallback_by_union_density(rng: np.random.Generator) -> None:
    Wt = rng.standard_normal((1000, 64), dtype=np.float32)
    x = rng.standard_normal(1000, dtype=np.float32)
    t = float(np.quantile(np.abs(x), 0.5))  # one token: ~50% sparse, gain ~2
    _, one = kernels.gemm_sparse_input(Wt, x[None, :], t, return_info=True)
    assert not one.dense_fallback
    X = rng.standard_normal((8, 1000), dtype=np.float32)  # union of 8: ~1 - 0.5**8 dense
    _, eight = kernels.gemm_sparse_input(Wt, X, t, return_info=True)
    assert eight.dense_fallback
    assert eight.density > 1 / 1.1
    _, forced = kernels.gemm_sparse_input(Wt, X, t, min_gain=1.0, return_info=True)
    assert not forced.dense_fallback


@pytest.mark.parametrize("min_gain", [0.5, math.nan, -1.0])
def test_bad_min_gain(min_gain: float) -> None:
    with pytest.raises(ValueError, match=r"^min_gain: expected a number >= 1"):
        kernels.gemm_sparse_input(
            np.ones((4, 3), np.float32), np.ones((2, 4), np.float32), 0.0, min_gain=min_gain
        )


# --- SwiGLU ----------------------------------------------------------------------------


def swiglu_ref(
    Wg: np.ndarray, Wu: np.ndarray, Wd: np.ndarray, x: np.ndarray, mode: str, t_x: float, t_h: float
) -> tuple[np.ndarray, int, int]:
    xin = masked(x, t_x) if mode == "teal" else x
    x64 = xin.astype(np.float64)
    g, u = f64(Wg) @ x64, f64(Wu) @ x64
    a = silu(g)
    h = a * u
    if mode == "teal":
        h = np.where(np.abs(h) > t_h, h, 0.0)
    elif mode == "cats":
        h = np.where(np.abs(a) > t_h, h, 0.0)
    x_active = int(np.count_nonzero(xin)) if mode == "teal" else x.size
    h_active = int(np.count_nonzero(h)) if mode != "dense" else h.size
    return f64(Wd) @ h, x_active, h_active


@pytest.mark.parametrize("mode", ["dense", "teal", "cats"])
def test_swiglu_modes_match_reference(
    simd_level: str, dtype: np.dtype, mode: str, rng: np.random.Generator
) -> None:
    n_in, hidden, n_out = 67, 150, 59
    Wg, Wu = weight(rng, (hidden, n_in), dtype), weight(rng, (hidden, n_in), dtype)
    Wd = weight(rng, (n_out, hidden), dtype)
    x = rng.standard_normal(n_in, dtype=np.float32)
    t_x = 0.5 if mode == "teal" else 0.0
    t_h = 0.05 if mode != "dense" else 0.0
    block = kernels.SparseSwiGLU(Wg, Wu, Wd, mode=mode)
    assert (block.in_features, block.hidden_features, block.out_features) == (n_in, hidden, n_out)
    want, xa, ha = swiglu_ref(Wg, Wu, Wd, x, mode, t_x, t_h)
    y1, info = block.block(
        x, t_x=t_x, t_h=t_h, out=poisoned(n_out), num_threads=1, return_info=True
    )
    assert np.isfinite(y1).all()
    assert rel_err(y1, want) <= 1e-4  # thresholds sit on float32 values; none flips here
    assert info == kernels.SwiGLUInfo(xa, n_in, ha, hidden)
    assert same_bits(y1, block(x, t_x=t_x, t_h=t_h, num_threads=2))


def test_swiglu_memory_and_from_layouts(rng: np.random.Generator) -> None:
    Wg, Wu = (rng.standard_normal((40, 24), dtype=np.float32) for _ in range(2))
    Wd = rng.standard_normal((24, 40), dtype=np.float32)
    teal = kernels.SparseSwiGLU(Wg, Wu, Wd, mode="teal")
    assert teal.copied_nbytes == teal.nbytes == Wg.nbytes * 3
    cats = kernels.SparseSwiGLU(Wg, Wu, Wd, mode="cats")
    assert cats.copied_nbytes == Wd.nbytes
    assert np.shares_memory(cats.layouts[0], Wg)  # referenced, not copied
    dense = kernels.SparseSwiGLU(Wg, Wu, Wd, mode="dense")
    assert dense.copied_nbytes == 0
    again = kernels.SparseSwiGLU.from_layouts(*teal.layouts, mode="teal")
    assert again.copied_nbytes == 0
    x = rng.standard_normal(24, dtype=np.float32)
    assert same_bits(again.block(x, t_x=0.3, t_h=0.1), teal.block(x, t_x=0.3, t_h=0.1))
    # t = 0 skips exact zeros only: every mode equals the dense FFN
    want = dense.block(x)
    for b in (teal, cats):
        assert rel_err(b.block(x), want.astype(np.float64)) <= 1e-5
    assert "teal" in repr(teal)


def test_swiglu_errors(rng: np.random.Generator) -> None:
    Wg = rng.standard_normal((40, 24), dtype=np.float32)
    Wd = rng.standard_normal((24, 40), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^mode: expected one of"):
        kernels.SparseSwiGLU(Wg, Wg, Wd, mode="relu")
    with pytest.raises(ValueError, match=r"^W_up: expected shape"):
        kernels.SparseSwiGLU(Wg, Wg[:, :20], Wd)
    with pytest.raises(ValueError, match=r"^W_down: expected shape"):
        kernels.SparseSwiGLU(Wg, Wg, Wd[:, :30])
    with pytest.raises(sf.DTypeError, match=r"^gate: expected dtype"):
        kernels.SparseSwiGLU(Wg.astype(np.float64), Wg, Wd, mode="dense")
    with pytest.raises(ValueError, match=r"^up: expected shape"):
        kernels.SparseSwiGLU.from_layouts(Wg.T.copy(), Wg, Wd.T.copy(), mode="teal")
    with pytest.raises(ValueError, match=r"^gate: expected C-ordered rows"):
        kernels.SparseSwiGLU.from_layouts(Wg.T, Wg.T, Wd.T, mode="teal")
    cats = kernels.SparseSwiGLU(Wg, Wg, Wd, mode="cats")
    x = np.ones(24, np.float32)
    with pytest.raises(ValueError, match=r"^t_x: thresholds x only in mode 'teal'"):
        cats.block(x, t_x=0.5)
    with pytest.raises(ValueError, match=r"^t_h: mode 'dense' takes no threshold"):
        kernels.SparseSwiGLU(Wg, Wg, Wd, mode="dense").block(x, t_h=0.5)
    with pytest.raises(ValueError, match=r"^x: expected shape \(24,\)"):
        cats.block(np.ones(25, np.float32))
    with pytest.raises(ValueError, match=r"^t_h: expected a number >= 0"):
        cats.block(x, t_h=-1.0)


# --- dispatch protocol, errors, no-copy ------------------------------------------------


class FakeCompressed:
    """What the formats implement: _sf_gemv / _sf_gemm."""

    def __init__(self, W: np.ndarray) -> None:
        self.W = W
        self.calls: list[tuple[str, int | None]] = []

    def _sf_gemv(self, x: np.ndarray, out: np.ndarray | None, num_threads: int | None) -> Any:
        self.calls.append(("gemv", num_threads))
        return kernels.gemv(self.W, x, out=out, num_threads=num_threads)

    def _sf_gemm(self, X: np.ndarray, out: np.ndarray | None, num_threads: int | None) -> Any:
        self.calls.append(("gemm", num_threads))
        return kernels.gemm(self.W, X, out=out, num_threads=num_threads)


def test_compressed_dispatch_protocol(rng: np.random.Generator) -> None:
    W = rng.standard_normal((9, 7), dtype=np.float32)
    A = FakeCompressed(W)
    x = rng.standard_normal(7, dtype=np.float32)
    assert same_bits(kernels.gemv(A, x), kernels.gemv(W, x))
    assert same_bits(kernels.gemm(A, x[None], num_threads=2), kernels.gemm(W, x[None]))
    kernels.gemv(A, x, num_threads=0)
    assert A.calls == [("gemv", None), ("gemm", 2), ("gemv", None)]
    with pytest.raises(TypeError, match=r"^A: expected a numpy.ndarray or a sparseforge"):
        kernels.gemv(W.tolist(), x)
    with pytest.raises(TypeError, match=r"^A: expected a numpy.ndarray or a sparseforge"):
        kernels.gemm(object(), x[None])
    with pytest.raises(ValueError, match=r"^num_threads"):
        kernels.gemv(A, x, num_threads=-1)


def test_bad_arrays_name_the_argument() -> None:
    W = np.ones((6, 8), np.float32)
    x = np.ones(8, np.float32)
    with pytest.raises(sf.DTypeError, match=r"^W: expected dtype float32, float16 or bfloat16"):
        kernels.gemv(W.astype(np.float64), x)
    with pytest.raises(sf.DTypeError, match=r"^x: expected dtype float32, got float64"):
        kernels.gemv(W, x.astype(np.float64))
    with pytest.raises(ValueError, match=r"^x: expected shape \(8,\), got \(7,\)"):
        kernels.gemv(W, x[:7])
    with pytest.raises(ValueError, match=r"^x: expected a contiguous vector"):
        kernels.gemv(W, np.ones(16, np.float32)[::2])
    with pytest.raises(ValueError, match=r"^W: expected C-ordered rows"):
        kernels.gemv(np.ones((8, 6), np.float32).T, x)
    with pytest.raises(ValueError, match=r"^W: expected a non-empty array"):
        kernels.gemv(np.ones((0, 8), np.float32), x)
    with pytest.raises(ValueError, match=r"^X: expected in_features=8"):
        kernels.gemm(W, np.ones((2, 7), np.float32))
    with pytest.raises(sf.DTypeError, match=r"^X: expected dtype float32"):
        kernels.gemm(W, np.ones((2, 8), np.float16))
    with pytest.raises(ValueError, match=r"^out: expected shape \(6,\)"):
        kernels.gemv(W, x, out=np.ones(5, np.float32))
    with pytest.raises(sf.DTypeError, match=r"^out: expected dtype float32"):
        kernels.gemv(W, x, out=np.ones(6, np.float64))
    ro = np.ones(6, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: expected a writeable array"):
        kernels.gemv(W, x, out=ro)
    with pytest.raises(ValueError, match=r"^out: expected shape \(2, 6\)"):
        kernels.gemm(W, np.ones((2, 8), np.float32), out=np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"^out: overlaps x"):
        kernels.gemv(np.ones((8, 8), np.float32), x, out=x)
    with pytest.raises(ValueError, match=r"^x: expected shape \(6,\)"):
        kernels.gemv_sparse_input(W, x, 0.1)  # Wt is (in=6, out=8)
    with pytest.raises(ValueError, match=r"^X: expected in_features=6"):
        kernels.gemm_sparse_input(W, np.ones((2, 8), np.float32), 0.1)
    with pytest.raises(TypeError, match=r"^num_threads"):
        kernels.gemv(W, x, num_threads=True)


def test_inputs_untouched_and_no_copy(dtype: np.dtype, rng: np.random.Generator) -> None:
    W = weight(rng, (33, 20), dtype)
    x = rng.standard_normal(20, dtype=np.float32)
    Wt = np.ascontiguousarray(W.T)
    Wb, Wtb, xb = W.copy(), Wt.copy(), x.copy()
    kernels.gemv(W, x)
    kernels.gemm(W, np.stack([x, x]))
    kernels.gemv_rows(W, x, [1, 2])
    kernels.gemv_sparse_input(Wt, x, 0.1)
    kernels.gemm_sparse_input(Wt, np.stack([x, -x]), 0.1)
    assert np.array_equal(ref.bits(W), ref.bits(Wb))
    assert np.array_equal(ref.bits(Wt), ref.bits(Wtb))
    assert np.array_equal(x, xb)
    assert sf._core.core._gate_address(W) == W.__array_interface__["data"][0]


def test_concurrent_python_threads(rng: np.random.Generator) -> None:
    """Calls release the GIL; two Python threads calling kernels get correct results."""
    Wt = rng.standard_normal((700, 900), dtype=np.float32)
    xs = [rng.standard_normal(700, dtype=np.float32) for _ in range(4)]
    want = [kernels.gemv_sparse_input(Wt, x, 0.5, num_threads=1) for x in xs]
    got: dict[int, list[np.ndarray]] = {}

    def work(i: int) -> None:
        got[i] = [kernels.gemv_sparse_input(Wt, x, 0.5, num_threads=1) for x in xs * 3]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for j, y in enumerate(got[i]):
            assert same_bits(y, want[j % 4])


def test_read_probe(rng: np.random.Generator) -> None:
    buf = rng.standard_normal(300_001, dtype=np.float32)
    s1 = kernels._read_probe(buf, 1)
    assert s1 == kernels._read_probe(buf, 2)
    assert s1 == pytest.approx(float(buf.astype(np.float64).sum()), abs=0.1)
    with pytest.raises(sf.DTypeError, match=r"^buf: expected dtype float32"):
        kernels._read_probe(buf.astype(np.float64))


# --- properties ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n_in=st.integers(1, 70),
    n_out=st.integers(1, 70),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
)
def test_column_skip_equals_row_skip_transposed_and_dense(
    n_in: int, n_out: int, sparsity: float, seed: int, dtype: np.dtype
) -> None:
    """Column skip on Wt, gemv on W with the masked x, and the float64 product agree."""
    rng = np.random.default_rng(seed)
    W = weight(rng, (n_out, n_in), dtype)
    Wt = np.ascontiguousarray(W.T)
    x = rng.standard_normal(n_in, dtype=np.float32)
    t = float(np.quantile(np.abs(x), sparsity))
    xm = masked(x, t)
    y = kernels.gemv_sparse_input(Wt, x, t)
    want = f64(W) @ xm.astype(np.float64)
    # float32 summation error is bounded by the sum of |terms| per output, not by max |y|
    # (outputs may cancel): the bound a relative-to-max-|y| check misses for tiny shapes
    scale = np.abs(f64(W)) @ np.abs(xm.astype(np.float64))
    bound = TOL * scale + 1e-30
    assert (np.abs(y - want) <= bound).all()
    assert (np.abs(kernels.gemv(W, xm) - want) <= bound).all()
    active = np.flatnonzero(np.abs(x) > t)
    assert same_bits(kernels.gemv_active_input(Wt, x, active), y)


def test_f16_shapes_smoke(rng: np.random.Generator) -> None:
    """fp16 weights with large magnitudes stay exact through the conversion."""
    W = (rng.standard_normal((5, 40)) * 1000).astype(F16)
    x = rng.standard_normal(40, dtype=np.float32)
    assert rel_err(kernels.gemv(W, x), f64(W) @ x.astype(np.float64)) <= TOL
