"""sf.cast against numpy / ml_dtypes ``astype`` on every fp16/bf16 bit pattern and on
rounding-critical float32 patterns, at every SIMD level.

NaN payloads differ from numpy by design (documented in core/dtype.h), so against numpy a
NaN compares by NaN-ness and sign only; the documented payload rules have their own test.
"""

from __future__ import annotations

import numpy as np
import pytest

import reference as ref
import sparseforge as sf
from reference import BF16, DTYPES, F16, F32

U16_ALL = np.arange(1 << 16, dtype=np.uint16)


def all_patterns(dtype: np.dtype) -> np.ndarray:
    """Every 16-bit pattern as fp16 or bf16."""
    return U16_ALL.view(dtype)


def _f32(u: np.ndarray) -> np.ndarray:
    return np.asarray(u, dtype=np.uint32).view(np.float32)


def f32_patterns(seed: int = 7) -> np.ndarray:
    """float32 inputs that decide rounding: every top-16-bit pattern with halfway and
    near-halfway low bits (bf16 ties at 0x8000, f16 ties at 0x1000 for normal halves),
    the exact midpoints between all adjacent fp16 values (incl. subnormals) and one ulp
    either side, named specials and random bit patterns (many NaN payloads)."""
    rng = np.random.default_rng(seed)
    hi = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    lows = [0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x5000]
    lows += [0x7FFF, 0x8000, 0x8001, 0x9000, 0xB000, 0xF000, 0xFFFF]
    grid = (hi[:, None] | np.array(lows, dtype=np.uint32)[None, :]).ravel()
    grid_rand = hi | rng.integers(0, 1 << 16, size=hi.size, dtype=np.uint32)

    # midpoints between neighbouring finite halves: exact in float32 (12 significant bits)
    h = all_patterns(F16)
    finite = np.isfinite(h.astype(np.float32))
    lo = U16_ALL[finite & (U16_ALL != 0x7BFF) & (U16_ALL != 0xFBFF)]
    a = lo.view(np.float16).astype(np.float64)
    b = (lo + np.uint16(1)).view(np.float16).astype(np.float64)
    mid = ((a + b) / 2).astype(np.float32)
    assert np.array_equal(mid.astype(np.float64), (a + b) / 2)  # exact
    with np.errstate(over="ignore"):
        mids = np.concatenate(
            [
                mid,
                np.nextafter(mid, np.float32(np.inf)),
                np.nextafter(mid, np.float32(-np.inf)),
            ]
        )
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            65504.0,
            65519.996,
            65520.0,
            -65520.0,
            2.0**-24,
            2.0**-25,
            3 * 2.0**-26,
            2.0**-26,
            2.0**-14,
            2.0**-14 - 2.0**-25,
            3.4028235e38,
            1e-45,
            -1e-45,
            1.1754942e-38,
            1.1754944e-38,
        ],
        dtype=np.float32,
    )
    nans = np.array(
        [
            0x7F800001,
            0xFF800001,
            0x7FC00000,
            0xFFC00000,
            0x7FFFFFFF,
            0xFFFFFFFF,
            0x7FA00000,
            0x7F802000,
            0x7F801FFF,
            0x7FBFFFFF,
        ],
        dtype=np.uint32,
    )
    rand = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint32)
    return np.concatenate([_f32(grid), _f32(grid_rand), mids, specials, _f32(nans), _f32(rand)])


