"""The numpy gate (python/bindings/numpy_view.cc): exact exception types and messages,
no hidden copies, and layouts it must refuse rather than copy."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import reference as ref
import sparseforge as sf
from reference import F32
from sparseforge import _core, prune


def address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def raises_exactly(exc: type[BaseException], message: str) -> Any:
    """pytest.raises with the whole message (after the optional " [in fn]" suffix)."""
    return pytest.raises(exc, match="^" + re.escape(message) + r"( \[in \w+\])?$")


# --- no hidden copies ---------------------------------------------------------------------


@pytest.mark.parametrize("writeable", [False, True])
def test_gate_passes_the_callers_pointer(
    dtype: np.dtype, writeable: bool, rng: np.random.Generator
) -> None:
    big = ref.weights(rng, (12, 40), dtype)
    views = [
        big,
        big[2:, 3:10],
        big[:, :17],
        big[::3, 5:],
        big[4:5, :],
        big[:, 39:],
        big[7:8, 3:4],
        big[:, 3:4],
    ]
    for a in views:
        assert _core.core._gate_address(a, writeable) == address(a) == a.ctypes.data


def test_gate_no_copy_for_memmap_and_foreign_buffers(tmp_path: Path) -> None:
    mm = np.lib.format.open_memmap(tmp_path / "w.npy", mode="w+", dtype=np.float32, shape=(8, 16))
    mm[...] = 1
    assert _core.core._gate_address(mm) == address(mm)
    a = np.frombuffer(bytes(4 * 64), dtype=np.float32).reshape(8, 8)
    assert not a.flags.writeable
    assert _core.core._gate_address(a) == address(a)  # read-only is fine for inputs
    with raises_exactly(
        ValueError, "a: expected a writeable array (modified in place), got a read-only one"
    ):
        _core.core._gate_address(a, True)


def test_apply_mask_works_in_place(dtype: np.dtype, rng: np.random.Generator) -> None:
    W = ref.weights(rng, (16, 24), dtype)
    mask = rng.random(W.shape) < 0.5
    address_before = address(W)
    out = prune.apply_mask_(W, mask)
    assert out is W
    assert np.shares_memory(out, W)
    assert address(W) == address_before
    assert (ref.to_f32(W)[~mask] == 0).all()


def test_mask_views_are_read_in_place(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (10, 12), F32)
    big_mask = rng.random((30, 40)) < 0.5
    mask = big_mask[5:15, 7:19]
    want = ref.apply_mask(W, mask)
    prune.apply_mask_(W, mask)
    assert np.array_equal(ref.bits(W), ref.bits(want))


# --- exact messages ------------------------------------------------------------------------


def test_wrong_dtype_is_a_dtype_error() -> None:
    assert issubclass(sf.DTypeError, TypeError)
    assert issubclass(sf.DTypeError, ValueError)
    assert sf.DTypeError is _core.DTypeError
    W = np.zeros((4, 8), dtype=np.float64)
    msg = "W: expected dtype float32, float16 or bfloat16 (ml_dtypes), got float64"
    for call in (
        lambda: prune.magnitude(W),
        lambda: prune.block_magnitude(W, 0.5, 2),
        lambda: prune.check_pattern(W, "2:4"),
        lambda: prune.apply_mask_(W, np.ones(W.shape, bool)),
        lambda: prune.magnitude(W, pattern="2:4"),
    ):
        with raises_exactly(sf.DTypeError, msg):
            call()
    with raises_exactly(
        sf.DTypeError,
        "weights[1]: expected dtype float32, float16 or bfloat16 (ml_dtypes), got float64",
    ):
        prune.magnitude_global([np.ones((2, 2), np.float32), W], 0.5)
    with raises_exactly(
        sf.DTypeError, "x: expected dtype float32, float16 or bfloat16 (ml_dtypes), got float64"
    ):
        sf.cast(W, np.float16)


@pytest.mark.parametrize(
    ("dt", "name"),
    [
        (np.int32, "int32"),
        (np.bool_, "bool"),
        (np.complex64, "complex64"),
        (np.uint16, "uint16"),
        (np.float64, "float64"),
        (object, "object"),
        (ml_dtypes.float8_e4m3fn, "float8_e4m3fn"),
        (np.dtype("V2"), "|V2"),
        (np.int16, "int16"),
    ],
)
def test_other_dtypes_named_in_the_message(dt: Any, name: str) -> None:
    W = np.zeros((4, 8), dtype=dt)
    with raises_exactly(
        sf.DTypeError, f"W: expected dtype float32, float16 or bfloat16 (ml_dtypes), got {name}"
    ):
        prune.magnitude(W)


def test_mask_dtype() -> None:
    W = np.ones((2, 3), np.float32)
    for dt, name in ((np.uint8, "uint8"), (np.float32, "float32"), (np.int64, "int64")):
        with raises_exactly(sf.DTypeError, f"mask: expected dtype bool, got {name}"):
            prune.apply_mask_(W, np.ones((2, 3), dt))


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((8,), "W: expected a 2-D array, got a 1-D array of shape (8,)"),
        ((4096,), "W: expected a 2-D array, got a 1-D array of shape (4096,)"),
        ((), "W: expected a 2-D array, got a 0-D array of shape ()"),
        ((2, 3, 4), "W: expected a 2-D array, got a 3-D array of shape (2, 3, 4)"),
        ((0, 8), "W: expected a non-empty array, got shape (0, 8)"),
        ((8, 0), "W: expected a non-empty array, got shape (8, 0)"),
        ((0, 0), "W: expected a non-empty array, got shape (0, 0)"),
    ],
)
def test_shape_messages(dtype: np.dtype, shape: tuple[int, ...], message: str) -> None:
    W = np.zeros(shape, dtype=dtype)
    for call in (
        lambda: prune.magnitude(W),
        lambda: prune.magnitude(W, scope="layer"),
        lambda: prune.block_magnitude(W, 0.5, 1),
        lambda: prune.check_pattern(W, "1:2"),
        lambda: prune.apply_mask_(W, np.ones(W.shape, bool)),
    ):
        with raises_exactly(ValueError, message):
            call()


@pytest.mark.parametrize(
    ("make", "shape", "strides"),
    [
        (lambda W: W.T, (8, 4), (1, 8)),
        (lambda W: W[:, ::2], (4, 4), (8, 2)),
        (lambda W: W[:, ::-1], (4, 8), (8, -1)),
        (lambda W: W[::-1], (4, 8), (-8, 1)),
        (lambda W: np.asfortranarray(W), (4, 8), (1, 4)),
    ],
)
def test_layout_messages(
    dtype: np.dtype,
    make: Callable[[np.ndarray], np.ndarray],
    shape: tuple[int, int],
    strides: tuple[int, int],
) -> None:
    """strides are given in elements; the message shows bytes."""
    W = make(np.ones((4, 8), dtype=dtype))
    s0, s1 = (s * dtype.itemsize for s in strides)
    msg = (
        f"W: expected C-ordered rows (unit stride along the last axis), got {dtype.name} "
        f"array of shape {shape} with strides ({s0}, {s1}); pass np.ascontiguousarray(W)"
    )
    with raises_exactly(ValueError, msg):
        prune.magnitude(W)
    with raises_exactly(ValueError, msg):
        prune.apply_mask_(W, np.ones(W.shape, bool))


def test_refused_strided_layouts(rng: np.random.Generator) -> None:
    base = ref.weights(rng, (16, 16), F32)
    overlapping = as_strided(base, shape=(4, 8), strides=(4, 4))  # rows overlap
    broadcast = np.broadcast_to(base[0], (4, 16))  # row stride 0
    odd_stride = as_strided(
        base.view(np.uint8)[2:].view(np.float16)[: 4 * 8], shape=(4, 8), strides=(17, 2)
    )  # row stride not whole elements
    for W in (overlapping, broadcast, odd_stride):
        with pytest.raises(ValueError, match=r"^W: expected C-ordered rows"):
            prune.magnitude(W)
        with pytest.raises(ValueError, match=r"^a: expected C-ordered rows"):
            _core.core._gate_address(W)


def test_padded_rows_are_views_not_copies(rng: np.random.Generator) -> None:
    base = ref.weights(rng, (8, 64), F32)
    padded = as_strided(base, shape=(8, 10), strides=(256, 4))  # == base[:, :10]
    assert _core.core._gate_address(padded) == address(base)
    every_other_row = base[::2]
    assert _core.core._gate_address(every_other_row) == address(base)
    assert np.array_equal(
        prune.magnitude(every_other_row, 0.5).mask,
        ref.magnitude_row_mask(np.ascontiguousarray(every_other_row), 0.5),
    )


def test_not_an_ndarray() -> None:
    for obj, name in (
        ([[1.0, 2.0]], "list"),
        (None, "NoneType"),
        ((1.0,), "tuple"),
        (np.float32(1.0), "float32"),
        ("W", "str"),
        (3.0, "float"),
    ):
        with raises_exactly(TypeError, f"W: expected a numpy.ndarray, got {name}"):
            prune.magnitude(obj)  # type: ignore[arg-type]
        with raises_exactly(TypeError, f"x: expected a numpy.ndarray, got {name}"):
            sf.cast(obj, np.float16)  # type: ignore[arg-type]
    with raises_exactly(TypeError, "mask: expected a numpy.ndarray, got list"):
        prune.apply_mask_(np.ones((1, 2), np.float32), [[True, False]])  # type: ignore[arg-type]


def test_misaligned_buffers(dtype: np.dtype) -> None:
    buf = bytearray(dtype.itemsize * 64 + 1)
    W = np.frombuffer(buf, dtype=dtype, offset=1, count=64).reshape(8, 8)
    assert not W.flags.aligned
    for call, name in (
        (lambda: prune.magnitude(W), "W"),
        (lambda: prune.check_pattern(W, "2:4"), "W"),
        (lambda: prune.magnitude_global([W], 0.5), "weights[0]"),
        (lambda: sf.cast(W, F32), "x"),
        (lambda: _core.core._gate_address(W), "a"),
    ):
        with raises_exactly(
            ValueError, f"{name}: expected an aligned array, got a misaligned buffer"
        ):
            call()
    writable = np.frombuffer(
        bytearray(dtype.itemsize * 64 + 1), dtype=dtype, offset=1, count=64
    ).reshape(8, 8)
    with raises_exactly(ValueError, "W: expected an aligned array, got a misaligned buffer"):
        prune.apply_mask_(writable, np.ones((8, 8), bool))


@pytest.mark.parametrize("code", [">f4", ">f2"])
def test_big_endian(code: str) -> None:
    W = np.arange(16, dtype=code).reshape(2, 8)
    with raises_exactly(ValueError, f"W: expected native byte order, got big-endian {code}"):
        prune.magnitude(W)
    with raises_exactly(ValueError, f"x: expected native byte order, got big-endian {code}"):
        sf.cast(W, F32)


def test_read_only_for_in_place() -> None:
    W = np.ones((3, 4), np.float32)
    W.flags.writeable = False
    with raises_exactly(
        ValueError, "W: expected a writeable array (modified in place), got a read-only one"
    ):
        prune.apply_mask_(W, np.ones((3, 4), bool))
    assert (W == 1).all()
    # but read-only inputs are fine everywhere else
    assert prune.magnitude(W, 0.5).mask.sum() == 6


def test_mask_shape_messages() -> None:
    W = np.ones((3, 4), np.float32)
    with raises_exactly(ValueError, "mask: expected shape (3, 4), got (4, 3)"):
        prune.apply_mask_(W, np.ones((4, 3), bool))
    with raises_exactly(ValueError, "mask: expected a 2-D array, got a 1-D array of shape (12,)"):
        prune.apply_mask_(W, np.ones(12, bool))
    with raises_exactly(
        ValueError,
        "mask: expected C-ordered rows (unit stride along the last "
        "axis), got bool array of shape (3, 4) with strides (1, 3); pass "
        "np.ascontiguousarray(mask)",
    ):
        prune.apply_mask_(W, np.ones((4, 3), bool).T)
    assert (W == 1).all()


def test_value_messages(dtype: np.dtype) -> None:
    W = np.ones((5, 8), dtype=dtype)
    W[3, 6] = np.nan
    for call in (
        lambda: prune.magnitude(W),
        lambda: prune.magnitude(W, 0.0),
        lambda: prune.magnitude(W, scope="layer"),
        lambda: prune.magnitude(W, 0.0, scope="layer"),
        lambda: prune.magnitude(W, pattern="2:4"),
        lambda: prune.block_magnitude(W, 0.5, 1),
        lambda: prune.check_pattern(W, "2:4"),
    ):
        with raises_exactly(ValueError, "W: contains NaN or Inf (row 3)"):
            call()
    good = np.ones((2, 2), np.float32)
    with raises_exactly(ValueError, "weights[1]: contains NaN or Inf (row 3)"):
        prune.magnitude_global([good, W], 0.5)


def test_global_names_the_weights_argument_for_a_single_matrix() -> None:
    """The argument is ``weights[i]`` whatever the list's length, at any sparsity."""
    W = np.ones((5, 8), dtype=np.float32)
    W[3, 6] = np.inf
    for s in (0.5, 0.0):
        with pytest.raises(ValueError, match=r"^weights\[0\]: contains NaN or Inf \(row 3\)"):
            prune.magnitude_global([W], s)


