"""sparseforge.prune against the numpy oracles in reference.py.

Every mask is compared with an independent stable-argsort implementation on random data
and on small integers (many ties, signed zeros), on awkward shapes and row-sliced views,
for every dtype, SIMD level and thread count; the PruneResult contract is checked on each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import reference as ref
import sparseforge as sf
from reference import BF16, DTYPES, F16, F32
from sparseforge import prune

SPARSITIES = (0.0, 0.1, 0.3, 0.5, 0.77, 0.9, 0.99)
ROW_SHAPES = [(3, c) for c in range(1, 18)] + [(1, 31), (2, 129), (43, 401), (3, 1000), (2, 4099)]
LAYER_SHAPES = [(1, 1), (1, 17), (13, 7), (43, 401), (64, 64), (5, 1000), (300, 257)]
PATTERNS = [
    (1, 2),
    (2, 4),
    (1, 4),
    (3, 4),
    (4, 8),
    (2, 8),
    (7, 8),
    (3, 5),
    (6, 7),
    (3, 16),
    (1, 32),
    (5, 32),
    (31, 32),
    (9, 17),
]
BLOCKS = [(1, 1), (2, 2), (4, 8), (16, 16), (3, 5), (1, 4), (8, 1)]


def check_result(W: np.ndarray, res: prune.PruneResult, want_mask: np.ndarray) -> None:
    """The PruneResult contract: weight is a pruned copy (+0.0 where pruned, W's bits where
    kept), mask is bool True=kept and equals the oracle, sparsity counts weight's zeros."""
    assert isinstance(res, prune.PruneResult)
    assert res.mask.dtype == np.bool_
    assert res.mask.shape == W.shape
    if not np.array_equal(res.mask, want_mask):
        diff = np.argwhere(res.mask != want_mask)
        pytest.fail(
            f"mask differs from the oracle at {len(diff)} places, first {diff[:5].tolist()}"
        )
    assert res.weight.dtype == W.dtype
    assert res.weight.shape == W.shape
    assert res.weight.flags.c_contiguous
    assert not np.shares_memory(res.weight, W)
    assert not np.shares_memory(res.mask, W)
    assert np.array_equal(ref.bits(res.weight), ref.bits(ref.apply_mask(W, want_mask)))
    assert res.sparsity == ref.sparsity(res.weight)
    assert isinstance(res.sparsity, float)
    assert res.info["pruned"] == int((~want_mask).sum())
    assert isinstance(res.info["pruned"], int)


# --- magnitude, row and layer scope ------------------------------------------------------


@pytest.mark.parametrize("kind", ref.KINDS)
def test_row_scope_matches_oracle(
    simd_level: str, dtype: np.dtype, kind: str, rng: np.random.Generator
) -> None:
    for shape in ROW_SHAPES:
        W = ref.weights(rng, shape, dtype, kind)
        for s in SPARSITIES:
            res = prune.magnitude(W, s)
            check_result(W, res, ref.magnitude_row_mask(W, s))
            assert res.info == {
                "method": "magnitude",
                "scope": "row",
                "target_sparsity": s,
                "pruned": shape[0] * ref.prune_count(shape[1], s),
            }


@pytest.mark.parametrize("kind", ref.KINDS)
def test_layer_scope_matches_oracle(
    simd_level: str, dtype: np.dtype, kind: str, rng: np.random.Generator
) -> None:
    for shape in LAYER_SHAPES:
        W = ref.weights(rng, shape, dtype, kind)
        for s in SPARSITIES:
            res = prune.magnitude(W, s, scope="layer")
            check_result(W, res, ref.magnitude_layer_mask(W, s))
            assert res.info == {
                "method": "magnitude",
                "scope": "layer",
                "target_sparsity": s,
                "pruned": ref.prune_count(W.size, s),
            }


def test_row_counts_follow_int_of_the_product() -> None:
    """int(cols * s) with the double product: 10 * 0.3 = 3.0000000000000004 -> 3,
    100 * 0.29 = 28.999999999999996 -> 28 (not round(), not ceil())."""
    W = np.arange(1, 101, dtype=np.float32)[None, :]
    assert int(prune.magnitude(W, 0.29).info["pruned"]) == 28
    assert not prune.magnitude(W, 0.29).mask[0, :28].any()
    assert prune.magnitude(W, 0.29).mask[0, 28:].all()
    W10 = np.arange(1, 11, dtype=np.float32)[None, :]
    assert prune.magnitude(W10, 0.3).mask.tolist() == [[False] * 3 + [True] * 7]


