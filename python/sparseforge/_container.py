"""The on-disk container: ``sf.save`` / ``sf.load`` / ``sf.load_metadata``.

A file is a plain safetensors file (readable by the ``safetensors`` package); sparseforge
adds, inside the safetensors ``__metadata__``, a format version, a CRC-32 of every stored
array and of the header, and the kind and metadata of each compressed tensor, whose
component arrays are stored as ordinary tensors under reserved keys. ``docs/formats.md``
("On-disk container") is the specification.

Compressed tensors follow a small protocol (implemented by ``sparseforge.format``):

* class attribute ``_sf_kind: str`` (``"nm"``, ``"bitmap"``, ``"csr"``);
* ``obj._sf_state() -> (meta: dict[str, str], arrays: dict[str, np.ndarray])``;
* classmethod ``cls._sf_from_state(meta, arrays)`` that validates and rebuilds;
* ``sparseforge.format._KINDS: dict[str, type]`` maps each kind to its class.
"""

from __future__ import annotations

import io
import json
import math
import mmap as _mmap
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

import ml_dtypes
import numpy as np

from ._base import DTypeError
from ._io import atomic_write, open_regular, parse_json

__all__ = ["FORMAT_VERSION", "load", "load_metadata", "save"]

#: Version written to ``__metadata__["sparseforge.format"]``; ``load`` refuses others.
FORMAT_VERSION = "1"

_PREFIX = "sparseforge."  # reserved metadata namespace
_KEY_FORMAT = "sparseforge.format"
_KEY_CHECKSUM = "sparseforge.checksum"  # algorithm name
_KEY_CHECKSUMS = "sparseforge.checksums"  # JSON {stored key: 8 hex digits}
_KEY_TENSORS = "sparseforge.tensors"  # JSON {name: {"kind", "meta", "components"}}
_KEY_HEADER_CRC = "sparseforge.header_crc32"  # CRC-32 of the header, this value zeroed
_CRC_PLACEHOLDER = "00000000"
_COMPONENT_PREFIX = "__sf__:"  # component keys: "__sf__:<name>:<component>"
_MAX_HEADER = 100_000_000  # the safetensors limit
_MAX_DIMS = 32
_IDENT = re.compile(r"[A-Za-z0-9_]+\Z")

# safetensors dtype name <-> numpy dtype (little-endian). F8_* come from ml_dtypes.
_ST_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
_ST_NAMES = {dt: name for name, dt in _ST_DTYPES.items()}
_DTYPE_LIST = (
    "bool, uint8/16/32/64, int8/16/32/64, float16/32/64, bfloat16, float8_e4m3fn, float8_e5m2"
)


def _kinds() -> Mapping[str, type]:
    """The registry of compressed kinds (imported lazily: tests replace this function)."""
    from . import format as _format

    kinds: Mapping[str, type] = getattr(_format, "_KINDS", {})
    return kinds


def _crc(a: np.ndarray) -> str:
    """CRC-32 (zlib) of a C-contiguous array's bytes, as 8 lowercase hex digits."""
    return f"{zlib.crc32(_byte_view(a).data) & 0xFFFFFFFF:08x}"


