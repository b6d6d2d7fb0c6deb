"""The Llama-family CPU forward (sparseforge.models): the core ops against float64 numpy
references, the llama2.c tokenizer against a direct port of run.c's quadratic merge loop,
and the real stories260K model: karpathy's greedy sample byte for byte, the TinyStories
loss, decode loop == full forward, hooks, compressed weights, transformers' LlamaForCausalLM
on the same weights, and bad input."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import realdata
import sparseforge as sf
from reference import runc_encode
from sparseforge import models as sm
from sparseforge.models import ops

# ---------------------------------------------------------------------------------------
# Data


# the data directory holding stories260K/ (realdata.py's search: SPARSEFORGE_DATA, ../shared/data)
_BIN = realdata.stories260k_path()
DATA = _BIN.parent.parent if _BIN is not None else None
needs_data = pytest.mark.skipif(
    DATA is None, reason="stories260K not found (../shared/data or SPARSEFORGE_DATA)"
)

# karpathy/llama2.c doc/stories260K.md: `./run stories260K.bin -z tok512.bin -t 0.0`
# (temperature 0 = greedy argmax, run.c's default steps = 256, empty prompt = BOS only).
# run.c prints the pieces then a final "\n", which is not part of the text.
OFFICIAL_GREEDY_SAMPLE = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to "
    'do. She said, "I want to play with your ball, but I can\'t find it."\n'
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what "
    'to do."\n'
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to "
    'do." Her mom said, "Don\'t worry, Lily. We can help you.'
)


@pytest.fixture(scope="module")
def model() -> sm.LlamaModel:
    if DATA is None:
        pytest.skip("stories260K not found (../shared/data or SPARSEFORGE_DATA)")
    return sm.load(DATA / "stories260K" / "stories260K.bin")


def _paragraphs(n: int) -> list[str]:
    assert DATA is not None
    path = DATA / "tinystories-valid-excerpt" / "tinystories_val.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n")]
    return [b for b in blocks if b][:n]


# ---------------------------------------------------------------------------------------
# float64 references


def ref_rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return w * x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + eps)


def ref_rope(x: np.ndarray, pos: np.ndarray, theta: float, style: str) -> np.ndarray:
    D = x.shape[2]
    inv = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    ang = pos[:, None].astype(np.float64) * inv[None, :]  # (T, D/2)
    x64 = x.astype(np.float64)
    if style == "interleaved":  # Meta: complex multiplication of (x[2i] + i x[2i+1])
        z = (x64[..., 0::2] + 1j * x64[..., 1::2]) * np.exp(1j * ang)[:, None, :]
        out = np.empty_like(x64)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
        return out
    # Hugging Face: x * cos + rotate_half(x) * sin, cos/sin repeated over both halves
    cos = np.concatenate([np.cos(ang)] * 2, axis=1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=1)[:, None, :]
    rot = np.concatenate([-x64[..., D // 2 :], x64[..., : D // 2]], axis=-1)
    return x64 * cos + rot * sin


def ref_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    T, Hq, D = q.shape
    S, Hkv, _ = k.shape
    group = Hq // Hkv
    kk = np.repeat(k.astype(np.float64), group, axis=1)  # (S, Hq, D)
    vv = np.repeat(v.astype(np.float64), group, axis=1)
    scores = np.einsum("thd,shd->hts", q.astype(np.float64), kk) / np.sqrt(D)
    mask = np.arange(S)[None, :] > (S - T + np.arange(T))[:, None]  # (T, S) future keys
    scores[:, mask] = -np.inf
    scores -= scores.max(axis=2, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=2, keepdims=True)
    return np.einsum("hts,shd->thd", p, vv).reshape(T, Hq * D)


# ---------------------------------------------------------------------------------------
# Ops


@pytest.mark.parametrize("T", [1, 7, 1030])  # 1030 x 577: enough work for 2 threads
@pytest.mark.parametrize("dim", [1, 64, 577])
def test_rms_norm_matches_float64(T: int, dim: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal((T, dim)) * 3).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    y1 = ops.rms_norm(x, w, 1e-5, num_threads=1)
    y2 = ops.rms_norm(x, w, 1e-5, num_threads=2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, ref_rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-6)
    inplace = x.copy()
    ops.rms_norm(inplace, w, 1e-5, out=inplace)
    np.testing.assert_array_equal(inplace, y1)


@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize(("T", "H", "D"), [(1, 1, 2), (5, 3, 8), (3000, 3, 64)])
def test_rope_matches_float64(style: str, T: int, H: int, D: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    pos = rng.integers(0, 4096, size=T)
    y1 = ops.rope(x.copy(), pos, theta=10000.0, style=style, num_threads=1)
    y2 = ops.rope(x.copy(), pos, theta=10000.0, style=style, num_threads=2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, ref_rope(x, pos, 10000.0, style), rtol=0, atol=2e-6 * 4)


def test_rope_styles_differ_by_a_row_permutation(rng: np.random.Generator) -> None:
    T, H, D = 9, 2, 16
    x = rng.standard_normal((T, H, D)).astype(np.float32)
    pos = np.arange(T) + 100
    perm = np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])  # interleaved -> half
    a = ops.rope(x.copy(), pos, theta=500000.0, style="interleaved")
    b = ops.rope(np.ascontiguousarray(x[..., perm]), pos, theta=500000.0, style="half")
    np.testing.assert_array_equal(a[..., perm], b)  # same arithmetic, permuted
    assert not np.allclose(a, ops.rope(x.copy(), pos, theta=500000.0, style="half"))


@pytest.mark.parametrize(
    ("T", "S", "Hq", "Hkv", "D"),
    [
        (1, 1, 2, 1, 8),
        (5, 5, 4, 2, 8),
        (37, 37, 4, 4, 5),
        (70, 70, 6, 3, 16),
        (3, 41, 4, 2, 8),
        (300, 300, 4, 2, 16),  # enough work for 2 threads
    ],
)
def test_attention_matches_float64(
    simd_level: str, T: int, S: int, Hq: int, Hkv: int, D: int, rng: np.random.Generator
) -> None:
    q = (rng.standard_normal((T, Hq, D)) * 2).astype(np.float32)
    k = (rng.standard_normal((S, Hkv, D)) * 2).astype(np.float32)
    v = rng.standard_normal((S, Hkv, D)).astype(np.float32)
    o1 = ops.attention(q, k, v, num_threads=1)
    o2 = ops.attention(q, k, v, num_threads=2)
    assert o1.shape == (T, Hq * D)
    assert o1.dtype == np.float32
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_allclose(o1, ref_attention(q, k, v), rtol=0, atol=1e-5)


def test_attention_is_causal(rng: np.random.Generator) -> None:
    T, H, D = 12, 2, 4
    q, k, v = (rng.standard_normal((T, H, D)).astype(np.float32) for _ in range(3))
    a = ops.attention(q, k, v)
    k2, v2 = k.copy(), v.copy()
    k2[6:] += 10
    v2[6:] -= 5
    b = ops.attention(q, k2, v2)
    np.testing.assert_array_equal(a[:6], b[:6])
    assert not np.allclose(a[6:], b[6:])


def test_attention_softmax_is_stable() -> None:
    q = np.full((4, 1, 2), 1e4, dtype=np.float32)
    v = np.arange(8, dtype=np.float32).reshape(4, 1, 2)
    out = ops.attention(q, q.copy(), v, scale=1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[3], v[:, 0].mean(axis=0), rtol=1e-6)


def test_decode_attention_equals_last_causal_row(simd_level: str, rng: np.random.Generator) -> None:
    S, cap, Hq, Hkv, D = 45, 64, 6, 3, 20  # blocks of 4 queries, 16-key chunks, D % 16 != 0
    q = rng.standard_normal((S, Hq, D)).astype(np.float32)
    kc = rng.standard_normal((cap, Hkv, D)).astype(np.float32)
    vc = rng.standard_normal((cap, Hkv, D)).astype(np.float32)
    full = ops.attention(q, kc[:S], vc[:S])
    for t in (0, 5, 8, 17, 30, S - 2, S - 1):
        row = ops.decode_attention(np.ascontiguousarray(q[t]), kc, vc, t + 1, num_threads=2)
        np.testing.assert_array_equal(row, full[t])


def test_swiglu_gate(rng: np.random.Generator) -> None:
    g = (rng.standard_normal((1200, 450)) * 4).astype(np.float32)  # 2 threads' work
    u = rng.standard_normal((1200, 450)).astype(np.float32)
    g64 = g.astype(np.float64)
    ref = g64 / (1 + np.exp(-g64)) * u
    y = ops.swiglu_gate(g, u, num_threads=2)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(ops.swiglu_gate(g, u, num_threads=1), y)


def test_ops_bad_input() -> None:
    q = np.zeros((4, 2, 8), np.float32)
    with pytest.raises(TypeError, match="q: expected dtype float32"):
        ops.attention(q.astype(np.float64), q, q)
    with pytest.raises(ValueError, match="k: expected a 3-D"):
        ops.attention(q, q.reshape(4, 16), q)
    with pytest.raises(ValueError, match="n_kv_heads: 2 does not divide n_heads=3"):
        ops.attention(np.zeros((4, 3, 8), np.float32), q, q)
    with pytest.raises(ValueError, match="out: overlaps q"):
        ops.attention(q, q, q, out=q.reshape(4, 16))
    with pytest.raises(ValueError, match="k: expected at least as many rows as q"):
        ops.attention(q, q[:3], q[:3])
    frozen = q.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="x: expected a writeable array"):
        ops.rope(frozen, np.arange(4))
    with pytest.raises(ValueError, match="positions: expected a C-contiguous \\(4,\\)"):
        ops.rope(q.copy(), np.arange(3))
    with pytest.raises(TypeError, match="positions: expected integers, got dtype float64"):
        ops.rope(q.copy(), np.arange(4) + 0.5)
    with pytest.raises(ValueError, match="positions: expected values >= 0"):
        ops.rope(q.copy(), np.array([0, 1, -2, 3]))
    with pytest.raises(ValueError, match="style: expected 'interleaved' or 'half'"):
        ops.rope(q.copy(), np.arange(4), style="neox")
    with pytest.raises(ValueError, match="head_dim: expected an even number"):
        ops.rope(np.zeros((4, 2, 7), np.float32), np.arange(4))
    with pytest.raises(ValueError, match="length: expected 1 <= length <= cache capacity 4"):
        ops.decode_attention(q[0].copy(), q, q, 5)
    with pytest.raises(ValueError, match="weight"):
        ops.rms_norm(np.zeros((3, 8), np.float32), np.ones(7, np.float32))
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        ops.rms_norm(np.zeros((3, 8), np.float32), np.ones(8, np.float32), eps=float("nan"))


# ---------------------------------------------------------------------------------------
# Tokenizer


@pytest.fixture(scope="module")
def tok() -> sm.Llama2cTokenizer:
    if DATA is None:
        pytest.skip("stories260K not found (../shared/data or SPARSEFORGE_DATA)")
    return sm.Llama2cTokenizer(DATA / "stories260K" / "tok512.bin", 512)


@needs_data
def test_tokenizer_matches_runc_encode(tok: sm.Llama2cTokenizer) -> None:
    assert tok.vocab_size == 512
    assert tok.max_token_length == 7
    assert tok.piece(1) == b"\n<s>\n"
    assert tok.piece(3) == b"<0x00>"
    texts = [
        "Once upon a time, there was a little girl named Lily.",
        "  double  spaces\tand\nnew lines ",
        "Café déjà vu — 🙂 ünïcödé",
        "a",
        *_paragraphs(12),
    ]
    for text in texts:
        ids = tok.encode(text)
        assert ids == runc_encode(tok, text), text[:40]
        assert tok.decode(ids) == text  # the dummy prefix is stripped after BOS
    assert tok.encode("") == [1]
    assert tok.encode("", bos=False) == []
    assert tok.encode("hi", bos=False, eos=True)[-1] == 2
    # byte fallback: the emoji's 4 UTF-8 bytes become ids byte + 3
    emoji = tok.encode("🙂", bos=False)
    assert emoji[-4:] == [b + 3 for b in "🙂".encode()]
    assert tok.decode(tok.encode("x", bos=False)) == " x"  # no BOS: the space stays


@needs_data
def test_tokenizer_bad_files(tmp_path: Path) -> None:
    assert DATA is not None
    raw = (DATA / "stories260K" / "tok512.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"cut\.bin.*(truncated|invalid)"):
        sm.Llama2cTokenizer(cut, 512)
    with pytest.raises(ValueError, match=r"tok512\.bin: holds 512 tokens, the model expects"):
        sm.Llama2cTokenizer(DATA / "stories260K" / "tok512.bin", 32000)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(struct.pack("<i", -5) + b"\0" * 40)
    with pytest.raises(ValueError, match=r"junk\.bin: not a llama2.c tokenizer"):
        sm.Llama2cTokenizer(junk)
    with pytest.raises(FileNotFoundError, match=r"nope\.bin"):
        sm.Llama2cTokenizer(tmp_path / "nope.bin")


# ---------------------------------------------------------------------------------------
# stories260K


@needs_data
def test_stories260k_config(model: sm.LlamaModel) -> None:
    c = model.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads) == (64, 172, 5, 8, 4)
    assert (c.vocab_size, c.max_seq_len, c.head_dim) == (512, 512, 8)
    assert c.tied_embeddings
    assert c.rope_style == "interleaved"
    assert model.tokenizer is not None
    assert model.tokenizer.name.endswith("tok512.bin")
    assert model.linear_names(4) == [
        f"model.layers.4.{s}"
        for s in (
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        )
    ]
    # SOURCE.md: wq's statistics over all 5 layers (std 0.2275, max +1.852)
    wq = np.stack([model.weight(f"model.layers.{i}.self_attn.q_proj.weight") for i in range(5)])
    assert abs(float(wq.std()) - 0.2275) < 5e-4
    assert abs(float(wq.max()) - 1.852) < 1e-3


@needs_data
def test_stories260k_greedy_sample_is_karpathys(model: sm.LlamaModel) -> None:
    """run.c with -t 0.0 and the default 256 steps: positions 0..255 each produce a token
    (256 new tokens), stopping early only at BOS."""
    assert model.tokenizer is not None
    prompt = model.tokenizer.encode("")
    assert prompt == [1]
    new = model.generate(prompt, 256, temperature=0.0)
    assert len(new) == 256
    assert 1 not in new
    text = model.tokenizer.decode(prompt + new)
    assert text.encode() == OFFICIAL_GREEDY_SAMPLE.encode()


@needs_data
def test_stories260k_tinystories_loss(model: sm.LlamaModel) -> None:
    """Mean NLL over the first 40 paragraph blocks, each encoded alone with BOS (SOURCE.md's
    independent pure-Python run.c port: 1.357 over 4,059 tokens; the reported validation
    loss 1.2968 counts whole stories, slightly easier)."""
    assert model.tokenizer is not None
    nll = np.concatenate(
        [model.nll(model.tokenizer.encode(p)[: model.config.max_seq_len]) for p in _paragraphs(40)]
    )
    assert nll.size == 4059
    assert abs(float(nll.mean()) - 1.357) < 2e-3
    assert float(nll.mean()) < np.log(512) / 4  # far from a uniform model's 6.24


@needs_data
def test_decode_loop_equals_full_forward(model: sm.LlamaModel) -> None:
    assert model.tokenizer is not None
    ids = model.tokenizer.encode(_paragraphs(3)[2])[:60]
    full = model.forward(ids)
    cache = sm.KVCache(model.config, len(ids))
    chunk = model.step(ids[:17], cache)  # a prompt chunk, then one token at a time
    rows = [chunk] + [model.step([t], cache) for t in ids[17:]]
    # BLAS sums a 1-row and a 60-row product in different orders: float32 rounding only
    np.testing.assert_allclose(np.concatenate(rows), full, rtol=0, atol=5e-5)
    assert cache.length == len(ids)


@needs_data
def test_forward_thread_invariant(model: sm.LlamaModel) -> None:
    ids = list(range(3, 300))
    model.num_threads = 1
    a = model.forward(ids)
    model.num_threads = 2
    b = model.forward(ids)
    model.num_threads = None
    np.testing.assert_array_equal(a, b)
    # every linear through sf.kernels.gemm too: thread-invariant and equal to BLAS's result
    assert DATA is not None
    own = sm.load_llama2c(
        DATA / "stories260K" / "stories260K.bin", num_threads=1, linear_backend="sparseforge"
    )
    c = own.forward(ids)
    own.num_threads = 2
    np.testing.assert_array_equal(own.forward(ids), c)
    np.testing.assert_allclose(c, a, rtol=0, atol=5e-5)


@needs_data
def test_hooks(model: sm.LlamaModel) -> None:
    ids = [1, 300, 301, 302, 20, 30]
    seen: list[tuple[str, tuple[int, ...]]] = []
    att: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    hooks = sm.Hooks(
        linear_input=lambda name, x: seen.append((name, x.shape)),
        attention=lambda i, q, k, v: att.append((i, q.shape, k.shape)),
    )
    base = model.forward(ids, hooks=hooks)
    c = model.config
    assert [n for n, _ in seen] == [n for i in range(c.n_layers) for n in model.linear_names(i)]
    assert seen[3][1] == (6, c.dim)
    assert seen[6][1] == (6, c.hidden_dim)
    assert att == [(i, (6, 8, 8), (6, 4, 8)) for i in range(c.n_layers)]
    # Replacing block 2's hidden activation by zeros == a zero down_proj in block 2.
    zeroed = model.forward(
        ids, hooks=sm.Hooks(mlp_hidden=lambda i, h: np.zeros_like(h) if i == 2 else None)
    )
    name = "model.layers.2.mlp.down_proj.weight"
    saved = model.weight(name)
    model.set_weight(name, np.zeros_like(saved))
    try:
        np.testing.assert_array_equal(model.forward(ids), zeroed)
    finally:
        model.set_weight(name, np.ascontiguousarray(saved))
    np.testing.assert_array_equal(model.forward(ids), base)
    with pytest.raises(ValueError, match="mlp_hidden: block 0's hook returned"):
        model.forward(ids, hooks=sm.Hooks(mlp_hidden=lambda i, h: h[:, :3]))


@needs_data
def test_compressed_weights_run_through_sparse_kernels(model: sm.LlamaModel) -> None:
    ids = list(range(40, 140))
    names = model.linear_names(1)
    saved = {n: model.weight(n) for n in names}
    try:
        for n in names:
            W = np.ascontiguousarray(saved[n])
            model.set_weight(n, sf.prune.magnitude(W, pattern="2:4").weight)
        dense = model.forward(ids)
        for n in names:
            model.set_weight(n, sf.format.NMTensor.from_dense(model.weight(n), n=2, m=4))
        sparse = model.forward(ids)
    finally:
        for n in names:
            model.set_weight(n, np.ascontiguousarray(saved[n]))
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=1e-4)


@needs_data
def test_matches_transformers_llama(model: sm.LlamaModel) -> None:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (pip install transformers)")
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
    )
    hf = LlamaForCausalLM(hf_config).eval()

    def to_half_rope(w: np.ndarray, heads: int) -> np.ndarray:
        # llama2.c's interleaved Q/K rows -> Hugging Face's rotate_half order, per head
        d = c.head_dim
        perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
        return w.reshape(heads, d, -1)[:, perm].reshape(w.shape)

    state: dict[str, Any] = {}
    for name in c.weight_shapes():
        w = np.asarray(model.weight(name), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            w = to_half_rope(w, c.n_heads)
        elif name.endswith("k_proj.weight"):
            w = to_half_rope(w, c.n_kv_heads)
        state[name] = torch.from_numpy(np.array(w))
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in m for m in missing), missing

    assert model.tokenizer is not None
    ids = model.tokenizer.encode(" ".join(_paragraphs(4)))[:200]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(model.forward(ids), ref, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Bad input


@needs_data
def test_bad_model_files(tmp_path: Path) -> None:
    assert DATA is not None
    src = DATA / "stories260K" / "stories260K.bin"
    raw = src.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"cut\.bin: truncated: the header .* 1056540-byte"):
        sm.load(cut)
    longer = tmp_path / "longer.bin"
    longer.write_bytes(raw + b"\0" * 8)
    with pytest.raises(ValueError, match=r"longer\.bin: 8 trailing bytes"):
        sm.load_llama2c(longer)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=r"garbage\.bin: (not a llama2.c|truncated)"):
        sm.load(garbage)
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(struct.pack("<ii", 0x616B3432, 1) + raw[8:])
    with pytest.raises(ValueError, match=r"v1\.bin: a llama2.c version-1/2 export"):
        sm.load(v1)
    nan = tmp_path / "nan.bin"
    nan.write_bytes(raw[:1000] + struct.pack("<f", float("nan")) + raw[1004:])
    with pytest.raises(ValueError, match=r"nan\.bin: non-finite weight"):
        sm.load(nan)
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a recognised model"):
        sm.load(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        sm.load(tmp_path / "missing.bin")
    # No tokenizer beside the copy: the model loads without one; an explicit wrong path fails.
    alone = tmp_path / "alone" / "stories260K.bin"
    alone.parent.mkdir()
    shutil.copy(src, alone)
    assert sm.load(alone).tokenizer is None
    with pytest.raises(FileNotFoundError, match=r"tok\.bin"):
        sm.load_llama2c(alone, tokenizer_path=tmp_path / "tok.bin")


@needs_data
def test_bad_tokens(model: sm.LlamaModel) -> None:
    with pytest.raises(ValueError, match="tokens: token id 512 at index 2 is outside"):
        model.forward([1, 2, 512])
    with pytest.raises(ValueError, match="tokens: token id -1"):
        model.forward([-1])
    with pytest.raises(ValueError, match="tokens: expected at least one token id"):
        model.forward([])
    with pytest.raises(TypeError, match="tokens: expected integer token ids"):
        model.forward([1.5, 2.0])
    with pytest.raises(ValueError, match="tokens: 513 tokens exceed the model's max_seq_len"):
        model.forward([1] * 513)
    with pytest.raises(ValueError, match="tokens: expected at least 2 tokens"):
        model.nll([1])
    with pytest.raises(ValueError, match="prompt: expected at least one token"):
        model.generate([], 5)
    with pytest.raises(ValueError, match="max_new_tokens: 1 prompt \\+ 600 new tokens exceed"):
        model.generate([1], 600)
    with pytest.raises(ValueError, match=r"value: .*q_proj\.weight has shape \(64, 64\)"):
        model.set_weight("model.layers.0.self_attn.q_proj.weight", np.zeros((64, 63), np.float32))
    with pytest.raises(KeyError, match="not a weight"):
        model.set_weight("model.layers.9.mlp.up_proj.weight", np.zeros((172, 64), np.float32))


def test_config_validation() -> None:
    base: dict[str, Any] = dict(
        dim=64, hidden_dim=172, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=32, max_seq_len=16
    )
    assert sm.LlamaConfig(**base).head_dim == 8
    assert sm.LlamaConfig(**{**base, "head_dim": 16}).q_dim == 128
    with pytest.raises(ValueError, match="n_kv_heads: 3 does not divide n_heads=8"):
        sm.LlamaConfig(**{**base, "n_kv_heads": 3})
    with pytest.raises(ValueError, match="rope_style: expected 'interleaved' or 'half'"):
        sm.LlamaConfig(**{**base, "rope_style": "neox"})
    with pytest.raises(ValueError, match=r"dim: expected an int in \[1, "):
        sm.LlamaConfig(**{**base, "dim": 0})
    with pytest.raises(ValueError, match="head_dim: dim=60 is not a multiple of n_heads=8"):
        sm.LlamaConfig(**{**base, "dim": 60})
    with pytest.raises(ValueError, match="norm_eps"):
        sm.LlamaConfig(**{**base, "norm_eps": -1.0})


def test_random_model_missing_weight_and_generation() -> None:
    c = sm.LlamaConfig(
        dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
        max_seq_len=64, rope_style="half", tied_embeddings=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    weights = {
        n: (rng.standard_normal(s) * (1.0 if len(s) == 1 else 0.2)).astype(np.float32)
        for n, s in c.weight_shapes().items()
    }
    m = sm.LlamaModel(c, weights, source="random")
    ids = [3, 14, 15, 9, 26, 5, 35]
    out = m.generate(ids, 10)
    # greedy generation == argmax of the full forward, token by token
    seq = list(ids)
    for _ in range(10):
        seq.append(int(np.argmax(m.forward(seq)[-1])))
    assert out == seq[len(ids) :]
    sampled = m.generate(ids, 10, temperature=1.0, seed=7)
    assert sampled == m.generate(ids, 10, temperature=1.0, seed=7)
    # float16 weights run through sf.kernels.gemm
    half = sm.LlamaModel(c, {n: w.astype(np.float16) for n, w in weights.items()})
    ref = sm.LlamaModel(c, {n: w.astype(np.float16).astype(np.float32) for n, w in weights.items()})
    np.testing.assert_allclose(half.forward(ids), ref.forward(ids), rtol=0, atol=1e-4)
    del weights["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"random: missing model\.layers\.1\.mlp\.up_proj\.weight"):
        sm.LlamaModel(c, weights, source="random")
