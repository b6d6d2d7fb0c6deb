"""Save a (pruned) model to one file and load it back: :func:`save`, :func:`load_saved`.

The file is an ``sf.save`` container (safetensors-compatible, atomic, CRC-checked): every
weight under its Hugging Face name, the linear weights compressed where that is smaller,
the :class:`LlamaConfig` and the tokenizer in the metadata. Pruned linears become
:class:`~sparseforge.format.NMTensor` when every group of ``m`` holds at most ``n``
non-zeros for a pattern that is smaller than the alternatives, else
:class:`~sparseforge.format.BitmapTensor` when that is smaller than dense, else stay
dense. The loaded model runs compressed linears through :func:`sparseforge.kernels.gemm`,
so it computes exactly what the saved one did (same values; the kernels accumulate in
float32, which may differ from numpy's BLAS in the last bits).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from .. import _container, _progress
from .. import format as _format
from .._io import parse_json
from .config import LlamaConfig
from .llama import LINEAR_SUFFIXES, LlamaModel, _is_compressed
from .tokenizer import Llama2cTokenizer, Tokenizer

__all__ = ["SaveReport", "is_saved_model", "load_saved", "save"]

_KEY_CONFIG = "sfmodel.config"
_KEY_TOKENIZER = "sfmodel.tokenizer"
_KEY_SOURCE = "sfmodel.source"
_TOKENIZER_BLOB = "sfmodel.tokenizer_data"  # uint8 tensor holding the tokenizer's file

# N:M patterns tried for a pruned linear, smallest code first.
_NM_CANDIDATES = ((1, 4), (2, 4), (2, 8), (4, 8), (4, 16), (8, 16))
_DTYPES = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


@dataclasses.dataclass(frozen=True)
class SaveReport:
    """What :func:`save` wrote.

    Attributes
    ----------
    path : str
    file_bytes : int
        Size of the file on disk.
    dense_bytes : int
        What the same weights take as dense arrays of the saved dtype.
    formats : dict of str to int
        How many linear weights went to each format (``"dense"``, ``"bitmap"``,
        ``"nm2:4"``...).
    dtypes : dict of str to int
        How many 2-D weights (linears and embeddings) were stored in each dtype.
    note : str
        How the dtype was chosen when ``save`` chose it (e.g. float16 for a quantised GGUF
        source); empty otherwise.
    """

    path: str
    file_bytes: int
    dense_bytes: int
    formats: dict[str, int]
    dtypes: dict[str, int] = dataclasses.field(default_factory=dict)
    note: str = ""

    @property
    def ratio(self) -> float:
        """``file_bytes / dense_bytes``."""
        return self.file_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        dts = ", ".join(f"{k} {v}" for k, v in sorted(self.dtypes.items()))
        text = (
            f"{self.path}: {self.file_bytes / 1e6:.2f} MB ({self.ratio:.3f} of dense "
            f"{self.dense_bytes / 1e6:.2f} MB; linears: {kinds}"
        )
        text += f"; weights: {dts})" if dts else ")"
        return f"{text}\n  {self.note}" if self.note else text


def _best_linear(w: np.ndarray) -> tuple[Any, str]:
    """The smallest of dense, an N:M tensor w fits exactly, and a bitmap tensor."""
    best: Any = w
    best_kind = "dense"
    best_bytes = int(w.nbytes)
    nz = w != 0
    rows, cols = w.shape
    for n, m in _NM_CANDIDATES:
        if cols % m:
            continue
        if int(nz.reshape(rows, cols // m, m).sum(axis=2).max(initial=0)) > n:
            continue
        t = _format.NMTensor.from_dense(w, n, m)
        if t.nbytes < best_bytes:
            best, best_kind, best_bytes = t, f"nm{n}:{m}", int(t.nbytes)
        break  # the first fitting pattern has the fewest kept values per group
    if np.count_nonzero(nz) < nz.size:
        b = _format.BitmapTensor.from_dense(w)
        if b.nbytes < best_bytes:
            best, best_kind = b, "bitmap"
    return best, best_kind


def _tokenizer_state(tok: Tokenizer | None) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    if tok is None:
        return None, None
    if isinstance(tok, Llama2cTokenizer):
        blob = np.frombuffer(tok.raw, dtype=np.uint8)
        return {"kind": "llama2c", "name": tok.name}, blob
    backend = getattr(tok, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        blob = np.frombuffer(backend.to_str().encode("utf-8"), dtype=np.uint8)
        info = {
            "kind": "tokenizers",
            "name": tok.name,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "vocab_size": tok.vocab_size,
            "declared_bos_id": getattr(tok, "declared_bos_id", tok.bos_id),
        }
        return info, blob
    raise ValueError(
        f"model: its tokenizer {type(tok).__name__} cannot be saved (expected a llama2.c or "
        "a `tokenizers` tokenizer); pass tokenizer=False to save the weights only"
    )


_STORED = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_F16_MAX = 65504.0


def stored_kind(model: LlamaModel, name: str) -> str | None:
    """How the checkpoint ``model`` was loaded from stores weight ``name``: ``"F32"``,
    ``"F16"``, ``"BF16"``, a GGUF quantisation (``"Q4_1"``...), or None when unknown (a
    llama2.c file, weights given as arrays)."""
    weights = model._weights
    for obj in (weights, getattr(weights, "_base", None)):
        for attr in ("stored_dtype", "tensor_type"):  # safetensors / GGUF mappings
            fn = getattr(obj, attr, None)
            if callable(fn):
                try:
                    return str(fn(name))
                except KeyError:
                    return None
    return None


def _source_dtype(model: LlamaModel, name: str, a: np.ndarray) -> tuple[np.dtype[Any] | None, str]:
    """The dtype to store a dense 2-D weight in by default: its checkpoint's storage dtype
    (float16/bfloat16 stay so, though the loaders widen them to float32), float16 for a
    quantised GGUF weight (bfloat16 if a value is beyond float16's range), else its own."""
    kind = stored_kind(model, name)
    if kind is None or a.ndim != 2:
        return None, ""
    if kind in _STORED:
        return _DTYPES[_STORED[kind]], ""
    finite_max = float(np.max(np.abs(a), initial=0.0)) if a.size else 0.0
    if finite_max <= _F16_MAX:
        return _DTYPES["float16"], kind
    return _DTYPES["bfloat16"], kind


def save(
    model: LlamaModel,
    path: str | os.PathLike[str],
    *,
    compress: bool = True,
    dtype: str | None = None,
    tokenizer: bool = True,
    progress: bool | None = None,
) -> SaveReport:
    """Write ``model`` (config, weights, tokenizer) to one file, atomically.

    Parameters
    ----------
    model : LlamaModel
        Its current weights (after :meth:`LlamaModel.set_weight` / pruning).
    path : file to write (a failure leaves an existing file untouched)
    compress : bool
        Store each linear weight in the smallest of dense, N:M (when it fits a pattern
        exactly) and bitmap (default). ``False`` stores everything dense.
    dtype : {"float32", "float16", "bfloat16"}, optional
        Convert the dense weights to this dtype first. Default: the source checkpoint's
        storage dtype for each 2-D weight (a bf16/fp16 checkpoint stays bf16/fp16 although
        the loaders compute in float32; a quantised GGUF weight is stored as float16, or
        bfloat16 when a value exceeds float16's range, and ``SaveReport.note`` says so);
        weights of unknown origin (llama2.c, arrays) keep their dtype. Compressed weights
        given to ``set_weight`` are stored as they are.
    tokenizer : bool
        Store the tokenizer too (llama2.c and ``tokenizers`` tokenizers).
    progress : bool or None
        A progress bar over the weights being converted and compressed, on stderr (None:
        when stderr is a terminal or ``SPARSEFORGE_PROGRESS=1``; False: quiet).

    Returns
    -------
    SaveReport
    """
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    target = None
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)} or None, got {dtype!r}")
        target = _DTYPES[dtype]
    tensors: dict[str, Any] = {}
    formats: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    quantised: dict[str, str] = {}  # quantisation type -> the dtype chosen for it
    dense_bytes = 0
    names = list(model.config.weight_shapes())
    names += [n for n in model._weights if n.endswith(".bias") and n not in names]
    _progress.check_progress(progress)
    bar = _progress.bar(len(names), "sparseforge save", unit="tensors", progress=progress)
    for name in names:
        bar.update()
        w = model.weight(name)
        linear = name == "lm_head.weight" or name.endswith(LINEAR_SUFFIXES)
        if _is_compressed(w):
            tensors[name] = w
            itemsize = np.dtype(w.dtype).itemsize
            dense_bytes += int(np.prod(w.shape)) * itemsize
            formats[type(w).__name__] = formats.get(type(w).__name__, 0) + 1
            continue
        a = np.asarray(w)
        to = target
        if to is None:
            to, quant = _source_dtype(model, name, a)
            if quant and to is not None:
                quantised[quant] = str(to)
        if to is not None and a.dtype != to:
            a = a.astype(to)
        if a.ndim == 2:
            dtypes[str(a.dtype)] = dtypes.get(str(a.dtype), 0) + 1
        dense_bytes += int(a.nbytes)
        if linear and compress and a.ndim == 2 and np.isfinite(a).all():
            stored, kind = _best_linear(np.ascontiguousarray(a))
            tensors[name] = stored
            formats[kind] = formats.get(kind, 0) + 1
        else:
            tensors[name] = a
            if linear:
                formats["dense"] = formats.get("dense", 0) + 1
    meta = {
        _KEY_CONFIG: json.dumps(dataclasses.asdict(model.config)),
        _KEY_SOURCE: model.source,
    }
    if tokenizer:
        info, blob = _tokenizer_state(model.tokenizer)
        if info is not None and blob is not None:
            meta[_KEY_TOKENIZER] = json.dumps(info)
            tensors[_TOKENIZER_BLOB] = blob
    bar.close()
    spath = os.fspath(path)
    _container.save(spath, tensors, metadata=meta)
    note = ""
    if quantised:
        kinds = ", ".join(f"{k} -> {v}" for k, v in sorted(quantised.items()))
        note = (
            f"the source stores quantised weights ({kinds}); sparseforge keeps no quantised "
            "format, so they were saved in that dtype (pass dtype= / --dtype to choose)"
        )
    return SaveReport(spath, os.path.getsize(spath), dense_bytes, formats, dtypes, note)


