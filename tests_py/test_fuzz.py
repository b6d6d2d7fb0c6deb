"""The fast slice of the API and file fuzzers (tests_py/fuzzlib.py; docs/robustness.md).

Every case runs in a worker process with a timeout and a memory cap; the test fails
listing each crash, hang, wrong exception type, unbounded allocation or silent acceptance
with the command that replays it. ``python bench/fuzz.py`` runs every case (the long mode).
"""

from __future__ import annotations

import os
from pathlib import Path

import fuzzlib

API_STRIDE = int(os.environ.get("SPARSEFORGE_FUZZ_STRIDE", "3"))
FILE_MUTATIONS = int(os.environ.get("SPARSEFORGE_FUZZ_FILES", "40"))


def _explain(defects: list[tuple[int, dict]], kind: str, describe) -> str:  # type: ignore[no-untyped-def]
    lines = [
        f"{kind}:{i} {describe(i)}: {r['outcome']} {r.get('exc', '')} "
        f"(replay: python bench/fuzz.py --case {kind}:{i})"
        for i, r in defects[:40]
    ]
    return f"{len(defects)} defects\n" + "\n".join(lines)


def test_api_fuzz_fast_slice() -> None:
    cases = fuzzlib.api_cases()
    ids = [c[0] for c in cases][::API_STRIDE]
    rep = fuzzlib.run("api", ids, workers=2)
    assert len(rep.results) == len(ids)
    counts = rep.counts()
    assert counts["refused"] > len(ids) // 2  # the harness really exercised the API
    defects = rep.defects()
    assert not defects, _explain(defects, "api", fuzzlib.describe_api)


def test_file_fuzz_fast_slice(tmp_path: Path) -> None:
    ids, names = fuzzlib.file_case_ids(tmp_path, FILE_MUTATIONS)
    rep = fuzzlib.run("file", ids, seeds_dir=str(tmp_path), workers=2)
    assert len(rep.results) == len(ids)
    assert rep.counts()["refused"] > len(ids) // 2

    def describe(i: int) -> str:
        return f"{names[i // fuzzlib.FILE_MUTATIONS_MAX]} mutation {i % fuzzlib.FILE_MUTATIONS_MAX}"

    defects = rep.defects()
    assert not defects, _explain(defects, "file", describe)


def test_harness_classifies_crash_hang_and_wrong_type() -> None:
    """The classifier itself, on cases that really crash, hang and raise the wrong type."""
    from childproc import run_child

    crash = run_child("import ctypes; ctypes.string_at(0)", timeout=30)
    assert crash.kind == "crash"
    hang = run_child("import time; time.sleep(60)", timeout=2)
    assert hang.kind == "hang"
    mem = run_child("b = bytearray(8 << 30)", timeout=30, memory=1 << 30)
    assert mem.kind == "memory"
    assert fuzzlib._classify_exc(KeyError("x")) == "wrong-type"
    assert fuzzlib._classify_exc(ValueError("x")) == "refused"
    assert fuzzlib._classify_exc(MemoryError()) == "memory"


_HYPOTHESIS_CHILD = r"""
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
import sparseforge as sf
from sparseforge import kernels, kv, moe, prune

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_,
                          np.complex64, np.uint8])
ARRAYS = DTYPES.flatmap(lambda dt: arrays(dt, array_shapes(min_dims=0, max_dims=3,
                                                           min_side=0, max_side=9)))
W = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
CALLS = [
    lambda a: kernels.gemv(W, a),
    lambda a: kernels.gemv(a, np.ones(8, np.float32)),
    lambda a: prune.magnitude(a, 0.5),
    lambda a: prune.wanda(W, a, 0.5),
    lambda a: sf.calib.LayerStats(8).update(a),
    lambda a: kv.apply_rope(a, np.arange(len(a)) if a.ndim else [0]),
    lambda a: moe.route(a, top_k=1),
    lambda a: sf.activation.Histogram().update(a),
    lambda a: sf.format.NMTensor.from_dense(a, n=2, m=4),
]
bad = []

@settings(max_examples={n}, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(range(len(CALLS))), ARRAYS)
def check(i, a):
    try:
        CALLS[i](a)
    except (TypeError, ValueError):
        pass
    except Exception as e:
        bad.append(f"call {i} dtype {a.dtype} shape {a.shape}: {type(e).__name__}: {e}")

check()
print("BAD", bad[:10])
assert not bad
"""


def test_hypothesis_arrays_reach_only_type_and_value_errors() -> None:
    """Hypothesis-drawn arrays (any dtype, 0-3 dims, empty sides) into array-taking entry
    points, in a child process: each call returns or raises TypeError/ValueError."""
    from childproc import run_child

    n = int(os.environ.get("SPARSEFORGE_FUZZ_HYPOTHESIS", "300"))
    out = run_child(_HYPOTHESIS_CHILD.replace("{n}", str(n)), timeout=300)
    assert out.kind == "ok", str(out)
