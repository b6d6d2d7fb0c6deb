"""File safety shared by every reader and writer: regular files only, bounded JSON, paths
confined to a directory, and the one atomic writer.

Readers
-------
:func:`open_regular` opens without blocking and refuses anything but a regular file (a FIFO
would block ``open()`` forever, a device or directory has no size to check headers
against). :func:`load_json` reads at most ``max_bytes`` and refuses nesting deeper than
``max_depth`` before ``json`` recurses (deep nesting raises ``RecursionError`` inside the
parser). :func:`confined` resolves a path named inside a file (a shard of an index) and
refuses one that leaves the model's directory (``..``, an absolute path, a symlink out).

Writers
-------
:func:`atomic_write` writes a temporary sibling ``.<name>.sf-tmp-<pid>-<random>``, flushes
and fsyncs it, renames it over the target and fsyncs the directory: a reader sees the old
file or the new one, never a mixture, and ``kill -9`` at any moment leaves the old file
intact. Temporaries of an earlier write that was killed are removed at the start of the
next write to the same target (those whose writer process no longer runs).
:func:`atomic_directory` does the same for a directory (the exports): it is built in a
temporary sibling ``.<name>.sf-tmp-<pid>-<random>/`` and renamed into place; an old
directory is moved aside to ``.<name>.sf-old-<pid>-<random>/`` for the swap and removed
after. A killed export leaves such siblings; the next export to the same target removes
them (again only those whose writer process is gone).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_directory",
    "atomic_path",
    "atomic_write",
    "check_regular",
    "confined",
    "first_nonfinite",
    "load_json",
    "open_regular",
    "parse_json",
    "read_npz",
    "stale_temps",
]

#: JSON documents the library reads (configs, indexes, thresholds, headers) are small.
MAX_JSON_BYTES = 100_000_000
MAX_JSON_DEPTH = 64

_TMP_TAG = ".sf-tmp-"
_OLD_TAG = ".sf-old-"


def open_regular(path: str | os.PathLike[str], what: str = "file") -> io.BufferedReader:
    """Open ``path`` for binary reading; ``ValueError`` naming it unless it is a regular
    file (symlinks to one are fine), ``FileNotFoundError`` when it does not exist. Never
    blocks on a FIFO."""
    p = os.fspath(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: not a file (a directory); expected a regular {what}") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot open ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "a FIFO"
                if stat.S_ISFIFO(mode)
                else "a directory"
                if stat.S_ISDIR(mode)
                else "a device or socket"
            )
            raise ValueError(f"{p}: not a file ({kind}); expected a regular {what}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``ValueError`` unless ``path`` names a regular file; returns it as a Path."""
    with open_regular(path, what):
        pass
    return Path(path)


def _depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text, strings skipped (linear time)."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = best = 0
    for ch in re.findall(r"[\[\]{}]", stripped):
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


