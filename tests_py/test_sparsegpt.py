"""sparseforge.prune.sparsegpt against the PyTorch port of IST-DASLab/sparsegpt.

``precision="float64"`` must reproduce the float64 port (masks identical, weights to the
float32 rounding of the port's values, per-row losses to 1e-9); ``precision="float32"`` the
float32 port (the reference's own precision) to 1e-5 of max|W| (measured: ~5e-7) with
>= 99.9% of the mask. Data: H from correlated activations (well conditioned), shapes like
64x128 and 96x256, block sizes 32 and 128, unstructured 50% and 2:4 / 4:8 (the reference's
``prunen`` = m - n), plus edge shapes, ties, dead inputs and indefinite Hessians.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

import reference as ref
import reference_obs as robs
import sparseforge as sf
from realdata import correlated_activations
from reference import F32


@pytest.fixture(scope="module")
def port() -> ModuleType:
    pytest.importorskip("torch")
    import torch_reference

    return torch_reference


def to_torch(a: np.ndarray) -> Any:
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.array(a, copy=True))


def layer(seed: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(W float32, H = X^T X / T float64) with correlated, moderately outlying inputs."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    X = correlated_activations(cols, 4 * cols, seed, outlier_channels=2, outlier_scale=4.0)
    X64 = X.astype(np.float64)
    return W, X64.T @ X64 / X.shape[0]


def run_port(
    port: ModuleType,
    W: np.ndarray,
    H: np.ndarray,
    *,
    sparsity: float = 0.5,
    pattern: tuple[int, int] | None = None,
    block_size: int = 128,
    percdamp: float = 0.01,
    float64: bool = True,
    **extra: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights float64, keep mask, row losses) from the port (N:M given as n kept)."""
    torch = pytest.importorskip("torch")
    prunen, prunem = (0, 0) if pattern is None else (pattern[1] - pattern[0], pattern[1])
    Wp, pruned, losses = port.sparsegpt_fasterprune(
        to_torch(ref.to_f32(W)),
        to_torch(H),
        sparsity,
        prunen,
        prunem,
        blocksize=block_size,
        percdamp=percdamp,
        dtype=torch.float64 if float64 else torch.float32,
        **extra,
    )
    return Wp.double().numpy(), ~pruned.numpy(), losses.double().numpy()


def assert_f32_rounding_of(got: np.ndarray, want64: np.ndarray, rel: float = 1e-9) -> None:
    """``got`` (float32) equals ``want64`` rounded to float32, allowing one float32 ulp
    for values within ``rel`` of a rounding boundary."""
    assert got.dtype == np.float32
    scale = float(np.abs(want64).max()) or 1.0
    ulp = np.spacing(np.abs(want64).astype(np.float32))
    err = np.abs(got.astype(np.float64) - want64)
    bad = err > ulp + rel * scale
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        pytest.fail(
            f"{int(bad.sum())} weights differ, first at {i}: got {got[i]!r}, want {want64[i]!r}"
        )
    exact = np.mean(got == want64.astype(np.float32))
    assert exact >= 0.999, f"only {exact:.4%} of the weights are the port's values rounded"


CASES = [
    # rows, cols, block_size, pattern (n kept, m) or None for 50% unstructured
    (64, 128, 32, None),
    (64, 128, 128, None),
    (96, 256, 32, None),
    (96, 256, 128, (2, 4)),
    (64, 128, 32, (4, 8)),
    (96, 256, 128, (4, 8)),
    (64, 160, 64, None),  # a last, partial block
]


def case_id(case: tuple[Any, ...]) -> str:
    r, c, b, p = case
    return f"{r}x{c}-b{b}-" + ("50%" if p is None else f"{p[0]}of{p[1]}")


def prune_sf(W: np.ndarray, H: np.ndarray, pattern: tuple[int, int] | None, **kw: Any) -> Any:
    if pattern is None:
        return sf.prune.sparsegpt(W, H, 0.5, **kw)
    return sf.prune.sparsegpt(W, H, pattern=f"{pattern[0]}:{pattern[1]}", **kw)