def _byte_view(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(np.uint8)


# ------------------------------------------------------------------------------ save


def _storage_dtype(a: np.ndarray, what: str) -> np.dtype[Any]:
    dt = a.dtype
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt not in _ST_NAMES or dt.fields is not None or dt.subdtype is not None:
        raise DTypeError(f"{what}: expected dtype {_DTYPE_LIST}, got {a.dtype}")
    return dt


def _prepare_array(a: Any, what: str) -> np.ndarray:
    """A C-contiguous little-endian array with a safetensors dtype (a copy only if needed)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what}: expected a numpy.ndarray, got {type(a).__name__}")
    dt = _storage_dtype(a, what)
    if a.ndim > _MAX_DIMS:
        raise ValueError(f"{what}: at most {_MAX_DIMS} dimensions, got {a.ndim}")
    return np.asarray(a, dtype=dt, order="C")  # keeps 0-d arrays 0-d


def _check_str(s: Any, what: str) -> str:
    if not isinstance(s, str):
        raise TypeError(f"{what}: expected str, got {type(s).__name__}")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{what}: {s!r} is not valid UTF-8 ({err.reason})") from None
    return s


def _check_name(name: Any) -> str:
    _check_str(name, "tensors: name")
    if name == "" or name == "__metadata__" or name.startswith(_COMPONENT_PREFIX):
        raise ValueError(
            f"tensors: name {name!r} is reserved (empty, '__metadata__' or starting with "
            f"{_COMPONENT_PREFIX!r})"
        )
    return str(name)


def _user_metadata(metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"metadata: expected a mapping of str to str, got {type(metadata).__name__}"
        )
    out: dict[str, str] = {}
    for key, value in metadata.items():
        _check_str(key, "metadata: key")
        _check_str(value, f"metadata[{key!r}]")
        if key == "" or key.startswith(_PREFIX):
            raise ValueError(f"metadata: key {key!r} is reserved (empty or {_PREFIX!r}...)")
        out[key] = value
    return out


def _compressed_state(name: str, obj: Any) -> tuple[str, dict[str, str], dict[str, np.ndarray]]:
    what = f"tensors[{name!r}]"
    kind = getattr(type(obj), "_sf_kind", None)
    if not isinstance(kind, str) or not _IDENT.match(kind):
        raise ValueError(f"{what}: _sf_kind must be a non-empty identifier, got {kind!r}")
    state = obj._sf_state()
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError(f"{what}: _sf_state() must return (meta, arrays)")
    meta, arrays = state
    if not isinstance(meta, Mapping) or not isinstance(arrays, Mapping) or not arrays:
        raise TypeError(f"{what}: _sf_state() must return (dict of str, non-empty dict of arrays)")
    clean_meta = {
        _check_str(k, f"{what} meta key"): _check_str(v, f"{what} meta[{k!r}]")
        for k, v in meta.items()
    }
    clean_arrays: dict[str, np.ndarray] = {}
    for comp, arr in arrays.items():
        if not isinstance(comp, str) or not _IDENT.match(comp):
            raise ValueError(f"{what}: component names must be identifiers, got {comp!r}")
        clean_arrays[comp] = _prepare_array(arr, f"{what} component {comp!r}")
    return kind, clean_meta, clean_arrays


def _component_key(name: str, comp: str) -> str:
    return f"{_COMPONENT_PREFIX}{name}:{comp}"


def save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write arrays and compressed tensors to a safetensors file, atomically.

    Parameters
    ----------
    path : str or path-like
        Written through a temporary file in the same directory, flushed, fsynced and
        renamed over ``path``: a failure at any point (bad input, full disk, an exception
        from a tensor) leaves an existing ``path`` untouched and no temporary file behind.
    tensors : mapping of str to numpy.ndarray or compressed tensor
        Arrays of any shape (0-d to 32-d, empty allowed) and dtype bool, uint8/16/32/64,
        int8/16/32/64, float16/32/64, ``ml_dtypes.bfloat16``, ``float8_e4m3fn`` or
        ``float8_e5m2``; non-contiguous or big-endian arrays are copied into C order,
        little-endian. Compressed tensors (``sparseforge.format`` objects) are stored as
        their component arrays. Names are non-empty str, not ``"__metadata__"`` and not
        starting with ``"__sf__:"`` (reserved for components). An empty mapping is allowed.
    metadata : mapping of str to str, optional
        Stored in the safetensors ``__metadata__``; keys starting with ``"sparseforge."``
        are reserved. :func:`load_metadata` returns it.

    Raises
    ------
    TypeError, ValueError, sparseforge.DTypeError
        Bad input, naming the tensor; nothing is written.
    OSError
        From the file system; nothing is left under ``path`` but what was there before.

    Notes
    -----
    Every stored array is hashed with CRC-32 (zlib, about 4 GB/s) before it is written,
    so a save reads each array twice; see ``docs/formats.md``. Saving over the file that
    memory-mapped arrays came from (``load(path, mmap=True)``) is safe: the rename keeps
    the old file alive for the map.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"tensors: expected a mapping of str to arrays, got {type(tensors).__name__}"
        )
    user_meta = _user_metadata(metadata)
    entries: list[tuple[str, np.ndarray]] = []  # (stored key, array) in header order
    described: dict[str, Any] = {}
    for name, obj in tensors.items():
        name = _check_name(name)
        if isinstance(obj, np.ndarray):
            entries.append((name, _prepare_array(obj, f"tensors[{name!r}]")))
            continue
        if not callable(getattr(obj, "_sf_state", None)):
            raise TypeError(
                f"tensors[{name!r}]: expected a numpy.ndarray or a sparseforge compressed "
                f"tensor, got {type(obj).__name__}"
            )
        kind, meta, arrays = _compressed_state(name, obj)
        components = {comp: _component_key(name, comp) for comp in arrays}
        described[name] = {"kind": kind, "meta": meta, "components": components}
        entries.extend((components[comp], arr) for comp, arr in arrays.items())

    checksums = {key: _crc(arr) for key, arr in entries}
    header_meta = dict(user_meta)
    header_meta[_KEY_FORMAT] = FORMAT_VERSION
    header_meta[_KEY_CHECKSUM] = "crc32"
    header_meta[_KEY_CHECKSUMS] = json.dumps(checksums, ensure_ascii=False, separators=(",", ":"))
    header_meta[_KEY_TENSORS] = json.dumps(described, ensure_ascii=False, separators=(",", ":"))
    header_meta[_KEY_HEADER_CRC] = _CRC_PLACEHOLDER
    header_bytes, order = _header(header_meta, entries)
    _atomic_write(os.fspath(path), header_bytes, [entries[i][1] for i in order])


def _header(meta: dict[str, str], entries: list[tuple[str, np.ndarray]]) -> tuple[bytes, list[int]]:
    """Header bytes (padded with spaces to a multiple of 8, header CRC filled in) and the
    order of the data: by decreasing item size, so every array is aligned to its item
    size in the file (and in a memory map), then by position."""
    order = sorted(range(len(entries)), key=lambda i: (-entries[i][1].dtype.itemsize, i))
    offsets: dict[int, list[int]] = {}
    pos = 0
    for i in order:
        offsets[i] = [pos, pos + entries[i][1].nbytes]
        pos += entries[i][1].nbytes
    header: dict[str, Any] = {"__metadata__": meta}
    for i, (key, arr) in enumerate(entries):
        header[key] = {
            "dtype": _ST_NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": offsets[i],
        }
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    crc = f"{zlib.crc32(raw) & 0xFFFFFFFF:08x}"
    field = _header_crc_field(_CRC_PLACEHOLDER)
    if raw.count(field) != 1:  # pragma: no cover - the key is reserved, quotes are escaped
        raise RuntimeError("sparseforge: header checksum field is not unique (a bug)")
    return raw.replace(field, _header_crc_field(crc)), order


def _header_crc_field(value: str) -> bytes:
    return f'"{_KEY_HEADER_CRC}":"{value}"'.encode()


def _atomic_write(path: str, header: bytes, arrays: list[np.ndarray]) -> None:
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for arr in arrays:
            _write_array(f, arr)


def _write_array(f: IO[bytes], arr: np.ndarray) -> None:
    if arr.nbytes:
        f.write(_byte_view(arr).data)


# ------------------------------------------------------------------------------ load


@dataclass(frozen=True)
class _Entry:
    """One stored tensor of the header: its key, dtype, shape and data byte range."""

    key: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    begin: int
    end: int


class _Header:
    """A validated header: entries in header order, user metadata, sparseforge fields."""

    def __init__(self, path: str, data_start: int, file_size: int, raw: bytes) -> None:
        self.path = path
        self.data_start = data_start
        self.entries: list[_Entry] = []
        self.metadata: dict[str, str] = {}
        self.sparseforge = False
        self.checksums: dict[str, str] = {}
        self.described: dict[str, Any] = {}
        self._parse(raw, file_size - data_start)

    def error(self, msg: str) -> ValueError:
        return ValueError(f"{self.path}: {msg}")

    def _parse(self, raw: bytes, data_size: int) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.error(f"header is not UTF-8 ({err.reason})") from None
        if not text.startswith("{"):
            raise self.error("header does not start with '{': not a safetensors file")
        try:
            header = parse_json(text, "header", max_bytes=_MAX_HEADER)
        except ValueError as err:
            raise self.error(f"header is not valid JSON ({err})") from None
        if not isinstance(header, dict):
            raise self.error("header is not a JSON object")
        meta = header.pop("__metadata__", None)
        meta = {} if meta is None else meta
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self.error("__metadata__ is not an object of strings")
        for key, info in header.items():
            self.entries.append(self._entry(key, info))
        self._check_coverage(data_size)
        self.metadata = {k: v for k, v in meta.items() if not k.startswith(_PREFIX)}
        ours = {k: v for k, v in meta.items() if k.startswith(_PREFIX)}
        if ours:
            self._parse_sparseforge(ours, raw)

    def _entry(self, key: str, info: Any) -> _Entry:
        what = f"tensor {key!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise self.error(f"{what}: expected {{dtype, shape, data_offsets}}, got {info!r:.200}")
        dtype = _ST_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise self.error(f"{what}: unsupported dtype {info['dtype']!r:.40}")
        shape, offsets = info["shape"], info["data_offsets"]
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise self.error(f"{what}: bad shape {shape!r:.200}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise self.error(f"{what}: bad data_offsets {offsets!r:.200}")
        if math.prod(d for d in shape if d) * dtype.itemsize >= 2**63:
            raise self.error(f"{what}: shape {shape!r:.200} is too large")
        nbytes = math.prod(shape) * dtype.itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise self.error(
                f"{what}: data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, "
                f"shape {shape} {info['dtype']} needs {nbytes}"
            )
        return _Entry(key, dtype, tuple(shape), offsets[0], offsets[1])

    def _check_coverage(self, data_size: int) -> None:
        pos = 0
        for e in sorted(self.entries, key=lambda e: (e.begin, e.end)):
            if e.begin != pos:
                kind = "overlaps the previous tensor" if e.begin < pos else "leaves a gap before it"
                raise self.error(f"tensor {e.key!r}: data_offsets [{e.begin}, {e.end}] {kind}")
            pos = e.end
        if pos != data_size:
            raise self.error(
                f"the tensors cover {pos} data bytes, the file holds {data_size} "
                f"({'truncated' if pos > data_size else 'trailing bytes'})"
            )

    def _parse_sparseforge(self, ours: dict[str, str], raw: bytes) -> None:
        version = ours.get(_KEY_FORMAT)
        if version is None:
            raise self.error(f"sparseforge metadata without {_KEY_FORMAT!r}: corrupt header")
        if version != FORMAT_VERSION:
            raise self.error(
                f"unsupported sparseforge format version {version!r:.20} (this build reads "
                f"{FORMAT_VERSION!r}); upgrade sparseforge"
            )
        expected = {_KEY_FORMAT, _KEY_CHECKSUM, _KEY_CHECKSUMS, _KEY_TENSORS, _KEY_HEADER_CRC}
        if set(ours) != expected:
            raise self.error(f"sparseforge metadata keys {sorted(ours)} != {sorted(expected)}")
        if ours[_KEY_CHECKSUM] != "crc32":
            raise self.error(f"unknown checksum algorithm {ours[_KEY_CHECKSUM]!r:.20}")
        header_crc = ours[_KEY_HEADER_CRC]
        field = _header_crc_field(header_crc)
        if raw.count(field) != 1:
            raise self.error("header checksum field is corrupt")
        zeroed = raw.replace(field, _header_crc_field(_CRC_PLACEHOLDER))
        if f"{zlib.crc32(zeroed) & 0xFFFFFFFF:08x}" != header_crc:
            raise self.error("header checksum mismatch: the header is corrupt")
        self.sparseforge = True
        try:
            self.checksums = parse_json(ours[_KEY_CHECKSUMS], _KEY_CHECKSUMS)
            self.described = parse_json(ours[_KEY_TENSORS], _KEY_TENSORS)
        except ValueError as err:  # pragma: no cover - covered by the header CRC
            raise self.error(f"sparseforge metadata is not valid JSON ({err})") from None
        keys = {e.key for e in self.entries}
        if not isinstance(self.checksums, dict) or set(self.checksums) != keys:
            raise self.error("the checksum table does not list exactly the stored tensors")
        self._check_described(keys)

    def _check_described(self, keys: set[str]) -> None:
        if not isinstance(self.described, dict):
            raise self.error(f"{_KEY_TENSORS} is not an object")
        claimed: set[str] = set()
        for name, desc in self.described.items():
            what = f"tensor {name!r}"
            if (
                not isinstance(desc, dict)
                or set(desc) != {"kind", "meta", "components"}
                or not isinstance(desc["kind"], str)
                or not isinstance(desc["meta"], dict)
                or not all(isinstance(v, str) for v in desc["meta"].values())
                or not isinstance(desc["components"], dict)
                or not desc["components"]
            ):
                raise self.error(f"{what}: bad compressed-tensor description")
            if name in keys:
                raise self.error(f"{what}: stored both dense and compressed")
            for comp, key in desc["components"].items():
                if key != _component_key(name, comp):
                    raise self.error(f"{what}: component {comp!r} has key {key!r:.200}")
                if key not in keys:
                    raise self.error(f"{what}: component {comp!r} is missing from the file")
                claimed.add(key)
        orphans = [k for k in keys if k.startswith(_COMPONENT_PREFIX) and k not in claimed]
        if orphans:
            raise self.error(f"tensor {orphans[0]!r}: a component no tensor describes")


def _read_header(path: str, f: IO[bytes]) -> _Header:
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise ValueError(f"{path}: {size} bytes, too small for a safetensors file")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > _MAX_HEADER or 8 + n > size:
        raise ValueError(
            f"{path}: header size {n} exceeds the file ({size} bytes): truncated or corrupt"
        )
    raw = f.read(n)
    if len(raw) != n:  # pragma: no cover - the file shrank under us
        raise ValueError(f"{path}: truncated header")
    return _Header(path, 8 + n, size, raw)


def load_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The user metadata of a file written by :func:`save` (or any safetensors file).

    Reads and validates the header only (structure, offsets, the header checksum), not
    the data. Returns the ``__metadata__`` entries except sparseforge's own
    (``"sparseforge.*"``); a plain safetensors file returns its ``__metadata__`` as is.
    """
    spath = os.fspath(path)
    with open_regular(spath, "tensor file") as f:
        return dict(_read_header(spath, f).metadata)


def load(
    path: str | os.PathLike[str],
    *,
    mmap: bool = False,
    verify: bool = True,
    allow_nonfinite: bool = True,
) -> dict[str, Any]:
    """Read a file written by :func:`save` (or any safetensors file).

    Parameters
    ----------
    path : str or path-like
    mmap : bool
        ``False`` (default): every array is read into a new, writeable, aligned array.
        ``True``: arrays are read-only views of a memory map of the file (no copy; pages
        are read on first touch and the map lives as long as any array from it). Arrays
        are aligned to their item size (``save`` orders the data for that).
    verify : bool
        Check each stored array's CRC-32 (default). Costs one read pass over the data at
        about 1 GB/s (see ``docs/formats.md``); with ``mmap=True`` it touches every page.
        ``verify=False`` skips it (the header, which has its own CRC, is always checked).
    allow_nonfinite : bool
        ``False`` refuses (ValueError naming the tensor) any NaN or Inf in a stored
        floating-point array, compressed tensors' value components included (one more
        pass over the float data). The default ``True`` returns them as stored.

    Returns
    -------
    dict of str to numpy.ndarray or compressed tensor
        In the order of the file's header. Compressed tensors are rebuilt with their
        class's ``_sf_from_state`` (``sparseforge.format._KINDS``). Files without
        sparseforge metadata (plain safetensors) give dense arrays only.

    Raises
    ------
    ValueError
        A corrupt, truncated or unsupported file, naming the file and, where one is
        affected, the tensor: bad size prefix or header JSON, unsupported dtype, offsets
        out of range, overlapping or not covering the data, shape/byte-size mismatch,
        checksum mismatch, missing components, unknown kind, unsupported format version.
    OSError
        From the file system.
    """
    spath = os.fspath(path)
    with open_regular(spath, "tensor file") as f:
        header = _read_header(spath, f)
        buf: _mmap.mmap | None = None
        if mmap and header.entries:
            buf = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
        arrays: dict[str, np.ndarray] = {}
        for e in header.entries:
            arrays[e.key] = _read_entry(f, buf, header, e, verify)
            if not allow_nonfinite and arrays[e.key].dtype.kind in "fV":
                a = arrays[e.key]
                ok = np.isfinite(a.astype(np.float32) if a.dtype.kind == "V" else a).all()
                if a.size and not ok:
                    raise header.error(
                        f"tensor {_display(e.key)}: holds NaN or Inf "
                        "(allow_nonfinite=True reads it as stored)"
                    )
    return _assemble(header, arrays)


def _read_entry(
    f: io.BufferedReader, buf: _mmap.mmap | None, header: _Header, e: _Entry, verify: bool
) -> np.ndarray:
    count = math.prod(e.shape)
    if count == 0:
        arr = np.empty(e.shape, dtype=e.dtype)
    elif buf is not None:
        offset = header.data_start + e.begin
        arr = np.frombuffer(buf, dtype=e.dtype, count=count, offset=offset).reshape(e.shape)
    else:
        arr = np.empty(e.shape, dtype=e.dtype)
        f.seek(header.data_start + e.begin)
        view = _byte_view(arr).data
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])
            if not got:  # pragma: no cover - the file shrank under us
                raise header.error(f"tensor {e.key!r}: truncated data")
            done += got
    if header.sparseforge and verify and _crc(arr) != header.checksums[e.key]:
        raise header.error(f"tensor {_display(e.key)}: checksum mismatch: the data is corrupt")
    if e.dtype == np.bool_ and count and _byte_view(arr).max() > 1:
        raise header.error(f"tensor {_display(e.key)}: BOOL data holds bytes other than 0 and 1")
    return arr


