"""Calibration and one-shot pruning: sparseforge vs the PyTorch reference ports ->
bench/results/pruning.md.

On Llama-2-7B layer shapes, W (out_features, in_features) = 4096x4096 (q/k/v/o) and
4096x11008 (down_proj, whose Hessian is 11008^2), with 8 x 2048 = 16384 calibration
tokens, timed interleaved in one run at 1 and 2 threads (sparseforge ``num_threads``,
torch ``torch.set_num_threads``):

* **Hessian accumulation**: ``sf.calib.LayerStats(in_features).update(X)`` vs torch
  ``X.T @ X`` and vs IST-DASLab/sparsegpt's own ``add_batch`` pattern (per 2048-token
  sample ``H *= n/(n+1); n += 1; H += (sqrt(2/n) X).T @ (sqrt(2/n) X)`` in fp32);
* **Wanda** 50% and 2:4: ``sf.prune.wanda(W, col_norms)`` vs the torch port
  ``wanda_mask`` followed by ``W[mask] = 0`` on a clone (what locuslab/wanda does);
* **SparseGPT** 50% and 2:4 (block 128, percdamp 0.01, float32 sweep):
  ``sf.prune.sparsegpt(W, H)`` vs the torch port ``sparsegpt_fasterprune`` in float32;
* **peak memory** of one SparseGPT call per shape (sparseforge and the torch port), each in
  a fresh subprocess (``--child``), against the issue's bound W + 2 H + one block.

The torch ports are ``tests_py/torch_reference.py`` (imported, not copied). Before timing,
sparseforge is checked against them once per shape: Hessian and column norms, Wanda masks
and weights (bitwise), SparseGPT mask agreement and weight differences.

torch is an optional dependency: without it the script says so and exits 0.

Run from the repository root on an idle machine: ``python bench/bench_pruning.py``
(~25 minutes; it first waits for the CPUs to be idle) or ``--quick`` for a smoke run.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import sparseforge as sf

try:
    from bench import harness
except ImportError:  # run as a script: python bench/bench_pruning.py
    import harness  # type: ignore[no-redef, import-not-found]

try:
    import torch
except ImportError:  # optional bench dependency: main() reports it and exits 0
    torch = None  # type: ignore[assignment]

_TESTS = Path(__file__).resolve().parent.parent / "tests_py"

# (out_features, in_features): Llama-2-7B attention projections and the MLP down_proj.
SHAPES = ((4096, 4096), (4096, 11008))
QUICK_SHAPES = ((256, 512), (256, 1024))
TOKENS, SAMPLE = 8 * 2048, 2048  # calibration: 8 sequences of 2048 tokens
QUICK_TOKENS = 2 * 2048
THREADS = (1, 2)
SPARSITY = 0.5
BLOCK, PERCDAMP = 128, 0.01
PATTERNS: tuple[str | None, ...] = (None, "2:4")
TARGETS = {"hessian": 1.0, "wanda": 3.0, "sparsegpt": 1.5}  # the issue: sf >= target x torch
# The multi-second groups: (best-of-N, warm-up rounds) per shape. A full round of the
# 4096x11008 SparseGPT group (8 calls) takes ~4 minutes at 1-2 threads on the reference VM.
SLOW_REPS = {
    (4096, 4096): {"hessian": (5, 1), "sparsegpt": (5, 0)},
    (4096, 11008): {"hessian": (3, 0), "sparsegpt": (2, 0)},
}
CHILD_THREADS = 2  # the peak-memory subprocesses run at 2 threads
IDLE_BUSY = 0.15  # "idle": other processes use < 0.15 CPU on average ...
IDLE_WINDOW, IDLE_WINDOWS = 3.0, 3  # ... in 3 consecutive 3-second windows
MIB = 1 << 20


def _label(pattern: str | None) -> str:
    return "2:4" if pattern else "50%"


def _prune_nm(pattern: str | None) -> tuple[int, int]:
    """sparseforge's "2:4" (2 kept of 4) is the references' prune_n=2 (pruned) of 4."""
    if pattern is None:
        return 0, 0
    n, m = (int(x) for x in pattern.split(":"))
    return m - n, m


# ---------------------------------------------------------------------------------------
# Machine load: wait for idle CPUs, and count other processes' CPU time during each group


def _cpu_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (/proc/stat, since boot)."""
    with open("/proc/stat", encoding="ascii") as f:
        vals = [int(x) for x in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Wall time, this process's CPU time and everybody else's over an interval."""

    def __init__(self) -> None:
        self.wall0, self.busy0, self.own0 = (
            time.monotonic(),
            _cpu_busy_seconds(),
            _own_cpu_seconds(),
        )

    def stop(self) -> tuple[float, float]:
        """(wall seconds, other processes' average CPU use in cores)."""
        wall = time.monotonic() - self.wall0
        busy = _cpu_busy_seconds() - self.busy0
        own = _own_cpu_seconds() - self.own0
        return wall, max(0.0, busy - own) / max(wall, 1e-9)


def wait_for_idle(timeout: float, what: str) -> tuple[float, float]:
    """Sleep until other processes use < IDLE_BUSY CPUs in IDLE_WINDOWS consecutive windows
    (or ``timeout`` seconds pass). Returns (seconds waited, busy CPUs in the last window)."""
    if timeout <= 0:
        return 0.0, float("nan")
    start = time.monotonic()
    quiet, busy, last_note = 0, 0.0, start
    while True:
        b0, o0 = _cpu_busy_seconds(), _own_cpu_seconds()
        time.sleep(IDLE_WINDOW)
        busy = max(0.0, (_cpu_busy_seconds() - b0) - (_own_cpu_seconds() - o0)) / IDLE_WINDOW
        quiet = quiet + 1 if busy < IDLE_BUSY else 0
        waited = time.monotonic() - start
        if quiet >= IDLE_WINDOWS:
            return waited, busy
        if waited >= timeout:
            print(
                f"{what}: CPUs still busy ({busy:.2f} CPUs) after {waited:.0f} s; going on",
                file=sys.stderr,
            )
            return waited, busy
        if time.monotonic() - last_note >= 30:
            last_note = time.monotonic()
            print(
                f"{what}: waiting for idle CPUs ({busy:.2f} CPUs busy, {waited:.0f} s)",
                file=sys.stderr,
            )


# ---------------------------------------------------------------------------------------
# torch baselines


def load_reference() -> ModuleType:
    """tests_py/torch_reference.py: the faithful ports of the reference code."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    return importlib.import_module("torch_reference")


def torch_gram(X: torch.Tensor, threads: int) -> torch.Tensor:
    """The issue's baseline: X.T @ X in fp32 (one GEMM; MKL)."""
    torch.set_num_threads(threads)
    return X.T @ X


def reference_add_batch(X: torch.Tensor, threads: int, sample: int = SAMPLE) -> torch.Tensor:
    """IST-DASLab/sparsegpt ``SparseGPT.__init__`` + ``add_batch`` for a Linear layer, one
    call per calibration sequence of ``sample`` tokens (``tmp = inp.shape[0] = 1``)."""
    torch.set_num_threads(threads)
    columns = X.shape[1]
    H = torch.zeros((columns, columns))
    nsamples = 0
    for start in range(0, X.shape[0], sample):
        inp = X[start : start + sample].unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        H *= nsamples / (nsamples + tmp)
        nsamples += tmp
        inp = math.sqrt(2 / nsamples) * inp.float()
        H += inp.matmul(inp.t())
    return H


def torch_wanda(
    ref: ModuleType, W: torch.Tensor, scaler_row: torch.Tensor, pattern: str | None, threads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """locuslab/wanda ``prune_wanda`` on one layer: the mask, then ``W[mask] = 0`` (on a
    clone here, so the input copies survive; the reference zeroes the layer in place)."""
    torch.set_num_threads(threads)
    prune_n, prune_m = _prune_nm(pattern)
    mask = ref.wanda_mask(W, scaler_row, SPARSITY, prune_n, prune_m)
    out = W.clone()
    out[mask] = 0
    return out, mask


def torch_sparsegpt(
    ref: ModuleType, W: torch.Tensor, H: torch.Tensor, pattern: str | None, threads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(threads)
    prunen, prunem = _prune_nm(pattern)
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] = ref.sparsegpt_fasterprune(
        W, H, SPARSITY, prunen, prunem, blocksize=BLOCK, percdamp=PERCDAMP, dtype=torch.float32
    )
    return out


# ---------------------------------------------------------------------------------------
# sparseforge calls


def sf_update(X: np.ndarray, threads: int) -> sf.calib.LayerStats:
    """A new LayerStats (default precision: fp32 rank-k updates of each 2048-token chunk,
    accumulated in float64) and one update with all tokens."""
    stats = sf.calib.LayerStats(X.shape[1])
    stats.update(X, num_threads=threads)
    return stats


def tie_only(
    W: np.ndarray, norms: np.ndarray, keep_a: np.ndarray, keep_b: np.ndarray, pattern: str | None
) -> bool:
    """True if two Wanda masks keep the same multiset of scores in every N:M group (or
    every row, unstructured): they differ only in which of equal scores they keep."""
    score = np.abs(W) * norms[None, :]
    m = int(pattern.split(":")[1]) if pattern else W.shape[1]
    rows = np.unique(np.argwhere(keep_a != keep_b)[:, 0])
    for r in rows:
        s = score[r].reshape(-1, m)
        a, b = keep_a[r].reshape(-1, m), keep_b[r].reshape(-1, m)
        for g in np.unique(np.argwhere(a != b)[:, 0]):
            if not np.array_equal(np.sort(s[g][a[g]]), np.sort(s[g][b[g]])):
                return False
    return True


def sf_wanda(W: np.ndarray, norms: np.ndarray, pattern: str | None, threads: int) -> Any:
    if pattern is None:
        return sf.prune.wanda(W, norms, SPARSITY, num_threads=threads)
    return sf.prune.wanda(W, norms, pattern=pattern, num_threads=threads)


def sf_sparsegpt(
    W: np.ndarray, H: np.ndarray, pattern: str | None, threads: int, factor: str = "float64"
) -> Any:
    kw: dict[str, Any] = {"pattern": pattern} if pattern else {"sparsity": SPARSITY}
    return sf.prune.sparsegpt(
        W,
        H,
        block_size=BLOCK,
        percdamp=PERCDAMP,
        precision="float32",
        factor_precision=factor,
        num_threads=threads,
        **kw,
    )


# ---------------------------------------------------------------------------------------
# Data


def make_weight(rows: int, cols: int, seed: int) -> np.ndarray:
    """N(0, 0.02) float32, as bench_masks.py."""
    W = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    W *= np.float32(0.02)
    return W


def make_activations(tokens: int, cols: int, seed: int) -> np.ndarray:
    """Calibration inputs: N(0, 1) float32, (tokens, in_features)."""
    return np.random.default_rng(10_000 + seed).standard_normal((tokens, cols), dtype=np.float32)


def _rel_max(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref|, in float64."""
    ref64 = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - ref64)) / np.max(np.abs(ref64)))


# ---------------------------------------------------------------------------------------
# Timed groups


@dataclass
class Group:
    """One interleaved run: the cases of one op on one shape."""

    shape: tuple[int, int]
    op: str
    timings: dict[str, harness.Timing]
    reps: int
    warmup: int
    copies: int
    waited: float
    wall: float
    foreign: float  # other processes' average CPU use during the run, in cores

    @property
    def label(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"

    def best(self, name: str) -> float:
        return self.timings[name].best


def run_group(
    shape: tuple[int, int],
    op: str,
    cases: dict[str, Callable[[int], Any]],
    copies: int,
    reps: int,
    warmup: int,
    idle_timeout: float,
) -> Group:
    label = f"{shape[0]}x{shape[1]} {op}"
    waited, _ = wait_for_idle(idle_timeout, label)
    print(
        f"{label}: timing {len(cases)} cases, best of {reps} (+{warmup} warm-up)",
        file=sys.stderr,
    )
    meter = CpuMeter()
    timings = harness.run_interleaved(cases, copies, reps, warmup=warmup)
    wall, foreign = meter.stop()
    return Group(shape, op, timings, reps, warmup, copies, waited, wall, foreign)


def _on_copy(fn: Callable[..., Any], inputs: list[Any], *args: Any) -> Callable[[int], Any]:
    """A case callable: ``fn(inputs[copy], *args)``."""

    def call(copy: int) -> Any:
        return fn(inputs[copy], *args)

    return call


@dataclass
class ShapeResult:
    shape: tuple[int, int]
    groups: list[Group] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    working_set: list[str] = field(default_factory=list)
    ok: bool = True

    @property
    def label(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}"

    def group(self, op: str) -> Group:
        return next(g for g in self.groups if g.op == op)


def _slow(shape: tuple[int, int], op: str, args: Any) -> tuple[int, int]:
    """(reps, warm-up) of a multi-second group."""
    if args.quick:
        return args.reps, 1
    reps, warmup = SLOW_REPS.get(shape, {"hessian": (3, 0), "sparsegpt": (2, 0)})[op]
    override = args.hessian_reps if op == "hessian" else args.sparsegpt_reps
    return (override or reps), warmup


def bench_shape(shape: tuple[int, int], ref: ModuleType, args: Any, tmpdir: Path) -> ShapeResult:
    out_f, in_f = shape
    res = ShapeResult(shape)
    label = res.label
    tokens = QUICK_TOKENS if args.quick else TOKENS
    nsamples = tokens // SAMPLE

    # --- Hessian ---------------------------------------------------------------------
    x_bytes = tokens * in_f * 4
    copies = 2 if args.quick else harness.copies_for(x_bytes)
    print(f"{label}: {copies} X copies x {harness.fmt_bytes(x_bytes)}", file=sys.stderr)
    Xs = [make_activations(tokens, in_f, c) for c in range(copies)]
    Xts = [torch.from_numpy(X) for X in Xs]
    res.working_set.append(
        f"Hessian: {copies} X copies x {harness.fmt_bytes(x_bytes)} = "
        f"{harness.fmt_bytes(copies * x_bytes)}, rotated"
    )
    print(f"{label}: checking the Hessian and column norms", file=sys.stderr)
    stats = sf_update(Xs[0], 2)
    H_sf = stats.hessian  # float64, X^T X / tokens
    norms = stats.col_norms  # float32, sqrt(sum x^2 / tokens)
    G = torch_gram(Xts[0], 2).numpy()
    rel_gram = _rel_max(H_sf, G / np.float64(tokens))
    del G
    H_ref = reference_add_batch(Xts[0], 2).numpy()  # fp32, 2/nsamples * X^T X
    rel_ref = _rel_max(H_sf, H_ref * (nsamples / 2 / tokens))
    ref_norms = (torch.linalg.vector_norm(Xts[0].double(), dim=0) / math.sqrt(tokens)).numpy()
    rel_norms = _rel_max(norms, ref_norms)
    del H_sf, stats
    res.checks += [
        (
            "Hessian: sf `LayerStats.hessian` vs torch `X.T @ X / tokens` (fp32)",
            f"max abs diff / max abs = {rel_gram:.2e}",
        ),
        (
            "Hessian: sf vs the reference's `add_batch` H (fp32), rescaled by nsamples/2/tokens",
            f"max abs diff / max abs = {rel_ref:.2e}",
        ),
        (
            "column norms: sf `LayerStats.col_norms` vs float64 `||X[:, j]|| / sqrt(tokens)`",
            f"max abs diff / max abs = {rel_norms:.2e}",
        ),
    ]
    reps, warmup = _slow(shape, "hessian", args)
    cases: dict[str, Callable[[int], Any]] = {}
    for t in THREADS:
        cases[f"torch X.T@X {t}T"] = _on_copy(torch_gram, Xts, t)
    for t in THREADS:
        cases[f"reference add_batch {t}T"] = _on_copy(reference_add_batch, Xts, t)
    for t in THREADS:
        cases[f"sf LayerStats.update {t}T"] = _on_copy(sf_update, Xs, t)
    res.groups.append(run_group(shape, "hessian", cases, copies, reps, warmup, args.idle_timeout))
    del Xs, Xts, cases

    # --- Wanda -----------------------------------------------------------------------
    w_bytes = out_f * in_f * 4
    copies = 2 if args.quick else harness.copies_for(w_bytes)
    print(f"{label}: {copies} W copies x {harness.fmt_bytes(w_bytes)}", file=sys.stderr)
    Ws = [make_weight(out_f, in_f, c) for c in range(copies)]
    Wts = [torch.from_numpy(W) for W in Ws]
    res.working_set.append(
        f"Wanda: {copies} W copies x {harness.fmt_bytes(w_bytes)} = "
        f"{harness.fmt_bytes(copies * w_bytes)}, rotated"
    )
    # The reference's statistic is scaler_row = sum x^2 / nsamples and its score
    # |W| * sqrt(scaler_row); scaler_row = col_norms**2 gives the same fp32 scores as
    # sparseforge's |W| * col_norms (sqrt(fl(x*x)) == x in IEEE arithmetic).
    scaler_row = torch.from_numpy(norms) ** 2
    print(f"{label}: checking Wanda against the torch port", file=sys.stderr)
    for pattern in PATTERNS:
        ref_w, ref_mask = torch_wanda(ref, Wts[0], scaler_row, pattern, 2)
        keep = ~ref_mask.numpy()
        bad, ties = [], 0
        for t in THREADS:
            r = sf_wanda(Ws[0], norms, pattern, t)
            differ = r.mask != keep
            if not differ.any():
                if not np.array_equal(r.weight.view(np.uint32), ref_w.numpy().view(np.uint32)):
                    bad.append(f"{t}T: weight differs bitwise")
                continue
            # torch.topk's order among equal scores is unspecified (locuslab/wanda's N:M
            # path uses it); sparseforge prunes the lower index first. A difference is a
            # tie if every affected group keeps the same multiset of scores.
            if tie_only(Ws[0], norms, r.mask, keep, pattern):
                ties = max(ties, int(np.count_nonzero(differ)))
                expect = np.where(r.mask, Ws[0], np.float32(0))
                if not np.array_equal(r.weight.view(np.uint32), expect.view(np.uint32)):
                    bad.append(f"{t}T: weight is not W * mask")
            else:
                bad.append(f"{t}T: {int(np.count_nonzero(differ))} mask elements differ")
        res.ok = res.ok and not bad
        if bad:
            verdict = "**MISMATCH**: " + "; ".join(bad)
        elif ties:
            verdict = (
                f"identical except {ties} mask elements at exact score ties, where torch.topk's "
                "order is unspecified (sparseforge prunes the lower index first); weight = W * mask"
            )
        else:
            verdict = "identical mask and bitwise-identical weight"
        res.checks.append(
            (f"Wanda {_label(pattern)}: sf (1T, 2T) vs torch `wanda_mask` + `W[mask] = 0`", verdict)
        )
    cases = {}
    for pattern in PATTERNS:
        for t in THREADS:
            cases[f"torch wanda {_label(pattern)} {t}T"] = _on_copy(
                functools.partial(torch_wanda, ref), Wts, scaler_row, pattern, t
            )
    for pattern in PATTERNS:
        for t in THREADS:
            cases[f"sf wanda {_label(pattern)} {t}T"] = _on_copy(sf_wanda, Ws, norms, pattern, t)
    res.groups.append(run_group(shape, "wanda", cases, copies, args.reps, 1, args.idle_timeout))
    Ws, Wts = Ws[:2], Wts[:2]
    del cases

    # --- SparseGPT -------------------------------------------------------------------
    # Both get the reference's own fp32 H (add_batch above); sparseforge the same values
    # as float64, its Hessian dtype, so differences come from the algorithms' arithmetic.
    H32 = H_ref
    H64 = H32.astype(np.float64)
    H32t = torch.from_numpy(H32)
    res.working_set.append(
        f"SparseGPT: 2 W copies x {harness.fmt_bytes(w_bytes)} alternate; one H "
        f"({harness.fmt_bytes(H64.nbytes)} float64 for sf, {harness.fmt_bytes(H32.nbytes)} "
        "fp32 for torch)"
    )
    print(f"{label}: checking SparseGPT against the torch port (2 threads)", file=sys.stderr)
    for pattern in PATTERNS:
        r = sf_sparsegpt(Ws[0], H64, pattern, 2)
        tw, tmask, tloss = torch_sparsegpt(ref, Wts[0], H32t, pattern, 2)
        tw_np = tw.numpy()
        agree = float(np.mean(r.mask == ~tmask.numpy()))
        diff = np.abs(r.weight.astype(np.float64) - tw_np)
        rel_max = float(diff.max() / np.abs(tw_np).max())
        rel_fro = float(np.linalg.norm(diff) / np.linalg.norm(tw_np.astype(np.float64)))
        t_loss = float(tloss.double().sum())
        rel_loss = abs(float(r.info["loss"]) - t_loss) / abs(t_loss)
        res.checks.append(
            (
                f"SparseGPT {_label(pattern)}: sf vs torch `sparsegpt_fasterprune` (fp32)",
                f"mask agreement {agree:.6f} ({r.mask.size - int(agree * r.mask.size + 0.5)} "
                f"of {r.mask.size} differ); weight max abs diff / max abs {rel_max:.2e}, "
                f"relative Frobenius {rel_fro:.2e}; loss sf {float(r.info['loss']):.6g} vs "
                f"torch {t_loss:.6g} ({rel_loss:.1e} rel.); sparsity sf {r.sparsity:.4f}, "
                f"torch {float(tmask.float().mean()):.4f}",
            )
        )
        del r, tw, tmask, tloss, tw_np, diff
    reps, warmup = _slow(shape, "sparsegpt", args)
    cases = {}
    for pattern in PATTERNS:
        for t in THREADS:
            cases[f"torch sparsegpt {_label(pattern)} {t}T"] = _on_copy(
                functools.partial(torch_sparsegpt, ref), Wts, H32t, pattern, t
            )
    for pattern in PATTERNS:
        for t in THREADS:
            cases[f"sf sparsegpt {_label(pattern)} {t}T"] = _on_copy(
                sf_sparsegpt, Ws, H64, pattern, t
            )
            # factor_precision="float32": the reference's arithmetic end to end
            cases[f"sf32 sparsegpt {_label(pattern)} {t}T"] = _on_copy(
                sf_sparsegpt, Ws, H64, pattern, t, "float32"
            )
    res.groups.append(run_group(shape, "sparsegpt", cases, 2, reps, warmup, args.idle_timeout))
    del cases

    # --- Peak memory -----------------------------------------------------------------
    paths = {"W": tmpdir / "W.npy", "H64": tmpdir / "H64.npy", "H32": tmpdir / "H32.npy"}
    np.save(paths["W"], Ws[0])
    np.save(paths["H64"], H64)
    np.save(paths["H32"], H32)
    del Ws, Wts, H32t, H64, H32, H_ref
    bound = out_f * in_f * 4 + 2 * in_f * in_f * 8 + out_f * BLOCK * 4
    for impl, h in (("sf", "H64"), ("torch", "H32")):
        print(f"{label}: peak memory of one {impl} SparseGPT call", file=sys.stderr)
        rec = run_child(impl, paths["W"], paths[h])
        rec.update(impl=impl, bound=bound)
        res.memory.append(rec)
    for p in paths.values():
        p.unlink()
    return res


# ---------------------------------------------------------------------------------------
# Peak memory: one SparseGPT call in a fresh process


def _status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status: VmRSS (now) or VmHWM (peak of this image)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def child_main(argv: list[str]) -> int:
    """``--child {sf,torch} W.npy H.npy``: load W and H, run one unstructured 50% SparseGPT
    call at CHILD_THREADS threads, print the peak RSS before and after as JSON.

    The peak is VmHWM of /proc/self/status, the counter ``getrusage().ru_maxrss`` reports for
    a process's own image. ru_maxrss itself cannot be used here: across fork/vfork + exec
    the kernel keeps the larger of the pre-exec size, so a child of this (multi-GB) process
    starts with ru_maxrss = the parent's RSS. Both are recorded.
    """
    impl, w_path, h_path = argv
    if impl == "torch":
        ref = load_reference()
        torch.set_num_threads(CHILD_THREADS)
    W = np.load(w_path)
    H = np.load(h_path)
    hwm_before, rss_before = _status_kib("VmHWM"), _status_kib("VmRSS")
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if impl == "sf":
        out: Any = sf_sparsegpt(W, H, None, CHILD_THREADS)
    else:
        out = torch_sparsegpt(ref, torch.from_numpy(W), torch.from_numpy(H), None, CHILD_THREADS)
    seconds = time.perf_counter() - t0
    hwm_after = _status_kib("VmHWM")
    ru_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del out
    print(
        json.dumps(
            {
                "hwm_before_kib": hwm_before,
                "rss_before_kib": rss_before,
                "hwm_after_kib": hwm_after,
                "ru_maxrss_before_kib": ru_before,
                "ru_maxrss_after_kib": ru_after,
                "input_bytes": int(W.nbytes + H.nbytes),
                "h_dtype": str(H.dtype),
                "seconds": seconds,
            }
        )
    )
    return 0


def run_child(impl: str, w_path: Path, h_path: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", impl, str(w_path), str(h_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    rec: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rec


# ---------------------------------------------------------------------------------------
# Tables

# (op, row label, baseline case prefix, sf case prefix)
ROWS = (
    ("hessian", "Hessian X^T X", "torch X.T@X", "sf LayerStats.update"),
    ("hessian", "Hessian X^T X", "reference add_batch", "sf LayerStats.update"),
    ("wanda", "Wanda 50%", "torch wanda 50%", "sf wanda 50%"),
    ("wanda", "Wanda 2:4", "torch wanda 2:4", "sf wanda 2:4"),
    ("sparsegpt", "SparseGPT 50%", "torch sparsegpt 50%", "sf sparsegpt 50%"),
    ("sparsegpt", "SparseGPT 2:4", "torch sparsegpt 2:4", "sf sparsegpt 2:4"),
    ("sparsegpt", "SparseGPT 50%, fp32 factor", "torch sparsegpt 50%", "sf32 sparsegpt 50%"),
    ("sparsegpt", "SparseGPT 2:4, fp32 factor", "torch sparsegpt 2:4", "sf32 sparsegpt 2:4"),
)
BASELINE_LABEL = {
    "torch X.T@X": "torch `X.T @ X`",
    "reference add_batch": "sparsegpt `add_batch` (torch)",
}


def _verdict(ratio: float, target: float) -> str:
    return f"{'yes' if ratio >= target else '**no**'} ({harness.fmt_ratio(ratio)})"


def main_table(results: list[ShapeResult]) -> str:
    f, r = harness.fmt_ms, harness.fmt_ratio
    rows = []
    for s in results:
        for op, name, base, cand in ROWS:
            g = s.group(op)
            b1, b2 = g.best(f"{base} 1T"), g.best(f"{base} 2T")
            c1, c2 = g.best(f"{cand} 1T"), g.best(f"{cand} 2T")
            target = TARGETS[op]
            is_target = not (op == "hessian" and base != "torch X.T@X")
            rows.append(
                (
                    s.label,
                    name,
                    BASELINE_LABEL.get(base, "torch port"),
                    f(b1),
                    f(c1),
                    r(b1 / c1),
                    f(b2),
                    f(c2),
                    r(b2 / c2),
                    g.reps,
                    f">= {target:g}x" if is_target else "—",
                    _verdict(b1 / c1, target) if is_target else "—",
                    _verdict(b2 / c2, target) if is_target else "—",
                )
            )
    return (
        "## sparseforge vs the PyTorch reference ports\n\n"
        "Speedup = torch time / sparseforge time at the same thread count (best of N each, "
        "same interleaved run; torch via `torch.set_num_threads`, sparseforge via "
        "`num_threads`). Targets from the issue: Hessian accumulation >= 1x torch `X.T @ X`, "
        "Wanda >= 3x, SparseGPT >= 1.5x torch; the `add_batch` row is a second baseline "
        "without a target. W is (out_features, in_features); H is in_features^2.\n\n"
        + harness.md_table(
            (
                "shape",
                "op",
                "baseline",
                "torch 1T ms",
                "sf 1T ms",
                "speedup 1T",
                "torch 2T ms",
                "sf 2T ms",
                "speedup 2T",
                "N",
                "target",
                "met 1T",
                "met 2T",
            ),
            rows,
        )
    )


def scaling_table(results: list[ShapeResult]) -> str:
    """1T time / 2T time of every case: how each implementation uses the second core."""
    rows = []
    for s in results:
        for g in s.groups:
            names = dict.fromkeys(n.rsplit(" ", 1)[0] for n in g.timings)
            for n in names:
                t1, t2 = g.best(f"{n} 1T"), g.best(f"{n} 2T")
                rows.append((s.label, n, harness.fmt_ms(t1), harness.fmt_ms(t2), f"{t1 / t2:.2f}"))
    return (
        "## Thread scaling\n\n1T / 2T time of each case (2.0 = perfect use of the second core).\n\n"
        + harness.md_table(("shape", "case", "1T ms", "2T ms", "1T/2T"), rows)
    )


def hessian_rate_lines(results: list[ShapeResult], tokens: int) -> list[str]:
    """GEMM-equivalent GFLOP/s: 2 tokens in^2 / t (sparseforge computes one triangle, about
    half of those flops)."""
    lines = []
    for s in results:
        g = s.group("hessian")
        flops = 2.0 * tokens * s.shape[1] ** 2
        parts = [
            f"{n} {flops / g.best(n) / 1e9:.0f}" for n in g.timings if n.startswith(("torch", "sf"))
        ]
        lines.append(f"{s.label} (in_features {s.shape[1]}): " + ", ".join(parts))
    return lines


def memory_table(results: list[ShapeResult]) -> str:
    rows = []
    for s in results:
        for m in s.memory:
            delta = (m["hwm_after_kib"] - m["hwm_before_kib"]) / 1024
            above = (m["hwm_after_kib"] - m["rss_before_kib"]) / 1024
            bound = m["bound"] / MIB
            ru_before, ru_after = m["ru_maxrss_before_kib"], m["ru_maxrss_after_kib"]
            met = "—" if m["impl"] != "sf" else ("yes" if above <= bound else "**no**")
            rows.append(
                (
                    s.label,
                    "sparseforge" if m["impl"] == "sf" else "torch port",
                    f"{m['input_bytes'] / MIB:.0f} (H {m['h_dtype']})",
                    f"{m['rss_before_kib'] / 1024:.0f}",
                    f"{m['hwm_before_kib'] / 1024:.0f}",
                    f"{m['hwm_after_kib'] / 1024:.0f}",
                    f"{delta:.0f}",
                    f"{above:.0f}",
                    f"{bound:.0f}",
                    f"{above / bound:.2f}",
                    met,
                    f"{ru_before / 1024:.0f} / {ru_after / 1024:.0f}",
                    f"{m['seconds']:.1f}",
                )
            )
    return (
        "## Peak memory of one SparseGPT call (unstructured 50%)\n\n"
        f"Each call runs in a fresh process (`--child`) at {CHILD_THREADS} threads: it loads W "
        "(fp32) and H (sparseforge: float64; the torch port: the reference's fp32) from "
        "`.npy` files, reads its RSS and peak RSS, makes the call and reads the peak again. "
        "The peak is `VmHWM` from /proc/self/status — the kernel counter behind "
        "`getrusage(RUSAGE_SELF).ru_maxrss` — because ru_maxrss itself is unusable in a "
        "child of this process: across vfork/exec the kernel keeps the pre-exec image's "
        "peak, so the child's ru_maxrss starts at the *parent's* RSS (last column; it "
        "never moves). "
        'delta = peak after - peak before (ru_maxrss-style); "above inputs" = peak after '
        "- RSS with the inputs loaded, the call's extra memory at its peak (>= delta; equal "
        'unless start-up had a higher transient peak), used for "bound met". Both include '
        "the returned weight (4 B/weight) and mask (1 B/weight). "
        "Bound (the issue): W + 2 H + one block = out x in x 4 B + 2 x in^2 x 8 B + "
        f"out x {BLOCK} x 4 B. The torch port is shown for comparison (its H is fp32, "
        "half the bytes).\n\n"
        + harness.md_table(
            (
                "shape",
                "implementation",
                "inputs MiB",
                "RSS with inputs MiB",
                "peak before MiB",
                "peak after MiB",
                "delta MiB",
                "above inputs MiB",
                "bound MiB",
                "above/bound",
                "bound met",
                "child ru_maxrss before / after MiB",
                "call s",
            ),
            rows,
        )
    )


def checks_section(results: list[ShapeResult]) -> str:
    rows = [(s.label, c, v) for s in results for c, v in s.checks]
    return (
        "## Correctness and agreement (once per shape, before timing)\n\n"
        "On input copy 0, at 2 threads for torch. Wanda must match the port exactly. "
        "SparseGPT is compared in fp32 on the same H values (the reference's own fp32 "
        "`add_batch` H; sparseforge gets it as float64): the runs differ in rounding (the "
        "order of the fp32 updates; sparseforge computes the inverse Cholesky factor in "
        "float64), and a weight near the per-block threshold can fall on either side, after "
        "which the updates of its row differ — so the agreement is reported, not "
        "required.\n\n" + harness.md_table(("shape", "check", "result"), rows)
    )


def machine_section(results: list[ShapeResult]) -> str:
    rows = [
        (
            g.label,
            g.op,
            f"{g.copies}",
            f"{g.reps} (+{g.warmup} warm-up)",
            f"{g.waited:.0f}",
            f"{g.wall:.0f}",
            f"{g.foreign:.2f}" + (" **disturbed**" if g.foreign > 0.1 else ""),
        )
        for s in results
        for g in s.groups
    ]
    return (
        "## Runs and machine load\n\n"
        "Each group of cases is one interleaved run. Before each, the script waits until "
        f"other processes use < {IDLE_BUSY} CPUs over {IDLE_WINDOWS} consecutive "
        f'{IDLE_WINDOW:g}-second windows (/proc/stat). "Other CPU" = the machine\'s busy '
        "CPU time during the run minus this process's, per second of wall time (cores); "
        "> 0.1 is marked: best-of-N filters short disturbances, but low-N rows may carry "
        "them.\n\n"
        + harness.md_table(
            ("shape", "op", "input copies", "N", "idle wait s", "run s", "other CPU (cores)"),
            rows,
        )
    )


def raw_section(results: list[ShapeResult]) -> str:
    parts = ["## All timings\n\nmedian/best shows the drift within each run.\n"]
    for s in results:
        for g in s.groups:
            parts.append(
                f"### {s.label} {g.op} (N = {g.reps}, {g.copies} input copies)\n\n"
                + harness.timings_table(g.timings)
            )
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------


def _add_arguments(p: Any) -> None:
    p.add_argument(
        "--hessian-reps",
        type=int,
        default=None,
        help="best-of-N of the Hessian groups (default: 5 at 4096x4096, 3 at 4096x11008)",
    )
    p.add_argument(
        "--sparsegpt-reps",
        type=int,
        default=None,
        help="best-of-N of the SparseGPT groups (default: 5 at 4096x4096, 2 at 4096x11008)",
    )
    p.add_argument(
        "--shapes",
        default=None,
        help="comma-separated subset of the shapes, e.g. 4096x11008 (default: all)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="seconds to wait for idle CPUs before each group (default 1800 before the "
        "first, 300 before the others; 0 with --quick)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    args = harness.parse_args(__doc__, "pruning.md", argv, _add_arguments)
    if torch is None:
        print(
            "bench_pruning: PyTorch is not installed (optional: pip install torch); "
            "nothing measured, no report written",
            file=sys.stderr,
        )
        return 0
    for name in ("hessian_reps", "sparsegpt_reps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')}: expected >= 1", file=sys.stderr)
            return 2
    ref = load_reference()
    first_timeout = args.idle_timeout
    if first_timeout is None:
        first_timeout = 0.0 if args.quick else 1800.0
    if args.idle_timeout is None:
        args.idle_timeout = 0.0 if args.quick else 300.0
    waited, busy = wait_for_idle(first_timeout, "start")
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    torch_threads = torch.get_num_threads()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        wanted = {w.strip() for w in args.shapes.split(",") if w.strip()}
        known = {f"{o}x{i}" for o, i in shapes}
        if not wanted <= known:
            print(
                f"--shapes: unknown {sorted(wanted - known)}; choose from {sorted(known)}",
                file=sys.stderr,
            )
            return 2
        shapes = tuple(sh for sh in shapes if f"{sh[0]}x{sh[1]}" in wanted)
    results = []
    with tempfile.TemporaryDirectory(prefix="sf-bench-pruning-") as tmp:
        for shape in shapes:
            results.append(bench_shape(shape, ref, args, Path(tmp)))
    torch.set_num_threads(torch_threads)

    tokens = QUICK_TOKENS if args.quick else TOKENS
    rate = hessian_rate_lines(results, tokens)
    sections = [
        main_table(results),
        "**Hessian, GEMM-equivalent GFLOP/s** (2 x tokens x in_features^2 / time; "
        "sparseforge and `add_batch`'s products are symmetric, sparseforge computes one "
        "triangle):\n\n" + "\n".join(f"- {line}" for line in rate) + "\n",
        scaling_table(results),
        checks_section(results),
        memory_table(results),
        machine_section(results),
        raw_section(results),
    ]
    ok = all(s.ok for s in results)
    ns = "; ".join(
        f"{s.label}: " + ", ".join(f"{g.op} {g.reps}" for g in s.groups) for s in results
    )
    meta = {
        "N": f"best of N per group, all cases of a group interleaved round-robin in one "
        f"process: {ns}. The Hessian and SparseGPT cases take seconds per call, so their N "
        f"is below the method's {harness.MIN_REPS} to keep the run near 25 minutes "
        "(`--hessian-reps`, `--sparsegpt-reps`); warm-up rounds per group in 'Runs and "
        "machine load'. The SparseGPT groups skip the warm-up round: the agreement check "
        "just ran both implementations on the same shape.",
        "Threads": f"sparseforge num_threads=1 and 2 per call; torch "
        f"`torch.set_num_threads(1 / 2)` before each call (MKL/OpenMP); {os.cpu_count()} "
        "logical CPUs",
        "torch": f"{torch.__version__}; ports from `tests_py/torch_reference.py`",
        "SIMD": f"{sf.simd_level()} (detected {sf.detected_simd_level()})",
        "Data": f"float32 W ~ N(0, 0.02); calibration X ~ N(0, 1) float32, {tokens} tokens "
        f"({tokens // SAMPLE} x {SAMPLE}); an independent seed per copy; LayerStats at its "
        "default precision (fp32 chunk products, float64 accumulation); SparseGPT block "
        f"{BLOCK}, percdamp {PERCDAMP}, fp32 sweep, sparsity {SPARSITY} or 2:4 along "
        "in_features",
        "Rotation": "the Hessian and Wanda inputs (X, W) are rotated through >= 4x LLC as "
        "bench_masks.py does. SparseGPT alternates 2 W copies and uses one H per shape: a "
        "call is seconds of O(in^3 + out x in^2) compute that first copies W and H into its "
        "own working arrays, so whether the inputs start in cache changes its time by far "
        "less than the run-to-run spread; rotating 4x LLC of H copies would cost GBs of "
        "memory for nothing measurable",
        "Idle wait": "skipped (--quick or --idle-timeout 0)"
        if math.isnan(busy)
        else f"{waited:.0f} s before the start ({busy:.2f} CPUs busy in the last window)",
        "Correctness": "Wanda identical to the torch port for every shape, pattern and "
        "thread count; SparseGPT agreement in 'Correctness and agreement'"
        if ok
        else "**MISMATCH, see Correctness and agreement**",
    }
    ws = "; ".join(f"{s.label}: " + "; ".join(s.working_set) for s in results)
    path = harness.write_report(
        args.out,
        "Calibration and pruning: sparseforge vs the PyTorch reference ports",
        sections,
        reps=min(g.reps for s in results for g in s.groups),
        working_set=ws,
        quick=args.quick,
        meta=meta,
        started=started,
        load_start=load_start,
    )
    print(sections[0])
    print(memory_table(results))
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