# --- against the port --------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float64_matches_port(port: ModuleType, case: tuple[Any, ...]) -> None:
    rows, cols, bs, pattern = case
    W, H = layer(rows * cols + bs, rows, cols)
    want_w, want_keep, want_loss = run_port(port, W, H, pattern=pattern, block_size=bs)
    res = prune_sf(W, H, pattern, block_size=bs, precision="float64")
    if not np.array_equal(res.mask, want_keep):
        diff = np.argwhere(res.mask != want_keep)
        pytest.fail(f"mask differs at {len(diff)} places, first {diff[:5].tolist()}")
    assert_f32_rounding_of(res.weight, want_w)
    assert not res.weight[~res.mask].any()
    row_loss = np.asarray(res.info["row_loss"])
    assert row_loss.shape == (rows,)
    np.testing.assert_allclose(row_loss, want_loss, rtol=1e-9, atol=0)
    assert res.info["loss"] == pytest.approx(float(want_loss.sum()), rel=1e-9)
    assert res.info["percdamp_used"] == 0.01
    assert res.info["attempts"] == 1
    assert list(res.info["dead_columns"]) == []
    assert res.info["damp"] == pytest.approx(0.01 * np.mean(np.diagonal(H)), rel=1e-12)
    assert res.sparsity == ref.sparsity(res.weight)


EDGE_CASES = [
    # rows, cols, block_size, sparsity, pattern
    (1, 8, 8, 0.5, None),
    (3, 20, 7, 0.5, None),  # block size not dividing the columns
    (7, 33, 128, 0.5, None),  # one block, wider than the layer
    (5, 40, 1, 0.5, None),  # one column per block: threshold over one column of all rows
    (9, 64, 16, 0.2, None),
    (9, 64, 16, 0.9, None),
    (5, 12, 4, None, (2, 4)),
    (6, 24, 8, None, (1, 4)),
    (4, 48, 24, None, (3, 8)),
    (2, 32, 32, None, (7, 8)),
]


@pytest.mark.parametrize(
    "case", EDGE_CASES, ids=lambda c: f"{c[0]}x{c[1]}-b{c[2]}-{c[3] if c[4] is None else c[4]}"
)
def test_edge_shapes_match_port(port: ModuleType, case: tuple[Any, ...]) -> None:
    rows, cols, bs, s, pattern = case
    W, H = layer(1000 + rows * cols + bs, rows, cols)
    want_w, want_keep, want_loss = run_port(
        port, W, H, sparsity=0.5 if s is None else s, pattern=pattern, block_size=bs
    )
    if pattern is None:
        res = sf.prune.sparsegpt(W, H, s, block_size=bs, precision="float64")
    else:
        res = prune_sf(W, H, pattern, block_size=bs, precision="float64")
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)


def test_every_simd_level_matches_port(port: ModuleType, simd_level: str) -> None:
    """The dense linear algebra may differ in the last bits between SIMD levels (FMA): every
    level must still reproduce the float64 port."""
    W, H = layer(77, 48, 128)
    want_w, want_keep, want_loss = run_port(port, W, H, block_size=32)
    res = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float64")
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)
    res32 = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float32")
    assert np.mean(res32.mask == want_keep) >= 0.999


def test_row_sliced_weights() -> None:
    Wbig, H = layer(3, 40, 200)
    W = Wbig[5:37, 30:158]  # rows of a larger array
    Hs = np.ascontiguousarray(H[30:158, 30:158])
    for kw in ({"sparsity": 0.5}, {"pattern": "2:4"}):
        a = sf.prune.sparsegpt(W, Hs, block_size=32, **kw)
        b = sf.prune.sparsegpt(np.ascontiguousarray(W), Hs, block_size=32, **kw)
        assert np.array_equal(a.mask, b.mask)
        assert np.array_equal(ref.bits(a.weight), ref.bits(b.weight))


@pytest.mark.parametrize("case", CASES[:6], ids=case_id)
def test_float32_matches_port(port: ModuleType, case: tuple[Any, ...]) -> None:
    rows, cols, bs, pattern = case
    W, H = layer(rows * cols + bs, rows, cols)
    want_w, want_keep, want_loss = run_port(
        port, W, H, pattern=pattern, block_size=bs, float64=False
    )
    res = prune_sf(W, H, pattern, block_size=bs, precision="float32")
    agree = float(np.mean(res.mask == want_keep))
    assert agree >= 0.999, f"mask agreement {agree:.4%}"
    rows_same = (res.mask == want_keep).all(axis=1)
    scale = float(np.abs(W).max())
    err = np.abs(res.weight[rows_same].astype(np.float64) - want_w[rows_same]).max()
    assert err <= 1e-5 * scale, f"max weight difference {err:.3g} (scale {scale:.3g})"
    np.testing.assert_allclose(
        np.asarray(res.info["row_loss"])[rows_same], want_loss[rows_same], rtol=1e-3
    )


