"""The KV policies in the core against their numpy reference implementations.

``tests_py/kv_oracle.py`` holds the Python policies as they were before the policies moved
into the core (verbatim). Each core policy must keep the same tokens (positions, slot order)
and give the same decode outputs bitwise, after the prefill and after every decode step, on
GQA data, per layer, for token and kept-fraction budgets, and in the model's decode loop
(``PolicyCache``: the core's one call per layer against the Python loop over the oracle).
Then the KV API around it: the explicit eviction choice, named budgets, forks, prefill-only
logits and bad input that leaves the cache untouched.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import kv_oracle
import sparseforge as sf
from tinymodels import random_model

kv = sf.kv
HKV, G, D, S = 2, 3, 16, 4
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


def _pair(name: str, budget):
    opts = {
        "snapkv": {"window": 6},
        "pyramidkv": {"window": 6},
        "streaming_llm": {"sinks": 3},
        "random": {"seed": 11},
        "quest": {"dense_layers": 1},
    }.get(name, {})
    if name == "adakv":
        return (
            kv.AdaKV(budget, scorer=kv.SnapKV(budget, window=6)),
            kv_oracle.AdaKV(budget, scorer=kv_oracle.SnapKV(budget, window=6)),
        )
    return kv.make_policy(name, budget, **opts), kv_oracle.POLICIES[name](budget, **opts)


def _state(cache: kv.PagedKVCache, layers: int):
    return [
        (cache.positions(layer, h), cache.scores(layer, h))
        for layer in range(layers)
        for h in range(HKV)
    ]


@pytest.mark.parametrize("budget", [24, 0.3], ids=["tokens", "keep"])
@pytest.mark.parametrize("name", sorted(kv_oracle.POLICIES))
def test_core_policy_equals_numpy_oracle(name, budget):
    T, steps, layers = 70, 14, 3
    q, k, v, dq, dk, dv = _data(hash(name) % 1000, T, steps)
    core, ref = _pair(name, budget)
    assert isinstance(core, kv.policies.base._CorePolicy)
    c1 = kv.PagedKVCache(layers, HKV, D, page_size=S)
    c2 = kv.PagedKVCache(layers, HKV, D, page_size=S)
    for layer in range(layers):
        core.prefill(c1, layer, q, k, v)
        ref.prefill(c2, layer, q, k, v)
    for (p1, _), (p2, _) in zip(_state(c1, layers), _state(c2, layers), strict=True):
        np.testing.assert_array_equal(p1, p2)  # same tokens, same slot order
    for t in range(steps):
        for layer in range(layers):
            o1 = core.decode(c1, layer, dq[t], dk[t], dv[t], scale=0.3)
            o2 = ref.decode(c2, layer, dq[t], dk[t], dv[t], scale=0.3)
            np.testing.assert_array_equal(o1, o2)  # bitwise
            if core.budget is not None:
                assert core.layer_budget(c1, layer) == ref.layer_budget(c2, layer)
        for (p1, s1), (p2, s2) in zip(_state(c1, layers), _state(c2, layers), strict=True):
            np.testing.assert_array_equal(p1, p2)
            if name == "h2o":
                np.testing.assert_array_equal(s1, s2)
    assert c1.bytes_in_use == c2.bytes_in_use
    if name == "quest":
        np.testing.assert_array_equal(core.last_pages, ref.last_pages)


@pytest.mark.parametrize("name", ["snapkv", "key_norm", "random"])
def test_core_scores_equal_numpy_oracle(name):
    T = 50
    q, k, v, *_ = _data(3, T, 0)
    core, ref = _pair(name, 20)
    c = kv.PagedKVCache(1, HKV, D, page_size=S)
    c.append(0, k, v)
    want = ref.score(c, 0, q, k, None)
    got = core.score(c, 0, q, k, None)
    if name == "random":
        np.testing.assert_array_equal(got, want)  # numpy's PCG64 stream, bit for bit
    else:
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def _tiny_model(seed=0, n_kv_heads=2):
    return random_model(
        seed,
        dim=48,
        n_layers=3,
        n_heads=6,
        n_kv_heads=n_kv_heads,
        vocab_size=97,
        max_seq_len=256,
    )


@pytest.mark.parametrize("name", sorted(kv_oracle.POLICIES))
def test_policy_cache_core_equals_python_loop(name):
    # Python forward (hooks given): the core policy cache against the Python loop over the
    # numpy oracle, bitwise; the runtime (no hooks: the whole step in one core call through
    # RuntimeSession) against it within the runtime's tolerance, with the same kept tokens
    m = _tiny_model()
    ids = np.random.default_rng(5).integers(0, 97, size=80)
    hooks = sf.models.Hooks()
    core, ref = _pair(name, 24)
    a = kv.PolicyCache(m, core)
    b = kv.PolicyCache(m, ref)
    rt = kv.PolicyCache(m, _pair(name, 24)[0])
    assert a._core is not None
    assert b._core is None
    la = m.step(ids[:60], a, hooks=hooks)
    np.testing.assert_array_equal(la, m.step(ids[:60], b, hooks=hooks))
    np.testing.assert_allclose(m.step(ids[:60], rt), la, rtol=1e-5, atol=2e-5)
    assert rt._session is not None  # it ran on the runtime
    for t in range(60, 80):
        la = m.step(ids[t : t + 1], a, hooks=hooks)
        np.testing.assert_array_equal(la, m.step(ids[t : t + 1], b, hooks=hooks))
        np.testing.assert_allclose(m.step(ids[t : t + 1], rt), la, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(a.lengths(), b.lengths())
    np.testing.assert_array_equal(a.lengths(), rt.lengths())
    for layer in range(m.config.n_layers):
        for h in range(m.config.n_kv_heads):
            np.testing.assert_array_equal(a.paged.positions(layer, h), rt.paged.positions(layer, h))
    assert a.bytes_in_use == b.bytes_in_use == rt.bytes_in_use
    assert rt.length == a.length == 80


def test_prefill_last_only_logits():
    m = _tiny_model()
    ids = np.arange(40) % 97
    for hooks in (None, sf.models.Hooks()):
        full = m.step(ids, kv.PolicyCache(m, "h2o", 16), hooks=hooks)
        last = m.step(ids, kv.PolicyCache(m, "h2o", 16), hooks=hooks, last_only=True)
        assert last.shape == (1, 97)
        np.testing.assert_allclose(last[0], full[-1], rtol=1e-6, atol=1e-6)


def test_budget_names_cannot_be_confused():
    assert kv.Budget(compression_ratio=0.75).resolve(0, 100) == 25
    assert kv.Budget(keep=0.25).resolve(0, 100) == 25
    assert kv.Budget(ratio=0.25).resolve(0, 100) == 25  # the old name of keep
    m = _tiny_model()
    ids = np.arange(64) % 97
    one = kv.PolicyCache(m, "snapkv", compression_ratio=0.75, window=8)
    two = kv.PolicyCache(m, "snapkv", keep=0.25, window=8)
    three = kv.PolicyCache(m, "snapkv", tokens=16, window=8)
    for c in (one, two, three):
        m.step(ids, c)
        assert (c.lengths() == 16).all()
    with pytest.raises(ValueError, match="compression_ratio"):
        kv.Budget(compression_ratio=1.0)
    with pytest.raises(ValueError, match="budget: give either"):
        kv.PolicyCache(m, "snapkv", 16, keep=0.5)
    with pytest.raises(ValueError, match="one of"):
        kv.make_policy("h2o", keep=0.5, tokens=3)


def test_eviction_choice_prefill_or_decode():
    T, steps, B = 60, 10, 20
    q, k, v, dq, dk, dv = _data(8, T, steps)
    for name in sorted(kv_oracle.POLICIES):
        if not kv.POLICIES[name].evicts:
            continue
        for evict in ("prefill", "decode"):
            opts = {"window": 6} if name in ("snapkv", "pyramidkv") else {}
            if name == "adakv":
                pol = kv.AdaKV(B, scorer=kv.SnapKV(B, window=6), evict=evict)
            else:
                pol = kv.make_policy(name, B, evict=evict, **opts)
            assert pol.decode_evicts == (evict == "decode")
            c = kv.PagedKVCache(1, HKV, D, page_size=S)
            pol.prefill(c, 0, q, k, v)
            after = c.lengths(0).copy()
            for t in range(steps):
                pol.decode(c, 0, dq[t], dk[t], dv[t])
                if evict == "decode":
                    assert c.lengths(0).max() <= max(B, after.max()), (name, evict)
            if evict == "prefill":
                np.testing.assert_array_equal(c.lengths(0), after + steps)
            elif name != "adakv":
                assert (c.lengths(0) == B).all(), (name, c.lengths(0))


def test_score_once_decode_eviction_drops_lowest_prompt_scores_first():
    T, B = 40, 16
    q, k, v, dq, dk, dv = _data(2, T, 30)
    pol = kv.KeyNorm(B, evict="decode")
    c = kv.PagedKVCache(1, HKV, D, page_size=S)
    pol.prefill(c, 0, q, k, v)
    kept = [set(c.positions(0, h)) for h in range(HKV)]
    norms = np.linalg.norm(k.astype(np.float64), axis=2)  # (T, Hkv)
    pol.decode(c, 0, dq[0], dk[0], dv[0])
    for h in range(HKV):
        gone = kept[h] - set(c.positions(0, h))
        assert len(gone) == 1
        # KeyNorm keeps low norms: the evicted prompt token has the largest norm kept
        (g,) = gone
        assert norms[g, h] == max(norms[p, h] for p in kept[h])
    for t in range(1, 30):
        pol.decode(c, 0, dq[t], dk[t], dv[t])
    # after 30 steps every prompt token is gone; the newest B generated tokens remain
    for h in range(HKV):
        np.testing.assert_array_equal(np.sort(c.positions(0, h)), np.arange(T + 30 - B, T + 30))


def test_fork_answers_several_questions_from_one_prefill():
    m = _tiny_model(1)
    rng = np.random.default_rng(3)
    ctx, qa, qb = rng.integers(0, 97, 70), rng.integers(0, 97, 6), rng.integers(0, 97, 6)
    base = kv.PolicyCache(m, "snapkv", 24, window=8)
    m.step(ctx, base)
    fa, fb = base.fork(), base.fork()
    la = m.step(qa, fa)
    lb = m.step(qb, fb)
    # each equals a fresh prefill + the question
    for q, got in ((qa, la), (qb, lb)):
        fresh = kv.PolicyCache(m, "snapkv", 24, window=8)
        m.step(ctx, fresh)
        np.testing.assert_array_equal(m.step(q, fresh), got)
    # the base is untouched by its forks and holds its own pages
    assert base.length == 70
    assert fa.length == 76
    assert (base.lengths() == 24).all()
    assert base.paged._impl is not fa.paged._impl
    # generation continues from a fork (a non-empty cache)
    out = m.generate(qa, max_new_tokens=5, cache=base.fork())
    assert len(out) == 5
    fresh = kv.PolicyCache(m, "snapkv", 24, window=8)
    m.step(ctx, fresh)
    assert m.generate(qa, max_new_tokens=5, cache=fresh) == out


def test_bad_input_leaves_the_cache_untouched():
    T = 30
    q, k, v, dq, dk, dv = _data(4, T, 2)
    c = kv.PagedKVCache(2, HKV, D, page_size=S)
    kv.H2O(8).prefill(c, 0, q, k, v)
    before = _state(c, 2), c.bytes_in_use
    for pol, what in (
        (kv.KeyNorm(64), "budget: 64 tokens is larger than the context"),
        (kv.SnapKV(8, window=12), "smaller than the window"),
        (kv.StreamingLLM(4, sinks=4), "no recent window"),
    ):
        with pytest.raises(ValueError, match=what):
            pol.prefill(c, 1, q, k, v)
        assert c.length(1, 0) == 0
    with pytest.raises(ValueError, match="scores a whole prompt"):
        kv.SnapKV(8, window=4).prefill(c, 0, q, k, v)
    with pytest.raises(ValueError, match="positions"):
        kv.H2O(8).decode(c, 0, dq[0], dk[0], dv[0], position=3)
    after = _state(c, 2), c.bytes_in_use
    for (p1, s1), (p2, s2) in zip(before[0], after[0], strict=True):
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_array_equal(s1, s2)
    assert before[1] == after[1]


def test_policy_cache_past_capacity_and_wrong_model():
    m = _tiny_model()
    pc = kv.PolicyCache(m, "h2o", 16)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.step(np.zeros(300, dtype=np.int64), pc)
    assert pc.length == 0
    assert pc.kv_bytes == 0
    other = _tiny_model(n_kv_heads=3)
    with pytest.raises(ValueError, match="cache"):
        other.step([1, 2], pc)


def test_shared_policy_cache_is_serialised_across_threads():
    # two threads decoding into one shared policy + cache: every call runs whole under the
    # objects' locks (ObjectLock), so no step is lost or half-applied
    m = _tiny_model()
    c = m.config
    pc = kv.PolicyCache(m, "h2o", 16)
    m.step(np.arange(30) % 97, pc)
    errors: list[BaseException] = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(10):
            q = rng.standard_normal((c.n_heads, c.head_dim)).astype(np.float32)
            kk = rng.standard_normal((c.n_kv_heads, c.head_dim)).astype(np.float32)
            try:
                pc.policy.decode(pc.paged, 0, q, kk, kk)
            except BaseException as e:
                errors.append(e)

    ts = [threading.Thread(target=work, args=(s,)) for s in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert (pc.paged.lengths(0) == 16).all()
    assert pc.paged.last_position(0) == 29 + 20


def test_pyramid_fallback_rule_as_documented():
    # kvpress defaults (window 64, beta 20): the pyramid applies at B >= 1280, or when the
    # clamp applies and B >= T / 2 (docs/kvcache.md); otherwise every layer keeps B
    cases = {(896, 512): (832, 192), (896, 448): (832, 64), (896, 447): (447, 447)}
    cases |= {(896, 256): (256, 256), (4096, 1280): (2496, 64), (4096, 1279): (1279, 1279)}
    for (T, b), (first, last) in cases.items():
        got = kv.pyramid_budgets(30, T, b)
        assert (got[0], got[-1]) == (first, last), (T, b, got)
        assert got == sf._core.kvcache.pyramid_budgets(30, T, b, 64, 20.0)


def test_kvpress_rules_tova_keep_last_and_pyramid_float_budget():
    T = 60
    q, k, v, *_ = _data(6, T, 0)
    # TOVA(keep_last=True): the prompt's last token survives (kvpress pins it)
    for keep_last in (False, True):
        c = kv.PagedKVCache(1, HKV, D, page_size=S)
        pol = kv.TOVA(4, keep_last=keep_last)
        pol.prefill(c, 0, q, k, v)
        if keep_last:
            assert T - 1 in c.positions(0, 0)
    # PyramidKV with compression_ratio: kvpress's float T * (1 - r) (15.999... here),
    # rounded in the fallback (16), where a token count would floor it (15)
    r = 0.9
    assert kv.pyramid_budgets(2, 160, 160 * (1 - r), window=8) == [16, 16]
    c = kv.PagedKVCache(2, HKV, D, page_size=S)
    q, k, v, *_ = _data(7, 160, 0)
    pol = kv.PyramidKV(kv.Budget(compression_ratio=r), window=8)
    for layer in range(2):
        pol.prefill(c, layer, q, k, v)
        assert (c.lengths(layer) == 16).all()
    # SnapKV's window scores are the prefix maximum + 1 (kvpress 0.5.5)
    s = kv.SnapKV(20, window=8).score(c, 0, q, k, None)
    assert (s[:, -8:] == s[:, :-8].max() + 1).all()
