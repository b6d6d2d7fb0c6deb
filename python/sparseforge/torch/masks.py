"""Masks for training: chosen by the sparseforge core, kept through optimizer steps.

* :func:`select_mask` / :func:`select_masks` pick a mask with the **same core functions as
  the one-shot path** (:func:`sparseforge.prune.magnitude` per row or layer,
  :func:`~sparseforge.prune.magnitude_global`, N:M, :func:`~sparseforge.prune.block_magnitude`,
  :func:`~sparseforge.prune.wanda`), reading the weight through a zero-copy numpy view of a
  CPU float32 tensor, so a mask chosen during training equals the one-shot mask bit for bit
  on the same weights. Other devices/dtypes go through a float32 CPU copy.
* :class:`Sparsifier` holds one boolean mask per ``nn.Linear`` as a **persistent buffer**
  ``<linear>.sparsity_mask`` (so it is in ``model.state_dict()`` and follows
  ``model.to(device)``) and keeps masked weights exactly zero under any optimizer: a
  gradient hook (``Tensor.register_hook``) masks gradients before they accumulate (so
  clipping sees masked gradients), and an optimizer step post-hook
  (``Optimizer.register_step_post_hook``) re-zeroes the weights and every optimizer-state
  tensor shaped like the weight (momentum buffers, Adam moments), so neither momentum,
  weight decay nor a mask change can revive a pruned weight.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import prune as sfp
from ._util import check_fraction, float32_view, linears, torch_module

__all__ = [
    "MASK_BUFFER",
    "Sparsifier",
    "check_pattern_fits",
    "load_state_dict_with_masks",
    "model_signature",
    "partial_nm_mask",
    "select_mask",
    "select_masks",
]

MASK_BUFFER = "sparsity_mask"
_FILE_FORMAT = "sparseforge-masks"


def _pattern(pattern: Any) -> sfp.NMPattern | None:
    return None if pattern is None else sfp.parse_pattern(pattern)


def _block(block: Any) -> tuple[int, int] | None:
    if block is None:
        return None
    if isinstance(block, int) and not isinstance(block, bool):
        return (block, block)
    if isinstance(block, tuple) and len(block) == 2 and all(isinstance(b, int) for b in block):
        return (int(block[0]), int(block[1]))
    raise TypeError(f"block: expected an int or a (rows, cols) tuple, got {block!r}")


def check_pattern_fits(
    named_weights: Iterable[tuple[str, Any]], pattern: Any = None, block: Any = None
) -> None:
    """ValueError naming ``pattern``/``block`` and the first layer that cannot take it."""
    nm = _pattern(pattern)
    blk = _block(block)
    for name, w in named_weights:
        rows, cols = int(w.shape[0]), int(w.shape[1])
        if nm is not None and cols % nm.m:
            raise ValueError(
                f"pattern: {nm} needs in_features divisible by {nm.m}, but {name} has {cols}"
            )
        if blk is not None and (rows % blk[0] or cols % blk[1]):
            raise ValueError(
                f"block: {blk} does not tile {name}'s weight of shape ({rows}, {cols})"
            )


def select_mask(
    weight: Any,
    sparsity: float | None = None,
    *,
    pattern: Any = None,
    scope: str | None = None,
    block: Any = None,
    method: str = "magnitude",
    col_norms: Any = None,
    scores: Any = None,
) -> Any:
    """A boolean mask (True = kept) for one weight, chosen by the sparseforge core.

    Parameters
    ----------
    weight : torch.Tensor (out_features, in_features)
        Read through a zero-copy view when float32, contiguous and on the CPU.
    sparsity : float in [0, 1)
        Fraction pruned (default 0.5, or ``1 - n/m`` with a pattern).
    pattern : "n:m", optional
        N:M (n kept of every m along ``in_features``): ``sf.prune.magnitude(..., pattern=)``.
    scope : {"row", "layer"}, optional
        Ranking per output row or over the layer; default "row" (unstructured) or
        "layer" (blocks), the core's defaults.
    block : int or (rows, cols), optional
        Whole tiles with the smallest L2 norm (``sf.prune.block_magnitude``).
    method : {"magnitude", "wanda"}
        ``"wanda"`` ranks ``|w| * col_norms[j]`` per row (``col_norms`` required).
    scores : tensor or ndarray of weight's shape, optional
        Rank by ``|scores|`` instead of ``|w|`` (e.g. Taylor or Fisher scores from
        :mod:`sparseforge.torch.importance`); same core ranking and tie order.

    Returns
    -------
    torch.BoolTensor of weight's shape, on weight's device (a new tensor).
    """
    torch = torch_module()
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D tensor, got shape {tuple(weight.shape)}")
    src = weight if scores is None else torch.as_tensor(scores)
    if tuple(src.shape) != tuple(weight.shape):
        raise ValueError(f"scores: expected shape {tuple(weight.shape)}, got {tuple(src.shape)}")
    W, _ = float32_view(src)
    blk = _block(block)
    if method not in ("magnitude", "wanda"):
        raise ValueError(f"method: expected 'magnitude' or 'wanda', got {method!r}")
    if blk is not None:
        if pattern is not None or method != "magnitude":
            raise ValueError("block: block pruning is magnitude only and takes no pattern")
        s = 0.5 if sparsity is None else sparsity
        res = sfp.block_magnitude(W, s, blk, scope="layer" if scope is None else scope)
    elif method == "wanda":
        if col_norms is None:
            raise ValueError("col_norms: method='wanda' needs the input column norms")
        norms = np.ascontiguousarray(
            col_norms.detach().cpu().numpy() if hasattr(col_norms, "detach") else col_norms,
            dtype=np.float32,
        )
        res = sfp.wanda(W, norms, sparsity, pattern=pattern)
    else:
        res = sfp.magnitude(W, sparsity, scope="row" if scope is None else scope, pattern=pattern)
    return torch.from_numpy(res.mask).to(weight.device)


def select_masks(
    weights: Mapping[str, Any],
    sparsity: float | None = None,
    *,
    scope: str | None = None,
    pattern: Any = None,
    block: Any = None,
    scores: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Masks for several weights. ``scope="global"`` ranks all of them together with
    ``sf.prune.magnitude_global`` (one threshold; exact count ``int(sparsity * total)``);
    otherwise each weight gets :func:`select_mask`. All checks run before any work."""
    torch = torch_module()
    if not weights:
        raise ValueError("weights: expected at least one weight")
    check_pattern_fits(weights.items(), pattern, block)
    if scope == "global":
        if pattern is not None or block is not None:
            raise ValueError("scope: 'global' is unstructured; drop pattern/block")
        s = check_fraction(sparsity if sparsity is not None else 0.5, "sparsity")
        srcs = {
            n: (w if scores is None else torch.as_tensor(scores[n])) for n, w in weights.items()
        }
        views = [float32_view(t)[0] for t in srcs.values()]
        results = sfp.magnitude_global(views, s)
        return {
            n: torch.from_numpy(r.mask).to(w.device)
            for (n, w), r in zip(weights.items(), results, strict=True)
        }
    return {
        n: select_mask(
            w,
            sparsity,
            pattern=pattern,
            scope=scope,
            block=block,
            scores=None if scores is None else scores[n],
        )
        for n, w in weights.items()
    }


