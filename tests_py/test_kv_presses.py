"""The kvpress-style presses (sparseforge.kv.presses) against float64 numpy transcriptions of
NVIDIA/kvpress 0.5.5's torch code (``presses/<name>_press.py``), written from the reference,
not from our implementation: kept tokens per kv head, scores where they are exposed,
rewritten keys (ThinK) and values (merging). kvpress-free; the end-to-end comparison with
kvpress itself is tests_py/test_kvpress_parity.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

import sparseforge as sf

kv = sf.kv
HKV, G, D, S = 2, 3, 16, 8
H = HKV * G
THETA = 10000.0


def _hf_rope(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """transformers' LlamaRotaryEmbedding + apply_rotary_pos_emb on (T, heads, D), float64."""
    inv = 1.0 / THETA ** (np.arange(0, D, 2) / D)
    f = pos[:, None] * inv[None]
    emb = np.concatenate([f, f], axis=-1)
    cos, sin = np.cos(emb)[:, None], np.sin(emb)[:, None]
    rot = np.concatenate([-x[..., D // 2 :], x[..., : D // 2]], axis=-1)
    return x * cos + rot * sin


def _data(seed: int, T: int):
    """Pre-RoPE queries (with a shared mean direction, like real queries), keys, values."""
    rng = np.random.default_rng(seed)
    qpre = rng.standard_normal((T, H, D)) + 2.0 * rng.standard_normal((1, H, D))
    kpre = rng.standard_normal((T, HKV, D)) * rng.uniform(0.5, 2.0, (T, 1, 1))
    v = rng.standard_normal((T, HKV, D)) * rng.uniform(0.5, 2.0, (T, 1, 1))
    pos = np.arange(T, dtype=np.float64)
    q = _hf_rope(qpre, pos).astype(np.float32)
    k = _hf_rope(kpre, pos).astype(np.float32)
    return qpre, q, k, v.astype(np.float32)


def _prefill(policy, q, k, v, layers=1, layer=0):
    cache = kv.PagedKVCache(layers, HKV, D, page_size=S, rope_theta=THETA)
    policy.prefill(cache, layer, q, k, v)
    return cache


def _top(scores: np.ndarray, n: int) -> list[np.ndarray]:
    """ScorerPress: top n per head (ties: the older token; none occur with these data)."""
    return [np.sort(np.lexsort((np.arange(s.size), -s))[:n]) for s in scores]


def _kept(cache, layer=0):
    return [np.sort(cache.positions(layer, h)) for h in range(HKV)]


def _assert_kept(cache, want, layer=0):
    for h in range(HKV):
        np.testing.assert_array_equal(np.sort(cache.positions(layer, h)), want[h])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Oracles (kvpress 0.5.5, transcribed)


def _expected_attention_ref(qpre, k, v, n_future, n_sink, use_cov=True, use_vnorm=True, eps=0.0):
    T = qpre.shape[0]
    qs = qpre[n_sink:].astype(np.float64).transpose(1, 0, 2)  # (H, n, D)
    mu = qs.mean(axis=1)
    cen = qs - mu[:, None]
    cov = np.einsum("hsi,hsj->hij", cen, cen) / (T - n_sink)
    inv = 1.0 / THETA ** (np.arange(0, D, 2) / D)
    f = np.arange(T, T + n_future)[:, None] * inv[None]
    emb = np.concatenate([f, f], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    P = np.zeros((D, D))
    P[D // 2 :, : D // 2] = np.eye(D // 2)
    P[: D // 2, D // 2 :] = -np.eye(D // 2)
    R = (cos[:, :, None] * np.eye(D) + sin[:, :, None] * P).mean(axis=0)
    mu = mu @ R.T
    cov = R @ cov @ R.T
    keys = np.repeat(k[n_sink:].astype(np.float64).transpose(1, 0, 2), G, axis=0)  # (H, n, D)
    sc = np.einsum("hd,hnd->hn", mu, keys) / math.sqrt(D)
    if use_cov:
        sc += np.einsum("hnd,hde,hne->hn", keys, cov, keys) / D / 2
    sc = _softmax(sc).reshape(HKV, G, -1).mean(axis=1)
    if use_vnorm:
        sc = (sc + eps) * np.linalg.norm(v[n_sink:].astype(np.float64), axis=-1).T
    return np.concatenate([np.full((HKV, n_sink), sc.max() + 1), sc], axis=1)


def _keydiff_ref(k):
    K = k.astype(np.float64).transpose(1, 0, 2)
    anchor = (K / np.maximum(np.linalg.norm(K, axis=-1, keepdims=True), 1e-12)).mean(1)
    cos = (K * anchor[:, None]).sum(-1) / (
        np.linalg.norm(K, axis=-1) * np.linalg.norm(anchor, axis=-1)[:, None]
    )
    return -cos


def _lagkv_ref(k, v, n_sink, lag):
    T = k.shape[0]
    end = n_sink + ((T - n_sink) // lag) * lag
    tail = lag + T - end

    def states(x):
        x = x[n_sink:end].astype(np.float64).transpose(1, 0, 2).reshape(HKV, -1, lag, D)
        ref, cur = x[:, 1:], x[:, :-1]
        mn, mx = ref.min(axis=2, keepdims=True), ref.max(axis=2, keepdims=True)
        return _softmax(((cur - mn) / (mx - mn)).std(axis=-1, ddof=1))

    sc = (states(k) + states(v)) / 2
    ranks = sc.argsort(-1).argsort(-1) / lag
    return np.concatenate([np.ones((HKV, n_sink)), ranks.reshape(HKV, -1), np.ones((HKV, tail))], 1)


def _cur_ref(k, v, sinks, w, kind):
    def local(x):
        n = x.shape[1]
        x = np.pad(x, ((0, 0), (0, (w - n % w) % w))).reshape(HKV, -1, w)
        return (x / x.sum(-1, keepdims=True)).reshape(HKV, -1)[:, :n]

    k2 = local((k.astype(np.float64) ** 2).sum(-1).T)
    v2 = local((v.astype(np.float64) ** 2).sum(-1).T)
    sc = {"key": k2, "value": v2, "kv_avg": (k2 + v2) / 2, "kv_product": k2 * v2}[kind]
    sc = sc / sc.sum(-1, keepdims=True)
    sc[:, :sinks] = 1.0
    return sc


def _n_kept(T, r):
    return max(1, int(T * (1 - r)))


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("use_cov", "use_vnorm"), [(True, True), (False, True), (True, False)])
def test_expected_attention_matches_kvpress(use_cov, use_vnorm):
    T, r = 96, 0.6
    qpre, q, k, v = _data(1, T)
    n = _n_kept(T, r)
    pol = kv.ExpectedAttention(
        n, n_future_positions=64, use_covariance=use_cov, use_vnorm=use_vnorm
    )
    want = _expected_attention_ref(qpre, k, v, 64, 4, use_cov, use_vnorm)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S, rope_theta=THETA)
    cache.append(0, k, v)
    got = pol.score(cache, 0, q, k, None)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)
    _assert_kept(_prefill(pol, q, k, v), _top(want, n))


def test_keydiff_matches_kvpress():
    T = 80
    _, q, k, v = _data(2, T)
    want = _keydiff_ref(k)
    cache = _prefill(kv.KeyDiff(30), q, k, v)
    _assert_kept(cache, _top(want, 30))


@pytest.mark.parametrize("cross", [False, True])
def test_lagkv_matches_kvpress(cross):
    T, lag = 100, 16  # sinks 4, partitions of 16: 6 full, 5 scored, tail 16 + 0
    _, q, k, v = _data(3, T)
    pol = kv.LagKV(60, lag_size=lag, cross_scoring=cross)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    cache.append(0, k, v)
    got = pol.score(cache, 0, q, k, None)
    if cross:
        T_ = k.shape[0]
        end = 4 + ((T_ - 4) // lag) * lag
        ref = _lagkv_ref(k, v, 4, lag)  # ranks; cross scores checked through the kept set
        assert got.shape == ref.shape
        assert np.all(got[:, :4] == 1)
        assert np.all(got[:, end - lag :] == 1)
    else:
        np.testing.assert_array_equal(got, _lagkv_ref(k, v, 4, lag))
    # 60 kept = 4 sinks + 20 tail + 36 = 7 rank groups of 5 partitions + 1: ties keep older
    _assert_kept(_prefill(pol, q, k, v), _top(got, 60))
    # short prompts: recency
    short = kv.LagKV(10, lag_size=64)
    _assert_kept(_prefill(short, q, k, v), [np.r_[0:4, T - 6 : T]] * HKV)


@pytest.mark.parametrize("kind", ["key", "value", "kv_avg", "kv_product"])
def test_cur_matches_kvpress(kind):
    T = 90  # not a multiple of the window: the last window is zero-padded
    _, q, k, v = _data(4, T)
    want = _cur_ref(k, v, 4, 16, kind)
    pol = kv.CUR(40, leverage_type=kind)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    cache.append(0, k, v)
    np.testing.assert_allclose(pol.score(cache, 0, q, k, None), want, rtol=1e-12)
    _assert_kept(_prefill(kv.CUR(40, leverage_type=kind), q, k, v), _top(want, 40))


@pytest.mark.parametrize(("T", "ratio"), [(100, 0.5), (107, 0.7), (12, 0.5)])
def test_chunkkv_matches_kvpress(T, ratio):
    _, q, k, v = _data(5, T)
    c = 20
    g = -np.linalg.norm(k.astype(np.float64), axis=-1).T  # KnormPress scores (Hkv, T)
    pol = kv.ChunkKV(1 - ratio, scorer=kv.KeyNorm(1 - ratio), chunk_length=c)
    cache = _prefill(pol, q, k, v)
    nf, rem = divmod(T, c)
    if nf == 0:  # kvpress: the scorer's own compress
        _assert_kept(cache, _top(g, _n_kept(T, ratio)))
        return
    s = g.sum(0)
    chunks = list(s[: nf * c].reshape(nf, c).mean(1)) + ([s[nf * c :].mean()] if rem else [])
    n_keep = max(1, int((nf + (rem > 0)) * (1 - ratio)))
    top = np.argsort(-np.array(chunks), kind="stable")[:n_keep]
    idx = np.sort(np.concatenate([np.arange(i * c, min(i * c + c, T)) for i in top]))
    _assert_kept(cache, [idx] * HKV)
    assert pol.layer_budget(cache, 0) == len(idx)


def test_chunkkv_token_budget_is_exact():
    T, c, B = 100, 20, 50
    _, q, k, v = _data(11, T)
    cache = _prefill(kv.ChunkKV(B, chunk_length=c), q, k, v)
    s = -np.linalg.norm(k.astype(np.float64), axis=-1).sum(axis=1)  # KeyNorm summed over heads
    order = np.argsort(-s.reshape(5, c).mean(1), kind="stable")
    third = order[2] * c + np.argsort(-s[order[2] * c : order[2] * c + c], kind="stable")[:10]
    want = np.sort(np.r_[order[0] * c : order[0] * c + c, order[1] * c : order[1] * c + c, third])
    _assert_kept(cache, [want] * HKV)


def test_qfilter_scores_and_calibration():
    T = 70
    _, q, k, v = _data(6, T)
    rng = np.random.default_rng(0)
    filt = rng.standard_normal((2, HKV, D))
    cache = _prefill(kv.QFilter(25, filters=filt), q, k, v, layers=2, layer=1)
    want = -np.einsum("thd,hd->ht", k.astype(np.float64), filt[1])  # kvpress score
    _assert_kept(cache, _top(want, 25), layer=1)
    # calibration: the dominant right singular vector of each group's queries, negated
    f = kv.qfilters_from_queries(q, HKV)
    for h in range(HKV):
        Q = q[:, h * G : (h + 1) * G].astype(np.float64).reshape(-1, D)
        V = np.linalg.eigh(Q.T @ Q)[1]
        u = V[:, -1] * np.sign((Q @ V[:, -1]).mean())
        np.testing.assert_allclose(f[h], -u, atol=1e-8)
        assert (Q @ f[h]).mean() < 0
    with pytest.raises(ValueError, match="filters"):
        kv.QFilter(4, filters=np.ones((2, 3)))


def _think_ref(q, keys, window, ratio):
    """ThinKPress.compress: channels to zero per kv head."""
    qn = (q[-window:].astype(np.float64) ** 2).mean(0).reshape(HKV, G, D).mean(1)
    kn = np.stack([(x.astype(np.float64) ** 2).mean(0) for x in keys])
    n = int(D * ratio)
    return [np.sort(np.argsort(qn[h] * kn[h])[:n]) for h in range(HKV)]


def test_think_zeroes_the_lowest_channels():
    T = 60
    _, q, k, v = _data(7, T)
    cache = _prefill(kv.ThinK(key_channel_ratio=0.5, window=8), q, k, v)
    zero = _think_ref(q, [k[:, h] for h in range(HKV)], 8, 0.5)
    for h in range(HKV):
        K, V = cache.gather(0, h)
        assert len(K) == T
        want = k[:, h].copy()
        want[:, zero[h]] = 0
        np.testing.assert_array_equal(K, want)
        np.testing.assert_array_equal(V, v[:, h])
    # decode keys keep every channel
    kv.ThinK(key_channel_ratio=0.5, window=8).decode(cache, 0, q[0], k[0] + 1, v[0])
    np.testing.assert_array_equal(cache.gather(0, 0)[0][-1], k[0, 0] + 1)
    with pytest.raises(ValueError, match="key_channel_ratio"):
        kv.ThinK(key_channel_ratio=1.0)


def _merge_ref(k, v, kept, thr, frac):
    """MergingPress.merge for one head (kvpress), float64."""
    T = len(k)
    ev = np.setdiff1d(np.arange(T), kept)
    kk = k[kept] / np.maximum(np.linalg.norm(k[kept], axis=1, keepdims=True), 1e-6)
    ek = k[ev] / np.maximum(np.linalg.norm(k[ev], axis=1, keepdims=True), 1e-6)
    sim = ek @ kk.T
    tgt, best = sim.argmax(1), sim.max(1)
    ok = best >= thr
    if frac < 1:
        ok &= best >= np.quantile(np.where(ok, best, -np.inf), 1 - frac)
    w = np.clip(best, 0, None) * ok
    en = np.linalg.norm(v[ev], axis=1)
    w = w * en / (en + np.linalg.norm(v[kept], axis=1)[tgt] + 1e-6)
    out = v.astype(np.float64).copy()
    for i, e in enumerate(ev):
        if w[i] > 0:
            out[kept[tgt[i]]] += w[i] * v[e]
    wsum = np.zeros(len(kept))
    np.add.at(wsum, tgt, w)
    out[kept] /= (1 + wsum)[:, None]
    return out


@pytest.mark.parametrize(("thr", "frac"), [(0.0, 1.0), (0.2, 0.5)])
def test_merging_matches_kvpress(thr, frac):
    T, n = 64, 24
    _, q, k, v = _data(8, T)
    pol = kv.Merging(scorer=kv.KeyNorm(n), similarity_threshold=thr, merge_fraction=frac)
    cache = _prefill(pol, q, k, v)
    kept = _top(-np.linalg.norm(k.astype(np.float64), axis=-1).T, n)
    _assert_kept(cache, kept)
    for h in range(HKV):
        want = _merge_ref(
            k[:, h].astype(np.float64), v[:, h].astype(np.float64), kept[h], thr, frac
        )
        K, V = cache.gather(0, h)
        np.testing.assert_array_equal(K, k[kept[h], h])
        np.testing.assert_allclose(V, want[kept[h]], rtol=1e-5, atol=1e-6)
        assert not np.allclose(V, v[kept[h], h])  # something merged


def test_composed_chains_presses_like_kvpress():
    T = 100
    _, q, k, v = _data(9, T)
    # KnormPress(0.5) then KeyDiffPress(0.5): KeyDiff scores the 50 kept keys of each head
    pol = kv.Composed([kv.KeyNorm(0.5), kv.KeyDiff(0.5)])
    cache = _prefill(pol, q, k, v)
    first = _top(-np.linalg.norm(k.astype(np.float64), axis=-1).T, 50)
    sub = np.stack([k[first[h], h] for h in range(HKV)], axis=1)
    second = _top(_keydiff_ref(sub), 25)
    _assert_kept(cache, [first[h][second[h]] for h in range(HKV)])
    assert pol.layer_budget(cache, 0) == 25
    # KeyNorm(0.5) then ThinK: channels scored on the kept keys only, zeroed on them
    pol = kv.Composed([kv.KeyNorm(0.5), kv.ThinK(key_channel_ratio=0.25, window=8)])
    cache = _prefill(pol, q, k, v)
    _assert_kept(cache, first)
    zero = _think_ref(q, [k[first[h], h] for h in range(HKV)], 8, 0.25)
    for h in range(HKV):
        want = k[first[h], h].copy()
        want[:, zero[h]] = 0
        np.testing.assert_array_equal(cache.gather(0, h)[0], want)
    with pytest.raises(TypeError, match="later stage"):
        kv.Composed([kv.KeyNorm(4), kv.SnapKV(4)])
    with pytest.raises(TypeError, match="cannot be composed"):
        kv.Composed([kv.AdaKV(4)])
    with pytest.raises(ValueError, match="no stage evicts"):
        kv.Composed([kv.ThinK()])


def test_presses_work_inside_adakv_and_the_model_loop():
    T = 80
    _, q, k, v = _data(10, T)
    cache = _prefill(kv.AdaKV(30, scorer=kv.ExpectedAttention(30, n_future_positions=32)), q, k, v)
    assert cache.lengths(0).sum() == HKV * 30
    import tinymodels

    model = tinymodels.random_model(1)
    ids = np.arange(40) % 80
    for pol in (
        kv.ExpectedAttention(16),
        kv.Composed([kv.KeyDiff(0.5), kv.ThinK()]),
        kv.Merging(16),
        kv.ChunkKV(0.5, chunk_length=8),
    ):
        cache = kv.PolicyCache(model, pol)
        model.step(ids[:32], cache)
        out = model.step(ids[32:], cache)
        assert np.all(np.isfinite(out))
        assert cache.lengths().max() < 40
    pol = kv.Merging(8)
    cache = _prefill(pol, q, k, v)
    with pytest.raises(ValueError, match="whole prompt"):
        pol.prefill(cache, 0, q, k, v)


def test_duo_attention_streaming_heads_keep_sinks_and_window():
    T = 90
    _, q, k, v = _data(12, T)
    scores = np.array([[0.9, 0.1], [0.3, 0.7]])
    pol = kv.DuoAttention(scores, head_compression_ratio=0.5, sink_size=4, recent_size=20)
    cache = kv.PagedKVCache(2, HKV, D, page_size=S)
    for layer in range(2):
        pol.prefill(cache, layer, q, k, v)
    # kvpress: n_pruned = round(4 * 0.5) = 2 lowest scores -> (0, 1) and (1, 0) stream
    want_stream = np.r_[0:4, T - 20 : T]
    for layer, h, streaming in ((0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False)):
        got = np.sort(cache.positions(layer, h))
        np.testing.assert_array_equal(got, want_stream if streaming else np.arange(T))
    free = kv.PagedKVCache(2, HKV, D, page_size=S)
    for layer in range(2):
        kv.FullCache().prefill(free, layer, q, k, v)
    assert cache.bytes_in_use < free.bytes_in_use  # evicted for real
    with pytest.raises(ValueError, match="head_scores"):
        kv.DuoAttention(np.ones(3))


def test_duo_attention_scores_match_kvpress_on_the_fly():
    import tinymodels

    model = tinymodels.random_model(2)
    c = model.config
    ids = [np.arange(30) % 80, (np.arange(25) * 7) % 80]
    got = kv.duo_attention_scores(model, ids, q_len=50)
    # oracle: kvpress duo_attention_on_the_fly on the same q/k (captured by hooks), HF RoPE
    want = np.zeros((c.n_layers, c.n_kv_heads))
    Gm = c.n_heads // c.n_kv_heads
    Dm = c.head_dim

    class Rec(kv.KVPolicy):
        evicts = False

        def __init__(self):
            super().__init__(None)
            self.qk = {}

        def _after_prefill(self, cache, layer, q, k, nt):
            self.qk[layer] = (q.astype(np.float64), k.astype(np.float64))

    for seq in ids:
        r = Rec()
        model.step(seq, kv.PolicyCache(model, r))
        rec = r.qk
        pos = np.arange(len(seq), dtype=np.float64)
        inv = 1.0 / c.rope_theta ** (np.arange(0, Dm, 2) / Dm)
        for layer in range(c.n_layers):
            q, k = rec[layer]
            # undo HF RoPE: x = x_rot * cos - rotate_half(x_rot) * sin
            f = pos[:, None] * inv[None]
            cos = np.cos(np.concatenate([f, f], -1))[:, None]
            sin = np.sin(np.concatenate([f, f], -1))[:, None]

            def rh(x):
                return np.concatenate([-x[..., Dm // 2 :], x[..., : Dm // 2]], -1)

            qm = (q * cos - rh(q) * sin).mean(0)
            km = (k * cos - rh(k) * sin).mean(0)
            p2 = np.arange(50, dtype=np.float64)
            f2 = p2[:, None] * inv[None]
            c2 = np.cos(np.concatenate([f2, f2], -1))[:, None]
            s2 = np.sin(np.concatenate([f2, f2], -1))[:, None]
            Q = qm[None] * c2 + rh(qm[None]) * s2  # (50, H, D)
            K = km[None] * c2 + rh(km[None]) * s2
            K = np.repeat(K, Gm, axis=1)
            a = np.einsum("hd,phd->hp", Q[-1], K) / Dm**0.5
            a = _softmax(a)
            s = np.cumsum(a, axis=1).mean(1).reshape(-1, Gm).mean(1)
            want[layer] += s / len(ids)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_observed_attention_matches_kvpress():
    T = 70
    _, q, k, v = _data(13, T)
    # kvpress: eager attention (H, T, T), summed over queries, / (T - j), group mean
    Q = q.astype(np.float64).transpose(1, 0, 2)
    K = np.repeat(k.astype(np.float64).transpose(1, 0, 2), G, axis=0)
    s = Q @ K.transpose(0, 2, 1) / math.sqrt(D)
    s[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    a = _softmax(s).sum(axis=1) / np.arange(T, 0, -1)
    want = a.reshape(HKV, G, T).mean(axis=1)
    pol = kv.ObservedAttention(30)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    cache.append(0, k, v)
    np.testing.assert_allclose(pol.score(cache, 0, q, k, None), want, rtol=1e-5)
    _assert_kept(_prefill(kv.ObservedAttention(30), q, k, v), _top(want, 30))
