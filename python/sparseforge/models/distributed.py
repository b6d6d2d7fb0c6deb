"""The pruning pipeline of :func:`sparseforge.models.prune` on a Ray cluster:
:func:`prune_ray`.

Per block ``i`` (blocks stay sequential: block ``i + 1`` is calibrated on block ``i``'s
outputs):

1. **Calibration, data-parallel.** The calibration windows are cut into shards of whole
   batches (the batches of ``batch_tokens`` that :func:`~sparseforge.models.prune` runs),
   one Ray task per shard runs the block's batched forward
   (:func:`sparseforge.models._calibration.block_forward`) over its shard's activations,
   which stay in the object store between blocks.
2. **Statistics.** ``statistics="exact"`` (default): the statistics get the very updates
   of the single-process run, in window order, so the statistics, the masks and the
   weights are bit-identical to :func:`~sparseforge.models.prune` with the same
   ``forward``. With the Python forward each shard's task returns the inputs of the
   block's 4 distinct linear inputs and a chain of small tasks adds them to one
   :class:`~sparseforge.calib.LayerStats` per input; with the core forward (which updates
   the statistics inside its one call per batch) the shards' calibration tasks themselves
   form the chain, each continuing the previous shard's statistics. ``statistics="merge"``: each
   shard's task accumulates its own LayerStats, merged with :meth:`LayerStats.merge` in
   shard order (float64 sums: deterministic for a given shard count, equal to one stream
   up to float64 rounding; no inputs move, the additions run in parallel).
3. **Pruning, task-parallel.** The block's 7 linears are pruned as 7 tasks reading the
   block's weights and the statistics from the object store (the reconstruction error is
   computed there too).
4. **Commit.** Only when all 7 results are back are they written into the model
   (``model.set_weight``): a block is applied whole or not at all. With
   ``sequential=True`` one more task per shard computes the block's outputs with the pruned
   weights, the next block's inputs.

A worker that dies (a killed process, a lost node) fails its task, which Ray runs again
(``max_retries``); objects lost with a node are rebuilt from their lineage. A task that
still fails raises :class:`RayPruneError` naming the block; that block is untouched.

Cost model and multi-node launch: ``docs/pipeline.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import _progress
from ..calib import LayerStats
from . import _calibration
from .llama import Hooks, LlamaModel
from .perplexity import _int_arg
from .pipeline import PruneReport, calibration_windows, check_method, prune_linear

__all__ = ["RayPruneError", "prune_ray"]

# Fault injection for the tests: a folder; a file ``arm-<stage>`` there (stage "calibrate",
# "prune" or "forward"; content: the block number) makes the first task of that stage in
# that block kill its own worker process (once: the file is renamed to ``fired-<stage>``).
FAULT_ENV = "SPARSEFORGE_RAY_FAULT"


class RayPruneError(RuntimeError):
    """A Ray task of :func:`prune_ray` failed after its retries; ``block`` is the block
    that was being pruned (left untouched), ``done`` the blocks committed before it."""

    def __init__(self, message: str, block: int, done: int) -> None:
        super().__init__(message)
        self.block = block
        self.done = done


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "prune_ray needs Ray: pip install 'ray>=2.9' (or install sparseforge from a "
            "checkout with the 'ray' extra: pip install '.[ray]')"
        ) from e
    return ray


def _maybe_fault(stage: str, block: int) -> None:
    folder = os.environ.get(FAULT_ENV)
    if not folder:
        return
    armed = Path(folder) / f"arm-{stage}"
    try:
        if int(armed.read_text().strip() or 0) != block:
            return
        os.rename(armed, Path(folder) / f"fired-{stage}")
    except (OSError, ValueError):
        return  # not armed, or another task won the rename
    os._exit(1)  # the worker process dies mid-task, as a crashed or killed worker does


class _BlockWeights(Mapping[str, Any]):
    """One block's weights, presented as a whole model's mapping (the other names are
    claimed present but never read by a block forward)."""

    def __init__(self, names: frozenset[str], block: Mapping[str, Any]) -> None:
        self.names = names
        self.block = block

    def __getitem__(self, name: str) -> Any:
        return self.block[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.block)

    def __len__(self) -> int:
        return len(self.block)

    def __contains__(self, name: object) -> bool:
        return name in self.block or name in self.names


def _block_model(config: Any, block: Mapping[str, Any], num_threads: int | None) -> LlamaModel:
    names = frozenset(config.weight_shapes())
    return LlamaModel(config, _BlockWeights(names, block), num_threads=num_threads)


def _batches(h: np.ndarray, per: int) -> Iterator[tuple[int, int]]:
    for a in range(0, h.shape[0], per):
        yield a, min(h.shape[0], a + per)


def _read(h: np.ndarray, a: int, b: int) -> np.ndarray:
    chunk = h[a:b]
    return np.ascontiguousarray(chunk.reshape(-1, chunk.shape[-1]), dtype=np.float32)


def _group_of(name: str, i: int) -> int:
    return _calibration.GROUP[name[len(f"model.layers.{i}.") :]]


def _feeds(model: LlamaModel, i: int) -> dict[str, int]:
    """The linear whose input feeds each group's statistics -> its group."""
    p = f"model.layers.{i}."
    return {
        nm: _calibration.GROUP[nm[len(p) :]]
        for nm in model.linear_names(i)
        if nm[len(p) :] in _calibration.FEEDS
    }