def partial_nm_mask(weight: Any, pattern: Any, level: float) -> Any:
    """N:M on a fraction ``level`` of the groups (gradual N:M).

    The full N:M mask comes from ``sf.prune.magnitude(pattern=)``; the
    ``floor(level * groups)`` groups whose pruned part has the smallest L1 norm take it
    (ties: lower group index first), the others stay dense. ``level = 1`` gives exactly the
    one-shot N:M mask."""
    torch = torch_module()
    nm = sfp.parse_pattern(pattern)
    full = select_mask(weight, pattern=nm)
    if level >= 1.0:
        return full
    W, _ = float32_view(weight)
    rows, cols = W.shape
    g = cols // nm.m
    cost = np.where(full.cpu().numpy(), 0.0, np.abs(W.astype(np.float64))).reshape(rows * g, nm.m)
    cost = cost.sum(axis=1)
    k = int(np.floor(level * rows * g))
    chosen = np.zeros(rows * g, dtype=bool)
    chosen[np.argsort(cost, kind="stable")[:k]] = True
    keep = np.ones((rows * g, nm.m), dtype=bool)
    keep[chosen] = full.cpu().numpy().reshape(rows * g, nm.m)[chosen]
    return torch.from_numpy(keep.reshape(rows, cols)).to(weight.device)


