"""H2O's and TOVA's fused decode-time upkeep (one C++ call per layer per step) keeps exactly
the tokens of a numpy transcription of the policies' selection, step by step, with ties and
with GQA; plus the core functions behind them (evict_lowest_mean, evict_lowest_layer)."""

from __future__ import annotations

import numpy as np
import pytest

import sparseforge as sf
from sparseforge import _core

kv = sf.kv


def _tova_numpy_step(cache: kv.PagedKVCache, layer: int, q: np.ndarray, budget: int) -> np.ndarray:
    """TOVA's decode step with the selection in numpy (the schwartz-lab-NLP/TOVA rule: drop the
    argmin of the last query's attention averaged over all heads; newer token on ties)."""
    out, mass = cache.attend(layer, q, group_reduce="mean", return_mass=True)
    L = cache.length(layer, 0)
    if budget < L:
        score = mass[:, :L].astype(np.float64).mean(axis=0)
        pos = cache.positions(layer, 0)
        ties = np.flatnonzero(score == score.min())
        drop = ties[int(np.argmax(pos[ties]))]
        for h in range(cache.num_kv_heads):
            cache.evict(layer, h, [drop], keep_order=False)
    return np.asarray(out)


def _h2o_numpy_step(
    cache: kv.PagedKVCache, layer: int, q: np.ndarray, budget: int, recent: int
) -> np.ndarray:
    """H2O's decode step with the selection in numpy: scores += the step's group-summed mass;
    per kv head, the lowest-score slot outside the newest ``recent`` positions goes (newer on
    ties), by moving the last slot into the hole."""
    out = cache.attend(layer, q, group_reduce="sum", accumulate_scores=True)
    newest = cache.last_position(layer)
    for h in range(cache.num_kv_heads):
        L = cache.length(layer, h)
        if budget >= L:
            continue
        sc = cache.scores(layer, h)
        pos = cache.positions(layer, h)
        cand = np.flatnonzero(pos <= newest - recent) if recent > 0 else np.arange(L)
        order = np.lexsort((-pos[cand], sc[cand]))  # lowest score, then newer first
        cache.evict(layer, h, cand[order[: L - budget]], keep_order=False)
    return np.asarray(out)


def _stream(seed: int, n: int, hkv: int, g: int, d: int, distinct: int | None):
    """n tokens of (q, k, v); with ``distinct`` the keys (and queries) come from a few rows so
    many slots receive bitwise-equal attention (ties)."""
    rng = np.random.default_rng(seed)
    f = np.float32
    v = rng.standard_normal((n, hkv, d)).astype(f)
    if distinct is None:
        q = rng.standard_normal((n, hkv * g, d)).astype(f)
        k = rng.standard_normal((n, hkv, d)).astype(f)
    else:
        kpool = rng.standard_normal((distinct, 1, d)).astype(f)
        k = np.broadcast_to(kpool[rng.integers(0, distinct, n)], (n, hkv, d)).copy()
        q = np.broadcast_to(rng.standard_normal((1, 1, d)).astype(f), (n, hkv * g, d)).copy()
    return q, k, v


def _state(cache: kv.PagedKVCache, layer: int) -> list[np.ndarray]:
    return [cache.positions(layer, h) for h in range(cache.num_kv_heads)]


@pytest.mark.parametrize(
    ("hkv", "g", "distinct", "dtype"),
    [
        (2, 2, None, np.float32),  # GQA, random
        (4, 1, None, np.float16),  # MHA, fp16 storage
        (1, 4, None, np.float32),  # MQA
        (2, 3, 3, np.float32),  # GQA, three distinct keys: ties every step
        (3, 1, 1, np.float32),  # one key: every score ties, the newest goes
    ],
)
def test_tova_fused_matches_numpy_selection(hkv, g, distinct, dtype):
    d, budget, n_prompt, steps = 16, 12, 20, 60
    q, k, v = _stream(hkv * 10 + g, n_prompt + steps, hkv, g, d, distinct)
    pol = kv.TOVA(budget)
    ref_pol = kv.TOVA(budget)
    fused = kv.PagedKVCache(1, hkv, d, page_size=4, dtype=dtype)
    ref = kv.PagedKVCache(1, hkv, d, page_size=4, dtype=dtype)
    pol.prefill(fused, 0, q[:n_prompt], k[:n_prompt], v[:n_prompt])
    ref_pol.prefill(ref, 0, q[:n_prompt], k[:n_prompt], v[:n_prompt])
    ties_seen = 0
    for t in range(n_prompt, n_prompt + steps):
        out = pol.decode(fused, 0, q[t], k[t], v[t])
        ref.append(0, k[t][None], v[t][None])
        if distinct is not None:
            _, m = ref.attend(0, q[t], group_reduce="mean", return_mass=True)
            sc = m[:, : ref.length(0, 0)].astype(np.float64).mean(axis=0)
            ties_seen += int(np.count_nonzero(sc == sc.min()) > 1)
        out_ref = _tova_numpy_step(ref, 0, q[t], budget)
        np.testing.assert_array_equal(out, out_ref)
        for a, b in zip(_state(fused, 0), _state(ref, 0), strict=True):
            np.testing.assert_array_equal(a, b)  # same tokens in the same slots
        assert fused.length(0, 0) == budget
    if distinct is not None:
        assert ties_seen > steps // 4  # the tie rule decided many steps
    # same tokens in every kv head
    for h in range(1, hkv):
        np.testing.assert_array_equal(fused.positions(0, h), fused.positions(0, 0))