# -- task bodies (plain functions: the tests and a single process can call them too) ------


def _new_stats(block: Mapping[str, Any], i: int, hessian: bool) -> dict[int, LayerStats]:
    """The 4 LayerStats of block ``i`` (q/k/v's, o's, gate/up's, down's inputs)."""
    p = f"model.layers.{i}."
    sizes: dict[int, int] = {}
    for suffix, g in _calibration.GROUP.items():
        sizes.setdefault(g, int(block[p + suffix].shape[1]))
    return {g: LayerStats(sizes[g], hessian) for g in range(4)}


def _run_shard(
    model: LlamaModel,
    i: int,
    h: np.ndarray,
    per: int,
    forward: str,
    stats: dict[int, LayerStats] | None,
    capture: bool,
    want_output: bool,
) -> tuple[list[dict[int, np.ndarray]], np.ndarray | None]:
    """Block ``i`` over the shard ``h`` in batches of ``per`` windows, as
    ``_calibration.run_block`` does: ``stats`` updated batch by batch (core or Python
    forward); ``capture``: instead, each batch's 4 group inputs are returned (Python
    forward); the outputs when ``want_output``."""
    feeds = _feeds(model, i)
    inputs: list[dict[int, np.ndarray]] = []
    current: dict[int, np.ndarray] = {}
    hooks = None
    if forward == "python" and (capture or stats is not None):

        def hook(name: str, x: np.ndarray) -> None:
            g = feeds.get(name)
            if g is None:
                return
            if capture:
                current[g] = np.ascontiguousarray(x)
            elif stats is not None:
                stats[g].update(x, num_threads=model.num_threads)

        hooks = Hooks(linear_input=hook)
    ordered = [None] * 4 if stats is None else [stats[g] for g in range(4)]
    out = np.empty_like(h) if want_output else None
    for a, b in _batches(h, per):
        x = _read(h, a, b)
        if forward == "core":
            y = _calibration.block_forward_core(model, i, x, b - a, ordered, want_output)
        else:
            y = _calibration.block_forward(model, i, x, b - a, hooks, want_output)
        if capture:
            inputs.append(dict(current))
            current.clear()
        if out is not None:
            assert y is not None
            out[a:b] = y.reshape(b - a, *h.shape[1:]).astype(h.dtype, copy=False)
    return inputs, out


def _calibrate_shard(
    config: Any,
    i: int,
    block: Mapping[str, Any],
    h: np.ndarray,
    per: int,
    mode: str,
    forward: str,
    hessian: bool,
    want_output: bool,
    num_threads: int | None,
    stats_in: dict[int, LayerStats] | None = None,
) -> tuple[Any, np.ndarray | None, bool]:
    """Block ``i`` over one shard ``h`` ``(windows, seqlen, dim)``. First result:

    * ``mode="capture"`` (exact, Python forward): each batch's inputs of the 4 statistics
      groups (a list of ``{group: X}``) for the accumulation chain;
    * ``mode="chain"`` (exact, core forward): ``stats_in`` (None: new) continued over this
      shard, the next link of the chain;
    * ``mode="merge"``: this shard's own ``{group: LayerStats}``.

    Second: the block's outputs (``h``'s dtype) when ``want_output``; third: whether they
    are all finite."""
    _maybe_fault("calibrate", i)
    model = _block_model(config, block, num_threads)
    stats = None
    if mode != "capture":
        stats = stats_in if stats_in is not None else _new_stats(block, i, hessian)
    inputs, out = _run_shard(model, i, h, per, forward, stats, mode == "capture", want_output)
    first = inputs if mode == "capture" else stats
    return first, out, out is None or _finite(out)