@pytest.mark.parametrize("case", CASES[:6], ids=case_id)
def test_float32_factor_matches_port(port: ModuleType, case: tuple[Any, ...]) -> None:
    """factor_precision="float32" is the reference's arithmetic end to end (fp32 U, fp32
    sweep): it agrees with the port at least as well as the float64 factor does."""
    rows, cols, bs, pattern = case
    W, H = layer(rows * cols + bs, rows, cols)
    want_w, want_keep, want_loss = run_port(
        port, W, H, pattern=pattern, block_size=bs, float64=False
    )
    res = prune_sf(W, H, pattern, block_size=bs, precision="float32", factor_precision="float32")
    assert res.info["factor_precision"] == "float32"
    agree = float(np.mean(res.mask == want_keep))
    assert agree >= 0.999, f"mask agreement {agree:.4%}"
    rows_same = (res.mask == want_keep).all(axis=1)
    scale = float(np.abs(W).max())
    err = np.abs(res.weight[rows_same].astype(np.float64) - want_w[rows_same]).max()
    assert err <= 1e-4 * scale, f"max weight difference {err:.3g} (scale {scale:.3g})"
    np.testing.assert_allclose(
        np.asarray(res.info["row_loss"])[rows_same], want_loss[rows_same], rtol=1e-2
    )


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_float32_factor_threads_identical_and_escalates(precision: str) -> None:
    W, H = layer(83, 96, 320)
    runs = [
        sf.prune.sparsegpt(
            W,
            H,
            0.5,
            block_size=64,
            precision=precision,
            factor_precision="float32",
            num_threads=t,
        )
        for t in (1, 2, 3)
    ]
    for r in runs[1:]:
        assert np.array_equal(r.mask, runs[0].mask)
        assert np.array_equal(ref.bits(r.weight), ref.bits(runs[0].weight))
    Hi = indefinite_hessian(5, 64)
    Wi = (np.random.default_rng(6).standard_normal((16, 64)) * 0.1).astype(np.float32)
    res = sf.prune.sparsegpt(Wi, Hi, 0.5, block_size=32, factor_precision="float32")
    assert res.info["attempts"] > 1
    assert res.info["percdamp_used"] > 0.01
    with pytest.raises(ValueError, match="factor_precision"):
        sf.prune.sparsegpt(W, H, 0.5, factor_precision="float16")


def test_row_loss_is_the_damped_quadratic_error() -> None:
    """Per row, the SparseGPT loss equals 1/2 (w - w_hat)^T H' (w - w_hat) with H' the damped
    Hessian (an identity of the sequential OBS sweep)."""
    W, H = layer(7, 48, 96)
    res = sf.prune.sparsegpt(W, H, 0.6, block_size=32, precision="float64")
    Hd, _ = robs.damped(H, 0.01)
    D = W.astype(np.float64) - res.weight.astype(np.float64)
    quad = 0.5 * np.einsum("ij,jk,ik->i", D, Hd, D)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), quad, rtol=1e-5)


def test_fp16_bf16_weights(port: ModuleType, rng: np.random.Generator) -> None:
    W32, H = layer(11, 32, 64)
    for dt, mant in ((ref.F16, 10), (ref.BF16, 7)):
        W = ref.cast_to(W32, dt)
        want_w, want_keep, _ = run_port(port, W, H, block_size=32)
        res = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float64")
        assert res.weight.dtype == dt
        assert np.array_equal(res.mask, want_keep)
        got = ref.to_f32(res.weight).astype(np.float64)
        assert (np.abs(got - want_w) <= 2.0**-mant * np.abs(want_w) + 1e-30).all()
        res32 = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float32")
        assert res32.weight.dtype == dt
        assert np.mean(res32.mask == want_keep) >= 0.999


# --- damping, dead columns, Cholesky failure ---------------------------------------------------


def test_dead_columns_zero_the_weights(port: ModuleType) -> None:
    rows, cols = 32, 64
    rng = np.random.default_rng(5)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    X = correlated_activations(cols, 256, 5, outlier_channels=1, outlier_scale=3.0)
    dead = [3, 17, 40]
    X[:, dead] = 0
    X64 = X.astype(np.float64)
    H = X64.T @ X64 / 256
    for pattern in (None, (2, 4)):
        res = prune_sf(W, H, pattern, block_size=32, precision="float64")
        assert list(res.info["dead_columns"]) == dead
        assert not res.weight[:, dead].any()
        want_w, want_keep, want_loss = run_port(port, W, H, pattern=pattern, block_size=32)
        assert np.array_equal(res.mask, want_keep)
        assert_f32_rounding_of(res.weight, want_w)
        np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)
        Hfix = H.copy()
        Hfix[dead, dead] = 1
        assert res.info["damp"] == pytest.approx(0.01 * np.mean(np.diagonal(Hfix)), rel=1e-12)


