"""sf.models.export_hf: the directory transformers loads, checked against transformers'
own forward and tokenizer, and read back by sf.models.load bit for bit; structured
outputs; bad input and atomicity; the ``sparseforge export`` command."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import realdata
import sparseforge as sf
import tinymodels
from sparseforge import models as sm
from sparseforge.models import _export_io
from sparseforge.models.gguf import unpermute_qk

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

STORIES = realdata.stories260k_path()
SMOLLM2 = realdata.smollm2_path()
needs_stories = realdata.needs_stories
needs_smollm2 = realdata.needs_smollm2
TEXTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "The quick brown fox jumps over the lazy dog in 1999, and 12345 people watched!",
    'Tom said: "I can\'t find my ball." His mom smiled.\n\nThe end.',
]


random_model = tinymodels.random_model


def hf_logits(directory: Path, ids: list[int]) -> np.ndarray:
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    hf.eval()
    with torch.no_grad():
        out: np.ndarray = hf(torch.tensor([ids])).logits[0].float().numpy()
    return out


def hf_state(directory: Path) -> dict[str, np.ndarray]:
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def hf_order(model: sm.LlamaModel, name: str) -> np.ndarray:
    """The oracle of what the file must hold: the weight dense, Q/K rows in rotate_half
    order for an interleaved (llama2.c) model."""
    w = model.weight(name)
    a = w.to_dense() if hasattr(w, "to_dense") else np.asarray(w)
    if model.config.rope_style == "interleaved":
        if ".q_proj." in name:
            a = unpermute_qk(a, model.config.n_heads)
        elif ".k_proj." in name:
            a = unpermute_qk(a, model.config.n_kv_heads)
    return a


def prune_magnitude(model: sm.LlamaModel, blocks: Any = None, **kw: Any) -> None:
    """Magnitude-prune the block linears in place (no calibration needed)."""
    for i in range(model.config.n_layers) if blocks is None else blocks:
        for n in model.linear_names(i):
            w = np.ascontiguousarray(model.weight(n))
            model.set_weight(n, sf.prune.magnitude(w, **kw).weight)


def assert_logits_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(ours).max()))
    assert float(np.abs(ours - theirs).max()) <= 1e-4 * scale


# -- stories260K ---------------------------------------------------------------------------


@needs_stories
def test_stories260k_transformers_logits_tokenizer_and_reload(tmp_path: Path) -> None:
    m = sm.load(STORIES)
    out = tmp_path / "hf"
    rep = sm.export_hf(m, out)
    assert sorted(rep.files) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["tie_word_embeddings"]
    ids = m.tokenizer.encode(TEXTS[0])
    ours = m.forward(ids)
    theirs = hf_logits(out, ids)
    assert_logits_close(ours, theirs)
    # transformers' tokenizer and ours read back give run.c's ids
    tk = transformers.AutoTokenizer.from_pretrained(out)
    back = sm.load(out)
    for text in TEXTS:
        ref = m.tokenizer.encode(text)
        assert tk(text)["input_ids"] == ref
        assert back.tokenizer.encode(text) == ref
        assert back.tokenizer.decode(ref) == m.tokenizer.decode(ref)
    # bit for bit: every weight equals the source in Hugging Face row order
    assert back.config.rope_style == "half"
    for f in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size"):
        assert getattr(back.config, f) == getattr(m.config, f)
    for name in m.config.weight_shapes():
        np.testing.assert_array_equal(np.asarray(back.weight(name)), hf_order(m, name))
    np.testing.assert_allclose(back.forward(ids), ours, rtol=0, atol=1e-4)


@needs_stories
def test_stories260k_tokenizer_json_matches_run_c_on_stories() -> None:
    from sparseforge.models.export_hf import hf_tokenizer_backend

    m = sm.load(STORIES)
    backend, bos, _, add_bos = hf_tokenizer_backend(m)
    assert (bos, add_bos) == (1, True)
    text = STORIES.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt"
    paragraphs = [p for p in text.read_text(encoding="utf-8").split("\n\n") if p.strip()][:150]
    for p in paragraphs:
        assert backend.encode(p).ids == m.tokenizer.encode(p)


@needs_stories
def test_pruned_stories260k_keeps_its_zeros(tmp_path: Path) -> None:
    m = sm.load(STORIES)
    prune_magnitude(m, pattern="2:4")
    # one linear given compressed: written dense with the same zeros
    name = "model.layers.1.mlp.up_proj.weight"
    m.set_weight(name, sf.format.NMTensor.from_dense(np.asarray(m.weight(name)), 2, 4))
    rep = sm.export_hf(m, tmp_path / "hf")
    state = hf_state(tmp_path / "hf")
    zeros = 0
    for i in range(m.config.n_layers):
        for n in m.linear_names(i):
            ref = hf_order(m, n)
            np.testing.assert_array_equal(state[n], ref)
            zeros += int((state[n] == 0).sum())
            assert (ref == 0).mean() == 0.5
    assert zeros == rep.zeros
    ids = m.tokenizer.encode(TEXTS[2])
    assert_logits_close(m.forward(ids), hf_logits(tmp_path / "hf", ids))


# -- SmolLM2 -------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_pruned_sharded_transformers_logits_and_tokenizer(tmp_path: Path) -> None:
    m = sm.load(SMOLLM2)
    prune_magnitude(m, blocks=(0, 7, 29), sparsity=0.5)
    out = tmp_path / "smol"
    rep = sm.export_hf(m, out, max_shard_size="200MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3
    assert shards[0] == "model-00001-of-00003.safetensors"
    assert len(index["weight_map"]) == len(m.config.weight_shapes())
    assert all(rep.files[s] <= 200e6 for s in shards)
    ids = m.tokenizer.encode(TEXTS[1])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0].numpy()
    assert_logits_close(m.forward(ids), theirs)
    state = hf.state_dict()
    for n in m.linear_names(7) + m.linear_names(29):
        np.testing.assert_array_equal(state[n].numpy(), np.asarray(m.weight(n)))
    tk = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tk(text)["input_ids"] == m.tokenizer.encode(text)
    back = sm.load(out, tokenizer=False)
    for n in ("model.embed_tokens.weight", "model.layers.3.self_attn.k_proj.weight"):
        np.testing.assert_array_equal(np.asarray(back.weight(n)), np.asarray(m.weight(n)))


# -- dtypes, families, structured outputs ---------------------------------------------------


def test_dtype_kept_by_default_and_cast_on_request(tmp_path: Path) -> None:
    m = random_model()
    bf16 = ml_dtypes.bfloat16
    weights = {n: np.asarray(m.weight(n)) for n in m.config.weight_shapes()}
    for n in m.linear_names(0):
        weights[n] = weights[n].astype(bf16)
    mixed = sm.LlamaModel(m.config, weights)
    sm.export_hf(mixed, tmp_path / "keep")
    back = sm.load(tmp_path / "keep", dtype=None)
    for n, a in weights.items():
        b = np.asarray(back.weight(n))
        assert b.dtype == a.dtype
        np.testing.assert_array_equal(b.view(np.uint8), np.ascontiguousarray(a).view(np.uint8))
    sm.export_hf(m, tmp_path / "f16", dtype="float16")
    cfg = json.loads((tmp_path / "f16" / "config.json").read_text())
    assert cfg["torch_dtype"] == "float16"
    back = sm.load(tmp_path / "f16", dtype=None)
    for n in m.config.weight_shapes():
        b = np.asarray(back.weight(n))
        assert b.dtype == np.float16
        np.testing.assert_array_equal(b, np.asarray(m.weight(n)).astype(np.float16))


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_families_match_transformers(tmp_path: Path, arch: str) -> None:
    m = random_model(seed=3, arch=arch, tied_embeddings=arch == "qwen2")
    sm.export_hf(m, tmp_path / arch)
    cfg = json.loads((tmp_path / arch / "config.json").read_text())
    assert cfg["model_type"] == arch
    ids = [1, 5, 9, 33, 2, 70, 11, 4]
    assert_logits_close(m.forward(ids), hf_logits(tmp_path / arch, ids))
    back = sm.load(tmp_path / arch)
    assert back.config.arch == arch
    for n in list(m.config.weight_shapes()) + [x for x in m._weights if x.endswith(".bias")]:
        np.testing.assert_array_equal(np.asarray(back._weights[n]), np.asarray(m.weight(n)))


def test_minitron_width_and_depth_are_expressible(tmp_path: Path) -> None:
    m = random_model(seed=5, dim=64, n_heads=8, n_kv_heads=4, hidden_dim=128, n_layers=3)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 80, size=(4, 16))
    imp = sf.structured.importance(m, calib, nsamples=4, seqlen=16)
    small = sf.structured.width(m, imp, hidden_dim=80, n_heads=4, n_kv_heads=2, dim=48)
    small = sf.structured.depth(small, drop=[1])
    assert small.config.n_heads * small.config.head_dim != small.config.dim
    sm.export_hf(small, tmp_path / "mini")
    cfg = json.loads((tmp_path / "mini" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]) == (48, 80, 2)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    ids = [3, 14, 15, 9, 26, 5, 35, 8, 79]
    assert_logits_close(small.forward(ids), hf_logits(tmp_path / "mini", ids))


def test_slicegpt_is_refused_before_writing(tmp_path: Path) -> None:
    m = random_model(seed=6)
    rng = np.random.default_rng(0)
    sliced = sf.structured.slicegpt(m, rng.integers(0, 80, size=(4, 16)), dim=48, nsamples=4)
    with pytest.raises(ValueError, match=r"SliceGPT.*shortcut"):
        sm.export_hf(sliced, tmp_path / "sliced")
    assert list(tmp_path.iterdir()) == []


# -- bad input and atomicity ---------------------------------------------------------------


def test_output_path_checks(tmp_path: Path) -> None:
    m = random_model()
    with pytest.raises(ValueError, match=r"out: the folder .* does not exist"):
        sm.export_hf(m, tmp_path / "missing" / "hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        sm.export_hf(m, tmp_path / "file")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass overwrite=True"):
        sm.export_hf(m, full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(TypeError, match="model"):
        sm.export_hf("not a model", tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        sm.export_hf(m, tmp_path / "x", dtype="int8")
    with pytest.raises(ValueError, match="max_shard_size"):
        sm.export_hf(m, tmp_path / "x", max_shard_size="lots")
    with pytest.raises(TypeError, match="out"):
        sm.export_hf(m, 3)  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    sm.export_hf(m, empty)  # an empty directory is fine
    sm.export_hf(m, full, overwrite=True)
    assert not (full / "keep.txt").exists()
    assert (full / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "full"]


def test_a_failure_mid_export_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    m = random_model()
    calls = {"n": 0}
    real = _export_io.write_array

    def flaky(f: Any, a: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, a)

    monkeypatch.setattr(_export_io, "write_array", flaky)
    with pytest.raises(OSError, match="No space left"):
        sm.export_hf(m, tmp_path / "hf", max_shard_size=10_000)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    calls["n"] = 0
    with pytest.raises(OSError, match="No space left"):
        sm.export_hf(m, old, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert (old / "keep.txt").read_text() == "mine"


@needs_stories
def test_cli_export_hf_and_refusals(tmp_path: Path) -> None:
    env = {**os.environ, "SPARSEFORGE_DATA": str(STORIES.parent.parent)}  # type: ignore[union-attr]
    out = tmp_path / "s260"
    cmd = [sys.executable, "-m", "sparseforge", "export", "stories260k", "--format", "hf"]
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "model.safetensors" in r.stdout
    assert (out / "tokenizer.json").is_file()
    r = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "not empty" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(
        [*cmd, "--out", str(tmp_path / "no" / "where")], capture_output=True, text=True, env=env
    )
    assert r.returncode == 2
    assert "does not exist" in r.stderr