def _finite(h: np.ndarray) -> bool:
    return all(bool(np.isfinite(h[j].astype(np.float32)).all()) for j in range(len(h)))


def _accumulate(
    stats: dict[int, LayerStats] | None,
    inputs: list[dict[int, np.ndarray]],
    hessian: bool,
    num_threads: int | None,
) -> dict[int, LayerStats]:
    """``stats`` (None: new) plus one shard's batch inputs, in batch order: the same
    ``update`` calls as the single-process run."""
    out = {} if stats is None else stats
    for batch in inputs:
        for g in sorted(batch):
            x = batch[g]
            if g not in out:
                out[g] = LayerStats(int(x.shape[1]), hessian)
            out[g].update(x, num_threads=num_threads)
    return out


def _merge(*shards: dict[int, LayerStats]) -> dict[int, LayerStats]:
    """The shards' statistics merged in shard order (LayerStats.merge, float64 sums)."""
    out = dict(shards[0])
    for s in shards[1:]:
        for g, st in s.items():
            out[g] = out[g].merge(st) if g in out else st
    return out


def _prune_one(
    spec: Any,
    i: int,
    name: str,
    block: Mapping[str, Any],
    stats: dict[int, LayerStats],
    sparsity: float | None,
    pattern: Any,
    method_kwargs: dict[str, Any],
) -> tuple[np.ndarray, Any]:
    _maybe_fault("prune", i)
    st = stats.get(_group_of(name, i)) if stats else None
    shared = None if st is None or spec.share is None else spec.share(st, method_kwargs)
    res, layer = prune_linear(spec, name, block[name], st, sparsity, pattern, method_kwargs, shared)
    return np.ascontiguousarray(res.weight), layer


def _forward_shard(
    config: Any,
    i: int,
    block: Mapping[str, Any],
    h: np.ndarray,
    per: int,
    forward: str,
    num_threads: int | None,
) -> tuple[np.ndarray, bool]:
    """Block ``i``'s outputs over one shard (the next block's inputs) and whether they
    are all finite."""
    _maybe_fault("forward", i)
    model = _block_model(config, block, num_threads)
    _, out = _run_shard(model, i, h, per, forward, None, False, True)
    assert out is not None
    return out, _finite(out)


@cache
def _remote() -> dict[str, Any]:
    ray = _ray()
    return {
        "calibrate": ray.remote(num_returns=3)(_calibrate_shard),
        "accumulate": ray.remote(_accumulate),
        "merge": ray.remote(_merge),
        "prune": ray.remote(_prune_one),
        "forward": ray.remote(num_returns=2)(_forward_shard),
    }


def _failed(i: int, retries: int, e: Exception) -> RayPruneError:
    first = str(e).splitlines()[0] if str(e) else ""
    return RayPruneError(
        f"prune_ray: block {i} failed after {retries} retries ({type(e).__name__}: {first}); "
        f"blocks 0..{i - 1} are pruned, block {i} and later are untouched",
        i,
        i,
    )


def _shards(n_batches: int, workers: int) -> list[tuple[int, int]]:
    """``workers`` contiguous runs of batches, as even as possible (batch ranges)."""
    k = max(1, min(workers, n_batches))
    edges = [round(j * n_batches / k) for j in range(k + 1)]
    return [(edges[j], edges[j + 1]) for j in range(k)]


def _block_weights(model: LlamaModel, i: int) -> dict[str, Any]:
    p = f"model.layers.{i}."
    names = [n for n in model._shapes if n.startswith(p)]
    names += [n for n in model._weights if n.startswith(p) and n not in model._shapes]
    return {n: np.asarray(model.weight(n)) for n in names}