def indefinite_hessian(seed: int, cols: int) -> np.ndarray:
    """A Hessian whose smallest eigenvalue is replaced by -3% of the mean diagonal: Cholesky
    fails with percdamp = 0.01 and succeeds with 0.1."""
    _, H0 = layer(seed, 1, cols)
    lam, Q = np.linalg.eigh(H0)
    lam[0] = -0.03 * float(np.mean(np.diagonal(H0)))
    H = (Q * lam) @ Q.T
    H = (H + H.T) / 2
    lo = float(np.linalg.eigvalsh(H)[0])
    mean_diag = float(np.mean(np.diagonal(H)))
    assert lo + 0.01 * mean_diag < 0 < lo + 0.1 * mean_diag, (lo, mean_diag)
    return H


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_indefinite_hessian_escalates_damping(port: ModuleType, precision: str) -> None:
    torch = pytest.importorskip("torch")
    rows, cols = 24, 64
    H = indefinite_hessian(3, cols)
    W = (np.random.default_rng(4).standard_normal((rows, cols)) * 0.1).astype(np.float32)
    with pytest.raises(torch.linalg.LinAlgError):  # the reference fails here
        run_port(port, W, H, block_size=32)
    res = sf.prune.sparsegpt(W, H, 0.5, block_size=32, percdamp=0.01, precision=precision)
    used = res.info["percdamp_used"]
    assert used > 0.01
    assert res.info["attempts"] > 1
    assert res.info["damp"] == pytest.approx(used * np.mean(np.diagonal(H)), rel=1e-9)
    # not an identity fallback: the result is the port's at the reported damping ...
    want_w, want_keep, _ = run_port(port, W, H, block_size=32, percdamp=used)
    if precision == "float64":
        assert np.array_equal(res.mask, want_keep)
        assert_f32_rounding_of(res.weight, want_w)
    else:
        assert np.mean(res.mask == want_keep) >= 0.999
    # ... and it is not magnitude pruning: kept weights were updated
    kept_changed = (res.weight != W) & res.mask
    assert kept_changed.mean() > 0.5 * res.mask.mean()


def test_hopeless_hessian_raises_numerical_error(rng: np.random.Generator) -> None:
    """Hugely indefinite (eigenvalues about -1e6 x the diagonal): past the damping limit the
    call raises NumericalError naming the damping it tried; no silent fallback."""
    cols = 16
    B = rng.standard_normal((cols, cols))
    H = np.eye(cols) + 1e6 * (B + B.T)
    np.fill_diagonal(H, 1.0)
    W = rng.standard_normal((4, cols)).astype(np.float32)
    for precision in ("float64", "float32"):
        with pytest.raises(sf.NumericalError, match=r"^H: .*percdamp=1\b") as info:
            sf.prune.sparsegpt(W, H, 0.5, precision=precision)
        assert "0.01" in str(info.value)  # where the escalation started


def test_max_percdamp_limits_the_escalation() -> None:
    H = indefinite_hessian(3, 64)
    W = (np.random.default_rng(4).standard_normal((8, 64)) * 0.1).astype(np.float32)
    with pytest.raises(sf.NumericalError, match=r"^H: "):
        sf.prune.sparsegpt(W, H, 0.5, max_percdamp=0.01)
    res = sf.prune.sparsegpt(W, H, 0.5, max_percdamp=10.0)
    assert res.info["percdamp_used"] == pytest.approx(0.1)