def oracle(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """numpy's / ml_dtypes' conversion."""
    if x.dtype == to:
        return x.copy()
    return ref.cast_to(x, to)


def assert_cast_equal(got: np.ndarray, want: np.ndarray, src: np.ndarray) -> None:
    """Bitwise equal, except that NaNs only need to agree in NaN-ness and sign."""
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    g, w = ref.bits(got).ravel(), ref.bits(want).ravel()
    g_nan = np.isnan(ref.to_f32(got)).ravel()
    w_nan = np.isnan(ref.to_f32(want)).ravel()
    sign = g.dtype.type(1 << (8 * got.dtype.itemsize - 1))
    same = np.where(w_nan, g_nan & ((g & sign) == (w & sign)), g == w)
    if not same.all():
        bad = np.flatnonzero(~same)[:8]
        s = ref.bits(src).ravel()[bad]
        pairs = ", ".join(
            f"{si:#x}->got {gi:#x} want {wi:#x}"
            for si, gi, wi in zip(s, g[bad], w[bad], strict=True)
        )
        pytest.fail(f"{(~same).sum()} mismatches, e.g. {pairs}")


@pytest.mark.parametrize("to", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("src", [F16, BF16], ids=lambda d: d.name)
def test_every_16bit_pattern(simd_level: str, src: np.dtype, to: np.dtype) -> None:
    x = all_patterns(src)
    assert_cast_equal(sf.cast(x, to), oracle(x, to), x)


@pytest.mark.parametrize("to", DTYPES, ids=lambda d: d.name)
def test_float32_rounding_patterns(simd_level: str, to: np.dtype) -> None:
    x = f32_patterns()
    assert_cast_equal(sf.cast(x, to), oracle(x, to), x)


def test_16bit_to_float32_is_exact() -> None:
    """Non-NaN fp16/bf16 values convert to float32 exactly and back unchanged."""
    for src in (F16, BF16):
        x = all_patterns(src)
        x = x[~np.isnan(ref.to_f32(x))]
        wide = sf.cast(x, F32)
        assert np.array_equal(wide, ref.to_f32(x))
        assert np.array_equal(ref.bits(sf.cast(wide, src)), ref.bits(x))


def test_nan_payloads_follow_documented_rule(simd_level: str) -> None:
    """core/dtype.h: fp32->fp16 sets the quiet bit and keeps the top payload bits (x86
    F16C); fp32->bf16 gives 0x7FC0 | sign (ml_dtypes); fp16->fp32 is quiet with the payload
    kept; bf16->fp32 is exact (bits << 16)."""
    u = np.concatenate(
        [
            np.arange(0x7F800001, 0x7F800001 + 4096, dtype=np.uint32),
            np.random.default_rng(3).integers(0x7F800001, 0x80000000, size=4096, dtype=np.uint32),
            np.array([0x7FFFFFFF, 0x7FC00000, 0x7F802000], dtype=np.uint32),
        ]
    )
    u = np.concatenate([u, u | np.uint32(0x80000000)])
    x = u.view(np.float32)
    sign16 = ((u >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint16)
    want16 = (
        sign16 | np.uint16(0x7E00) | ((u >> np.uint32(13)) & np.uint32(0x3FF)).astype(np.uint16)
    )
    assert np.array_equal(ref.bits(sf.cast(x, F16)), want16)
    assert np.array_equal(ref.bits(sf.cast(x, BF16)), sign16 | np.uint16(0x7FC0))

    h = U16_ALL[(U16_ALL & 0x7C00) == 0x7C00]
    h = h[(h & 0x3FF) != 0]  # every fp16 NaN
    sign32 = (h.astype(np.uint32) & np.uint32(0x8000)) << np.uint32(16)
    mant = (h.astype(np.uint32) & np.uint32(0x3FF)) << np.uint32(13)
    want32 = sign32 | np.uint32(0x7FC00000) | mant
    assert np.array_equal(ref.bits(sf.cast(h.view(F16), F32)), want32)

    b = U16_ALL[((U16_ALL & 0x7F80) == 0x7F80) & ((U16_ALL & 0x7F) != 0)]  # every bf16 NaN
    assert np.array_equal(ref.bits(sf.cast(b.view(BF16), F32)), b.astype(np.uint32) << 16)


@pytest.mark.parametrize("to", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("src", DTYPES, ids=lambda d: d.name)
def test_every_simd_level_is_bitwise_identical(
    restore_simd: None, all_simd_levels: list[str], src: np.dtype, to: np.dtype
) -> None:
    """Including NaN payloads, on every length 0..70 (vector bodies and scalar tails),
    a long array that crosses the 64 Ki chunking, and every thread count."""
    if src == F32:
        x = f32_patterns(seed=11)[: 3 * 65536 + 77]
    else:
        x = np.concatenate([all_patterns(src)] * 3)[: 3 * 65536 + 77]
    results = {}
    for level in all_simd_levels:
        sf.set_simd_level(level)
        short = [ref.bits(sf.cast(x[3 : 3 + n], to)) for n in range(71)]
        long_1 = ref.bits(sf.cast(x, to, num_threads=1))
        long_3 = ref.bits(sf.cast(x, to, num_threads=3))
        assert np.array_equal(long_1, long_3)
        results[level] = (short, long_1)
    base_short, base_long = results["scalar"]
    for level, (short, long_1) in results.items():
        assert np.array_equal(long_1, base_long), level
        for n, (a, b) in enumerate(zip(short, base_short, strict=True)):
            assert np.array_equal(a, b), (level, n)


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (2, 3, 4), (7, 1, 1, 9)])
def test_cast_keeps_shape(
    rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]
) -> None:
    x = ref.weights(rng, shape, dtype)
    for to in DTYPES:
        out = sf.cast(x, to)
        assert out.shape == shape
        assert out.dtype == to
        assert out.flags.c_contiguous
        assert_cast_equal(out, oracle(x, to), x)


def test_cast_returns_new_array_and_leaves_input(rng: np.random.Generator, dtype: np.dtype) -> None:
    x = ref.weights(rng, (33, 17), dtype, "special")
    before = x.tobytes()
    out = sf.cast(x, dtype)
    assert out is not x
    assert not np.shares_memory(out, x)
    assert x.tobytes() == before
    assert out.tobytes() == before  # finite values: a bitwise copy


@pytest.mark.parametrize(
    ("dtype_like", "want"),
    [
        (np.float32, F32),
        ("float32", F32),
        ("float16", F16),
        (np.float16, F16),
        ("bfloat16", BF16),
        (BF16, BF16),
        (np.dtype("f4"), F32),
        ("e", F16),
    ],
)
def test_cast_accepts_dtype_likes(dtype_like: object, want: np.dtype) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert sf.cast(x, dtype_like).dtype == want


@pytest.mark.parametrize("bad", [np.float64, "int32", np.int8, bool, np.complex64])
def test_cast_rejects_other_target_dtypes(bad: object) -> None:
    x = np.zeros(4, dtype=np.float32)
    with pytest.raises(sf.DTypeError, match=r"^dtype: expected float32, float16 or bfloat16"):
        sf.cast(x, bad)


def test_cast_rejects_bad_dtype_objects() -> None:
    x = np.zeros(4, dtype=np.float32)
    with pytest.raises(TypeError, match=r"^dtype: "):
        sf.cast(x, "not-a-dtype")
    with pytest.raises(TypeError, match=r"^dtype: "):
        sf.cast(x, object())
