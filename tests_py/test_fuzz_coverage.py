"""Coverage-guided fuzzing in CI: every reader under atheris (tests_py/atheris_fuzz.py) for a
fixed number of seconds each (SF_ATHERIS_SECONDS, default 6; about 1-2 minutes in all).

A run passes when libFuzzer finished its time without a finding: every mutated file was
loaded or refused with TypeError/ValueError; a finding (another exception, MemoryError under
the address-space cap, a crash, an input slower than 10 s) fails the test with libFuzzer's
report and the input saved under the test's temporary folder. Longer runs:
``python bench/fuzz_coverage.py`` (docs/robustness.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install '.[test]')")
pytest.importorskip("safetensors", reason="the HF seeds need safetensors")
pytest.importorskip("gguf", reason="the GGUF seed needs gguf")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from atheris_fuzz import TARGETS  # noqa: E402

SECONDS = int(os.environ.get("SF_ATHERIS_SECONDS", "6"))


def run_target(target: str, seconds: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(HERE / "atheris_fuzz.py"),
            "--target",
            target,
            "--seconds",
            str(seconds),
            "--work",
            str(tmp / "work"),
            "--artifacts",
            str(tmp / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 300,  # start-up and seed building on a loaded machine
    )


@pytest.mark.parametrize("target", TARGETS)
def test_reader_survives_coverage_guided_fuzzing(target: str, tmp_path: Path) -> None:
    r = run_target(target, SECONDS, tmp_path)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, f"{target}: libFuzzer reported a finding\n{tail}"
    assert "Done" in r.stderr, f"{target}: the fuzzer did not run\n{tail}"
    runs = [ln for ln in r.stderr.splitlines() if ln.startswith("stat::number_of_executed_units")]
    assert runs, tail
    assert int(runs[0].split(":")[-1]) > 0, tail


def test_harness_reports_an_unexpected_exception(tmp_path: Path) -> None:
    """The harness must fail on a reader that raises something other than TypeError /
    ValueError: run the thresholds target with a loader that raises KeyError."""
    script = tmp_path / "bad.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import atheris_fuzz as a\n"
        "def bad(target):\n"
        "    def load(p):\n"
        "        if p.read_bytes()[:1] != b'{':\n"
        "            raise KeyError('not a JSON object')\n"
        "    return load\n"
        "a._loader = bad\n"
        "a.main(sys.argv[1:])\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            str(script),
            "--target",
            "thresholds-json",
            "--seconds",
            "30",
            "--work",
            str(tmp_path / "work"),
            "--artifacts",
            str(tmp_path / "artifacts"),
        ],
        capture_output=True,
        text=True,
        timeout=330,
    )
    assert r.returncode != 0
    assert "KeyError" in r.stdout + r.stderr
    assert any(
        p.name.startswith("thresholds-json-crash-") for p in (tmp_path / "artifacts").iterdir()
    )
