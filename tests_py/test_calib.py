"""sparseforge.calib.LayerStats against numpy float64 sums.

Streaming updates of random sizes (1-token ones included) for every storage dtype, shard
merging, the on-disk round trip (bitwise), corrupt files, atomic saves and bad input.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import reference as ref
import sparseforge as sf
from reference import F32

LayerStats = sf.calib.LayerStats


# --- helpers --------------------------------------------------------------------------------


def activations(
    rng: np.random.Generator, tokens: int, in_features: int, dtype: np.dtype = F32
) -> np.ndarray:
    """Activation-like inputs: per-channel scales over three decades, a non-zero mean and one
    outlier channel; rounded to ``dtype``."""
    scale = np.exp(rng.uniform(-3, 3, size=in_features)).astype(np.float32)
    scale[rng.integers(in_features)] *= 30
    X = (rng.standard_normal((tokens, in_features), dtype=np.float32) + 0.3) * scale
    return ref.cast_to(X, dtype)


def split_sizes(rng: np.random.Generator, total: int) -> list[int]:
    """Chunk sizes summing to ``total``: several 1-token chunks, then random sizes."""
    sizes = [1, 1, 2, 1]
    left = total - sum(sizes)
    while left > 0:
        s = int(min(left, rng.integers(1, 300)))
        sizes.append(s)
        left -= s
    return sizes


def oracle(chunks: list[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, sum of squares, col_norms, X^T X / T) in float64 from the exact values."""
    X = np.concatenate([ref.to_f32(c).astype(np.float64) for c in chunks])
    T = X.shape[0]
    ss = (X**2).sum(0)
    return T, ss, np.sqrt(ss / T), X.T @ X / T


# The Hessian is summed in fp32 within chunks of up to 2048 tokens (a symmetric rank-k update)
# and in float64 across chunks (docs/pruning.md, "Calibration"). Measured against float64
# sums: up to ~3.6e-6 of sqrt(H_ii H_jj) on all-positive bf16 inputs over full 2048-token
# chunks, ~1.6e-6 on mixed signs. The bound below leaves a 5x margin; with float64
# accumulation it could be 1e-6 like the column sums.
HESSIAN_RTOL = 2e-5


