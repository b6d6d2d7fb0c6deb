"""Activation sparsity: histograms and thresholds against numpy quantiles, TEAL uniform /
greedy, CATS, the ReLU exact-zero path, Deja Vu predictors against a float64 numpy
reduced-rank regression, the sparse forward's kernel path against its masked path, JSON
tables and bad input. Real-data tests use stories260K with TinyStories text (skipped when
absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import sparseforge as sf
import sparseforge.models as sm
from realdata import stories260k_path

A = sf.activation
_BIN = stories260k_path()
_TEXT = (
    None if _BIN is None else _BIN.parents[1] / "tinystories-valid-excerpt" / "tinystories_val.txt"
)
needs_data = pytest.mark.skipif(
    _BIN is None or _TEXT is None or not _TEXT.is_file(),
    reason="stories260K or the TinyStories excerpt is not available (../shared/data)",
)


def _random_model(dim: int = 32, hidden: int = 48, layers: int = 2) -> sm.LlamaModel:
    c = sm.LlamaConfig(
        dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=4, n_kv_heads=2, vocab_size=50,
        max_seq_len=64, rope_style="half", tied_embeddings=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    weights = {
        n: (rng.standard_normal(s) * (1.0 if len(s) == 1 else 0.3)).astype(np.float32)
        for n, s in c.weight_shapes().items()
    }
    return sm.LlamaModel(c, weights, source="random", linear_backend="sparseforge", num_threads=1)


def _ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50, n)


@pytest.fixture(scope="module")
def stories():
    if _BIN is None or _TEXT is None or not _TEXT.is_file():
        pytest.skip("stories260K or the TinyStories excerpt is not available")
    # one thread: small calls on a busy 2-core machine run far faster without a team
    model = sm.load_llama2c(_BIN, linear_backend="sparseforge", num_threads=1)
    ids = np.asarray(model.tokenizer.encode(_TEXT.read_text(encoding="utf-8")[:300_000]))
    half = ids.size // 2
    stats = A.calibrate(model, ids[:half], seqlen=256, max_windows=24)
    return model, ids[:half], ids[half:], stats


# ---------------------------------------------------------------------------------------
# Histogram


def test_histogram_thresholds_match_numpy_quantiles() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_000) * np.exp(rng.standard_normal(200_000))).astype(np.float32)
    x += 0.3  # not zero-centred: the two methods differ
    h = A.Histogram()
    for part in np.array_split(x, 7):  # streaming
        h.update(part)
    assert h.count == x.size
    for s in (0.1, 0.5, 0.9):
        t = h.threshold(s)
        ref = np.quantile(np.abs(x.astype(np.float64)), s)
        assert abs(t - ref) <= 0.01 * ref  # within a 1/128 relative bin
        assert abs(np.mean(np.abs(x) <= t) - s) < 2e-3
        assert abs(h.sparsity_at(t) - s) < 2e-3
        ts = h.threshold(s, "symmetric")
        assert abs(ts - np.quantile(x.astype(np.float64), 0.5 + s / 2)) <= 0.01 * abs(ts)
    # for a symmetric distribution the shortcut agrees with the empirical threshold
    hs = A.Histogram()
    hs.update(np.concatenate([x - 0.3, 0.3 - x]))
    for s in (0.3, 0.7):
        assert hs.threshold(s, "symmetric") == pytest.approx(hs.threshold(s), rel=0.01)


def test_histogram_merge_zeros_and_bad_input() -> None:
    a, b, ab = A.Histogram(), A.Histogram(), A.Histogram()
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    a.update(x[:400])
    b.update(x[400:])
    ab.update(x)
    a.merge(b)
    assert np.array_equal(a.counts, ab.counts)
    z = A.Histogram()
    z.update(np.r_[np.zeros(600), np.ones(400)].astype(np.float32))
    assert z.threshold(0.5) == 0.0  # exact zeros alone reach 50 %: skip exact zeros only
    assert z.threshold(0.8) == pytest.approx(1.0, rel=0.01)
    with pytest.raises(ValueError, match="no data"):
        A.Histogram().threshold(0.5)
    with pytest.raises(ValueError, match="NaN"):
        z.update(np.array([1.0, np.nan], dtype=np.float32))
    assert z.count == 1000  # nothing added
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"sparsity: expected a value in \[0, 1\)"):
            z.threshold(bad)
    with pytest.raises(ValueError, match="method"):
        z.threshold(0.5, "gaussian")


# ---------------------------------------------------------------------------------------
# Thresholds on a real model


@needs_data
def test_held_out_sparsity_within_one_point(stories) -> None:
    model, _, held, stats = stories
    held_stats = A.calibrate(model, held, seqlen=256, max_windows=16)
    params = {n: model.weight(n).size for n in stats.linear}
    total = sum(params.values())
    for s in (0.25, 0.5, 0.7):
        for method in ("empirical", "symmetric"):
            th = A.teal_uniform(stats, s, method=method)
            got = {n: held_stats.linear[n].sparsity_at(t) for n, t in th.values.items()}
            wide = sum(got[n] * params[n] for n in got) / total
            if method == "empirical":  # the bound, model-wide; each tensor within 2.5
                assert abs(wide - s) <= 0.01, (s, wide)
                assert max(abs(g - s) for g in got.values()) <= 0.025, (s, got)
            else:  # the shortcut assumes a symmetric zero-median distribution
                assert abs(wide - s) <= 0.05, (s, wide)
        th = A.cats(stats, s)
        got_c = [
            held_stats.gate[i].sparsity_at(th.values[f"model.layers.{i}.mlp.act"])
            for i in range(model.config.n_layers)
        ]
        assert abs(np.mean(got_c) - s) <= 0.01
        assert max(abs(g - s) for g in got_c) <= 0.025


@needs_data
def test_sequential_calibration_hits_the_target_in_the_sparse_forward(stories) -> None:
    model, calib, held, stats = stories
    th = A.teal_uniform_sequential(model, calib, 0.6, seqlen=256, max_windows=8)
    assert th.method == "uniform-empirical-sequential"
    fwd = A.SparseForward(model, th)
    fwd.wrap().forward(held[:256])
    assert abs(fwd.achieved()["model"] - 0.6) <= 0.01
    # the first block's q/k/v input is the same as the dense calibration's
    n = model.linear_names(0)[0]
    assert th.values[n] == pytest.approx(stats.linear[n].threshold(0.6), rel=0.05)


@needs_data
def test_thresholds_json_round_trip_and_validation(stories, tmp_path: Path) -> None:
    model, _, _, stats = stories
    th = A.teal_uniform(stats, 0.4)
    p = tmp_path / "t.json"
    th.save(p)
    back = A.Thresholds.load(p, model=model)
    assert back.values == th.values
    assert back.sparsities == th.sparsities
    assert back.effective_sparsity(model) == pytest.approx(0.4)
    other = _random_model()
    with pytest.raises(ValueError, match=r"another model: .*dim=64"):
        A.Thresholds.load(p, model=other)
    with pytest.raises(ValueError, match="another model"):
        A.SparseForward(other, th)
    data = json.loads(p.read_text())
    del data["entries"]["model.layers.0.mlp.down_proj.weight"]
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"entries do not match.*down_proj"):
        A.Thresholds.load(p, model=model)
    data["entries"]["model.layers.0.mlp.down_proj.weight"] = {"threshold": -1, "sparsity": 0.4}
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="threshold: expected a number >= 0"):
        A.Thresholds.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON thresholds table"):
        A.Thresholds.load(p)
    with pytest.raises(ValueError, match=r"sparsity: expected a value in \[0, 1\)"):
        A.teal_uniform(stats, 1.0)
    with pytest.raises(ValueError, match="a 'teal' table, mode is 'cats'"):
        A.SparseForward(model, th, mode="cats")


# ---------------------------------------------------------------------------------------
# The sparse forward: kernel path (T = 1) == masked path (T > 1)


def _decode_logits(wrapped: A.SparseModel, ids: np.ndarray) -> np.ndarray:
    # through the hooks (the Python kernel path that achieved() counts), not the runtime
    cache = sm.KVCache(wrapped.config, ids.size)
    hooks = wrapped.sparse.hooks
    return np.concatenate(
        [wrapped.step(ids[t : t + 1], cache, hooks=hooks) for t in range(ids.size)]
    )


@pytest.mark.parametrize("mode", ["teal", "cats", "relu"])
def test_decode_kernels_equal_masked_forward(mode: str) -> None:
    model = _random_model()
    ids = _ids(24)
    stats = A.calibrate(model, _ids(256, seed=5), seqlen=32)
    th = {"teal": A.teal_uniform(stats, 0.5), "cats": A.cats(stats, 0.5), "relu": None}[mode]
    fwd = A.SparseForward(model, th, mode=mode)
    full = fwd.wrap().forward(ids)
    masked = fwd.achieved()["model"]
    fwd.reset_stats()
    step = _decode_logits(fwd.wrap(), ids)
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4)
    assert fwd.achieved()["model"] == pytest.approx(masked, abs=1e-9)  # the same masks
    dense = model.forward(ids)
    assert np.abs(full - dense).max() > 1e-3  # sparsity changed the result


def test_teal_on_2to4_bitmap_weights_equals_masked_forward() -> None:
    dense = _random_model()
    w = {n: dense.weight(n) for n in dense.config.weight_shapes()}
    for i in range(dense.config.n_layers):
        for n in dense.linear_names(i):
            w[n] = sf.prune.magnitude(w[n], pattern="2:4").weight
    model = sm.LlamaModel(dense.config, w, linear_backend="sparseforge", num_threads=1)
    stats = A.calibrate(model, _ids(256, seed=5), seqlen=32)
    fwd = A.SparseForward(model, A.teal_uniform(stats, 0.5), weight_format="bitmap")
    assert all(isinstance(t, sf.format.BitmapTensor) for t in fwd._wt.values())
    ids = _ids(16)
    np.testing.assert_allclose(
        _decode_logits(fwd.wrap(), ids), fwd.wrap().forward(ids), rtol=1e-4, atol=1e-4
    )


def test_teal_linear_matches_float64_reference() -> None:
    model = _random_model()
    stats = A.calibrate(model, _ids(256, seed=5), seqlen=32)
    th = A.teal_uniform(stats, 0.6)
    fwd = A.SparseForward(model, th)
    x = np.random.default_rng(2).standard_normal((1, 32)).astype(np.float32)
    for name in model.linear_names(1)[:4]:
        t = th.values[name]
        ref = np.where(np.abs(x) > t, x, 0).astype(np.float64) @ model.weight(name).T
        np.testing.assert_allclose(fwd.hooks.linear(name, x), ref, rtol=1e-5, atol=1e-5)
        x3 = np.repeat(x, 3, axis=0)
        np.testing.assert_allclose(
            fwd.hooks.linear(name, x3), np.repeat(ref, 3, 0), rtol=1e-5, atol=1e-5
        )


def test_relu_path_is_exact_relu_mlp() -> None:
    model = _random_model(layers=1)
    fwd = A.SparseForward(model, mode="relu")
    x = np.random.default_rng(4).standard_normal((1, 32)).astype(np.float32)
    names = model.linear_names(0)
    Wg, Wu, Wd = (model.weight(n).astype(np.float64) for n in names[4:])
    g = fwd.hooks.linear(names[4], x)
    u = fwd.hooks.linear(names[5], x)
    h = fwd.hooks.mlp_hidden(0, np.zeros_like(g))
    y = fwd.hooks.linear(names[6], h)
    x64 = x.astype(np.float64)[0]
    ref_h = np.maximum(Wg @ x64, 0) * (Wu @ x64)
    np.testing.assert_allclose(h[0], ref_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[0], Wd @ ref_h, rtol=1e-5, atol=1e-5)
    assert np.all(u[0][(Wg @ x64) <= 0] == 0)  # up rows of inactive units never computed
    assert fwd.achieved()[names[6]] == pytest.approx(np.mean(ref_h == 0))


# ---------------------------------------------------------------------------------------
# Deja Vu


def _rrr_reference(X, Y, rank, ridge):
    """Reduced-rank ridge regression in float64 (the documented objective)."""
    Z = np.c_[X.astype(np.float64), np.ones(len(X))]
    G = Z.T @ Z
    lam = ridge * np.mean(np.diag(G)[:-1])
    G[np.arange(X.shape[1]), np.arange(X.shape[1])] += lam
    Bf = np.linalg.solve(G, Z.T @ Y.astype(np.float64))
    L = np.linalg.cholesky(G)
    _, _, Vt = np.linalg.svd(L.T @ Bf, full_matrices=False)
    V = Vt[:rank].T
    return Bf @ V @ V.T  # (d+1) x H: the rank-r coefficient matrix


@pytest.mark.parametrize("rank", [1, 4, 9])
def test_predictor_fit_matches_numpy_reduced_rank_regression(rank: int) -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3000, 20)).astype(np.float32)
    Y = (X @ rng.standard_normal((20, 9)) + rng.standard_normal((3000, 9)) > 0.5).astype(np.float32)
    P = A.fit_predictor(X, Y, rank=rank, ridge=0.01)
    ref = _rrr_reference(X, Y, rank, 0.01)
    got = np.r_[P.A, P.a[None, :]].astype(np.float64) @ P.B
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(P.B @ P.B.T, np.eye(rank), atol=1e-5)
    P1 = A.fit_predictor(X, Y, rank=rank, ridge=0.01, num_threads=1)
    P2 = A.fit_predictor(X, Y, rank=rank, ridge=0.01, num_threads=2)
    assert np.array_equal(P1.A, P2.A)
    assert np.array_equal(P1.B, P2.B)


def test_predictor_bad_input() -> None:
    st = sf._core.activation.PredictorStats(4, 3)
    with pytest.raises(ValueError, match="no tokens"):
        sf._core.activation.fit_low_rank_predictor(st, 1, 0.1)
    with pytest.raises(ValueError, match="Y: expected 2 rows"):
        st.update(np.ones((2, 4), np.float32), np.ones((3, 3), np.float32), 0)
    with pytest.raises(sf.DTypeError):
        st.update(np.ones((2, 4)), np.ones((2, 3), np.float32), 0)
    st.update(np.ones((2, 4), np.float32), np.ones((2, 3), np.float32), 0)
    with pytest.raises(ValueError, match="rank"):
        sf._core.activation.fit_low_rank_predictor(st, 4, 0.1)
    with pytest.raises(sf.NumericalError, match="singular"):
        sf._core.activation.fit_low_rank_predictor(st, 1, 0.0)


@needs_data
@pytest.mark.parametrize("lookahead", [False, True])
def test_dejavu_on_stories(stories, lookahead: bool) -> None:
    model, calib, held, stats = stories
    P = A.train_dejavu(
        model, stats, calib, mlp_sparsity=0.5, rank=32, lookahead=lookahead, seqlen=256,
        max_windows=8, eval_ids=held, eval_windows=2,
    )  # fmt: skip
    L = model.config.n_layers
    assert len(P.recall["mlp"]) == L
    assert len(P.precision["heads"]) == L
    # better than choosing at random (recall = precision = 1 - s = 0.5 on average)
    assert np.mean(P.recall["mlp"]) > 0.6
    assert np.mean(P.precision["mlp"]) > 0.6
    fwd = A.SparseForward(model, mode="dejavu", predictors=P)
    ids = held[:20]
    full = fwd.wrap().forward(ids)
    step = _decode_logits(fwd.wrap(), ids)
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4)
    got = fwd.achieved()
    assert got[model.linear_names(0)[6]] == pytest.approx(0.5, abs=0.01)
    assert model.linear_names(0)[1] not in got  # k and v stay dense (the cache needs them)
    assert 0.4 < got["model"] < 0.5


# ---------------------------------------------------------------------------------------
# Greedy


@needs_data
def test_greedy_block_error_beats_uniform(stories) -> None:
    model, calib, _, stats = stories
    path = A.teal_greedy(
        model, stats, calib, max_sparsity=0.5, base_step=0.1, seqlen=128, max_windows=2
    )
    assert len(path.steps) == model.config.n_layers
    w = path.weights
    assert w["q"] == 1.0
    assert w["k"] == 0.5
    assert w["gate"] == pytest.approx(172 / 64)
    for rows in path.steps:
        effs = [r[0] for r in rows]
        assert effs == sorted(effs)
        assert effs[-1] >= 0.5 - 1e-9
        per = rows[-1][2]
        eff = sum(min(per[p], 1) * w[p] for p in A.PROJECTIONS) / sum(w.values())
        assert eff == pytest.approx(effs[-1])
    th = path.thresholds(stats, 0.5)
    assert th.effective_sparsity(model) == pytest.approx(0.5, abs=0.03)
    # TEAL's claim at equal effective sparsity, on held-in calibration text
    ppl_g = sm.perplexity(A.SparseForward(model, th).wrap(), calib, seqlen=256, max_windows=2).ppl
    th_u = A.teal_uniform(stats, th.effective_sparsity(model))
    ppl_u = sm.perplexity(A.SparseForward(model, th_u).wrap(), calib, seqlen=256, max_windows=2).ppl
    assert ppl_g < ppl_u


def test_bad_arguments() -> None:
    model = _random_model()
    stats = A.calibrate(model, _ids(64, seed=5), seqlen=32)
    with pytest.raises(ValueError, match="mode"):
        A.SparseForward(model, None, mode="topk")
    with pytest.raises(TypeError, match="thresholds"):
        A.SparseForward(model, None, mode="teal")
    with pytest.raises(TypeError, match="model"):
        A.calibrate("model", _ids(64), seqlen=32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shorter than one window"):
        A.calibrate(model, _ids(10), seqlen=32)
    with pytest.raises(ValueError, match="base_step"):
        A.teal_greedy(model, stats, _ids(64), base_step=0.0, seqlen=32)
    with pytest.raises(ValueError, match="mlp_sparsity"):
        A.train_dejavu(model, stats, _ids(64), mlp_sparsity=1.2, seqlen=32)
    with pytest.raises(ValueError, match="weight_format"):
        A.SparseForward(model, A.cats(stats, 0.5), mode="cats", weight_format="bitmap")
