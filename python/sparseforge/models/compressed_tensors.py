"""compressed-tensors checkpoints (what llm-compressor writes) in and out.

Reading (:func:`load_compressed_tensors`, used by :func:`sparseforge.models.load` for a
directory whose ``config.json`` has ``quantization_config.quant_method ==
"compressed-tensors"``): the sparse linears go straight into our compressed tensors, never
through a dense matrix, and run with our kernels.

Layouts (read from compressed-tensors 0.14.0.1, ``compressors/sparse_compressors``), per
compressed linear ``P`` (``P.weight`` is absent):

* ``sparse-24-bitmask``: ``P.shape`` int64 ``(2, 1)`` = ``[rows, cols]``; ``P.compressed``
  ``(rows, cols / 2)`` in the weight's dtype, the two kept values of each group of 4 in
  column order; ``P.bitmask`` uint8 ``(rows, ceil(cols / 8))``, ``np.packbits(keep,
  axis=-1, bitorder="little")`` with exactly two bits set per group (the package keeps the
  top-2 magnitudes, so a group with fewer non-zeros stores zeros). Read as
  :class:`~sparseforge.format.NMTensor` 2:4: the codes are the kept positions, and groups
  holding stored zeros get our canonical degenerate encoding.
* ``sparse-bitmask``: ``P.shape`` int64 ``(2,)``; ``P.compressed`` 1-D, the non-zeros row
  by row; ``P.bitmask`` as above with the bits of ``W != 0``; ``P.row_offsets`` int64
  ``(rows,)``, where each row starts in ``compressed``. Read as
  :class:`~sparseforge.format.BitmapTensor` (same bit order; our offsets have the total
  appended).
* ``dense`` (or no sparsity config): ordinary ``P.weight`` tensors (read by
  :func:`sparseforge.models.hf.load_hf`).

Quantized compressed-tensors checkpoints (``config_groups``: int8/fp8/int4 packing) are
refused. Writing (:func:`sparseforge.models.export_hf` with ``compression=``) produces the
same two layouts; which package versions read them is in docs/export.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _container
from .. import format as _format
from .._validate import check_bool
from .llama import LINEAR_SUFFIXES, LlamaModel, _is_compressed

__all__ = [
    "COMPRESSIONS",
    "compression_config",
    "is_compressed_tensors_dir",
    "load_compressed_tensors",
]

COMPRESSIONS = ("sparse-24-bitmask", "sparse-bitmask")
_VERSION_WRITTEN = "0.14.0.1"  # the compressed-tensors version whose layout we write


def _quant_config(d: Path) -> dict[str, Any] | None:
    try:
        with open(d / "config.json", encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors":
        return qc
    return None


def is_compressed_tensors_dir(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory``'s config.json declares a compressed-tensors checkpoint."""
    d = Path(directory)
    return d.is_dir() and _quant_config(d) is not None


def _sparsity_format(qc: dict[str, Any], where: Path) -> str:
    groups = qc.get("config_groups") or {}
    if groups:
        raise ValueError(
            f"{where}: a quantized compressed-tensors checkpoint (format "
            f"{qc.get('format')!r}, config_groups {sorted(groups)}); only dense, "
            "sparse-bitmask and sparse-24-bitmask checkpoints are read"
        )
    sc = qc.get("sparsity_config") or {}
    fmt = str(sc.get("format", "dense"))
    if fmt not in ("dense", *COMPRESSIONS):
        raise ValueError(
            f"{where}: sparsity format {fmt!r} is not read (expected dense, "
            f"{', '.join(COMPRESSIONS)})"
        )
    return fmt


# -- 2:4 bitmask <-> NMTensor ----------------------------------------------------------------


