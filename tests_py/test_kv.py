"""sf.kv's cache and decode attention against float64 numpy: GQA, odd sizes, partially
filled pages, fp16/bf16 storage, RoPE modes, page-sparse attention, Quest selection,
memory that really falls, 1 vs 2 threads bitwise, and bad input."""

from __future__ import annotations

import threading

import ml_dtypes
import numpy as np
import pytest

import sparseforge as sf

kv = sf.kv


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def ref_attention(q: np.ndarray, K: np.ndarray, V: np.ndarray, scale: float) -> tuple:
    """q (G, D), K (L, D), V (L, Dv) -> out (G, Dv), probs (G, L), float64."""
    s = q.astype(np.float64) @ K.astype(np.float64).T * scale
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    return p @ V.astype(np.float64), p


def rope_ref(x: np.ndarray, pos: np.ndarray, style: str, theta: float = 10000.0) -> np.ndarray:
    x = x.astype(np.float64).copy()
    D = x.shape[1]
    f = theta ** (-2.0 * np.arange(D // 2) / D)
    ang = pos[:, None].astype(np.float64) * f[None]
    c, s = np.cos(ang), np.sin(ang)
    if style == "half":
        a, b = x[:, : D // 2].copy(), x[:, D // 2 :].copy()
        x[:, : D // 2], x[:, D // 2 :] = a * c - b * s, a * s + b * c
    else:
        a, b = x[:, 0::2].copy(), x[:, 1::2].copy()
        x[:, 0::2], x[:, 1::2] = a * c - b * s, a * s + b * c
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize(
    ("hkv", "G", "D", "S", "T"), [(2, 3, 37, 4, 23), (1, 4, 64, 16, 33), (3, 1, 8, 5, 1)]
)
def test_dense_attention_matches_float64(dtype, hkv, G, D, S, T):
    rng = np.random.default_rng(T * D)
    c = kv.PagedKVCache(1, hkv, D, page_size=S, dtype=dtype)
    k, v = _rand(rng, T, hkv, D).astype(dtype), _rand(rng, T, hkv, D).astype(dtype)
    c.append(0, k, v)
    q = _rand(rng, hkv * G, D)
    out, mass = c.attend(0, q, return_mass=True, group_reduce="sum")
    assert out.shape == (hkv * G, D)
    assert mass.shape == (hkv, T)
    for h in range(hkv):
        K = k[:, h].astype(np.float64)
        V = v[:, h].astype(np.float64)
        o, p = ref_attention(q[h * G : (h + 1) * G], K, V, 1 / np.sqrt(D))
        np.testing.assert_allclose(out[h * G : (h + 1) * G], o, rtol=1e-5, atol=2e-5)
        np.testing.assert_allclose(mass[h], p.sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduce", ["mean", "max", "sum"])
def test_group_reduce_and_accumulate(reduce):
    rng = np.random.default_rng(1)
    c = kv.PagedKVCache(1, 2, 16, page_size=8)
    c.append(0, _rand(rng, 21, 2, 16), _rand(rng, 21, 2, 16))
    q = _rand(rng, 8, 16)
    _, mass = c.attend(0, q, return_mass=True, group_reduce=reduce, accumulate_scores=True)
    for h in range(2):
        K, V = c.gather(0, h)
        _, p = ref_attention(q[h * 4 : h * 4 + 4], K, V, 0.25)
        want = {"mean": p.mean(0), "max": p.max(0), "sum": p.sum(0)}[reduce]
        np.testing.assert_allclose(mass[h], want, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(c.scores(0, h), mass[h])


def test_threads_bitwise_and_two_python_threads():
    rng = np.random.default_rng(2)
    c = kv.PagedKVCache(1, 4, 24, page_size=16)
    c.append(0, _rand(rng, 513, 4, 24), _rand(rng, 513, 4, 24))
    q = _rand(rng, 8, 24)
    o1, m1 = c.attend(0, q, return_mass=True, num_threads=1)
    o2, m2 = c.attend(0, q, return_mass=True, num_threads=2)
    assert o1.tobytes() == o2.tobytes()
    assert m1.tobytes() == m2.tobytes()
    results: list[np.ndarray] = []
    ts = [threading.Thread(target=lambda: results.append(c.attend(0, q))) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(r.tobytes() == o1.tobytes() for r in results)


def test_page_sparse_equals_attention_over_selected_pages():
    rng = np.random.default_rng(3)
    hkv, G, D, S, T = 2, 2, 20, 8, 61
    c = kv.PagedKVCache(1, hkv, D, page_size=S)
    k, v = _rand(rng, T, hkv, D), _rand(rng, T, hkv, D)
    c.append(0, k, v)
    q = _rand(rng, hkv * G, D)
    pages = np.array([[0, 3, 7, -1], [1, 2, 5, 7]], dtype=np.int32)
    out, mass = c.attend(0, q, pages=pages, return_mass=True)
    for h in range(hkv):
        sel = np.concatenate([np.arange(p * S, min(T, (p + 1) * S)) for p in pages[h] if p >= 0])
        o, p = ref_attention(q[h * G : (h + 1) * G], k[sel, h], v[sel, h], 1 / np.sqrt(D))
        np.testing.assert_allclose(out[h * G : (h + 1) * G], o, rtol=1e-5, atol=2e-5)
        want = np.zeros(T)
        want[sel] = p.sum(0)
        np.testing.assert_allclose(mass[h], want, atol=1e-6)


def test_quest_bounds_and_selection_against_bruteforce():
    rng = np.random.default_rng(4)
    hkv, G, D, S, T = 2, 4, 32, 16, 300
    c = kv.PagedKVCache(1, hkv, D, page_size=S)
    k = _rand(rng, T, hkv, D)
    c.append(0, k, k)
    q = _rand(rng, hkv * G, D)
    ub = kv.quest_page_scores(c, 0, q, group_reduce="sum")
    npg = -(-T // S)
    for h in range(hkv):
        b = c.page_bounds(0, h)
        for p in range(npg):
            keys = k[p * S : (p + 1) * S, h].astype(np.float64)
            np.testing.assert_array_equal(b[p, 0], keys.min(0).astype(np.float32))
            np.testing.assert_array_equal(b[p, 1], keys.max(0).astype(np.float32))
            qq = q[h * G : (h + 1) * G].astype(np.float64)
            exact = (qq @ keys.T).max(axis=1)  # per query head, the true max
            bound = np.maximum(qq * keys.max(0), qq * keys.min(0)).sum(1)
            assert np.all(bound >= exact - 1e-9)
            np.testing.assert_allclose(ub[h, p], bound.sum(), rtol=1e-5, atol=1e-4)
    sel = kv.quest_select(c, 0, q, 5)
    for h in range(hkv):
        order = np.argsort(-ub[h, : npg - 1], kind="stable")[:4]
        np.testing.assert_array_equal(sel[h], [*sorted(order), npg - 1])


def test_eviction_frees_pages_and_bytes_fall():
    rng = np.random.default_rng(5)
    c = kv.PagedKVCache(2, 2, 16, page_size=16)
    for layer in range(2):
        c.append(layer, _rand(rng, 256, 2, 16), _rand(rng, 256, 2, 16))
    full = c.bytes_in_use
    assert full == 2 * 2 * 16 * c.page_bytes
    assert c.page_bytes == 16 * 32 * 4
    for layer in range(2):
        for h in range(2):
            c.keep(layer, h, np.arange(200, 256))
    assert c.bytes_in_use == 2 * 2 * 4 * c.page_bytes
    assert c.peak_bytes == full
    assert c.reserved_bytes == full
    c.trim()
    assert c.reserved_bytes == c.bytes_in_use
    K, _ = c.gather(0, 1)
    assert K.shape == (56, 16)
    np.testing.assert_array_equal(c.positions(0, 1), np.arange(200, 256))


def test_evict_fill_mode_moves_last_slot():
    rng = np.random.default_rng(6)
    c = kv.PagedKVCache(1, 1, 4, page_size=4)
    k = _rand(rng, 10, 1, 4)
    c.append(0, k, k)
    c.evict(0, 0, [2], keep_order=False)
    np.testing.assert_array_equal(c.positions(0, 0), [0, 1, 9, 3, 4, 5, 6, 7, 8])
    K, _ = c.gather(0, 0)
    np.testing.assert_array_equal(K[2], k[9, 0])


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_apply_rope_matches_reference(style):
    rng = np.random.default_rng(7)
    x = _rand(rng, 9, 12)
    pos = np.array([0, 1, 5, 17, 100, 1000, 4095, 7, 3])
    np.testing.assert_allclose(
        kv.apply_rope(x, pos, rope_style=style, rope_theta=500000.0),
        rope_ref(x, pos, style, 500000.0),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rerotate_mode_attends_at_cache_positions(style):
    rng = np.random.default_rng(8)
    D, T = 16, 40
    raw_k, v = _rand(rng, T, 1, D), _rand(rng, T, 1, D)
    pos = np.arange(T) + 1000
    k = rope_ref(raw_k[:, 0], pos, style).astype(np.float32)[:, None]
    c = kv.PagedKVCache(1, 1, D, page_size=8, rope_mode="rerotate", rope_style=style)
    c.append(0, k, v, pos)
    keep = np.r_[0:4, 30:40]
    c.keep(0, 0, keep)
    qraw = _rand(rng, 2, D)
    q = rope_ref(qraw, np.array([1039, 1039]), style).astype(np.float32)
    out = c.attend(0, q)
    Kr = rope_ref(raw_k[keep, 0], np.arange(len(keep)), style)
    qr = rope_ref(qraw, np.array([len(keep) - 1] * 2), style)
    o, _ = ref_attention(qr, Kr, v[keep, 0], 1 / np.sqrt(D))
    np.testing.assert_allclose(out, o, rtol=1e-5, atol=1e-5)
    K, _ = c.gather(0, 0)
    np.testing.assert_allclose(K, Kr, atol=1e-5)


def test_window_attention_mass_matches_reference():
    rng = np.random.default_rng(9)
    T, H, hkv, D = 37, 4, 2, 8
    q, k = _rand(rng, T, H, D), _rand(rng, T, hkv, D)
    got = kv.window_attention_mass(q, k, 7, group_reduce="none")
    for j in range(H):
        want = np.zeros(T)
        for i in range(T - 7, T):
            _, p = ref_attention(
                q[i : i + 1, j], k[: i + 1, j // 2], k[: i + 1, j // 2], 1 / np.sqrt(D)
            )
            want[: i + 1] += p[0]
        np.testing.assert_allclose(got[j], want, atol=1e-5)


def test_bad_input_names_the_argument():
    c = kv.PagedKVCache(1, 2, 8, page_size=4)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="k: expected shape"):
        c.append(0, _rand(rng, 3, 2, 7), _rand(rng, 3, 2, 7))
    c.append(0, _rand(rng, 3, 2, 8), _rand(rng, 3, 2, 8))
    with pytest.raises(ValueError, match="positions: out of order"):
        c.append(0, _rand(rng, 2, 2, 8), _rand(rng, 2, 2, 8), [5, 4])
    with pytest.raises(ValueError, match="positions: out of order"):
        c.append(0, _rand(rng, 1, 2, 8), _rand(rng, 1, 2, 8), [2])
    with pytest.raises(ValueError, match="page_size"):
        kv.PagedKVCache(1, 2, 8, page_size=0)
    with pytest.raises(ValueError, match="q: expected"):
        c.attend(0, _rand(rng, 3, 8))
    with pytest.raises(ValueError, match="q: expected shape"):
        c.attend(0, _rand(rng, 4, 9))
    with pytest.raises(ValueError, match="slots"):
        c.evict(0, 0, [1, 1])
    with pytest.raises(ValueError, match="layer"):
        c.length(3, 0)
    with pytest.raises(ValueError, match="page_budget"):
        kv.quest_select(c, 0, _rand(rng, 4, 8), 0)
    with pytest.raises(ValueError, match="group_reduce"):
        c.attend(0, _rand(rng, 4, 8), group_reduce="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pages"):
        c.attend(0, _rand(rng, 4, 8), pages=np.array([[0], [5]]))
    with pytest.raises(ValueError, match="contains NaN"):
        c.attend(0, np.full((4, 8), np.nan, dtype=np.float32))
    r = kv.PagedKVCache(1, 1, 8, rope_mode="rerotate")
    r.append(0, _rand(rng, 3, 1, 8), _rand(rng, 3, 1, 8))
    with pytest.raises(ValueError, match="rope_mode='original'"):
        r.attend(0, _rand(rng, 1, 8), pages=np.array([[0]]))
    with pytest.raises(ValueError, match="head_dim"):
        kv.PagedKVCache(1, 1, 7, rope_mode="rerotate")


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_online_softmax_large_dynamic_range(direction):
    """Logits spanning hundreds of units across pages (the running max jumps late, or sits
    on the first page): the per-page rescaling must match float64."""
    rng = np.random.default_rng(12)
    T, D = 150, 32
    q = _rand(rng, 2, D)
    u = q[0] / np.linalg.norm(q[0])
    scale = direction * np.linspace(-40.0, 40.0, T).astype(np.float32)
    k = (_rand(rng, T, 1, D) + scale[:, None, None] * u[None, None, :]).astype(np.float32)
    v = _rand(rng, T, 1, D)
    c = kv.PagedKVCache(1, 1, D, page_size=8)
    c.append(0, k, v)
    out, mass = c.attend(0, q, return_mass=True, group_reduce="max")
    o, p = ref_attention(q, k[:, 0], v[:, 0], 1 / np.sqrt(D))
    np.testing.assert_allclose(out, o, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mass[0], p.max(0), rtol=1e-5, atol=1e-7)
