"""Importance from gradients, accumulated over calibration batches.

For each selected linear's weight ``w`` and the gradient ``g`` of one batch's loss:

* ``"taylor"``: first-order Taylor ``sum_batches |w * g|`` (Molchanov et al. 2019's
  per-element form; structured scores sum it over a group);
* ``"fisher"``: diagonal empirical Fisher of the batch gradients, ``mean_batches g ** 2``;
  ``obd`` = ``0.5 * fisher * w ** 2`` (OBD saliency with the Fisher as Hessian diagonal);
* ``"movement"``: movement score ``-sum_batches w * g`` (Sanh et al. 2020, with the score
  learning rate folded in; large = the weight moves away from zero).

Scores rank masks through :func:`sparseforge.torch.masks.select_mask` (``scores=``), drive
:class:`~sparseforge.torch.schedules.Pruner` (``scores=``), and become an
:class:`sparseforge.structured.Importance` for neurons/heads (:meth:`to_structured`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._util import linears, torch_module

__all__ = ["GradientImportance"]

KINDS = ("taylor", "fisher", "movement")


class GradientImportance:
    """Accumulate gradient scores. Call :meth:`update` after each ``loss.backward()``
    (gradients of one calibration batch), or :meth:`accumulate` with a loss function.

    Parameters
    ----------
    model : torch.nn.Module
    linear_filter : which linears (default all but the head)
    """

    def __init__(
        self,
        model: Any,
        linear_filter: Callable[[str], bool] | Iterable[str] | None = None,
    ) -> None:
        self.model = model
        self.modules = dict(linears(model, linear_filter))
        self.batches = 0
        self._taylor: dict[str, Any] = {}
        self._fisher: dict[str, Any] = {}
        self._movement: dict[str, Any] = {}

    def update(self) -> None:
        torch = torch_module()
        with torch.no_grad():
            for name, mod in self.modules.items():
                g = mod.weight.grad
                if g is None:
                    raise ValueError(f"model: {name}.weight has no gradient; call backward first")
                w = mod.weight.detach().double()
                g = g.double()
                wg = w * g
                if name not in self._taylor:
                    self._taylor[name] = torch.zeros_like(w)
                    self._fisher[name] = torch.zeros_like(w)
                    self._movement[name] = torch.zeros_like(w)
                self._taylor[name] += wg.abs()
                self._fisher[name] += g * g
                self._movement[name] -= wg
        self.batches += 1

    def accumulate(self, batches: Iterable[Any], loss_fn: Callable[[Any, Any], Any]) -> None:
        """For each batch: zero grads, ``loss_fn(model, batch).backward()``, :meth:`update`."""
        for batch in batches:
            self.model.zero_grad(set_to_none=True)
            loss_fn(self.model, batch).backward()
            self.update()
        self.model.zero_grad(set_to_none=True)

    def scores(self, kind: str = "taylor") -> dict[str, Any]:
        """Per-element scores ``{linear name: float64 tensor of weight's shape}``."""
        if self.batches == 0:
            raise ValueError("scores: no batches accumulated yet")
        if kind == "taylor":
            return dict(self._taylor)
        if kind == "fisher":
            return {n: f / self.batches for n, f in self._fisher.items()}
        if kind == "obd":
            return {
                n: 0.5 * f / self.batches * self.modules[n].weight.detach().double() ** 2
                for n, f in self._fisher.items()
            }
        if kind == "movement":
            return dict(self._movement)
        raise ValueError(f"kind: expected one of {(*KINDS, 'obd')}, got {kind!r}")

    def to_structured(self, config: Any, kind: str = "taylor", prefix: str = "model.layers") -> Any:
        """An :class:`sparseforge.structured.Importance` for a Llama-shaped model with
        transformers names (``{prefix}.{i}.mlp.gate_proj`` ...), for
        ``sf.structured.width``: neuron j = the sum of the scores of row j of gate/up and
        column j of down; query head h = its o_proj columns and q rows; GQA group = its kv
        rows (k, v) plus its query heads; channels = the sum over every linear's input
        columns; layers = the sum over the block's linears."""
        from ..structured import Importance

        s = self.scores(kind)

        def get(i: int, rel: str) -> np.ndarray:
            key = f"{prefix}.{i}.{rel}"
            if key not in s:
                raise ValueError(f"config: no scores for {key}; include it in linear_filter")
            t = s[key]
            out: np.ndarray = (t.abs() if kind == "movement" else t).cpu().numpy()
            return out.astype(np.float64)

        c = config
        hd = c.head_dim
        group = c.n_heads // c.n_kv_heads
        neurons, heads, groups, layers = [], [], [], []
        channels = np.zeros(c.dim)
        for i in range(c.n_layers):
            gate, up, down = get(i, "mlp.gate_proj"), get(i, "mlp.up_proj"), get(i, "mlp.down_proj")
            q, k, v, o = (get(i, f"self_attn.{n}_proj") for n in "qkvo")
            neurons.append(gate.sum(1) + up.sum(1) + down.sum(0))
            head = q.reshape(c.n_heads, -1).sum(1) + o.reshape(c.dim, c.n_heads, hd).sum((0, 2))
            heads.append(head)
            kv = k.reshape(c.n_kv_heads, -1).sum(1) + v.reshape(c.n_kv_heads, -1).sum(1)
            groups.append(kv + head.reshape(c.n_kv_heads, group).sum(1))
            channels += q.sum(0) + k.sum(0) + v.sum(0) + gate.sum(0) + up.sum(0)
            layers.append(sum(float(x.sum()) for x in (q, k, v, o, gate, up, down)))
        return Importance(
            neurons=tuple(neurons),
            heads=tuple(heads),
            groups=tuple(groups),
            channels=channels,
            layers=np.asarray(layers, dtype=np.float64),
            nsamples=self.batches,
            seqlen=0,
            config=c,
        )