def test_tova_drop_is_the_float64_argmin():
    """Independent oracle: the evicted token has the lowest float64 softmax score averaged over
    every query head (recomputed from the gathered keys), among the tokens present."""
    hkv, g, d, budget = 2, 2, 16, 10
    q, k, v = _stream(5, 40, hkv, g, d, None)
    cache = kv.PagedKVCache(1, hkv, d, page_size=4)
    pol = kv.TOVA(budget)
    pol.prefill(cache, 0, q[:budget], k[:budget], v[:budget])
    for t in range(budget, 40):
        cache.append(0, k[t][None], v[t][None])
        before = cache.positions(0, 0)
        score = np.zeros(len(before))
        for h in range(hkv):
            K, _ = cache.gather(0, h)
            assert np.array_equal(cache.positions(0, h), before)
            for j in range(g):
                logits = K.astype(np.float64) @ q[t, h * g + j].astype(np.float64) / np.sqrt(d)
                p = np.exp(logits - logits.max())
                score += p / p.sum()
        score /= hkv * g
        out = kv._decode_upkeep(cache, 0, q[t], None, None, True, budget, 0, "mean")
        assert out.shape == (hkv * g, d)
        gone = np.setdiff1d(before, cache.positions(0, 0))
        assert gone.size == 1
        i = int(np.flatnonzero(before == gone[0])[0])
        assert score[i] <= score.min() * (1 + 1e-5)


def test_tova_prefill_selection_matches_lexsort():
    hkv, g, d, T, budget = 2, 2, 16, 30, 11
    q, k, v = _stream(9, T, hkv, g, d, 4)  # ties
    cache = kv.PagedKVCache(1, hkv, d, page_size=4)
    kv.TOVA(budget).prefill(cache, 0, q, k, v)
    mass = kv.window_attention_mass(q, k, 1, group_reduce="mean")
    score = mass.astype(np.float64).mean(axis=0)
    pos = np.arange(T)
    keep = np.sort(np.lexsort((-pos, score))[T - budget :])
    for h in range(hkv):
        np.testing.assert_array_equal(cache.positions(0, h), keep)  # order-preserving


@pytest.mark.parametrize(("hkv", "g", "distinct"), [(2, 2, None), (2, 2, 2), (4, 1, None)])
def test_h2o_fused_matches_numpy_selection(hkv, g, distinct):
    d, budget, steps = 16, 10, 50
    q, k, v = _stream(hkv + 31 * g, budget + steps, hkv, g, d, distinct)
    pol = kv.H2O(budget, recent_ratio=0.3)
    recent = pol.recent(budget)
    fused = kv.PagedKVCache(1, hkv, d, page_size=4)
    ref = kv.PagedKVCache(1, hkv, d, page_size=4)
    pol.prefill(fused, 0, q[:budget], k[:budget], v[:budget])
    kv.H2O(budget, recent_ratio=0.3).prefill(ref, 0, q[:budget], k[:budget], v[:budget])
    for t in range(budget, budget + steps):
        out = pol.decode(fused, 0, q[t], k[t], v[t])
        ref.append(0, k[t][None], v[t][None])
        out_ref = _h2o_numpy_step(ref, 0, q[t], budget, recent)
        np.testing.assert_array_equal(out, out_ref)
        for h in range(hkv):
            np.testing.assert_array_equal(fused.positions(0, h), ref.positions(0, h))
            np.testing.assert_array_equal(fused.scores(0, h), ref.scores(0, h))
            assert fused.length(0, h) == budget