def model_signature(model: Any) -> str:
    """SHA-256 over the names and shapes of ``model``'s parameters (a mask file's key)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()


class Sparsifier:
    """Masks on a model's linears, kept exactly through training.

    Parameters
    ----------
    model : torch.nn.Module
    linear_filter : callable(name) -> bool, list of names, or None
        Which ``nn.Linear`` modules carry masks (default: all but ``lm_head``-like heads and
        routers).

    Notes
    -----
    Masks start all-True (nothing pruned) and are attached as buffers at construction; use
    :meth:`set_masks`, :meth:`prune` or :meth:`from_zeros`. Call :meth:`attach` with each
    optimizer (or :meth:`after_step` yourself after ``optimizer.step()``).
    """

    def __init__(
        self,
        model: Any,
        linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
    ) -> None:
        torch = torch_module()
        self.model = model
        self.modules: dict[str, Any] = dict(linears(model, linear_filter))
        self._grad_handles: list[Any] = []
        self._opt_handles: list[Any] = []
        for name, mod in self.modules.items():
            if not hasattr(mod, MASK_BUFFER):
                mod.register_buffer(
                    MASK_BUFFER,
                    torch.ones_like(mod.weight, dtype=torch.bool),
                    persistent=True,
                )
            if mod.weight.requires_grad:  # frozen weights need no gradient mask
                self._grad_handles.append(mod.weight.register_hook(self._grad_hook(name)))

    # -- construction helpers -------------------------------------------------------
    @classmethod
    def from_zeros(
        cls,
        model: Any,
        linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
    ) -> Sparsifier:
        """Masks = ``weight != 0`` (e.g. after :func:`sparseforge.torch.prune_model`)."""
        sp = cls(model, linear_filter)
        sp.set_masks({n: m.weight.detach() != 0 for n, m in sp.modules.items()})
        return sp

    @classmethod
    def from_report(cls, model: Any, report: Any) -> Sparsifier:
        """Masks from the zeros of the linears a :class:`~sparseforge.models.PruneReport`
        of :func:`sparseforge.torch.prune_model` names (``"{i}.{name}.weight"``)."""
        from .oneshot import decoder_layers

        layers = decoder_layers(model)
        full = {id(m): n for n, m in model.named_modules()}
        names = []
        for lr in report.layers:
            i, rest = lr.name.split(".", 1)
            try:
                mod = layers[int(i)].get_submodule(rest.removesuffix(".weight"))
            except (AttributeError, IndexError, ValueError) as e:
                raise ValueError(f"report: layer {lr.name!r} is not in this model") from e
            names.append(full[id(mod)])
        return cls.from_zeros(model, names)

    # -- masks ------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, Any]:
        return {n: getattr(m, MASK_BUFFER) for n, m in self.modules.items()}

    def weights(self) -> dict[str, Any]:
        return {n: m.weight for n, m in self.modules.items()}

    def set_masks(self, masks: Mapping[str, Any], *, monotone: bool = False) -> None:
        """Install ``masks`` (bool, True = kept) and zero the masked weights and optimizer
        state. All names and shapes are checked before anything changes. ``monotone``:
        AND with the current masks (a pruned weight never comes back)."""
        torch = torch_module()
        for name, mask in masks.items():
            if name not in self.modules:
                raise ValueError(f"masks: {name!r} is not a masked linear of this model")
            w = self.modules[name].weight
            if tuple(mask.shape) != tuple(w.shape):
                raise ValueError(
                    f"masks: {name!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}"
                )
        with torch.no_grad():
            for name, mask in masks.items():
                buf = getattr(self.modules[name], MASK_BUFFER)
                new = torch.as_tensor(mask, device=buf.device).to(torch.bool)
                if monotone:
                    new = new & buf
                buf.copy_(new)
        self.apply()

    def prune(
        self,
        sparsity: float | None = None,
        *,
        scope: str | None = None,
        pattern: Any = None,
        block: Any = None,
        scores: Mapping[str, Any] | None = None,
        monotone: bool = True,
    ) -> dict[str, Any]:
        """Choose masks with :func:`select_masks` on the current (masked) weights, install
        them and return them. Masked weights are zero, so they rank lowest and masks grow
        monotonically (``monotone`` also ANDs with the old masks)."""
        masks = select_masks(
            {n: w.detach() for n, w in self.weights().items()},
            sparsity,
            scope=scope,
            pattern=pattern,
            block=block,
            scores=scores,
        )
        self.set_masks(masks, monotone=monotone)
        return masks

    def apply(self) -> None:
        """Zero the masked weights (and masked optimizer state of attached optimizers)."""
        torch = torch_module()
        with torch.no_grad():
            for mod in self.modules.values():
                mod.weight.mul_(getattr(mod, MASK_BUFFER))
            for opt in self._optimizers():
                self._zero_state(opt)

    # -- keeping zeros through training --------------------------------------------------
    def _grad_hook(self, name: str) -> Callable[[Any], Any]:
        mod = self.modules[name]

        def hook(grad: Any) -> Any:
            return grad * getattr(mod, MASK_BUFFER)

        return hook

    def attach(self, optimizer: Any) -> Sparsifier:
        """Register step hooks on ``optimizer``: before ``step()`` mask gradients (set by
        any means), after it re-zero masked weights and optimizer state. Returns self."""
        self._opt_handles.append(
            (optimizer, optimizer.register_step_pre_hook(lambda opt, a, k: self.mask_grads()))
        )
        self._opt_handles.append(
            (optimizer, optimizer.register_step_post_hook(lambda opt, a, k: self.after_step(opt)))
        )
        return self

    def _optimizers(self) -> list[Any]:
        seen: list[Any] = []
        for opt, _ in self._opt_handles:
            if all(opt is not s for s in seen):
                seen.append(opt)
        return seen

    def mask_grads(self) -> None:
        torch = torch_module()
        with torch.no_grad():
            for mod in self.modules.values():
                if mod.weight.grad is not None:
                    mod.weight.grad.mul_(getattr(mod, MASK_BUFFER))

    def after_step(self, optimizer: Any = None) -> None:
        """Re-zero masked weights and ``optimizer``'s state entries at masked positions."""
        torch = torch_module()
        with torch.no_grad():
            for mod in self.modules.values():
                mod.weight.mul_(getattr(mod, MASK_BUFFER))
            if optimizer is not None:
                self._zero_state(optimizer)

    def _zero_state(self, optimizer: Any) -> None:
        for mod in self.modules.values():
            state = optimizer.state.get(mod.weight)
            if not state:
                continue
            mask = getattr(mod, MASK_BUFFER)
            for value in state.values():
                if hasattr(value, "shape") and tuple(value.shape) == tuple(mask.shape):
                    value.mul_(mask.to(value.device))

    def remove(self, *, keep_buffers: bool = False) -> None:
        """Detach every hook (weights keep their zeros); drop the mask buffers unless
        ``keep_buffers``."""
        for h in self._grad_handles:
            h.remove()
        for _, h in self._opt_handles:
            h.remove()
        self._grad_handles.clear()
        self._opt_handles.clear()
        if not keep_buffers:
            for mod in self.modules.values():
                if MASK_BUFFER in mod._buffers:
                    del mod._buffers[MASK_BUFFER]

    # -- reporting --------------------------------------------------------------------
    def sparsity(self) -> float:
        """Fraction of masked entries over all masked linears."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return float(1.0 - kept / total)

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(m.float().mean()) for n, m in self.masks.items()}

    def weight_sparsity(self) -> float:
        """Fraction of exact zeros in the masked linears' weights (>= :meth:`sparsity`)."""
        total = sum(m.weight.numel() for m in self.modules.values())
        zeros = sum(int((m.weight == 0).sum()) for m in self.modules.values())
        return float(zeros / total)

    # -- saving -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the masks (safetensors, uint8) with the model's signature; atomic."""
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {n: m.detach().cpu().numpy().astype(np.uint8) for n, m in self.masks.items()}
        meta = {
            "format": _FILE_FORMAT,
            "version": "1",
            "signature": model_signature(self.model),
            "names": json.dumps(list(tensors)),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike[str]) -> None:
        """Read masks written by :meth:`save`; a file for another model (other parameter
        names/shapes) or another set of linears raises ValueError and changes nothing."""
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FILE_FORMAT:
                raise ValueError(f"path: {path} is not a sparseforge mask file")
            if meta.get("signature") != model_signature(self.model):
                raise ValueError(
                    f"path: the mask file {path} was written for another model (parameter "
                    "names/shapes differ)"
                )
            masks = {k: f.get_tensor(k).astype(bool) for k in f.keys()}  # noqa: SIM118
        if set(masks) != set(self.modules):
            raise ValueError(f"path: the mask file {path} masks other linears than this one")
        torch = torch_module()
        self.set_masks({k: torch.from_numpy(v) for k, v in masks.items()})


