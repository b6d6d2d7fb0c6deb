"""Structured dropout: whole decoder layers (LayerDrop), attention heads (DropHead) and
MLP neurons dropped during training.

* :class:`LayerDrop` — Fan, Grave & Joulin 2019, "Reducing Transformer Depth on Demand
  with Structured Dropout": each decoder layer is skipped (its residual branch removed,
  the hidden states pass through unchanged) with probability ``p`` at every training
  forward, the same decision for the whole batch, no rescaling (a skipped layer is not
  computed at all). A model trained so keeps
  its accuracy when layers are removed afterwards (``sf.structured.depth``).
  ``schedule="linear"`` gives layer ``i`` (of ``L``) the rate ``p * (i + 1) / L``
  (stochastic depth, Huang et al. 2016).
* :class:`HeadDrop` — DropHead (Zhou et al. 2020): every attention head's output is
  dropped with probability ``p``, independently per sequence of the batch, and the kept
  heads scaled by ``1 / (1 - p)`` (inverted dropout; the expectation is unchanged).
  Implemented as a forward pre-hook on the output projection (``o_proj``), whose input
  is the concatenation of the heads.
* :class:`NeuronDrop` — the same on MLP neurons: a pre-hook on ``down_proj`` drops whole
  intermediate channels per sequence (the units Minitron / group lasso remove).

All three act only in training mode (``model.train()``), are the identity in eval mode,
draw from their own ``torch.Generator`` (``seed``: deterministic, independent of the
global RNG), record the last decision (``last``) and detach with :meth:`remove`.
Bad arguments raise before any hook is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._util import check_fraction, check_int, torch_module


def _layers(model: Any) -> Any:
    from .oneshot import decoder_layers

    try:
        return decoder_layers(model)
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"model: no decoder layers found ({e})") from e


class _Base:
    def __init__(self, p: float, seed: int) -> None:
        torch = torch_module()
        self.p = check_fraction(p, "p")
        seed = check_int(seed, "seed")
        self.generator = torch.Generator().manual_seed(seed)
        self._handles: list[Any] = []
        self.last: Any = None

    def _rand(self, *shape: int) -> Any:
        return torch_module().rand(*shape, generator=self.generator)

    def remove(self) -> None:
        """Detach every hook (the model is as before)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


class LayerDrop(_Base):
    """Skip whole decoder layers at random while training.

    Parameters
    ----------
    model : torch.nn.Module
        A decoder model whose layers map hidden states to hidden states (transformers
        Llama-family decoder layers, which return a tensor).
    p : float in [0, 1)
        Drop rate (the deepest layer's with ``schedule="linear"``).
    schedule : "uniform" or "linear"
    rates : sequence of floats, optional
        One rate per layer (overrides ``p``/``schedule``).
    seed : int

    ``last`` is the list of layer indices skipped at the last training forward.
    """

    def __init__(
        self,
        model: Any,
        p: float = 0.1,
        *,
        schedule: str = "uniform",
        rates: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(p, seed)
        layers = _layers(model)
        n = len(layers)
        if rates is not None:
            if len(rates) != n:
                raise ValueError(f"rates: expected {n} rates (one per layer), got {len(rates)}")
            self.rates = [check_fraction(r, f"rates[{i}]") for i, r in enumerate(rates)]
        elif schedule == "uniform":
            self.rates = [self.p] * n
        elif schedule == "linear":
            self.rates = [self.p * (i + 1) / n for i in range(n)]
        else:
            raise ValueError(f"schedule: expected 'uniform' or 'linear', got {schedule!r}")
        self.model = model
        self.last = []
        self._patched: list[tuple[Any, Any]] = []
        self._tuple = [False] * n
        self._handles.append(model.register_forward_pre_hook(self._new_forward))
        for i, layer in enumerate(layers):
            self._patched.append((layer, layer.__dict__.get("forward")))
            layer.forward = self._wrap(i, layer, layer.forward)

    def _new_forward(self, module: Any, args: Any) -> None:
        if module.training:
            self.last = []

    def _wrap(self, i: int, layer: Any, inner: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            rate = self.rates[i]
            if layer.training and rate > 0 and float(self._rand(1)) < rate:
                self.last.append(i)
                hidden = args[0] if args else kwargs["hidden_states"]
                return (hidden,) if self._tuple[i] else hidden
            out = inner(*args, **kwargs)
            self._tuple[i] = isinstance(out, tuple)
            return out

        return forward

    def remove(self) -> None:
        """Detach the hooks and restore every layer's own ``forward``."""
        super().remove()
        for layer, prev in self._patched:
            if prev is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = prev
        self._patched.clear()


class _UnitDrop(_Base):
    """Drop units of the last input dimension of a linear, per sequence, scaled 1/(1-p)."""

    def __init__(self, model: Any, p: float, seed: int, name: str, units: int) -> None:
        super().__init__(p, seed)
        layers = _layers(model)
        mods = []
        for i, layer in enumerate(layers):
            try:
                mod = layer.get_submodule(name)
            except AttributeError as e:
                raise ValueError(f"module: layer {i} has no {name!r}") from e
            if mod.in_features % units:
                raise ValueError(
                    f"num_units: {name} of layer {i} has {mod.in_features} inputs, "
                    f"not a multiple of {units}"
                )
            mods.append(mod)
        self.units = units
        self.last = {}
        for i, mod in enumerate(mods):
            self._handles.append(mod.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i: int) -> Any:
        def hook(mod: Any, args: Any) -> Any:
            if not mod.training or self.p == 0:
                return None
            x = args[0]
            lead = x.shape[0] if x.dim() >= 3 else 1
            keep = self._rand(lead, self.units) >= self.p  # True = kept
            self.last[i] = keep
            width = x.shape[-1] // self.units
            scale = keep.to(x.dtype).div_(1 - self.p).repeat_interleave(width, dim=1)
            scale = scale.to(x.device)
            if x.dim() >= 3:
                scale = scale.reshape(lead, *([1] * (x.dim() - 2)), x.shape[-1])
            else:
                scale = scale.reshape(x.shape[-1])
            return (x * scale, *args[1:])

        return hook


class HeadDrop(_UnitDrop):
    """Drop whole attention heads (per sequence) while training, kept heads scaled
    ``1 / (1 - p)``. ``num_heads`` defaults to ``model.config.num_attention_heads``;
    ``module`` is the output projection's name inside a decoder layer. ``last[i]`` is the
    (batch, heads) keep mask of layer ``i`` at the last training forward."""

    def __init__(
        self,
        model: Any,
        p: float = 0.1,
        *,
        num_heads: int | None = None,
        module: str = "self_attn.o_proj",
        seed: int = 0,
    ) -> None:
        if num_heads is None:
            num_heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
            if num_heads is None:
                raise ValueError("num_heads: not given and model.config has no attention heads")
        num_heads = check_int(num_heads, "num_heads", 1)
        super().__init__(model, p, seed, module, num_heads)


class NeuronDrop(_UnitDrop):
    """Drop whole MLP neurons (intermediate channels, per sequence) while training, kept
    ones scaled ``1 / (1 - p)``; ``module`` is the down projection's name. ``last[i]`` is
    the (batch, neurons) keep mask of layer ``i``."""

    def __init__(
        self, model: Any, p: float = 0.1, *, module: str = "mlp.down_proj", seed: int = 0
    ) -> None:
        layers = _layers(model)
        try:
            width = layers[0].get_submodule(module).in_features
        except (AttributeError, IndexError) as e:
            raise ValueError(f"module: no {module!r} in the decoder layers") from e
        super().__init__(model, p, seed, module, width)
