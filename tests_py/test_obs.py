"""OBS, OBD, mask-given reconstruction and the reconstruction error, against the float64
oracles of reference_obs.py (written from the math) and hand-derived closed forms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import reference as ref
import reference_obs as robs
import sparseforge as sf
from realdata import correlated_activations
from reference import F32


def layer(seed: int, rows: int, cols: int, **act: Any) -> tuple[np.ndarray, np.ndarray]:
    """(W float32, H = X^T X / T float64) from correlated activations."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    act.setdefault("outlier_channels", 2)
    act.setdefault("outlier_scale", 5.0)
    X = correlated_activations(cols, 4 * cols, seed, **act).astype(np.float64)
    return W, X.T @ X / X.shape[0]


def assert_f32_rounding_of(got: np.ndarray, want64: np.ndarray, rel: float = 1e-9) -> None:
    """float32 ``got`` equals float64 ``want64`` up to float32 rounding (one ulp) plus
    ``rel`` of the largest value."""
    assert got.dtype == np.float32
    scale = float(np.abs(want64).max()) or 1.0
    err = np.abs(got.astype(np.float64) - want64)
    bad = err > np.spacing(np.abs(want64).astype(np.float32)) + rel * scale
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        pytest.fail(
            f"{int(bad.sum())} weights differ, first at {i}: got {got[i]!r}, want {want64[i]!r}"
        )


def nm(pattern: str | None) -> tuple[int, int] | None:
    return None if pattern is None else tuple(int(x) for x in pattern.split(":"))  # type: ignore[return-value]


SHAPES = [(8, 16), (16, 32), (32, 64)]
PATTERNS = [None, "2:4", "4:8"]


# --- OBS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p or "50%")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_obs_matches_oracle(shape: tuple[int, int], pattern: str | None) -> None:
    W, H = layer(shape[0] * shape[1], *shape)
    if pattern is None:
        res = sf.prune.obs(W, H, 0.5)
        want_w, want_keep, want_loss = robs.obs(W, H, 0.5)
    else:
        res = sf.prune.obs(W, H, pattern=pattern)
        want_w, want_keep, want_loss = robs.obs(W, H, pattern=nm(pattern))
    if not np.array_equal(res.mask, want_keep):
        diff = np.argwhere(res.mask != want_keep)
        pytest.fail(f"pruned sets differ at {len(diff)} places, first {diff[:5].tolist()}")
    assert_f32_rounding_of(res.weight, want_w)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)
    assert res.info["loss"] == pytest.approx(float(want_loss.sum()), rel=1e-9)
    assert res.weight.dtype == W.dtype


@pytest.mark.parametrize("s", [0.25, 0.7])
def test_obs_other_sparsities_and_damping(s: float) -> None:
    W, H = layer(5, 12, 40)
    for percdamp in (0.01, 0.1):
        res = sf.prune.obs(W, H, s, percdamp=percdamp)
        want_w, want_keep, _ = robs.obs(W, H, s, percdamp=percdamp)
        assert np.array_equal(res.mask, want_keep)
        assert (~res.mask).sum(axis=1).tolist() == [int(40 * s)] * 12
        assert_f32_rounding_of(res.weight, want_w)


def test_obs_escalates_damping_like_sparsegpt() -> None:
    """An indefinite H (smallest eigenvalue -3% of the mean diagonal): the damping grows
    past 0.01 and the result is the oracle's at the reported damping (no identity)."""
    W, H0 = layer(20, 6, 24)
    lam, Q = np.linalg.eigh(H0)
    lam[0] = -0.03 * float(np.mean(np.diagonal(H0)))
    H = (Q * lam) @ Q.T
    H = (H + H.T) / 2
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(robs.damped(H, 0.01)[0])
    res = sf.prune.obs(W, H, 0.5)
    used = res.info["percdamp_used"]
    assert used > 0.01
    want_w, want_keep, _ = robs.obs(W, H, 0.5, percdamp=used)
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w, rel=1e-8)
    with pytest.raises(sf.NumericalError, match=r"^H: "):
        sf.prune.obs(W, H, 0.5, max_percdamp=0.01)