def load_state_dict_with_masks(model: Any, state_dict: Mapping[str, Any]) -> Sparsifier | None:
    """Load a state dict saved from a masked model into a fresh one: attach a
    :class:`Sparsifier` on the linears whose ``.sparsity_mask`` keys are present first,
    then ``model.load_state_dict(state_dict)``. Returns the sparsifier (None without masks)."""
    torch = torch_module()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    suffix = "." + MASK_BUFFER
    names = [k[: -len(suffix)] for k in state_dict if k.endswith(suffix)]
    # check everything before a buffer or hook is added: a state dict written for another
    # model leaves this one untouched
    current = model.state_dict()
    modules = dict(model.named_modules())
    for n in names:
        mod = modules.get(n)
        if not isinstance(mod, torch.nn.Linear):
            raise ValueError(f"state_dict: {n}{suffix} names no nn.Linear of this model")
        if tuple(state_dict[n + suffix].shape) != tuple(mod.weight.shape):
            raise ValueError(
                f"state_dict: {n}{suffix} has shape {tuple(state_dict[n + suffix].shape)}, "
                f"the model's {n}.weight {tuple(mod.weight.shape)} (written for another model?)"
            )
    expected = set(current) | {n + suffix for n in names}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(
            f"state_dict: written for another model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for k, v in state_dict.items():
        if k in current and tuple(v.shape) != tuple(current[k].shape):
            raise ValueError(
                f"state_dict: {k} has shape {tuple(v.shape)}, the model's "
                f"{tuple(current[k].shape)} (written for another model?)"
            )
    sp = Sparsifier(model, names) if names else None
    model.load_state_dict(state_dict)
    if sp is not None:
        sp.apply()
    return sp