def test_ties_lower_index_pruned_first() -> None:
    W = np.array([[1, 1, 1, 1, 2, 2, -1, -0.0]], dtype=np.float32)
    # |W| = 1 1 1 1 2 2 1 0: the zero first, then the 1s from the left
    assert prune.magnitude(W, 0.5).mask.tolist() == [
        [False, False, False, True, True, True, True, False]
    ]
    assert (
        prune.magnitude(W, 0.5, scope="layer").mask.tolist()
        == prune.magnitude(W, 0.5).mask.tolist()
    )
    # groups |1 1 1 1| and |2 2 1 0|: the two leftmost 1s, then the 0 and the 1
    assert prune.magnitude(W, pattern="2:4").mask.tolist() == [
        [False, False, True, True, True, True, False, False]
    ]
    # -0.0 and +0.0 tie: index decides
    Z = np.array([[0.0, -0.0, 0.0, -0.0]], dtype=np.float32)
    assert prune.magnitude(Z, 0.5).mask.tolist() == [[False, False, True, True]]


def test_already_sparse_weights_report_achieved_sparsity(
    dtype: np.dtype, rng: np.random.Generator
) -> None:
    W = ref.weights(rng, (8, 40), dtype)
    W[:, ::2] = 0  # half zero already
    res = prune.magnitude(W, 0.25)
    check_result(W, res, ref.magnitude_row_mask(W, 0.25))
    assert res.sparsity == 0.5  # the pruned quarter were zeros anyway
    res = prune.magnitude(W, 0.75)
    assert res.sparsity == 0.75
    assert res.info["target_sparsity"] == 0.75


def test_default_sparsity_is_half(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (4, 10), F32)
    res = prune.magnitude(W)
    assert res.info["target_sparsity"] == 0.5
    check_result(W, res, ref.magnitude_row_mask(W, 0.5))


# --- N:M ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ref.KINDS)
def test_nm_matches_oracle(
    simd_level: str, dtype: np.dtype, kind: str, rng: np.random.Generator
) -> None:
    for n, m in PATTERNS:
        for rows, groups in [(1, 1), (3, 2), (5, 3), (43, 13)]:
            W = ref.weights(rng, (rows, m * groups), dtype, kind)
            want = ref.nm_mask(W, n, m)
            res = prune.magnitude(W, pattern=f"{n}:{m}")
            check_result(W, res, want)
            assert res.info == {
                "method": "magnitude",
                "pattern": f"{n}:{m}",
                "target_sparsity": 1 - n / m,
                "pruned": rows * groups * (m - n),
            }
            assert (res.mask.reshape(rows, groups, m).sum(axis=2) == n).all()
            assert prune.check_pattern(res.weight, f"{n}:{m}").ok
            assert ref.nm_violation_count(res.weight, n, m) == 0


@pytest.mark.parametrize("m", [2, 4, 8])
def test_nm_every_tie_pattern_of_a_group(simd_level: str, dtype: np.dtype, m: int) -> None:
    """m = 4 and 8 have vector rank kernels: feed them every group of values from {0, 1, 2}
    (m = 2, 4) or many random ones (m = 8), with signed zeros, at odd offsets in the row so
    groups straddle the vector width and the scalar tail."""
    if m <= 4:
        groups = np.array(np.meshgrid(*[np.arange(3)] * m, indexing="ij")).reshape(m, -1).T
    else:
        groups = np.random.default_rng(8).integers(0, 3, size=(3000, m))
    values = groups.astype(np.float32)
    values[::2] *= -1  # -0.0 in every other group
    for lead in (0, 1, 3):  # shift the groups against the vector lanes
        row = np.concatenate([np.full((lead, m), 5.0, np.float32), values]).reshape(1, -1)
        W = ref.cast_to(row, dtype)
        for n in range(1, m):
            got = prune.magnitude(W, pattern=f"{n}:{m}").mask
            assert np.array_equal(got, ref.nm_mask(W, n, m)), (lead, n)


