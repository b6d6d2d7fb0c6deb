"""sparseforge.prune.wanda against numpy oracles and the PyTorch port of locuslab/wanda.

Score ``|W| * col_norms`` (float32), compared **per output row**; unstructured prunes
``int(in_features * sparsity)`` per row (a stable sort: ties by index), N:M keeps n of
every m. The reference's ``prune_n`` is the number *pruned*: ``pattern="2:4"`` is
``prune_n=2, prune_m=4`` and ``"1:4"`` is ``prune_n=3``. The variant (cumulative-mass
threshold with a bisection on alpha) is compared on integer data, where every sum is exact.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

import reference as ref
import sparseforge as sf
from reference import F32

SPARSITIES = (0.0, 0.1, 0.5, 0.77, 0.9)
PATTERNS = ((2, 4), (4, 8), (1, 4))


@pytest.fixture(scope="module")
def port() -> ModuleType:
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


def to_torch(a: np.ndarray) -> Any:
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.array(a, copy=True))


def norms(rng: np.random.Generator, cols: int) -> np.ndarray:
    """Column norms spanning two decades with an outlier channel (float32)."""
    c = np.exp(rng.uniform(-2.5, 2.5, size=cols)).astype(np.float32)
    c[rng.integers(cols)] *= np.float32(40)
    return c


def scores(W: np.ndarray, col_norms: np.ndarray) -> np.ndarray:
    """Wanda's score in float32: |W| * col_norms."""
    return ref.magnitudes(W) * col_norms.astype(np.float32)[None, :]


def scaler_row(col_norms: np.ndarray) -> Any:
    """The reference's statistic (squared norms, float32); sqrt gives the norms back exactly
    (sqrt(fl(c*c)) == c in binary floating point)."""
    t = to_torch(col_norms.astype(np.float32))
    sq = t * t
    assert bool((sq.sqrt() == t).all())
    return sq


def check_weight(W: np.ndarray, res: sf.prune.PruneResult) -> None:
    assert res.mask.dtype == np.bool_
    assert res.mask.shape == W.shape
    assert res.weight.dtype == W.dtype
    assert res.weight.shape == W.shape
    assert not np.shares_memory(res.weight, W)
    assert np.array_equal(ref.bits(res.weight), ref.bits(ref.apply_mask(W, res.mask)))
    assert res.sparsity == ref.sparsity(res.weight)
    assert res.info["pruned"] == int((~res.mask).sum())