# --- masks and counts -------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_pattern_exactly_satisfied(pattern: str) -> None:
    n, m = (int(x) for x in pattern.split(":"))
    W, H = layer(21, 40, 128)
    for precision in ("float32", "float64"):
        res = sf.prune.sparsegpt(W, H, pattern=pattern, block_size=64, precision=precision)
        assert (res.mask.reshape(40, -1, m).sum(axis=2) == n).all()
        assert sf.prune.check_pattern(res.weight, pattern).ok
        assert res.info["target_sparsity"] == 1 - n / m


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (4, 8), (1, 2)], ids=str)
def test_nm_ties_go_to_the_lower_index(port: ModuleType, pattern: tuple[int, int]) -> None:
    """30% exact zeros in W: in the first block many groups hold tied (zero) scores; the
    port with index tie-breaking (torch.topk leaves ties unspecified) must match exactly."""
    rng = np.random.default_rng(sum(pattern))
    W, H = layer(101 + pattern[1], 40, 96)
    W[rng.random(W.shape) < 0.3] = 0
    H[:, 5] = H[5, :] = 0  # and a dead input
    want_w, want_keep, want_loss = run_port(
        port, W, H, pattern=pattern, block_size=32, index_ties=True
    )
    res = prune_sf(W, H, pattern, block_size=32, precision="float64")
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)


def test_unstructured_ties_are_pruned_together(port: ModuleType) -> None:
    """Block scores equal to the threshold are all pruned (the reference's ``<=``): with
    exact zeros in W the first block prunes every zero even past the count."""
    W, H = layer(111, 16, 64)
    W[:, :32][np.random.default_rng(1).random((16, 32)) < 0.7] = 0  # 70% zeros in block 0
    want_w, want_keep, _ = run_port(port, W, H, sparsity=0.5, block_size=32)
    res = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float64")
    assert np.array_equal(res.mask, want_keep)
    zeros = int((W[:, :32] == 0).sum())
    assert zeros > int(16 * 32 * 0.5) + 1
    assert (~res.mask[:, :32]).sum() == zeros
    assert_f32_rounding_of(res.weight, want_w)
    exact = sf.prune.sparsegpt(W, H, 0.5, block_size=32, precision="float64", block_count="exact")
    assert (~exact.mask[:, :32]).sum() == int(16 * 32 * 0.5)


def pruned_per_block(mask: np.ndarray, bs: int) -> list[int]:
    return [int((~mask[:, i : i + bs]).sum()) for i in range(0, mask.shape[1], bs)]


@pytest.mark.parametrize("s", [0.0005, 0.3, 0.5, 0.8])
def test_block_count_semantics(port: ModuleType, s: float) -> None:
    rows, cols, bs = 24, 160, 64  # blocks of 64, 64, 32 columns
    W, H = layer(31, rows, cols)
    widths = [64, 64, 32]
    ref_res = sf.prune.sparsegpt(W, H, s, block_size=bs, precision="float64")
    assert pruned_per_block(ref_res.mask, bs) == [int(rows * b * s) + 1 for b in widths]
    _, want_keep, _ = run_port(port, W, H, sparsity=s, block_size=bs)
    assert np.array_equal(ref_res.mask, want_keep)

    exact = sf.prune.sparsegpt(W, H, s, block_size=bs, precision="float64", block_count="exact")
    assert pruned_per_block(exact.mask, bs) == [int(rows * b * s) for b in widths]
    assert exact.info["pruned"] == sum(int(rows * b * s) for b in widths)
    want_w, want_keep, want_loss = run_port(port, W, H, sparsity=s, block_size=bs, exact_count=True)
    assert np.array_equal(exact.mask, want_keep)
    assert_f32_rounding_of(exact.weight, want_w)
    np.testing.assert_allclose(np.asarray(exact.info["row_loss"]), want_loss, rtol=1e-9)


def test_per_row_sparsity_adapts_in_unstructured_mode() -> None:
    """The block threshold is joint over all rows: rows end up with different sparsities
    (unlike Wanda's per-row rule)."""
    W, H = layer(41, 64, 128)
    W[:8] *= 10  # loud rows keep more
    res = sf.prune.sparsegpt(W, H, 0.5, precision="float64")
    per_row = (~res.mask).sum(axis=1)
    assert per_row[:8].mean() < per_row[8:].mean()


def test_sparsity_zero_prunes_nothing() -> None:
    W, H = layer(51, 16, 64)
    for precision in ("float32", "float64"):
        res = sf.prune.sparsegpt(W, H, 0.0, block_size=32, precision=precision)
        assert res.mask.all()
        assert np.array_equal(ref.bits(res.weight), ref.bits(W))
        assert res.info["loss"] == 0


def test_layerstats_accepted_as_h() -> None:
    X = correlated_activations(64, 300, 9)
    st = sf.calib.LayerStats(64)
    st.update(X)
    W = (np.random.default_rng(9).standard_normal((16, 64))).astype(np.float32)
    a = sf.prune.sparsegpt(W, st, 0.5)
    b = sf.prune.sparsegpt(W, st.hessian, 0.5)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(ref.bits(a.weight), ref.bits(b.weight))


