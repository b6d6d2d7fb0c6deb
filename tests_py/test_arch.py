"""Model families (Qwen2, Qwen3, Mistral, Gemma 3, Gemma 2) against transformers' own
forward on random models (tests_py/archmodels.py), and the runtime against the research
forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import sparseforge as sf
from archmodels import FAMILIES, SEQ, hf_greedy, hf_logits, rel_err
from sparseforge import models as sm
from sparseforge.models.hf import read_hf_config

RUNTIME_FAMILIES = [f for f in FAMILIES if f != "gemma2"]  # gemma2: attention soft caps


@pytest.fixture
def family_dirs(arch_dirs: dict[str, tuple[Path, Any]]) -> dict[str, tuple[Path, Any]]:
    return arch_dirs


def _ids(n: int = SEQ, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 96, size=n)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_from_hf(family: str, family_dirs: dict[str, tuple[Path, Any]]) -> None:
    d, _ = family_dirs[family]
    c = read_hf_config(d)
    assert c.arch == family
    assert c.qk_norm == (family in ("qwen3", "gemma3"))
    assert c.sandwich_norms == family.startswith("gemma")
    assert c.activation == ("gelu_tanh" if family.startswith("gemma") else "silu")
    if family == "mistral":
        assert (c.sliding_window, c.layer_types) == (5, ())
        assert all(c.layer_window(i) == 5 for i in range(c.n_layers))
    elif family.startswith("gemma"):
        assert [c.layer_window(i) for i in range(3)] == [4, 0, 4]
        assert c.attention_scale == pytest.approx(24**-0.5)
        assert c.embed_scale == pytest.approx(64**0.5)
    else:
        assert c.sliding_window == 0
    if family == "gemma3":
        assert (c.layer_rope_theta(0), c.layer_rope_theta(1)) == (10000.0, 1e6)
    if family == "gemma2":
        assert (c.attn_softcap, c.final_softcap) == (5.0, 3.0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_equal_transformers(family: str, family_dirs: dict[str, tuple[Path, Any]]) -> None:
    d, hf = family_dirs[family]
    m = sm.load(d)
    ids = _ids()
    ref = hf_logits(hf, ids)
    got = m.forward(ids)
    assert rel_err(got, ref) < 1e-4
    # every sliding layer's window binds: the same model without it differs
    if m.config.sliding_window:
        import dataclasses

        full = sm.LlamaModel(
            dataclasses.replace(m.config, sliding_window=0, layer_types=()), m._weights
        )
        assert rel_err(full.forward(ids), ref) > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_equals_transformers(family: str, family_dirs: dict[str, tuple[Path, Any]]) -> None:
    d, hf = family_dirs[family]
    m = sm.load(d)
    prompt = _ids(4, seed=2)
    n = SEQ - 4  # runs past every window
    assert m.generate(prompt, n, stop_at_eos=False) == hf_greedy(hf, prompt, n)
    # the Python decode loop (hooks force it) gives the same tokens
    hooks = sm.Hooks(linear_input=lambda name, x: None)
    assert m.generate(prompt, n, stop_at_eos=False, hooks=hooks) == hf_greedy(hf, prompt, n)


@pytest.mark.parametrize("family", RUNTIME_FAMILIES)
def test_runtime_equals_research_forward(
    family: str, family_dirs: dict[str, tuple[Path, Any]]
) -> None:
    d, _ = family_dirs[family]
    m = sm.load(d, linear_backend="sparseforge")
    assert sf.runtime.unsupported_reason(m) is None
    ids = _ids()
    ref = m.forward(ids)
    s = sf.runtime.Session(m, SEQ)
    assert rel_err(s.prefill(ids[:3]), ref[:3]) < 1e-5
    for t in range(3, SEQ):  # decode past the window, one token at a time
        assert rel_err(s.step(int(ids[t])), ref[t]) < 1e-5
    s.reset()
    assert rel_err(s.prefill(ids), ref) < 1e-5
    # a KVCache step (the runtime behind it) equals it too
    cache = sm.KVCache(m.config, SEQ)
    assert rel_err(m.step(ids, cache), ref) < 1e-5


def test_gemma2_runtime_falls_back(family_dirs: dict[str, tuple[Path, Any]]) -> None:
    d, _ = family_dirs["gemma2"]
    m = sm.load(d)
    why = sf.runtime.unsupported_reason(m)
    assert "soft-capping" in str(why)
    with pytest.raises(ValueError, match="soft-capping"):
        sf.runtime.Session(m, 8)
    ids = _ids()
    cache = sm.KVCache(m.config, SEQ)  # the Python decode path serves it
    assert rel_err(m.step(ids, cache), m.forward(ids)) < 1e-5


@pytest.mark.parametrize("family", RUNTIME_FAMILIES)
def test_saved_file_runs_in_the_core_reader(
    family: str, family_dirs: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    d, _ = family_dirs[family]
    m = sm.load(d)
    path = tmp_path / "m.sfm"
    sm.save(m, path, dtype="float32", compress=False)
    back = sm.load(path)
    assert back.config == m.config
    ids = _ids()
    ref = m.forward(ids)
    np.testing.assert_array_equal(back.forward(ids), ref)
    s = sf.runtime.Session(sf.runtime.load(path), SEQ)
    assert rel_err(s.prefill(ids), ref) < 1e-5


def test_family_config_validation() -> None:
    base = dict(dim=32, hidden_dim=48, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=16,
                max_seq_len=32)  # fmt: skip
    with pytest.raises(ValueError, match="layer_types"):
        sm.LlamaConfig(**base, sliding_window=4, layer_types=("sliding_attention",))
    with pytest.raises(ValueError, match="sliding_window"):
        sm.LlamaConfig(**base, layer_types=("sliding_attention", "full_attention"))
    with pytest.raises(ValueError, match="activation"):
        sm.LlamaConfig(**base, activation="relu")
    with pytest.raises(ValueError, match="sliding_window"):
        sm.LlamaConfig(**base, sliding_window=-1)
    assert sm.ModelConfig is sm.LlamaConfig
