"""Tokenizers: the :class:`Tokenizer` protocol every model loader returns, and llama2.c's
``tokenizer.bin`` / ``tok512.bin`` (:class:`Llama2cTokenizer`)."""

from __future__ import annotations

import heapq
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._io import open_regular

__all__ = ["Llama2cTokenizer", "Tokenizer", "check_token_ids"]


@runtime_checkable
class Tokenizer(Protocol):
    """What :class:`~sparseforge.models.LlamaModel` needs from a tokenizer.

    ``encode(text, bos=True)`` returns token ids starting with ``bos_id`` (when the
    tokenizer has one); ``decode(ids)`` returns text, skipping special tokens. ``name`` is
    used in messages (the file it came from).
    """

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


def check_token_ids(ids: Any, vocab_size: int, name: str = "tokens") -> np.ndarray:
    """``ids`` as a 1-D int64 array (a small copy), every id in ``[0, vocab_size)``.

    Raises TypeError for non-integers and ValueError (naming ``name``) for a wrong
    dimension or an id out of range. An empty sequence is allowed here; callers that need
    tokens check the length.
    """
    arr = np.asarray(ids)
    if arr.dtype == np.bool_ or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected integer token ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    out = arr.astype(np.int64)
    if out.size:
        lo, hi = int(out.min()), int(out.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            pos = int(np.argmax(out == bad))
            raise ValueError(
                f"{name}: token id {bad} at index {pos} is outside the vocabulary [0, {vocab_size})"
            )
    return out


_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")
_SPACE_AFTER_BYTE = re.compile(rb"[^ ] ")
# Cut before a space that follows a non-space: "a b  c" -> "a", " b", "  c".
_WORDS = re.compile(r"(?<=[^ ])(?= )")
_WORD_CACHE_MAX = 1 << 17


class Llama2cTokenizer:
    """llama2.c's BPE tokenizer, as ``run.c`` reads and runs it.

    File layout (little-endian): an int32 ``max_token_length``, then per token a float32
    score, an int32 byte length and that many bytes of the piece. Ids 0, 1, 2 are
    ``<unk>``, BOS and EOS; SentencePiece exports put the 256 byte-fallback pieces
    ``<0x00>``..``<0xFF>`` at ids 3..258.

    Parameters
    ----------
    path : str or PathLike
        The ``tokenizer.bin`` / ``tok512.bin`` file.
    vocab_size : int, optional
        Records expected (the model's vocabulary; the file does not store it). Without it
        records are read to the end of the file. A mismatch, a truncated record or trailing
        bytes raise ``ValueError`` naming the file.
    data : bytes, optional
        The file's contents, when they come from elsewhere (a model saved with
        :func:`sparseforge.models.save`); ``path`` then only names it. Kept as ``raw``.

    Notes
    -----
    ``encode`` is run.c's ``encode()`` exactly: optional BOS (id 1), a dummy-prefix ``" "``
    piece when the text is not empty, one piece per UTF-8 character or its bytes as
    byte-fallback ids (byte + 3), then repeatedly the adjacent pair whose merged piece is in
    the vocabulary with the highest score is merged (ties: the leftmost pair; scores must be
    above -1e10, run.c's starting best), optional EOS (id 2). A heap makes it O(n log n)
    instead of run.c's O(n^2) scan, with the same result; and when no piece holds a space
    after another byte (true of SentencePiece vocabularies such as llama2.c's), no merge
    can cross a word boundary, so the text is merged word by word with a cache of words
    already seen — the same ids, about ten times faster on English text.
    ``decode`` is run.c's ``decode()`` over the sequence: a piece right after BOS loses its
    leading space, ``<0xXX>`` pieces become the raw byte, BOS/EOS are skipped, and the
    bytes are decoded as UTF-8 (invalid sequences become U+FFFD).
    """

    BOS = 1
    EOS = 2

    def __init__(
        self,
        path: str | os.PathLike[str],
        vocab_size: int | None = None,
        *,
        data: bytes | None = None,
    ) -> None:
        self._path = Path(path)
        if data is not None:
            raw = bytes(data)  # the file's bytes kept elsewhere (a saved model); path names it
        else:
            if not self._path.exists():
                raise FileNotFoundError(f"{self._path}: tokenizer file not found")
            with open_regular(self._path, "llama2.c tokenizer file") as f:
                raw = f.read()
        self.raw = raw
        if len(raw) < 4:
            raise ValueError(
                f"{self._path}: not a llama2.c tokenizer: {len(raw)} bytes, expected an int32 "
                "max_token_length and token records"
            )
        (self.max_token_length,) = struct.unpack_from("<i", raw, 0)
        if not 1 <= self.max_token_length <= 1 << 16:
            raise ValueError(
                f"{self._path}: not a llama2.c tokenizer: max_token_length "
                f"{self.max_token_length} is not in [1, 65536]"
            )
        pieces: list[bytes] = []
        scores: list[float] = []
        off = 4
        while off < len(raw) and (vocab_size is None or len(pieces) < vocab_size):
            if off + 8 > len(raw):
                raise ValueError(
                    f"{self._path}: truncated: token {len(pieces)}'s record header at byte "
                    f"{off} needs 8 bytes, {len(raw) - off} left"
                )
            score, n = struct.unpack_from("<fi", raw, off)
            off += 8
            if n < 0 or n > self.max_token_length or off + n > len(raw):
                raise ValueError(
                    f"{self._path}: token {len(pieces)} at byte {off - 8}: length {n} is "
                    f"invalid (max_token_length {self.max_token_length}, {len(raw) - off} "
                    "bytes left): truncated or not a llama2.c tokenizer"
                )
            pieces.append(raw[off : off + n])
            scores.append(score)
            off += n
        if vocab_size is not None and len(pieces) != vocab_size:
            raise ValueError(
                f"{self._path}: holds {len(pieces)} tokens, the model expects vocab_size="
                f"{vocab_size}: the tokenizer does not match the model"
            )
        if off != len(raw):
            raise ValueError(
                f"{self._path}: {len(raw) - off} trailing bytes after {len(pieces)} tokens: "
                "the tokenizer does not match the model's vocab_size"
            )
        if len(pieces) <= self.EOS:
            raise ValueError(f"{self._path}: only {len(pieces)} tokens; expected <unk>, BOS, EOS")
        self._pieces = pieces
        self._scores = scores
        # First id wins for a duplicated piece (run.c's bsearch would pick any of them).
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(pieces):
            self._lookup.setdefault(p, i)
        self._byte_value: dict[int, int] = {}
        for i, p in enumerate(pieces):
            m = _BYTE_PIECE.fullmatch(p)
            if m is not None:
                self._byte_value[i] = int(m.group(1), 16)
        # Word-by-word encoding is exact when no piece holds a space after another byte
        # (SentencePiece vocabularies: spaces only lead a piece): see _encode_words.
        self._word_split = not any(_SPACE_AFTER_BYTE.search(p) for p in pieces)
        self._word_cache: dict[str, list[int]] = {}

    # -- protocol ----------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def name(self) -> str:
        return str(self._path)

    def piece(self, token: int) -> bytes:
        """The raw piece of ``token`` (bytes, as stored)."""
        return self._pieces[self._token_arg(token)]

    def score(self, token: int) -> float:
        """The merge score of ``token`` (float32 value)."""
        return self._scores[self._token_arg(token)]

    def _token_arg(self, token: Any) -> int:
        n = len(self._pieces)
        if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
            raise TypeError(f"token: expected an int, got {type(token).__name__}")
        if not 0 <= int(token) < n:
            raise ValueError(f"token: expected an id in [0, {n}), got {int(token)}")
        return int(token)

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (run.c ``encode``; see the class notes)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        if self._word_split and text:
            ids = self._encode_words(text, bos)
        else:
            ids = self._encode_whole(text, bos)
        if eos:
            ids.append(self.EOS)
        return ids

    def _initial(self, text: str, ids: list[int]) -> list[int]:
        """Append the pre-merge ids of ``text``: one per character, or its UTF-8 bytes as
        byte-fallback ids (byte + 3)."""
        for ch in text:
            try:
                b = ch.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"text: character {ch!r} cannot be encoded as UTF-8 (a lone surrogate)"
                ) from None
            tok = self._lookup.get(b)
            if tok is not None:
                ids.append(tok)
            else:
                ids.extend(byte + 3 for byte in b)
        return ids

    def _prefix(self, text: str, bos: bool) -> list[int]:
        ids: list[int] = [self.BOS] if bos else []
        if text:
            space = self._lookup.get(b" ")
            if space is None:
                raise ValueError(f"{self.name}: no ' ' piece for the dummy prefix")
            ids.append(space)
        return ids

    def _encode_whole(self, text: str, bos: bool) -> list[int]:
        """run.c's encode over the whole text at once (one heap of merges)."""
        ids = self._initial(text, self._prefix(text, bos))
        return self._merge(ids)  # BOS takes part in the merges, as in run.c

    def _encode_words(self, text: str, bos: bool) -> list[int]:
        """The same ids as :meth:`_encode_whole`, word by word with a cache.

        The text is cut before every space that follows a non-space. A token spanning such
        a cut would be a vocabulary piece holding (a non-space character's piece) + " ",
        i.e. a non-space byte followed by a space; when no piece has one
        (``self._word_split``), no merge crosses a cut, every word merges on its own
        exactly as inside the whole text (merges are local: the pairs a word sees and their
        order by score, ties to the left, do not depend on other words), and repeated
        words are looked up instead of merged again. The first word carries BOS and the
        dummy-prefix space, as in run.c.
        """
        words = _WORDS.split(text)
        out = self._merge(self._initial(words[0], self._prefix(text, bos)))
        cache = self._word_cache
        for w in words[1:]:
            hit = cache.get(w)
            if hit is None:
                hit = self._merge(self._initial(w, []))
                if len(cache) >= _WORD_CACHE_MAX:
                    cache.clear()
                cache[w] = hit
            out.extend(hit)
        return out

    def _merge(self, toks: list[int]) -> list[int]:
        n = len(toks)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[float, int, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i] if i >= 0 else n
            if i < 0 or j >= n:
                return
            tok = self._lookup.get(self._pieces[toks[i]] + self._pieces[toks[j]])
            if tok is not None and self._scores[tok] > -1e10:
                heapq.heappush(heap, (-self._scores[tok], i, j, toks[i], toks[j], tok))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, j, ti, tj, tok = heapq.heappop(heap)
            if not (alive[i] and alive[j] and nxt[i] == j and toks[i] == ti and toks[j] == tj):
                continue  # stale: one side has merged since
            toks[i] = tok
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            push(prv[i])
            push(i)
        return [t for t, a in zip(toks, alive, strict=True) if a]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (run.c ``decode`` over the sequence; see the class notes)."""
        arr = check_token_ids(ids, self.vocab_size, "ids")
        out = bytearray()
        prev = -1
        for t in arr.tolist():
            if t not in (self.BOS, self.EOS):
                byte = self._byte_value.get(t)
                if byte is not None:
                    out.append(byte)
                else:
                    piece = self._pieces[t]
                    if prev == self.BOS and piece.startswith(b" "):
                        piece = piece[1:]
                    out += piece
            prev = t
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Llama2cTokenizer({self.name!r}, vocab_size={self.vocab_size})"
