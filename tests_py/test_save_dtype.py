"""sf.models.save keeps the source checkpoint's storage dtype by default: a bf16 safetensors
directory saves bf16 (the loader computes in float32), F16 GGUF tensors save float16, and
quantised GGUF tensors save float16 with a note saying so; an explicit dtype wins; llama2.c
(float32) stays float32."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import realdata
import sparseforge as sf
from sparseforge import models as sm

gguf = pytest.importorskip("gguf")
L = pytest.importorskip("test_models_loaders")  # its GGUF / HF writers and random weights

BF16 = np.dtype(ml_dtypes.bfloat16)


def _prune_some(model: sm.LlamaModel) -> None:
    for name in model.linear_names(0):
        W = np.ascontiguousarray(model.weight(name))
        model.set_weight(name, sf.prune.magnitude(W, 0.5).weight)


def test_quantised_gguf_saves_float16_and_says_so(tmp_path: Path) -> None:
    state = L._random_state(L.TINY, tied=False, biases=False, seed=3)
    qtypes = {}
    for i in range(L.TINY["num_hidden_layers"]):
        qtypes.update({f"blk.{i}.ffn_up.weight": "Q8_0", f"blk.{i}.ffn_down.weight": "Q4_0"})
        qtypes[f"blk.{i}.attn_q.weight"] = "F16"
    path = tmp_path / "m.gguf"
    L._write_gguf(path, L.TINY, state, qtypes=qtypes, tokenizer=False)
    model = sm.load(path, tokenizer=False)
    up = "model.layers.0.mlp.up_proj.weight"
    assert model.weight(up).dtype == np.float32  # the loader computes in float32
    _prune_some(model)
    rep = sm.save(model, tmp_path / "m.sfm")
    assert "Q4_0 -> float16" in rep.note
    assert "Q8_0 -> float16" in rep.note
    assert "Q4_0 -> float16" in str(rep)
    back = sm.load(tmp_path / "m.sfm")
    for name in model.config.weight_shapes():
        w = back.weight(name)
        dense = w.to_dense() if hasattr(w, "to_dense") else np.asarray(w)
        kind = model._weights.tensor_type(name)
        if len(dense.shape) == 2:
            expected = np.float16 if kind != "F32" else np.float32
            assert dense.dtype == expected, (name, kind)
            # the saved values are the (pruned) loaded weights rounded to that dtype
            src = np.asarray(model.weight(name))
            np.testing.assert_array_equal(dense, src.astype(expected))
    # an explicit dtype wins and leaves no note
    rep32 = sm.save(model, tmp_path / "m32.sfm", dtype="float32")
    assert rep32.note == ""
    assert rep32.dtypes == {"float32": len([n for n, s in model.config.weight_shapes().items()
                                            if len(s) == 2])}  # fmt: skip
    assert rep.file_bytes < rep32.file_bytes


def test_bf16_safetensors_saves_bf16(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    state = L._random_state(L.TINY, tied=True, biases=False, seed=4)
    d = tmp_path / "hf"
    L._save_hf(d, state, L.TINY, tied=True, dtype=ml_dtypes.bfloat16)
    model = sm.load(d)
    w0 = model.weight("model.layers.1.self_attn.o_proj.weight")
    assert w0.dtype == np.float32
    _prune_some(model)
    rep = sm.save(model, tmp_path / "m.sfm")
    assert rep.note == ""
    assert set(rep.dtypes) == {"bfloat16"}
    back = sm.load(tmp_path / "m.sfm")
    w = back.weight("model.layers.1.self_attn.o_proj.weight")
    assert np.asarray(w).dtype == BF16
    np.testing.assert_array_equal(np.asarray(w).astype(np.float32), w0)  # bf16 values: exact
    rep32 = sm.save(model, tmp_path / "m32.sfm", dtype="float32")
    assert rep.file_bytes < 0.6 * rep32.file_bytes  # norms (1-D) stay float32


def test_llama2c_stays_float32(tmp_path: Path) -> None:
    path = realdata.stories260k_path()
    if path is None:
        pytest.skip("stories260K not found")
    model = sm.load(path)
    rep = sm.save(model, tmp_path / "s.sfm")
    assert set(rep.dtypes) == {"float32"}
    assert rep.note == ""
