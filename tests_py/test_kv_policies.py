"""KV policies: contract tests over the whole registry (budget respected, nothing evicted
beyond the contract, sinks/recent kept, deterministic, bytes follow pages), and each policy
against a numpy transcription of its reference (kvpress SnapKV/PyramidKV/AdaKV, H2O's
real-drop cache, TOVA's cache, StreamingLLM's start+recent)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import sparseforge as sf

kv = sf.kv
HKV, G, D, S = 2, 2, 16, 8
H = HKV * G


def _data(seed: int, T: int, steps: int):
    rng = np.random.default_rng(seed)
    f = np.float32
    return (
        rng.standard_normal((T, H, D)).astype(f),
        rng.standard_normal((T, HKV, D)).astype(f),
        rng.standard_normal((T, HKV, D)).astype(f),
        rng.standard_normal((steps, H, D)).astype(f),
        rng.standard_normal((steps, HKV, D)).astype(f),
        rng.standard_normal((steps, HKV, D)).astype(f),
    )


def _run(policy: kv.KVPolicy, T=120, steps=12, B=40, layers=2, seed=0):
    q, k, v, dq, dk, dv = _data(seed, T, steps)
    cache = kv.PagedKVCache(layers, HKV, D, page_size=S)
    lens, outs = [], []
    for layer in range(layers):
        policy.prefill(cache, layer, q, k, v)
    lens.append([cache.lengths(layer).copy() for layer in range(layers)])
    for t in range(steps):
        for layer in range(layers):
            outs.append(policy.decode(cache, layer, dq[t], dk[t], dv[t]))
        lens.append([cache.lengths(layer).copy() for layer in range(layers)])
    return cache, lens, outs


def _make(name: str, B: int) -> kv.KVPolicy:
    opts = {"snapkv": {"window": 8}, "pyramidkv": {"window": 8}}.get(name, {})
    if name == "adakv":
        return kv.AdaKV(B, scorer=kv.SnapKV(B, window=8))
    return kv.make_policy(name, B, **opts)


@pytest.mark.parametrize("name", sorted(kv.POLICIES))
def test_contract(name):
    B, T, steps, layers = 40, 120, 12, 2
    policy = _make(name, B)
    cache, lens, outs = _run(policy, T, steps, B, layers)
    cls = kv.POLICIES[name]
    for step, per_layer in enumerate(lens):
        seen = T + step
        for layer, ln in enumerate(per_layer):
            if not cls.evicts:
                assert np.all(ln == seen)
                continue
            b = policy.layer_budget(cache, layer)
            if name == "adakv":  # a layer's total, shared across heads
                assert ln.sum() == HKV * b + HKV * step
                assert ln.min() >= int(b * 0.2)
            elif cls.decode_evicts:
                assert np.all(ln == min(b, seen)), (step, layer, ln, b)  # exactly: never beyond
            else:
                assert np.all(ln == min(b, T) + step)
    # Pages follow lengths; bytes are pages.
    pages = sum(
        math.ceil(cache.length(layer, h) / S) for layer in range(layers) for h in range(HKV)
    )
    assert cache.pages_in_use == pages
    assert cache.bytes_in_use == pages * cache.page_bytes
    # Deterministic: a second run gives the same tokens and outputs.
    cache2, _, outs2 = _run(_make(name, B), T, steps, B, layers)
    for layer in range(layers):
        for h in range(HKV):
            np.testing.assert_array_equal(cache.positions(layer, h), cache2.positions(layer, h))
    for a, b2 in zip(outs, outs2, strict=True):
        assert a.tobytes() == b2.tobytes()
    assert all(o.shape == (H, D) and np.all(np.isfinite(o)) for o in outs)


@pytest.mark.parametrize("name", sorted(kv.POLICIES))
def test_bytes_fall_with_budget(name):
    if not kv.POLICIES[name].evicts:
        pytest.skip("keeps every token by design")
    used = [_run(_make(name, b), T=120, steps=2)[0].bytes_in_use for b in (16, 40, 96)]
    assert used[0] < used[1] < used[2]


def test_streaming_llm_keeps_sinks_and_recent():
    cache, *_ = _run(kv.StreamingLLM(40, sinks=4), T=120, steps=12)
    seen = 132
    for h in range(HKV):
        np.testing.assert_array_equal(np.sort(cache.positions(0, h)), np.r_[0:4, seen - 36 : seen])


def test_sliding_window_keeps_newest():
    cache, *_ = _run(kv.SlidingWindow(40), T=120, steps=5)
    np.testing.assert_array_equal(np.sort(cache.positions(1, 0)), np.arange(85, 125))


def _softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def test_h2o_matches_real_drop_reference():
    """FMInference/H2O real-drop H2OKVCache_LayerWise: acc = prefill column sums, += each
    step's probabilities; keep last `recent` + top-`hh` of the rest."""
    B, T, steps = 30, 80, 25
    q, k, v, dq, dk, dv = _data(3, T, steps)
    policy = kv.H2O(B, recent_ratio=0.5)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    policy.prefill(cache, 0, q, k, v)
    recent, hh = 15, 15
    for h in range(HKV):
        # reference prefill
        acc = np.zeros(T)
        for j in range(h * G, (h + 1) * G):
            s = q[:, j].astype(np.float64) @ k[:, h].astype(np.float64).T / 4.0
            s[np.triu_indices(T, 1)] = -np.inf
            acc += _softmax(s).sum(0)
        cand = np.arange(T - recent)
        top = cand[np.argsort(-acc[cand], kind="stable")[:hh]]
        keep = np.sort(np.r_[top, np.arange(T - recent, T)])
        np.testing.assert_array_equal(np.sort(cache.positions(0, h)), keep)
    # decode: reference cache per head (positions, acc, K, V)
    ref = []
    for h in range(HKV):
        pos = np.sort(cache.positions(0, h))
        acc = np.zeros(T)
        for j in range(h * G, (h + 1) * G):
            s = q[:, j].astype(np.float64) @ k[:, h].astype(np.float64).T / 4.0
            s[np.triu_indices(T, 1)] = -np.inf
            acc += _softmax(s).sum(0)
        ref.append((list(pos), {int(p): acc[p] for p in pos}))
    allk = np.concatenate([k, dk]).astype(np.float64)
    allv = np.concatenate([v, dv]).astype(np.float64)
    for t in range(steps):
        out = policy.decode(cache, 0, dq[t], dk[t], dv[t])
        cur = T + t
        for h in range(HKV):
            pos, acc = ref[h]
            pos.append(cur)
            acc[cur] = 0.0
            P = np.array(pos)
            p = _softmax(dq[t, h * G : (h + 1) * G].astype(np.float64) @ allk[P, h].T / 4.0)
            np.testing.assert_allclose(
                out[h * G : (h + 1) * G], p @ allv[P, h], rtol=1e-4, atol=1e-5
            )
            for i, pp in enumerate(P):
                acc[int(pp)] += p[:, i].sum()
            if len(pos) > B:
                cand = [pp for pp in pos if pp <= cur - recent]
                victim = min(cand, key=lambda x: (acc[x], -x))
                pos.remove(victim)
            np.testing.assert_array_equal(np.sort(cache.positions(0, h)), np.sort(pos))