def nm24_from_bitmask(values: np.ndarray, bitmask: np.ndarray, shape: tuple[int, int]) -> Any:
    """An :class:`NMTensor` 2:4 from a sparse-24-bitmask weight's ``compressed`` values
    ``(rows, cols/2)`` and ``bitmask`` ``(rows, ceil(cols/8))`` (no dense matrix)."""
    rows, cols = shape
    if cols % 4 or values.shape != (rows, cols // 2) or bitmask.shape != (rows, -(-cols // 8)):
        raise ValueError(
            f"compressed: shapes {values.shape} / bitmask {bitmask.shape} do not describe a "
            f"2:4 weight of shape {shape}"
        )
    keep = np.unpackbits(bitmask, axis=-1, count=cols, bitorder="little").reshape(rows, -1, 4)
    if not (keep.sum(axis=2) == 2).all():
        raise ValueError("bitmask: expected exactly two set bits in every group of 4")
    pos = np.argsort(keep == 0, axis=2, kind="stable")[:, :, :2].astype(np.uint8)  # ascending
    vals = np.array(values.reshape(rows, -1, 2))
    nz = vals != 0
    bad = ~nz.all(axis=2)
    if bad.any():
        # degenerate groups: re-encode as our canonical 2:4 (docs/formats.md): one non-zero
        # at p -> slots (0,2) (1,2) (2,3) (2,3) for p = 0..3; none -> (2,3)
        r, g = np.nonzero(bad)
        v, p, z = vals[r, g], pos[r, g], nz[r, g]
        has = z.any(axis=1)
        which = np.where(z[:, 0], 0, 1)
        p_one = p[np.arange(len(p)), which]
        x = v[np.arange(len(v)), which]
        x = np.where(has, x, 0).astype(vals.dtype)
        table = np.array([[0, 2], [1, 2], [2, 3], [2, 3]], dtype=np.uint8)
        new_pos = np.where(has[:, None], table[p_one], np.array([2, 3], dtype=np.uint8))
        first = has & (p_one != 3)
        new_vals = np.zeros_like(v)
        new_vals[:, 0] = np.where(first, x, 0)
        new_vals[:, 1] = np.where(first, 0, x)
        pos[r, g] = new_pos
        vals[r, g] = new_vals
    nib = pos[:, :, 0] | (pos[:, :, 1] << 2)  # (rows, groups), 4 bits per group
    if nib.shape[1] % 2:
        nib = np.concatenate([nib, np.zeros((rows, 1), np.uint8)], axis=1)
    codes = np.ascontiguousarray(nib[:, 0::2] | (nib[:, 1::2] << 4), dtype=np.uint8)
    return _format.NMTensor.from_components(
        np.ascontiguousarray(vals.reshape(rows, -1)), codes, shape=(rows, cols), n=2, m=4
    )


def bitmask24_from_nm(t: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(compressed, bitmask)`` of a 2:4 :class:`NMTensor` in the sparse-24-bitmask
    layout (from its canonical values and codes; no dense matrix)."""
    rows, cols = t.shape
    codes = np.asarray(t.codes)
    lo, hi = codes & 0x0F, codes >> 4
    nib = np.stack([lo, hi], axis=2).reshape(rows, -1)[:, : cols // 4]
    keep = np.zeros((rows, cols // 4, 4), dtype=np.uint8)
    gi = np.arange(cols // 4)
    for idx in (nib & 3, (nib >> 2) & 3):
        keep[np.arange(rows)[:, None], gi[None, :], idx] = 1
    bitmask = np.packbits(keep.reshape(rows, cols), axis=-1, bitorder="little")
    return np.ascontiguousarray(t.values), bitmask


# -- reading -------------------------------------------------------------------------------


def _shape_of(raw: dict[str, np.ndarray], prefix: str) -> tuple[int, int]:
    s = np.asarray(raw[prefix + ".shape"]).reshape(-1)
    if s.size != 2:
        raise ValueError(f"{prefix}.shape: expected 2 entries, got {s.size}")
    return int(s[0]), int(s[1])


def _compressed_linear(raw: dict[str, np.ndarray], prefix: str, fmt: str) -> Any:
    shape = _shape_of(raw, prefix)
    values = raw[prefix + ".compressed"]
    bitmask = raw[prefix + ".bitmask"]
    if fmt == "sparse-24-bitmask":
        return nm24_from_bitmask(values, bitmask, shape)
    starts = np.asarray(raw[prefix + ".row_offsets"]).reshape(-1).astype(np.int64)
    offsets = np.append(starts, np.int64(values.size))
    return _format.BitmapTensor.from_components(
        shape, bitmap=np.ascontiguousarray(bitmask), values=values, row_offsets=offsets
    )


def load_compressed_tensors(
    directory: str | os.PathLike[str],
    *,
    tokenizer: bool = True,
    num_threads: int | None = None,
    linear_backend: str = "numpy",
    allow_nonfinite: bool = False,
    **dense_kwargs: Any,
) -> LlamaModel:
    """Load a compressed-tensors checkpoint directory (llm-compressor's output).

    Sparse linears become :class:`~sparseforge.format.NMTensor` (``sparse-24-bitmask``) or
    :class:`~sparseforge.format.BitmapTensor` (``sparse-bitmask``) in the stored dtype and
    run through :func:`sparseforge.kernels.gemm`; other tensors are memory-mapped arrays.
    A ``dense`` checkpoint is read by :func:`sparseforge.models.hf.load_hf` (``dense_kwargs``
    go there). A NaN or Inf in any stored float array (compressed values included) is a
    ValueError naming the tensor unless ``allow_nonfinite=True``.

    Raises
    ------
    ValueError
        Naming the directory/tensor: not compressed-tensors, quantized, an unknown format,
        a missing or misshapen weight, inconsistent compressed components.
    """
    from .hf import _safetensors_files, load_hf, read_hf_config

    d = Path(directory)
    qc = _quant_config(d)
    if qc is None:
        raise ValueError(f"{d}: config.json declares no compressed-tensors checkpoint")
    fmt = _sparsity_format(qc, d)
    if fmt == "dense":
        return load_hf(
            d,
            tokenizer=tokenizer,
            num_threads=num_threads,
            linear_backend=linear_backend,
            allow_nonfinite=allow_nonfinite,
            **dense_kwargs,
        )
    config = read_hf_config(d)
    raw: dict[str, np.ndarray] = {}
    for f in _safetensors_files(d):
        raw.update(
            _container.load(
                f,
                mmap=True,
                verify=False,
                allow_nonfinite=check_bool(allow_nonfinite, "allow_nonfinite"),
            )
        )
    weights: dict[str, Any] = {}
    shapes = dict(config.weight_shapes())
    if config.arch == "qwen2":
        for i in range(config.n_layers):
            for proj, rows in (("q", config.q_dim), ("k", config.kv_dim), ("v", config.kv_dim)):
                shapes[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = (rows,)
    for name, shape in shapes.items():
        prefix = name[: -len(".weight")]
        try:
            if name in raw:
                w = raw[name]
            elif name.endswith(".weight") and prefix + ".compressed" in raw:
                w = _compressed_linear(raw, prefix, fmt)
            else:
                raise ValueError(f"{d}: missing weight {name!r}")
        except KeyError as e:
            raise ValueError(f"{d}: {prefix}: missing compressed component {e}") from None
        except ValueError as e:
            raise ValueError(f"{d}: {prefix}: {e}") from None
        got = tuple(int(s) for s in w.shape)
        if got != shape:
            raise ValueError(f"{d}: weight {name!r} has shape {got}, expected {shape}")
        weights[name] = w
    tok = None
    if tokenizer and (d / "tokenizer.json").is_file():
        from .hf_tokenizer import HFTokenizer

        tok = HFTokenizer.from_directory(d)
    return LlamaModel(
        config,
        weights,
        tok,
        source=f"{d} (compressed-tensors {fmt})",
        num_threads=num_threads,
        linear_backend=linear_backend,
    )


# -- writing (export_hf(..., compression=...)) ------------------------------------------------


def is_target(name: str) -> bool:
    """The linears compressed on export: every block linear (``targets: ["Linear"]``);
    ``lm_head`` is ignored, as llm-compressor's recipes do."""
    return name.endswith(LINEAR_SUFFIXES)


def fits(model: LlamaModel, name: str, fmt: str) -> tuple[bool, int]:
    """``(fits the format, stored values)`` for a block linear."""
    w = model.weight(name)
    rows, cols = (int(s) for s in w.shape)
    if fmt == "sparse-24-bitmask":
        if cols % 4:
            return False, 0
        if _is_compressed(w) and isinstance(w, _format.NMTensor) and (w.n, w.m) == (2, 4):
            return True, rows * cols // 2
        a = w.to_dense() if _is_compressed(w) else np.asarray(w)
        ok = bool((np.count_nonzero(a.reshape(rows, -1, 4), axis=2) <= 2).all())
        return ok, rows * cols // 2
    nnz = int(w.nnz) if hasattr(w, "nnz") else int(np.count_nonzero(np.asarray(w)))
    if _is_compressed(w) and not hasattr(w, "nnz"):
        nnz = int(np.count_nonzero(w.to_dense()))
    return True, nnz


def compressed_sizes(rows: int, cols: int, nnz: int, itemsize: int, fmt: str) -> int:
    mask = rows * (-(-cols // 8))
    if fmt == "sparse-24-bitmask":
        return rows * cols // 2 * itemsize + mask + 16
    return nnz * itemsize + mask + 16 + 8 * rows


def compressed_entries(
    model: LlamaModel, name: str, fmt: str, dense: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """The stored tensors of one linear in ``fmt`` (``dense`` is its Hugging Face-order
    array in the output dtype)."""
    prefix = name[: -len(".weight")]
    rows, cols = dense.shape
    if fmt == "sparse-24-bitmask":
        w = model.weight(name)
        if (
            isinstance(w, _format.NMTensor)
            and (w.n, w.m) == (2, 4)
            and w.dtype == dense.dtype
            and model.config.rope_style == "half"
        ):
            nm = w
        else:
            nm = _format.NMTensor.from_dense(dense, 2, 4)
        values, bitmask = bitmask24_from_nm(nm)
        shape = np.array([[rows], [cols]], dtype=np.int64)
    else:
        bt = _format.BitmapTensor.from_dense(dense)
        values, bitmask = np.asarray(bt.values), np.asarray(bt.bitmap)
        shape = np.array([rows, cols], dtype=np.int64)
    out = [(prefix + ".bitmask", bitmask), (prefix + ".compressed", values)]
    if fmt == "sparse-bitmask":
        out.append((prefix + ".row_offsets", np.asarray(bt.row_offsets)[:-1].astype(np.int64)))
    out.append((prefix + ".shape", shape))
    return out


def compression_config(fmt: str, ignore: list[str], global_sparsity: float) -> dict[str, Any]:
    """The ``quantization_config`` entry of config.json (as ``ModelCompressor.update_config``
    writes it)."""
    return {
        "quant_method": "compressed-tensors",
        "version": _VERSION_WRITTEN,
        "sparsity_config": {
            "format": fmt,
            "global_sparsity": global_sparsity,
            "ignore": ignore,
            "registry_requires_subclass": False,
            "sparsity_structure": "2:4" if fmt == "sparse-24-bitmask" else "unstructured",
            "targets": ["Linear"],
        },
        "transform_config": {},
    }
