"""compressed-tensors checkpoints: ones the compressed-tensors package writes are read into
NMTensor / BitmapTensor (never densified) equal to the package's own decompression, and
run with our kernels to the densified model's perplexity; ours (export_hf(compression=))
are read back by the package. Needs compressed-tensors <= 0.14 (later versions dropped the
sparse compressors): pip install --no-deps compressed-tensors==0.14.0.1 pydantic loguru."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import realdata
import sparseforge as sf
import tinymodels
from sparseforge import models as sm
from sparseforge.models.compressed_tensors import bitmask24_from_nm, nm24_from_bitmask

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")
try:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.sparse_compressors import (  # noqa: F401
        sparse_24_bitmask,
    )
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig
except ImportError:  # pragma: no cover - compressed-tensors > 0.14
    pytest.skip(
        "this compressed-tensors has no sparse compressors (removed after 0.14.0)",
        allow_module_level=True,
    )

STORIES = realdata.stories260k_path()
needs_stories = realdata.needs_stories
CONFIGS = {"sparse-24-bitmask": Sparse24BitMaskConfig, "sparse-bitmask": BitmaskConfig}


random_model = tinymodels.random_model


def prune_all(model: sm.LlamaModel, **kw: Any) -> None:
    for i in range(model.config.n_layers):
        for n in model.linear_names(i):
            w = np.ascontiguousarray(model.weight(n))
            model.set_weight(n, sf.prune.magnitude(w, **kw).weight)


def package_checkpoint(model: sm.LlamaModel, out: Path, fmt: str) -> Path:
    """What llm-compressor does on save: the package's ModelCompressor compresses the
    transformers model's state dict, save_pretrained writes it, update_config records it."""
    dense = out.parent / (out.name + "-dense")
    sm.export_hf(model, dense)
    hf = transformers.AutoModelForCausalLM.from_pretrained(dense, dtype=torch.float32)
    comp = ModelCompressor(sparsity_config=CONFIGS[fmt](targets=["Linear"], ignore=["lm_head"]))
    hf.save_pretrained(out, state_dict=comp.compress(hf))
    comp.update_config(str(out))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (dense / f).is_file():
            shutil.copy(dense / f, out / f)
    return out


def package_weights(directory: Path) -> dict[str, np.ndarray]:
    comp = ModelCompressor.from_pretrained(str(directory))
    return {k: v.numpy() for k, v in comp.sparsity_compressor.decompress(str(directory))}


def dense_twin(model: sm.LlamaModel) -> sm.LlamaModel:
    weights = {}
    for n in model.config.weight_shapes():
        w = model.weight(n)
        weights[n] = w.to_dense() if hasattr(w, "to_dense") else np.asarray(w)
    return sm.LlamaModel(
        model.config, weights, model.tokenizer, linear_backend="sparseforge", source="twin"
    )


