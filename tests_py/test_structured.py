"""sparseforge.structured: Minitron importance, width and depth pruning, SliceGPT.

Oracles: a numpy float64 block forward (attention from the model's post-RoPE q/k/v) for the
importance statistics; exact function preservation where pruning removes only dead units
(zeroed neurons / GQA groups), dropping blocks, fusing norms and SliceGPT at 0% slicing
(computational invariance); numpy PCA of the embeddings for SliceGPT's first rotation; a
parameter count written out by hand for the sliced shapes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import realdata
import sparseforge as sf
from sparseforge.models import Hooks, LlamaConfig, LlamaModel

S = sf.structured
TINYSTORIES = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "tinystories-valid-excerpt"
    / "tinystories_val.txt"
)


def small_config(**kw: Any) -> LlamaConfig:
    base: dict[str, Any] = dict(
        dim=32, hidden_dim=48, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=64
    )
    base.update(kw)
    return LlamaConfig(**base)


def random_model(config: LlamaConfig, seed: int = 0) -> LlamaModel:
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in config.weight_shapes().items():
        if len(shape) == 1:  # norms: scales away from 1 so that folding them matters
            w = rng.uniform(0.5, 1.5, size=shape)
        elif name == "model.embed_tokens.weight":
            w = rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) / math.sqrt(shape[1])
        weights[name] = w.astype(np.float32)
    return LlamaModel(config, weights, linear_backend="sparseforge")


def windows(config: LlamaConfig, n: int = 4, T: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(n, T))


@pytest.fixture(scope="module")
def stories() -> LlamaModel:
    path = realdata.stories260k_path()
    if path is None:
        pytest.skip("stories260K.bin not found (../shared/data/stories260K or SPARSEFORGE_DATA)")
    m = sf.models.load_llama2c(path)
    return LlamaModel(m.config, m._weights, m.tokenizer, linear_backend="sparseforge")


@pytest.fixture(scope="module")
def story_ids(stories: LlamaModel) -> np.ndarray:
    if not TINYSTORIES.is_file():
        pytest.skip(f"{TINYSTORIES} not found")
    assert stories.tokenizer is not None
    text = TINYSTORIES.read_text("utf-8")[:40000]
    return np.asarray(stories.tokenizer.encode(text), dtype=np.int64)


# -- importance against a numpy float64 block --------------------------------------------


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * w


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    T, H, D = q.shape
    g = H // k.shape[1]
    out = np.empty((T, H, D))
    mask = np.triu(np.ones((T, T), dtype=bool), 1)
    for h in range(H):
        s = q[:, h] @ k[:, h // g].T / math.sqrt(D)
        s[mask] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v[:, h // g]
    return out.reshape(T, H * D)


def reference_importance(model: LlamaModel, wins: np.ndarray) -> dict[str, np.ndarray]:
    c = model.config
    L = c.n_layers
    acc = {
        k: np.zeros((L, n))
        for k, n in (("a", c.dim), ("m", c.dim), ("o", c.q_dim), ("d", c.hidden_dim))
    }
    layers = np.zeros(L)
    f64 = lambda n: np.asarray(model.weight(n), dtype=np.float64)  # noqa: E731
    for w in wins:
        h = model.embed(w).astype(np.float64)
        for i in range(L):
            p = f"model.layers.{i}."
            qkv: dict[str, np.ndarray] = {}

            def grab(block: int, q: Any, k: Any, v: Any, qkv: dict[str, np.ndarray] = qkv) -> None:
                qkv.update(q=q.astype(np.float64), k=k.astype(np.float64), v=v.astype(np.float64))

            model.block(i, h.astype(np.float32), hooks=Hooks(attention=grab))
            x1 = _rms(h, f64(p + "input_layernorm.weight"), c.norm_eps)
            a = _attention(qkv["q"], qkv["k"], qkv["v"])
            mid = h + a @ f64(p + "self_attn.o_proj.weight").T
            x2 = _rms(mid, f64(p + "post_attention_layernorm.weight"), c.norm_eps)
            gate = x2 @ f64(p + "mlp.gate_proj.weight").T
            hid = gate / (1 + np.exp(-gate)) * (x2 @ f64(p + "mlp.up_proj.weight").T)
            out = mid + hid @ f64(p + "mlp.down_proj.weight").T
            for key, x in (("a", x1), ("m", x2), ("o", a), ("d", hid)):
                acc[key][i] += np.abs(x).mean(axis=0) ** 2
            cos = (h * out).sum(1) / (np.linalg.norm(h, axis=1) * np.linalg.norm(out, axis=1))
            layers[i] += 1 - cos.mean()
            h = out
    g = c.n_heads // c.n_kv_heads
    heads = np.linalg.norm(np.sqrt(acc["o"]).reshape(L, c.n_heads, c.head_dim), axis=2)
    return {
        "neurons": np.sqrt(acc["d"]),
        "heads": heads,
        "groups": np.linalg.norm(heads.reshape(L, c.n_kv_heads, g), axis=2),
        "channels": (np.sqrt(acc["a"]) + np.sqrt(acc["m"])).sum(0),
        "layers": layers,
    }


def test_importance_matches_float64_reference() -> None:
    model = random_model(small_config())
    wins = windows(model.config)
    imp = S.importance(model, wins)
    ref = reference_importance(model, wins)
    assert imp.nsamples == 4
    assert imp.seqlen == 24
    np.testing.assert_allclose(np.stack(imp.neurons), ref["neurons"], rtol=2e-4)
    np.testing.assert_allclose(np.stack(imp.heads), ref["heads"], rtol=2e-4)
    np.testing.assert_allclose(np.stack(imp.groups), ref["groups"], rtol=2e-4)
    np.testing.assert_allclose(imp.channels, ref["channels"], rtol=2e-4)
    np.testing.assert_allclose(imp.layers, ref["layers"], rtol=1e-3, atol=1e-6)


# -- width -----------------------------------------------------------------------------------


def test_width_keeps_the_top_units_with_consistent_shapes() -> None:
    model = random_model(small_config(n_heads=4, n_kv_heads=2, n_layers=2))
    imp = S.importance(model, windows(model.config))
    pruned = S.width(model, imp, hidden_dim=30, n_heads=2, n_kv_heads=2, dim=24)
    c = pruned.config
    assert (c.dim, c.hidden_dim, c.n_heads, c.n_kv_heads, c.head_dim) == (24, 30, 2, 2, 8)
    for name, shape in c.weight_shapes().items():
        assert pruned.weight(name).shape == shape, name
        assert pruned.weight(name).flags.c_contiguous
    ch = np.sort(np.argsort(-imp.channels)[:24])
    for i in range(2):
        p = f"model.layers.{i}."
        neurons = np.sort(np.argsort(-imp.neurons[i])[:30])
        W = np.asarray(model.weight(p + "mlp.down_proj.weight"))
        np.testing.assert_array_equal(pruned.weight(p + "mlp.down_proj.weight"), W[ch][:, neurons])
        # one query head per group (the better of its two), both groups kept
        heads = [2 * k + int(np.argmax(imp.heads[i][2 * k : 2 * k + 2])) for k in range(2)]
        rows = np.concatenate([np.arange(h * 8, h * 8 + 8) for h in heads])
        Wq = np.asarray(model.weight(p + "self_attn.q_proj.weight"))
        np.testing.assert_array_equal(pruned.weight(p + "self_attn.q_proj.weight"), Wq[rows][:, ch])
        Wk = np.asarray(model.weight(p + "self_attn.k_proj.weight"))
        np.testing.assert_array_equal(pruned.weight(p + "self_attn.k_proj.weight"), Wk[:, ch])
    assert np.isfinite(pruned.forward(np.arange(10))).all()


def test_width_removing_dead_neurons_and_groups_keeps_the_function() -> None:
    config = small_config(n_heads=4, n_kv_heads=2, n_layers=2)
    model = random_model(config)
    weights = {n: np.array(model.weight(n)) for n in config.weight_shapes()}
    for i in range(2):
        p = f"model.layers.{i}."
        weights[p + "mlp.gate_proj.weight"][:10] = 0  # neurons 0..9 are silu(0) * 0 = 0
        dead_group = i  # group i: its values are zero, so its heads output zero
        weights[p + "self_attn.v_proj.weight"][dead_group * 8 : dead_group * 8 + 8] = 0
    model = LlamaModel(config, weights, linear_backend="sparseforge")
    imp = S.importance(model, windows(config))
    for i in range(2):
        assert np.all(imp.neurons[i][:10] == 0)
        assert np.all(imp.neurons[i][10:] > 0)
        assert imp.groups[i][i] == 0
        assert imp.groups[i][1 - i] > 0
    pruned = S.width(model, imp, hidden_dim=38, n_heads=2)
    assert (pruned.config.n_heads, pruned.config.n_kv_heads) == (2, 1)
    x = np.arange(20) % config.vocab_size
    np.testing.assert_allclose(pruned.forward(x), model.forward(x), rtol=1e-5, atol=1e-5)
    # removing a live neuron instead changes it
    worse = S.width(model, imp, hidden_dim=37)
    assert np.abs(worse.forward(x) - model.forward(x)).max() > 1e-4


def test_width_by_importance_beats_the_least_important(
    stories: LlamaModel, story_ids: np.ndarray
) -> None:
    calib, ev = story_ids[:4096], story_ids[-2048:]
    imp = S.importance(stories, calib, nsamples=8, seqlen=128)
    worst = dataclasses.replace(
        imp,
        neurons=tuple(-n for n in imp.neurons),
        heads=tuple(-h for h in imp.heads),
        groups=tuple(-g for g in imp.groups),
        channels=-imp.channels,
    )
    dense = sf.models.perplexity(stories, ev, seqlen=256).ppl
    for kw in ({"hidden_dim": 120}, {"n_heads": 6}, {"dim": 56}):
        best = sf.models.perplexity(S.width(stories, imp, **kw), ev, seqlen=256).ppl
        bad = sf.models.perplexity(S.width(stories, worst, **kw), ev, seqlen=256).ppl
        assert dense < best < bad, (kw, dense, best, bad)


# -- depth -----------------------------------------------------------------------------------


def test_depth_drops_blocks_exactly() -> None:
    model = random_model(small_config(n_layers=4))
    x = np.arange(16) % 64
    pruned = S.depth(model, drop=[1, 2])
    assert pruned.config.n_layers == 2
    h = model.embed(x)
    for i in (0, 3):
        h = model.block(i, h)
    np.testing.assert_array_equal(pruned.forward(x), model.final(h))
    imp = S.importance(model, windows(model.config))
    kept = S.depth(model, imp, n_layers=3)
    drop = int(np.argmin(imp.layers))
    h = model.embed(x)
    for i in range(4):
        if i != drop:
            h = model.block(i, h)
    np.testing.assert_array_equal(kept.forward(x), model.final(h))


# -- SliceGPT --------------------------------------------------------------------------------


def test_fuse_norms_keeps_the_function() -> None:
    model = random_model(small_config(tied_embeddings=True))
    fused = S.fuse_norms(model)
    assert not fused.config.tied_embeddings
    for name, shape in fused.config.weight_shapes().items():
        if name.endswith("norm.weight"):
            np.testing.assert_array_equal(fused.weight(name), np.ones(shape, np.float32))
    x = np.arange(30) % 64
    np.testing.assert_allclose(fused.forward(x), model.forward(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_slicegpt_at_zero_slicing_is_invariant(tied: bool) -> None:
    model = random_model(small_config(tied_embeddings=tied))
    wins = windows(model.config, n=6, T=32)
    rot = S.slicegpt(model, wins, dim=32)
    assert rot.config.residual_dims == (32,) * 7
    x = np.arange(40) % 64
    ref = model.forward(x)
    np.testing.assert_allclose(rot.forward(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # it is really rotated: the shortcuts are not identities, the embeddings differ
    sc = np.asarray(rot.weight("model.layers.0.attn_shortcut.weight"))
    assert np.abs(sc - np.eye(32)).max() > 0.1
    assert (
        np.abs(
            rot.weight("model.embed_tokens.weight") - model.weight("model.embed_tokens.weight")
        ).max()
        > 0.1
    )


def test_slicegpt_invariance_on_stories260k(stories: LlamaModel, story_ids: np.ndarray) -> None:
    rot = S.slicegpt(stories, story_ids[:4096], dim=64, nsamples=8, seqlen=128)
    ev = story_ids[-1024:]
    x = ev[:200]
    ref = stories.forward(x)
    np.testing.assert_allclose(rot.forward(x), ref, atol=2e-4 * np.abs(ref).max())
    p_rot = sf.models.perplexity(rot, ev, seqlen=256)
    p_ref = sf.models.perplexity(stories, ev, seqlen=256)
    assert p_rot.ppl == pytest.approx(p_ref.ppl, rel=1e-5)
    sliced = S.slicegpt(stories, story_ids[:4096], dim=56, nsamples=8, seqlen=128)
    p56 = sf.models.perplexity(sliced, ev, seqlen=256).ppl
    assert p_ref.ppl < p56 < 3 * p_ref.ppl


def test_slicegpt_first_rotation_is_the_pca_of_the_embeddings() -> None:
    model = random_model(small_config())
    wins = windows(model.config, n=6, T=32)
    sliced = S.slicegpt(model, wins, dim=16, damping=0.0)
    E = np.asarray(model.weight("model.embed_tokens.weight"), dtype=np.float64)
    X = E[wins.reshape(-1)]
    vals, vecs = np.linalg.eigh(X.T @ X)
    P = vecs[:, np.argsort(-vals)[:16]]
    Es = np.asarray(sliced.weight("model.embed_tokens.weight"), dtype=np.float64)
    # the same subspace, whatever the eigenvector signs: equal Gram matrices
    np.testing.assert_allclose(Es @ Es.T, (E @ P) @ (E @ P).T, atol=1e-4)


def test_slicegpt_shapes_and_parameter_count() -> None:
    c = small_config(n_layers=2)
    model = random_model(c)
    sliced = S.slicegpt(model, windows(c, n=6, T=32), sparsity=0.3)  # floor(0.7 * 32) = 22 -> 16
    d, D, V, Hd = 16, 32, 64, 48
    sc = sliced.config
    assert sc.residual_dims == (16, 16, 16, 16, 32)
    assert not sc.tied_embeddings
    q, kv = c.q_dim, c.kv_dim
    per_block = [
        (q + 2 * kv) * d + d * q + d * d + d + 2 * Hd * d + d_out * Hd + d_out * d + d
        for d_out in (16, 32)
    ]
    expected_blocks = sum(per_block)
    expected_all = expected_blocks + V * d + V * D + D
    assert S.param_count(sc, blocks_only=True) == expected_blocks
    assert S.param_count(sc) == expected_all
    actual = sum(int(np.asarray(sliced.weight(n)).size) for n in sc.weight_shapes())
    assert actual == expected_all
    for name, shape in sc.weight_shapes().items():
        assert sliced.weight(name).shape == shape, name
    assert np.isfinite(sliced.forward(np.arange(20))).all()
    # the dense model: 2 blocks of 7 linears and 2 norms, embeddings + norm + head
    dense_blocks = 2 * ((q + 2 * kv) * D + D * q + 3 * Hd * D + 2 * D)
    assert S.param_count(c, blocks_only=True) == dense_blocks


# -- saving ----------------------------------------------------------------------------------


def test_pruned_models_save_and_load(tmp_path: Path) -> None:
    if not hasattr(sf.models, "save"):
        pytest.skip("sf.models.save is not available yet")
    model = random_model(small_config())
    imp = S.importance(model, windows(model.config))
    x = np.arange(20) % 64
    for i, pruned in enumerate(
        [
            S.width(model, imp, hidden_dim=20, n_heads=2, dim=24),
            S.depth(model, imp, n_layers=2),
            S.slicegpt(model, windows(model.config, n=6, T=32), dim=16),
        ]
    ):
        path = tmp_path / f"m{i}.sfm"
        sf.models.save(pruned, path, tokenizer=False)
        loaded = sf.models.load(path, linear_backend="sparseforge")
        assert loaded.config == pruned.config
        np.testing.assert_allclose(loaded.forward(x), pruned.forward(x), rtol=1e-5, atol=1e-5)


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_names_the_argument() -> None:
    model = random_model(small_config(n_heads=4, n_kv_heads=2))
    imp = S.importance(model, windows(model.config))
    cases: list[tuple[Any, str]] = [
        (lambda: S.width(model, imp, hidden_dim=0), "hidden_dim"),
        (lambda: S.width(model, imp, hidden_dim=49), "hidden_dim"),
        (lambda: S.width(model, imp, dim=33), "dim"),
        (lambda: S.width(model, imp, n_heads=3), "n_heads: 3 breaks the GQA groups"),
        (lambda: S.width(model, imp, n_heads=3, n_kv_heads=2), "n_heads"),
        (lambda: S.width(model, imp, n_heads=4, n_kv_heads=1), "more than"),
        (lambda: S.width(model, imp, n_kv_heads=3), "n_kv_heads"),
        (lambda: S.depth(model, imp), "n_layers"),
        (lambda: S.depth(model, imp, n_layers=2, drop=[0]), "n_layers"),
        (lambda: S.depth(model, drop=[0, 0]), "drop"),
        (lambda: S.depth(model, drop=[0, 1, 2]), "drop"),
        (lambda: S.depth(model, drop=[3]), "drop"),
        (lambda: S.depth(model, n_layers=2), "importance"),
        (
            lambda: S.slicegpt(model, windows(model.config), dim=20),
            "dim: d'=20 is not a multiple of",
        ),
        (lambda: S.slicegpt(model, windows(model.config), dim=40), "dim: d'=40 exceeds"),
        (lambda: S.slicegpt(model, windows(model.config), sparsity=1.0), "sparsity"),
        (lambda: S.slicegpt(model, windows(model.config), sparsity=-0.1), "sparsity"),
        (lambda: S.slicegpt(model, windows(model.config), sparsity=0.9), "sparsity"),
        (lambda: S.slicegpt(model, windows(model.config), dim=16, sparsity=0.5), "dim"),
        (lambda: S.slicegpt(model, windows(model.config), dim=16, damping=-1.0), "damping"),
        (lambda: S.importance(model, list(range(10)), seqlen=32), "calib"),
        (lambda: S.slicegpt(model, list(range(10)), dim=16, seqlen=32), "calib"),
    ]
    other = random_model(small_config(hidden_dim=40))
    cases.append((lambda: S.width(other, imp, hidden_dim=20), "importance"))
    sliced = S.slicegpt(model, windows(model.config, n=6, T=32), dim=16)
    cases.append((lambda: S.width(sliced, imp), "model"))
    cases.append((lambda: S.slicegpt(sliced, windows(model.config), dim=8), "model"))
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    with pytest.raises(TypeError, match="importance"):
        S.width(model, {"neurons": []}, hidden_dim=10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="model"):
        S.importance("model", windows(model.config))  # type: ignore[arg-type]


def test_config_residual_dims_validation() -> None:
    with pytest.raises(ValueError, match="residual_dims"):
        small_config(residual_dims=(32, 32))
    with pytest.raises(ValueError, match="residual_dims"):
        small_config(residual_dims=(40,) * 7)
    with pytest.raises(ValueError, match="residual_dims"):
        small_config(residual_dims=(16,) * 6 + (32,), tied_embeddings=True)
    with pytest.raises(TypeError, match="residual_dims"):
        small_config(residual_dims="32")
    c = small_config(residual_dims=[16] * 7)
    assert c.residual_dims == (16,) * 7
    assert c.sliced
    assert c.block_dims(1) == (16, 16, 16)
    assert not small_config().sliced


def test_slice_head_and_thread_count_determinism() -> None:
    c = small_config(n_layers=2)
    wins = windows(c, n=6, T=32)
    one = random_model(c)
    one.num_threads = 1
    two = random_model(c)
    two.num_threads = 2
    a = S.slicegpt(one, wins, dim=16, slice_head=True)
    b = S.slicegpt(two, wins, dim=16, slice_head=True)
    assert a.config.residual_dims == (16,) * 5
    assert a.weight("lm_head.weight").shape == (64, 16)
    for name in a.config.weight_shapes():
        np.testing.assert_array_equal(a.weight(name), b.weight(name), err_msg=name)
    ia, ib = S.importance(one, wins), S.importance(two, wins)
    np.testing.assert_array_equal(np.stack(ia.neurons), np.stack(ib.neurons))
    np.testing.assert_array_equal(ia.layers, ib.layers)
    np.testing.assert_array_equal(ia.channels, ib.channels)
