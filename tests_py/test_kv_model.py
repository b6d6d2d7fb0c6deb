"""KV policies inside the model's decode loop: ``sf.kv.PolicyCache`` as a
``sparseforge.models.DecodeCache``.

Oracles: the contiguous ``KVCache`` and the full forward (FullCache must reproduce their
logits), float64 numpy attention over the tokens a policy's contract says it keeps
(StreamingLLM, SlidingWindow), and each policy's budget contract measured from the cache
after every step (lengths and bytes in use from the page pool).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sparseforge as sf
import sparseforge.models as sm
from realdata import stories260k_path

kv = sf.kv
_BIN = stories260k_path()


def _random_model(n_kv_heads: int = 2, max_seq_len: int = 96) -> sm.LlamaModel:
    c = sm.LlamaConfig(
        dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=50,
        max_seq_len=max_seq_len, rope_style="half", tied_embeddings=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    weights = {
        n: (rng.standard_normal(s) * (1.0 if len(s) == 1 else 0.3)).astype(np.float32)
        for n, s in c.weight_shapes().items()
    }
    return sm.LlamaModel(c, weights, source="random", linear_backend="sparseforge")


def _ids(n: int, vocab: int = 50, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n)


def _opts(name: str, budget: int) -> dict:
    if name in ("snapkv", "pyramidkv"):
        return {"window": 8}
    if name == "adakv":
        return {"scorer": kv.SnapKV(budget, window=8)}
    return {}


def _cache(model, name: str, budget: int | None, **kw) -> kv.PolicyCache:
    if name == "full":
        return kv.PolicyCache(model, "full", **kw)
    assert budget is not None
    return kv.PolicyCache(model, name, budget, **kw, **_opts(name, budget))


def _feed(model, ids, cache, prompt: int) -> list[np.ndarray]:
    """Prefill ``ids[:prompt]``, then one token per step; the logits of every step."""
    out = [model.step(ids[:prompt], cache)]
    for i in range(prompt, len(ids)):
        out.append(model.step(ids[i : i + 1], cache))
    return out


# ---------------------------------------------------------------------------------------
# FullCache == the contiguous cache == the full forward


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("prefill", ["compress", "decode"])
def test_full_cache_reproduces_kvcache_logits(n_kv_heads, prefill):
    m = _random_model(n_kv_heads)
    ids = _ids(40)
    ref = _feed(m, ids, sm.KVCache(m.config, 40), 12)
    got = _feed(m, ids, kv.PolicyCache(m, "full", prefill=prefill), 12)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    # and the full causal forward (an independent path: no cache at all)
    np.testing.assert_allclose(np.concatenate(got), m.forward(ids), rtol=1e-5, atol=1e-5)


def test_full_cache_later_chunk_runs_token_by_token_exactly():
    m = _random_model()
    ids = _ids(30)
    pc = kv.PolicyCache(m, "full")
    m.step(ids[:10], pc)
    chunk = m.step(ids[10:30], pc)  # a second multi-token chunk goes through decode
    np.testing.assert_allclose(chunk, m.forward(ids)[10:30], rtol=1e-5, atol=1e-5)
    assert pc.length == 30
    assert pc.lengths().min() == 30


@pytest.mark.skipif(_BIN is None, reason="stories260K not found (../shared/data)")
def test_full_cache_reproduces_kvcache_on_stories260k():
    m = sm.load_llama2c(_BIN, linear_backend="sparseforge")
    ids = m.tokenizer.encode("Once upon a time, there was a little girl named Lily. " * 6)[:90]
    ref = _feed(m, ids, sm.KVCache(m.config, len(ids)), 40)
    pc = kv.PolicyCache(m, "full", page_size=16)
    got = _feed(m, ids, pc, 40)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    # measured bytes: ceil(90 / 16) pages per (layer, kv head), K and V of 8 fp32 dims
    c = m.config
    assert pc.kv_bytes == c.n_layers * c.n_kv_heads * 6 * 16 * 2 * c.head_dim * 4
    assert pc.bytes_in_use == pc.kv_bytes + pc.paged.metadata_bytes
    # decode_nll through the loop == the model's own NLL of the same tokens
    nll = kv.decode_nll(m, ids, kv.PolicyCache(m, "full"), prefill=40)
    np.testing.assert_allclose(nll, m.nll(ids)[39:], rtol=0, atol=1e-4)


def test_generation_with_policy_caches():
    m = _random_model()
    prompt = list(_ids(10))
    want = m.generate(prompt, 12, stop_at_eos=False)

    def greedy(cache):
        logits = m.step(prompt, cache)[-1]
        out = []
        for _ in range(12):
            out.append(int(np.argmax(logits)))
            logits = m.step([out[-1]], cache)[-1]
        return out

    assert greedy(kv.PolicyCache(m, "full")) == want
    # a budget above the sequence length evicts nothing: the same tokens
    assert greedy(kv.PolicyCache(m, "streaming_llm", 64)) == want
    assert greedy(kv.PolicyCache(m, "h2o", 64)) == want
    # a tight budget still generates valid tokens and holds the budget
    pc = kv.PolicyCache(m, "tova", 6)
    toks = greedy(pc)
    assert all(0 <= t < m.config.vocab_size for t in toks)
    assert pc.lengths().max() == 6


# ---------------------------------------------------------------------------------------
# Contracts, measured from the cache


@pytest.mark.parametrize("name", sorted(kv.POLICIES))
def test_every_policy_respects_its_budget_in_the_loop(name):
    m = _random_model()
    c = m.config
    B, prompt, steps = 16, 40, 12
    ids = _ids(prompt + steps)
    pc = _cache(m, name, B)
    cls = kv.POLICIES[name]
    m.step(ids[:prompt], pc)
    for i in range(steps):
        m.step(ids[prompt + i : prompt + i + 1], pc)
        lens = pc.lengths()
        seen = prompt + i + 1
        if not cls.evicts:
            assert (lens == seen).all()
        elif cls.decode_evicts:
            assert (lens == min(B, seen)).all(), lens
        elif name == "adakv":  # per-head lengths, the layer total is Hkv * B (+ steps)
            assert (lens.sum(axis=1) == c.n_kv_heads * (B + i + 1)).all(), lens
        elif name == "pyramidkv":
            assert (lens == lens[:, :1]).all()
            assert lens.max() <= prompt
        else:  # score once at prefill, then grow one token per step
            assert (lens == B + i + 1).all(), lens
        # bytes are whole pages of the page table, nothing more
        pages = sum(
            pc.paged.num_pages(layer, h) for layer in range(c.n_layers) for h in range(c.n_kv_heads)
        )
        assert pc.kv_bytes == pages * pc.paged.page_bytes
        # the reported memory includes the metadata: 12 bytes a slot (position, score) and
        # Quest's bounds (2 * head_dim floats a page)
        meta = 12 * int(pc.lengths().sum()) + pages * 2 * c.head_dim * 4
        assert pc.bytes_in_use == pc.kv_bytes + meta
        assert pages == sum(math.ceil(n / pc.paged.page_size) for n in lens.reshape(-1))
    assert pc.length == prompt + steps


@pytest.mark.parametrize("name", [n for n, p in sorted(kv.POLICIES.items()) if p.evicts])
def test_bytes_in_use_fall_with_the_budget(name):
    m = _random_model()
    ids = _ids(64)
    measured = []
    for B in (48, 24, 12):
        pc = _cache(m, name, B, page_size=4)
        m.step(ids[:56], pc)
        for i in range(56, 64):
            m.step(ids[i : i + 1], pc)
        measured.append(pc.bytes_in_use)
    assert measured[0] > measured[1] > measured[2], measured


@pytest.mark.parametrize("prefill", ["compress", "decode"])
def test_streaming_llm_keeps_sinks_and_recent(prefill):
    m = _random_model()
    ids = _ids(50)
    pc = kv.PolicyCache(m, "streaming_llm", 12, sinks=4, prefill=prefill)
    _feed(m, ids, pc, 20)
    want = list(range(4)) + list(range(50 - 8, 50))
    for layer in range(m.config.n_layers):
        for h in range(m.config.n_kv_heads):
            assert sorted(pc.paged.positions(layer, h)) == want


def _ref_attention(q, K, V, scale):
    """float64: q (H, D), K/V (L, Hkv, D) -> (H * D)."""
    H, D = q.shape
    g = H // K.shape[1]
    out = np.empty((H, D))
    for j in range(H):
        s = K[:, j // g].astype(np.float64) @ q[j].astype(np.float64) * scale
        p = np.exp(s - s.max())
        out[j] = (p / p.sum()) @ V[:, j // g].astype(np.float64)
    return out.reshape(-1)


@pytest.mark.parametrize("name", ["streaming_llm", "sliding_window"])
def test_decode_attends_exactly_the_tokens_the_contract_keeps(name):
    """attend() driven like the model (post-RoPE q/k/v per block) against float64
    attention over the sinks and the newest tokens only."""
    m = _random_model()
    c = m.config
    B, sinks = 10, (4 if name == "streaming_llm" else 0)
    pc = kv.PolicyCache(m, name, B)
    rng = np.random.default_rng(3)
    T = 30
    q = rng.standard_normal((T, c.n_heads, c.head_dim)).astype(np.float32)
    k = rng.standard_normal((T, c.n_kv_heads, c.head_dim)).astype(np.float32)
    v = rng.standard_normal((T, c.n_kv_heads, c.head_dim)).astype(np.float32)
    scale = 1 / math.sqrt(c.head_dim)
    pc.attend(0, q[:12], k[:12], v[:12], scale, 0)
    pc.attend(1, q[:12], k[:12], v[:12], scale, 0)
    pc.advance(12)
    for t in range(12, T):
        for block in range(c.n_layers):
            out = pc.attend(block, q[t : t + 1], k[t : t + 1], v[t : t + 1], scale, 0)
            # the reference evicts after the forward: the step sees the B kept tokens + itself
            recent = range(max(0, t - (B - sinks)), t + 1)
            keep = sorted(set(range(min(sinks, t + 1))) | set(recent))
            assert len(keep) == B + 1
            ref = _ref_attention(q[t], k[keep], v[keep], scale)
            np.testing.assert_allclose(out[0], ref, rtol=0, atol=2e-5)
        pc.advance(1)


def test_rerotate_streaming_llm_in_the_loop():
    """StreamingLLM's position shift: with nothing evicted it is the full cache (RoPE is
    relative); with evictions it differs from the original-position variant."""
    m = _random_model()
    ids = _ids(40)
    full = _feed(m, ids, kv.PolicyCache(m, "full"), 10)
    shifted = _feed(m, ids, kv.PolicyCache(m, "streaming_llm", 64, rope_mode="rerotate"), 10)
    for a, b in zip(full, shifted, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    orig = _feed(m, ids, kv.PolicyCache(m, "streaming_llm", 12), 10)
    rot = _feed(m, ids, kv.PolicyCache(m, "streaming_llm", 12, rope_mode="rerotate"), 10)
    np.testing.assert_allclose(rot[0], orig[0], rtol=1e-4, atol=1e-4)  # the prefill: exact
    assert np.abs(rot[-1] - orig[-1]).max() > 1e-3


def test_reset_reruns_identically_and_frees():
    m = _random_model()
    ids = _ids(48)
    pc = kv.PolicyCache(m, "h2o", 12)
    a = kv.decode_nll(m, ids, pc, prefill=20)
    assert pc.bytes_in_use > 0
    pc.reset()
    assert pc.length == 0
    assert pc.bytes_in_use == 0
    b = kv.decode_nll(m, ids, pc, prefill=20)
    np.testing.assert_array_equal(a, b)


def test_quest_selects_pages_in_the_loop():
    m = _random_model(max_seq_len=128)
    ids = _ids(120)
    pol = kv.Quest(16, dense_layers=1)
    pc = kv.PolicyCache(m, pol, page_size=4)
    _feed(m, ids, pc, 100)
    # the last decode step of layer 1 attended 4 pages of 4 tokens, the newest included
    assert pol.last_pages is not None
    assert pol.last_pages.shape == (m.config.n_kv_heads, 4)
    assert (pol.last_pages[:, -1] == (120 - 1) // 4).all()
    assert (pc.lengths() == 120).all()  # nothing evicted
    # with every page selected, Quest is the full cache
    full = _feed(m, ids, kv.PolicyCache(m, "full"), 100)
    allp = _feed(m, ids, kv.PolicyCache(m, "quest", 128, page_size=4), 100)
    for a, b in zip(full, allp, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_argument():
    m = _random_model()
    c = m.config
    with pytest.raises(ValueError, match="policy: unknown"):
        kv.PolicyCache(m, "nope", 8)
    with pytest.raises(ValueError, match="budget: policy 'h2o' needs a budget"):
        kv.PolicyCache(m, "h2o")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="budget"):
            kv.PolicyCache(m, "h2o", bad)
    with pytest.raises(ValueError, match="budget"):
        kv.PolicyCache(m, "h2o", 0.0)
    with pytest.raises(ValueError, match="budget: expected 2 per-layer"):
        kv.PolicyCache(m, "snapkv", [8, 8, 8], window=4)
    with pytest.raises(ValueError, match="budget: a policy instance"):
        kv.PolicyCache(m, kv.H2O(8), 8)
    with pytest.raises(TypeError, match="policy"):
        kv.PolicyCache(m, 3, 8)
    with pytest.raises(ValueError, match="page_size"):
        kv.PolicyCache(m, "h2o", 8, page_size=0)
    with pytest.raises(ValueError, match="prefill"):
        kv.PolicyCache(m, "h2o", 8, prefill="eager")
    with pytest.raises(TypeError, match="config_or_model"):
        kv.PolicyCache(object(), "h2o", 8)
    # a budget larger than the prompt, for a policy that scores the prompt once
    pc = kv.PolicyCache(m, "snapkv", 40, window=4)
    with pytest.raises(ValueError, match="budget: 40 tokens is larger than the context"):
        m.step(_ids(20), pc)
    # a cache built for another model (head_dim / heads mismatch)
    other = _random_model(n_kv_heads=4)
    with pytest.raises(ValueError, match="cache: was built for"):
        other.step([1, 2, 3], kv.PolicyCache(m, "h2o", 8))
    # shapes of q / k / v named
    pc = kv.PolicyCache(m, "h2o", 8)
    q = np.zeros((1, c.n_heads, c.head_dim), np.float32)
    k = np.zeros((1, c.n_kv_heads, c.head_dim), np.float32)
    with pytest.raises(ValueError, match="k: expected shape"):
        pc.attend(0, q, k[:, :, :-1], k, 1.0, 0)
    with pytest.raises(ValueError, match="q: expected shape"):
        pc.attend(0, q[:, :-1], k, k, 1.0, 0)
    with pytest.raises(ValueError, match="layer"):
        pc.attend(5, q, k, k, 1.0, 0)
    # positions out of order: a block fed twice in one step
    pc.attend(0, q, k, k, 1.0, 0)
    with pytest.raises(ValueError, match="block: layer 0 holds positions up to 0"):
        pc.attend(0, q, k, k, 1.0, 0)
    # the failed calls evicted nothing
    assert pc.lengths()[0, 0] == 1
    assert pc.lengths()[1, 0] == 0
    used = kv.PolicyCache(m, "full")
    m.step([1, 2], used)
    with pytest.raises(ValueError, match="cache: expected an empty cache"):
        kv.decode_nll(m, _ids(5), used)
    with pytest.raises(ValueError, match="prefill"):
        kv.decode_nll(m, _ids(5), kv.PolicyCache(m, "full"), prefill=5)
