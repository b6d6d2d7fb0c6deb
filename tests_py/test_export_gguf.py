"""sf.models.export_gguf: GGUF files read back by our loader (and by the gguf package's
reader) with the weights, Q/K row order, tokenizer and zeros they should have; dtypes;
bad input and atomicity. llama.cpp itself runs the files in bench/bench_export.py."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import realdata
import sparseforge as sf
import tinymodels
from sparseforge import models as sm
from sparseforge.models.gguf import load_gguf, permute_qk, unpermute_qk

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

STORIES = realdata.stories260k_path()
SMOLLM2 = realdata.smollm2_path()
needs_stories = realdata.needs_stories
needs_smollm2 = realdata.needs_smollm2
TEXTS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside.",
    "The quick brown fox jumps over the lazy dog in 1999, and 12345 people watched!",
    'Tom said: "I can\'t find my ball." His mom smiled.\n\nThe end. <|im_start|>user',
]


random_model = tinymodels.random_model


def raw_tensors(path: Path) -> dict[str, Any]:
    """Tensors as the gguf package's reader sees them (independent of our loader)."""
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def stored_f32(t: Any) -> np.ndarray:
    shape = tuple(int(s) for s in reversed(t.shape))
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)


# -- stories260K: llama2.c's rows are already llama.cpp's order ---------------------------


@needs_stories
def test_stories260k_round_trip_rows_and_tokenizer(tmp_path: Path) -> None:
    m = sm.load(STORIES)
    path = tmp_path / "s.gguf"
    sm.export_gguf(m, path)
    raw = raw_tensors(path)
    # the file holds llama2.c's own wq/wk rows (interleaved pairs = llama.cpp's order)
    linears = realdata.load_stories260k_linears(STORIES)
    for i in range(m.config.n_layers):
        np.testing.assert_array_equal(
            stored_f32(raw[f"blk.{i}.attn_q.weight"]), linears[f"layers.{i}.wq"]
        )
        np.testing.assert_array_equal(
            stored_f32(raw[f"blk.{i}.attn_k.weight"]), linears[f"layers.{i}.wk"]
        )
        np.testing.assert_array_equal(
            stored_f32(raw[f"blk.{i}.ffn_down.weight"]), linears[f"layers.{i}.w2"]
        )
    back = load_gguf(path)
    assert back.config.rope_style == "half"
    for name in m.config.weight_shapes():
        ref = np.asarray(m.weight(name))
        if ".q_proj." in name:
            ref = unpermute_qk(ref, m.config.n_heads)
        elif ".k_proj." in name:
            ref = unpermute_qk(ref, m.config.n_kv_heads)
        np.testing.assert_array_equal(np.asarray(back.weight(name)), ref)
    for text in TEXTS:
        assert back.tokenizer.encode(text) == m.tokenizer.encode(text)
    ids = m.tokenizer.encode(TEXTS[0])
    np.testing.assert_allclose(back.forward(ids), m.forward(ids), rtol=0, atol=1e-4)


@needs_stories
def test_stories260k_spm_vocabulary_metadata(tmp_path: Path) -> None:
    m = sm.load(STORIES)
    sm.export_gguf(m, tmp_path / "s.gguf", tokenizer=True)
    r = gguf.GGUFReader(str(tmp_path / "s.gguf"))
    meta = {k: f.contents() for k, f in r.fields.items()}
    assert meta["tokenizer.ggml.model"] == "llama"
    tokens, scores = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3] == "<0x00>"
    assert meta["tokenizer.ggml.token_type"][:4] == [2, 3, 3, 6]
    tok = m.tokenizer
    for i in (259, 300, 511):
        assert tokens[i] == tok.piece(i).decode("utf-8").replace(" ", "\u2581")
        assert scores[i] == tok.score(i)
    assert meta["llama.rope.dimension_count"] == 8
    assert meta["llama.block_count"] == 5


