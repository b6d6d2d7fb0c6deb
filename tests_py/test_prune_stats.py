"""Hessians stay in the core: the pruning methods take a ``LayerStats`` and read its X^T X in
place; one ``HessianFactor`` serves every weight that reads the same input; the
reconstruction error is computed in the core from the same statistics.

Oracles: the same methods given ``stats.hessian`` (the float64 copy, today's path) must give
bitwise the same weights, masks and info; the error against a float64 numpy formula; the
dead-column rule against IST-DASLab/sparsegpt's (``H[d, d] = 1``, ``W[:, d] = 0``, per W).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf
from sparseforge.calib import LayerStats


def _stats(rng: np.random.Generator, c: int, tokens: int = 300, dead: int | None = None):
    X = rng.standard_normal((tokens, c)).astype(np.float32)
    X[:, : c // 4] *= 4.0  # some structure: unequal column scales
    if dead is not None:
        X[:, dead] = 0.0
    st = LayerStats(c)
    st.update(X[: tokens // 2])
    st.update(X[tokens // 2 :])  # two updates: the token divisor is not one chunk's
    return st, X


def _same(a: sf.prune.PruneResult, b: sf.prune.PruneResult) -> None:
    assert a.weight.dtype == b.weight.dtype
    assert np.array_equal(a.weight.view(np.uint8), b.weight.view(np.uint8))
    assert np.array_equal(a.mask, b.mask)
    assert a.sparsity == b.sparsity
    for k in ("percdamp_used", "damp", "attempts", "loss", "dead_columns"):
        assert a.info[k] == b.info[k], k
    assert np.array_equal(a.info["row_loss"], b.info["row_loss"])


@pytest.mark.parametrize("pattern", [None, "2:4"])
@pytest.mark.parametrize(
    ("precision", "factor_precision"),
    [("float32", "float64"), ("float64", "float64"), ("float32", "float32")],
)
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_sparsegpt_stats_in_place_bitwise(
    pattern: str | None, precision: str, factor_precision: str, dtype: type
) -> None:
    rng = np.random.default_rng(0)
    c = 160  # not a multiple of the 128-column block
    st, _ = _stats(rng, c, dead=7)
    W = rng.standard_normal((37, c)).astype(dtype)
    kw = dict(pattern=pattern, precision=precision, factor_precision=factor_precision)
    want = sf.prune.sparsegpt(W, st.hessian, **kw)
    got = sf.prune.sparsegpt(W, st, **kw)
    _same(got, want)
    assert got.info["dead_columns"] == [7]
    assert np.all(got.weight[:, 7].astype(np.float32) == 0)


def test_shared_factor_serves_every_weight_bitwise() -> None:
    """One factorisation for q/k/v-like weights: each equals its own full call, and each W's
    dead column is zeroed (the reference zeroes W[:, dead] per weight; U depends on H only)."""
    rng = np.random.default_rng(1)
    c = 96
    st, _ = _stats(rng, c, dead=11)
    f = sf.prune.factor_hessian(st, percdamp=0.05)
    assert f.in_features == c
    assert f.dead_columns == [11]
    assert f.attempts == 1
    assert f.percdamp_used == 0.05
    assert f.nbytes >= c * c * 4
    for rows in (64, 17, 130):
        W = rng.standard_normal((rows, c)).astype(np.float32)
        for pattern in (None, "2:4"):
            got = sf.prune.sparsegpt(W, f, pattern=pattern)
            want = sf.prune.sparsegpt(W, st.hessian, pattern=pattern, percdamp=0.05)
            _same(got, want)
            assert np.all(got.weight[:, 11] == 0)
    # repeated use leaves the factor unchanged
    W = rng.standard_normal((8, c)).astype(np.float32)
    _same(sf.prune.sparsegpt(W, f), sf.prune.sparsegpt(W, f))


def test_shared_factor_settings_are_checked() -> None:
    rng = np.random.default_rng(2)
    st, _ = _stats(rng, 32)
    f = sf.prune.factor_hessian(st, percdamp=0.1, precision="float64")
    W = rng.standard_normal((4, 32)).astype(np.float32)
    assert sf.prune.sparsegpt(W, f).info["precision"] == "float64"
    with pytest.raises(ValueError, match=r"percdamp: 0\.01 differs"):
        sf.prune.sparsegpt(W, f, percdamp=0.01)
    with pytest.raises(ValueError, match="precision"):
        sf.prune.sparsegpt(W, f, precision="float32")
    with pytest.raises(ValueError, match="in_features"):
        sf.prune.sparsegpt(rng.standard_normal((4, 16)).astype(np.float32), f)
    with pytest.raises(TypeError, match="HessianFactor"):
        sf.prune.HessianFactor()
    with pytest.raises(TypeError, match="sparsegpt only"):
        sf.prune.obs(W, f, 0.5)
    no_h = LayerStats(32, hessian=False)
    no_h.update(np.ones((3, 32), np.float32))
    with pytest.raises(ValueError, match="hessian=False"):
        sf.prune.factor_hessian(no_h)
    with pytest.raises(ValueError, match="no data"):
        sf.prune.sparsegpt(W, LayerStats(32))


def test_factor_failure_raises_numerical_error() -> None:
    # An indefinite "Hessian" loaded as statistics: the same escalation and error as an array.
    c = 8
    H = np.eye(c)
    H[0, 1] = H[1, 0] = 5.0
    with pytest.raises(sf.NumericalError):
        sf.prune.factor_hessian(H, percdamp=0.0, max_percdamp=0.01)


def test_other_methods_take_stats_in_place() -> None:
    rng = np.random.default_rng(3)
    c = 48
    st, _ = _stats(rng, c, dead=5)
    W = rng.standard_normal((20, c)).astype(np.float32)
    mask = sf.prune.wanda(W, st, 0.5).mask
    H = st.hessian
    for method in ("exact", "sweep"):
        _same(
            sf.prune.reconstruct(W, st, mask, method=method),
            sf.prune.reconstruct(W, H, mask, method=method),
        )
    _same(sf.prune.obs(W, st, 0.5), sf.prune.obs(W, H, 0.5))
    a, b = sf.prune.obd(W, st, 0.5), sf.prune.obd(W, H, 0.5)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.weight, b.weight)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_reconstruction_error_in_core(dtype: type) -> None:
    rng = np.random.default_rng(4)
    c = 300  # three 128-tiles, the last partial
    st, X = _stats(rng, c)
    W = rng.standard_normal((70, c)).astype(dtype)
    W_hat = sf.prune.sparsegpt(W, st, 0.5).weight
    Wd, Dd = W.astype(np.float64), W.astype(np.float64) - W_hat.astype(np.float64)
    H = st.hessian
    want = np.einsum("ij,ij->", Dd @ H, Dd) / np.einsum("ij,ij->", Wd @ H, Wd)
    got = sf.prune.reconstruction_error(W, W_hat, st)
    assert got == pytest.approx(want, rel=1e-12)
    assert sf.prune.reconstruction_error(W, W_hat, H) == pytest.approx(want, rel=1e-12)
    # the output error it stands for, from the activations themselves
    Xd = X.astype(np.float64)
    direct = np.sum((Xd @ Dd.T) ** 2) / np.sum((Xd @ Wd.T) ** 2)
    assert got == pytest.approx(direct, rel=1e-6)  # the statistics sum chunks in fp32
    one = sf.prune.reconstruction_error(W, W_hat, st, num_threads=1)
    two = sf.prune.reconstruction_error(W, W_hat, st, num_threads=2)
    assert one == two == got
    assert sf.prune.reconstruction_error(W, W, st) == 0.0


def test_reconstruction_error_bad_input() -> None:
    rng = np.random.default_rng(5)
    st, _ = _stats(rng, 16)
    W = rng.standard_normal((4, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="H: expected shape"):
        sf.prune.reconstruction_error(W[:, :8].copy(), W[:, :8].copy(), st)
    with pytest.raises(ValueError, match="no positive energy"):
        sf.prune.reconstruction_error(np.zeros_like(W), W, st)
    with pytest.raises(TypeError, match="W_hat"):
        sf.prune.reconstruction_error(W, W.tolist(), st)  # type: ignore[arg-type]


def test_pipeline_shared_factor_equals_todays_path() -> None:
    """sf.models.prune with SparseGPT (one factor per shared input, statistics read in place)
    gives bitwise the weights of the old path: every linear pruned from a float64 copy of
    its Hessian, factorised anew."""
    import realdata
    from sparseforge import models as sm
    from sparseforge.models import pipeline

    path = realdata.stories260k_path()
    if path is None:
        pytest.skip("stories260K not found (../shared/data or SPARSEFORGE_DATA)")

    def old_path(W, stats, sparsity, pattern, **kw):  # type: ignore[no-untyped-def]
        return sf.prune.sparsegpt(W, stats.hessian, sparsity, pattern=pattern, **kw)

    pipeline.register_method("sparsegpt_copy", old_path, needs_hessian=True)
    try:
        ids = np.random.default_rng(0).integers(1, 500, size=(4, 64))
        models = []
        for method in ("sparsegpt", "sparsegpt_copy"):
            m = sm.load(path, linear_backend="sparseforge", num_threads=1)
            rep = pipeline.prune(m, ids, method=method, pattern="2:4", progress=False)
            models.append((m, rep))
        (a, ra), (b, rb) = models
        for i in range(a.config.n_layers):
            for nm in a.linear_names(i):
                assert np.array_equal(a.weight(nm), b.weight(nm)), nm
        for la, lb in zip(ra.layers, rb.layers, strict=True):
            assert la.error == pytest.approx(lb.error, rel=1e-12)
            assert la.info["loss"] == lb.info["loss"]
    finally:
        pipeline.METHODS.pop("sparsegpt_copy", None)
