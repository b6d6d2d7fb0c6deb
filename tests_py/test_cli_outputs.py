"""The model commands fail fast on outputs they cannot write (before loading or pruning
anything), show their defaults and examples in --help; PruneReport / PruneResult as JSON,
compact reprs and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import realdata
import sparseforge as sf
from sparseforge import models as sm

STORIES = realdata.stories260k_path()
DATA_ENV = {} if STORIES is None else {"SPARSEFORGE_DATA": str(STORIES.parent.parent)}
needs_stories = realdata.needs_stories


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparseforge", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or Path(__file__).parent,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **DATA_ENV},
    )


def _fails_fast(res: subprocess.CompletedProcess[str], needle: str) -> None:
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one clear line
    assert res.stdout == ""  # nothing loaded, nothing printed: no work was done


@pytest.mark.parametrize(
    ("flag", "where", "needle"),
    [
        ("--out", "missing/x.sfm", "the folder {tmp}/missing does not exist"),
        ("--out", ".", "is a directory; give a file path"),
        ("--out", "afile/x.sfm", "afile is not a folder"),
        ("--report-json", "missing/run.json", "the folder {tmp}/missing does not exist"),
        ("--report-json", ".", "is a directory"),
    ],
)
def test_prune_refuses_unwritable_outputs_before_any_work(
    tmp_path: Path, flag: str, where: str, needle: str
) -> None:
    (tmp_path / "afile").write_text("x")
    # a model name that would fail to resolve later: the output check must come first
    res = run(
        "prune", "no/such/model.bin", "--sparsity", "0.5", flag, str(tmp_path / where)
    )  # fmt: skip
    _fails_fast(res, needle.format(tmp=tmp_path))


def test_prune_refuses_a_folder_that_takes_no_files(tmp_path: Path) -> None:
    target = Path("/proc/sparseforge-test.sfm")  # /proc refuses new files, even to root
    if os.access("/proc", os.W_OK) and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    res = run("prune", "no/such/model.bin", "--sparsity", "0.5", "--out", str(target))
    _fails_fast(res, "--out: cannot write in /proc")


def test_demo_save_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    res = run("demo", "--save-dir", str(tmp_path / "f"))
    _fails_fast(res, "--save-dir: ")
    assert "exists and is not a folder" in res.stderr


def test_missing_model_is_one_line() -> None:
    res = run("eval", "no/such/model.bin")
    _fails_fast(res, "does not exist")


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ("prune", ["(default: 128)", "(default: 16)", "examples:", "4-6", "'all'"]),
        ("eval", ["(default: 512)", "(default: 16)", "examples:"]),
        ("demo", ["(default: 8)", "(default: magnitude,wanda,sparsegpt)", "examples:"]),
    ],
)
def test_help_shows_defaults_and_examples(command: str, needles: list[str]) -> None:
    res = run(command, "--help")
    assert res.returncode == 0
    for needle in needles:
        assert needle in res.stdout, needle
    assert "(default: None)" not in res.stdout


def test_max_windows_argument() -> None:
    from sparseforge import cli

    p = cli.build_parser()
    assert p.parse_args(["eval", "m", "--max-windows", "all"]).max_windows is None
    assert p.parse_args(["eval", "m", "--max-windows", "5"]).max_windows == 5
    assert p.parse_args(["eval", "m"]).max_windows == 16
    res = run("eval", "m", "--max-windows", "-1")
    assert res.returncode == 2
    assert "expected a positive int or 'all'" in res.stderr


# -- PruneReport / PruneResult ---------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> sm.PruneReport:
    if STORIES is None:
        pytest.skip("stories260K not found")
    m = sm.load(STORIES, linear_backend="sparseforge", num_threads=1)
    ids = np.random.default_rng(0).integers(3, 512, size=600)
    return sm.prune(m, ids, method="wanda", sparsity=0.5, nsamples=2, seqlen=64, progress=False)


def test_report_to_dict_round_trip(report: sm.PruneReport) -> None:
    d = report.to_dict()
    text = json.dumps(d)  # JSON-ready: no arrays, no numpy scalars
    back = sm.PruneReport.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert d["overall_sparsity"] == report.overall_sparsity
    assert [x["name"] for x in d["layers"]] == [r.name for r in report.layers]
    assert [x["error"] for x in d["layers"]] == [r.error for r in report.layers]
    assert d["calib_tokens"] == 128
    assert json.loads(report.to_json()) == d
    with pytest.raises(ValueError, match="not a PruneReport dict"):
        sm.PruneReport.from_dict({"method": "wanda"})
    with pytest.raises(TypeError, match="data: expected a dict"):
        sm.PruneReport.from_dict([])


def test_report_reprs_are_compact(report: sm.PruneReport) -> None:
    r = repr(report)
    assert r.startswith("PruneReport(wanda 0.5, sequential, 2 x 64 calibration tokens, 35 linears")
    assert "mean rel. error" in r
    assert len(r) < 200
    h = report._repr_html_()
    assert "<details>" in h  # the per-layer table is folded
    assert h.count("<tr>") == 1 + 7 + 1 + 35  # by projection (7 kinds) and per layer
    assert "q_proj" in h
    assert len(h) < 12000
    kinds = report.by_projection()
    assert [k for k, *_ in kinds] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    ]  # fmt: skip
    q = [x for x in report.layers if x.name.endswith("q_proj.weight")]
    assert kinds[0][1] == 5
    assert kinds[0][2] == pytest.approx(np.mean([x.sparsity for x in q]))
    assert kinds[0][3] == pytest.approx(np.mean([x.error for x in q]))


def test_prune_result_repr_shows_no_values() -> None:
    W = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    res = sf.prune.magnitude(W, pattern="2:4")
    r = repr(res)
    assert r.startswith("PruneResult(method='magnitude', weight=float32[256x512], sparsity=0.5000")
    assert "kept=65536/131072" in r
    assert len(r) < 300
    h = res._repr_html_()
    assert "float32[256x512]" in h
    assert len(h) < 2000


def test_report_plot(report: sm.PruneReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    fig = report.plot(path=tmp_path / "r.png")
    ax = fig.axes[0]
    assert len(ax.patches) == 35  # one bar per linear
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([x.sparsity for x in report.layers])
    errs = fig.axes[1]  # the twin axis with the errors
    ys = np.concatenate([line.get_ydata() for line in errs.lines])
    assert sorted(ys) == pytest.approx(sorted(x.error for x in report.layers))
    assert (tmp_path / "r.png").stat().st_size > 5000
    import matplotlib.pyplot as plt

    plt.close(fig)