# -- SmolLM2 -------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_round_trip_pruned_f16(tmp_path: Path) -> None:
    m = sm.load(SMOLLM2)
    for i in (0, 29):
        for n in m.linear_names(i):
            w = np.ascontiguousarray(m.weight(n))
            m.set_weight(n, sf.prune.magnitude(w, pattern="2:4").weight)
    path = tmp_path / "smol.gguf"
    rep = sm.export_gguf(m, path, dtype="f16")
    raw = raw_tensors(path)
    assert str(raw["blk.0.attn_q.weight"].tensor_type.name) == "F16"
    assert str(raw["blk.0.attn_norm.weight"].tensor_type.name) == "F32"
    assert "output.weight" not in raw  # tied
    # Q rows as llama.cpp's converter permutes them
    q = np.asarray(m.weight("model.layers.0.self_attn.q_proj.weight"))
    np.testing.assert_array_equal(
        stored_f32(raw["blk.0.attn_q.weight"]), permute_qk(q.astype(np.float16), 9)
    )
    back = load_gguf(path)
    assert back.config == m.config
    zeros = 0
    for i in (0, 13, 29):
        for n in m.linear_names(i):
            ref = np.asarray(m.weight(n)).astype(np.float16).astype(np.float32)
            got = np.asarray(back.weight(n))
            np.testing.assert_array_equal(got, ref)
            assert np.array_equal(got == 0, ref == 0)
            if i != 13:
                assert (got == 0).mean() >= 0.5
                zeros += int((got == 0).sum())
    assert rep.zeros >= zeros
    for text in TEXTS:
        assert back.tokenizer.encode(text) == m.tokenizer.encode(text)
    meta = {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.add_bos_token"] is False


# -- dtypes, families ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_dtypes_round_trip_exactly_and_keep_zeros(tmp_path: Path, dtype: str) -> None:
    m = random_model(seed=1, hidden_dim=80)  # down_proj: 80 inputs, not a Q8_0 multiple
    n = "model.layers.0.mlp.up_proj.weight"
    pruned = sf.prune.magnitude(np.ascontiguousarray(m.weight(n)), pattern="2:4").weight
    m.set_weight(n, sf.format.NMTensor.from_dense(pruned, 2, 4))
    rep = sm.export_gguf(m, tmp_path / "m.gguf", dtype=dtype)
    back = load_gguf(tmp_path / "m.gguf", tokenizer=False)
    qt = gguf.GGMLQuantizationType

    def expect(a: np.ndarray) -> np.ndarray:
        if a.ndim == 1 or dtype == "f32":
            return a
        if dtype == "f16" or (dtype == "q8_0" and a.shape[1] % 32):
            return a.astype(np.float16).astype(np.float32)
        if dtype == "bf16":
            return a.astype(ml_dtypes.bfloat16).astype(np.float32)
        return np.asarray(gguf.quants.dequantize(gguf.quants.quantize(a, qt.Q8_0), qt.Q8_0))

    for name in m.config.weight_shapes():
        w = m.weight(name)
        a = w.to_dense() if hasattr(w, "to_dense") else np.asarray(w)
        np.testing.assert_array_equal(np.asarray(back.weight(name)), expect(a))
    got = np.asarray(back.weight(n))
    assert np.array_equal(got == 0, pruned == 0)
    fallback = [x for x in rep.notes if "ffn_down" in x]
    assert len(fallback) == (2 if dtype == "q8_0" else 0)


def test_qwen2_biases_and_unpermuted_rows(tmp_path: Path) -> None:
    m = random_model(seed=2, arch="qwen2", tied_embeddings=True)
    sm.export_gguf(m, tmp_path / "q.gguf")
    raw = raw_tensors(tmp_path / "q.gguf")
    np.testing.assert_array_equal(
        stored_f32(raw["blk.1.attn_q.weight"]),
        np.asarray(m.weight("model.layers.1.self_attn.q_proj.weight")),
    )
    back = load_gguf(tmp_path / "q.gguf", tokenizer=False)
    for name in m._weights:
        np.testing.assert_array_equal(np.asarray(back._weights[name]), np.asarray(m.weight(name)))
    ids = [1, 4, 9, 16, 25, 36]
    np.testing.assert_allclose(back.forward(ids), m.forward(ids), rtol=0, atol=1e-5)


def test_head_dim_other_than_dim_over_heads(tmp_path: Path) -> None:
    m = random_model(seed=4, dim=48, n_heads=4, n_kv_heads=2, head_dim=16)
    sm.export_gguf(m, tmp_path / "h.gguf")
    back = load_gguf(tmp_path / "h.gguf", tokenizer=False)
    assert back.config.head_dim == 16
    assert back.config.dim == 48
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_allclose(back.forward(ids), m.forward(ids), rtol=0, atol=1e-5)


# -- bad input -----------------------------------------------------------------------------


def test_refusals_and_atomicity(tmp_path: Path, monkeypatch: Any) -> None:
    m = random_model()
    with pytest.raises(ValueError, match="dtype"):
        sm.export_gguf(m, tmp_path / "a.gguf", dtype="q4_0")
    with pytest.raises(ValueError, match="is a directory"):
        sm.export_gguf(m, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        sm.export_gguf(m, tmp_path / "no" / "a.gguf")
    (tmp_path / "old.gguf").write_bytes(b"mine")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        sm.export_gguf(m, tmp_path / "old.gguf")
    sliced = sf.structured.slicegpt(
        m, np.random.default_rng(0).integers(0, 80, size=(4, 16)), dim=48, nsamples=4
    )
    with pytest.raises(ValueError, match="SliceGPT"):
        sm.export_gguf(sliced, tmp_path / "s.gguf")
    real = gguf.GGUFWriter.write_tensor_data
    calls = {"n": 0}

    def flaky(self: Any, tensor: np.ndarray, *a: Any, **k: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", flaky)
    with pytest.raises(OSError, match="No space left"):
        sm.export_gguf(m, tmp_path / "old.gguf", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.gguf"]
    assert (tmp_path / "old.gguf").read_bytes() == b"mine"
    monkeypatch.undo()
    sm.export_gguf(m, tmp_path / "old.gguf", overwrite=True)
    assert load_gguf(tmp_path / "old.gguf", tokenizer=False).config.dim == 64


@needs_stories
def test_cli_export_gguf(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "SPARSEFORGE_DATA": str(STORIES.parent.parent)}  # type: ignore[union-attr]
    out = tmp_path / "s.gguf"
    cmd = [sys.executable, "-m", "sparseforge", "export", "stories260k", "--format", "gguf"]
    r = subprocess.run(
        [*cmd, "--dtype", "q8_0", "--out", str(out)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    assert "written F16" in r.stdout  # ffn_down's 172 inputs are not Q8_0 blocks
    assert load_gguf(out).tokenizer.encode(TEXTS[0]) == sm.load(STORIES).tokenizer.encode(TEXTS[0])
    r = subprocess.run(
        [*cmd, "--dtype", "bfloat16", "--out", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2
    assert "--dtype" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
