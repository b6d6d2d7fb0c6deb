"""Shared helpers of sparseforge.torch: the lazy torch import, zero-copy numpy views,
choosing the linears to sparsify, argument checks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._validate import check_fraction as check_fraction  # re-exported for the torch modules
from .._validate import check_int as check_int
from .._validate import check_number


def torch_module() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised without torch only
        raise ImportError(
            "sparseforge.torch needs PyTorch: pip install torch (CPU build: torch==2.13.0)"
        ) from e
    return torch


def float32_view(t: Any) -> tuple[np.ndarray, bool]:
    """A numpy array over ``t``'s memory when it is a contiguous float32 CPU tensor
    (zero-copy: writes go to the tensor; ``True``), else a float32 copy (``False``)."""
    torch = torch_module()
    t = t.detach()
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return t.numpy(), True
    return t.to(device="cpu", dtype=torch.float32).contiguous().numpy().copy(), False


def check_float(value: Any, name: str, minimum: float = 0.0) -> float:
    """A finite float >= ``minimum`` (``sparseforge._validate.check_number``)."""
    return check_number(value, name, minimum, None)


def default_filter(name: str) -> bool:
    """Linears pruned by default: everything but the output head (``lm_head``, tied to the
    embedding in many LLMs) and MoE routers/gates of experts' choice."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf not in ("lm_head", "router", "gate", "classifier", "score")


def linears(
    model: Any, linear_filter: Callable[[str], bool] | Iterable[str] | None = None
) -> list[tuple[str, Any]]:
    """``(name, nn.Linear)`` pairs of ``model`` to sparsify, in module order.

    ``linear_filter``: a callable on the module name, an explicit list of names, or None
    (every linear except :func:`default_filter`'s exclusions)."""
    torch = torch_module()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    all_linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n]
    if linear_filter is None:
        chosen = [(n, m) for n, m in all_linears if default_filter(n)]
    elif callable(linear_filter):
        chosen = [(n, m) for n, m in all_linears if linear_filter(n)]
    else:
        names = list(linear_filter)
        by_name = dict(all_linears)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"linear_filter: no nn.Linear named {missing[:3]} in model")
        chosen = [(n, by_name[n]) for n in names]
    if not chosen:
        raise ValueError("model: no nn.Linear selected to sparsify")
    return chosen
