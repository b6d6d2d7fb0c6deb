"""Auxiliary losses: load balancing (Switch, Mixtral, megablocks) and the router z-loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _core
from .._validate import check_choice, check_int, check_number
from ._common import AUX_LOSS_KINDS, BoolArray, F32Array, _f32, _ids, _logits

__all__ = ["load_balancing_loss", "z_loss"]


def _stack_layers(logits: Any) -> tuple[F32Array, int]:
    if isinstance(logits, list | tuple):
        if not logits:
            raise ValueError("logits: expected at least one layer")
        arrs = [_logits(a, f"logits[{i}]") for i, a in enumerate(logits)]
        if any(a.shape != arrs[0].shape for a in arrs):
            raise ValueError("logits: every layer must have the same (T, E) shape")
        return np.ascontiguousarray(np.concatenate(arrs, axis=0)), len(arrs)
    if isinstance(logits, np.ndarray) and logits.ndim == 3:
        x = _f32(logits, "logits", ndim=3)
        return np.ascontiguousarray(x.reshape(-1, x.shape[2])), int(x.shape[0])
    return _logits(logits), 1


def load_balancing_loss(
    logits: F32Array | Sequence[F32Array],
    *,
    kind: str = "switch",
    top_k: int = 1,
    alpha: float = 1.0,
    expert_ids: Any = None,
    token_mask: BoolArray | None = None,
) -> float:
    """The load-balancing auxiliary loss, normalised as ``kind`` does it.

    With ``p = softmax(logits)``, ``P_e`` the mean of ``p[:, e]`` over tokens, ``c_e`` the
    number of tokens sending a slot to ``e`` and ``E`` experts (docs/moe.md compares them):

    * ``"switch"``: ``alpha * E * sum_e f_e P_e`` with ``f_e = c_e / T`` counting the
      **top-1** choice only (Switch eq. 4; Tutel's GShard loss). Minimum ``alpha`` at
      uniform routing. Several layers: the mean of the per-layer losses.
    * ``"mixtral"``: HF transformers' ``load_balancing_loss_func`` times ``alpha``: **top-k**
      counts, ``f_e = c_e / T`` (so ``sum f = k``), ``f`` and ``P`` pooled over layers
      before the product. Minimum ``alpha * k``.
    * ``"megablocks"``: megablocks' ``batched_load_balancing_loss`` with
      ``moe_loss_weight = alpha``: ``alpha * E / (L T k) * sum_l sum_e c_le P_le``.
      Minimum ``alpha``.

    Parameters
    ----------
    logits : ndarray (T, E) or (L, T, E) float32, or a sequence of (T, E) arrays (layers)
    kind : {"switch", "mixtral", "megablocks"}
    top_k : int
        Experts per token (used by "mixtral" / "megablocks", and the width of
        ``expert_ids``).
    expert_ids : ndarray (L*T, k) or (T, k) integer, optional
        The experts actually chosen (e.g. ``RoutingResult.expert_ids`` of a group-limited
        router), column 0 the top-1. Default: top-k of ``softmax(logits)``, ties by lower
        index (what HF recomputes).
    token_mask : ndarray (T,) bool, optional
        Tokens to include (HF Mixtral's ``attention_mask``), the same for every layer.

    Returns
    -------
    float (computed in float64).
    """
    x, n_layers = _stack_layers(logits)
    check_choice(kind, "kind", AUX_LOSS_KINDS)
    k = check_int(top_k, "top_k", 1)
    a = check_number(alpha, "alpha")
    ids = None
    if expert_ids is not None:
        ids = _ids(expert_ids, "expert_ids")
        if ids.shape != (x.shape[0], k):
            raise ValueError(f"expert_ids: expected shape ({x.shape[0]}, {k}), got {ids.shape}")
    if token_mask is not None:
        if not isinstance(token_mask, np.ndarray) or token_mask.dtype != np.bool_:
            raise TypeError("token_mask: expected a numpy bool array")
        if token_mask.shape != (x.shape[0] // n_layers,):
            raise ValueError(
                f"token_mask: expected shape ({x.shape[0] // n_layers},), got {token_mask.shape}"
            )
        token_mask = np.ascontiguousarray(token_mask)
    return a * float(_core.moe.load_balancing_loss(x, n_layers, k, kind, ids, token_mask))


def z_loss(logits: F32Array | Sequence[F32Array], *, alpha: float = 1.0) -> float:
    """Router z-loss (ST-MoE): ``alpha * mean over tokens of logsumexp(logits_t)^2``.

    ``logits``: (T, E), (L, T, E) or a sequence of layers (the mean runs over all rows; HF
    SwitchTransformers uses ``alpha = 0.001``). float64 accumulation.
    """
    x, _ = _stack_layers(logits)
    return check_number(alpha, "alpha") * float(_core.moe.z_loss(x))


def __dir__() -> list[str]:
    return sorted(__all__)