@pytest.mark.parametrize("spelling", ["2:4", (2, 4), prune.NMPattern(2, 4)])
def test_nm_pattern_spellings(spelling: Any, rng: np.random.Generator) -> None:
    W = ref.weights(rng, (6, 24), F32)
    res = prune.magnitude(W, pattern=spelling)
    check_result(W, res, ref.nm_mask(W, 2, 4))
    # an explicit sparsity that agrees with the pattern is accepted
    check_result(W, prune.magnitude(W, 0.5, pattern=spelling), ref.nm_mask(W, 2, 4))


# --- global --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ref.KINDS)
def test_global_matches_oracle(simd_level: str, kind: str, rng: np.random.Generator) -> None:
    shapes = [(3, 5), (7, 17), (43, 401), (1, 1), (16, 64)]
    for trial in range(3):
        dts = [DTYPES[(i + trial) % 3] for i in range(len(shapes))]
        Ws = [ref.weights(rng, sh, dt, kind) for sh, dt in zip(shapes, dts, strict=True)]
        for s in SPARSITIES:
            results = prune.magnitude_global(Ws, s)
            assert isinstance(results, list)
            assert len(results) == len(Ws)
            wants = ref.magnitude_global_masks(Ws, s)
            for i, (W, res, want) in enumerate(zip(Ws, results, wants, strict=True)):
                check_result(W, res, want)
                assert res.info == {
                    "method": "magnitude_global",
                    "target_sparsity": s,
                    "index": i,
                    "pruned": int((~want).sum()),
                }
            total = sum(W.size for W in Ws)
            assert sum(int(r.info["pruned"]) for r in results) == ref.prune_count(total, s)


def test_global_ties_go_by_matrix_then_row_major_index() -> None:
    A = np.ones((2, 3), dtype=np.float32)
    B = np.ones((1, 4), dtype=np.float16)
    res = prune.magnitude_global((A, B), 0.7)  # int(10 * 0.7) = 7: all of A, first of B
    assert not res[0].mask.any()
    assert res[1].mask.tolist() == [[False, True, True, True]]
    res = prune.magnitude_global([B, A], 0.5)  # 5: all of B, then A's first row-major
    assert not res[0].mask.any()
    assert res[1].mask.tolist() == [[False, True, True], [True, True, True]]


def test_global_of_one_matrix_equals_layer_scope(dtype: np.dtype, rng: np.random.Generator) -> None:
    for kind in ref.KINDS:
        W = ref.weights(rng, (37, 91), dtype, kind)
        for s in SPARSITIES:
            (g,) = prune.magnitude_global([W], s)
            assert np.array_equal(g.mask, prune.magnitude(W, s, scope="layer").mask)


# --- block ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["layer", "row"])
@pytest.mark.parametrize("kind", ref.KINDS)
def test_block_matches_oracle(
    simd_level: str, dtype: np.dtype, kind: str, scope: str, rng: np.random.Generator
) -> None:
    for br, bc in BLOCKS:
        for tr, tc in [(1, 1), (1, 7), (3, 4), (5, 13)]:
            W = ref.weights(rng, (br * tr, bc * tc), dtype, kind)
            for s in (0.0, 0.3, 0.5, 0.9):
                block: int | tuple[int, int] = br if br == bc else (br, bc)
                res = prune.block_magnitude(W, s, block, scope=scope)
                want = ref.block_mask(W, s, br, bc, scope)
                check_result(W, res, want)
                assert res.info == {
                    "method": "block_magnitude",
                    "block": (br, bc),
                    "scope": scope,
                    "target_sparsity": s,
                    "pruned": int((~want).sum()),
                }


def test_block_ties_by_tile_index() -> None:
    W = np.ones((4, 6), dtype=np.float32)  # six equal 2x2 tiles
    res = prune.block_magnitude(W, 0.5, 2)
    assert res.mask.tolist() == [[False] * 6] * 2 + [[True] * 6] * 2
    res = prune.block_magnitude(W, 0.5, 2, scope="row")  # int(3 * 0.5) = 1 per tile row
    assert res.mask.tolist() == [[False, False, True, True, True, True]] * 4