def test_obs_weights_are_the_exact_optimum_for_its_mask() -> None:
    """Greedy OBS keeps the constrained optimum after every step, so its final weights equal
    the least-squares reconstruction for its own mask (two oracles agreeing)."""
    W, H = layer(6, 10, 32)
    res = sf.prune.obs(W, H, 0.5)
    assert_f32_rounding_of(res.weight, robs.reconstruct_exact(W, H, res.mask), rel=1e-8)


def test_obs_dead_columns_are_zeroed_and_pruned_first() -> None:
    rows, cols = 6, 16
    rng = np.random.default_rng(8)
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    X = correlated_activations(cols, 128, 8).astype(np.float64)
    X[:, [2, 9]] = 0
    H = X.T @ X / 128
    res = sf.prune.obs(W, H, 0.5)
    want_w, want_keep, want_loss = robs.obs(W, H, 0.5)
    assert not res.mask[:, [2, 9]].any()
    assert np.array_equal(res.mask, want_keep)
    assert_f32_rounding_of(res.weight, want_w)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), want_loss, rtol=1e-9)


def damp_by_hand(H: np.ndarray, percdamp: float) -> np.ndarray:
    return H + percdamp * np.trace(H) / H.shape[0] * np.eye(H.shape[0])


@pytest.mark.parametrize("cols", [2, 3])
def test_obs_one_row_closed_form(cols: int, rng: np.random.Generator) -> None:
    """1-row layers of 2 and 3 inputs against the hand-derived Schur-complement formulas."""
    for _ in range(25):
        A = rng.standard_normal((cols, cols)) * 0.7 + np.eye(cols)
        H = A.T @ A + 0.05 * np.eye(cols)
        w = rng.standard_normal(cols).astype(np.float32)
        for k in range(1, cols):
            s = k / cols + 1e-9  # int(cols * s) == k
            want_w, order, loss = robs.closed_form_one_row(w, damp_by_hand(H, 0.01), k)
            res = sf.prune.obs(w[None, :], H, s, percdamp=0.01)
            assert (~res.mask[0]).nonzero()[0].tolist() == sorted(order)
            assert_f32_rounding_of(res.weight[0], want_w, rel=1e-12)
            assert res.info["loss"] == pytest.approx(loss, rel=1e-9)
            # the oracle agrees with the closed form
            o_w, o_keep, o_loss = robs.obs(w[None, :], H, s, percdamp=0.01)
            assert (~o_keep[0]).nonzero()[0].tolist() == sorted(order)
            np.testing.assert_allclose(o_w[0], want_w, rtol=1e-12, atol=1e-15)
            assert o_loss[0] == pytest.approx(loss, rel=1e-12)


def test_obs_prunes_by_inverse_hessian_not_magnitude() -> None:
    """H = diag(1, 100): [H^-1] = diag(1, 0.01), scores w0^2 / 1 = 1 and w1^2 / 0.01 = 25,
    so OBS removes the *larger* weight w0 = 1.0 and keeps w1 = 0.5 (unchanged: the inputs
    are uncorrelated)."""
    w = np.array([[1.0, 0.5]], dtype=np.float32)
    H = np.diag([1.0, 100.0])
    res = sf.prune.obs(w, H, 0.5, percdamp=0.0)
    assert res.mask.tolist() == [[False, True]]
    assert res.weight.tolist() == [[0.0, 0.5]]
    assert res.info["loss"] == pytest.approx(0.5)  # w0^2 / (2 [H^-1]_00)


def test_obs_update_compensates_correlated_input() -> None:
    """H = [[1, 0.9], [0.9, 1]], w = (1, 0.5): equal [H^-1]_qq, so the smaller weight goes and
    the update -w1 / [H^-1]_11 * H^-1[:, 1] moves w0 to 1 + 0.9 * 0.5 = 1.45; the loss is
    w1^2 (1 - 0.81) / 2."""
    w = np.array([[1.0, 0.5]], dtype=np.float32)
    H = np.array([[1.0, 0.9], [0.9, 1.0]])
    res = sf.prune.obs(w, H, 0.5, percdamp=0.0)
    assert res.mask.tolist() == [[True, False]]
    assert res.weight[0, 0] == np.float32(1.45)
    assert res.info["loss"] == pytest.approx(0.25 * 0.19 / 2, rel=1e-12)


