"""sparseforge.torch.prune_model, then save_pretrained: dense with zeros (read back by
transformers and by sf.models.load with the zeros in place), and compressed through the
compressed-tensors package (read back into NMTensor by sf.models.load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import realdata
import sparseforge as sf
from sparseforge import models as sm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sft = pytest.importorskip("sparseforge.torch")

STORIES = realdata.stories260k_path()
pytestmark = pytest.mark.skipif(
    STORIES is None, reason="stories260K not found (../shared/data or SPARSEFORGE_DATA)"
)


def pruned_transformers_model(tmp_path: Path, **prune_kw: object) -> tuple[object, object]:
    """stories260K as a transformers LlamaForCausalLM (through export_hf), pruned in place
    by sparseforge.torch.prune_model on TinyStories windows."""
    m = sm.load(STORIES)
    sm.export_hf(m, tmp_path / "src")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src", dtype=torch.float32)
    hf.eval()
    text = (STORIES.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
    windows = sm.calibration_windows(m, text[:60000], nsamples=8, seqlen=64)
    sft.prune_model(hf, windows, progress=False, **prune_kw)
    return hf, m


def linears(hf: object) -> dict[str, np.ndarray]:
    return {
        k: v.detach().numpy().copy()
        for k, v in hf.state_dict().items()  # type: ignore[attr-defined]
        if k.startswith("model.layers.") and k.endswith("_proj.weight")
    }


def test_prune_model_then_save_pretrained_dense(tmp_path: Path) -> None:
    hf, m = pruned_transformers_model(tmp_path, method="wanda", sparsity=0.5)
    pruned = linears(hf)
    assert all((w == 0).mean() == 0.5 for w in pruned.values())
    hf.save_pretrained(tmp_path / "pruned")  # type: ignore[attr-defined]
    # transformers reads the zeros back
    again = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned", dtype=torch.float32
    )
    for k, w in linears(again).items():
        np.testing.assert_array_equal(w, pruned[k])
    # and so does sparseforge (the tokenizer files were not saved: weights only)
    ours = sm.load(tmp_path / "pruned", tokenizer=False)
    for k, w in pruned.items():
        np.testing.assert_array_equal(np.asarray(ours.weight(k)), w)
    ids = m.tokenizer.encode("Once upon a time, there was a cat.")  # type: ignore[attr-defined]
    with torch.no_grad():
        theirs = again(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(ours.forward(ids), theirs, rtol=0, atol=1e-4)


def test_prune_model_then_save_compressed(tmp_path: Path) -> None:
    ct = pytest.importorskip("compressed_tensors")
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.config import Sparse24BitMaskConfig
    except ImportError:
        pytest.skip(f"compressed-tensors {ct.__version__} has no sparse compressors")
    hf, _ = pruned_transformers_model(tmp_path, method="sparsegpt", pattern="2:4")
    pruned = linears(hf)
    comp = ModelCompressor(
        sparsity_config=Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"])
    )
    hf.save_pretrained(tmp_path / "c", state_dict=comp.compress(hf))  # type: ignore[attr-defined]
    comp.update_config(str(tmp_path / "c"))
    ours = sm.load(tmp_path / "c", tokenizer=False)
    for k, w in pruned.items():
        t = ours.weight(k)
        assert isinstance(t, sf.format.NMTensor)
        np.testing.assert_array_equal(t.to_dense(), w)
