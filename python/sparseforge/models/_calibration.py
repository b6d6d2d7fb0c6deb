"""The block step shared by :func:`sparseforge.models.prune` (in memory) and
:func:`sparseforge.models.streaming.prune_streaming` (one block materialised at a time):
calibration activations, the batched calibration forward of a block, and one block's
calibrate-and-prune.

Batched forward: the windows of a batch (``batch_tokens`` tokens at most, whole windows)
go through every linear as one GEMM of ``(windows * seqlen, in_features)``, through the
norms, RoPE and the SwiGLU gate as one call each, and through attention window by window
(each window is its own causal sequence at positions ``0 .. seqlen-1``). Each linear's input
statistics are updated once per batch. For the families the core implements (plain Llama /
Mistral / Qwen2 blocks: :func:`core_unsupported` says why not otherwise) the whole batch
goes through the block in one core call (``_core.models.calib_block_forward``: GEMMs, norms, RoPE,
attention and the gate in C++, the statistics fed in the core, the GIL released); other
families take the Python forward. The windows' activations between blocks live in an
:class:`Activations` buffer: float32 or bfloat16, in memory or in a memory-mapped file.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import numpy.typing as npt

from .. import _core
from ..calib import LayerStats
from ..kernels import _threads
from .llama import LINEAR_SUFFIXES, Hooks, LlamaModel

__all__ = [
    "ACTIVATION_DTYPES",
    "FORWARDS",
    "Activations",
    "block_forward",
    "block_forward_core",
    "core_unsupported",
    "prune_block",
    "release_pages",
    "resolve_forward",
    "run_block",
]

F32 = npt.NDArray[np.float32]

ACTIVATION_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

# Each linear's input group: q/k/v read the same x, gate/up too.
GROUP = {s: g for s, g in zip(LINEAR_SUFFIXES, (0, 0, 0, 1, 2, 2, 3), strict=True)}
# The linear whose hook call feeds each group's statistics (the first of the group to run).
FEEDS = {LINEAR_SUFFIXES[0], LINEAR_SUFFIXES[3], LINEAR_SUFFIXES[4], LINEAR_SUFFIXES[6]}


# The LlamaConfig fields whose meaning the core block forward implements; any other field
# (added by later families: QK-norm, sliding windows, ...) must hold its default.
_CORE_FIELDS = frozenset(
    {
        "dim",
        "hidden_dim",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "vocab_size",
        "max_seq_len",
        "norm_eps",
        "rope_theta",
        "rope_style",
        "tied_embeddings",
        "arch",
        "head_dim",
        "residual_dims",
    }
)
_CORE_ARCHS = frozenset({"llama", "mistral", "qwen2"})
FORWARDS = ("auto", "core", "python")


def core_unsupported(model: LlamaModel, i: int) -> str | None:
    """Why block ``i`` of ``model`` cannot run through the core block forward (a reason
    for a message), or None when it can: a plain Llama / Mistral / Qwen2 block (optional
    linear biases) with dense linear weights."""
    c = model.config
    if c.arch not in _CORE_ARCHS:
        return f"the {c.arch!r} family (the core block implements llama, mistral, qwen2)"
    if c.residual_dims:
        return "a sliced residual stream (residual_dims)"
    for f in dataclasses.fields(c):
        if f.name in _CORE_FIELDS:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if getattr(c, f.name) != default:
            return f"config.{f.name}={getattr(c, f.name)!r}"
    for nm in model.linear_names(i):
        w = model.weight(nm)
        if not isinstance(w, np.ndarray):
            return f"the compressed weight {nm} ({type(w).__name__})"
    return None


def resolve_forward(model: LlamaModel, forward: Any) -> str:
    """``forward`` ("auto", "core" or "python") resolved for ``model``: "auto" is "core"
    when every block can use it, else "python"; "core" on a model it does not implement
    is a ValueError naming why."""
    if forward not in FORWARDS:
        choices = ", ".join(map(repr, FORWARDS))
        raise ValueError(f"forward: expected one of {choices}, got {forward!r}")
    if forward == "python":
        return "python"
    for i in range(model.config.n_layers):
        why = core_unsupported(model, i)
        if why is not None:
            if forward == "core":
                raise ValueError(
                    f"forward: the core block forward does not implement {why} (block {i}); "
                    "use forward='python' (or 'auto', which falls back to it)"
                )
            return "python"
    return "core"


def _f32(a: Any) -> F32:
    return np.ascontiguousarray(a, dtype=np.float32)


def block_forward_core(
    model: LlamaModel,
    i: int,
    h: F32,
    windows: int,
    stats: Sequence[LayerStats | None],
    need_output: bool,
) -> F32 | None:
    """:func:`block_forward` in one core call: block ``i`` over ``windows`` windows stacked
    in ``h``, each linear's input added to ``stats`` (q/k/v's, o's, gate/up's, down's; None
    skips one). A ValueError names what the core does not implement for this model."""
    why = core_unsupported(model, i)
    if why is not None:
        raise ValueError(
            f"model: the core block forward does not implement {why}; use the Python forward"
        )
    c = model.config
    p = f"model.layers.{i}."
    names = model.linear_names(i)
    weights = [_f32(model.weight(p + "input_layernorm.weight"))]
    weights += [_f32(model.weight(nm)) for nm in names[:4]]
    weights.append(_f32(model.weight(p + "post_attention_layernorm.weight")))
    weights += [_f32(model.weight(nm)) for nm in names[4:]]
    biases = []
    for nm in names:
        b = nm[: -len("weight")] + "bias"
        biases.append(_f32(model._weights[b]) if b in model._weights else None)
    out: F32 | None = _core.models.calib_block_forward(
        np.ascontiguousarray(h, dtype=np.float32),
        int(h.shape[0]) // windows,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        float(c.rope_theta),
        c.rope_style,
        float(c.norm_eps),
        float(model._scale),
        weights,
        biases,
        [None if st is None else st._impl for st in stats],
        need_output,
        _threads(model.num_threads),
    )
    return out


_MADV_DONTNEED = 4  # Linux


def release_pages(a: Any) -> bool:
    """Drop the resident pages of a read-only, file-backed (memory-mapped) array from this
    process (``madvise(MADV_DONTNEED)`` on the whole pages inside it): they stay in the page
    cache and are read again if the array is touched, so its values do not change. Called on
    a block's source weights once they are replaced or written out, so the process's RSS
    holds one block, not every block it has read. Returns whether anything was released
    (False for arrays that own their memory, writeable ones, or off Linux)."""
    import ctypes
    import mmap
    import sys

    if not sys.platform.startswith("linux") or not isinstance(a, np.ndarray):
        return False
    if a.flags.writeable or a.nbytes == 0 or not a.flags.c_contiguous:
        return False
    base: Any = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if not isinstance(base, mmap.mmap):
        return False
    page = mmap.PAGESIZE
    start = a.ctypes.data
    lo = (start + page - 1) // page * page
    hi = (start + a.nbytes) // page * page
    if hi <= lo:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)) == 0


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
    stats: Sequence[LayerStats | None] | None,
    batch_tokens: int,
    forward: str = "python",
) -> None:
    """Block ``i`` over every window of ``src`` in batches of whole windows (at most
    ``batch_tokens`` tokens, at least one window); outputs into ``dst`` (None: statistics
    only, the down projection's GEMM skipped). ``stats``: the LayerStats of q/k/v's, o's,
    gate/up's and down's inputs (None: none gathered). ``forward``: "core" (one core call
    per batch, :func:`block_forward_core`) or "python" (:func:`block_forward`)."""
    n, T = src.shape[0], src.shape[1]
    per = max(1, batch_tokens // T)
    st: Sequence[LayerStats | None] = stats if stats is not None else [None] * 4
    hooks = None
    if forward == "python" and stats is not None:
        by_input = {LINEAR_SUFFIXES[k]: s for k, s in zip((0, 3, 4, 6), st, strict=True)}
        prefix = f"model.layers.{i}."

        def capture(name: str, x: np.ndarray) -> None:
            s = by_input.get(name[len(prefix) :])
            if s is not None:
                s.update(x, num_threads=model.num_threads)

        hooks = Hooks(linear_input=capture)
    for a in range(0, n, per):
        b = min(n, a + per)
        h = src.read(a, b)
        if forward == "core":
            out = block_forward_core(model, i, h, b - a, st, dst is not None)
        else:
            out = block_forward(model, i, h, b - a, hooks, dst is not None)
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
    forward: str = "python",
) -> list[Any]:
    """Calibrate block ``i`` on ``src``, prune its 7 linears (``store(name, weight)`` each
    result, in order), and write the inputs of block ``i + 1`` into ``dst`` (recomputed with
    the pruned weights when ``sequential``, else the dense outputs). ``forward``: "core"
    or "python" (:func:`resolve_forward`). Returns the LayerReports.

    This is the per-block building block of :func:`sparseforge.models.prune` and
    :func:`sparseforge.models.streaming.prune_streaming` (public and stable: the Ray
    pipeline builds on it)."""
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
    ordered = [stats[g] for g in range(4)]
    # Sequential: this pass only gathers statistics (outputs come after pruning).
    run_block(model, i, src, None if sequential else dst, ordered, batch_tokens, forward)
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
        run_block(model, i, src, dst, None, batch_tokens, forward)
    return layers
