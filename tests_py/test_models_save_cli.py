"""Saving pruned models (sf.models.save / load), the model commands of the CLI (prune,
eval, demo), Hooks.linear and the DecodeCache protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import realdata
import sparseforge as sf
import tinymodels
from sparseforge import models as sm

STORIES = realdata.stories260k_path()
needs_stories = realdata.needs_stories
TINY = None if STORIES is None else STORIES.parent.parent / "tinystories-valid-excerpt"
TINY_TEXT = None if TINY is None else TINY / "tinystories_val.txt"
# The CLI finds stories260k through $SPARSEFORGE_DATA (an installed package has no checkout
# beside it).
DATA_ENV = {} if STORIES is None else {"SPARSEFORGE_DATA": str(STORIES.parent.parent)}


def random_model(seed: int = 0, **over: Any) -> sm.LlamaModel:
    fields: dict[str, Any] = dict(dim=32, hidden_dim=64, vocab_size=50)
    fields.update(over)
    return tinymodels.random_model(seed, linear_backend="sparseforge", **fields)


# -- save / load ---------------------------------------------------------------------------


def test_save_picks_the_smallest_format_and_round_trips(tmp_path: Path) -> None:
    m = random_model(dim=64, hidden_dim=128, n_heads=4, n_kv_heads=4)
    ids = [3, 14, 15, 9, 26, 5, 35, 8]
    names = m.linear_names(0) + m.linear_names(1)
    for i, n in enumerate(names):
        W = np.ascontiguousarray(m.weight(n))
        if i % 3 == 0:
            m.set_weight(n, sf.prune.magnitude(W, pattern="2:4").weight)
        elif i % 3 == 1:
            m.set_weight(n, sf.prune.magnitude(W, 0.7).weight)  # unstructured
    m.set_weight(
        names[-1],
        sf.format.NMTensor.from_dense(np.asarray(m.weight(names[-1])), "2:4", prune="magnitude"),
    )
    before = m.forward(ids)
    rep = sm.save(m, tmp_path / "m.sfm")
    assert rep.file_bytes == os.path.getsize(tmp_path / "m.sfm")
    # 14 block linears: i % 3 == 0 -> 2:4 (5), == 1 -> bitmap at 70% (4), == 2 dense (4),
    # the last one given compressed (an NMTensor) is stored as it is; lm_head stays dense.
    assert rep.formats == {"nm2:4": 5, "bitmap": 4, "dense": 5, "NMTensor": 1}, rep.formats
    assert rep.file_bytes < rep.dense_bytes
    loaded = sm.load(tmp_path / "m.sfm", linear_backend="sparseforge")
    assert loaded.config == m.config
    for n in names:
        w = loaded.weight(n)
        dense = w if isinstance(w, np.ndarray) else w.to_dense()
        ref = m.weight(n)
        ref = ref if isinstance(ref, np.ndarray) else ref.to_dense()
        np.testing.assert_array_equal(dense, ref)
    np.testing.assert_allclose(loaded.forward(ids), before, rtol=0, atol=1e-5)
    # uncompressed and bfloat16 variants
    plain = sm.save(m, tmp_path / "plain.sfm", compress=False)
    assert plain.formats == {"dense": 14, "NMTensor": 1}
    assert plain.file_bytes > rep.file_bytes
    half = sm.save(m, tmp_path / "half.sfm", dtype="bfloat16")
    assert half.file_bytes < 0.6 * rep.file_bytes + 4096
    hb = sm.load(tmp_path / "half.sfm", linear_backend="sparseforge")
    assert str(np.asarray(hb.weight("model.norm.weight")).dtype) == "bfloat16"


def test_saved_file_errors(tmp_path: Path) -> None:
    m = random_model()
    path = tmp_path / "m.sfm"
    sm.save(m, path)
    raw = path.read_bytes()
    (tmp_path / "trunc.sfm").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"trunc\.sfm"):
        sm.load_saved(tmp_path / "trunc.sfm")
    sf.save(tmp_path / "arrays.safetensors", {"a": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match=r"arrays\.safetensors: not a sparseforge model file"):
        sm.load_saved(tmp_path / "arrays.safetensors")
    with pytest.raises(ValueError, match="not a recognised model"):
        sm.load(tmp_path / "arrays.safetensors")
    with pytest.raises(ValueError, match="dtype: expected one of"):
        sm.save(m, tmp_path / "x.sfm", dtype="float64")
    with pytest.raises(TypeError, match="model: expected a LlamaModel"):
        sm.save({}, tmp_path / "x.sfm")  # type: ignore[arg-type]
    assert not (tmp_path / "x.sfm").exists()


@needs_stories
def test_pruned_stories260k_saves_small_and_reloads_with_the_same_perplexity(
    tmp_path: Path,
) -> None:
    assert STORIES is not None
    assert TINY_TEXT is not None
    m = sm.load(STORIES, linear_backend="sparseforge")
    text = TINY_TEXT.read_text()
    sm.prune(m, text[:20000], method="wanda", pattern="2:4", nsamples=8, seqlen=128, progress=False)
    ev = text[-20000:]
    before = sm.perplexity(m, ev, seqlen=256, max_windows=4)
    rep = sm.save(m, tmp_path / "s.sfm")
    assert rep.formats == {"nm2:4": 35}
    # 2:4 float32: values 1/2 + 4-bit codes 1/32 of dense for the linears; the 512x64
    # embedding and the norms stay dense.
    linears = sum(int(np.prod(m.weight(n).shape)) * 4 for i in range(5) for n in m.linear_names(i))
    other = rep.dense_bytes - linears
    assert rep.file_bytes < other + linears * (0.5 + 1 / 32) + 64 * 1024
    loaded = sm.load(tmp_path / "s.sfm", linear_backend="sparseforge")
    assert loaded.tokenizer is not None
    assert m.tokenizer is not None
    assert loaded.tokenizer.encode("Once upon") == m.tokenizer.encode("Once upon")
    after = sm.perplexity(loaded, ev, seqlen=256, max_windows=4)
    assert after.tokens_scored == before.tokens_scored
    assert abs(after.ppl - before.ppl) <= 1e-4 * before.ppl


def test_hf_tokenizer_round_trips(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from sparseforge.models.hf_tokenizer import HFTokenizer

    vocab = {c: i for i, c in enumerate(["<unk>", "<s>", "</s>", "a", "b", "ab", " "])}
    backend = tokenizers.Tokenizer(
        tokenizers.models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>")
    )
    tok = HFTokenizer(backend, bos_id=1, eos_id=2, name="tiny")
    m = random_model()
    m.tokenizer = tok
    sm.save(m, tmp_path / "t.sfm")
    back = sm.load(tmp_path / "t.sfm").tokenizer
    assert back is not None
    assert back.encode("abab a") == tok.encode("abab a") == [1, 5, 5, 6, 3]
    assert (back.bos_id, back.eos_id, back.vocab_size) == (1, 2, 7)


# -- Hooks.linear and DecodeCache --------------------------------------------------------


def test_linear_hook_replaces_the_linear() -> None:
    m = random_model(seed=1)
    ids = [1, 2, 3, 4, 5]
    base = m.forward(ids)
    calls: list[str] = []

    def same(name: str, x: np.ndarray) -> np.ndarray:
        calls.append(name)
        return (x.astype(np.float64) @ np.asarray(m.weight(name), np.float64).T).astype(np.float32)

    np.testing.assert_allclose(m.forward(ids, hooks=sm.Hooks(linear=same)), base, atol=1e-5)
    assert calls == m.linear_names(0) + m.linear_names(1)
    # zeroing o_proj's output through the hook == a zero o_proj weight
    target = "model.layers.1.self_attn.o_proj.weight"

    def zero_o(name: str, x: np.ndarray) -> np.ndarray | None:
        return np.zeros((x.shape[0], 32), np.float32) if name == target else None

    hooked = m.forward(ids, hooks=sm.Hooks(linear=zero_o))
    m.set_weight(target, np.zeros((32, 32), np.float32))
    np.testing.assert_array_equal(m.forward(ids), hooked)
    with pytest.raises(
        ValueError, match=r"linear: the hook for model\.layers\.0\.self_attn\.q_proj"
    ):
        m.forward(ids, hooks=sm.Hooks(linear=lambda n, x: x[:, :3]))


class CountingCache:
    """A DecodeCache that delegates to KVCache and records the calls."""

    def __init__(self, config: sm.LlamaConfig, capacity: int) -> None:
        self.inner = sm.KVCache(config, capacity)
        self.calls: list[tuple[str, int]] = []

    @property
    def length(self) -> int:
        return self.inner.length

    def check_model(self, config: sm.LlamaConfig) -> None:
        self.inner.check_model(config)

    def reserve(self, T: int) -> None:
        self.calls.append(("reserve", T))
        self.inner.reserve(T)

    def attend(self, block: int, q: Any, k: Any, v: Any, scale: float, num_threads: int) -> Any:
        self.calls.append(("attend", block))
        return self.inner.attend(block, q, k, v, scale, num_threads)

    def advance(self, T: int) -> None:
        self.calls.append(("advance", T))
        self.inner.advance(T)


def test_any_decode_cache_drives_the_decode_loop() -> None:
    m = random_model(seed=2)
    ids = [5, 6, 7, 8, 9, 10]
    full = m.forward(ids)
    cache = CountingCache(m.config, 16)
    assert isinstance(cache, sm.DecodeCache)
    out = [m.step(ids[:4], cache)]
    out += [m.step([t], cache) for t in ids[4:]]
    np.testing.assert_allclose(np.concatenate(out), full, rtol=0, atol=1e-5)
    assert cache.calls[:4] == [("reserve", 4), ("reserve", 4), ("attend", 0), ("reserve", 4)]
    assert cache.calls.count(("advance", 1)) == 2
    small = sm.KVCache(m.config, 4)
    m.step(ids[:4], small)
    with pytest.raises(ValueError, match="do not fit the cache"):
        m.step([1], small)
    with pytest.raises(TypeError, match="expected a KVCache or another DecodeCache"):
        m.step([1], object())  # type: ignore[arg-type]


# -- CLI -----------------------------------------------------------------------------------


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sparseforge", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd or Path(__file__).parent,
        env={**os.environ, "OMP_NUM_THREADS": "2", **DATA_ENV},
    )


@needs_stories
def test_cli_prune_eval_round_trip(tmp_path: Path) -> None:
    assert STORIES is not None
    assert TINY_TEXT is not None
    calib = tmp_path / "calib.txt"
    text = TINY_TEXT.read_text()
    calib.write_text(text[:15000])
    ev = tmp_path / "eval.txt"
    ev.write_text(text[-15000:])
    out = tmp_path / "pruned.sfm"
    report_json = tmp_path / "run.json"
    res = run(
        "prune", str(STORIES), "--method", "sparsegpt", "--sparsity", "0.5", "--calib",
        str(calib), "--nsamples", "4", "--seqlen", "128", "--out", str(out), "--quiet",
        "--eval", "--eval-text", str(ev), "--eval-seqlen", "256", "--max-windows", "3",
        "--report-json", str(report_json),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""  # --quiet
    # the dense baseline beside the pruned result, and both in the JSON report
    dense_line = next(x for x in res.stdout.splitlines() if x.startswith("dense model:"))
    dense_ppl = float(dense_line.split("perplexity ")[1].split()[0])
    m = sm.load(STORIES)
    ref = sm.perplexity(m, ev.read_text(), seqlen=256, max_windows=3)
    assert dense_ppl == pytest.approx(ref.ppl, rel=1e-4)
    data = json.loads(report_json.read_text())
    assert data["perplexity"]["dense"]["ppl"] == pytest.approx(ref.ppl, rel=1e-6)
    assert data["perplexity"]["dense"]["tokens_scored"] == 765
    summary = next(x for x in res.stdout.splitlines() if x.startswith("perplexity: dense"))
    assert f"dense {data['perplexity']['dense']['ppl']:.4f}" in summary
    assert f"pruned {data['perplexity']['pruned']['ppl']:.4f}" in summary
    assert data["prune"]["overall_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(data["prune"]["layers"]) == 35
    assert data["saved"]["path"] == str(out)
    assert data["saved"]["file_bytes"] == out.stat().st_size
    assert sm.PruneReport.from_dict(data["prune"]).to_dict() == data["prune"]
    overall = float(res.stdout.split("overall sparsity of the linears ")[1].split()[0])
    assert overall == pytest.approx(0.5, abs=1e-3)  # SparseGPT's masks are per 128-column block
    assert f"saved {out}" in res.stdout
    assert "bitmap 35" in res.stdout
    pruned_line = next(line for line in res.stdout.splitlines() if line.startswith("pruned model"))
    res2 = run("eval", str(out), "--text", str(ev), "--seqlen", "256", "--max-windows", "3")
    assert res2.returncode == 0, res2.stderr
    ppl1 = float(pruned_line.split("perplexity ")[1].split()[0])
    ppl2 = float(res2.stdout.split("perplexity ")[1].split()[0])
    assert ppl1 == pytest.approx(ppl2, rel=1e-4)
    assert data["perplexity"]["pruned"]["ppl"] == pytest.approx(ppl2, rel=1e-4)
    assert "765 tokens scored" in res2.stdout  # 3 windows x 255


@needs_stories
def test_cli_demo_on_stories260k(tmp_path: Path) -> None:
    assert TINY_TEXT is not None
    res = run(
        "demo", "--model", "stories260k", "--text", str(TINY_TEXT), "--methods",
        "magnitude,wanda", "--patterns", "50%,4:8", "--max-windows", "2", "--nsamples", "2",
        "--calib-seqlen", "64", "--quiet", "--save-dir", str(tmp_path / "new" / "dir"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any("calibration: the Python language reference" in x for x in lines)
    rows = {
        tuple(x.split()[:2]): x.split()
        for x in lines
        if x.split()[:1] in (["dense"], ["magnitude"], ["wanda"], ["4:8"])
    }
    assert float(rows[("dense", "-")][2]) < float(rows[("wanda", "50%")][2])
    assert float(rows[("wanda", "50%")][2]) < float(rows[("magnitude", "50%")][2])
    assert rows[("4:8", "n/a")]  # stories260K's down_proj has 172 inputs
    saved = sorted(p.name for p in (tmp_path / "new" / "dir").iterdir())  # --save-dir created it
    assert saved == ["magnitude-50pct.sfm", "wanda-50pct.sfm"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "no/such/model.bin"], "does not exist"),
        (["prune", "stories260k", "--sparsity", "1.5", "--nsamples", "2"], "sparsity"),
        (["prune", "stories260k", "--nsamples", "2"], "--sparsity or --pattern"),
        (["eval", "stories260k", "--text", "no/such.txt"], "--text: no/such.txt is not a file"),
        (["demo", "--patterns", "3:7"], "expected a comma-separated subset"),
    ],
)
def test_cli_bad_input(args: list[str], needle: str) -> None:
    if "stories260k" in args and STORIES is None:
        pytest.skip("stories260K not found")
    res = run(*args)
    assert res.returncode == 2, res.stdout
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


@needs_stories
def test_eval_text_shorter_than_a_window(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Once upon a time.")
    res = run("eval", "stories260k", "--text", str(short), "--seqlen", "256")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "window" in res.stderr


def test_model_names_resolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sparseforge import _model_cli
    from sparseforge.models import gguf

    monkeypatch.setattr(gguf, "find_smollm2", lambda: None)
    with pytest.raises(ValueError, match="smollm2 is not installed"):
        _model_cli.resolve_model("smollm2")
    fake = tmp_path / "x.gguf"
    monkeypatch.setattr(gguf, "find_smollm2", lambda: fake)
    assert _model_cli.resolve_model("smollm2") == fake
    assert _model_cli.resolve_model(None) == fake
    assert _model_cli.resolve_model("some/path.bin") == Path("some/path.bin")
