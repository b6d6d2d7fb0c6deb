"""A small training loop and a transformers ``TrainerCallback`` that add sparsity to a
training script: masks kept through every optimizer step, a pruning schedule stepped per
optimizer step, per-step logging of loss, learning rate and sparsity (:class:`StepLog`),
and sparseforge's progress bar (tqdm when installed, plain stderr lines otherwise).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import _progress
from ._util import check_int, torch_module
from .masks import Sparsifier
from .schedules import Pruner

__all__ = ["StepLog", "finetune", "prune_and_finetune", "sparsity_callback", "train"]


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    sparsity: float
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)


def causal_lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy of a causal LM on a ``(B, T)`` batch of token ids."""
    torch = torch_module()
    logits = model(batch).logits
    v = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, v).float(), batch[:, 1:].reshape(-1)
    )


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for b in batches:
            empty = False
            yield b
        if empty:
            raise ValueError("batches: expected at least one batch")


def train(
    model: Any,
    batches: Iterable[Any],
    optimizer: Any,
    *,
    steps: int,
    loss_fn: Callable[[Any, Any], Any] = causal_lm_loss,
    sparsifier: Sparsifier | None = None,
    pruner: Pruner | None = None,
    scheduler: Any = None,
    accumulation: int = 1,
    clip_grad_norm: float | None = None,
    regularizer: Callable[[], Any] | None = None,
    after_step: Callable[[int], None] | None = None,
    progress: bool | None = None,
    history: list[StepLog] | None = None,
    start_step: int = 0,
) -> list[StepLog]:
    """Train ``model`` for ``steps`` optimizer steps, keeping masks.

    ``loss_fn(model, batch)`` returns a scalar loss (it may also return ``(loss, parts)``
    with a dict of floats to log, e.g. :meth:`Distiller.loss`). ``batches`` is cycled.
    ``pruner.step(t)`` runs before the forward of step t; the sparsifier (the pruner's, or
    the one given) is attached to ``optimizer`` so zeros stay zeros. ``regularizer()`` is
    added to the loss (e.g. a group-lasso penalty); ``after_step(t)`` runs after each
    optimizer step (e.g. a proximal step). ``progress`` as everywhere in sparseforge
    (:mod:`sparseforge._progress`: tqdm when installed, plain stderr lines otherwise;
    None = on a terminal). Returns one :class:`StepLog` per step.
    """
    torch = torch_module()
    check_int(steps, "steps")
    check_int(accumulation, "accumulation", 1)
    sp = pruner.sparsifier if pruner is not None else sparsifier
    if sp is not None and all(opt is not optimizer for opt, _ in sp._opt_handles):
        sp.attach(optimizer)
    logs = [] if history is None else history
    _progress.check_progress(progress)
    bar = _progress.bar(steps, "sparseforge train", unit="steps", progress=progress)
    it = _cycle(batches)
    model.train()
    t0 = time.perf_counter()
    for t in range(start_step, start_step + steps):
        if pruner is not None:
            pruner.step(t)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        parts: dict[str, float] = {}
        for _ in range(accumulation):
            out = loss_fn(model, next(it))
            loss, p = out if isinstance(out, tuple) else (out, {})
            if regularizer is not None:
                loss = loss + regularizer()
            (loss / accumulation).backward()
            total += float(loss.detach()) / accumulation
            for key, v in p.items():
                parts[key] = parts.get(key, 0.0) + v / accumulation
        if not math.isfinite(total):
            raise FloatingPointError(f"loss: not finite at step {t} ({total})")
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        lr = float(optimizer.param_groups[0]["lr"])  # the rate this step used
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step(t)
        s = sp.sparsity() if sp is not None else 0.0
        log = StepLog(t, total, lr, s, time.perf_counter() - t0, parts)
        logs.append(log)
        bar.note(f"loss {total:.4f} lr {lr:.2e} sparsity {s:.4f}")
        bar.update(1)
    bar.close()
    return logs


def finetune(
    model: Any,
    batches: Iterable[Any],
    *,
    steps: int,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    sparsifier: Sparsifier | None = None,
    loss_fn: Callable[[Any, Any], Any] = causal_lm_loss,
    **kwargs: Any,
) -> list[StepLog]:
    """Masked fine-tuning with AdamW: masks from the model's zeros unless a sparsifier is
    given (kept exactly through every step)."""
    torch = torch_module()
    sp = sparsifier if sparsifier is not None else Sparsifier.from_zeros(model)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    return train(model, batches, opt, steps=steps, loss_fn=loss_fn, sparsifier=sp, **kwargs)


def prune_and_finetune(
    model: Any,
    calib: Any,
    batches: Iterable[Any],
    *,
    steps: int,
    method: str = "sparsegpt",
    sparsity: float | None = None,
    pattern: Any = None,
    teacher: Any = None,
    temperature: float = 1.0,
    lr: float = 1e-4,
    prune_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[Any, Sparsifier, list[StepLog]]:
    """One call: :func:`sparseforge.torch.prune_model` (one-shot, in place), then masked
    fine-tuning on ``batches`` with AdamW — distilled from ``teacher`` when given (logit KD,
    Minitron style), else next-token cross-entropy. Returns ``(prune report, sparsifier,
    step logs)``."""
    from .distill import Distiller
    from .oneshot import prune_model

    report = prune_model(
        model, calib, method=method, sparsity=sparsity, pattern=pattern, **(prune_kwargs or {})
    )
    sp = Sparsifier.from_report(model, report)
    loss_fn: Callable[[Any, Any], Any] = causal_lm_loss
    if teacher is not None:
        d = Distiller(model, teacher, temperature=temperature)

        def kd_fn(m: Any, b: Any) -> Any:
            return d.loss(b)

        loss_fn = kd_fn

    logs = finetune(model, batches, steps=steps, lr=lr, sparsifier=sp, loss_fn=loss_fn, **kwargs)
    return report, sp, logs


def sparsity_callback(sparsifier: Sparsifier | None = None, pruner: Pruner | None = None) -> Any:
    """A ``transformers.TrainerCallback`` that keeps masks in a ``Trainer`` run:
    ``on_step_begin`` steps the pruner (schedule on optimizer steps), ``on_optimizer_step``
    (right after ``optimizer.step()``) re-zeroes masked weights and optimizer state,
    ``on_log`` adds ``sparsity`` to the logs. Gradients are masked by the sparsifier's
    tensor hooks."""
    from transformers import TrainerCallback

    found = pruner.sparsifier if pruner is not None else sparsifier
    if found is None:
        raise ValueError("sparsifier: give a Sparsifier or a Pruner")
    sp: Sparsifier = found

    class SparsityCallback(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if pruner is not None:
                pruner.step(int(state.global_step))

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sp.after_step(kw.get("optimizer"))

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs is not None:
                logs["sparsity"] = sp.sparsity()

    return SparsityCallback()
