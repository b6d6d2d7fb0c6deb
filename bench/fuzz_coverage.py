"""Coverage-guided fuzzing of every reader (tests_py/atheris_fuzz.py), longer than CI's
few seconds per target; writes a table to bench/results/fuzz_coverage.md.

    nice python bench/fuzz_coverage.py --seconds 300          # every target, 5 min each
    nice python bench/fuzz_coverage.py --targets gguf,hf-index --seconds 60

Each target runs in its own process; a finding leaves its input under --artifacts and is
counted in the table (the run goes on with the next target).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests_py" / "atheris_fuzz.py"
sys.path.insert(0, str(ROOT / "tests_py"))
from atheris_fuzz import TARGETS  # noqa: E402


def run(target: str, seconds: int, artifacts: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as work:
        t0 = time.time()
        r = subprocess.run(
            [
                sys.executable,
                str(HARNESS),
                *("--target", target, "--seconds", str(seconds)),
                *("--work", work, "--artifacts", str(artifacts)),
            ],
            capture_output=True,
            text=True,
        )
    err = r.stderr
    stat = dict(re.findall(r"^stat::(\w+):\s+(\d+)", err, re.M))
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", err)
    finding = (
        "none"
        if r.returncode == 0
        else (
            next(
                (ln for ln in err.splitlines() if "ERROR: libFuzzer" in ln or "Uncaught" in ln),
                f"exit {r.returncode}",
            )
        )
    )
    return {
        "target": target,
        "seconds": str(seconds),
        "inputs": stat.get("number_of_executed_units", "?"),
        "per_s": stat.get("average_exec_per_sec", "?"),
        "cov": cov[-1][0] if cov else "?",
        "features": cov[-1][1] if cov else "?",
        "corpus": cov[-1][2] if cov else "?",
        "peak_rss_mb": stat.get("peak_rss_mb", "?"),
        "finding": finding.strip()[:120],
        "wall": f"{time.time() - t0:.0f}",
        "load": f"{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--artifacts", default=str(ROOT / "build" / "fuzz-artifacts"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz_coverage.md"))
    args = ap.parse_args()
    artifacts = Path(args.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    rows = []
    for t in args.targets.split(","):
        row = run(t, args.seconds, artifacts)
        print(row, flush=True)
        rows.append(row)
    cols = list(rows[0])
    lines = [
        "# Coverage-guided fuzzing of the readers (atheris)",
        "",
        f"- **Command:** `python bench/fuzz_coverage.py --seconds {args.seconds}`",
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M')}; a shared 2-core machine (load per "
        "row: 1-minute load average when the target finished).",
        "- `cov`/`features`: libFuzzer's coverage counters over sparseforge's instrumented "
        "Python code (the C++ reader is not instrumented); `finding`: none, or libFuzzer's "
        "report (the input is under the artifacts folder).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
