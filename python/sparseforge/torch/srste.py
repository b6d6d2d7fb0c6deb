"""N:M learned during training: SR-STE (Zhou et al., ICLR 2021; aojunzz/NM-sparsity).

Forward: ``W~ = W * M(W)`` where ``M`` keeps the n largest ``|w|`` of every m consecutive
weights along ``in_features`` (chosen by ``sf.prune.magnitude(pattern=)``: ties go to the
lower index, as the one-shot path). Backward: the dense ``W`` receives
``dL/dW~ + decay * (1 - M) * W`` (straight-through plus the sparse-refined decay on the
currently pruned weights; ``decay = 0`` is plain STE). The mask is recomputed every
``refresh`` forwards in training mode (1 = every step, SR-STE; a frozen mask is the ASP
fixed-mask recipe).

Implemented as a ``torch.nn.utils.parametrize`` parametrization of ``weight``;
:func:`remove_srste` squashes it (the weight becomes the N:M-sparse one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import prune as sfp
from ._util import check_float, check_int, linears, torch_module
from .masks import check_pattern_fits, select_mask

__all__ = ["SRSTE", "apply_srste", "remove_srste", "srste_modules"]

torch = torch_module()
_Function: Any = torch.autograd.Function
_Module: Any = torch.nn.Module


class _SRSTEFunction(_Function):  # type: ignore[misc]
    @staticmethod
    def forward(ctx: Any, weight: Any, mask: Any, decay: float) -> Any:
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        weight, mask = ctx.saved_tensors
        g = grad
        if ctx.decay:
            g = grad + ctx.decay * (~mask) * weight
        return g, None, None


class SRSTE(_Module):  # type: ignore[misc]
    """The SR-STE parametrization of one weight.

    Attributes
    ----------
    mask : BoolTensor buffer (the last mask used in a forward)
    flips : int
        Mask entries that changed at the last refresh (the "sparse architecture
        divergence" the paper tracks).
    """

    def __init__(self, pattern: Any = "2:4", decay: float = 2e-4, refresh: int = 1) -> None:
        super().__init__()
        self.nm = sfp.parse_pattern(pattern)
        self.decay = check_float(decay, "decay")
        self.refresh = check_int(refresh, "refresh", 0)
        self.frozen = False
        self.calls = 0
        self.flips = 0
        self.register_buffer("mask", torch.empty(0, dtype=torch.bool), persistent=False)

    def forward(self, weight: Any) -> Any:
        mask: Any = self._buffers["mask"]
        if mask.numel() == 0 or (
            self.training
            and not self.frozen
            and self.refresh > 0
            and self.calls % self.refresh == 0
        ):
            new = select_mask(weight.detach(), pattern=self.nm)
            if mask.numel():
                self.flips = int((new != mask).sum())
            self._buffers["mask"] = mask = new
        if self.training:
            self.calls += 1
        return _SRSTEFunction.apply(weight, mask, self.decay)


def apply_srste(
    model: Any,
    pattern: Any = "2:4",
    *,
    decay: float = 2e-4,
    refresh: int = 1,
    linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
) -> list[str]:
    """Register :class:`SRSTE` on the weight of every selected linear (checked first: a
    pattern that does not fit a layer raises ValueError and nothing is registered).
    Returns the module names."""
    from torch.nn.utils import parametrize

    chosen = linears(model, linear_filter)
    nm = sfp.parse_pattern(pattern)
    check_pattern_fits(((n, m.weight) for n, m in chosen), nm)
    check_float(decay, "decay")
    check_int(refresh, "refresh", 0)
    for _, mod in chosen:
        parametrize.register_parametrization(mod, "weight", SRSTE(nm, decay, refresh))
    return [n for n, _ in chosen]


def srste_modules(model: Any) -> dict[str, SRSTE]:
    """``{linear name: its SRSTE parametrization}``."""
    from torch.nn.utils import parametrize

    out = {}
    for name, mod in model.named_modules():
        if parametrize.is_parametrized(mod, "weight"):
            for p in mod.parametrizations.weight:
                if isinstance(p, SRSTE):
                    out[name] = p
    return out


def remove_srste(model: Any) -> None:
    """Squash every SR-STE parametrization: ``weight`` becomes the N:M-sparse weight
    (``remove_parametrizations(leave_parametrized=True)``) and the state dict keys are
    plain again."""
    from torch.nn.utils import parametrize

    for name in list(srste_modules(model)):
        mod = model.get_submodule(name)
        was_training = mod.training
        mod.eval()  # squash with the last mask, not a refreshed one
        parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        mod.train(was_training)
