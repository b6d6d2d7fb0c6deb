"""``sparseforge report``: one self-contained HTML page from ``prune --report-json`` files,
checked in a real headless browser (Chromium: it renders, the screenshot is not blank, the
numbers in the rendered page equal the JSON), and the sparsity visualiser's data against
numpy (channel norms, magnitude masks) and the textbook effect (Wanda keeps more of the
outlier channels' weights than magnitude)."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import realdata
from sparseforge import cli
from sparseforge import models as sm
from sparseforge import report as rp
from sparseforge.models.llama import Hooks

STORIES = realdata.stories260k_path()
pytestmark = pytest.mark.skipif(STORIES is None, reason="stories260K not found")
TINY = None if STORIES is None else STORIES.parent.parent / "tinystories-valid-excerpt"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three prune runs on stories260K with --eval and --report-json (in process)."""
    assert STORIES is not None
    assert TINY is not None
    d = tmp_path_factory.mktemp("runs")
    text = (TINY / "tinystories_val.txt").read_text()
    (d / "calib.txt").write_text(text[:20000])
    (d / "eval.txt").write_text(text[-40000:])
    out = []
    for method, sparsity in (("magnitude", "0.5"), ("wanda", "0.5"), ("wanda", "0.7")):
        path = d / f"{method}{sparsity}.json"
        rc = cli.main(
            ["prune", str(STORIES), "--method", method, "--sparsity", sparsity, "--calib",
             str(d / "calib.txt"), "--nsamples", "4", "--seqlen", "128", "--eval",
             "--eval-text", str(d / "eval.txt"), "--eval-seqlen", "128", "--max-windows", "4",
             "--report-json", str(path), "--quiet", "--threads", "1"]
        )  # fmt: skip
        assert rc == 0
        out.append(path)
    return out


@pytest.fixture(scope="module")
def visual() -> dict[str, Any]:
    assert STORIES is not None
    model = sm.load(STORIES, linear_backend="sparseforge", num_threads=1)
    ids = np.random.default_rng(0).integers(3, 512, size=(3, 96))
    return rp.layer_visual(model, ids, layer="model.layers.2.mlp.down_proj.weight")