def distinct_group_scores(
    rng: np.random.Generator, rows: int, cols: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer W and integer norms whose scores never tie inside a group of m (so torch's
    topk, whose tie order is unspecified, has a unique answer)."""
    c = rng.integers(1, 4, size=cols).astype(np.float32)
    W = rng.integers(-9, 10, size=(rows, cols)).astype(np.float32)
    while True:
        s = (np.abs(W) * c).reshape(rows, cols // m, m)
        srt = np.sort(s, axis=2)
        tied = (np.diff(srt, axis=2) == 0).any(axis=2)
        if not tied.any():
            return W, c
        r, g = np.nonzero(tied)
        for ri, gi in zip(r, g, strict=True):
            W[ri, gi * m : (gi + 1) * m] = rng.integers(-9, 10, size=m)


# --- numpy oracle (no torch) -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["normal", "ints"])
def test_unstructured_matches_numpy_oracle(
    dtype: np.dtype, kind: str, rng: np.random.Generator
) -> None:
    for shape in [(1, 7), (5, 64), (33, 130)]:
        W = ref.weights(rng, shape, dtype, kind)
        c = norms(rng, shape[1]) if kind == "normal" else rng.integers(0, 4, shape[1]).astype(F32)
        for s in SPARSITIES:
            res = sf.prune.wanda(W, c, s)
            want = ref.magnitude_row_mask(scores(W, c), s)
            assert np.array_equal(res.mask, want), (shape, s)
            check_weight(W, res)
            assert res.info["target_sparsity"] == s
            assert res.info["pruned"] == shape[0] * int(shape[1] * s)


@pytest.mark.parametrize("kind", ["normal", "ints"])
def test_nm_matches_numpy_oracle(dtype: np.dtype, kind: str, rng: np.random.Generator) -> None:
    for n, m in PATTERNS:
        W = ref.weights(rng, (17, 8 * m), dtype, kind)
        c = norms(rng, 8 * m)
        res = sf.prune.wanda(W, c, pattern=f"{n}:{m}")
        assert np.array_equal(res.mask, ref.nm_mask(scores(W, c), n, m)), (n, m)
        assert (res.mask.reshape(17, 8, m).sum(axis=2) == n).all()
        check_weight(W, res)
        assert res.info["target_sparsity"] == 1 - n / m


def test_default_sparsity(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (4, 16), F32)
    c = norms(rng, 16)
    assert np.array_equal(sf.prune.wanda(W, c).mask, ref.magnitude_row_mask(scores(W, c), 0.5))
    assert sf.prune.wanda(W, c, pattern="2:4").info["target_sparsity"] == 0.5


def test_comparison_is_per_row_not_per_layer(rng: np.random.Generator) -> None:
    """Row 0 has 1000x larger weights: a per-layer threshold would prune all of row 1."""
    W = rng.standard_normal((2, 32)).astype(np.float32)
    W[0] *= 1000
    c = norms(rng, 32)
    res = sf.prune.wanda(W, c, 0.5)
    assert (res.mask.sum(axis=1) == 16).all()
    per_layer = ref.magnitude_layer_mask(scores(W, c), 0.5)
    assert not np.array_equal(res.mask, per_layer)
    assert np.array_equal(res.mask, ref.magnitude_row_mask(scores(W, c), 0.5))


def test_activation_norms_change_the_mask() -> None:
    """A small weight on a loud input channel outranks a larger weight on a quiet one."""
    W = np.array([[0.1, 1.0, 0.5, 0.6]], dtype=np.float32)
    c = np.array([100.0, 0.01, 1.0, 1.0], dtype=np.float32)
    # scores 10, 0.01, 0.5, 0.6: prune index 1 and 2; magnitude would prune 0 and 2
    assert sf.prune.wanda(W, c, 0.5).mask.tolist() == [[True, False, False, True]]
    assert sf.prune.magnitude(W, 0.5).mask.tolist() == [[False, True, False, True]]


def test_ties_broken_by_index() -> None:
    W = np.ones((2, 8), dtype=np.float32)
    c = np.ones(8, dtype=np.float32)
    assert sf.prune.wanda(W, c, 0.5).mask.tolist() == [[False] * 4 + [True] * 4] * 2
    assert sf.prune.wanda(W, c, pattern="2:4").mask.tolist() == [[False, False, True, True] * 2] * 2
    assert (
        sf.prune.wanda(W, c, pattern="1:4").mask.tolist() == [[False, False, False, True] * 2] * 2
    )
    # equal scores from different factors: 2*1 == 1*2 == 0.5*4
    W2 = np.array([[2.0, 1.0, 0.5, 3.0]], dtype=np.float32)
    c2 = np.array([1.0, 2.0, 4.0, 1.0], dtype=np.float32)
    assert sf.prune.wanda(W2, c2, 0.5).mask.tolist() == [[False, False, True, True]]
    assert sf.prune.wanda(W2, c2, pattern="1:4").mask.tolist() == [[False, False, False, True]]


def test_zero_norm_channels_go_first(rng: np.random.Generator) -> None:
    W = rng.standard_normal((3, 8)).astype(np.float32) + 5
    c = np.ones(8, dtype=np.float32)
    c[[1, 6]] = 0
    res = sf.prune.wanda(W, c, 0.25)
    assert (~res.mask[:, [1, 6]]).all()
    assert res.mask.sum() == 18


def test_layerstats_accepted_as_col_norms(rng: np.random.Generator) -> None:
    X = rng.standard_normal((300, 48)).astype(np.float32) * norms(rng, 48)
    st = sf.calib.LayerStats(48, hessian=False)
    st.update(X)
    W = ref.weights(rng, (16, 48), F32)
    assert np.array_equal(sf.prune.wanda(W, st, 0.5).mask, sf.prune.wanda(W, st.col_norms).mask)


def test_row_sliced_weights(rng: np.random.Generator) -> None:
    big = ref.weights(rng, (20, 100), F32)
    W = big[3:17, 10:74]  # rows of a larger array
    c = norms(rng, 64)
    for kwargs in ({"sparsity": 0.5}, {"pattern": "2:4"}, {"sparsity": 0.5, "variant": True}):
        a = sf.prune.wanda(W, c, **kwargs)
        b = sf.prune.wanda(np.ascontiguousarray(W), c, **kwargs)
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(ref.bits(a.weight), ref.bits(b.weight))


def test_every_simd_level_matches_the_oracle(
    all_simd_levels: list[str], restore_simd: None
) -> None:
    """Scores are element-wise fp32 products and selections exact: every level gives the
    oracle's masks, and the same variant mask and alpha."""
    rng = np.random.default_rng(2024)
    W = ref.weights(rng, (37, 160), F32)
    c = norms(rng, 160)
    sc = scores(W, c)
    variants = []
    for level in all_simd_levels:
        sf.set_simd_level(level)
        assert np.array_equal(sf.prune.wanda(W, c, 0.5).mask, ref.magnitude_row_mask(sc, 0.5))
        assert np.array_equal(sf.prune.wanda(W, c, pattern="2:4").mask, ref.nm_mask(sc, 2, 4))
        variants.append(sf.prune.wanda(W, c, 0.5, variant=True))
    for v in variants[1:]:
        assert np.array_equal(v.mask, variants[0].mask)
        assert v.info["alpha"] == variants[0].info["alpha"]


def test_threads_identical(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (301, 96), F32)
    c = norms(rng, 96)
    for kwargs in ({"sparsity": 0.6}, {"pattern": "2:4"}, {"variant": True}):
        r1 = sf.prune.wanda(W, c, num_threads=1, **kwargs)
        for t in (2, 3):
            rt = sf.prune.wanda(W, c, num_threads=t, **kwargs)
            assert np.array_equal(rt.mask, r1.mask), (kwargs, t)
            assert np.array_equal(ref.bits(rt.weight), ref.bits(r1.weight))


# --- the PyTorch port ----------------------------------------------------------------------


def test_unstructured_equals_port_on_integer_scores(
    port: ModuleType, rng: np.random.Generator
) -> None:
    """Integer weights and norms: every score is exact in float32, with many ties, which
    the reference's stable sort breaks by index like sparseforge."""
    for shape in [(8, 16), (40, 100)]:
        W = rng.integers(-6, 7, size=shape).astype(np.float32)
        c = rng.integers(0, 5, size=shape[1]).astype(np.float32)
        for s in SPARSITIES:
            pruned = port.wanda_mask(to_torch(W), scaler_row(c), s).numpy()
            assert np.array_equal(sf.prune.wanda(W, c, s).mask, ~pruned), (shape, s)


def test_unstructured_equals_port_on_random_floats(
    port: ModuleType, rng: np.random.Generator
) -> None:
    for shape in [(16, 64), (64, 256)]:
        W = ref.weights(rng, shape, F32)
        c = norms(rng, shape[1])
        for s in SPARSITIES:
            pruned = port.wanda_mask(to_torch(W), scaler_row(c), s).numpy()
            assert np.array_equal(sf.prune.wanda(W, c, s).mask, ~pruned), (shape, s)


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_nm_equals_port(port: ModuleType, n: int, m: int, rng: np.random.Generator) -> None:
    """Random floats, and integers without ties inside a group (torch.topk's tie order is
    unspecified)."""
    W = ref.weights(rng, (32, 16 * m), F32)
    c = norms(rng, 16 * m)
    Wi, ci = distinct_group_scores(rng, 32, 16 * m, m)
    for WW, cc in ((W, c), (Wi, ci)):
        sc = scores(WW, cc).reshape(32, 16, m)
        assert (np.diff(np.sort(sc, axis=2), axis=2) > 0).all()  # no ties in a group
        pruned = port.wanda_mask(to_torch(WW), scaler_row(cc), 1 - n / m, m - n, m).numpy()
        assert (pruned.reshape(32, 16, m).sum(axis=2) == m - n).all()
        assert np.array_equal(sf.prune.wanda(WW, cc, pattern=f"{n}:{m}").mask, ~pruned)


def test_port_sanity_prune_n_is_pruned_count(port: ModuleType) -> None:
    """The reference's N:M counts pruned weights: prune_n=3 of 4 keeps one."""
    W = np.array([[4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    pruned = port.wanda_mask(to_torch(W), to_torch(np.ones(4, np.float32)), 0.75, 3, 4)
    assert pruned.numpy().tolist() == [[False, True, True, True]]
    assert sf.prune.wanda(W, np.ones(4, np.float32), pattern="1:4").mask.tolist() == [
        [True, False, False, False]
    ]


# --- variant --------------------------------------------------------------------------------


def variant_port(port: ModuleType, W: np.ndarray, c: np.ndarray, s: float) -> tuple[Any, ...]:
    """The port in float64 (sparseforge's variant sums in float64; on integer data both are
    exact, so they must agree)."""
    torch = pytest.importorskip("torch")
    Wt = to_torch(W).to(torch.float64)
    sq = to_torch(c).to(torch.float64) ** 2
    mask, alpha, cur, iters = port.wanda_variant(Wt, sq, s)
    return mask.numpy(), alpha, cur, iters


# The bracket [0, 0.8] halves until narrower than 0.001: 0.8 / 2**10 < 0.001, so at most 10
# bisection steps, i.e. 11 alphas evaluated. sparseforge's info["iterations"] counts the
# alphas evaluated (the first, 0.4, included); the port returns the steps.
BRACKET_STEPS = 10


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7])
def test_variant_equals_port_on_integers(
    port: ModuleType, s: float, rng: np.random.Generator
) -> None:
    for shape in [(16, 32), (64, 128), (10, 1000)]:
        W = rng.integers(-20, 21, size=shape).astype(np.float32)
        c = rng.integers(1, 6, size=shape[1]).astype(np.float32)
        pruned, alpha, cur, iters = variant_port(port, W, c, s)
        res = sf.prune.wanda(W, c, s, variant=True)
        assert np.array_equal(res.mask, ~pruned), (shape, s)
        assert res.info["alpha"] == pytest.approx(alpha, abs=1e-15)
        assert res.info["iterations"] == iters + 1
        achieved = float((~res.mask).mean())
        assert achieved == pytest.approx(cur, abs=1e-6)
        assert abs(achieved - s) <= 0.001 or iters == BRACKET_STEPS
        check_weight(W, res)


def test_variant_on_random_floats(rng: np.random.Generator) -> None:
    """Per row the pruned set is a prefix of the sorted scores, the layer sparsity is within
    0.001 of the target (or the bracket is exhausted) and alpha lies in the bracket."""
    for shape, s in [((64, 256), 0.5), ((128, 64), 0.6), ((8, 4096), 0.4)]:
        W = ref.weights(rng, shape, F32)
        c = norms(rng, shape[1])
        res = sf.prune.wanda(W, c, s, variant=True)
        sc = scores(W, c)
        for r in range(shape[0]):
            pr, kp = sc[r][~res.mask[r]], sc[r][res.mask[r]]
            assert pr.size == 0 or kp.size == 0 or pr.max() <= kp.min(), r
        achieved = float((~res.mask).mean())
        assert abs(achieved - s) <= 0.001 or res.info["iterations"] == BRACKET_STEPS + 1
        assert 0.0 <= res.info["alpha"] <= 0.8
        assert isinstance(res.info["iterations"], int)
        check_weight(W, res)


def test_variant_rows_get_different_sparsities(rng: np.random.Generator) -> None:
    """The cumulative-mass rule adapts per row: a row with a flat score profile loses more
    weights than one dominated by a few large scores."""
    W = np.abs(rng.standard_normal((2, 256))).astype(np.float32) + 1
    W[1, :8] *= 200  # row 1: mass concentrated in 8 weights
    c = np.ones(256, dtype=np.float32)
    res = sf.prune.wanda(W, c, 0.5, variant=True)
    per_row = (~res.mask).mean(axis=1)
    assert per_row[1] > per_row[0]


def test_variant_rejects_a_pattern(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (4, 16), F32)
    with pytest.raises(ValueError, match="variant"):
        sf.prune.wanda(W, norms(rng, 16), pattern="2:4", variant=True)


# --- validation -------------------------------------------------------------------------------


def test_col_norms_validation(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (4, 16), F32)
    good = norms(rng, 16)
    bad_values = {
        "short": good[:15],
        "long": np.concatenate([good, good[:1]]),
        "2-D": good.reshape(1, 16),
        "negative": np.where(np.arange(16) == 3, -1.0, good).astype(np.float32),
        "NaN": np.where(np.arange(16) == 3, np.nan, good).astype(np.float32),
        "Inf": np.where(np.arange(16) == 3, np.inf, good).astype(np.float32),
    }
    for name, c in bad_values.items():
        with pytest.raises(ValueError, match=r"^col_norms: "):
            sf.prune.wanda(W, c, 0.5)
        assert name
    for c in (good.astype(np.int32), good.astype(np.complex64), good.astype(bool)):
        with pytest.raises((TypeError, ValueError), match=r"^col_norms: "):
            sf.prune.wanda(W, c, 0.5)


def test_argument_validation(rng: np.random.Generator) -> None:
    W = ref.weights(rng, (4, 16), F32)
    c = norms(rng, 16)
    for s in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"^sparsity: "):
            sf.prune.wanda(W, c, s)
    with pytest.raises(ValueError, match=r"^sparsity: "):
        sf.prune.wanda(W, c, 0.3, pattern="2:4")
    with pytest.raises(ValueError, match=r"^W: .*multiple of m=4"):
        sf.prune.wanda(ref.weights(rng, (4, 18), F32), norms(rng, 18), pattern="2:4")
    Wnan = W.copy()
    Wnan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^W: "):
        sf.prune.wanda(Wnan, c, 0.5)
    with pytest.raises((TypeError, ValueError), match=r"^W: "):
        sf.prune.wanda(W.astype(np.float64), c, 0.5)
