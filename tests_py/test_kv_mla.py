"""MLA: the latent cache's absorbed decode attention against the non-absorbed float64
computation (dense, Quest page-sparse, after H2O eviction in latent space), and KV bytes per
token for MHA/GQA/MQA/MLA with real configurations."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf

kv = sf.kv
NH, DH, DV, DC, DR = 4, 16, 12, 32, 8


def _mla(seed: int, L: int):
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "w_uk": (rng.standard_normal((NH, DH, DC)) / np.sqrt(DC)).astype(f),
        "w_uv": (rng.standard_normal((NH, DV, DC)) / np.sqrt(DC)).astype(f),
        "c": rng.standard_normal((L, DC)).astype(f),
        "kr": rng.standard_normal((L, DR)).astype(f),
        "qn": rng.standard_normal((NH, DH)).astype(f),
        "qp": rng.standard_normal((NH, DR)).astype(f),
    }


def non_absorbed(m: dict, rows: np.ndarray) -> np.ndarray:
    """Per-head keys [W_UK c_t | k_rope_t], values W_UV c_t, float64 softmax attention."""
    c = m["c"][rows].astype(np.float64)
    kr = m["kr"][rows].astype(np.float64)
    out = np.zeros((NH, DV))
    for h in range(NH):
        k = np.concatenate([c @ m["w_uk"][h].T.astype(np.float64), kr], axis=1)
        v = c @ m["w_uv"][h].T.astype(np.float64)
        q = np.concatenate([m["qn"][h], m["qp"][h]]).astype(np.float64)
        s = k @ q / np.sqrt(DH + DR)
        p = np.exp(s - s.max())
        out[h] = (p / p.sum()) @ v
    return out


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_absorbed_equals_non_absorbed(dtype):
    L = 45
    m = _mla(0, L)
    cache = kv.LatentKVCache(1, DC, DR, page_size=8, dtype=dtype)
    cache.append_latent(0, m["c"].astype(dtype), m["kr"].astype(dtype))
    assert cache.page_bytes == 8 * (DC + DR) * np.dtype(dtype).itemsize  # no value pages
    out = kv.mla_decode_attention(cache, 0, m["qn"], m["qp"], m["w_uk"], m["w_uv"])
    ref = non_absorbed(
        {
            **m,
            "c": m["c"].astype(dtype).astype(np.float32),
            "kr": m["kr"].astype(dtype).astype(np.float32),
        },
        np.arange(L),
    )
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_quest_in_latent_space():
    L = 96
    m = _mla(1, L)
    cache = kv.LatentKVCache(1, DC, DR, page_size=8)
    cache.append_latent(0, m["c"], m["kr"])
    q = kv.mla_absorb_query(m["qn"], m["qp"], m["w_uk"])
    pages = kv.quest_select(cache, 0, q, 4)
    assert pages.shape == (1, 4)
    assert pages[0, -1] == 11
    out = kv.mla_decode_attention(cache, 0, m["qn"], m["qp"], m["w_uk"], m["w_uv"], pages=pages)
    rows = np.concatenate([np.arange(p * 8, p * 8 + 8) for p in pages[0]])
    np.testing.assert_allclose(out, non_absorbed(m, rows), rtol=1e-4, atol=1e-5)
    # The latent bound is an upper bound of every head's true score q_h . k_h,t.
    ub = kv.quest_page_scores(cache, 0, q, group_reduce="max")[0]
    true = np.array(
        [q.astype(np.float64) @ np.concatenate([m["c"][t], m["kr"][t]]) for t in range(L)]
    )
    assert np.all(ub + 1e-4 >= true.T.reshape(12, 8, NH).max(axis=(1, 2)))


def test_h2o_evicts_latent_rows_for_all_heads():
    T, steps, B = 64, 6, 24
    m = _mla(2, T + steps)
    cache = kv.LatentKVCache(1, DC, DR, page_size=8)
    pol = kv.H2O(B)
    rng = np.random.default_rng(3)
    qs = []
    for _ in range(T):
        qn = rng.standard_normal((NH, DH)).astype(np.float32)
        qs.append(
            kv.mla_absorb_query(qn, rng.standard_normal((NH, DR)).astype(np.float32), m["w_uk"])
        )
    rows = np.concatenate([m["c"], m["kr"]], axis=1)
    pol.prefill(cache, 0, np.stack(qs), rows[:T, None], None)
    assert cache.length(0, 0) == B
    q = kv.mla_absorb_query(m["qn"], m["qp"], m["w_uk"])
    for t in range(T, T + steps):
        attended = np.r_[cache.positions(0, 0), t]  # what this step attends, before eviction
        out_lat = pol.decode(cache, 0, q, rows[t][None], None, scale=1 / np.sqrt(DH + DR))
        assert cache.length(0, 0) == B
        np.testing.assert_allclose(
            kv.mla_output(out_lat, m["w_uv"]), non_absorbed(m, attended), rtol=1e-4, atol=1e-5
        )
    assert cache.bytes_in_use == 3 * cache.page_bytes  # 24 latent rows in 3 pages of 8


def test_bytes_per_token_real_configs():
    # Quest footnote: Llama-7B, 32k tokens, fp16 -> 16 GB (512 KiB per token).
    assert kv.bytes_per_token("llama-2-7b", "float16") == 512 * 1024
    assert kv.bytes_per_token("llama-2-7b", "float16") * 32768 == 16 * 2**30
    assert kv.bytes_per_token("llama-3-8b") == 128 * 1024  # GQA: 8 kv heads
    # DeepSeek-V2 report: 576 elements per layer vs 2 * 128 * 128 = 32,768 for MHA.
    assert kv.elements_per_token("deepseek-v2") == 576 * 60  # "34.6K"
    assert kv.elements_per_token("deepseek-v2-lite") == 576 * 27  # "15.6K"
    assert kv.elements_per_token("deepseek-v3") == 35136
    assert kv.bytes_per_token("deepseek-v3") == 70272  # 68.6 KiB in BF16
    mha = {"num_layers": 1, "num_heads": 128, "num_kv_heads": 128, "head_dim": 128}
    assert kv.elements_per_token(mha) == 32768
    assert kv.attention_kind(mha) == "MHA"
    assert kv.attention_kind("llama-3-8b") == "GQA"
    assert kv.attention_kind({**mha, "num_kv_heads": 1}) == "MQA"
    assert kv.elements_per_token({**mha, "num_kv_heads": 1}) == 2 * 128
    assert kv.attention_kind("deepseek-v3") == "MLA"
    hf = {
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_size": 4096,
    }
    assert kv.elements_per_token(hf) == 65536
    with pytest.raises(ValueError, match="config: unknown name"):
        kv.bytes_per_token("gpt-5")
    with pytest.raises(ValueError, match="dtype"):
        kv.bytes_per_token("llama-3-8b", "float64")


def test_latent_cache_bad_input():
    cache = kv.LatentKVCache(1, DC, DR)
    with pytest.raises(ValueError, match="c_kv: expected shape"):
        cache.append_latent(0, np.zeros((3, DC + 1), np.float32), np.zeros((3, DR), np.float32))
    with pytest.raises(ValueError, match="k_rope: expected shape"):
        cache.append_latent(0, np.zeros((3, DC), np.float32), np.zeros((2, DR), np.float32))
    with pytest.raises(TypeError, match="cache: expected a LatentKVCache"):
        kv.mla_decode_attention(kv.PagedKVCache(1, 1, 8), 0, *[np.zeros((1, 1))] * 4)  # type: ignore[arg-type]
