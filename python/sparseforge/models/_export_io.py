"""What the exports share: output-path checks made before any work, atomic directory and
file writes (a temporary sibling renamed into place), the model's weights in Hugging Face
row order, and a streaming safetensors writer.

A failure anywhere (a full disk, an interrupt, a weight that cannot be expressed) removes
the temporary sibling and leaves the target as it was: absent, or the old directory/file
when ``overwrite=True`` replaced it. Both writers are ``sparseforge._io``'s
(``atomic_directory``, ``atomic_path``): a killed export's temporaries are removed by the
next export to the same target.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from .._io import atomic_directory, atomic_path
from .llama import LINEAR_SUFFIXES, LlamaModel, _is_compressed

__all__ = [
    "DTYPES",
    "atomic_directory",
    "atomic_file",
    "check_model",
    "check_out_dir",
    "check_out_file",
    "hf_order_weight",
    "parse_dtype",
    "write_safetensors",
]

DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
ST_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
ST_NAMES[np.dtype(ml_dtypes.bfloat16)] = "BF16"
# compressed-tensors components also store int64 shapes/offsets and uint8 bitmasks
_HEADER_NAMES = {**ST_NAMES, np.dtype("<i8"): "I64", np.dtype(np.uint8): "U8"}


def check_model(model: Any) -> LlamaModel:
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a sparseforge LlamaModel, got {type(model).__name__}")
    return model


def parse_dtype(dtype: Any, what: str = "dtype") -> np.dtype[Any] | None:
    """None, a name of :data:`DTYPES` or a numpy dtype (float32/float16/bfloat16)."""
    if dtype is None:
        return None
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    dt: np.dtype[Any] | None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in ST_NAMES:
        raise ValueError(f"{what}: expected one of {', '.join(DTYPES)} or None, got {dtype!r}")
    return dt


def _path_arg(out: Any, what: str) -> Path:
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a path (str or os.PathLike), got {type(out).__name__}")
    p = Path(out)
    if not str(out):
        raise ValueError(f"{what}: expected a path, got an empty string")
    return p


def _check_parent(p: Path, what: str) -> None:
    parent = p.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{what}: the folder {parent} (where {p.name} goes) does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: the folder {parent} is not writable")


def check_out_dir(out: Any, overwrite: bool, what: str = "out") -> Path:
    """Validate an output directory before any work: its parent exists and is writable;
    it is absent, an empty directory, or (``overwrite=True``) a directory."""
    p = _path_arg(out, what)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected a bool, got {type(overwrite).__name__}")
    _check_parent(p, what)
    if p.exists() or p.is_symlink():
        if not p.is_dir() or p.is_symlink():
            raise ValueError(f"{what}: {p} exists and is not a directory")
        if any(p.iterdir()) and not overwrite:
            raise ValueError(
                f"{what}: {p} exists and is not empty; pass overwrite=True (--overwrite) "
                "to replace it"
            )
    return p


def check_out_file(out: Any, overwrite: bool, what: str = "out") -> Path:
    """Validate an output file before any work: its parent exists and is writable; it is
    absent or (``overwrite=True``) a regular file."""
    p = _path_arg(out, what)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite: expected a bool, got {type(overwrite).__name__}")
    _check_parent(p, what)
    if p.exists() or p.is_symlink():
        if p.is_dir():
            raise ValueError(f"{what}: {p} is a directory, expected a file path")
        if not overwrite:
            raise ValueError(f"{what}: {p} exists; pass overwrite=True (--overwrite) to replace it")
    return p


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is fsynced and renamed onto
    ``target``, on failure removed (the library's one atomic writer, ``_io.atomic_path``:
    temporaries of a killed earlier export are removed by the next)."""
    with atomic_path(target) as tmp:
        yield tmp


# -- weights -------------------------------------------------------------------------------


def _hf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Interleaved-pair row order -> Hugging Face ``rotate_half`` order, per head."""
    from .gguf import unpermute_qk

    return unpermute_qk(w, n_heads)


def hf_order_weight(model: LlamaModel, name: str, dtype: np.dtype[Any] | None) -> np.ndarray:
    """Weight ``name`` as a dense C-contiguous array in Hugging Face conventions: compressed
    tensors expanded (zeros stay exact zeros), Q/K rows (and biases) of an
    ``rope_style="interleaved"`` model permuted to ``rotate_half`` order, cast to ``dtype``
    when given (else the weight's own dtype; float32 for 1-D tensors of other dtypes
    stays as stored)."""
    w = model.weight(name)
    a = w.to_dense() if _is_compressed(w) else np.asarray(w)
    c = model.config
    if c.rope_style == "interleaved":
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
            a = _hf_rows(a, c.n_heads)
        elif name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
            a = _hf_rows(a, c.n_kv_heads)
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    if a.dtype not in ST_NAMES:
        raise ValueError(f"model: weight {name!r} has dtype {a.dtype}, expected a float dtype")
    return np.ascontiguousarray(a)


def export_names(model: LlamaModel) -> list[str]:
    """Every tensor the model reads (``config.weight_shapes()``) plus its biases."""
    names = list(model.config.weight_shapes())
    names += sorted(n for n in model._weights if n.endswith(".bias") and n not in names)
    return names


def is_linear(name: str) -> bool:
    return name == "lm_head.weight" or name.endswith(LINEAR_SUFFIXES)


# -- safetensors ---------------------------------------------------------------------------


def safetensors_header(entries: list[tuple[str, np.dtype[Any], tuple[int, ...]]]) -> bytes:
    """The 8-byte length and JSON header (padded with spaces to 8 bytes) for tensors laid
    out back to back in ``entries`` order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": _HEADER_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors(f: IO[bytes], arrays: list[tuple[str, np.ndarray]]) -> None:
    """Write one safetensors file (metadata ``{"format": "pt"}``, as transformers expects)."""
    f.write(safetensors_header([(n, a.dtype, a.shape) for n, a in arrays]))
    for _, a in arrays:
        write_array(f, a)


def write_array(f: IO[bytes], a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.size:
        f.write(a.reshape(-1).view(np.uint8).data)
