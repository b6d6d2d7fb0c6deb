"""Progress bars (sparseforge._progress): tqdm when installed, a plain stderr fallback,
quiet when asked or when stderr is not a terminal unless forced; and the long jobs that
use them (perplexity, calibration, pruning, TEAL's greedy search) on stories260K."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import realdata
from sparseforge import _progress
from sparseforge import activation as act
from sparseforge import models as sm


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "USE_TQDM", False)
    monkeypatch.delenv(_progress.ENV, raising=False)


def _run(n: int, **kw: object) -> str:
    out = kw.pop("stream", None) or io.StringIO()
    with _progress.bar(n, "job", unit="steps", stream=out, **kw) as b:  # type: ignore[arg-type]
        for i in range(n):
            b.note(f"value {i}")
            b.update()
    return str(out.getvalue())  # type: ignore[attr-defined]


def test_plain_lines_when_forced(plain: None) -> None:
    text = _run(5, progress=True)
    lines = text.splitlines()
    # not a terminal: the first and the last step always, the rest at most once a second
    assert re.fullmatch(r"job: 1/5 steps \[0\.\d s, ~\d+\.\d s left\] value 0", lines[0])
    assert re.fullmatch(r"job: 5/5 steps \[0\.\d s\] value 4", lines[-1])
    assert 2 <= len(lines) <= 5
    assert "\r" not in text


def test_plain_on_a_terminal_rewrites_one_line(plain: None) -> None:
    text = _run(3, stream=TTY())  # progress=None and a terminal: shown
    assert text.startswith("\rjob: 1/3 steps")
    assert text.endswith("value 2\n")
    assert text.count("\n") == 1
    assert "job: 3/3 steps" in text.rsplit("\r", 1)[1]


def test_inner_bar_is_erased_on_a_terminal(plain: None) -> None:
    tty = TTY()
    with _progress.bar(2, "outer", stream=tty) as outer:
        text_inner = _run(2, stream=tty)
        outer.update()
    assert not text_inner.endswith("\n")  # the inner bar cleaned its line up
    assert tty.getvalue().endswith("\n")


@pytest.mark.parametrize(
    ("progress", "env", "shown"),
    [
        (None, None, False),  # StringIO is not a terminal
        (None, "1", True),
        (None, "0", False),
        (True, "0", True),
        (False, "1", False),
        (False, None, False),
    ],
)
def test_when_shown(
    plain: None,
    monkeypatch: pytest.MonkeyPatch,
    progress: bool | None,
    env: str | None,
    shown: bool,
) -> None:
    if env is not None:
        monkeypatch.setenv(_progress.ENV, env)
    text = _run(4, progress=progress)
    assert (text != "") == shown
    if shown:
        assert "job: 4/4 steps" in text


def test_quiet_on_a_terminal(plain: None) -> None:
    assert _run(3, stream=TTY(), progress=False) == ""


def test_tqdm_backend() -> None:
    pytest.importorskip("tqdm")
    text = _run(5, progress=True)
    assert "job: 100%" in text
    assert "5/5" in text
    assert "value 4" in text


def test_write_keeps_a_terminal_bar_intact(plain: None) -> None:
    tty = TTY()
    with _progress.bar(2, "job", stream=tty) as b:
        b.update()
        _progress.write("a message", stream=tty)
        b.update()
    before, after = tty.getvalue().split("a message\n")
    first = before.split("\r")[1]
    assert first.startswith("job: 1/2 it")
    assert before.endswith("\r" + " " * len(first) + "\r")  # the bar's line was cleared
    assert after.startswith("\rjob: 1/2 it")  # and redrawn under the message
    assert after.endswith("job: 2/2 it [0.0 s]\n")


def test_bad_progress_argument() -> None:
    with pytest.raises(TypeError, match="progress: expected True, False or None, got int"):
        _progress.check_progress(1)


# -- the jobs ------------------------------------------------------------------------------

_BIN = realdata.stories260k_path()
needs_stories = realdata.needs_stories


@pytest.fixture(scope="module")
def model() -> sm.LlamaModel:
    assert _BIN is not None
    return sm.load(_BIN, linear_backend="sparseforge", num_threads=1)


@pytest.fixture(scope="module")
def ids(model: sm.LlamaModel) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(3, model.config.vocab_size, size=1200).astype(np.int64)


@needs_stories
def test_perplexity_progress(
    plain: None, model: sm.LlamaModel, ids: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    quiet = sm.perplexity(model, ids, seqlen=128, max_windows=4)
    assert capsys.readouterr().err == ""  # default: not a terminal, quiet
    shown = sm.perplexity(model, ids, seqlen=128, max_windows=4, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert shown == quiet
    assert err[-1].startswith("perplexity: 4/4 windows")
    assert err[-1].endswith(f"ppl {quiet.ppl:.3f}")  # the running value ends at the result
    with pytest.raises(TypeError, match="progress"):
        sm.perplexity(model, ids, seqlen=128, progress="yes")  # type: ignore[arg-type]


@needs_stories
def test_calibrate_and_greedy_progress(
    plain: None, model: sm.LlamaModel, ids: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    stats = act.calibrate(model, ids, seqlen=128, max_windows=3, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("calibrate: 3/3 windows")
    path = act.teal_greedy(
        model, stats, ids, seqlen=128, max_windows=1, base_step=0.2, max_sparsity=0.4,
        progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"TEAL greedy: {model.config.n_layers}/5 blocks")
    assert f"{len(path.steps[-1]) - 1} steps" in err[-1]
    calls: list[tuple[int, int]] = []
    act.teal_greedy(
        model, stats, ids, seqlen=128, max_windows=1, base_step=0.2, max_sparsity=0.4,
        progress=lambda i, n: calls.append((i, n)),
    )  # fmt: skip
    assert calls == [(i, 5) for i in range(1, 6)]
    assert capsys.readouterr().err == ""  # a callback replaces the bar


def test_progress_goes_to_stderr_only(plain: None, capsys: pytest.CaptureFixture[str]) -> None:
    with _progress.bar(2, "job", progress=True) as b:
        b.update(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "job: 2/2" in captured.err
    assert sys.stderr is not None


def test_a_bar_left_open_by_an_exception_does_not_nest_the_next(plain: None) -> None:
    import gc

    def fails() -> None:
        b = _progress.bar(3, "broken", stream=TTY())
        b.update()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    gc.collect()
    text = _run(2, stream=TTY())
    assert text.endswith("\n")  # kept as a top-level bar, not erased as a nested one


def test_exports_save_and_structured_progress(
    plain: None, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """export_hf / export_gguf / save count tensors, structured.importance windows and
    slicegpt blocks; quiet unless asked (stderr is not a terminal here), never on stdout."""
    import tinymodels
    from sparseforge import structured

    pytest.importorskip("gguf")
    model = tinymodels.random_model(0)
    n_tensors = len(model.config.weight_shapes())
    calib = np.random.default_rng(0).integers(3, 80, size=(3, 16))
    jobs = [
        (lambda p: sm.export_hf(model, tmp_path / f"hf{p}", progress=p), "export_hf", n_tensors),
        (
            lambda p: sm.export_gguf(model, tmp_path / f"m{p}.gguf", progress=p),
            "export_gguf",
            n_tensors - ("lm_head.weight" in model._weights and model.config.tied_embeddings),
        ),
        (lambda p: sm.save(model, tmp_path / f"s{p}.sfm", progress=p), "save", n_tensors),
        (lambda p: structured.importance(model, calib, progress=p), "importance", 3),
        (lambda p: structured.slicegpt(model, calib, dim=56, progress=p), "slicegpt", 2),
    ]
    for job, name, total in jobs:
        job(None)
        assert capsys.readouterr().err == "", name
        job(True)
        captured = capsys.readouterr()
        assert captured.out == ""
        last = captured.err.splitlines()[-1]
        assert name in last, captured.err
        assert f" {total}/{total} " in last, captured.err
    for bad in ("yes", 1):
        with pytest.raises(TypeError, match="progress"):
            sm.export_hf(model, tmp_path / "bad", progress=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


def test_export_cli_quiet(tmp_path: Any) -> None:
    """`sparseforge export ... --quiet` prints no progress even when forced by the
    environment; without it (forced) the tensors are counted on stderr."""
    stories = realdata.stories260k_path()
    if stories is None:
        pytest.skip("stories260K not found (../shared/data or SPARSEFORGE_DATA)")
    env = {**os.environ, _progress.ENV: "1"}
    for quiet in (True, False):
        out = tmp_path / f"m{quiet}.gguf"
        cmd = [sys.executable, "-m", "sparseforge", "export", str(stories), "--format", "gguf"]
        cmd += ["--out", str(out)] + (["--quiet"] if quiet else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        assert out.is_file()
        assert ("export_gguf" in r.stderr) is not quiet, r.stderr
