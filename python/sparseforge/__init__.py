"""sparseforge: weight, activation and KV-cache sparsity for LLMs on the CPU.

Arrays are numpy, row-major; a weight ``W`` has shape ``(out_features, in_features)``.
Storage dtypes are float32, float16 and bfloat16 (``ml_dtypes.bfloat16``); compute is
float32. N:M means *n kept* of every *m* consecutive weights along ``in_features``.

Areas: :mod:`sparseforge.calib` (streaming calibration statistics), :mod:`sparseforge.prune`
(masks, magnitude, N:M, Wanda, SparseGPT, OBS/OBD, reconstruction), :mod:`sparseforge.format`
(N:M, bitmap and CSR compressed weights, PyTorch's 2:4 layout), :mod:`sparseforge.kernels`
(dense, N:M, unstructured and activation-sparse GEMV/GEMM), :mod:`sparseforge.kv` (a paged
KV cache with eviction/selection policies, decode attention, MLA), :mod:`sparseforge.models`
(checkpoint loaders, a CPU Llama-family forward, perplexity, block-by-block pruning, saving
pruned models), :mod:`sparseforge.moe` (MoE routers, capacity/dropping, load-balancing and
z losses, dispatch/combine, MoE FFN, expert pruning) and :func:`save` / :func:`load` (a
safetensors-compatible container). :mod:`sparseforge.torch` (optional, needs PyTorch)
prunes transformers models in place. :mod:`sparseforge.runtime` runs a model's prefill,
decode steps and generation in the core (one call per step, any weight format, TEAL).
"""

from __future__ import annotations

try:
    from . import _core
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "sparseforge's compiled core (_core) is missing. Install the package with "
        "`pip install .` from the source tree rather than importing python/sparseforge "
        "directly."
    ) from err

from . import activation, calib, format, kernels, kv, models, moe, prune, runtime, structured
from ._base import (
    DTypeError,
    NumericalError,
    build_info,
    cast,
    default_num_threads,
    detected_simd_level,
    set_simd_level,
    simd_level,
)
from ._container import load, load_metadata, save

__version__: str = _core.__version__

__all__ = [
    "DTypeError",
    "NumericalError",
    "__version__",
    "activation",
    "build_info",
    "calib",
    "cast",
    "default_num_threads",
    "detected_simd_level",
    "format",
    "kernels",
    "kv",
    "load",
    "load_metadata",
    "models",
    "moe",
    "prune",
    "runtime",
    "save",
    "set_simd_level",
    "simd_level",
    "structured",
]


def __dir__() -> list[str]:
    return __all__
