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
