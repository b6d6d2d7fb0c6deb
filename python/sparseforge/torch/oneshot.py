"""Prune a PyTorch / transformers model in place with the sparseforge core (optional extra:
needs ``torch``; ``transformers`` models are the target, any model with the same shape of
modules works).

:func:`prune_model` follows the protocol of :func:`sparseforge.models.prune` (and of the
Wanda / SparseGPT references): the calibration windows run through the model up to the
first decoder layer, whose inputs are caught; then for each decoder layer

1. forward pre-hooks on its ``nn.Linear`` modules feed every linear's input into a
   :class:`sparseforge.calib.LayerStats` (linears that read the same tensor, like q/k/v,
   share one), while the layer runs over every window;
2. each linear is pruned with the chosen method from :data:`sparseforge.models.METHODS`
   and written back into ``weight`` **in place through a zero-copy numpy view** of the
   parameter (float32 CPU weights; other dtypes go through a float32 copy and back);
3. the layer runs again with the pruned weights, and its outputs feed the next layer.

Only the decoder layers' linears are pruned (the embedding and ``lm_head`` are not).
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import _progress
from ..calib import LayerStats
from ..models.pipeline import PruneReport, check_method, prune_linear

__all__ = ["decoder_layers", "prune_model", "text_windows"]


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised without torch only
        raise ImportError(
            "sparseforge.torch needs PyTorch: pip install torch (CPU build: torch==2.13.0)"
        ) from e
    return torch


def decoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of decoder layers: ``model.model.layers`` (transformers'
    *ForCausalLM), ``model.layers``, or ``model.transformer.h``."""
    for path in (("model", "layers"), ("layers",), ("transformer", "h")):
        obj = model
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "__len__") and len(obj) > 0:
            return obj
    raise ValueError(
        f"model: {type(model).__name__} has no decoder layers at model.model.layers, "
        "model.layers or model.transformer.h"
    )


class _Caught(Exception):
    pass


def _float32_view(param: Any) -> tuple[np.ndarray, bool]:
    """A numpy array over ``param``'s memory when it is a contiguous float32 CPU tensor
    (zero-copy: writes go to the model), else a float32 copy (``False``)."""
    torch = _torch()
    t = param.data
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return t.numpy(), True
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().copy(), False