def assert_hessian_close(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Entry (i, j) within ``rtol`` of ``sqrt(H_ii H_jj)`` (the Cauchy-Schwarz bound of the
    entry, so near-zero off-diagonal sums are judged on the scale of their terms)."""
    d = np.sqrt(np.diagonal(want))
    err = np.abs(got - want) / np.maximum(np.outer(d, d), np.finfo(np.float64).tiny)
    worst = np.unravel_index(int(np.argmax(err)), err.shape)
    assert err.max() <= rtol, f"hessian{worst}: got {got[worst]!r}, want {want[worst]!r}"


def stream(chunks: list[np.ndarray], in_features: int, hessian: bool = True) -> LayerStats:
    st = LayerStats(in_features, hessian=hessian)
    for c in chunks:
        st.update(c)
    return st


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- streaming against numpy ----------------------------------------------------------------


@pytest.mark.parametrize("in_features", [1, 37, 130])
def test_streaming_matches_numpy(
    dtype: np.dtype, in_features: int, rng: np.random.Generator
) -> None:
    X = activations(rng, 1500, in_features, dtype)
    sizes = split_sizes(rng, X.shape[0])
    chunks = np.split(X, np.cumsum(sizes)[:-1])
    st = stream(chunks, in_features)
    T, ss, norms, H = oracle(chunks)

    assert st.tokens == T
    assert isinstance(st.tokens, int)
    assert st.in_features == in_features
    assert st.has_hessian is True
    assert st.sum_squares.dtype == np.float64
    assert st.sum_squares.shape == (in_features,)
    np.testing.assert_allclose(st.sum_squares, ss, rtol=1e-6)
    assert st.col_norms.dtype == np.float32
    assert st.col_norms.shape == (in_features,)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    h = st.hessian
    assert h.dtype == np.float64
    assert h.shape == (in_features, in_features)
    assert np.array_equal(h, h.T), "hessian is not exactly symmetric"
    assert_hessian_close(h, H, HESSIAN_RTOL)
    np.testing.assert_allclose(np.diagonal(h), ss / T, rtol=1e-6)


@pytest.mark.parametrize(("tokens", "in_features"), [(5000, 40), (4097, 600)])
def test_large_updates_cross_chunk_and_tile_boundaries(
    tokens: int, in_features: int, rng: np.random.Generator
) -> None:
    """One update longer than the 2048-token chunk, and in_features past a 512 tile."""
    X = activations(rng, tokens, in_features)
    st = stream([X], in_features)
    T, ss, norms, H = oracle([X])
    assert st.tokens == T
    np.testing.assert_allclose(st.sum_squares, ss, rtol=1e-6)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    assert_hessian_close(st.hessian, H, HESSIAN_RTOL)


def test_every_simd_level_matches_numpy(simd_level: str, rng: np.random.Generator) -> None:
    X = activations(rng, 3000, 70, ref.BF16)
    st = stream(np.split(X, [1, 999]), 70)
    _, ss, norms, H = oracle([X])
    np.testing.assert_allclose(st.sum_squares, ss, rtol=1e-6)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    assert_hessian_close(st.hessian, H, HESSIAN_RTOL)


def test_one_token_updates(rng: np.random.Generator) -> None:
    X = activations(rng, 64, 19)
    st = stream([X[i : i + 1] for i in range(64)], 19)
    T, ss, norms, H = oracle([X])
    assert st.tokens == T == 64
    np.testing.assert_allclose(st.sum_squares, ss, rtol=1e-6)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    assert_hessian_close(st.hessian, H, HESSIAN_RTOL)
    # one update of all rows gives the same statistics (up to the fp32 chunk sums)
    one = stream([X], 19)
    assert_hessian_close(one.hessian, st.hessian, HESSIAN_RTOL)
    np.testing.assert_allclose(one.sum_squares, st.sum_squares, rtol=1e-12, atol=0)


def test_small_integers_are_exact(dtype: np.dtype, rng: np.random.Generator) -> None:
    """Integer inputs make every product and sum exact in float64: no tolerance."""
    X = ref.cast_to(rng.integers(-4, 5, size=(301, 24)).astype(np.float32), dtype)
    chunks = np.split(X, [1, 2, 50, 51, 200])
    st = stream(chunks, 24)
    T, ss, norms, H = oracle(chunks)
    assert np.array_equal(st.sum_squares, ss)
    assert st.tokens == T
    assert np.array_equal(st.hessian, H)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)


def test_hessian_false_keeps_only_norms(rng: np.random.Generator) -> None:
    X = activations(rng, 200, 33)
    st = stream(np.split(X, [3, 100]), 33, hessian=False)
    _, ss, norms, _ = oracle([X])
    assert st.has_hessian is False
    np.testing.assert_allclose(st.sum_squares, ss, rtol=1e-6)
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    with pytest.raises(ValueError, match="hessian"):
        _ = st.hessian


def test_properties_return_new_arrays(rng: np.random.Generator) -> None:
    X = activations(rng, 50, 8)
    st = stream([X], 8)
    h = st.hessian
    h[:] = 0
    n = st.col_norms
    n[:] = 0
    s = st.sum_squares
    s[:] = 0
    assert st.hessian.any()
    assert st.col_norms.any()
    assert st.sum_squares.any()


@pytest.mark.parametrize(("tokens", "in_features"), [(700, 96), (2500, 600)])
def test_threads_bitwise_identical(tokens: int, in_features: int, rng: np.random.Generator) -> None:
    X = activations(rng, tokens, in_features)
    chunks = np.split(X, [1, 300, 333])
    results = []
    for threads in (1, 2, 3):
        st = LayerStats(in_features)
        for c in chunks:
            st.update(c, num_threads=threads)
        results.append(st)
    for st in results[1:]:
        assert same_bits(st.hessian, results[0].hessian)
        assert same_bits(st.sum_squares, results[0].sum_squares)
        assert same_bits(st.col_norms, results[0].col_norms)


def test_accepts_row_slices(rng: np.random.Generator) -> None:
    big = activations(rng, 90, 40)
    view = big[5:80, 3:25]  # rows with a stride larger than the row
    st = stream([view], 22)
    _, _, norms, H = oracle([view])
    np.testing.assert_allclose(st.col_norms, norms, rtol=1e-6)
    assert_hessian_close(st.hessian, H, HESSIAN_RTOL)


# --- merge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hessian", [True, False])
def test_merge_equals_one_stream(hessian: bool, rng: np.random.Generator) -> None:
    X = activations(rng, 900, 45)
    shards = np.split(X, [1, 400, 650])
    parts = [stream([s], 45, hessian) for s in shards]
    before = [(p.tokens, p.sum_squares.copy()) for p in parts]
    merged = parts[0].merge(parts[1]).merge(parts[2]).merge(parts[3])
    one = stream(shards, 45, hessian)
    assert isinstance(merged, LayerStats)
    assert all(merged is not p for p in parts)
    assert merged.tokens == one.tokens == 900
    assert merged.has_hessian is hessian
    np.testing.assert_allclose(merged.sum_squares, one.sum_squares, rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.col_norms, one.col_norms, rtol=1e-6)
    if hessian:
        assert_hessian_close(merged.hessian, one.hessian, 1e-12)
    for p, (t, ss) in zip(parts, before, strict=True):  # the operands are unchanged
        assert p.tokens == t
        assert same_bits(p.sum_squares, ss)


def test_merge_exact_on_small_integers(rng: np.random.Generator) -> None:
    X = rng.integers(-3, 4, size=(500, 16)).astype(np.float32)
    a, b = stream([X[:123]], 16), stream([X[123:]], 16)
    m = a.merge(b)
    one = stream([X], 16)
    assert same_bits(m.hessian, one.hessian)
    assert same_bits(m.sum_squares, one.sum_squares)
    assert same_bits(m.col_norms, one.col_norms)
    # merge order does not matter for exact sums
    assert same_bits(b.merge(a).hessian, one.hessian)


def test_merge_rejects_mismatch(rng: np.random.Generator) -> None:
    a = stream([activations(rng, 10, 8)], 8)
    with pytest.raises(ValueError, match="in_features"):
        a.merge(stream([activations(rng, 10, 9)], 9))
    with pytest.raises(ValueError, match="hessian"):
        a.merge(stream([activations(rng, 10, 8)], 8, hessian=False))
    with pytest.raises(TypeError):
        a.merge(np.zeros(8))  # type: ignore[arg-type]


# --- save / load ------------------------------------------------------------------------------


@pytest.mark.parametrize("hessian", [True, False])
def test_save_load_round_trip_bitwise(
    hessian: bool, tmp_path: Path, rng: np.random.Generator
) -> None:
    X = activations(rng, 333, 29)
    st = stream(np.split(X, [1, 100]), 29, hessian)
    path = tmp_path / "stats.bin"
    st.save(path)
    back = LayerStats.load(path)
    assert back.tokens == st.tokens
    assert back.in_features == st.in_features
    assert back.has_hessian is st.has_hessian
    assert same_bits(back.sum_squares, st.sum_squares)
    assert same_bits(back.col_norms, st.col_norms)
    if hessian:
        assert same_bits(back.hessian, st.hessian)
    # a loaded object keeps streaming like the original
    more = activations(rng, 40, 29)
    st.update(more)
    back.update(more)
    assert same_bits(back.sum_squares, st.sum_squares)
    if hessian:
        assert same_bits(back.hessian, st.hessian)
    # str paths work too, and saving over an existing file replaces it
    st.save(str(path))
    assert LayerStats.load(str(path)).tokens == 373


def test_load_rejects_corrupt_files(tmp_path: Path, rng: np.random.Generator) -> None:
    st = stream([activations(rng, 100, 12)], 12)
    good = tmp_path / "good.bin"
    st.save(good)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "one_byte": data[:1],
        "header_only": data[:16],
        "half": data[: len(data) // 2],
        "minus_one": data[:-1],
        "garbage": bytes(rng.integers(0, 256, size=len(data), dtype=np.uint8)),
        "magic_flipped": bytes([data[0] ^ 0xFF]) + data[1:],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.bin"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            LayerStats.load(bad)
    with pytest.raises(OSError, match="missing"):
        LayerStats.load(tmp_path / "missing.bin")


def test_load_detects_flipped_payload_byte(tmp_path: Path, rng: np.random.Generator) -> None:
    """A flipped bit in the middle of the Hessian must not load silently (checksum)."""
    st = stream([activations(rng, 100, 12)], 12)
    path = tmp_path / "stats.bin"
    st.save(path)
    data = bytearray(path.read_bytes())
    for where in (len(data) // 2, len(data) - 9):
        flipped = bytearray(data)
        flipped[where] ^= 0x04
        bad = tmp_path / f"flip{where}.bin"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            LayerStats.load(bad)


_FAILING_SAVE = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    import sparseforge as sf
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    st = sf.calib.LayerStats(512)
    st.update(np.ones((4, 512), dtype=np.float32))
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        st.save(sys.argv[1])
    except Exception as err:
        print("raised", type(err).__name__, err)
    else:
        print("no error")
    """
)


