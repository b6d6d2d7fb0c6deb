"""Heavy calls release the GIL, and concurrent calls from Python threads are correct.

The GIL test measures concurrency, not speed: a counter thread stamps the time every few
hundred iterations while the main thread is inside one heavy call. If the call held the
GIL, no stamp could fall inside the call's time window (the counter cannot run at all);
with the GIL released the counter keeps running at a rate comparable to when the main
thread sleeps. Only the middle of the window is counted, away from the hand-offs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import reference as ref
import sparseforge as sf
from reference import BF16, F16, F32
from sparseforge import _core, prune

STAMP_EVERY = 256


class Counter:
    """A Python thread that counts and records a timestamp every STAMP_EVERY iterations."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        stamps, stop, clock = self.stamps, self._stop, time.perf_counter
        while not stop.is_set():
            n += 1
            if n % STAMP_EVERY == 0:
                stamps.append(clock())

    def __enter__(self) -> Counter:
        self._thread.start()
        while len(self.stamps) < 10:  # running for sure
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def count_between(self, t0: float, t1: float) -> int:
        s = np.array(self.stamps)
        return int(((s > t0) & (s < t1)).sum())


def _inner(t0: float, t1: float) -> tuple[float, float]:
    """The middle 60% of [t0, t1]."""
    d = t1 - t0
    return t0 + 0.2 * d, t1 - 0.2 * d


@pytest.fixture(scope="module")
def heavy_W() -> np.ndarray:
    """4096 x 4096 float32: each call below takes 0.1-0.4 s on one core."""
    return np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)


HEAVY_CALLS: dict[str, Callable[[np.ndarray], Any]] = {
    "magnitude_row": lambda W: _core.prune.magnitude_mask(W, 0.5, "row", 1),
    "magnitude_layer": lambda W: _core.prune.magnitude_mask(W, 0.5, "layer", 1),
    "nm_generic": lambda W: _core.prune.magnitude_nm_mask(W, 3, 16, 1),
    "block": lambda W: _core.prune.magnitude_block_mask(W, 0.5, 4, 4, "row", 1),
    "global": lambda W: _core.prune.magnitude_global_mask([W, W[:2048]], 0.5, 1),
    "cast": lambda W: _core.core.cast(W, F16, 1),
    "facade_magnitude": lambda W: prune.magnitude(W, pattern="5:16", num_threads=1),
}


def _progress_inside_call(call: Callable[[], Any]) -> tuple[int, float, float]:
    """(stamps the counter thread made in the middle 60% of one call, the stamps expected at
    its idle rate, the window in seconds)."""
    with Counter() as counter:
        # the counter's rate with the main thread idle, as a yardstick
        s0 = time.perf_counter()
        time.sleep(0.1)
        s1 = time.perf_counter()
        idle_rate = counter.count_between(s0, s1) / (s1 - s0)
        # the counter's progress while the main thread is inside one heavy call
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    i0, i1 = _inner(t0, t1)
    return counter.count_between(i0, i1), idle_rate * (i1 - i0), i1 - i0


@pytest.mark.parametrize("name", list(HEAVY_CALLS))
def test_heavy_calls_release_the_gil(name: str, heavy_W: np.ndarray) -> None:
    W = heavy_W
    call = HEAVY_CALLS[name]
    call(W)  # warm up (first-touch allocations, lazy imports)
    # With the GIL held the counter cannot run inside the call, in any attempt. Released, it
    # runs on the other core; allow a loaded machine a 20x slow-down, and since a short call
    # (cast: ~3 ms) can fall wholly inside a slice the scheduler gives another process, up to
    # five attempts.
    for _ in range(5):
        during, expected, window = _progress_inside_call(lambda: call(W))
        if during >= max(3.0, 0.05 * expected):
            return
    pytest.fail(
        f"{name}: counter advanced {during * STAMP_EVERY} iterations in the middle "
        f"{window * 1e3:.0f} ms of the call (expected about {expected * STAMP_EVERY:.0f})"
    )


def _workload(seed: int) -> list[tuple[str, Callable[[], Any]]]:
    rng = np.random.default_rng(seed)
    Wa = ref.weights(rng, (257, 768), F32, "ints")
    Wb = ref.weights(rng, (96, 1000), BF16)
    Wc = ref.weights(rng, (64, 320), F16, "special")
    return [
        ("row", lambda: prune.magnitude(Wa, 0.6, num_threads=2).mask),
        ("layer", lambda: prune.magnitude(Wb, 0.3, scope="layer", num_threads=1).mask),
        ("nm", lambda: prune.magnitude(Wc, pattern="3:8").mask),
        ("nm_generic", lambda: prune.magnitude(Wa, pattern="7:12").mask),
        (
            "global",
            lambda: np.concatenate(
                [r.mask.ravel() for r in prune.magnitude_global([Wa, Wb, Wc], 0.5)]
            ),
        ),
        ("block", lambda: prune.block_magnitude(Wc, 0.5, (4, 8), scope="row").mask),
        ("cast", lambda: ref.bits(sf.cast(Wa, BF16))),
        ("weight", lambda: ref.bits(prune.magnitude(Wb, 0.5).weight)),
    ]


def _oracles(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    Wa = ref.weights(rng, (257, 768), F32, "ints")
    Wb = ref.weights(rng, (96, 1000), BF16)
    Wc = ref.weights(rng, (64, 320), F16, "special")
    return {
        "row": ref.magnitude_row_mask(Wa, 0.6),
        "layer": ref.magnitude_layer_mask(Wb, 0.3),
        "nm": ref.nm_mask(Wc, 3, 8),
        "nm_generic": ref.nm_mask(Wa, 7, 12),
        "global": np.concatenate(
            [m.ravel() for m in ref.magnitude_global_masks([Wa, Wb, Wc], 0.5)]
        ),
        "block": ref.block_mask(Wc, 0.5, 4, 8, "row"),
        "cast": ref.bits(ref.cast_to(Wa, BF16)),
        "weight": ref.bits(ref.apply_mask(Wb, ref.magnitude_row_mask(Wb, 0.5))),
    }


def test_concurrent_calls_from_python_threads_are_correct() -> None:
    """Four Python threads, each running every operation on its own data many times,
    started together; every result must equal the numpy oracle."""
    seeds = [11, 12, 13, 14]
    want = {seed: _oracles(seed) for seed in seeds}
    barrier = threading.Barrier(len(seeds))
    failures: list[str] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            work = _workload(seed)
            barrier.wait()
            for rep in range(6):
                for name, call in work[rep % 3 :] + work[: rep % 3]:
                    if not np.array_equal(call(), want[seed][name]):
                        failures.append(f"seed {seed} rep {rep}: {name}")
        except BaseException as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert failures == []


def test_shared_input_read_concurrently() -> None:
    """Several threads pruning the same (read-only) array at once, with different thread
    counts, all get the single-threaded answer."""
    W = ref.weights(np.random.default_rng(5), (512, 640), F32, "ints")
    W.flags.writeable = False
    want = prune.magnitude(W, 0.5, num_threads=1).mask
    want_layer = prune.magnitude(W, 0.5, scope="layer", num_threads=1).mask
    results: list[bool] = []
    lock = threading.Lock()

    def worker(threads: int) -> None:
        for _ in range(5):
            ok = np.array_equal(prune.magnitude(W, 0.5, num_threads=threads).mask, want)
            ok &= np.array_equal(
                prune.magnitude(W, 0.5, scope="layer", num_threads=threads).mask, want_layer
            )
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker, args=(t,)) for t in (1, 2, 3, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 20
    assert np.array_equal(want, ref.magnitude_row_mask(W, 0.5))
