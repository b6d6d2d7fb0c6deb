"""The ``sparseforge`` command.

``sparseforge demo`` prunes a real model and prints perplexities (see
:mod:`sparseforge._model_cli`, which also holds ``prune`` and ``eval``).
``sparseforge demo-matrices`` runs the library's operations on generated weight matrices
and prints what each did: achieved sparsity, relative reconstruction error, time, and a
check of the result against a numpy reference. ``sparseforge info`` prints
:func:`sparseforge.build_info`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from . import _base, _export_cli, _model_cli, prune


class Progress:
    """Step counter on stderr with the elapsed time of each step (quiet when not a TTY
    unless forced)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, enabled: bool = True) -> None:
        self.total, self.done, self.stream, self.enabled = total, 0, stream, enabled

    def step(self, label: str) -> Callable[[], float]:
        self.done += 1
        if self.enabled:
            self.stream.write(f"[{self.done}/{self.total}] {label} ...")
            self.stream.flush()
        start = time.perf_counter()

        def finish() -> float:
            elapsed = time.perf_counter() - start
            if self.enabled:
                self.stream.write(f" {elapsed * 1e3:.0f} ms\n")
                self.stream.flush()
            return elapsed

        return finish


def _weights(rows: int, cols: int, dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    W: np.ndarray = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.02)
    if dtype == "float32":
        return W
    import ml_dtypes

    return _base.cast(W, np.float16 if dtype == "float16" else ml_dtypes.bfloat16)


def _rel_error(W: np.ndarray, Wp: np.ndarray) -> float:
    a = W.astype(np.float64)
    return float(np.linalg.norm(a - Wp.astype(np.float64)) / np.linalg.norm(a))