def prune_model(
    model: Any,
    calib: Any,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: Any = None,
    sequential: bool = True,
    error: bool = True,
    progress: bool | None = None,
    linear_filter: Callable[[str], bool] | None = None,
    tokenizer: Any = None,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    **method_kwargs: Any,
) -> PruneReport:
    """Prune the ``nn.Linear`` weights of ``model``'s decoder layers in place.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. ``transformers.LlamaForCausalLM`` (any model whose decoder layers
        :func:`decoder_layers` finds and whose ``forward(input_ids)`` runs them in order).
        Put it in eval mode; it runs under ``torch.no_grad()``.
    calib : str, list of str, or int array / tensor (nsamples, seqlen)
        Calibration text (with ``tokenizer``), or ready token windows (e.g. from
        :func:`sparseforge.models.calibration_windows`).
    method, sparsity, pattern, sequential, error, progress, **method_kwargs
        As in :func:`sparseforge.models.prune` (``progress``: a bar over the layers on
        stderr; None shows it on a terminal).
    linear_filter : callable(name) -> bool, optional
        Which linears of a layer (names relative to the layer, e.g. ``"self_attn.q_proj"``)
        to prune; default all.
    tokenizer : Hugging Face tokenizer, optional
        For a text ``calib``: ``tokenizer(text)["input_ids"]`` gives one token stream (the
        documents of a list joined with ``"\n\n"``), from which ``nsamples`` windows of
        ``seqlen`` tokens start at offsets drawn with
        ``numpy.random.default_rng(seed)``, as :func:`sparseforge.models.prune` does.
    nsamples, seqlen, seed : int
        The windows cut from a text ``calib`` (ignored for ready windows).

    The model may live on any device: calibration windows go to the model's device, the
    linear inputs come back to the CPU for the statistics, and pruned weights are written
    back to their device and dtype.

    Returns
    -------
    PruneReport
        Layer names are ``"{i}.{relative name}.weight"``.
    """
    torch = _torch()
    t_start = time.perf_counter()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    spec, nm = check_method(method, sparsity, pattern)
    _progress.check_progress(progress)
    if isinstance(calib, str) or (
        isinstance(calib, (list, tuple)) and calib and all(isinstance(c, str) for c in calib)
    ):
        calib = text_windows(calib, tokenizer, nsamples=nsamples, seqlen=seqlen, seed=seed)
    elif tokenizer is not None:
        raise TypeError("tokenizer: given, but calib is not a text (a str or a list of str)")
    ids = torch.as_tensor(np.asarray(calib.cpu() if hasattr(calib, "cpu") else calib))
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(
            f"calib: expected (nsamples, seqlen) token ids, got shape {tuple(ids.shape)}"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"calib: expected integer token ids, got {ids.dtype}")
    ids = ids.to(torch.long)
    hessian = spec.needs_hessian or error
    layers = decoder_layers(model)
    report = PruneReport(
        method=method,
        sparsity=None if sparsity is None else float(sparsity),
        pattern=None if nm is None else str(nm),
        sequential=sequential,
        nsamples=int(ids.shape[0]),
        seqlen=int(ids.shape[1]),
    )
    if nm is not None:  # fail before touching anything
        for i, layer in enumerate(layers):
            for name, mod in layer.named_modules():
                if (
                    isinstance(mod, torch.nn.Linear)
                    and mod.in_features % nm.m
                    and (linear_filter is None or linear_filter(name))
                ):
                    raise ValueError(
                        f"pattern: {nm} needs in_features divisible by {nm.m}, but layer "
                        f"{i}'s {name} has {mod.in_features}"
                    )
    device = next((p.device for p in model.parameters()), None)
    if device is not None:
        ids = ids.to(device)
    bar = _progress.bar(
        len(layers), f"sparseforge.torch prune [{method}]", unit="layers", progress=progress
    )
    with torch.no_grad(), bar:
        states, kwargs = _catch_inputs(model, layers, ids)
        for i, layer in enumerate(layers):
            linears = [
                (name, mod)
                for name, mod in layer.named_modules()
                if isinstance(mod, torch.nn.Linear)
                and (linear_filter is None or linear_filter(name))
            ]
            stats, dense_out = _capture(layer, linears, states, kwargs, hessian)
            errors: list[float] = []
            for name, mod in linears:
                W, zero_copy = _float32_view(mod.weight)
                res, layer_report = prune_linear(
                    spec, f"{i}.{name}.weight", W, stats[name], sparsity, pattern, method_kwargs
                )
                if layer_report.error is not None:
                    errors.append(layer_report.error)
                W[...] = res.weight  # in place: W is the parameter's memory when zero_copy
                if not zero_copy:
                    mod.weight.data.copy_(torch.from_numpy(W).to(mod.weight.dtype))
                report.layers.append(layer_report)
            states = _run_layer(layer, states, kwargs) if sequential else dense_out
            mean_err = f", rel. error {sum(errors) / len(errors):.2e}" if errors else ""
            bar.note(f"{len(linears)} linears{mean_err}")
            bar.update()
    report.seconds = time.perf_counter() - t_start
    return report


