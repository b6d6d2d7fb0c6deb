"""sparseforge.torch.prune_model from text and a Hugging Face tokenizer (the same windows as
cut by hand from the tokenizer's ids), its progress bar, its errors, and a model on another
device (CUDA, when present)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import realdata
from sparseforge import _progress
from sparseforge import models as sm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import sparseforge.torch as sft  # noqa: E402

STORIES = realdata.stories260k_path()
pytestmark = pytest.mark.skipif(STORIES is None, reason="stories260K not found")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert STORIES is not None
    d = tmp_path_factory.mktemp("hf") / "stories260k"
    sm.export_hf(sm.load(STORIES), d)
    return d


@pytest.fixture(scope="module")
def text() -> str:
    assert STORIES is not None
    p = STORIES.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p.read_text(encoding="utf-8")[:30000]


def _model(hf_dir: Path) -> object:
    m = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    m.eval()
    return m


def _weights(model: object) -> list[np.ndarray]:
    layers = sft.decoder_layers(model)
    return [
        mod.weight.detach().cpu().numpy().copy()
        for layer in layers
        for mod in layer.modules()
        if isinstance(mod, torch.nn.Linear)
    ]


def test_text_and_tokenizer_give_the_hand_cut_windows(hf_dir: Path, text: str) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    a, b = _model(hf_dir), _model(hf_dir)
    ra = sft.prune_model(
        a, text, tokenizer=tok, nsamples=4, seqlen=64, seed=3, method="wanda", sparsity=0.5,
        progress=False,
    )  # fmt: skip
    ids = np.asarray(tok(text)["input_ids"], dtype=np.int64)
    starts = np.random.default_rng(3).integers(0, ids.size - 64 + 1, size=4)
    windows = np.stack([ids[s : s + 64] for s in starts])
    np.testing.assert_array_equal(
        sft.text_windows(text, tok, nsamples=4, seqlen=64, seed=3), windows
    )
    rb = sft.prune_model(b, windows, method="wanda", sparsity=0.5, progress=False)
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert (ra.nsamples, ra.seqlen) == (4, 64)
    assert [x.error for x in ra.layers] == [x.error for x in rb.layers]
    # a list of documents is joined with a blank line
    docs = text.split("\n\n")[:40]
    np.testing.assert_array_equal(
        sft.text_windows(docs, tok, nsamples=2, seqlen=32, seed=1),
        sft.text_windows("\n\n".join(docs), tok, nsamples=2, seqlen=32, seed=1),
    )


def test_text_errors(hf_dir: Path, text: str) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    m = _model(hf_dir)
    before = _weights(m)
    with pytest.raises(TypeError, match="tokenizer: a text calib needs a tokenizer"):
        sft.prune_model(m, text, progress=False)
    with pytest.raises(TypeError, match="tokenizer: given, but calib is not a text"):
        sft.prune_model(m, np.zeros((2, 8), np.int64), tokenizer=tok, progress=False)
    with pytest.raises(ValueError, match="shorter than one window of seqlen=4096"):
        sft.prune_model(m, text[:2000], tokenizer=tok, seqlen=4096, progress=False)
    with pytest.raises(ValueError, match="nsamples: expected an int >= 1"):
        sft.prune_model(m, text, tokenizer=tok, nsamples=0, progress=False)
    for w0, w1 in zip(before, _weights(m), strict=True):  # nothing was touched
        np.testing.assert_array_equal(w0, w1)


def test_progress_bar(
    hf_dir: Path, text: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_progress, "USE_TQDM", False)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    a, b = _model(hf_dir), _model(hf_dir)
    capsys.readouterr()  # transformers' own loading bars
    sft.prune_model(a, text, tokenizer=tok, nsamples=2, seqlen=32, method="magnitude")
    assert capsys.readouterr().err == ""  # default: not a terminal
    sft.prune_model(
        b, text, tokenizer=tok, nsamples=2, seqlen=32, method="magnitude", progress=True
    )  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sparseforge.torch prune [magnitude]: 5/5 layers")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_model_on_a_cuda_device(hf_dir: Path, text: str) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    cpu, gpu = _model(hf_dir), _model(hf_dir).to("cuda")
    kw = {"tokenizer": tok, "nsamples": 4, "seqlen": 64, "method": "sparsegpt", "sparsity": 0.5}
    sft.prune_model(cpu, text, progress=False, **kw)
    sft.prune_model(gpu, text, progress=False, **kw)
    assert next(gpu.parameters()).device.type == "cuda"
    for wc, wg in zip(_weights(cpu), _weights(gpu), strict=True):
        assert ((wc == 0) == (wg == 0)).mean() > 0.99  # GPU float32 rounding flips a few ties
        np.testing.assert_allclose(wg, wc, atol=1e-3)
