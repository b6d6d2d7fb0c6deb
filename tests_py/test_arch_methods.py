"""Every pruning method, TEAL, a KV policy and the exports on each model family (random
transformers models, tests_py/archmodels.py): one smoke test each, asserting a property
(sparsity reached, runtime equal to the research forward, transformers' logits after an
export round trip)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sparseforge as sf
from archmodels import FAMILIES, SEQ, hf_logits, rel_err
from sparseforge import models as sm

RUNTIME = [f for f in FAMILIES if f != "gemma2"]


def _calib() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 96, size=(4, SEQ))


def _ids() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 96, size=SEQ)


def _check_runtime(m: sm.LlamaModel) -> None:
    """Logits finite; on a runtime family the compiled session equals the research forward."""
    ids = _ids()
    ref = m.forward(ids)
    assert np.isfinite(ref).all()
    if sf.runtime.unsupported_reason(m) is None:
        assert rel_err(sf.runtime.Session(m, SEQ).prefill(ids), ref) < 1e-5


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_each_family(
    family: str, method: str, arch_dirs: dict[str, tuple[Path, Any]]
) -> None:
    d, _ = arch_dirs[family]
    m = sm.load(d, linear_backend="sparseforge")
    dense = m.forward(_ids())
    report = sm.prune(m, _calib(), method=method, sparsity=0.5, nsamples=4, seqlen=SEQ,
                      progress=False)  # fmt: skip
    assert len(report.layers) == 7 * m.config.n_layers
    for i in range(m.config.n_layers):
        for name in m.linear_names(i):
            w = np.asarray(m.weight(name))
            assert np.mean(w == 0) == pytest.approx(0.5, abs=0.02), name
    assert rel_err(m.forward(_ids()), dense) > 1e-3  # pruning changed the model
    _check_runtime(m)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prune_24_compressed_each_family(
    family: str, arch_dirs: dict[str, tuple[Path, Any]]
) -> None:
    d, _ = arch_dirs[family]
    m = sm.load(d, linear_backend="sparseforge")
    sm.prune(m, _calib(), method="wanda", pattern="2:4", nsamples=4, seqlen=SEQ, progress=False)
    ref = m.forward(_ids())
    for i in range(m.config.n_layers):  # run every linear as an N:M tensor
        for name in m.linear_names(i):
            m.set_weight(name, sf.format.NMTensor.from_dense(np.asarray(m.weight(name)), 2, 4))
    assert rel_err(m.forward(_ids()), ref) < 1e-5
    _check_runtime(m)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_teal_each_family(family: str, arch_dirs: dict[str, tuple[Path, Any]]) -> None:
    A = sf.activation
    d, _ = arch_dirs[family]
    m = sm.load(d, linear_backend="sparseforge")
    calib = _calib().reshape(-1)
    stats = A.calibrate(m, calib, seqlen=SEQ, max_windows=4)
    th = A.teal_uniform(stats, 0.5)
    fwd = A.SparseForward(m, th)
    sparse = fwd.wrap()
    ids = _ids()
    hooked = m.forward(ids, hooks=fwd.hooks)
    assert np.isfinite(hooked).all()
    assert fwd.achieved()["model"] == pytest.approx(0.5, abs=0.1)
    assert rel_err(hooked, m.forward(ids)) > 1e-3
    if sf.runtime.unsupported_reason(m) is None:  # the runtime's TEAL equals the hooks
        session = sf.runtime.Session(m, SEQ, thresholds=th)
        assert rel_err(session.prefill(ids), hooked) < 1e-4
    prompt = [int(t) for t in ids[:3]]
    assert len(sparse.generate(prompt, 6, stop_at_eos=False)) == 6
    if m.config.activation != "silu":
        with pytest.raises(ValueError, match="SwiGLU"):
            A.SparseForward(m, mode="relu")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kv_policy_each_family(family: str, arch_dirs: dict[str, tuple[Path, Any]]) -> None:
    d, _ = arch_dirs[family]
    m = sm.load(d)
    c = m.config
    if c.attn_softcap:  # Gemma 2: policy caches do not soft-cap their scores
        with pytest.raises(ValueError, match="soft-capping"):
            m.step(_ids(), sf.kv.PolicyCache(m, "full", None))
        return
    window = min((c.layer_window(i) or SEQ) for i in range(c.n_layers))
    n = min(SEQ, window)  # policy caches attend every kept token: only within the window
    ids = _ids()[:n]
    ref = m.forward(ids)
    full = sf.kv.PolicyCache(m, "full", None)
    got = np.concatenate([m.step(ids[:2], full)] + [m.step([t], full) for t in ids[2:]])
    assert rel_err(got, ref) < 1e-5
    budget = 3
    cache = sf.kv.PolicyCache(m, "streaming_llm", budget, sinks=1)
    out = [m.step(ids[:2], cache)] + [m.step([t], cache) for t in ids[2:]]
    assert np.isfinite(np.concatenate(out)).all()
    assert cache.lengths().max() <= budget
    if c.sliding_window:  # past the window a policy cache is refused, not silently wrong
        cache = sf.kv.PolicyCache(m, "full", None)
        with pytest.raises(ValueError, match="sliding window"):
            m.step(_ids(), cache)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_hf_each_family(
    family: str, arch_dirs: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    import transformers

    d, hf = arch_dirs[family]
    m = sm.load(d)
    sm.prune(m, _calib(), method="magnitude", sparsity=0.5, nsamples=4, seqlen=SEQ, error=False,
             progress=False)  # fmt: skip
    out = tmp_path / "exported"
    sm.export_hf(m, out)
    cfg = transformers.AutoConfig.from_pretrained(out)
    assert type(hf).__name__ in cfg.architectures
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    assert type(back).__name__ == type(hf).__name__
    ids = _ids()
    assert rel_err(hf_logits(back, ids), m.forward(ids)) < 1e-4
    again = sm.load(out)
    assert again.config == m.config
