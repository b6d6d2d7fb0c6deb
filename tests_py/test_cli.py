"""The ``sparseforge`` command: ``demo`` and ``info``, through ``python -m sparseforge``,
the console script and in-process."""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

import sparseforge as sf
from sparseforge import cli

# operation (label prefix): (sparsity, N:M check, mask vs numpy)
ROWS = {
    "magnitude 50% per row": ("0.5000", "-", "equal"),
    "magnitude 50% per layer": ("0.5000", "-", "equal"),
    "magnitude 2:4": ("0.5000", "ok", "equal"),
    "magnitude 4:8": ("0.5000", "ok", "equal"),
    "magnitude 1:4": ("0.7500", "ok", "equal"),
    "block 16x16, 50%": ("0.5000", "-", "-"),
    "global 60% (2 matrices)": ("0.6000", "-", "-"),
}


def run(
    *args: str, env: dict[str, str] | None = None, exe: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = (exe or [sys.executable, "-m", "sparseforge"]) + list(args)
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=os.path.dirname(__file__),
    )


def parse_table(out: str) -> list[dict[str, str]]:
    """The demo table as one {column header: cell} per row (columns are separated by two or
    more spaces; the dashes line under the header gives the column widths)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("operation"))
    header = re.split(r"\s{2,}", lines[start].strip())
    dashes = lines[start + 1].split()
    assert all(set(d) == {"-"} for d in dashes)
    assert len(dashes) == len(header)
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(header), line
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def check_demo_output(out: str, size: str = "1024x1024", dtype: str = "float32") -> None:
    assert out.startswith(f"sparseforge {sf.__version__} demo-matrices: {size} {dtype}, threads=")
    rows = parse_table(out)
    assert len(rows) == len(ROWS)
    vs_numpy = next(col for col in rows[0] if "vs numpy" in col)
    for row, (label, (sparsity, nm_check, check)) in zip(rows, ROWS.items(), strict=True):
        assert row["operation"].startswith(label), (row, label)
        assert row["sparsity"] == sparsity, row
        assert 0.0 < float(row["rel. error"]) < 1.0, row
        assert row["N:M check"] == nm_check, row
        if check == "equal":  # the rows that have a numpy reference must match it
            assert row[vs_numpy] == "equal", row
    assert "DIFFERS" not in out
    assert "BROKEN" not in out


def test_demo_via_python_m() -> None:
    res = run("demo-matrices", "--size", "small", "--quiet")
    assert res.returncode == 0, res.stderr
    check_demo_output(res.stdout)
    assert res.stderr == ""  # --quiet: no progress lines


def test_demo_progress_and_options() -> None:
    res = run(
        "demo-matrices", "--size", "small", "--dtype", "bfloat16", "--threads", "1", "--seed", "3"
    )
    assert res.returncode == 0, res.stderr
    check_demo_output(res.stdout, dtype="bfloat16")
    assert "threads=1," in res.stdout.splitlines()[0]
    steps = re.findall(r"^\[(\d+)/(\d+)\] .+ \d+ ms$", res.stderr, flags=re.M)
    totals = {int(total) for _, total in steps}
    assert len(totals) == 1
    # every step of the announced total is reported, in order: [1/N] ... [N/N]
    assert [int(i) for i, _ in steps] == list(range(1, totals.pop() + 1))


def test_demo_in_process_float16() -> None:
    args = cli.build_parser().parse_args(
        ["demo-matrices", "--size", "small", "--dtype", "float16", "--quiet"]
    )
    out = io.StringIO()
    assert cli.demo(args, out=out) == 0
    check_demo_output(out.getvalue(), dtype="float16")


def test_console_script() -> None:
    exe = shutil.which("sparseforge")
    if exe is None:
        pytest.skip("the sparseforge console script is not on PATH")
    res = run("demo-matrices", "--size", "small", "--quiet", exe=[exe])
    assert res.returncode == 0, res.stderr
    check_demo_output(res.stdout)


def test_info() -> None:
    res = run("info")
    assert res.returncode == 0, res.stderr
    info = dict(line.split(None, 1) for line in res.stdout.splitlines())
    assert info["version"] == sf.__version__
    assert info["simd_detected"] == sf.detected_simd_level()
    assert info["simd_active"] in ("scalar", "avx2", "avx512")
    for key in ("compiler", "openmp", "default_threads", "numpy", "ml_dtypes", "python"):
        assert info[key]


def test_info_honours_the_simd_environment_variable() -> None:
    res = run("info", env={"SPARSEFORGE_SIMD": "scalar"})
    assert res.returncode == 0, res.stderr
    info = dict(line.split(None, 1) for line in res.stdout.splitlines())
    assert info["simd_active"] == "scalar"
    assert info["simd_detected"] == sf.detected_simd_level()


def test_info_in_process() -> None:
    out = io.StringIO()
    assert cli.info_cmd(argparse.Namespace(), out=out) == 0
    assert f"version            {sf.__version__}\n" in out.getvalue()
    assert f"simd_active        {sf.simd_level()}\n" in out.getvalue()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "required"),
        (["bogus"], "invalid choice"),
        (["demo-matrices", "--size", "huge"], "invalid choice"),
        (["demo-matrices", "--dtype", "float64"], "invalid choice"),
        (["demo-matrices", "--threads", "x"], "invalid int"),
        (["demo-matrices", "--threads", "0"], "--threads must be >= 1"),
        (["demo-matrices", "--threads", "-2"], "--threads must be >= 1"),
        (["demo-matrices", "--frob"], "unrecognized"),
    ],
)
def test_bad_arguments_exit_non_zero(args: list[str], needle: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""


def test_version_flag_prints_the_package_version() -> None:
    res = run("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"sparseforge {sf.__version__}"