def test_block_default_is_16(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (32, 48), F32)
    res = prune.block_magnitude(W, 0.5)
    assert res.info["block"] == (16, 16)
    assert res.info["scope"] == "layer"
    check_result(W, res, ref.block_mask(W, 0.5, 16, 16, "layer"))


# --- apply_mask_, check_pattern, sparsity --------------------------------------------------


def test_apply_mask_in_place(simd_level: str, dtype: np.dtype, rng: np.random.Generator) -> None:
    for shape in [(1, 1), (3, 7), (5, 16), (7, 33), (43, 401)]:
        W = ref.weights(rng, shape, dtype, "special")
        keep = rng.random(shape) < 0.4
        want = ref.apply_mask(W, keep)
        out = prune.apply_mask_(W, keep)
        assert out is W
        assert np.array_equal(ref.bits(W), ref.bits(want))


def test_apply_mask_on_views_touches_only_the_view(
    dtype: np.dtype, rng: np.random.Generator
) -> None:
    big = ref.weights(rng, (20, 50), dtype)
    keep_big = rng.random((40, 60)) < 0.5
    # (W view, mask view): both may be row-sliced views of larger arrays
    cases: list[tuple[tuple[slice, slice], tuple[slice, slice]]] = [
        ((slice(None), slice(0, 17)), (slice(0, 20), slice(3, 20))),
        ((slice(2, None), slice(3, 10)), (slice(None, 36, 2), slice(0, 7))),
        ((slice(None, None, 3), slice(5, 45)), (slice(1, 8), slice(10, 50))),
        ((slice(4, 5), slice(0, 50)), (slice(7, 8), slice(0, 50))),
    ]
    for wsl, msl in cases:
        B = big.copy()
        expected = B.copy()
        view, keep = B[wsl], keep_big[msl]
        assert view.shape == keep.shape
        expected[wsl] = ref.apply_mask(B[wsl], keep)
        out = prune.apply_mask_(view, keep)
        assert out is view
        assert np.array_equal(ref.bits(B), ref.bits(expected))  # nothing outside the view


def test_apply_mask_accepts_any_values(dtype: np.dtype) -> None:
    """apply_mask_ does not check values: NaN/Inf are kept or zeroed like any other."""
    W = ref.cast_to(
        np.array([[np.nan, np.inf, -np.inf, 1.0], [np.nan, -1.0, 0.0, np.inf]], dtype=np.float32),
        dtype,
    )
    keep = np.array([[True, False, True, False], [False, True, True, True]])
    want = ref.apply_mask(W, keep)
    prune.apply_mask_(W, keep)
    assert np.array_equal(ref.bits(W), ref.bits(want))


@pytest.mark.parametrize("max_report", [0, 1, 3, 10, 1000])
def test_check_pattern_matches_oracle(
    dtype: np.dtype, max_report: int, rng: np.random.Generator
) -> None:
    for n, m in PATTERNS:
        for density in (0.2, 0.5, 0.9):
            W = ref.weights(rng, (9, m * 5), dtype, "normal")
            W[rng.random(W.shape) > density] = 0
            W[rng.random(W.shape) < 0.1] = -0.0  # negative zero is a zero
            rep = prune.check_pattern(W, f"{n}:{m}", max_report=max_report)
            groups, violating, first = ref.nm_violations(W, n, m, max_report)
            assert rep.pattern == prune.NMPattern(n, m)
            assert (rep.groups, rep.violating, rep.first_violations) == (groups, violating, first)
            assert rep.ok == (violating == 0)
            assert bool(rep) == (violating == 0)


def test_check_pattern_default_reports_ten(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (30, 8), F32)  # dense: every group violates 2:4
    rep = prune.check_pattern(W, "2:4")
    assert rep.groups == rep.violating == 60
    assert rep.first_violations == [(r, c) for r in range(5) for c in (0, 4)]
    assert not rep


def test_sparsity_matches_oracle(dtype: np.dtype, rng: np.random.Generator) -> None:
    W = ref.weights(rng, (37, 53), dtype, "ints")
    W.ravel()[::7] = -0.0
    assert prune.sparsity(W) == ref.sparsity(W)
    assert prune.sparsity(W[:, 3:20]) == ref.sparsity(W[:, 3:20])
    assert prune.sparsity(W.T) == ref.sparsity(W.T)  # layout the core does not take
    assert prune.sparsity(np.zeros((2, 3), dtype)) == 1.0
    assert prune.sparsity(np.ones((2, 3), dtype)) == 0.0