def test_float32_hessian_input(port: ModuleType) -> None:
    W, H = layer(61, 32, 64)
    H32 = H.astype(np.float32)
    res = sf.prune.sparsegpt(W, H32, 0.5, block_size=32, precision="float64")
    want_w, want_keep, _ = run_port(port, W, H32.astype(np.float64), block_size=32)
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w)


def test_inputs_not_modified() -> None:
    W, H = layer(71, 16, 32)
    W0, H0 = W.copy(), H.copy()
    sf.prune.sparsegpt(W, H, 0.5)
    assert np.array_equal(W, W0)
    assert np.array_equal(H, H0)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_threads_bitwise_identical(precision: str, pattern: str | None) -> None:
    W, H = layer(81, 150, 256)
    runs = [
        sf.prune.sparsegpt(
            W,
            H,
            None if pattern else 0.5,
            pattern=pattern,
            block_size=64,
            precision=precision,
            num_threads=t,
        )
        for t in (1, 2, 3)
    ]
    for r in runs[1:]:
        assert np.array_equal(r.mask, runs[0].mask)
        assert np.array_equal(ref.bits(r.weight), ref.bits(runs[0].weight))
        assert np.array_equal(
            np.asarray(r.info["row_loss"]).view(np.uint8),
            np.asarray(runs[0].info["row_loss"]).view(np.uint8),
        )


# --- bad input ---------------------------------------------------------------------------------


def test_bad_input() -> None:
    W, H = layer(91, 8, 32)
    Hnan = H.copy()
    Hnan[3, 4] = np.nan
    Hinf = H.copy()
    Hinf[0, 0] = np.inf
    for bad in (
        H[:, :31],
        H[:31, :31],
        np.zeros((33, 33)),
        H[None],
        H[0],
        Hnan,
        Hinf,
        np.zeros((32, 32)),
    ):
        with pytest.raises(ValueError, match=r"^H: "):
            sf.prune.sparsegpt(W, bad, 0.5)
    for bad in (H.astype(np.float16), H.astype(np.int64), H.astype(np.complex128)):
        with pytest.raises((TypeError, ValueError), match=r"^H: "):
            sf.prune.sparsegpt(W, bad, 0.5)
    for bs in (0, -1):
        with pytest.raises(ValueError, match=r"^block_size: "):
            sf.prune.sparsegpt(W, H, 0.5, block_size=bs)
    with pytest.raises(ValueError, match=r"^block_size: "):
        sf.prune.sparsegpt(W, H, pattern="4:8", block_size=12)
    with pytest.raises(ValueError, match=r"^W: .*multiple of m=4"):
        sf.prune.sparsegpt(W[:, :30], H[:30, :30], pattern="2:4")
    for s in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^sparsity: "):
            sf.prune.sparsegpt(W, H, s)
    with pytest.raises(ValueError, match=r"^precision: "):
        sf.prune.sparsegpt(W, H, 0.5, precision="float16")
    with pytest.raises(ValueError, match=r"^block_count: "):
        sf.prune.sparsegpt(W, H, 0.5, block_count="nope")
    for pd in (-0.01, float("nan")):
        with pytest.raises(ValueError, match=r"^percdamp: "):
            sf.prune.sparsegpt(W, H, 0.5, percdamp=pd)
    Wnan = W.copy()
    Wnan[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"^W: "):
        sf.prune.sparsegpt(Wnan, H, 0.5)
    with pytest.raises(ValueError, match=r"no data|tokens"):
        sf.prune.sparsegpt(W, sf.calib.LayerStats(32), 0.5)  # no tokens yet
    st = sf.calib.LayerStats(32, hessian=False)
    st.update(np.ones((3, 32), np.float32))
    with pytest.raises(ValueError, match=r"hessian"):
        sf.prune.sparsegpt(W, st, 0.5)
    Hasym = H.copy()
    Hasym[0, 1] += 0.5 * H[0, 0]
    Hneg = H.copy()
    Hneg[2, 2] = -1.0
    for bad in (Hasym, Hneg):
        with pytest.raises(ValueError, match=r"^H: "):
            sf.prune.sparsegpt(W, bad, 0.5)
    assert sf.prune.sparsegpt(W.astype(F32), H, 0.5).weight.dtype == F32