def _display(key: str) -> str:
    """A stored key as the user knows it: components as 'name' (component c)."""
    if key.startswith(_COMPONENT_PREFIX):
        name, _, comp = key[len(_COMPONENT_PREFIX) :].rpartition(":")
        return f"{name!r} (component {comp!r})"
    return repr(key)


def _assemble(header: _Header, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if not header.sparseforge:
        return arrays
    kinds = _kinds() if header.described else {}
    out: dict[str, Any] = {}
    for key, arr in arrays.items():
        if not key.startswith(_COMPONENT_PREFIX):
            out[key] = arr
            continue
        name = key[len(_COMPONENT_PREFIX) :].rpartition(":")[0]
        if name in out:
            continue
        desc = header.described[name]
        cls = kinds.get(desc["kind"])
        if cls is None:
            raise header.error(
                f"tensor {name!r}: unknown compressed kind {desc['kind']!r:.40} "
                f"(known: {', '.join(sorted(kinds)) or 'none'})"
            )
        parts = {comp: arrays[k] for comp, k in desc["components"].items()}
        try:
            out[name] = cls._sf_from_state(dict(desc["meta"]), parts)  # type: ignore[attr-defined]
        except Exception as err:
            raise header.error(f"tensor {name!r} ({desc['kind']}): {err}") from err
    return out
