"""The examples run: the quickstart script as a subprocess, the notebook's code cells in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
