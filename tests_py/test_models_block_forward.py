"""The core calibration block forward (``_core.models.calib_block_forward``) against the research
forward (``LlamaModel.block``, numpy GEMMs) and the Python statistics path: outputs equal to
float32 rounding, statistics equal to the ones LayerStats gathers from the research
forward's linear inputs, bitwise the same for 1 and 2 threads; families it does not
implement are refused and ``forward="auto"`` falls back to Python."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from sparseforge import models as sm
from sparseforge.calib import LayerStats
from sparseforge.models import _calibration as cal
from sparseforge.models.llama import LINEAR_SUFFIXES, Hooks
from tinymodels import random_model

WINDOWS, SEQ = 3, 20


def _inputs(m: sm.LlamaModel, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((WINDOWS * SEQ, m.config.dim)).astype(np.float32)


def _fresh_stats(m: sm.LlamaModel) -> list[LayerStats]:
    c = m.config
    return [LayerStats(w, True) for w in (c.dim, c.n_heads * c.head_dim, c.dim, c.hidden_dim)]


def _oracle(m: sm.LlamaModel, i: int, h: np.ndarray) -> tuple[np.ndarray, list[LayerStats]]:
    """Window by window through the research forward, each linear input captured."""
    stats = _fresh_stats(m)
    feeds = {LINEAR_SUFFIXES[k]: s for k, s in zip((0, 3, 4, 6), stats, strict=True)}
    prefix = f"model.layers.{i}."
    inputs: dict[str, list[np.ndarray]] = {}

    def capture(name: str, x: np.ndarray) -> None:
        suffix = name[len(prefix) :]
        if suffix in feeds:
            inputs.setdefault(suffix, []).append(np.array(x))

    outs = [
        m.block(i, h[w * SEQ : (w + 1) * SEQ], hooks=Hooks(linear_input=capture))
        for w in range(WINDOWS)
    ]
    for suffix, st in feeds.items():
        st.update(np.concatenate(inputs[suffix]))
    return np.concatenate(outs), stats


def _close_stats(a: LayerStats, b: LayerStats) -> None:
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.col_norms, b.col_norms, rtol=1e-5, atol=1e-6)
    ha, hb = a.hessian, b.hessian
    np.testing.assert_allclose(ha, hb, rtol=1e-5, atol=1e-5 * float(np.abs(hb).max()))


@pytest.mark.parametrize(
    "over",
    [
        {},  # GQA, rope "half"
        {"rope_style": "interleaved", "n_kv_heads": 4},  # MHA, llama2.c pairing
        {"arch": "qwen2"},  # q/k/v biases
        {"head_dim": 8, "n_heads": 4, "n_kv_heads": 1},  # n_heads * head_dim != dim, MQA
    ],
)
def test_core_block_equals_research_forward(over: dict[str, Any]) -> None:
    m = random_model(3, **over)
    h = _inputs(m)
    for i in range(m.config.n_layers):
        want, want_stats = _oracle(m, i, h)
        stats = _fresh_stats(m)
        got = cal.block_forward_core(m, i, h, WINDOWS, list(stats), True)
        assert got is not None
        assert got.shape == want.shape
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
        for s, w in zip(stats, want_stats, strict=True):
            _close_stats(s, w)
        # Statistics only: no output, the same statistics bit for bit.
        only = _fresh_stats(m)
        assert cal.block_forward_core(m, i, h, WINDOWS, list(only), False) is None
        for s, w in zip(only, stats, strict=True):
            np.testing.assert_array_equal(s.hessian, w.hessian)
            np.testing.assert_array_equal(s.col_norms, w.col_norms)
        h = want


def test_core_block_thread_invariant() -> None:
    # Wide enough that the GEMMs split into several 256-row tiles.
    m1 = random_model(4, dim=128, hidden_dim=256, n_heads=4, n_kv_heads=2, max_seq_len=512)
    m2 = sm.LlamaModel(m1.config, m1._weights, source="random", num_threads=2)
    m1.num_threads = 1
    rng = np.random.default_rng(5)
    h = rng.standard_normal((3 * 300, 128)).astype(np.float32)
    outs, stats = [], []
    for m in (m1, m2):
        st = _fresh_stats(m)
        outs.append(cal.block_forward_core(m, 0, h, 3, list(st), True))
        stats.append(st)
    np.testing.assert_array_equal(outs[0], outs[1])
    for a, b in zip(*stats, strict=True):
        np.testing.assert_array_equal(a.hessian, b.hessian)
        np.testing.assert_array_equal(a.col_norms, b.col_norms)


def test_core_block_refuses_what_it_does_not_implement() -> None:
    m = random_model(0)
    assert cal.core_unsupported(m, 0) is None
    assert cal.resolve_forward(m, "auto") == "core"
    other = sm.LlamaModel(dataclasses.replace(m.config, arch="gemma"), m._weights, source="x")
    why = cal.core_unsupported(other, 0)
    assert why is not None
    assert "gemma" in why
    assert cal.resolve_forward(other, "auto") == "python"
    with pytest.raises(ValueError, match="forward: the core block forward does not implement"):
        cal.resolve_forward(other, "core")
    with pytest.raises(ValueError, match="model: the core block forward does not implement"):
        cal.block_forward_core(other, 0, _inputs(other), WINDOWS, [None] * 4, True)
    with pytest.raises(ValueError, match="forward: expected one of"):
        cal.resolve_forward(m, "fast")
    # A compressed linear weight: Python forward.
    import sparseforge as sf

    nm = m.linear_names(0)[0]
    c = random_model(0)
    c.set_weight(
        nm,
        sf.format.NMTensor.from_dense(
            sf.prune.magnitude(c.weight(nm), pattern="2:4").weight, n=2, m=4
        ),
    )
    assert "compressed" in (cal.core_unsupported(c, 0) or "")


def test_core_block_bad_arguments() -> None:
    from sparseforge import _core

    m = random_model(0)
    h = _inputs(m)
    c = m.config
    args = (c.n_heads, c.n_kv_heads, c.head_dim, 1e4, "half", 1e-5, 0.3)
    w = [np.ones(c.dim, np.float32)] + [np.asarray(m.weight(n)) for n in m.linear_names(0)[:4]]
    w += [np.ones(c.dim, np.float32)] + [np.asarray(m.weight(n)) for n in m.linear_names(0)[4:]]
    with pytest.raises(ValueError, match="seqlen"):
        _core.models.calib_block_forward(h, 7, *args, w, [None] * 7, [None] * 4, True)
    bad = list(w)
    bad[2] = bad[2][:, :-1].copy()
    with pytest.raises(ValueError, match="k_proj"):
        _core.models.calib_block_forward(h, SEQ, *args, bad, [None] * 7, [None] * 4, True)
    st = LayerStats(c.dim + 1)
    with pytest.raises(ValueError, match="stats"):
        _core.models.calib_block_forward(
            h, SEQ, *args, w, [None] * 7, [st._impl, None, None, None], True
        )
    assert st.tokens == 0
    same = LayerStats(c.dim)
    with pytest.raises(ValueError, match="distinct"):
        _core.models.calib_block_forward(
            h, SEQ, *args, w, [None] * 7, [same._impl, None, same._impl, None], True
        )
    assert same.tokens == 0


def test_prune_core_forward_matches_python_forward() -> None:
    """End to end: the two forwards give the same masks up to rounding-level ties and the
    same layer errors to ~1e-4."""
    base = random_model(7, n_layers=2, max_seq_len=64)
    ids = np.random.default_rng(0).integers(1, 80, size=(6, 32))
    reps = {}
    models = {}
    for fwd in ("core", "python"):
        m = sm.LlamaModel(base.config, base._weights, source="random")
        reps[fwd] = sm.prune(m, ids, method="sparsegpt", pattern="2:4", forward=fwd, progress=False)
        models[fwd] = m
    for a, b in zip(reps["core"].layers, reps["python"].layers, strict=True):
        assert a.name == b.name
        assert a.error == pytest.approx(b.error, rel=1e-3)
        wa, wb = models["core"].weight(a.name), models["python"].weight(a.name)
        assert np.mean((wa != 0) != (wb != 0)) < 0.01