def test_visualiser_data_against_numpy(visual: dict[str, Any]) -> None:
    assert STORIES is not None
    model = sm.load(STORIES, num_threads=1)
    name = visual["layer"]
    ids = np.random.default_rng(0).integers(3, 512, size=(3, 96))
    xs: list[np.ndarray] = []
    hooks = Hooks(linear_input=lambda n, x: xs.append(x.copy()) if n == name else None)
    for w in ids:
        model.forward(w, hooks=hooks)
    X = np.concatenate(xs).astype(np.float64)
    norms = np.sqrt((X**2).mean(axis=0))
    c0, c1 = visual["columns"]
    np.testing.assert_allclose(visual["norms"], norms[c0:c1], rtol=1e-5)
    assert c1 - c0 == 48
    assert c0 <= int(np.argmax(norms)) < c1  # the tile holds the strongest channel
    W = np.asarray(model.weight(name), dtype=np.float32)
    # magnitude 50% per row: the reference drops the 50% smallest |w| of each row (stable)
    order = np.argsort(np.abs(W), axis=1, kind="stable")[:, : W.shape[1] // 2]
    keep = np.ones(W.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=1)
    rows = visual["rows"]
    np.testing.assert_array_equal(
        visual["masks"]["magnitude 50%"], keep[np.ix_(rows, range(c0, c1))]
    )
    np.testing.assert_array_equal(visual["weights"], W[np.ix_(rows, range(c0, c1))])
    # outlier channels: magnitude drops about half of their weights, Wanda keeps most
    ko = visual["kept_outlier"]
    assert ko["magnitude 50%"] < 0.65
    assert ko["Wanda 50%"] > ko["magnitude 50%"] + 0.2
    assert visual["kept_other"]["Wanda 50%"] < 0.5  # ... and pays for it elsewhere


def test_load_runs_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a report written by"):
        rp.load_runs([tmp_path / "x.json"])
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(ValueError, match="not a JSON report"):
        rp.load_runs([tmp_path / "y.json"])
    with pytest.raises(ValueError, match="no such file"):
        rp.load_runs([tmp_path / "z.json"])


def _cells(page: str, table_id: str, cls: str) -> list[str]:
    m = re.search(rf"<table[^>]*id=\"?'?{table_id}\"?'?[^>]*>(.*?)</table>", page, re.S)
    assert m, table_id
    return [
        html.unescape(c) for c in re.findall(rf"<td class=\"?'?{cls}\"?'?>(.*?)</td>", m.group(1))
    ]


def test_report_page_in_a_headless_browser(
    runs: list[Path], visual: dict[str, Any], tmp_path: Path
) -> None:
    loaded = rp.load_runs(runs)
    page = tmp_path / "report.html"
    rp.write_report(page, loaded, visual)
    text = page.read_text()
    # self-contained: nothing fetched (the only URL is SVG's namespace)
    assert not re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", text)
    assert "<script" not in text
    assert "<link" not in text
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    shot = tmp_path / "shot.png"
    subprocess.run(
        [exe, *flags, "--window-size=1400,1800", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    # the rendered DOM carries the JSON's numbers
    data = [json.loads(p.read_text()) for p in runs]
    assert _cells(dom, "summary", "sparsity") == [
        rp.fmt_sparsity(d["prune"]["overall_sparsity"]) for d in data
    ]
    assert _cells(dom, "summary", "ppl-dense") == [
        rp.fmt_ppl(d["perplexity"]["dense"]["ppl"]) for d in data
    ]
    assert _cells(dom, "summary", "ppl-pruned") == [
        rp.fmt_ppl(d["perplexity"]["pruned"]["ppl"]) for d in data
    ]
    for i, d in enumerate(data):
        layers = d["prune"]["layers"]
        assert _cells(dom, f"layers-{i}", "sparsity") == [
            rp.fmt_sparsity(x["sparsity"]) for x in layers
        ]
        assert _cells(dom, f"layers-{i}", "error") == [rp.fmt_error(x["error"]) for x in layers]
        assert len(layers) == 35
    assert float(_cells(dom, "summary", "ppl-pruned")[1]) == pytest.approx(
        data[1]["perplexity"]["pruned"]["ppl"], rel=1e-4
    )
    assert "<svg" in dom
    assert "Sparsity against perplexity" in dom
    assert "What each method keeps" in dom
    # the screenshot is a page, not a blank: many colours, mostly white background
    Image = pytest.importorskip("PIL.Image")  # Pillow: matplotlib's dependency
    img = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    assert img.shape[:2] == (1800, 1400)
    non_white = (img.sum(axis=2) < 740).mean()
    assert 0.03 < non_white < 0.6, non_white
    colours = {tuple(c) for c in img[::7, ::7].reshape(-1, 3)}
    assert len(colours) > 50
    # the visualiser's red outlier bars and blue kept weights are drawn
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    blue = (img[..., 2] > 120) & (img[..., 0] < 80)
    assert red.sum() > 100
    assert blue.sum() > 100


def test_report_command(
    runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    args = cli.build_parser().parse_args(
        ["report", *map(str, runs), "--out", str(out), "--model", str(STORIES), "--nsamples",
         "2", "--seqlen", "64", "--threads", "1"]
    )  # fmt: skip
    said = io.StringIO()
    assert args.func(args, out=said) == 0
    assert "outlier-channel weights kept" in said.getvalue()
    assert out.stat().st_size > 10000
    assert "What each method keeps" in out.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    rc = cli.main(["report", str(runs[0]), "--out", str(tmp_path / "missing" / "r.html")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