def text_windows(
    text: str | Sequence[str],
    tokenizer: Any,
    *,
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
) -> np.ndarray:
    """Calibration windows (int64 ``(nsamples, seqlen)``) from a text and a Hugging Face
    tokenizer: ``tokenizer(text)["input_ids"]`` (documents of a list joined with
    ``"\n\n"``) is one stream; ``nsamples`` windows of ``seqlen`` tokens start at offsets
    drawn uniformly with ``numpy.random.default_rng(seed)`` (they may overlap), as
    :func:`sparseforge.models.calibration_windows` draws them."""
    if tokenizer is None:
        raise TypeError(
            "tokenizer: a text calib needs a tokenizer (e.g. transformers.AutoTokenizer."
            "from_pretrained(name)), or pass token windows (nsamples, seqlen)"
        )
    for name, v in (("nsamples", nsamples), ("seqlen", seqlen), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < (name != "seed"):
            raise ValueError(f"{name}: expected an int >= {int(name != 'seed')}, got {v!r}")
    joined = text if isinstance(text, str) else "\n\n".join(text)
    if callable(tokenizer):
        try:  # a long calibration text is meant: no "longer than the maximum" warning
            enc = tokenizer(joined, verbose=False)
        except TypeError:
            enc = tokenizer(joined)
        ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    elif hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(joined)
    else:
        raise TypeError(f"tokenizer: expected a callable or an object with encode(), got "
                        f"{type(tokenizer).__name__}")  # fmt: skip
    stream = np.asarray(ids, dtype=np.int64).reshape(-1)
    if stream.size < seqlen:
        raise ValueError(
            f"calib: the text gives {stream.size} tokens, shorter than one window of "
            f"seqlen={seqlen}; give more text or a smaller seqlen"
        )
    starts = np.random.default_rng(int(seed)).integers(0, stream.size - seqlen + 1, size=nsamples)
    return np.stack([stream[int(a) : int(a) + seqlen] for a in starts])


def _catch_inputs(model: Any, layers: Any, ids: Any) -> tuple[list[Any], dict[str, Any]]:
    """Run each window up to layer 0 and keep its input hidden states and keyword args."""
    torch = _torch()
    first = layers[0]
    caught: list[Any] = []
    kwargs: dict[str, Any] = {}

    class Catcher(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner
            # transformers reads attributes of its layers (e.g. attention_type)
            for attr in ("attention_type", "self_attn"):
                if hasattr(inner, attr):
                    setattr(self, attr, getattr(inner, attr))

        def forward(self, hidden: Any, *args: Any, **kw: Any) -> Any:
            caught.append(hidden.detach().clone())
            if not kwargs:
                kwargs.update(kw)
            raise _Caught

    layers[0] = Catcher(first)
    try:
        for j in range(ids.shape[0]):
            with contextlib.suppress(_Caught):
                model(ids[j : j + 1], use_cache=False)
    finally:
        layers[0] = first
    if len(caught) != ids.shape[0]:
        raise ValueError("model: its forward did not reach the first decoder layer")
    return caught, kwargs


def _output(y: Any) -> Any:
    return y[0] if isinstance(y, tuple) else y


def _run_layer(layer: Any, states: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [_output(layer(h, **kwargs)) for h in states]


def _capture(
    layer: Any,
    linears: list[tuple[str, Any]],
    states: Sequence[Any],
    kwargs: dict[str, Any],
    hessian: bool,
) -> tuple[dict[str, LayerStats], list[Any]]:
    """Run the layer over ``states`` with pre-hooks feeding each linear's input into
    LayerStats (linears reading the same input tensor share one); returns the stats and
    the layer's outputs."""
    torch = _torch()
    stats: dict[str, LayerStats] = {}
    # input tensors seen in the current pass (kept alive so their ids cannot be reused)
    seen_this_call: dict[int, tuple[str, Any]] = {}
    handles = []

    def hook_for(name: str, in_features: int) -> Callable[..., None]:
        def hook(mod: Any, inputs: tuple[Any, ...]) -> None:
            x = inputs[0]
            key = id(x)
            owner = seen_this_call.get(key)
            if owner is not None:  # same tensor as an earlier linear of this pass
                if name not in stats:
                    stats[name] = stats[owner[0]]
                return
            seen_this_call[key] = (name, x)
            if name not in stats:
                stats[name] = LayerStats(in_features, hessian)
            a = x.detach().reshape(-1, in_features)
            a = a.to(device="cpu", dtype=torch.float32).contiguous().numpy()
            stats[name].update(a)

        return hook

    for name, mod in linears:
        handles.append(mod.register_forward_pre_hook(hook_for(name, mod.in_features)))
    outputs = []
    try:
        for h in states:
            seen_this_call.clear()
            outputs.append(_output(layer(h, **kwargs)))
    finally:
        seen_this_call.clear()
        for hd in handles:
            hd.remove()
    return stats, outputs