def _numpy_row_mask(W: np.ndarray, sparsity: float) -> np.ndarray:
    """Reference: stable argsort per row (ties: lower index pruned first)."""
    a = np.abs(W.astype(np.float32))
    k = int(W.shape[1] * sparsity)
    order = np.argsort(a, axis=1, kind="stable")[:, :k]
    keep = np.ones(W.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def _numpy_nm_mask(W: np.ndarray, n: int, m: int) -> np.ndarray:
    a = np.abs(W.astype(np.float32)).reshape(W.shape[0], -1, m)
    order = np.argsort(a, axis=2, kind="stable")[:, :, : m - n]
    keep = np.ones(a.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=2)
    return keep.reshape(W.shape)


SIZES = {"small": (1024, 1024), "medium": (4096, 4096), "large": (11008, 4096)}


def _numpy_layer_mask(W: np.ndarray, sparsity: float) -> np.ndarray:
    """Reference: stable argsort of the flattened matrix."""
    a = np.abs(W.astype(np.float32)).ravel()
    k = int(a.size * sparsity)
    keep = np.ones(a.size, dtype=bool)
    keep[np.argsort(a, kind="stable")[:k]] = False
    return keep.reshape(W.shape)


# (label, sparseforge call, numpy reference mask or None)
Step = tuple[str, Callable[[], prune.PruneResult], Callable[[], np.ndarray] | None]


def demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    rows, cols = SIZES[args.size]
    threads = args.threads
    steps: list[Step] = [
        (
            "magnitude 50% per row",
            lambda: prune.magnitude(W, 0.5, num_threads=threads),
            lambda: _numpy_row_mask(W, 0.5),
        ),
        (
            "magnitude 50% per layer",
            lambda: prune.magnitude(W, 0.5, scope="layer", num_threads=threads),
            lambda: _numpy_layer_mask(W, 0.5),
        ),
    ]

    def nm_step(p: prune.NMPattern) -> Step:
        return (
            f"magnitude {p}",
            lambda: prune.magnitude(W, pattern=p, num_threads=threads),
            lambda: _numpy_nm_mask(W, p.n, p.m),
        )

    steps += [nm_step(prune.parse_pattern(pat)) for pat in ("2:4", "4:8", "1:4")]
    steps.append(
        (
            "block 16x16, 50% of tiles",
            lambda: prune.block_magnitude(W, 0.5, 16, num_threads=threads),
            None,
        )
    )

    progress = Progress(len(steps) + 2, enabled=not args.quiet)  # + generation, global
    done = progress.step(f"generating {rows}x{cols} {args.dtype} weights")
    W = _weights(rows, cols, args.dtype, args.seed)
    W2 = _weights(rows // 2, cols, args.dtype, args.seed + 1)
    # One untimed full-size call: starts the thread pool and has the OS back the output
    # memory (a first touch of fresh pages can cost more than the pruning itself).
    prune.magnitude(W, pattern="2:4", num_threads=threads)
    done()

    table: list[tuple[Any, ...]] = []
    failed = False
    for label, run, reference in steps:
        done = progress.step(label)
        t0 = time.perf_counter()
        res = run()
        ours = time.perf_counter() - t0
        numpy_ms, speedup, check = "-", "-", "-"
        if reference is not None:
            t0 = time.perf_counter()
            ref = reference()
            theirs = time.perf_counter() - t0
            same = bool(np.array_equal(res.mask, ref))
            failed |= not same
            numpy_ms, speedup = f"{theirs * 1e3:.0f}", f"{theirs / ours:.1f}x"
            check = "equal" if same else "DIFFERS"
        pattern_ok = "-"
        if "pattern" in res.info:
            ok = prune.check_pattern(res.weight, res.info["pattern"]).ok
            failed |= not ok
            pattern_ok = "ok" if ok else "BROKEN"
        done()
        table.append(
            (
                label,
                f"{res.sparsity:.4f}",
                f"{_rel_error(W, res.weight):.4f}",
                f"{ours * 1e3:.1f}",
                numpy_ms,
                speedup,
                check,
                pattern_ok,
            )
        )

    done = progress.step("global magnitude 60% over two matrices")
    t0 = time.perf_counter()
    results = prune.magnitude_global([W, W2], 0.6, num_threads=threads)
    ours = time.perf_counter() - t0
    done()
    overall = (results[0].sparsity * W.size + results[1].sparsity * W2.size) / (W.size + W2.size)
    table.append(
        (
            "global 60% (2 matrices)",
            f"{overall:.4f}",
            f"{_rel_error(W, results[0].weight):.4f}",
            f"{ours * 1e3:.1f}",
            "-",
            "-",
            "-",
            "-",
        )
    )

    header = (
        "operation",
        "sparsity",
        "rel. error",
        "sf ms",
        "numpy ms",
        "speedup",
        "mask vs numpy",
        "N:M check",
    )
    info = _base.build_info()
    out.write(
        f"sparseforge {info['version']} demo-matrices: {rows}x{cols} {args.dtype}, "
        f"threads={threads or _base.default_num_threads()}, simd={info['simd_active']}\n\n"
    )
    _model_cli.print_table(header, table, out)
    out.write(
        "\nsf ms: sparseforge, mask and pruned copy, after one untimed warm-up call. numpy ms: a "
        "numpy stable-argsort reference (exact tie semantics), mask only.\n"
        "Single timings for a quick look; bench/ has the measurements.\n"
        "rel. error = ||W - W_pruned||_F / ||W||_F, over the first matrix for the global row.\n"
    )
    return 1 if failed else 0


def info_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    for key, value in _base.build_info().items():
        out.write(f"{key:18s} {value}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforge", description="Weight, activation and KV-cache sparsity for LLMs."
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sparseforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _model_cli.add_model_commands(sub)
    _export_cli.add_export_command(sub)
    d = sub.add_parser("demo-matrices", help="run the library's operations on generated matrices")
    d.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="medium",
        help="matrix size: small 1024x1024, medium 4096x4096, large 11008x4096",
    )
    d.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    d.add_argument("--threads", type=int, default=None, help="threads per call (default: all)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    d.set_defaults(func=demo)
    i = sub.add_parser("info", help="print how this copy was built and what it runs on")
    i.set_defaults(func=info_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print("sparseforge: --threads must be >= 1", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"sparseforge {args.command}: error: {e}", file=sys.stderr)
        return 2
