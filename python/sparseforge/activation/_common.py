"""Shared pieces of sparseforge.activation: projection names, argument checks, the dense path."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ..models.llama import LINEAR_SUFFIXES, LlamaModel

F32Array = npt.NDArray[np.float32]
#: The 7 projections of a block, in forward order (short names of ``LINEAR_SUFFIXES``).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")
_SUFFIX = dict(zip(PROJECTIONS, LINEAR_SUFFIXES, strict=True))
_FORMAT = "sparseforge.activation.thresholds"
_VERSION = 1


def _model_arg(model: Any) -> LlamaModel:
    if not isinstance(model, LlamaModel):
        raise TypeError(
            f"model: expected a sparseforge.models.LlamaModel, got {type(model).__name__}"
        )
    return model


def _silu(g: F32Array) -> F32Array:
    with np.errstate(over="ignore"):
        out: F32Array = (g / (1.0 + np.exp(-g))).astype(np.float32, copy=False)
    return out


def _block_of(name: str) -> int:
    return int(name.split(".")[2])


def _proj_of(name: str) -> str:
    for p, s in _SUFFIX.items():
        if name.endswith(s):
            return p
    raise KeyError(name)


def _linear_names(model: LlamaModel) -> list[str]:
    return [n for i in range(model.config.n_layers) for n in model.linear_names(i)]


def _param_counts(model: LlamaModel) -> dict[str, int]:
    shapes = model.config.weight_shapes()
    return {n: int(np.prod(shapes[n])) for n in _linear_names(model)}


def _dense(model: LlamaModel, name: str, x: F32Array) -> F32Array:
    """The model's own dense product ``x @ W.T`` (same backend as its forward)."""
    return model._matmul(model.weight(name), x)
