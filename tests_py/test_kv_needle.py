"""The synthetic late-needle test (Quest paper Table 1 analogue) and the offline metrics.

A context whose keys drift slowly in topic (AR(1) in time, queries follow the current
topic) hides a 16-token needle keyed to a direction no query uses until the final one.
History-based policies (StreamingLLM, H2O, TOVA) evict it long before it is asked for;
Quest keeps everything and its page bounds find the needle pages for the final query."""

from __future__ import annotations

import numpy as np
import pytest

import sparseforge as sf

kv = sf.kv
HKV, G, D, S = 2, 2, 64, 16
H = HKV * G
T, STEPS, BUDGET = 2048, 96, 256
NEEDLE = np.arange(1000, 1016)


def _haystack(seed: int):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(D)
    u /= np.linalg.norm(u)
    n = T + STEPS + 1
    z = np.zeros((n, D))
    z[0] = rng.standard_normal(D)
    rho = 0.99
    for t in range(1, n):
        z[t] = rho * z[t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(D)

    def off_u(x: np.ndarray) -> np.ndarray:
        return x - (x @ u)[..., None] * u

    k = off_u(1.5 * z[:, None, :] + 0.5 * rng.standard_normal((n, HKV, D)))
    v = rng.standard_normal((n, HKV, D))
    q = off_u(1.5 * z[:, None, :] + 0.5 * rng.standard_normal((n, H, D)))
    k[NEEDLE] += 6.0 * u  # the needle: keys along u
    q[-1] = 12.0 * u + 0.1 * rng.standard_normal((H, D))  # the final query asks for it
    f = np.float32
    return q.astype(f), k.astype(f), v.astype(f)


def _needle_run(name: str, seed: int = 0):
    q, k, v = _haystack(seed)
    opts = {"streaming_llm": {"sinks": 4}, "quest": {"dense_layers": 0}}.get(name, {})
    pol = kv.make_policy(name, BUDGET, **opts)
    cache = kv.PagedKVCache(1, HKV, D, page_size=S)
    pol.prefill(cache, 0, q[:T], k[:T], v[:T])
    for t in range(T, T + STEPS):
        pol.decode(cache, 0, q[t], k[t], v[t])
    # The final query: which needle tokens can it still attend?
    out = pol.decode(cache, 0, q[-1], k[-1], v[-1])
    L = T + STEPS + 1
    kept = kv.kept_mask(cache, 0, L)
    if name == "quest":
        assert isinstance(pol, kv.Quest)
        assert pol.last_pages is not None
        pages = pol.last_pages
        kept = np.zeros((HKV, L), dtype=bool)
        for h in range(HKV):
            for p in pages[h][pages[h] >= 0]:
                kept[h, p * S : (p + 1) * S] = True
    recall = float(kept[:, NEEDLE].mean())
    K = np.transpose(k[:L], (1, 0, 2))
    V = np.transpose(v[:L], (1, 0, 2))
    metrics = kv.attention_metrics(q[-1], K, V, kept)
    full = kv.FullCache()
    fc = kv.PagedKVCache(1, HKV, D, page_size=S)
    full.prefill(fc, 0, q[:T], k[:T], v[:T])
    for t in range(T, T + STEPS):
        fc.append(0, k[t : t + 1], v[t : t + 1])
    ref = full.decode(fc, 0, q[-1], k[-1], v[-1])
    err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
    return recall, metrics, err, cache


def test_quest_finds_the_late_needle_history_policies_lose_it():
    results = {name: _needle_run(name) for name in ("streaming_llm", "h2o", "tova", "quest")}
    recall = {n: r[0] for n, r in results.items()}
    # Quest paper Table 1 (10k passkey): StreamingLLM 1-5 %, H2O 0-3 %, TOVA 0-8 %, Quest 65-100 %.
    assert recall["quest"] == 1.0, recall
    assert recall["streaming_llm"] == 0.0, recall
    assert recall["h2o"] <= 0.125, recall
    assert recall["tova"] <= 0.125, recall
    # Quest's answer is the full-attention answer; the others' are not.
    assert results["quest"][2] < 0.05
    assert results["quest"][1]["mass"] > 0.95
    for n in ("streaming_llm", "h2o", "tova"):
        assert results[n][2] > 0.5, (n, results[n][2])
        assert results[n][1]["mass"] < 0.2
    # Memory: the evicting policies hold the budget, Quest the whole context.
    assert results["h2o"][3].tokens_in_use == HKV * BUDGET
    assert results["quest"][3].tokens_in_use == HKV * (T + STEPS + 1)


def test_attention_metrics_exact_cases():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((4, 8))
    K = rng.standard_normal((2, 10, 8))
    V = rng.standard_normal((2, 10, 8))
    all_kept = np.ones((2, 10), dtype=bool)
    m = kv.attention_metrics(q, K, V, all_kept)
    assert m["recall"] == 1.0
    assert m["mass"] == pytest.approx(1.0)
    assert m["output_error"] < 1e-12
    # One key per head, and a hand computation for query 0.
    kept = np.zeros((2, 10), dtype=bool)
    kept[:, 3] = True
    m = kv.attention_metrics(q[:2], K[:1], V[:1], kept[:1])
    s = K[0] @ q[:2].T / np.sqrt(8)
    p = np.exp(s - s.max(0)) / np.exp(s - s.max(0)).sum(0)
    assert m["mass"] == pytest.approx(p[3].mean())
    top = p.argmax(0)
    assert m["recall"] == pytest.approx(np.mean(top == 3))
    o = (p * V[0][:, :1]).sum(0)  # first channel only as a sanity check of the formula
    assert np.all(np.isfinite(o))
    err = np.mean(
        [
            np.linalg.norm(V[0, 3] - p[:, j] @ V[0]) / np.linalg.norm(p[:, j] @ V[0])
            for j in range(2)
        ]
    )
    assert m["output_error"] == pytest.approx(err)


def test_page_metrics_oracle_selection_is_perfect():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 8))
    K = rng.standard_normal((1, 64, 8))
    s = K[0] @ q.sum(0)
    pm = np.add.reduceat(np.exp(s - s.max()), np.arange(0, 64, 16))
    best = np.sort(np.argsort(-pm)[:2])
    q1 = q[:1]
    s1 = K[0] @ q1[0] / np.sqrt(8)
    p1 = np.exp(s1 - s1.max())
    p1 /= p1.sum()
    pm1 = np.add.reduceat(p1, np.arange(0, 64, 16))
    oracle = np.sort(np.argsort(-pm1)[:2])
    m = kv.page_metrics(q1, K, oracle[None], 16)
    assert m["recall"] == 1.0
    assert m["mass"] == pytest.approx(pm1[oracle].sum())
    assert best.shape == (2,)