@needs_stories
@pytest.mark.parametrize(("fmt", "kind"), [("sparse-24-bitmask", "2:4"), ("sparse-bitmask", "0.6")])
def test_package_checkpoints_load_compressed_and_run(tmp_path: Path, fmt: str, kind: str) -> None:
    m = sm.load(STORIES)
    prune_all(m, **({"pattern": kind} if ":" in kind else {"sparsity": float(kind)}))
    path = package_checkpoint(m, tmp_path / "ckpt", fmt)
    theirs = package_weights(path)
    ours = sm.load(path, linear_backend="sparseforge")
    cls = sf.format.NMTensor if fmt == "sparse-24-bitmask" else sf.format.BitmapTensor
    for i in range(m.config.n_layers):
        for n in m.linear_names(i):
            w = ours.weight(n)
            assert isinstance(w, cls), n
            np.testing.assert_array_equal(w.to_dense(), theirs[n])
    text = (STORIES.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
    text = text[:20000]
    a = sm.perplexity(ours, text, seqlen=128, max_windows=4)
    b = sm.perplexity(dense_twin(ours), text, seqlen=128, max_windows=4)
    assert a.ppl == pytest.approx(b.ppl, rel=1e-5)
    # and the source model's (the HF export permuted Q/K rows; same function)
    c = sm.perplexity(m, text, seqlen=128, max_windows=4)
    assert a.ppl == pytest.approx(c.ppl, rel=1e-4)


def test_degenerate_24_groups_match_the_package(tmp_path: Path) -> None:
    m = random_model(seed=1)
    rng = np.random.default_rng(1)
    for i in range(2):
        for n in m.linear_names(i):
            w = sf.prune.magnitude(np.ascontiguousarray(m.weight(n)), pattern="2:4").weight
            # groups with one or no non-zero: the package stores zeros among its top-2
            w[rng.random(w.shape) < 0.3] = 0.0
            m.set_weight(n, w)
    path = package_checkpoint(m, tmp_path / "ckpt", "sparse-24-bitmask")
    theirs = package_weights(path)
    ours = sm.load(path)
    for i in range(2):
        for n in m.linear_names(i):
            np.testing.assert_array_equal(ours.weight(n).to_dense(), theirs[n])
            np.testing.assert_array_equal(theirs[n], np.asarray(m.weight(n)))


@pytest.mark.parametrize("fmt", ["sparse-24-bitmask", "sparse-bitmask"])
def test_our_compressed_export_reads_back_in_the_package_and_here(tmp_path: Path, fmt: str) -> None:
    m = random_model(seed=2)
    prune_all(m, pattern="2:4")
    dense = "model.layers.1.mlp.up_proj.weight"  # not 2:4: stays dense (ignored) in 2:4 mode
    m.set_weight(dense, np.asarray(random_model(seed=3).weight(dense)))
    nm = "model.layers.0.mlp.down_proj.weight"  # given compressed: written from its codes
    m.set_weight(nm, sf.format.NMTensor.from_dense(np.asarray(m.weight(nm)), 2, 4))
    sm.export_hf(m, tmp_path / "x", compression=fmt)
    cfg = json.loads((tmp_path / "x" / "config.json").read_text())["quantization_config"]
    assert cfg["sparsity_config"]["format"] == fmt
    theirs = package_weights(tmp_path / "x")
    back = sm.load(tmp_path / "x", linear_backend="sparseforge")
    for i in range(2):
        for n in m.linear_names(i):
            w = m.weight(n)
            ref = w.to_dense() if hasattr(w, "to_dense") else np.asarray(w)
            np.testing.assert_array_equal(theirs[n], ref)
            got = back.weight(n)
            if fmt == "sparse-24-bitmask" and n == dense:
                assert isinstance(got, np.ndarray)
                assert "model.layers.1.mlp.up_proj" in cfg["sparsity_config"]["ignore"]
            else:
                np.testing.assert_array_equal(got.to_dense(), ref)
    ids = [1, 5, 9, 33, 2, 70, 11, 4]
    np.testing.assert_allclose(back.forward(ids), m.forward(ids), rtol=0, atol=1e-5)


def test_nm24_bitmask_conversions_are_inverse() -> None:
    rng = np.random.default_rng(4)
    w = sf.prune.magnitude(rng.standard_normal((12, 40)).astype(np.float32), pattern="2:4").weight
    w[rng.random(w.shape) < 0.25] = 0
    t = sf.format.NMTensor.from_dense(w, 2, 4)
    values, bitmask = bitmask24_from_nm(t)
    back = nm24_from_bitmask(values, bitmask, (12, 40))
    np.testing.assert_array_equal(back.to_dense(), w)
    np.testing.assert_array_equal(back.codes, t.codes)
    with pytest.raises(ValueError, match="two set bits"):
        nm24_from_bitmask(values, np.zeros_like(bitmask), (12, 40))


def test_quantized_and_unknown_formats_are_refused(tmp_path: Path) -> None:
    m = random_model()
    sm.export_hf(m, tmp_path / "q")
    cfg_path = tmp_path / "q" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"]}},
    }
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantized compressed-tensors"):
        sm.load(tmp_path / "q")
    cfg["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "sparsity_config": {"format": "marlin-24"},
    }
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="marlin-24"):
        sm.load(tmp_path / "q")
    with pytest.raises(ValueError, match="compression"):
        sm.export_hf(m, tmp_path / "z", compression="zip")