def prune_ray(
    model: LlamaModel,
    calib: Any,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    pattern: Any = None,
    sequential: bool = True,
    nsamples: int = 128,
    seqlen: int | None = None,
    seed: int = 0,
    bos: bool = True,
    error: bool = True,
    progress: bool | None = None,
    activations: str = "float32",
    batch_tokens: int = 8192,
    workers: int | None = None,
    statistics: str = "exact",
    forward: str = "auto",
    max_retries: int = 3,
    num_threads: int | None = None,
    **method_kwargs: Any,
) -> PruneReport:
    """:func:`sparseforge.models.prune` with the calibration of each block split across
    Ray tasks and the block's linears pruned as parallel tasks (module notes).

    Connects to the running Ray cluster (``ray.init()`` done by the caller, or the
    ``RAY_ADDRESS`` environment variable; without either, Ray starts a local one). Every
    node needs the same sparseforge version installed. ``model`` stays in the driver; each
    block's weights and the statistics travel through Ray's object store, the
    calibration states stay there between blocks.

    Parameters
    ----------
    model, calib, method, sparsity, pattern, sequential, nsamples, seqlen, seed, bos, error,
    progress, activations, batch_tokens, **method_kwargs
        As in :func:`sparseforge.models.prune` (the method object is shipped to the workers,
        so a method added with ``register_method`` works if its function pickles).
    workers : int, optional
        Calibration shards per block (default: the cluster's CPU count), at most the
        number of batches (``nsamples / (batch_tokens // seqlen)``).
    statistics : {"exact", "merge"}
        "exact": bit-identical to :func:`sparseforge.models.prune` (the shards' linear
        inputs go to one accumulation chain, in window order). "merge": each shard
        accumulates its own statistics, merged in shard order (no inputs move; equal to
        one stream up to float64 rounding, so masks can differ where scores tie that
        closely).
    forward : {"auto", "core", "python"}
        The calibration forward, as in :func:`sparseforge.models.prune` (whose default
        "auto" runs each batch through a block in one core call where the core implements
        the family). With "exact" statistics and the core forward, the shards' calibration
        tasks form a chain (each continues the previous shard's statistics inside the core
        call, so that pass is not parallel; the outputs pass and the pruning are); with the
        Python forward the shards run in parallel and only the ``update`` calls are
        chained.
    max_retries : int
        Times Ray reruns a task whose worker died.
    num_threads : int, optional
        Threads of each task's compiled ops (results do not depend on it).

    Returns
    -------
    PruneReport
        As :func:`sparseforge.models.prune`'s (each linear's ``seconds`` includes its own
        factorisation of a shared Hessian).

    Raises
    ------
    RayPruneError
        A task still failed after ``max_retries`` reruns; the blocks before ``block`` are
        pruned, ``block`` and the rest untouched.
    """
    t_start = time.perf_counter()
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a LlamaModel, got {type(model).__name__}")
    spec, nm_pattern = check_method(method, sparsity, pattern)
    for flag, value in (("sequential", sequential), ("error", error), ("bos", bos)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {type(value).__name__}")
    if statistics not in ("exact", "merge"):
        raise ValueError(f"statistics: expected 'exact' or 'merge', got {statistics!r}")
    _progress.check_progress(progress)
    act_dtype = _calibration.activation_dtype(activations)
    bt = _int_arg(batch_tokens, "batch_tokens", 1)
    fwd = _calibration.resolve_forward(model, forward)
    mode = statistics if statistics == "merge" else ("chain" if fwd == "core" else "capture")
    retries = _int_arg(max_retries, "max_retries", 0)
    n_workers = None if workers is None else _int_arg(workers, "workers", 1)
    c = model.config
    for i in range(c.n_layers):
        for name in model.linear_names(i):
            w = model.weight(name)
            if not isinstance(w, np.ndarray):
                raise ValueError(
                    f"model: {name} is a compressed {type(w).__name__}; prune needs dense weights"
                )
            if nm_pattern is not None and w.shape[1] % nm_pattern.m != 0:
                raise ValueError(
                    f"pattern: {nm_pattern} needs in_features divisible by {nm_pattern.m}, but "
                    f"{name} has in_features={w.shape[1]}"
                )
    windows = calibration_windows(
        model, calib, nsamples=nsamples, seqlen=seqlen, seed=seed, bos=bos
    )
    n, s = int(windows.shape[0]), int(windows.shape[1])
    ray = _ray()
    if not ray.is_initialized():
        ray.init()
    tasks = _remote()
    if n_workers is None:
        n_workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    per = max(1, bt // s)  # windows per batch, as _calibration.run_block
    n_batches = -(-n // per)
    shard_windows = [(a * per, min(n, b * per)) for a, b in _shards(n_batches, n_workers)]
    report = PruneReport(
        method=method,
        sparsity=None if sparsity is None else float(sparsity),
        pattern=None if nm_pattern is None else str(nm_pattern),
        sequential=sequential,
        nsamples=n,
        seqlen=s,
    )
    hessian = spec.needs_hessian or error
    needs_data = spec.needs_data or error
    opts = {"max_retries": retries}

    states = []
    for a, b in shard_windows if needs_data else []:
        h = np.empty((b - a, s, c.dim), dtype=act_dtype)
        for j in range(a, b):
            h[j - a] = model.embed(windows[j]).astype(act_dtype, copy=False)
        states.append(ray.put(h))
        del h

    bar = _progress.bar(
        c.n_layers, f"sparseforge prune_ray [{method}]", unit="blocks", progress=progress
    )
    try:
        for i in range(c.n_layers):
            names = model.linear_names(i)
            wref = ray.put(_block_weights(model, i))
            outputs = None
            finite_refs: list[Any] = []
            stats_ref: Any = None
            try:
                if needs_data:
                    calib = tasks["calibrate"].options(**opts)
                    want = not sequential
                    if mode == "chain":  # each shard continues the previous one's statistics
                        calib_refs = []
                        for h in states:
                            calib_refs.append(
                                calib.remote(
                                    c, i, wref, h, per, mode, fwd, hessian, want, num_threads,
                                    stats_ref,
                                )
                            )  # fmt: skip
                            stats_ref = calib_refs[-1][0]
                    else:
                        calib_refs = [
                            calib.remote(c, i, wref, h, per, mode, fwd, hessian, want, num_threads)
                            for h in states
                        ]
                    firsts = [r[0] for r in calib_refs]
                    if not sequential:
                        outputs = [r[1] for r in calib_refs]
                        finite_refs = [r[2] for r in calib_refs]
                    if mode == "capture":
                        for r in firsts:
                            stats_ref = (
                                tasks["accumulate"]
                                .options(**opts)
                                .remote(stats_ref, r, hessian, num_threads)
                            )
                    elif mode == "merge":
                        stats_ref = tasks["merge"].options(**opts).remote(*firsts)
                pruned = ray.get(
                    [
                        tasks["prune"]
                        .options(**opts)
                        .remote(spec, i, nm, wref, stats_ref, sparsity, pattern, method_kwargs)
                        for nm in names
                    ]
                )
                if sequential and needs_data:
                    block = _block_weights(model, i)
                    block.update({nm: w for nm, (w, _) in zip(names, pruned, strict=True)})
                    bref = ray.put(block)
                    fwd_refs = [
                        tasks["forward"]
                        .options(**opts)
                        .remote(c, i, bref, h, per, fwd, num_threads)
                        for h in states
                    ]
                    outputs = [r[0] for r in fwd_refs]
                    finite = ray.get([r[1] for r in fwd_refs])
                elif outputs is not None:
                    finite = ray.get(finite_refs)
                else:
                    finite = [True]
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, Exception):
                    # The method's own error (a bad keyword, NumericalError): not retried,
                    # raised as prune() raises it; block i and later are untouched.
                    raise cause from None
                raise _failed(i, retries, e) from e
            except ray.exceptions.RayError as e:  # a worker or node lost past the retries
                raise _failed(i, retries, e) from e
            # Commit the whole block at once (nothing above wrote into the model); copies,
            # so that the object store can free its buffers.
            for nm, (w, _) in zip(names, pruned, strict=True):
                model.set_weight(nm, np.array(w))
            layers = [layer for _, layer in pruned]
            report.layers.extend(layers)
            if outputs is not None:
                states = outputs
            errors = [r.error for r in layers if r.error is not None]
            mean_err = f", rel. error {sum(errors) / len(errors):.2e}" if errors else ""
            bar.note(f"sparsity {sum(r.sparsity for r in layers) / len(layers):.3f}{mean_err}")
            bar.update()
            if not all(finite):
                raise ValueError(
                    f"model: block {i} produced non-finite outputs after pruning "
                    f"({method}, sparsity {sparsity}, pattern {report.pattern})"
                )
    finally:
        bar.close()
    report.seconds = time.perf_counter() - t_start
    return report