def test_sparsity_other_arrays() -> None:
    x = np.array([0.0, -0.0, np.nan, 1.0, np.inf])
    assert prune.sparsity(x) == 2 / 5  # NaN is not zero
    W = np.array([[0.0, np.nan], [-0.0, 2.0]], dtype=np.float32)
    assert prune.sparsity(W) == 0.5
    assert prune.sparsity(np.array([[0, 1, 2, 0]], dtype=np.int32)) == 0.5
    assert prune.sparsity(np.zeros((2, 2, 2), dtype=np.float16)) == 1.0
    assert prune.sparsity(np.array([True, False, False, True])) == 0.5


# --- patterns --------------------------------------------------------------------------------


def test_nm_pattern_and_parse() -> None:
    p = prune.NMPattern(2, 4)
    assert (p.n, p.m, p.sparsity, str(p)) == (2, 4, 0.5, "2:4")
    assert prune.NMPattern(1, 32).sparsity == 1 - 1 / 32
    assert prune.parse_pattern("2:4") == p
    assert prune.parse_pattern((2, 4)) == p
    assert prune.parse_pattern(p) is p
    assert prune.parse_pattern("31:32") == prune.NMPattern(31, 32)
    assert prune.parse_pattern("1:2") == prune.NMPattern(1, 2)
    assert prune.parse_pattern((np.int64(3), np.int32(8))) == prune.NMPattern(3, 8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n = 3  # type: ignore[misc]
    for n in range(1, 32):
        for m in range(n + 1, 33):
            assert prune.parse_pattern(f"{n}:{m}") == prune.NMPattern(n, m)


@pytest.mark.parametrize(
    "bad",
    [
        "2:3:4",
        "2-4",
        "2:",
        ":4",
        "-1:4",
        "2:4 ",
        " 2:4",
        "2.0:4",
        "4:4",
        "0:4",
        "5:4",
        "1:33",
        "a:b",
        "",
        "1:1",
        "0:0",
        "99999999999:4",
    ],
)
def test_parse_pattern_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^pattern: "):
        prune.parse_pattern(bad)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ((2, 4.0), TypeError),
        ((True, 4), TypeError),
        ((2, 4, 8), TypeError),
        ([2, 4], TypeError),
        (24, TypeError),
        (None, TypeError),
        ((0, 4), ValueError),
        ((4, 2), ValueError),
        ((1, 33), ValueError),
        ((-1, 4), ValueError),
    ],
)
def test_pattern_objects_rejected(bad: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^pattern: "):
        prune.parse_pattern(bad)


# --- views, threads, inputs untouched ----------------------------------------------------


VIEW_SLICES = [
    (slice(None), slice(0, 17)),
    (slice(2, None), slice(3, 10)),
    (slice(None, None, 2), slice(1, 201)),
    (slice(0, 1), slice(0, 7)),
    (slice(5, 45), slice(0, 300)),
]


def _nm_cols(view: np.ndarray) -> str | None:
    for n, m in ((2, 4), (1, 2), (2, 3), (3, 7), (1, 5), (2, 17), (1, 10)):
        if view.shape[1] % m == 0:
            return f"{n}:{m}"
    return None


def test_row_sliced_views_work_without_copy(dtype: np.dtype, rng: np.random.Generator) -> None:
    big = ref.weights(rng, (50, 300), dtype, "ints")
    before = big.tobytes()
    for rows, cols in VIEW_SLICES:
        view = big[rows, cols]
        assert sf._core.core._gate_address(view) == view.__array_interface__["data"][0]
        dense = np.ascontiguousarray(view)
        for s in (0.0, 0.4, 0.5):
            check_result(view, prune.magnitude(view, s), ref.magnitude_row_mask(dense, s))
            check_result(
                view, prune.magnitude(view, s, scope="layer"), ref.magnitude_layer_mask(dense, s)
            )
        pat = _nm_cols(view)
        if pat is not None:
            n, m = map(int, pat.split(":"))
            check_result(view, prune.magnitude(view, pattern=pat), ref.nm_mask(dense, n, m))
            assert prune.check_pattern(view, pat) == prune.check_pattern(dense, pat)
        glob = prune.magnitude_global([view, dense], 0.6)
        wants = ref.magnitude_global_masks([dense, dense], 0.6)
        for W, res, want in zip((view, dense), glob, wants, strict=True):
            check_result(W, res, want)
        check_result(
            view, prune.block_magnitude(view, 0.5, 1), ref.block_mask(dense, 0.5, 1, 1, "layer")
        )
        assert prune.sparsity(view) == ref.sparsity(dense)
    assert big.tobytes() == before


def _calls(
    W: np.ndarray, Ws: list[np.ndarray], X: np.ndarray
) -> dict[str, Callable[[int | None], Any]]:
    """Every non-underscore function on W (a list of matrices Ws for the global ranking,
    a C-contiguous X for cast), by num_threads."""
    return {
        "row": lambda t: prune.magnitude(W, 0.6, num_threads=t),
        "layer": lambda t: prune.magnitude(W, 0.6, scope="layer", num_threads=t),
        "nm": lambda t: prune.magnitude(W, pattern="3:8", num_threads=t),
        "nm_generic": lambda t: prune.magnitude(W, pattern="5:12", num_threads=t),
        "global": lambda t: prune.magnitude_global(Ws, 0.45, num_threads=t),
        "block": lambda t: prune.block_magnitude(W, 0.5, (3, 4), num_threads=t),
        "block_row": lambda t: prune.block_magnitude(W, 0.5, 4, scope="row", num_threads=t),
        "check_pattern": lambda t: prune.check_pattern(W, "2:4", max_report=50, num_threads=t),
        "sparsity": lambda t: prune.sparsity(W, num_threads=t),
        "cast_f16": lambda t: sf.cast(X, F16, num_threads=t),
        "cast_bf16": lambda t: sf.cast(X, BF16, num_threads=t),
        "cast_f32": lambda t: sf.cast(X, F32, num_threads=t),
    }


def _comparable(x: Any) -> Any:
    if isinstance(x, prune.PruneResult):
        return (ref.bits(x.weight).tobytes(), x.mask.tobytes(), x.sparsity, dict(x.info))
    if isinstance(x, list):
        return [_comparable(v) for v in x]
    if isinstance(x, np.ndarray):
        return (x.dtype, x.shape, ref.bits(x).tobytes())
    return x


@pytest.mark.parametrize("kind", ["normal", "ints"])
def test_thread_counts_give_identical_results(
    dtype: np.dtype, kind: str, rng: np.random.Generator
) -> None:
    W = ref.weights(rng, (96, 168), dtype, kind)
    W[rng.random(W.shape) < 0.3] = 0
    Ws = [W, ref.weights(rng, (7, 1000), F16, kind), ref.weights(rng, (301, 5), BF16, kind)]
    X = ref.weights(rng, (3, 70001), dtype, kind)  # more than one 64 Ki cast chunk
    for name, call in _calls(W, Ws, X).items():
        base = _comparable(call(1))
        for t in (2, 3, None):
            assert _comparable(call(t)) == base, (name, t)


def test_inputs_are_left_untouched(dtype: np.dtype, rng: np.random.Generator) -> None:
    big = ref.weights(rng, (50, 80), dtype, "special")
    W = big[1:49, 2:74]  # a view: the whole buffer around it must stay too
    others = [ref.weights(rng, (9, 13), F16), big]
    Ws = [W, *others]
    snapshot = [x.tobytes() for x in (big, *others)]
    for name, call in _calls(W, Ws, big).items():
        call(None)
        assert [x.tobytes() for x in (big, *others)] == snapshot, name
    mask = rng.random(W.shape) < 0.5
    mask_before = mask.tobytes()
    prune.apply_mask_(W.copy(), mask)
    assert mask.tobytes() == mask_before


def test_results_do_not_alias_each_other(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (8, 16), F32)
    a, b = prune.magnitude(W, 0.5), prune.magnitude(W, 0.5)
    assert not np.shares_memory(a.weight, b.weight)
    assert not np.shares_memory(a.mask, b.mask)
    a.weight[...] = 7
    a.mask[...] = False
    assert np.array_equal(b.weight, ref.apply_mask(W, b.mask))
    assert b.mask.sum() == 64