def is_saved_model(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file written by :func:`save` (reads the header only)."""
    try:
        return _KEY_CONFIG in _container.load_metadata(path)
    except (OSError, ValueError):
        return False


def _load_tokenizer(info: dict[str, Any], blob: np.ndarray, path: str, vocab: int) -> Tokenizer:
    kind = info.get("kind")
    if kind == "llama2c":
        return Llama2cTokenizer(str(info.get("name", path)), vocab, data=blob.tobytes())
    if kind == "tokenizers":
        from .hf_tokenizer import HFTokenizer, import_tokenizers

        tokenizers = import_tokenizers()
        backend = tokenizers.Tokenizer.from_str(blob.tobytes().decode("utf-8"))
        return HFTokenizer(
            backend,
            bos_id=info.get("bos_id"),
            eos_id=info.get("eos_id"),
            name=str(info.get("name", path)),
            vocab_size=info.get("vocab_size"),
            declared_bos_id=info.get("declared_bos_id"),
        )
    raise ValueError(f"{path}: unknown tokenizer kind {kind!r} in the metadata")


def load_saved(
    path: str | os.PathLike[str],
    *,
    tokenizer: bool = True,
    allow_nonfinite: bool = False,
    **model_kwargs: Any,
) -> LlamaModel:
    """Load a model written by :func:`save` (memory-mapped; compressed linears stay
    compressed). ``model_kwargs`` go to :class:`LlamaModel` (``num_threads``,
    ``linear_backend``). A NaN or Inf in any stored float array (compressed values
    included) is a ValueError naming the tensor unless ``allow_nonfinite=True``.

    Raises
    ------
    ValueError
        Naming the file: not a sparseforge model file, corrupt or truncated (CRC), a config
        that does not validate, weights that disagree with the config.
    """
    spath = os.fspath(path)
    meta = _container.load_metadata(spath)
    if _KEY_CONFIG not in meta:
        raise ValueError(
            f"{spath}: not a sparseforge model file (no {_KEY_CONFIG!r} in its metadata; "
            "expected a file written by sparseforge.models.save)"
        )
    try:
        fields = parse_json(meta[_KEY_CONFIG], "config")
        if not isinstance(fields, dict):
            raise TypeError(f"expected an object, got {type(fields).__name__}")
        config = LlamaConfig(**fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{spath}: the stored model config is invalid ({e})") from e
    tensors = _container.load(spath, mmap=True, allow_nonfinite=allow_nonfinite)
    tok = None
    blob = tensors.pop(_TOKENIZER_BLOB, None)
    if tokenizer and _KEY_TOKENIZER in meta and blob is not None:
        info = parse_json(meta[_KEY_TOKENIZER], f"{spath}: tokenizer metadata")
        if not isinstance(info, dict):
            raise ValueError(f"{spath}: tokenizer metadata: expected an object")
        tok = _load_tokenizer(info, blob, spath, config.vocab_size)
    layers = {n.split(".", 3)[2] for n in tensors if n.startswith("model.layers.")}
    if config.n_layers > len(layers):
        raise ValueError(
            f"{spath}: the stored config claims {config.n_layers} layers, the file holds "
            f"{len(layers)} blocks"
        )
    shapes = config.weight_shapes()
    for name, expected in shapes.items():
        if name not in tensors:
            raise ValueError(f"{spath}: weight {name!r} is missing")
        got = tuple(int(s) for s in tensors[name].shape)
        if got != expected:
            raise ValueError(f"{spath}: weight {name!r} has shape {got}, expected {expected}")
    source = meta.get(_KEY_SOURCE) or ""
    return LlamaModel(
        config,
        tensors,
        tok,
        source=f"{Path(spath).name} (saved from {source})" if source else spath,
        **model_kwargs,
    )
