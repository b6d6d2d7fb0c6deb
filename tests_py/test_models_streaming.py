"""Block-streaming pruning (sparseforge.models.prune_streaming) on small random Hugging Face
models written by transformers' ``save_pretrained`` (bf16 and fp32, sharded with an index).

Oracles: the in-memory ``sf.models.prune`` of the same float32 model with the same windows
and settings, rounded once to the stored dtype, bit for bit; an uninterrupted streamed run
for a stopped and a crashed-then-resumed one; transformers loading the output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from sparseforge import models as sm
from sparseforge.models import pipeline
from sparseforge.models.streaming import RUN_DIR, prune_streaming

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

N_LAYERS = 3


def _write_model(d: Path, dtype: Any, shard: str | None = "60KB", seed: int = 0) -> Path:
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=320,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(cfg).to(dtype)
    kw = {} if shard is None else {"max_shard_size": shard}
    m.save_pretrained(d, safe_serialization=True, **kw)
    return d


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_model(tmp_path_factory.mktemp("src") / "bf16", torch.bfloat16)


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 320, size=(6, 32))


def _weights(d: Path) -> dict[str, np.ndarray]:
    m = sm.load(d, dtype=None)
    return {n: np.asarray(m.weight(n)) for n in m.config.weight_shapes()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


KW = dict(batch_tokens=64, progress=False)  # 2 windows per batch: batching exercised


@pytest.mark.parametrize(
    ("method", "pattern", "dtype"),
    [
        ("sparsegpt", None, "bf16"),
        ("wanda", "2:4", "bf16"),
        ("sparsegpt", "2:4", "fp32"),
    ],
)
def test_streamed_equals_in_memory(
    tmp_path: Path, bf16_dir: Path, ids: np.ndarray, method: str, pattern: str | None, dtype: str
) -> None:
    src = bf16_dir if dtype == "bf16" else _write_model(tmp_path / "fp32", torch.float32)
    out = tmp_path / "out"
    rep = prune_streaming(src, out, ids, method=method, pattern=pattern, **KW)
    assert len(rep.layers) == 7 * N_LAYERS
    assert not (out / RUN_DIR).exists()
    mem = sm.load(src, num_threads=1)  # float32 in memory
    mrep = pipeline.prune(mem, ids, method=method, pattern=pattern, **KW)
    got = _weights(out)
    source = _weights(src)
    for name, a in got.items():
        want = np.asarray(mem.weight(name)).astype(source[name].dtype)
        assert _same_bits(a, want), name
    for la, lb in zip(rep.layers, mrep.layers, strict=True):
        assert la.name == lb.name
        assert la.sparsity == lb.sparsity
        assert la.error == lb.error
    # not a no-op: the linears are pruned, the rest untouched
    assert all(
        np.count_nonzero(got[n].astype(np.float32)) <= got[n].size // 2 + got[n].shape[0]
        for n in got
        if n.endswith("proj.weight")
    )
    assert _same_bits(got["model.embed_tokens.weight"], source["model.embed_tokens.weight"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got)


def test_output_loads_in_transformers(tmp_path: Path, bf16_dir: Path, ids: np.ndarray) -> None:
    out = tmp_path / "out"
    prune_streaming(bf16_dir, out, ids, method="wanda", **KW)
    hf = transformers.LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.bfloat16)
    ours = _weights(out)
    for name, p in hf.state_dict().items():
        if name in ours:
            a = p.detach().float().numpy()
            assert np.array_equal(a, ours[name].astype(np.float32)), name
    x = torch.tensor(ids[:1])
    with torch.no_grad():
        logits = hf(x).logits.float().numpy()[0]
    mine = sm.load(out).forward(ids[0])
    assert np.allclose(logits, mine, atol=0.1)  # bf16 transformers vs our float32 forward


def test_stop_and_resume_equals_uninterrupted(
    tmp_path: Path, bf16_dir: Path, ids: np.ndarray
) -> None:
    full = tmp_path / "full"
    prune_streaming(bf16_dir, full, ids, method="sparsegpt", **KW)
    part = tmp_path / "part"
    r1 = prune_streaming(bf16_dir, part, ids, method="sparsegpt", stop_after=1, **KW)
    assert len(r1.layers) == 7
    assert (part / RUN_DIR / "run.json").is_file()
    assert not (part / "model.safetensors.index.json").exists()  # not loadable yet
    r2 = prune_streaming(bf16_dir, part, ids, method="sparsegpt", **KW)
    assert len(r2.layers) == 7 * N_LAYERS
    assert [r.error for r in r2.layers][:7] == [r.error for r in r1.layers]
    a, b = _weights(full), _weights(part)
    assert all(_same_bits(a[n], b[n]) for n in a)


def test_crash_mid_block_then_resume(tmp_path: Path, bf16_dir: Path, ids: np.ndarray) -> None:
    """A failure inside block 1 (after block 0 finished) leaves a resumable checkpoint; the
    continued run equals an uninterrupted one bit for bit."""
    calls = {"n": 0, "fail_at": 9}

    def flaky(W, stats, sparsity, pattern, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("simulated crash")
        return pipeline.METHODS["wanda"].fn(W, stats, sparsity, pattern, **kw)

    pipeline.register_method("flaky_wanda", flaky, needs_hessian=False)
    try:
        out = tmp_path / "out"
        with pytest.raises(RuntimeError, match="simulated crash"):
            prune_streaming(bf16_dir, out, ids, method="flaky_wanda", **KW)
        state = json.loads((out / RUN_DIR / "run.json").read_text())
        assert state["done"] == 1
        calls["fail_at"] = -1
        prune_streaming(bf16_dir, out, ids, method="flaky_wanda", **KW)
        full = tmp_path / "full"
        prune_streaming(bf16_dir, full, ids, method="flaky_wanda", **KW)
        a, b = _weights(full), _weights(out)
        assert all(_same_bits(a[n], b[n]) for n in a)
    finally:
        pipeline.METHODS.pop("flaky_wanda", None)


def test_checkpoint_of_another_run_is_refused(
    tmp_path: Path, bf16_dir: Path, ids: np.ndarray
) -> None:
    out = tmp_path / "out"
    prune_streaming(bf16_dir, out, ids, method="wanda", stop_after=1, **KW)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="different run"):
        prune_streaming(bf16_dir, out, ids, method="wanda", sparsity=0.6, stop_after=2, **KW)
    with pytest.raises(ValueError, match="different run"):
        prune_streaming(bf16_dir, out, ids[:, :16], method="wanda", **KW)
    with pytest.raises(ValueError, match="unfinished run"):
        prune_streaming(bf16_dir, out, ids, method="wanda", resume=False, **KW)
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("something else")
    with pytest.raises(ValueError, match="not empty"):
        prune_streaming(bf16_dir, tmp_path / "full", ids, method="wanda", **KW)


def test_shards_that_disagree_with_the_index(
    tmp_path: Path, bf16_dir: Path, ids: np.ndarray
) -> None:
    src = tmp_path / "src"
    shutil.copytree(bf16_dir, src)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    name = next(n for n, f in index["weight_map"].items() if f == files[0])
    index["weight_map"][name] = files[1]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="disagree"):
        prune_streaming(src, tmp_path / "out", ids, method="wanda", **KW)
    assert not (tmp_path / "out").exists()


def test_source_rewritten_with_other_weights_is_refused(
    tmp_path: Path, bf16_dir: Path, ids: np.ndarray
) -> None:
    """Same config, same shapes, same shard headers, other weights: not the same run."""
    src = tmp_path / "src"
    shutil.copytree(bf16_dir, src)
    out = tmp_path / "out"
    prune_streaming(src, out, ids, method="wanda", stop_after=1, **KW)
    shutil.rmtree(src)
    _write_model(src, torch.bfloat16, seed=1)
    state = (out / RUN_DIR / "run.json").read_text()
    with pytest.raises(ValueError, match="different run"):
        prune_streaming(src, out, ids, method="wanda", **KW)
    assert (out / RUN_DIR / "run.json").read_text() == state


def test_missing_or_extra_shard_tensors(tmp_path: Path, bf16_dir: Path, ids: np.ndarray) -> None:
    src = tmp_path / "src"
    shutil.copytree(bf16_dir, src)
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    # A shard the index lists is gone.
    victim = sorted(set(index["weight_map"].values()))[-1]
    (src / victim).rename(tmp_path / victim)
    with pytest.raises(ValueError, match=f"lists shard '{victim}', which is missing"):
        prune_streaming(src, tmp_path / "out", ids, method="wanda", **KW)
    (tmp_path / victim).rename(src / victim)
    # The index forgets a tensor that a (still listed) shard holds.
    files = list(index["weight_map"].values())
    name = next(n for n, f in sorted(index["weight_map"].items()) if files.count(f) > 1)
    del index["weight_map"][name]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="disagree"):
        prune_streaming(src, tmp_path / "out", ids, method="wanda", **KW)
    assert not (tmp_path / "out").exists()


def test_calibration_too_short(tmp_path: Path, bf16_dir: Path) -> None:
    with pytest.raises(ValueError, match="shorter than one calibration window"):
        prune_streaming(bf16_dir, tmp_path / "o", np.arange(1, 20), seqlen=64, **KW)
    # Long enough for one window, not for nsamples distinct ones (70 tokens: 7 starts).
    with pytest.raises(
        ValueError, match="only 7 distinct windows of seqlen=64, fewer than nsamples=8"
    ):
        prune_streaming(bf16_dir, tmp_path / "o", np.arange(1, 71), nsamples=8, seqlen=64, **KW)
    assert not (tmp_path / "o").exists()


def test_bf16_activations_and_spill(tmp_path: Path, bf16_dir: Path, ids: np.ndarray) -> None:
    """activations='bfloat16' stores the states rounded (results differ from float32 but
    stay close); spill= keeps them in unlinked memory-mapped files (same bits as in RAM)."""
    a = sm.load(bf16_dir, num_threads=1)
    pipeline.prune(a, ids, method="wanda", activations="bfloat16", **KW)
    b = sm.load(bf16_dir, num_threads=1)
    pipeline.prune(b, ids, method="wanda", activations="bfloat16", spill=tmp_path, **KW)
    c = sm.load(bf16_dir, num_threads=1)
    pipeline.prune(c, ids, method="wanda", **KW)
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    masks_differ = 0
    for i in range(N_LAYERS):
        for nm in a.linear_names(i):
            assert _same_bits(a.weight(nm), b.weight(nm))
            masks_differ += int(np.count_nonzero((a.weight(nm) == 0) != (c.weight(nm) == 0)))
    total = sum(a.weight(n).size for i in range(N_LAYERS) for n in a.linear_names(i))
    assert masks_differ < 0.05 * total
    assert ml_dtypes.bfloat16 is not None


def test_release_pages_keeps_values(bf16_dir: Path) -> None:
    """The source pages a run drops from its RSS read back the same values."""
    from sparseforge.models._calibration import release_pages

    m = sm.load(bf16_dir, dtype=None)
    name = "model.layers.0.mlp.down_proj.weight"
    a = m._weights[name]
    before = np.array(a)
    assert a.nbytes >= 3 * 4096  # whole pages inside it
    assert release_pages(a)
    assert _same_bits(np.asarray(a), before)
    assert not release_pages(before)  # owns its memory: nothing to release
    assert not release_pages(None)
