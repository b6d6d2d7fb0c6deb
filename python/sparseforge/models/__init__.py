"""Real models on the CPU: loaders for Llama-family checkpoints and one forward.

* :class:`LlamaConfig`, :class:`LlamaModel` (``forward``, ``nll``, ``generate``, ``block``
  by block for calibration), :class:`Hooks` (linear inputs, attention q/k/v, the SwiGLU
  hidden activation), :class:`KVCache`.
* :class:`Tokenizer` (protocol) and :class:`Llama2cTokenizer`.
* :func:`load` — a llama2.c ``.bin``, a ``.gguf`` file, a Hugging Face directory or a file
  written by :func:`save` (config, tokenizer and weights, pruned linears compressed).
* :func:`export_hf` (a Hugging Face directory transformers loads) and :func:`export_gguf`
  (a GGUF file llama.cpp runs); docs/export.md.
* :func:`prune` (in memory) and :func:`prune_streaming` (a Hugging Face directory pruned
  block by block into an output directory, one block in memory, resumable).
* :mod:`sparseforge.models.ops` — RMSNorm, RoPE, attention and the SwiGLU gate in the core.

Weights use Hugging Face Llama names (``model.layers.{i}.self_attn.q_proj.weight``...), each
``(out_features, in_features)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import ops
from .config import LlamaConfig, ModelConfig
from .distributed import RayPruneError, prune_ray
from .export_gguf import export_gguf
from .export_hf import ExportReport, export_hf
from .llama import DecodeCache, Hooks, KVCache, LlamaModel
from .llama2c import load_llama2c
from .perplexity import PerplexityResult, perplexity
from .pipeline import (
    METHODS,
    LayerReport,
    PruneReport,
    calibration_windows,
    prune,
    register_method,
)
from .save import SaveReport, load_saved, save
from .streaming import prune_streaming
from .tokenizer import Llama2cTokenizer, Tokenizer

__all__ = [
    "METHODS",
    "DecodeCache",
    "ExportReport",
    "Hooks",
    "KVCache",
    "LayerReport",
    "Llama2cTokenizer",
    "LlamaConfig",
    "LlamaModel",
    "ModelConfig",
    "PerplexityResult",
    "PruneReport",
    "RayPruneError",
    "SaveReport",
    "Tokenizer",
    "calibration_windows",
    "export_gguf",
    "export_hf",
    "load",
    "load_llama2c",
    "load_saved",
    "ops",
    "perplexity",
    "prune",
    "prune_ray",
    "prune_streaming",
    "register_method",
    "save",
]

_KINDS = (
    "a llama2.c legacy .bin file, a .gguf file, a Hugging Face directory with config.json, "
    "or a file written by sparseforge.models.save"
)


def load(path: str | os.PathLike[str], **kwargs: Any) -> LlamaModel:
    """Load a model, choosing the loader from what ``path`` is.

    * a directory with ``config.json`` -> ``sparseforge.models.hf.load_hf``
    * a ``.gguf`` file (or a file starting with the ``GGUF`` magic) -> ``...gguf.load_gguf``
    * a ``.bin`` file -> :func:`load_llama2c` (its ``tok512.bin`` / ``tokenizer.bin`` beside it)
    * a file written by :func:`save` -> :func:`load_saved`

    ``kwargs`` go to that loader. Anything else raises ``ValueError`` naming the path.
    """
    p = Path(path)
    if p.is_dir():
        from .compressed_tensors import is_compressed_tensors_dir, load_compressed_tensors

        if is_compressed_tensors_dir(p):
            return load_compressed_tensors(p, **kwargs)
        if (p / "config.json").is_file():
            from .hf import load_hf  # type: ignore[import-not-found,unused-ignore]

            model: LlamaModel = load_hf(p, **kwargs)
            return model
        raise ValueError(f"path: {p} is a directory without config.json; expected {_KINDS}")
    if not p.exists():
        raise FileNotFoundError(f"path: {p} does not exist; expected {_KINDS}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if p.suffix.lower() == ".gguf" or magic == b"GGUF":
        from .gguf import load_gguf  # type: ignore[import-not-found,unused-ignore]

        model = load_gguf(p, **kwargs)
        return model
    if p.suffix.lower() == ".bin":
        return load_llama2c(p, **kwargs)
    from .save import is_saved_model

    if is_saved_model(p):
        return load_saved(p, **kwargs)
    raise ValueError(f"path: {p} is not a recognised model; expected {_KINDS}")


def __dir__() -> list[str]:
    """Tab completion shows the public API only (not numpy, typing or helpers)."""
    return sorted(__all__)
