"""Block-streaming pruning of a Hugging Face model directory: :func:`prune_streaming`.

The source's safetensors stay memory-mapped in their stored dtype (bf16 / fp16 / fp32).
Block ``i`` is materialised in float32 only while it is calibrated and pruned (the same
block step as :func:`sparseforge.models.prune`, so the result is bitwise the in-memory
prune of the float32 model, rounded once to the stored dtype); its tensors are then
written to ``out/model-layer-<i>.safetensors`` in the stored dtype and dropped. Peak
memory: one block in float32, its statistics, and one batch of the calibration forward;
the calibration states between blocks live in two memory-mapped files. After the last
block the embeddings, final norm and head go to ``out/model-rest.safetensors``, the
source's ``config.json`` / tokenizer files are copied, and ``model.safetensors.index.json``
is written last: until then the directory is not a loadable model.

Resumable: ``out/.sparseforge-run/`` holds ``run.json`` (a fingerprint of the source,
the calibration windows and every setting that changes the bits, the blocks done and
their reports) and the two state files. After each block its weight file is written
(temporary sibling + rename), the next block's inputs flushed to the other state file,
and only then ``run.json`` advanced (temporary sibling + rename): a run killed at any point
continues from the last completed block and gives bitwise what an uninterrupted run gives.
A checkpoint from a different run is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import _core, _progress
from .._validate import check_bool
from . import _calibration
from . import _export_io as io
from .hf import load_hf
from .llama import LlamaModel
from .perplexity import _int_arg
from .pipeline import LayerReport, PruneReport, calibration_windows, check_method

__all__ = ["RUN_DIR", "prune_streaming"]

RUN_DIR = ".sparseforge-run"
_FORMAT = "sparseforge.prune_streaming/1"
_COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class _LiveWeights(Mapping[str, np.ndarray]):
    """The source's memory-mapped weights, with the block being pruned overlaid in float32."""

    def __init__(self, base: Mapping[str, np.ndarray]) -> None:
        self.base = base
        self.live: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        hit = self.live.get(name)
        return hit if hit is not None else self.base[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def __contains__(self, name: object) -> bool:
        return name in self.base


def _shard_header(path: Path) -> tuple[bytes, dict[str, Any]]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
    return raw, json.loads(raw)


def _check_index(src: Path) -> None:
    """Every tensor the index names is in the shard it names, and no shard holds a tensor
    the index places elsewhere."""
    index = src / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        items = [(str(k), str(v)) for k, v in weight_map.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a safetensors index (expected 'weight_map')") from e
    headers: dict[str, set[str]] = {}
    for shard in sorted({v for _, v in items}):
        p = src / shard
        if not p.is_file():
            raise ValueError(f"{index}: lists shard {shard!r}, which is missing from {src}")
        try:
            headers[shard] = {k for k in _shard_header(p)[1] if k != "__metadata__"}
        except (OSError, ValueError, struct.error) as e:
            raise ValueError(f"{p}: not a readable safetensors file ({e})") from e
    for name, shard in items:
        if name not in headers[shard]:
            raise ValueError(
                f"{index}: says {name!r} is in {shard}, but {shard} does not hold it "
                "(shards and index disagree)"
            )
    for shard, names in headers.items():
        for name in sorted(names):
            if weight_map.get(name) != shard:
                raise ValueError(
                    f"{src / shard}: holds {name!r}, which the index places in "
                    f"{weight_map.get(name)!r} (shards and index disagree)"
                )


def _fingerprint(src: Path, model: LlamaModel, names: list[str], settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(_FORMAT.encode())
    h.update((src / "config.json").read_bytes())
    base = model._weights
    for n in names:
        a = base[n]
        h.update(f"{n}:{a.dtype}:{a.shape};".encode())
    shards = sorted({str(p) for p in (src.glob("*.safetensors"))})
    for p in shards:
        raw, _ = _shard_header(Path(p))
        h.update(hashlib.sha256(raw).digest())
        h.update(str(Path(p).stat().st_size).encode())
        h.update(_content_sample(Path(p)))
    h.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    return h.hexdigest()


_SAMPLES, _SAMPLE_BYTES = 16, 1 << 16


def _content_sample(path: Path) -> bytes:
    """A digest of 16 evenly spaced 64 KiB pieces of a shard (its ends included): a source
    rewritten with other weights of the same shapes (same headers) changes the fingerprint,
    without reading a 7B model's 13 GB on every resume."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _SAMPLES * _SAMPLE_BYTES:
            h.update(f.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for k in range(_SAMPLES):
                f.seek(k * step)
                h.update(f.read(_SAMPLE_BYTES))
    return h.digest()


def _write_json(path: Path, data: Any) -> None:
    with io.atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _write_tensors(path: Path, arrays: list[tuple[str, np.ndarray]]) -> None:
    with io.atomic_file(path) as tmp, open(tmp, "wb") as f:
        io.write_safetensors(f, arrays)


def _layer_json(r: LayerReport) -> dict[str, Any]:
    return {
        "name": r.name,
        "shape": list(r.shape),
        "sparsity": r.sparsity,
        "error": r.error,
        "seconds": r.seconds,
    }


def _layer_from_json(d: dict[str, Any]) -> LayerReport:
    return LayerReport(
        name=d["name"],
        shape=(int(d["shape"][0]), int(d["shape"][1])),
        sparsity=float(d["sparsity"]),
        error=None if d["error"] is None else float(d["error"]),
        seconds=float(d["seconds"]),
    )


def _block_names(names: list[str], i: int) -> list[str]:
    p = f"model.layers.{i}."
    return [n for n in names if n.startswith(p)]


def prune_streaming(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
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
    activations: str = "float32",
    batch_tokens: int = 8192,
    forward: str = "auto",
    resume: bool = True,
    stop_after: int | None = None,
    num_threads: int | None = None,
    progress: bool | None = None,
    **method_kwargs: Any,
) -> PruneReport:
    """Prune a Hugging Face Llama/Mistral/Qwen2 directory block by block into ``out``.

    Parameters
    ----------
    source : path of the model directory (``config.json``, safetensors file or shards +
        index; ``tokenizer.json`` when ``calib`` is text). Read only.
    out : path of the output directory: absent or empty for a new run, or the directory of
        an unfinished run with the same source and settings (continued when ``resume``).
    calib, method, sparsity, pattern, sequential, nsamples, seqlen, seed, bos, error,
    activations, batch_tokens, forward, **method_kwargs
        As in :func:`sparseforge.models.prune`. The calibration states always live in
        memory-mapped files under ``out/.sparseforge-run``.
    resume : bool
        Continue an unfinished run found in ``out`` (default). False refuses such a
        directory.
    stop_after : int, optional
        Stop after this many blocks are done in total (the run stays resumable); the
        report then covers the blocks done so far.
    num_threads : int, optional
        Threads of the model's compiled ops (results do not depend on it).

    Returns
    -------
    PruneReport
        Layers of every block done, those of earlier (resumed) runs included (without
        ``info``); ``seconds`` of this call.

    Raises
    ------
    ValueError
        A bad source (missing config, shards that disagree with the index, a missing
        tensor), calibration text too short for one window, an ``out`` that holds something
        else or a checkpoint of a different run, a block whose outputs are not finite.
    """
    t_start = time.perf_counter()
    spec, nm_pattern = check_method(method, sparsity, pattern)
    for flag, value in (("sequential", sequential), ("error", error), ("bos", bos)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag}: expected a bool, got {type(value).__name__}")
    check_bool(resume, "resume")
    _progress.check_progress(progress)
    act_dtype = _calibration.activation_dtype(activations)
    bt = _int_arg(batch_tokens, "batch_tokens", 1)
    src = Path(source)
    if not src.is_dir():
        raise ValueError(f"source: {src} is not a directory (expected a Hugging Face model)")
    _check_index(src)
    stored = load_hf(src, dtype=None, num_threads=num_threads)
    c = stored.config
    live = _LiveWeights(stored._weights)
    model = LlamaModel(c, live, stored.tokenizer, source=str(src), num_threads=num_threads)
    fwd = _calibration.resolve_forward(model, forward)
    n_stop = c.n_layers if stop_after is None else _int_arg(stop_after, "stop_after", 1)
    names = list(stored._weights)
    for i in range(c.n_layers):
        for nm in model.linear_names(i):
            if nm_pattern is not None and model.weight(nm).shape[1] % nm_pattern.m != 0:
                raise ValueError(
                    f"pattern: {nm_pattern} needs in_features divisible by {nm_pattern.m}, "
                    f"but {nm} has in_features={model.weight(nm).shape[1]}"
                )
    windows = calibration_windows(
        model, calib, nsamples=nsamples, seqlen=seqlen, seed=seed, bos=bos
    )
    n, s = int(windows.shape[0]), int(windows.shape[1])
    pattern_str = None if nm_pattern is None else str(nm_pattern)
    settings: dict[str, Any] = {
        "method": method,
        "sparsity": sparsity,
        "pattern": pattern_str,
        "sequential": sequential,
        "error": error,
        "activations": activations,
        "batch_tokens": bt,
        "forward": fwd,
        "method_kwargs": {k: method_kwargs[k] for k in sorted(method_kwargs)},
        "windows": hashlib.sha256(np.ascontiguousarray(windows, np.int64).tobytes()).hexdigest(),
        "windows_shape": [n, s],
        "version": _core.__version__,
    }
    fp = _fingerprint(src, stored, names, settings)

    target = Path(out)
    run = target / RUN_DIR
    state_json = run / "run.json"
    shape = (n, s, c.dim)
    if state_json.is_file():
        if not resume:
            raise ValueError(
                f"out: {target} holds an unfinished run; pass resume=True to continue it or "
                "choose an empty directory"
            )
        try:
            state = json.loads(state_json.read_text(encoding="utf-8"))
            done, current, fp_old = int(state["done"]), int(state["current"]), state["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"out: {state_json} is not a readable checkpoint ({e})") from e
        if fp_old != fp:
            raise ValueError(
                f"out: {target} holds a checkpoint of a different run (source, calibration "
                "windows or settings differ); choose another directory"
            )
        acts = [
            _calibration.Activations(shape, act_dtype, path=run / f"states-{k}.npy", existing=True)
            for k in (0, 1)
        ]
        layers = [_layer_from_json(d) for d in state["layers"]]
    else:
        target = io.check_out_dir(target, False)
        run.mkdir(parents=True, exist_ok=False)
        done, current, layers = 0, 0, []
        acts = [
            _calibration.Activations(shape, act_dtype, path=run / f"states-{k}.npy") for k in (0, 1)
        ]
        for j, w in enumerate(windows):
            acts[0].write(j, j + 1, model.embed(w))
        acts[0].flush()
        _write_json(
            state_json,
            {"format": _FORMAT, "fingerprint": fp, "done": 0, "current": 0, "layers": []},
        )

    report = PruneReport(
        method=method,
        sparsity=None if sparsity is None else float(sparsity),
        pattern=pattern_str,
        sequential=sequential,
        nsamples=n,
        seqlen=s,
    )
    report.layers.extend(layers)
    hessian = spec.needs_hessian or error
    bar = _progress.bar(
        c.n_layers, f"sparseforge prune_streaming [{method}]", unit="blocks", progress=progress
    )
    bar.update(done)
    try:
        for i in range(done, min(c.n_layers, n_stop)):
            block = _block_names(names, i)
            live.live = {nm: np.array(stored._weights[nm], dtype=np.float32) for nm in block}
            pruned: dict[str, np.ndarray] = {}

            def store(nm: str, w: np.ndarray, pruned: dict[str, np.ndarray] = pruned) -> None:
                pruned[nm] = w
                live.live[nm] = w

            src_a, dst_a = acts[current], acts[1 - current]
            new_layers = _calibration.prune_block(
                model,
                i,
                src_a,
                dst_a,
                spec=spec,
                sparsity=sparsity,
                pattern=pattern,
                method_kwargs=method_kwargs,
                hessian=hessian,
                sequential=sequential,
                batch_tokens=bt,
                store=store,
                forward=fwd,
            )
            if not dst_a.all_finite():
                raise ValueError(
                    f"model: block {i} produced non-finite outputs after pruning "
                    f"({method}, sparsity {sparsity}, pattern {pattern_str})"
                )
            tensors = []
            for nm in block:
                a = stored._weights[nm]
                w = pruned.get(nm)
                tensors.append((nm, a if w is None else w.astype(a.dtype)))
            _write_tensors(target / f"model-layer-{i:05d}.safetensors", tensors)
            dst_a.flush()
            live.live = {}
            del tensors
            for nm in block:  # the source's pages of this block leave the RSS
                _calibration.release_pages(stored._weights[nm])
            current = 1 - current
            layers = layers + new_layers
            report.layers.extend(new_layers)
            _write_json(
                state_json,
                {
                    "format": _FORMAT,
                    "fingerprint": fp,
                    "done": i + 1,
                    "current": current,
                    "layers": [_layer_json(r) for r in layers],
                },
            )
            errors = [r.error for r in new_layers if r.error is not None]
            mean_err = f", rel. error {sum(errors) / len(errors):.2e}" if errors else ""
            sp = sum(r.sparsity for r in new_layers) / len(new_layers)
            bar.note(f"sparsity {sp:.3f}{mean_err}")
            bar.update()
    finally:
        bar.close()
        live.live = {}
    if len(layers) == 7 * c.n_layers:
        _finish(src, target, stored, names)
    report.seconds = time.perf_counter() - t_start
    return report


def _finish(src: Path, target: Path, stored: LlamaModel, names: list[str]) -> None:
    """The rest of the tensors, the copied files, then the index (last), then the
    checkpoint is removed."""
    c = stored.config
    base = stored._weights
    rest = [n for n in names if not n.startswith("model.layers.")]
    _write_tensors(target / "model-rest.safetensors", [(n, base[n]) for n in rest])
    weight_map: dict[str, str] = {n: "model-rest.safetensors" for n in rest}
    total = sum(int(base[n].nbytes) for n in names)
    for i in range(c.n_layers):
        for n in _block_names(names, i):
            weight_map[n] = f"model-layer-{i:05d}.safetensors"
    for name in _COPY:
        p = src / name
        if p.is_file():
            with io.atomic_file(target / name) as tmp:
                shutil.copyfile(p, tmp)
    _write_json(
        target / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )
    shutil.rmtree(target / RUN_DIR, ignore_errors=True)
