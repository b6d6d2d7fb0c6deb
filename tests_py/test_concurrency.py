"""Mutable core objects shared by Python threads: every call is serialised by the object's
lock (docs/robustness.md), so concurrent use never crashes and never corrupts state.

Each stress runs in a child process (a segfault would otherwise kill pytest). The oracle is
the data itself: a key appended at position p is a known function of p, so after the
threads stop every surviving slot must hold exactly the key and value of its position, all
heads of a layer must agree, and positions must strictly increase.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import sparseforge as sf
from childproc import run_child
from sparseforge import kv

_KV_STRESS = r"""
import threading, numpy as np
from sparseforge import kv
HKV, D, L = 2, 8, 2
cache = kv.PagedKVCache(L, HKV, D, page_size=4)

def kv_of(pos):
    p = np.asarray(pos, dtype=np.float32)[:, None, None]
    k = (p + np.arange(HKV)[None, :, None] * 0.25 + np.arange(D)[None, None, :] / 64)
    return k.astype(np.float32), (-k).astype(np.float32)

errors = []
stop = threading.Event()

def appender(layer):
    try:
        for i in range({rounds}):
            t = 1 + i % 3
            start = cache.last_position(layer) + 1
            pos = np.arange(start, start + t)
            k, v = kv_of(pos)
            try:
                cache.append(layer, k, v, pos)
            except ValueError as e:  # another appender took these positions first
                if "out of order" not in str(e):
                    raise
    except Exception as e:
        errors.append(repr(e))

def reader(layer):
    q = np.ones((4, D), np.float32)
    try:
        while not stop.is_set():
            kv.decode_attention(cache, layer, q, return_mass=True)
            kv.quest_page_scores(cache, layer, q)
            cache.gather(layer, 1)
            cache.scores(layer, 0)
            _ = cache.bytes_in_use, cache.tokens_in_use
    except Exception as e:
        errors.append(repr(e))

def evicter(layer):
    rng = np.random.default_rng(0)
    try:
        n = 0
        while not stop.is_set():
            n += 1
            m = min(cache.length(layer, h) for h in range(HKV))
            if m > 6:
                slots = np.sort(rng.choice(m - 1, 2, replace=False))
                try:
                    for h in range(HKV):
                        cache.evict(layer, h, slots)
                except ValueError:
                    pass
            if n % 50 == 0:
                cache.clear() if {clear} else cache.trim()
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=appender, args=(layer,)) for layer in (0, 0, 1)]
side = [threading.Thread(target=reader, args=(0,)), threading.Thread(target=reader, args=(1,)),
        threading.Thread(target=evicter, args=(0,))]
for t in threads + side: t.start()
for t in threads: t.join()
stop.set()
for t in side: t.join()
assert not errors, errors
for layer in range(L):
    for h in range(HKV):
        pos = cache.positions(layer, h)
        assert (np.diff(pos) > 0).all(), (layer, h, pos)
        K, V = cache.gather(layer, h)
        k, v = kv_of(pos)
        np.testing.assert_array_equal(K, k[:, h, :])
        np.testing.assert_array_equal(V, v[:, h, :])
print("OK", cache.tokens_in_use)
"""


@pytest.mark.parametrize("clear", [False, True])
def test_paged_cache_shared_by_threads_never_crashes_or_corrupts(clear: bool) -> None:
    out = run_child(
        _KV_STRESS.replace("{rounds}", "300").replace("{clear}", str(clear)), timeout=120
    )
    assert out.kind == "ok", str(out)
    assert "OK" in out.output


def test_two_threads_appending_default_positions_interleave_cleanly() -> None:
    cache = kv.PagedKVCache(1, 2, 4, page_size=3)
    k = np.ones((2, 2, 4), np.float32)
    errors: list[str] = []

    def work() -> None:
        try:
            for _ in range(200):
                cache.append(0, k, k)
        except Exception as e:  # pragma: no cover - the failure is reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    np.testing.assert_array_equal(cache.positions(0, 0), np.arange(1200))
    np.testing.assert_array_equal(cache.positions(0, 1), np.arange(1200))


def test_layer_stats_shared_by_threads_sum_exactly() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((64, 16)).astype(np.float32) for _ in range(24)]
    shared = sf.calib.LayerStats(16)
    ts = [
        threading.Thread(target=lambda cs=chunks[i::4]: [shared.update(c) for c in cs])
        for i in range(4)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    x = np.concatenate(chunks).astype(np.float64)
    assert shared.tokens == len(x)
    np.testing.assert_allclose(shared.col_norms, np.sqrt((x**2).mean(0)), rtol=1e-5)
    np.testing.assert_allclose(shared.hessian, x.T @ x / len(x), rtol=1e-4, atol=1e-6)


def test_histogram_shared_by_threads_counts_every_value() -> None:
    h = sf.activation.Histogram()
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(5000).astype(np.float32) for _ in range(16)]
    ts = [
        threading.Thread(target=lambda part=xs[i::4]: [h.update(x) for x in part]) for i in range(4)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ref = sf.activation.Histogram()
    for x in xs:
        ref.update(x)
    assert h.count == 80000
    np.testing.assert_array_equal(h.counts, ref.counts)


def test_merged_with_itself_and_crosswise_does_not_deadlock() -> None:
    a = sf.calib.LayerStats(8)
    b = sf.calib.LayerStats(8)
    x = np.ones((4, 8), np.float32)
    a.update(x)
    b.update(x)
    out: list[object] = []
    ts = [
        threading.Thread(target=lambda: [out.append(a._impl.merged(b._impl)) for _ in range(200)]),
        threading.Thread(target=lambda: [out.append(b._impl.merged(a._impl)) for _ in range(200)]),
        threading.Thread(target=lambda: [out.append(a._impl.merged(a._impl)) for _ in range(200)]),
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in ts)
    assert len(out) == 600


def test_huge_cache_sizes_are_refused_before_allocation() -> None:
    for kwargs in (
        {"num_layers": 2, "num_kv_heads": 2**63, "head_dim": 8},
        {"num_layers": 2**63, "num_kv_heads": 2, "head_dim": 8},
        {"num_layers": 2**40, "num_kv_heads": 2**40, "head_dim": 8},
        {"num_layers": 1, "num_kv_heads": 1, "head_dim": 2**40},
        {"num_layers": 1, "num_kv_heads": 1, "head_dim": 8, "page_size": 2**62},
    ):
        with pytest.raises(ValueError, match=r"num_layers|num_kv_heads|head_dim|page_size"):
            kv.PagedKVCache(**kwargs)
    with pytest.raises(ValueError, match="in_features"):
        sf.calib.LayerStats(2**40, hessian=False)


_SESSION_STRESS = r"""
import sys, threading, numpy as np
sys.path.insert(0, {here!r})
from tinymodels import random_model
from sparseforge import runtime as rt
model = random_model(0)
THREADS, STEPS, TOKEN = 3, 6, 5
shared = rt.Session(model, 64, num_threads=1)
shared.prefill([1, 2, 3])
got, errors, stop = [], [], threading.Event()