def test_tova_matches_reference():
    """schwartz-lab-NLP/TOVA: drop argmin of the last query's attention averaged over all
    heads, after each attention call; same tokens in every head."""
    B, T, steps = 24, 60, 15
    q, k, v, dq, dk, dv = _data(4, T, steps)
    policy = kv.TOVA(B)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    policy.prefill(cache, 0, q, k, v)
    allk = np.concatenate([k, dk]).astype(np.float64)
    sc = np.zeros(T)
    for j in range(H):
        sc += _softmax(q[T - 1, j].astype(np.float64) @ allk[:T, j // G].T / 4.0)
    keep = list(np.sort(np.argsort(-sc, kind="stable")[:B]))
    for h in range(HKV):
        np.testing.assert_array_equal(np.sort(cache.positions(0, h)), keep)
    for t in range(steps):
        policy.decode(cache, 0, dq[t], dk[t], dv[t])
        keep.append(T + t)
        P = np.array(keep)
        sc = np.zeros(len(P))
        for j in range(H):
            sc += _softmax(dq[t, j].astype(np.float64) @ allk[P, j // G].T / 4.0)
        keep.pop(int(np.lexsort((-P, sc))[0]))
        for h in range(HKV):
            np.testing.assert_array_equal(np.sort(cache.positions(0, h)), np.sort(keep))


def _snapkv_reference(q, k, w, kernel, pooling, n_kept):
    """kvpress SnapKVPress.score + ScorerPress top-k, transcribed to float64 numpy."""
    T = q.shape[0]
    scores = []
    for j in range(H):
        s = q[T - w :, j].astype(np.float64) @ k[:, j // G].astype(np.float64).T / math.sqrt(D)
        mask = np.triu(np.ones((w, T), dtype=bool), k=T - w + 1)
        s[mask] = -np.inf
        a = _softmax(s)[:, : T - w].mean(0)
        p = kernel // 2
        fill = 0.0 if pooling == "avg" else -np.inf
        pad = np.r_[np.full(p, fill), a, np.full(p, fill)]
        win = np.lib.stride_tricks.sliding_window_view(pad, kernel)
        scores.append(win.mean(1) if pooling == "avg" else win.max(1))
    s = np.array(scores).reshape(HKV, G, T - w).mean(1)
    s = np.concatenate([s, np.full((HKV, w), s.max() + 1)], axis=1)
    return [np.sort(np.argsort(-s[h], kind="stable")[:n_kept]) for h in range(HKV)], s


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_matches_kvpress(pooling):
    T, B, w = 100, 36, 8
    q, k, v, *_ = _data(5, T, 0)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    pol = kv.SnapKV(B, window=w, kernel_size=5, pooling=pooling)
    pol.prefill(cache, 0, q, k, v)
    want, s = _snapkv_reference(q, k, w, 5, pooling, B)
    np.testing.assert_allclose(pol.score(cache, 0, q, k, None), s, rtol=1e-4, atol=1e-7)
    for h in range(HKV):
        np.testing.assert_array_equal(cache.positions(0, h), want[h])


def test_pyramid_budgets_follow_kvpress_formula():
    b = kv.pyramid_budgets(32, 4096, 2048, window=64, beta=20)
    assert all(x >= y for x, y in itertools.pairwise(b))
    assert abs(np.mean(b) - 2048) <= 1
    # kvpress: min = (C - w)/beta = 102.4, max = 2 * 2048 - 102.4 = 3993.6
    assert b[0] == 3994
    assert b[-1] == 102
    # min < window: kvpress falls back to the uniform (SnapKV) budget
    assert kv.pyramid_budgets(32, 4096, 512, window=64) == [512] * 32
    # max >= T - w: clamped to T - w, min = 2 (C - w) - max
    b = kv.pyramid_budgets(3, 200, 150, window=8, beta=2)
    assert b == [192, 150, 108]


def test_pyramidkv_layers_keep_their_budget():
    T, B = 200, 64
    q, k, v, *_ = _data(6, T, 0)
    cache = kv.PagedKVCache(4, HKV, D, page_size=S)
    pol = kv.PyramidKV(B, window=8, beta=4)
    for layer in range(4):
        pol.prefill(cache, layer, q, k, v)
    assert [int(cache.lengths(layer)[0]) for layer in range(4)] == [112, 80, 48, 16]
    # each layer keeps SnapKV's top tokens for its own budget
    for layer, b in enumerate([112, 80, 48, 16]):
        want, _ = _snapkv_reference(q, k, 8, 5, "avg", b)
        for h in range(HKV):
            np.testing.assert_array_equal(cache.positions(layer, h), want[h])


def test_adakv_matches_kvpress_allocation():
    T, B, w = 120, 32, 8
    q, k, v, *_ = _data(7, T, 0)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    pol = kv.AdaKV(B, scorer=kv.SnapKV(B, window=w), alpha_safeguard=0.25)
    pol.prefill(cache, 0, q, k, v)
    _, s = _snapkv_reference(q, k, w, 5, "avg", B)
    n_safe = int(B * 0.25)
    for h in range(HKV):
        s[h, np.argsort(-s[h], kind="stable")[:n_safe]] = np.finfo(np.float64).max
    pruned = np.argsort(s.reshape(-1), kind="stable")[: HKV * (T - B)]
    for h in range(HKV):
        mine = pruned[(pruned // T) == h] % T
        np.testing.assert_array_equal(cache.positions(0, h), np.setdiff1d(np.arange(T), mine))
    lens = cache.lengths(0)
    assert lens.sum() == HKV * B
    assert lens.min() >= n_safe
    assert len(set(lens)) > 1


def test_ties_broken_by_position():
    # Identical keys: equal KeyNorm scores -> the oldest tokens are kept.
    T, B = 50, 10
    k = np.ones((T, HKV, D), dtype=np.float32)
    q = np.ones((T, H, D), dtype=np.float32)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    kv.KeyNorm(B).prefill(cache, 0, q, k, k)
    np.testing.assert_array_equal(cache.positions(0, 0), np.arange(B))
    # TOVA with uniform attention drops the newest of equal scores, keeping the oldest B.
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    kv.TOVA(B).prefill(cache, 0, q, k, k)
    np.testing.assert_array_equal(np.sort(cache.positions(0, 0)), np.arange(B))


def test_quest_keeps_everything_and_attends_selected_pages():
    T, B = 160, 32
    q, k, v, dq, dk, dv = _data(8, T, 1)
    cache = kv.PagedKVCache(3, HKV, D, page_size=S)
    pol = kv.Quest(B, dense_layers=2)
    for layer in range(3):
        pol.prefill(cache, layer, q, k, v)
    for layer in range(3):
        out = pol.decode(cache, layer, dq[0], dk[0], dv[0])
        if layer < 2:
            np.testing.assert_array_equal(out, cache.attend(layer, dq[0]))
            assert pol.last_pages is None
        else:
            assert pol.last_pages is not None
            assert pol.last_pages.shape == (HKV, B // S)
            np.testing.assert_array_equal(out, cache.attend(layer, dq[0], pages=pol.last_pages))
    assert np.all(cache.lengths(2) == T + 1)


def test_budget_validation():
    with pytest.raises(ValueError, match=r"budget\.tokens"):
        kv.Budget(tokens=0)
    with pytest.raises(ValueError, match=r"budget\.ratio"):
        kv.Budget(ratio=1.5)
    with pytest.raises(ValueError, match=r"budget\.tokens"):
        kv.H2O(-3)
    with pytest.raises(ValueError, match="exactly one"):
        kv.Budget(tokens=3, ratio=0.5)
    with pytest.raises(TypeError, match="budget"):
        kv.SnapKV("big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"budget.per_layer\[1\]"):
        kv.Budget(per_layer=(4, 0))
    assert kv.Budget(ratio=0.25).resolve(0, 100) == 25
    assert kv.Budget(per_layer=(8, 0.5)).resolve(1, 100) == 50
    q, k, v, *_ = _data(9, 30, 0)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    with pytest.raises(ValueError, match="budget: 64 tokens is larger than the context"):
        kv.KeyNorm(64).prefill(cache, 0, q, k, v)
    cache = kv.PagedKVCache(2, HKV, D, page_size=S)
    with pytest.raises(ValueError, match="per_layer: expected 2 entries"):
        kv.SlidingWindow([4, 4, 4]).prefill(cache, 0, q, k, v)
    with pytest.raises(ValueError, match="name: unknown KV policy"):
        kv.make_policy("nope", 3)


def test_streaming_llm_rerotate_is_the_position_shift_variant():
    """streaming-llm pos_shift: keys cached pre-RoPE, rotated to their rank in the cache, the
    query to the last rank -- checked step by step against float64."""
    T, B, steps, d = 40, 12, 6, 8
    rng = np.random.default_rng(11)
    raw_k = rng.standard_normal((T + steps, 1, d)).astype(np.float32)
    v = rng.standard_normal((T + steps, 1, d)).astype(np.float32)
    raw_q = rng.standard_normal((T + steps, 2, d)).astype(np.float32)
    pos = np.arange(T + steps)
    k = np.stack([kv.apply_rope(raw_k[:, 0], pos)], axis=1)
    q = np.stack([kv.apply_rope(raw_q[:, j], pos) for j in range(2)], axis=1)
    cache = kv.PagedKVCache(1, 1, d, page_size=4, rope_mode="rerotate")
    pol = kv.StreamingLLM(B, sinks=2)
    pol.prefill(cache, 0, q[:T], k[:T], v[:T])
    kept = [0, 1, *range(T - (B - 2), T)]
    np.testing.assert_array_equal(cache.positions(0, 0), kept)
    for t in range(T, T + steps):
        out = pol.decode(cache, 0, q[t], k[t], v[t])
        kept.append(t)
        ranks = np.arange(len(kept))
        K = kv.apply_rope(raw_k[kept, 0], ranks).astype(np.float64)
        qq = kv.apply_rope(raw_q[t], [len(kept) - 1] * 2).astype(np.float64)
        p = _softmax(qq @ K.T / np.sqrt(d))
        np.testing.assert_allclose(out, p @ v[kept, 0], rtol=1e-5, atol=1e-5)
        kept.pop(2)  # the oldest non-sink token leaves after the step
        np.testing.assert_array_equal(cache.positions(0, 0), kept)


def test_per_layer_curve_and_ratio_budgets():
    T = 100
    q, k, v, dq, dk, dv = _data(12, T, 3)
    cache = kv.PagedKVCache(3, HKV, D, page_size=S)
    pol = kv.H2O(kv.Budget(per_layer=(60, 0.3, 10)))
    for layer in range(3):
        pol.prefill(cache, layer, q, k, v)
    for t in range(3):
        for layer in range(3):
            pol.decode(cache, layer, dq[t], dk[t], dv[t])
    assert [int(cache.lengths(layer)[0]) for layer in range(3)] == [60, 30, 10]
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    kv.SnapKV(0.25, window=8).prefill(cache, 0, q, k, v)
    assert np.all(cache.lengths(0) == 25)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_policies_on_half_precision_caches(dtype):
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    T, B = 80, 24
    q, k, v, dq, dk, dv = _data(13, T, 4)
    ref = kv.PagedKVCache(1, HKV, D, page_size=S)
    half = kv.PagedKVCache(1, HKV, D, page_size=S, dtype=dt)
    p32, p16 = kv.H2O(B), kv.H2O(B)
    p32.prefill(ref, 0, q, k.astype(dt).astype(np.float32), v.astype(dt).astype(np.float32))
    p16.prefill(half, 0, q, k.astype(dt), v.astype(dt))
    for t in range(4):
        k1, v1 = dk[t].astype(dt), dv[t].astype(dt)
        o32 = p32.decode(ref, 0, dq[t], k1.astype(np.float32), v1.astype(np.float32))
        o16 = p16.decode(half, 0, dq[t], k1, v1)
        np.testing.assert_allclose(o16, o32, rtol=1e-5, atol=1e-5)
    for h in range(HKV):
        np.testing.assert_array_equal(np.sort(ref.positions(0, h)), np.sort(half.positions(0, h)))
    assert half.bytes_in_use * 2 == ref.bytes_in_use