def test_threads_identical(rng: np.random.Generator) -> None:
    W, H = layer(9, 40, 48)
    mask = rng.random(W.shape) < 0.5
    calls = {
        "obs": lambda t: sf.prune.obs(W, H, 0.5, num_threads=t),
        "obs 2:4": lambda t: sf.prune.obs(W, H, pattern="2:4", num_threads=t),
        "obd": lambda t: sf.prune.obd(W, H, 0.5, num_threads=t),
        "exact": lambda t: sf.prune.reconstruct(W, H, mask, method="exact", num_threads=t),
        "sweep": lambda t: sf.prune.reconstruct(W, H, mask, method="sweep", num_threads=t),
    }
    for name, call in calls.items():
        runs = [call(t) for t in (1, 2, 3)]
        for r in runs[1:]:
            assert np.array_equal(r.mask, runs[0].mask), name
            assert np.array_equal(ref.bits(r.weight), ref.bits(runs[0].weight)), name


def test_row_sliced_weights(rng: np.random.Generator) -> None:
    Wbig, H = layer(19, 30, 80)
    W = Wbig[4:20, 8:40]
    Hs = np.ascontiguousarray(H[8:40, 8:40])
    Wc = np.ascontiguousarray(W)
    mask = rng.random(W.shape) < 0.5
    for name, call in {
        "obs": lambda A: sf.prune.obs(A, Hs, 0.5),
        "obd": lambda A: sf.prune.obd(A, Hs, pattern="2:4"),
        "exact": lambda A: sf.prune.reconstruct(A, Hs, mask),
        "sweep": lambda A: sf.prune.reconstruct(A, Hs, mask, method="sweep"),
    }.items():
        a, b = call(W), call(Wc)
        assert np.array_equal(a.mask, b.mask), name
        assert np.array_equal(ref.bits(a.weight), ref.bits(b.weight)), name


# --- OBD --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p or "50%")
def test_obd_matches_oracle(pattern: str | None, dtype: np.dtype) -> None:
    W32, H = layer(12, 24, 64, outlier_channels=4, outlier_scale=20.0)
    W = ref.cast_to(W32, dtype)
    if pattern is None:
        res = sf.prune.obd(W, H, 0.5)
        _, keep = robs.obd(W, H, 0.5)
    else:
        res = sf.prune.obd(W, H, pattern=pattern)
        _, keep = robs.obd(W, H, pattern=nm(pattern))
    assert np.array_equal(res.mask, keep)
    assert res.weight.dtype == W.dtype
    # no update: the kept weights are W's, bit for bit
    assert np.array_equal(ref.bits(res.weight), ref.bits(ref.apply_mask(W, keep)))
    # the diagonal matters: OBD differs from magnitude pruning on this data
    mag = sf.prune.magnitude(W, pattern=pattern) if pattern else sf.prune.magnitude(W, 0.5)
    assert not np.array_equal(res.mask, mag.mask)