def test_save_is_atomic_when_the_write_fails(tmp_path: Path) -> None:
    """A write that fails half-way (file-size limit: the 2 MiB Hessian does not fit in
    64 KiB) raises, leaves no file under the final name, keeps an old file intact and
    leaves no temporary file behind."""
    target = tmp_path / "stats.bin"
    old = b"previous contents"
    target.write_bytes(old)
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_SAVE, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("raised"), (
        f"save past the size limit did not raise: {proc.stdout}"
    )
    assert target.read_bytes() == old, "a failed save replaced the existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.bin"], "temporary file left"

    fresh = tmp_path / "fresh.bin"
    proc = subprocess.run(
        [sys.executable, "-c", _FAILING_SAVE, str(fresh)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("raised"), proc.stdout + proc.stderr
    assert not fresh.exists(), "a failed save left a partial file under the final name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.bin"]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_save_into_read_only_directory(tmp_path: Path, rng: np.random.Generator) -> None:
    st = stream([activations(rng, 10, 8)], 8)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            st.save(ro / "stats.bin")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# --- bad input --------------------------------------------------------------------------------


def test_bad_updates_raise_and_leave_the_state_unchanged(rng: np.random.Generator) -> None:
    st = stream([activations(rng, 20, 8)], 8)
    h0, s0 = st.hessian, st.sum_squares
    bad_inputs = {
        "wrong in_features": np.ones((3, 9), np.float32),
        "1-D": np.ones(8, np.float32),
        "3-D": np.ones((2, 3, 8), np.float32),
        "NaN": np.where(np.arange(24).reshape(3, 8) == 13, np.nan, 1).astype(np.float32),
        "Inf": np.where(np.arange(24).reshape(3, 8) == 5, -np.inf, 1).astype(np.float32),
        "fp16 Inf": np.full((2, 8), np.inf, np.float16),
    }
    for name, X in bad_inputs.items():
        with pytest.raises(ValueError, match=r"^X: "):
            st.update(X)
        assert st.tokens == 20, name
        assert same_bits(st.hessian, h0), name
        assert same_bits(st.sum_squares, s0), name
    for X in (
        np.ones((3, 8), np.float64),
        np.ones((3, 8), np.int32),
        np.ones((3, 8), np.complex64),
        np.ones((3, 8), bool),
    ):
        with pytest.raises(sf.DTypeError, match=r"^X: "):
            st.update(X)
    for X in (
        np.asfortranarray(np.ones((3, 8), np.float32)),  # no hidden copies: refused
        np.ones((3, 16), np.float32)[:, ::2],
        np.zeros((0, 8), np.float32),
        np.full((2, 8), 2.0**51, np.float32),  # documented limit |x| < 2^50
    ):
        with pytest.raises(ValueError, match=r"^X: "):
            st.update(X)
    with pytest.raises(TypeError):
        st.update([[1.0] * 8])  # type: ignore[arg-type]
    assert st.tokens == 20


def test_empty_statistics_refuse_to_answer() -> None:
    st = LayerStats(5)
    assert st.tokens == 0
    with pytest.raises(ValueError, match=r"no data|tokens"):
        _ = st.col_norms
    with pytest.raises(ValueError, match=r"no data|tokens"):
        _ = st.hessian


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_in_features(bad: int) -> None:
    with pytest.raises(ValueError, match="in_features"):
        LayerStats(bad)
    with pytest.raises(TypeError, match="in_features"):
        LayerStats(2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("hessian", [True, False])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_layerstats_pickles_its_exact_state(hessian: bool, precision: str) -> None:
    """pickle (Ray's object store, multiprocessing) keeps the accumulators bit for bit: a
    copy updated further equals the original updated the same way."""
    import pickle

    rng = np.random.default_rng(7)
    st = sf.calib.LayerStats(37, hessian, precision=precision)
    st.update((rng.standard_normal((300, 37)) * 3).astype(np.float32))
    copy = pickle.loads(pickle.dumps(st))
    assert isinstance(copy, sf.calib.LayerStats)
    assert copy.tokens == 300
    assert (copy.has_hessian, copy.precision) == (hessian, precision)
    x = rng.standard_normal((50, 37)).astype(np.float32)
    st.update(x)
    copy.update(x)
    assert np.array_equal(copy.sum_squares, st.sum_squares)
    if hessian:
        assert np.array_equal(copy.hessian, st.hessian)
    empty = pickle.loads(pickle.dumps(sf.calib.LayerStats(5)))
    assert empty.tokens == 0
    assert empty.in_features == 5
