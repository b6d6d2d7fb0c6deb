"""The examples run: the quickstart script as a subprocess, the notebook's code cells in order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import realdata

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "python"


def test_quickstart_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "2:4" in out.stdout
    assert "bf16 4:8" in out.stdout


def test_generate_script_saves_a_model_the_runtime_reads(tmp_path: Path) -> None:
    import sparseforge as sf

    path = tmp_path / "model.sf"
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "generate.py"), "--save", str(path), "--tokens", "12"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "12 tokens in" in out.stdout
    # the file the C++ twin (examples/cpp/generate_example.cc) loads
    s = sf.runtime.Session(sf.runtime.load(path), 4)
    assert s.prefill([1, 2]).shape[0] == 2


def test_teal_kv_decode_script_saves_what_the_cpp_twin_reads(tmp_path: Path) -> None:
    import sparseforge as sf

    path = tmp_path / "model.sf"
    args = ["--save", str(path), "--tokens", "12", "--budget", "8"]
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "teal_kv_decode.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "TEAL 50% + full cache" in out.stdout
    assert "TEAL 50% + H2O 8, cache" in out.stdout
    # what examples/cpp/kv_policy_example.cc loads: the model and one threshold per linear
    rt = sf.runtime.load(path)
    lines = (tmp_path / "model.sf.teal").read_text().split("\n")
    entries = [ln.split() for ln in lines if ln]
    assert all(len(e) == 2 and float(e[1]) >= 0 for e in entries)
    assert len(entries) == 7 * len({e[0].split(".")[2] for e in entries})
    assert rt.vocab_size > 0


def test_quickstart_notebook_cells_run(capsys: pytest.CaptureFixture[str]) -> None:
    nb = json.loads((EXAMPLES / "quickstart.ipynb").read_text())
    namespace: dict[str, object] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "identical for 1 and 2 threads" in printed
    assert "DTypeError: W: expected dtype float32" in printed
    assert "ValueError: W: expected C-ordered rows" in printed
    assert "ValueError: W: in_features=1022 is not a multiple of m=4" in printed


# -- one script per job, on stories260K with small settings ---------------------------------

_BIN = realdata.stories260k_path()
_ENV = {} if _BIN is None else {"SPARSEFORGE_DATA": str(_BIN.parent.parent)}
needs_stories = realdata.needs_stories


def _example(name: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--model", "stories260k", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "2", **_ENV},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _num(text: str, before: str) -> float:
    return float(re.search(re.escape(before) + r"\s*([0-9.]+)", text).group(1))  # type: ignore[union-attr]


@needs_stories
def test_prune_example(tmp_path: Path) -> None:
    out = _example(
        "prune_wanda_sparsegpt.py",
        "--nsamples",
        "2",
        "--seqlen",
        "64",
        "--max-windows",
        "2",
        "--out",
        str(tmp_path),
    )
    dense = _num(out, "dense perplexity")
    rows = re.findall(r"^(wanda|sparsegpt)\s+(50%|2:4): perplexity\s+([0-9.]+)", out, re.M)
    assert len(rows) == 4
    assert all(float(p) > dense for _, _, p in rows)
    sgpt24 = next(float(p) for m, k, p in rows if (m, k) == ("sparsegpt", "2:4"))
    assert _num(out, "reloaded: perplexity") == pytest.approx(sgpt24, rel=1e-3)
    assert (tmp_path / "sparsegpt-2of4.sfm").is_file()
    assert (tmp_path / "sparsegpt-2of4-hf" / "config.json").is_file()


@needs_stories
def test_torch_adapter_example() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = _example("torch_adapter.py", "--nsamples", "2", "--seqlen", "64")
    assert "35 linears pruned 2:4 (sparsity 0.500)" in out
    before, after = (
        float(x) for x in re.search(r"dense ([0-9.]+) -> pruned ([0-9.]+)", out).groups()
    )  # type: ignore[union-attr]
    assert after > before


@needs_stories
def test_teal_decode_example() -> None:
    out = _example("teal_decode.py", "--max-windows", "2", "--seqlen", "64")
    got = [float(x) for x in re.findall(r"measured sparsity ([0-9.]+)", out)]
    assert len(got) == 2
    assert got[0] == pytest.approx(0.4, abs=0.06)
    assert got[1] == pytest.approx(0.5, abs=0.06)


@needs_stories
def test_kv_policy_example() -> None:
    out = _example("kv_policy.py", "--budget", "64")
    assert re.search(r"^full .*100% of the full cache's tokens", out, re.M)
    peaks = [float(x) for x in re.findall(r"cache peak ([0-9.]+) kB", out)]
    assert len(peaks) == 3
    assert peaks[1] < peaks[0]  # a budget holds fewer tokens
    assert peaks[2] < peaks[0]


@needs_stories
def test_structured_example() -> None:
    out = _example("structured.py", "--nsamples", "2", "--seqlen", "64", "--max-windows", "2")
    params = [float(x) for x in re.findall(r"([0-9.]+) M parameters", out)]
    assert len(params) == 4
    assert all(p < params[0] for p in params[1:])  # every method makes the model smaller


@needs_stories
def test_pictures_notebook_cells_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    nb = json.loads((EXAMPLES / "pictures.ipynb").read_text())
    namespace: dict[str, object] = {}
    os.environ.setdefault("SPARSEFORGE_DATA", str(_ENV.get("SPARSEFORGE_DATA", "")))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "pictures.ipynb", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "PruneReport(wanda 0.5" in printed
    # the visualiser and the sweep (IPython's SVG object, or the notebook's own fallback)
    assert printed.count("<svg picture") + printed.count("SVG object") == 2
    kept = namespace["v"]["kept_outlier"]  # type: ignore[index]
    assert kept["Wanda 50%"] > kept["magnitude 50%"]
    import matplotlib.pyplot as plt

    plt.close("all")


# -- the C++ twins -------------------------------------------------------------------------


def test_sparsegpt_layer_script_matches_the_numbers_it_checks() -> None:
    # examples/cpp/sparsegpt_stream_example.cc prints the same lines (CI's consumer step
    # runs both and compares them).
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "sparsegpt_layer.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "ok"
    err = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^\s+(\S+ \S+)\s+([0-9.]+)", out.stdout, re.MULTILINE)
    }
    # SparseGPT from the streamed statistics reconstructs the layer better than magnitude.
    assert err["SparseGPT 2:4"] < 0.7 * err["magnitude 2:4"]
    assert err["SparseGPT 50%"] < err["SparseGPT 2:4"]


def test_umbrella_header_includes_every_public_header() -> None:
    include = Path(__file__).resolve().parent.parent / "cpp" / "include"
    umbrella = (include / "sparseforge" / "sparseforge.h").read_text()
    listed = set(re.findall(r'^#include "(sparseforge/[^"]+)"', umbrella, re.MULTILINE))
    headers = {
        p.relative_to(include).as_posix()
        for p in (include / "sparseforge").rglob("*.h")
        if p.name != "sparseforge.h"
    }
    assert headers - listed == set(), "add these to cpp/include/sparseforge/sparseforge.h"
    assert listed - headers == set()
