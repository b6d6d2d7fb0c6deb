"""The block step shared by :func:`sparseforge.models.prune` (in memory) and
:func:`sparseforge.models.streaming.prune_streaming` (one block materialised at a time):
calibration activations, the batched calibration forward of a block, and one block's
calibrate-and-prune.

Batched forward: the windows of a batch (``batch_tokens`` tokens at most, whole windows)
go through every linear as one GEMM of ``(windows * seqlen, in_features)``, through the
norms, RoPE and the SwiGLU gate as one call each, and through attention window by window
(each window is its own causal sequence at positions ``0 .. seqlen-1``). Each linear's input
statistics are updated once per batch. The windows' activations between blocks live in an
:class:`Activations` buffer: float32 or bfloat16, in memory or in a memory-mapped file.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from ..calib import LayerStats
from ..kernels import _threads
from .llama import LINEAR_SUFFIXES, Hooks, LlamaModel

__all__ = ["ACTIVATION_DTYPES", "Activations", "block_forward", "prune_block", "run_block"]

F32 = npt.NDArray[np.float32]

ACTIVATION_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# Each linear's input group: q/k/v read the same x, gate/up too.
GROUP = {s: g for s, g in zip(LINEAR_SUFFIXES, (0, 0, 0, 1, 2, 2, 3), strict=True)}
# The linear whose hook call feeds each group's statistics (the first of the group to run).
FEEDS = {LINEAR_SUFFIXES[0], LINEAR_SUFFIXES[3], LINEAR_SUFFIXES[4], LINEAR_SUFFIXES[6]}


def activation_dtype(activations: Any) -> np.dtype[Any]:
    if activations not in ACTIVATION_DTYPES:
        raise ValueError(f"activations: expected 'float32' or 'bfloat16', got {activations!r}")
    return ACTIVATION_DTYPES[activations]


class Activations:
    """``(windows, seqlen, dim)`` calibration states in ``dtype``: a numpy array, or a
    memory map of a file (``path``, created or, with ``existing=True``, reopened) that
    the OS can page out. ``spill`` names a folder for an anonymous temporary file,
    removed when this object is garbage-collected (its name is unlinked at once)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        dtype: np.dtype[Any],
        *,
        path: Path | None = None,
        spill: str | os.PathLike[str] | None = None,
        existing: bool = False,
    ) -> None:
        self.dtype = np.dtype(dtype)
        self.path = path
        if path is not None:
            if existing:
                a = np.lib.format.open_memmap(path, mode="r+")
                if a.shape != shape or a.dtype != self.dtype:
                    raise ValueError(
                        f"{path}: holds {a.dtype} {a.shape} activations, expected "
                        f"{self.dtype} {shape}"
                    )
            else:
                a = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
            self.data: np.ndarray = a
        elif spill is not None:
            d = Path(spill)
            if not d.is_dir():
                raise ValueError(f"spill: {d} is not a directory")
            fd, name = tempfile.mkstemp(prefix=".sf-activations-", suffix=".bin", dir=d)
            os.close(fd)
            try:
                self.data = np.memmap(name, dtype=self.dtype, mode="w+", shape=shape)
            finally:
                os.unlink(name)  # the mapping keeps the pages; nothing is left behind
        else:
            self.data = np.empty(shape, dtype=self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def read(self, a: int, b: int) -> F32:
        """Windows ``a .. b-1`` as one float32 ``((b - a) * seqlen, dim)`` array (a copy)."""
        chunk = self.data[a:b]
        return np.ascontiguousarray(chunk.reshape(-1, chunk.shape[-1]), dtype=np.float32)

    def write(self, a: int, b: int, h: F32) -> None:
        self.data[a:b] = h.reshape(b - a, *self.data.shape[1:]).astype(self.dtype, copy=False)

    def flush(self) -> None:
        if isinstance(self.data, np.memmap):
            self.data.flush()

    def all_finite(self) -> bool:
        return all(
            bool(np.all(np.isfinite(self.data[j].astype(np.float32))))
            for j in range(self.data.shape[0])
        )


def block_forward(
    model: LlamaModel, i: int, h: F32, windows: int, hooks: Hooks | None, need_output: bool
) -> F32 | None:
    """Block ``i`` of ``model`` over ``windows`` windows stacked in ``h`` (float32
    ``(windows * seqlen, dim)``), each a causal sequence at positions ``0 .. seqlen-1``.
    ``hooks.linear_input`` sees each linear's input once for all windows. With
    ``need_output=False`` the down projection's GEMM is skipped (its input still goes to
    the hook) and None is returned."""
    c = model.config
    N = int(h.shape[0])
    T = N // windows
    thr = _threads(model.num_threads)
    p = f"model.layers.{i}."
    x = model._rms_norm(h, p + "input_layernorm.weight", thr)
    pos = np.tile(np.arange(T, dtype=np.int64), windows)
    q, k, v = model._qkv(i, x, pos, hooks, thr)
    del x
    att = np.empty((N, c.n_heads * c.head_dim), dtype=np.float32)
    for w in range(windows):
        s = slice(w * T, (w + 1) * T)
        model._attention(i, q[s], k[s], v[s], thr, att[s])
    del q, k, v
    h = model._attn_residual(i, h, att, hooks, thr)
    del att
    x = model._rms_norm(h, c.mlp_norm_name(i), thr)
    g = model._linear(p + LINEAR_SUFFIXES[4], x, hooks)
    u = model._linear(p + LINEAR_SUFFIXES[5], x, hooks)
    del x
    m = model._gate(g, u, thr)
    del u
    down = p + LINEAR_SUFFIXES[6]
    if not need_output:
        if hooks is not None and hooks.linear_input is not None:
            hooks.linear_input(down, m)
        return None
    out: F32 = model._mlp_residual(i, h, m, hooks, thr)
    return out


def run_block(
    model: LlamaModel,
    i: int,
    src: Activations,
    dst: Activations | None,
    hooks: Hooks | None,
    batch_tokens: int,
) -> None:
    """Block ``i`` over every window of ``src`` in batches of whole windows (at most
    ``batch_tokens`` tokens, at least one window); outputs into ``dst`` (None: statistics
    only, the down projection's GEMM skipped)."""
    n, T = src.shape[0], src.shape[1]
    per = max(1, batch_tokens // T)
    for a in range(0, n, per):
        b = min(n, a + per)
        out = block_forward(model, i, src.read(a, b), b - a, hooks, dst is not None)
        if dst is not None:
            assert out is not None
            dst.write(a, b, out)


def prune_block(
    model: LlamaModel,
    i: int,
    src: Activations,
    dst: Activations,
    *,
    spec: Any,
    sparsity: float | None,
    pattern: Any,
    method_kwargs: dict[str, Any],
    hessian: bool,
    sequential: bool,
    batch_tokens: int,
    store: Callable[[str, np.ndarray], None],
) -> list[Any]:
    """Calibrate block ``i`` on ``src``, prune its 7 linears (``store(name, weight)`` each
    result, in order), and write the inputs of block ``i + 1`` into ``dst`` (recomputed with
    the pruned weights when ``sequential``, else the dense outputs). Returns the
    LayerReports."""
    from .pipeline import prune_linear

    names = model.linear_names(i)
    prefix = f"model.layers.{i}."
    stats: dict[int, LayerStats] = {}
    by_name: dict[str, LayerStats] = {}
    for nm in names:
        g = GROUP[nm[len(prefix) :]]
        if g not in stats:
            stats[g] = LayerStats(int(model.weight(nm).shape[1]), hessian)
        by_name[nm] = stats[g]
    feeds = {nm for nm in names if nm[len(prefix) :] in FEEDS}

    def capture(name: str, x: np.ndarray) -> None:
        if name in feeds:
            by_name[name].update(x, num_threads=model.num_threads)

    # Sequential: this pass only gathers statistics (outputs come after pruning).
    run_block(model, i, src, None if sequential else dst, Hooks(linear_input=capture), batch_tokens)
    layers = []
    last_user = {id(by_name[nm]): nm for nm in names}  # free each share after its last user
    shares: dict[int, Any] = {}
    for nm in names:
        st = by_name[nm]
        share_s = 0.0
        if spec.share is not None and id(st) not in shares:
            t0 = time.perf_counter()
            shares[id(st)] = spec.share(st, method_kwargs)
            share_s = time.perf_counter() - t0
        res, layer = prune_linear(
            spec, nm, model.weight(nm), st, sparsity, pattern, method_kwargs, shares.get(id(st))
        )
        if share_s:
            layer = replace(layer, seconds=layer.seconds + share_s)
        if last_user[id(st)] == nm:
            shares.pop(id(st), None)
        store(nm, np.ascontiguousarray(res.weight))
        layers.append(layer)
    stats.clear()  # free the Hessians before the next pass
    by_name.clear()
    if sequential:
        run_block(model, i, src, dst, None, batch_tokens)
    return layers