def parse_json(
    text: str | bytes,
    what: str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """``json.loads`` with a size and a nesting limit; ``ValueError`` naming ``what``.
    NaN/Infinity literals are refused (not JSON)."""
    if len(text) > max_bytes:
        raise ValueError(f"{what}: {len(text)} bytes of JSON, more than the limit {max_bytes}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}: not UTF-8 ({e.reason})") from None
    d = _depth(text)
    if d > max_depth:
        raise ValueError(f"{what}: JSON nested {d} deep, more than the limit {max_depth}")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{what}: not valid JSON ({e})") from None


def load_json(
    path: str | os.PathLike[str],
    what: str = "JSON file",
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Read and parse a JSON file (regular files only, size and depth limited)."""
    with open_regular(path, what) as f:
        raw = f.read(max_bytes + 1)
    return parse_json(raw, os.fspath(path), max_bytes=max_bytes, max_depth=max_depth)


def confined(base: str | os.PathLike[str], name: Any, what: str) -> Path:
    """``base / name`` resolved, refused (``ValueError`` naming ``what``) unless it stays
    inside ``base`` after resolving ``..`` and symlinks."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{what}: expected a file name, got {name!r:.100}")
    root = Path(base).resolve()
    p = (root / name).resolve()
    if p != root and root not in p.parents:
        raise ValueError(f"{what}: {name!r:.200} points outside the directory {root}")
    return p


def stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Temporaries (files, or directories of :func:`atomic_directory`) of earlier writes to
    ``path`` whose writer process is gone."""
    target = Path(os.path.abspath(path))
    found = []
    prefixes = (f".{target.name}{_TMP_TAG}", f".{target.name}{_OLD_TAG}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for n in names:
        prefix = next((p for p in prefixes if n.startswith(p)), None)
        if prefix is None:
            continue
        pid_text = n[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        alive = pid == os.getpid()
        if not alive:
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except (PermissionError, OverflowError, OSError):
                alive = True  # someone else's live process: leave its file alone
        if not alive:
            found.append(target.parent / n)
    return found


def _remove_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Removes dead writers' temporaries of ``target``; returns what it removed."""
    removed = []
    for old in stale_temps(target):
        with contextlib.suppress(OSError):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
            removed.append(old)
    return removed


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _begin(path: str | os.PathLike[str]) -> tuple[str, str, int]:
    """Remove dead writers' temporaries of ``path``; create (O_EXCL) and open a fresh one.
    Returns (target, temporary, fd)."""
    target = os.path.abspath(os.fspath(path))
    directory, base = os.path.split(target)
    if os.path.isdir(target):
        raise ValueError(f"{target}: is a directory")
    _remove_stale(target)
    while True:
        tmp = os.path.join(directory, f".{base}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(6)}")
        try:
            return target, tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _commit(tmp: str, target: str) -> None:
    os.replace(tmp, target)
    _fsync_dir(os.path.dirname(target))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Context manager yielding a file to write ``path``'s new content into; on a clean exit
    the content replaces ``path`` atomically, on an exception (or a kill) ``path`` keeps its
    old content and the temporary is removed (or, after a kill, removed by the next write).

    ``mode`` is ``"wb"`` or ``"w"`` (UTF-8 text)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    target, tmp, fd = _begin(path)
    try:
        f: IO[Any] = os.fdopen(fd, "w", encoding="utf-8") if mode == "w" else os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """:func:`atomic_write` for writers that open a path themselves (the ``gguf`` package's
    writer): yields the temporary's path (an empty file); on a clean exit it is fsynced and
    renamed onto ``path``."""
    target, tmp, fd = _begin(path)
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}{tag}{os.getpid()}-{secrets.token_hex(6)}"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary sibling directory of ``path``; on a clean exit its files are
    fsynced and it replaces ``path`` (an old directory there is moved aside first and
    removed after), on an exception it is removed and ``path`` is untouched. Temporaries
    of a killed earlier write to ``path`` are removed first."""
    target = Path(os.path.abspath(os.fspath(path)))
    _remove_stale(target)
    tmp = _sibling(target, _TMP_TAG)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = None
        if target.exists():
            old = _sibling(target, _OLD_TAG)
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(str(target.parent))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_SCAN_CHUNK = 1 << 22  # elements per np.isfinite pass: bounded scratch over a memory map


def first_nonfinite(a: Any) -> int | None:
    """Flat index of the first NaN/Inf in a float array (float32/16/64, bfloat16; a memory
    map is read in chunks, never converted whole), or None. Non-float arrays: None."""
    import numpy as np

    arr = np.asarray(a)
    if arr.dtype.kind not in "fV" or arr.size == 0:
        return None
    flat = arr.reshape(-1)
    for start in range(0, flat.size, _SCAN_CHUNK):
        chunk = flat[start : start + _SCAN_CHUNK]
        if chunk.dtype.kind == "V":  # ml_dtypes.bfloat16: the exponent's 8 bits all ones
            bad = (chunk.view(np.uint16) & 0x7F80) == 0x7F80
        else:
            bad = ~np.isfinite(chunk)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


#: Members of a statistics archive are small next to what a forged npy header may claim.
MAX_NPZ_MEMBERS = 64


def read_npz(f: IO[bytes], what: str, *, max_members: int = MAX_NPZ_MEMBERS) -> dict[str, Any]:
    """The arrays of an ``.npz`` archive, each member's npy header checked before anything
    is allocated: no pickled objects, and the claimed shape must fit in the member's real
    (uncompressed) size, so a forged header cannot ask for terabytes. ``ValueError`` naming
    ``what`` for anything unreadable."""
    import zipfile
    import zlib

    from numpy.lib import format as npf

    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            if len(infos) > max_members:
                raise ValueError(f"{what}: {len(infos)} archive members, at most {max_members}")
            for info in infos:
                name = info.filename
                key = name[:-4] if name.endswith(".npy") else name
                with z.open(info) as m:
                    version = npf.read_magic(m)
                    if version == (1, 0):
                        shape, _fortran, dtype = npf.read_array_header_1_0(m)
                    else:
                        shape, _fortran, dtype = npf.read_array_header_2_0(m)
                    if dtype.hasobject:
                        raise ValueError(f"{what}: member {key!r} holds Python objects")
                    count = 1
                    for d in shape:
                        count *= int(d)
                    if count * dtype.itemsize > info.file_size:
                        raise ValueError(
                            f"{what}: member {key!r} claims shape {shape} of {dtype} "
                            f"({count * dtype.itemsize} bytes), the archive holds "
                            f"{info.file_size} bytes for it"
                        )
                with z.open(info) as m:
                    out[key] = npf.read_array(m, allow_pickle=False)
                    # read to the end: zipfile checks a member's CRC-32 only at its end
                    if m.read():
                        raise ValueError(f"{what}: member {key!r} has trailing bytes")
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: not a readable archive ({e})") from None
    except (
        zipfile.BadZipFile,
        zlib.error,
        OSError,
        EOFError,
        KeyError,
        RuntimeError,
        NotImplementedError,
        UnicodeDecodeError,
    ) as e:
        raise ValueError(f"{what}: not a readable archive ({type(e).__name__}: {e})") from None
    return out