def test_argument_messages() -> None:
    W = np.ones((4, 8), np.float32)
    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (
            lambda: prune.magnitude(W, 1.0),
            ValueError,
            "sparsity: expected a value in [0, 1), got 1.0",
        ),
        (
            lambda: prune.magnitude(W, float("nan")),
            ValueError,
            "sparsity: expected a value in [0, 1), got nan",
        ),
        (
            lambda: prune.magnitude(W, "0.5"),
            TypeError,  # type: ignore[arg-type]
            "sparsity: expected a float in [0, 1), got str",
        ),
        (
            lambda: prune.magnitude(W, True),
            TypeError,
            "sparsity: expected a float in [0, 1), got bool",
        ),
        (
            lambda: prune.magnitude(W, scope="global"),
            ValueError,
            "scope: expected one of ('row', 'layer'), got 'global'",
        ),
        (
            lambda: prune.magnitude(W, pattern="2:3"),
            ValueError,
            "W: in_features=8 is not a multiple of m=3 (pattern 2:3)",
        ),
        (
            lambda: prune.magnitude(W, pattern="4:4"),
            ValueError,
            "pattern: expected 1 <= n < m <= 32 (n kept of every m), got '4:4'",
        ),
        (
            lambda: prune.magnitude(W, pattern="a:b"),
            ValueError,
            "pattern: expected 'n:m' such as '2:4' (n kept of every m), got 'a:b'",
        ),
        (
            lambda: prune.magnitude(W, 0.25, pattern="2:4"),
            ValueError,
            "sparsity: pattern 2:4 implies sparsity 0.5, got 0.25; leave sparsity unset with a "
            "pattern",
        ),
        (
            lambda: prune.magnitude(W, scope="layer", pattern="2:4"),
            ValueError,
            "scope: an N:M pattern is per row; use scope='row' (the default)",
        ),
        (
            lambda: prune.magnitude(W, num_threads=0),
            ValueError,
            "num_threads: expected None or an int in [1, 4096], got 0",
        ),
        (
            lambda: prune.magnitude(W, num_threads=1.5),
            TypeError,  # type: ignore[arg-type]
            "num_threads: expected None or an int, got float",
        ),
        (
            lambda: prune.magnitude(W, num_threads=True),
            TypeError,
            "num_threads: expected None or an int, got bool",
        ),
        (
            lambda: prune.magnitude(W, num_threads=5000),
            ValueError,
            "num_threads: expected None or an int in [1, 4096], got 5000",
        ),
        (
            lambda: prune.block_magnitude(W, 0.5, 3),
            ValueError,
            "block: W of shape (4, 8) is not a whole number of (3, 3) blocks",
        ),
        (
            lambda: prune.block_magnitude(W, 0.5, (0, 2)),
            ValueError,
            "block: expected positive sizes, got (0, 2)",
        ),
        (
            lambda: prune.block_magnitude(W, 0.5, 2.0),
            TypeError,  # type: ignore[arg-type]
            "block: expected an int or a (rows, cols) tuple of ints, got 2.0",
        ),
        (
            lambda: prune.check_pattern(W, "2:4", max_report=-1),
            ValueError,
            "max_report: expected an int >= 0, got -1",
        ),
        (
            lambda: prune.magnitude_global([], 0.5),
            ValueError,
            "weights: expected at least one matrix, got none",
        ),
        (
            lambda: prune.magnitude_global(W, 0.5),
            TypeError,
            "weights: expected a list or tuple of 2-D arrays, got ndarray",
        ),
        (
            lambda: prune.sparsity(np.zeros((0, 3))),
            ValueError,
            "W: expected a non-empty array, got shape (0, 3)",
        ),
        (
            lambda: sf.set_simd_level(2),
            TypeError,  # type: ignore[arg-type]
            "level: expected a str, got int",
        ),
        (
            lambda: sf.set_simd_level("sse"),
            ValueError,
            "level: expected 'scalar', 'avx2' or 'avx512', got 'sse'",
        ),
    ]
    for call, exc, message in cases:
        with raises_exactly(exc, message):
            call()


@pytest.mark.parametrize("threads", [2**31, 2**63, -(2**40)])
def test_out_of_range_thread_counts_raise_cleanly(threads: int) -> None:
    W = np.ones((4, 8), np.float32)
    with pytest.raises((ValueError, TypeError), match=r"^num_threads: "):
        prune.magnitude(W, num_threads=threads)


def test_simd_levels(restore_simd: None, all_simd_levels: list[str]) -> None:
    levels = ["scalar", "avx2", "avx512"]
    detected = sf.detected_simd_level()
    assert all_simd_levels[-1] == detected
    for level in all_simd_levels:
        sf.set_simd_level(level)
        assert sf.simd_level() == level
    for level in levels[levels.index(detected) + 1 :]:
        with pytest.raises(ValueError, match=f"^level: {level} is not supported here"):
            sf.set_simd_level(level)
        assert sf.simd_level() == detected  # unchanged by the failed call