def test_obd_uses_the_undamped_diagonal() -> None:
    """A dead input (H_qq = 0) has saliency 0 and goes first; damping would give it the
    mean-diagonal weight instead. Ties by index."""
    W = np.array([[5.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    H = np.diag([0.0, 2.0, 2.0, 3.0])
    assert sf.prune.obd(W, H, 0.5).mask.tolist() == [[False, False, True, True]]
    assert sf.prune.obd(W, H, pattern="1:4").mask.tolist() == [[False, False, False, True]]


# --- reconstruction ---------------------------------------------------------------------------


def masks_for(W: np.ndarray, H: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = np.sqrt(np.diagonal(H)).astype(np.float32)
    return {
        "magnitude": sf.prune.magnitude(W, 0.5).mask,
        "wanda": sf.prune.wanda(W, c, 0.5).mask,
        "wanda 2:4": sf.prune.wanda(W, c, pattern="2:4").mask,
        "random": rng.random(W.shape) < 0.4,
    }


def test_reconstruct_exact_matches_oracle(rng: np.random.Generator) -> None:
    for shape in [(8, 16), (24, 96)]:
        W, H = layer(shape[1], *shape)
        for name, mask in masks_for(W, H, rng).items():
            res = sf.prune.reconstruct(W, H, mask, method="exact")
            want = robs.reconstruct_exact(W, H, mask)
            assert np.array_equal(res.mask, mask), name
            assert not res.weight[~mask].any(), name
            assert_f32_rounding_of(res.weight, want, rel=1e-8)
            e_exact = sf.prune.reconstruction_error(W, res.weight, H)
            e_masked = sf.prune.reconstruction_error(W, ref.apply_mask(W, mask), H)
            assert e_exact <= e_masked, (name, e_exact, e_masked)


def test_reconstruct_dead_columns_and_loss(rng: np.random.Generator) -> None:
    """Dead inputs: their weights are zeroed (as SparseGPT), kept or not; the exact method's
    row_loss is 1/2 (w - w_hat)^T H' (w - w_hat) with those columns zeroed in w."""
    rows, cols = 6, 24
    W = rng.standard_normal((rows, cols)).astype(np.float32)
    X = correlated_activations(cols, 200, 2).astype(np.float64)
    dead = [3, 7]
    X[:, dead] = 0
    H = X.T @ X / 200
    mask = rng.random(W.shape) < 0.6
    mask[0, dead] = True
    res = sf.prune.reconstruct(W, H, mask, method="exact")
    assert list(res.info["dead_columns"]) == dead
    assert not res.weight[:, dead].any()
    assert_f32_rounding_of(res.weight, robs.reconstruct_exact(W, H, mask), rel=1e-8)
    Hd, _ = robs.damped(H, 0.01)
    Wz = W.astype(np.float64)
    Wz[:, dead] = 0
    D = Wz - robs.reconstruct_exact(W, H, mask)
    quad = 0.5 * np.einsum("ij,jk,ik->i", D, Hd, D)
    np.testing.assert_allclose(np.asarray(res.info["row_loss"]), quad, rtol=1e-9)
    sweep = sf.prune.reconstruct(W, H, mask, method="sweep")
    assert not sweep.weight[:, dead].any()


def test_reconstruct_exact_percdamp(rng: np.random.Generator) -> None:
    W, H = layer(3, 8, 32)
    mask = masks_for(W, H, rng)["wanda"]
    for pd in (0.0, 0.1):
        res = sf.prune.reconstruct(W, H, mask, method="exact", percdamp=pd)
        assert_f32_rounding_of(res.weight, robs.reconstruct_exact(W, H, mask, pd), rel=1e-8)


def test_reconstruct_exact_is_never_worse(rng: np.random.Generator) -> None:
    """Without damping the exact reconstruction minimises the error for its mask: below the
    masked original, the sweep and OBS's own weights for the same mask."""
    W, H = layer(4, 16, 64)
    for name, mask in masks_for(W, H, rng).items():
        exact = sf.prune.reconstruct(W, H, mask, method="exact", percdamp=0.0)
        sweep = sf.prune.reconstruct(W, H, mask, method="sweep", percdamp=0.0)
        e = {
            k: sf.prune.reconstruction_error(W, v, H)
            for k, v in (
                ("exact", exact.weight),
                ("sweep", sweep.weight),
                ("masked", ref.apply_mask(W, mask)),
            )
        }
        assert e["exact"] <= e["sweep"] * (1 + 1e-6), (name, e)
        assert e["exact"] <= e["masked"], (name, e)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_reconstruct_sweep_reproduces_sparsegpt(precision: str, pattern: str | None) -> None:
    """The sweep with SparseGPT's own mask is SparseGPT's update."""
    W, H = layer(13, 48, 128)
    res = sf.prune.sparsegpt(
        W, H, None if pattern else 0.5, pattern=pattern, block_size=32, precision=precision
    )
    rec = sf.prune.reconstruct(W, H, res.mask, method="sweep", precision=precision)
    assert np.array_equal(rec.mask, res.mask)
    scale = float(np.abs(res.weight).max())
    tol = 1e-6 if precision == "float32" else 1e-12
    err = np.abs(rec.weight.astype(np.float64) - res.weight.astype(np.float64))
    ulp = np.spacing(np.abs(res.weight))
    assert (err <= ulp + tol * scale).all(), float(err.max())


def test_reconstruct_sweep_matches_port_with_given_mask(rng: np.random.Generator) -> None:
    """locuslab/wanda's ablation path: the SparseGPT sweep with a supplied mask."""
    torch = pytest.importorskip("torch")
    import torch_reference

    W, H = layer(14, 32, 96)
    mask = masks_for(W, H, rng)["wanda"]
    Wp, pruned, _ = torch_reference.sparsegpt_fasterprune(
        torch.from_numpy(W.copy()),
        torch.from_numpy(H.copy()),
        0.5,
        blocksize=32,
        dtype=torch.float64,
        mask=torch.from_numpy(~mask),
    )
    assert np.array_equal(pruned.numpy(), ~mask)
    rec = sf.prune.reconstruct(W, H, mask, method="sweep", precision="float64")
    assert_f32_rounding_of(rec.weight, Wp.numpy())


def test_reconstruct_validation(rng: np.random.Generator) -> None:
    W, H = layer(15, 4, 16)
    mask = np.ones(W.shape, dtype=bool)
    with pytest.raises(ValueError, match=r"^mask: "):
        sf.prune.reconstruct(W, H, mask[:, :15])
    with pytest.raises((TypeError, ValueError), match=r"^mask: "):
        sf.prune.reconstruct(W, H, mask.astype(np.uint8))
    with pytest.raises(ValueError, match=r"^method: "):
        sf.prune.reconstruct(W, H, mask, method="nope")
    with pytest.raises(ValueError, match=r"^H: "):
        sf.prune.reconstruct(W, H[:15, :15], mask)
    # an all-kept mask reconstructs W itself; an all-pruned one gives zeros
    full = sf.prune.reconstruct(W, H, mask, method="exact")
    np.testing.assert_allclose(full.weight, W, rtol=1e-6, atol=1e-7)
    none = sf.prune.reconstruct(W, H, ~mask, method="exact")
    assert not none.weight.any()


# --- reconstruction error ---------------------------------------------------------------------


def test_reconstruction_error_matches_oracle(dtype: np.dtype, rng: np.random.Generator) -> None:
    W32, H = layer(16, 20, 48)
    W = ref.cast_to(W32, dtype)
    W_hat = ref.cast_to(W32 * (rng.random(W32.shape) < 0.5), dtype)
    want = robs.reconstruction_error(W, W_hat, H)
    for HH in (H, H.astype(np.float32)):
        got = sf.prune.reconstruction_error(W, W_hat, HH)
        assert isinstance(got, float)
        assert got == pytest.approx(robs.reconstruction_error(W, W_hat, HH), rel=1e-12)
    assert sf.prune.reconstruction_error(W, W_hat, H) == pytest.approx(want, rel=1e-12)
    assert sf.prune.reconstruction_error(W, W, H) == 0.0
    assert sf.prune.reconstruction_error(W, np.zeros_like(W), H) == pytest.approx(1.0, rel=1e-12)


def test_reconstruction_error_is_the_output_error(rng: np.random.Generator) -> None:
    """With H = X^T X: ||(W - W_hat) X^T||^2 / ||W X^T||^2."""
    X = correlated_activations(32, 200, 1).astype(np.float64)
    W = rng.standard_normal((10, 32)).astype(np.float32)
    W_hat = sf.prune.magnitude(W, 0.5).weight
    direct = np.sum(((W - W_hat).astype(np.float64) @ X.T) ** 2) / np.sum(
        (W.astype(np.float64) @ X.T) ** 2
    )
    assert sf.prune.reconstruction_error(W, W_hat, X.T @ X) == pytest.approx(direct, rel=1e-10)


def test_reconstruction_error_validation() -> None:
    W, H = layer(17, 4, 16)
    with pytest.raises(ValueError, match=r"^W_hat: "):
        sf.prune.reconstruction_error(W, W[:, :15], H)
    with pytest.raises(ValueError, match=r"^H: "):
        sf.prune.reconstruction_error(W, W, H[:15, :15])


def test_obs_obd_validation() -> None:
    W, H = layer(18, 4, 16)
    for fn in (sf.prune.obs, sf.prune.obd):
        with pytest.raises(ValueError, match=r"^H: "):
            fn(W, H[:15, :15], 0.5)
        with pytest.raises(ValueError, match=r"^sparsity: "):
            fn(W, H, 1.0)
        with pytest.raises(ValueError, match=r"^W: .*multiple of m=4"):
            fn(W[:, :14], H[:14, :14], pattern="2:4")
    assert W.dtype == F32