def test_fused_steps_thread_independent():
    hkv, g, d, budget = 4, 2, 32, 40
    q, k, v = _stream(3, 120, hkv, g, d, None)
    runs = []
    for nt in (1, 2):
        caches = [kv.PagedKVCache(1, hkv, d, page_size=8) for _ in range(2)]
        pols = [kv.TOVA(budget), kv.H2O(budget)]
        outs = []
        for c, p in zip(caches, pols, strict=True):
            p.prefill(c, 0, q[:budget], k[:budget], v[:budget])
            for t in range(budget, 120):
                outs.append(p.decode(c, 0, q[t], k[t], v[t], num_threads=nt))
        runs.append((outs, [_state(c, 0) for c in caches]))
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(runs[0][1], runs[1][1], strict=True):
        for x, y in zip(sa, sb, strict=True):
            np.testing.assert_array_equal(x, y)


def test_evict_lowest_mean_exact_small_case():
    cache = kv.PagedKVCache(1, 2, 4, page_size=2)
    rng = np.random.default_rng(0)
    kk = rng.standard_normal((5, 2, 4)).astype(np.float32)
    cache.append(0, kk, kk, positions=[3, 5, 8, 9, 12])
    # exact binary fractions: means [0.375, 0.25, 0.25, 0.5, 0.25] -> slots 1, 2, 4 tie and
    # the newest of them (position 12) goes
    mass = np.array([[0.5, 0.25, 0.5, 0.5, 0.5], [0.25, 0.25, 0.0, 0.5, 0.0]], dtype=np.float32)
    expect = 12
    ev = cache._impl.evict_lowest_mean(0, mass, 1)
    assert list(ev) == [expect]
    for h in range(2):
        assert expect not in cache.positions(0, h)
        assert cache.length(0, h) == 4
    # count >= length empties the layer
    ev = cache._impl.evict_lowest_mean(0, np.zeros((2, 4), np.float32), 10)
    assert sorted(ev) == sorted(set([3, 5, 8, 9, 12]) - {expect})
    assert cache.length(0, 0) == 0
    assert cache.length(0, 1) == 0


def test_evict_lowest_mean_errors():
    cache = kv.PagedKVCache(1, 2, 4, page_size=2)
    kk = np.ones((3, 2, 4), np.float32)
    cache.append(0, kk, kk)
    with pytest.raises(ValueError, match="mass"):
        cache._impl.evict_lowest_mean(0, np.zeros((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="mass"):
        cache._impl.evict_lowest_mean(0, np.zeros((2, 2), np.float32), 1)
    with pytest.raises((TypeError, ValueError), match="mass"):
        cache._impl.evict_lowest_mean(0, np.zeros((2, 3), np.float64), 1)
    nan = np.full((2, 3), np.nan, np.float32)
    for count in (1, 2):
        with pytest.raises(ValueError, match="mass"):
            cache._impl.evict_lowest_mean(0, nan, count)
    assert cache.length(0, 0) == 3  # nothing evicted
    cache.evict(0, 1, [0])
    with pytest.raises(ValueError, match="layer"):
        cache._impl.evict_lowest_mean(0, np.zeros((2, 3), np.float32), 1)
    with pytest.raises(ValueError, match="layer"):
        cache._impl.evict_lowest_layer(3, 1, 0, 0)
    with pytest.raises(ValueError, match="q"):
        _core.kvcache.decode_upkeep(
            cache._impl, 0, np.zeros((3, 4), np.float32), True, 1, 0, "mean", 0.0, 1
        )


def test_evict_lowest_layer_matches_per_head_calls():
    rng = np.random.default_rng(4)
    kk = rng.standard_normal((20, 3, 8)).astype(np.float32)
    scores = rng.integers(0, 5, (3, 20)).astype(np.float32)  # many ties
    a = kv.PagedKVCache(2, 3, 8, page_size=4)
    b = kv.PagedKVCache(2, 3, 8, page_size=4)
    for c in (a, b):
        c.append(1, kk, kk)
        for h in range(3):
            c.set_scores(1, h, scores[h])
    assert a._impl.evict_lowest_layer(1, 13, 2, 3) == 3 * 7
    for h in range(3):
        b.evict_lowest(1, h, 7, protect_below=2, protect_recent=3)
        np.testing.assert_array_equal(a.positions(1, h), b.positions(1, h))
        assert a.length(1, h) == 13
        kept = a.positions(1, h)
        assert {0, 1, 17, 18, 19} <= set(kept.tolist())  # sinks and recent protected
    assert a._impl.evict_lowest_layer(1, 13, 0, 0) == 0
