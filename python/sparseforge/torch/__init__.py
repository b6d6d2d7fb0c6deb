"""sparseforge on PyTorch (optional extra ``[torch]``): one-shot pruning of transformers
models in place, and training-time sparsity.

One module per concern:

* :mod:`.oneshot` — :func:`prune_model` (the Wanda/SparseGPT protocol through the core),
  :func:`decoder_layers`;
* :mod:`.masks` — :class:`Sparsifier`: masks chosen by the core, kept exactly through any
  optimizer, saved with the model;
* :mod:`.schedules` — :class:`OneShot`, :class:`IterativeMagnitude`,
  :class:`GradualMagnitude` (Zhu & Gupta cubic), :class:`Pruner`;
* :mod:`.lottery` — :class:`LotteryTicket`, :func:`rewind`, :func:`random_reinit`;
* :mod:`.srste` — SR-STE (N:M learned in training);
* :mod:`.group_lasso` — :class:`Groups` (penalty and proximal step);
* :mod:`.dropout` — structured dropout: :class:`LayerDrop`, :class:`HeadDrop`,
  :class:`NeuronDrop`;
* :mod:`.importance` — :class:`GradientImportance` (Taylor, Fisher, movement);
* :mod:`.distill` — :func:`kd_loss`, :class:`Distiller`, :func:`to_transformers`,
  :func:`to_torch` (also SliceGPT-sliced models);
* :mod:`.moe` — router jitter, load-balancing and z losses, SparseMixer;
* :mod:`.loop` — :func:`train`, :func:`finetune`, :func:`prune_and_finetune`,
  :func:`sparsity_callback` (transformers ``Trainer``).

``prune_model`` and ``decoder_layers`` import without torch; the training names import
torch on first use (``ImportError`` with the install hint when it is missing).
"""

from __future__ import annotations

import importlib
from typing import Any

from .oneshot import decoder_layers, prune_model, text_windows

_LAZY = {
    "Sparsifier": "masks",
    "select_mask": "masks",
    "select_masks": "masks",
    "partial_nm_mask": "masks",
    "load_state_dict_with_masks": "masks",
    "OneShot": "schedules",
    "GradualMagnitude": "schedules",
    "IterativeMagnitude": "schedules",
    "Pruner": "schedules",
    "cubic_sparsity": "schedules",
    "LotteryTicket": "lottery",
    "rewind": "lottery",
    "snapshot": "lottery",
    "random_reinit": "lottery",
    "SRSTE": "srste",
    "apply_srste": "srste",
    "remove_srste": "srste",
    "Groups": "group_lasso",
    "LayerDrop": "dropout",
    "HeadDrop": "dropout",
    "NeuronDrop": "dropout",
    "GradientImportance": "importance",
    "Distiller": "distill",
    "kd_loss": "distill",
    "hidden_loss": "distill",
    "to_transformers": "distill",
    "to_torch": "distill",
    "train": "loop",
    "finetune": "loop",
    "prune_and_finetune": "loop",
    "sparsity_callback": "loop",
    "StepLog": "loop",
}

__all__ = ["decoder_layers", "prune_model", "text_windows", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'sparseforge.torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