def stepper():
    try:
        for _ in range(STEPS):
            got.append(np.asarray(shared.step(TOKEN)).copy())
    except Exception as e:
        errors.append(repr(e))

def reader():
    try:
        while not stop.is_set():
            _ = shared.length, shared.kv_bytes, shared._s.num_threads
    except Exception as e:
        errors.append(repr(e))

ts = [threading.Thread(target=stepper) for _ in range(THREADS)]
rd = [threading.Thread(target=reader) for _ in range(2)]
for t in ts + rd: t.start()
for t in ts: t.join()
stop.set()
for t in rd: t.join()
assert not errors, errors
# The oracle: the same token fed THREADS * STEPS times in one thread. Whatever the
# interleaving, every step sees the same history, so the logits are the serial run's.
serial = rt.Session(model, 64, num_threads=1)
serial.prefill([1, 2, 3])
want = [np.asarray(serial.step(TOKEN)).copy() for _ in range(THREADS * STEPS)]
assert shared.length == serial.length == 3 + THREADS * STEPS
key = lambda a: a.tobytes()
assert sorted(map(key, got)) == sorted(map(key, want))
print("OK")
"""


def test_runtime_session_shared_by_threads_steps_like_one_thread() -> None:
    from pathlib import Path

    out = run_child(_SESSION_STRESS.format(here=str(Path(__file__).parent)), timeout=300)
    assert out.kind == "ok", str(out)
    assert "OK" in out.output


_POLICY_STRESS = r"""
import threading, numpy as np
from sparseforge import kv
L, H, HKV, D, T, STEPS = 4, 4, 2, 8, 96, 20

def data(layer):
    rng = np.random.default_rng(layer)
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, HKV, D)).astype(np.float32)
    v = rng.standard_normal((T, HKV, D)).astype(np.float32)
    steps = [tuple(rng.standard_normal(s).astype(np.float32) for s in ((H, D), (HKV, D), (HKV, D)))
             for _ in range(STEPS)]
    return q, k, v, steps

def drive(policy, cache, layer, out):
    q, k, v, steps = data(layer)
    policy.prefill(cache, layer, q, k, v)
    out[layer] = [np.asarray(policy.decode(cache, layer, *s)).copy() for s in steps]

for name in {names!r}:
    # one policy and one cache shared by a thread per layer (layers are independent, so
    # the outputs must equal one thread driving the layers in turn, bit for bit)
    policy, got, errors = kv.make_policy(name, budget=72), {{}}, []
    cache = kv.PagedKVCache(L, HKV, D, page_size=4)
    def run(layer):
        try:
            drive(policy, cache, layer, got)
        except Exception as e:
            errors.append(repr(e))
    ts = [threading.Thread(target=run, args=(layer,)) for layer in range(L)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert not errors, (name, errors)
    serial_policy, want = kv.make_policy(name, budget=72), {{}}
    serial_cache = kv.PagedKVCache(L, HKV, D, page_size=4)
    for layer in range(L):
        drive(serial_policy, serial_cache, layer, want)
    for layer in range(L):
        for a, b in zip(got[layer], want[layer]):
            assert a.tobytes() == b.tobytes(), (name, layer)
        for h in range(HKV):
            p1, p2 = cache.positions(layer, h), serial_cache.positions(layer, h)
            np.testing.assert_array_equal(p1, p2)
print("OK")
"""


def test_kv_policy_shared_by_threads_matches_one_thread() -> None:
    names = [n for n in ("h2o", "snapkv", "streaming_llm", "quest", "tova") if n in kv.POLICIES]
    out = run_child(_POLICY_STRESS.format(names=names), timeout=300)
    assert out.kind == "ok", str(out)
    assert "OK" in out.output
