"""Tokenizers from Hugging Face ``tokenizer.json`` files and from GGUF metadata.

Both are built with the Hugging Face ``tokenizers`` library (``pip install tokenizers``),
imported lazily, and wrapped in :class:`HFTokenizer`, which satisfies sparseforge's
``Tokenizer`` protocol (``vocab_size``, ``bos_id``, ``eos_id``, ``encode``, ``decode``,
``name``).

GGUF files describe their tokenizer in ``tokenizer.ggml.*`` metadata. Two models are
supported, the ones Llama-family files use:

* ``gpt2``: byte-level BPE (``tokens`` + ``merges``). Text is first split by the
  pre-tokenizer that ``tokenizer.ggml.pre`` names, the way llama.cpp does it
  (``llama-vocab.cpp``): GPT-2's regex by default, single digits first for
  ``smollm``/``starcoder``-style vocabularies, the Llama 3 and Qwen2 regexes for theirs.
  An unknown ``pre`` is refused rather than guessed: the wrong split changes the ids.
* ``llama``: SentencePiece BPE (``tokens`` + ``scores``, byte fallback ``<0xNN>``), merges
  recovered from the scores the way ``transformers`` converts SentencePiece models.

Tokens the file marks as control (``token_type`` 3, e.g. ``<|im_start|>``) become special
tokens that always encode whole; user-defined ones (4) become plain added tokens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import load_json

__all__ = ["HFTokenizer", "gguf_tokenizer", "import_tokenizers"]

# token_type values in tokenizer.ggml.token_type (llama.cpp's llama_token_type)
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Pre-tokenizer regexes, by tokenizer.ggml.pre (llama.cpp llama-vocab.cpp).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_GPT2 = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais")
_PRE_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_PRE_LLAMA3 = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen")
SUPPORTED_PRE = _PRE_GPT2 + _PRE_DIGITS_THEN_GPT2 + _PRE_LLAMA3 + _PRE_QWEN2


def import_tokenizers() -> Any:
    """The ``tokenizers`` module, or ImportError saying how to install it."""
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - exercised only without the package
        raise ImportError(
            "this tokenizer needs the Hugging Face 'tokenizers' package: pip install tokenizers"
            " (or, from a sparseforge checkout, pip install '.[models]')"
        ) from e
    return tokenizers


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind the sparseforge ``Tokenizer`` protocol.

    Parameters
    ----------
    backend : tokenizers.Tokenizer
        Encodes with ``add_special_tokens=False``: BOS/EOS are added by :meth:`encode`
        from ``bos_id``/``eos_id``, not by the backend's post-processor.
    bos_id : int or None
        The id :meth:`encode` prepends when ``bos=True``; None when the model is used
        without one (e.g. SmolLM2, whose files say ``add_bos_token = false``). The file's
        declared BOS token is kept in ``declared_bos_id`` either way.
    eos_id : int or None
    name : str
        For messages, e.g. ``"gguf:SmolLM2-135M-Instruct.Q4_1.gguf"``.
    vocab_size : int, optional
        Defaults to the backend's size including added tokens.
    declared_bos_id : int, optional
        The file's BOS token id (defaults to ``bos_id``).
    """

    def __init__(
        self,
        backend: Any,
        *,
        bos_id: int | None,
        eos_id: int | None,
        name: str,
        vocab_size: int | None = None,
        declared_bos_id: int | None = None,
    ) -> None:
        self.backend = backend
        self.vocab_size = int(
            backend.get_vocab_size(with_added_tokens=True) if vocab_size is None else vocab_size
        )
        for what, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"{name}: {what}={value} outside the vocabulary [0, {self.vocab_size})"
                )
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.declared_bos_id = bos_id if declared_bos_id is None else declared_bos_id
        self.name = name
        # GGUF tokenizer entries of the source file (load_gguf sets them; export_gguf writes
        # them back unchanged), or None for tokenizers read from tokenizer.json.
        self.gguf_meta: dict[str, Any] | None = None

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text``; ``bos``/``eos`` add ``bos_id``/``eos_id`` when not None."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        ids: list[int] = list(self.backend.encode(text, add_special_tokens=False).ids)
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens (``<|im_end|>``, BOS...) are skipped, as the
        ``Tokenizer`` protocol says."""
        out = []
        for i, t in enumerate(ids):
            t = int(t)
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"ids[{i}]={t} outside the vocabulary [0, {self.vocab_size})")
            out.append(t)
        return str(self.backend.decode(out, skip_special_tokens=True))

    def token(self, token_id: int) -> str | None:
        """The vocabulary entry of ``token_id`` as stored (byte-level spelling)."""
        piece = self.backend.id_to_token(int(token_id))
        return None if piece is None else str(piece)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )

    # -- Hugging Face directories -------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> HFTokenizer:
        """The tokenizer of a Hugging Face model directory (``tokenizer.json``).

        BOS/EOS come from ``tokenizer_config.json`` (``bos_token``, ``eos_token``,
        ``add_bos_token``), else from ``config.json`` (``bos_token_id``,
        ``eos_token_id``); whether BOS is used, when no file says, is read off the
        backend's post-processor (does it prepend the BOS token?).

        Raises
        ------
        ValueError
            If ``tokenizer.json`` is missing or unreadable.
        """
        tokenizers = import_tokenizers()
        d = Path(directory)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{d}: no tokenizer.json (expected a Hugging Face tokenizer file)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable tokenizers file ({e})") from e
        tconf = _read_json_if_exists(d / "tokenizer_config.json")
        mconf = _read_json_if_exists(d / "config.json")

        def token_id(key: str) -> int | None:
            tok = tconf.get(key)
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str):
                found = backend.token_to_id(tok)
                if found is not None:
                    return int(found)
            value = mconf.get(f"{key}_id")
            if isinstance(value, list):
                value = value[0] if value else None
            return int(value) if isinstance(value, int) else None

        bos = token_id("bos_token")
        eos = token_id("eos_token")
        add_bos = tconf.get("add_bos_token")
        if not isinstance(add_bos, bool):
            plain = backend.encode("a", add_special_tokens=False).ids
            full = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos is not None and len(full) > len(plain) and full[0] == bos
        return cls(
            backend,
            bos_id=bos if add_bos else None,
            eos_id=eos,
            name=f"hf:{d.name}",
            declared_bos_id=bos,
        )


def _read_json_if_exists(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = load_json(path, path.name)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# -- GGUF ------------------------------------------------------------------------------


def gguf_tokenizer(meta: Mapping[str, Any], *, source: str) -> HFTokenizer:
    """Build the tokenizer a GGUF file embeds from its ``tokenizer.ggml.*`` metadata.

    Parameters
    ----------
    meta : mapping
        GGUF metadata, values already decoded (str, int, float, bool, lists of them).
    source : str
        The file, for messages.

    Raises
    ------
    ValueError
        If the metadata has no tokenizer, or names a model or pre-tokenizer this builder
        does not know.
    """
    tokenizers = import_tokenizers()
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or tokens is None:
        raise ValueError(f"{source}: no tokenizer in the file (tokenizer.ggml.model/tokens)")
    tokens = [str(t) for t in tokens]
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [1] * len(tokens))]
    if len(types) != len(tokens):
        raise ValueError(
            f"{source}: tokenizer.ggml.token_type has {len(types)} entries, "
            f"tokens has {len(tokens)}"
        )
    if model == "gpt2":
        backend = _byte_level_bpe(tokenizers, meta, tokens, types, source)
        default_add_bos = False
    elif model == "llama":
        backend = _sentencepiece_bpe(tokenizers, meta, tokens, types, source)
        default_add_bos = True
    else:
        raise ValueError(
            f"{source}: tokenizer.ggml.model={model!r} is not supported "
            "(expected 'gpt2' (byte-level BPE) or 'llama' (SentencePiece BPE)); "
            "load with tokenizer=False to get the weights alone"
        )

    def special(key: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{key}")
        return None if value is None else int(value)

    bos = special("bos_token_id")
    add_bos = meta.get("tokenizer.ggml.add_bos_token", default_add_bos)
    tok = HFTokenizer(
        backend,
        bos_id=bos if add_bos else None,
        eos_id=special("eos_token_id"),
        name=f"gguf:{source}",
        vocab_size=len(tokens),
        declared_bos_id=bos,
    )
    # The file's own tokenizer entries, for export_gguf to write back unchanged (a
    # SentencePiece vocabulary's scores have no other home here).
    tok.gguf_meta = {k: v for k, v in meta.items() if k.startswith("tokenizer.ggml.")}
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _add_marked_tokens(tokenizers: Any, backend: Any, tokens: list[str], types: list[int]) -> None:
    """Control tokens -> special added tokens; user-defined -> plain added tokens."""
    vocab = backend.get_vocab(with_added_tokens=False)
    control = [
        tokenizers.AddedToken(t, special=True, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty == _TOKEN_CONTROL and t in vocab
    ]
    user = [
        tokenizers.AddedToken(t, special=False, normalized=False)
        for t, ty in zip(tokens, types, strict=True)
        if ty == _TOKEN_USER_DEFINED and t in vocab
    ]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)


def _byte_level_bpe(
    tokenizers: Any, meta: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import Regex, decoders, models, pre_tokenizers

    merges_raw = meta.get("tokenizer.ggml.merges")
    if merges_raw is None:
        raise ValueError(f"{source}: a 'gpt2' tokenizer without tokenizer.ggml.merges")
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_GPT2:
        pre_tok: Any = byte_level
    elif pre in _PRE_DIGITS_THEN_GPT2:
        pre_tok = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _PRE_LLAMA3 or pre in _PRE_QWEN2:
        split = _LLAMA3_SPLIT if pre in _PRE_LLAMA3 else _QWEN2_SPLIT
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        raise ValueError(
            f"{source}: tokenizer.ggml.pre={pre!r} is not a known pre-tokenizer "
            f"(expected one of {', '.join(SUPPORTED_PRE)}); load with tokenizer=False "
            "to get the weights alone"
        )
    # Tokens are stored in the byte-level alphabet; a token spelled with other characters
    # (a mislabelled raw string) is respelled byte by byte, as transformers does.
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    # a repeated token keeps its last id, as in transformers' conversion
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    merges = []
    for i, m in enumerate(merges_raw):
        parts = str(m).split(" ")
        if len(parts) != 2:
            raise ValueError(f"{source}: tokenizer.ggml.merges[{i}]={m!r} is not 'left right'")
        merges.append((parts[0], parts[1]))
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tok
    backend.decoder = decoders.ByteLevel()
    _add_marked_tokens(tokenizers, backend, tokens, types)
    return backend


def _sentencepiece_bpe(
    tokenizers: Any, meta: Mapping[str, Any], tokens: list[str], types: list[int], source: str
) -> Any:
    from tokenizers import decoders, models, pre_tokenizers

    scores_raw = meta.get("tokenizer.ggml.scores")
    if scores_raw is None:
        raise ValueError(f"{source}: a 'llama' tokenizer without tokenizer.ggml.scores")
    scores = [float(s) for s in scores_raw]
    if len(scores) != len(tokens):
        raise ValueError(
            f"{source}: tokenizer.ggml.scores has {len(scores)} entries, tokens has {len(tokens)}"
        )
    vocab = {t: i for i, t in enumerate(tokens)}  # a repeated token keeps its last id
    merges = _merges_from_scores(vocab, dict(zip(tokens, scores, strict=True)))
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None else None
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)
    _add_marked_tokens(tokenizers, backend, tokens, types)
    return backend


def _merges_from_scores(
    vocab: Mapping[str, int], scores: Mapping[str, float]
) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by a scored vocabulary.

    Every split of a token into two vocabulary entries is a merge; merges are ranked by
    the merged token's score (higher first), ties by the pieces' lengths, then ids --
    the order ``transformers`` uses when it converts a SentencePiece model.
    """
    found: list[tuple[float, int, int, int, int, str, str]] = []
    for piece, score in scores.items():
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((vocab[left], vocab[right], left, right))
        local.sort()
        for il, ir, left, right in local:
            found.append((score, len(left), len(right), il, ir, left, right))
    # stable sort on (score, len(left), len(right)) descending keeps per-token id order
    order = sorted(range(len(found)), key=lambda j: found[j][:3], reverse=True)
    return [(found[j][5], found[j][6]) for j in order]
