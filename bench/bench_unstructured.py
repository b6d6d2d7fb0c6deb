"""Bitmap and CSR GEMV vs our dense GEMV -> bench/results/kernels_unstructured.md.

For W (out x in) = 4096x4096, 11008x4096 and 4096x11008, weight sparsity 0.5, 0.7 and 0.9
(a uniformly random mask), float32 and bfloat16, timed interleaved in one run:

* our dense GEMV of the same dtype, ``sf.kernels.gemv(W, x)``: the baseline of every ratio;
* ``BitmapTensor`` GEMV (bitmap + packed values) and ``CSRTensor`` GEMV (int32 indices),
  through ``sf.kernels.gemv`` like a user would call them;
* scipy.sparse ``csr_array @ x`` (float32 values, int32 indices, single-threaded; scipy has
  no bfloat16, so the bf16 rows compare against the same weights as float32 CSR).

Every sparseforge case runs at num_threads=1 and 2; scipy at 1. Beside each ratio the byte
model's ideal: dense bytes / format bytes, with bitmap = (1 - s) N K b + N K / 8 and CSR =
(1 - s) N K (b + 4) + 8 N (s measured from the actual mask). Targets (issue 5): bitmap bf16
>= 1.3x dense at 50 % and >= 2x at 70 %; bitmap >= 3x scipy CSR at 50 %; research goal
bitmap fp32 >= 1.4x at 50 %. CSR is reported without a target (gather-bound).

Before timing, every kernel's output on copy 0 is checked against a float64 numpy product
(max error / max |y| <= 1e-5) and 1 vs 2 threads bitwise.

Run from the repository root: ``python bench/bench_unstructured.py`` (``--quick`` for a
smoke run; ``--dtypes``, ``--sparsities`` and ``--shapes`` restrict the grid).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

import sparseforge as sf
from sparseforge._unstructured import BitmapTensor, CSRTensor

try:
    from bench import harness
except ImportError:  # run as a script: python bench/bench_unstructured.py
    import harness  # type: ignore[no-redef, import-not-found]

try:
    from sparseforge import kernels as sf_kernels

    DENSE_BASELINE = "`sf.kernels.gemv(W, x)` (our dense GEMV, same dtype)"
except ImportError:  # pragma: no cover - only before sparseforge.kernels existed
    sf_kernels = None
    DENSE_BASELINE = "**TEMPORARY stand-in: numpy `W.astype(float32) @ x`** (sf.kernels missing)"

try:
    import scipy.sparse as scipy_sparse
except ImportError:  # pragma: no cover - scipy is an optional extra
    scipy_sparse = None

SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))
QUICK_SHAPES = ((256, 1024), (688, 1024), (256, 2752))
SPARSITIES = (0.5, 0.7, 0.9)
DTYPES = {"fp32": np.dtype(np.float32), "bf16": np.dtype(ml_dtypes.bfloat16)}
THREADS = (1, 2)
TARGETS = {  # (dtype, sparsity) -> bitmap speedup vs dense at the same thread count
    ("bf16", 0.5): 1.3,
    ("bf16", 0.7): 2.0,
    ("fp32", 0.5): 1.4,  # research goal
}
TARGET_VS_SCIPY = 3.0  # bitmap vs scipy CSR at 50 %, same (1) thread


def dense_gemv(W: np.ndarray, x: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    if sf_kernels is not None:
        return sf_kernels.gemv(W, x, out=out, num_threads=threads)  # type: ignore[no-any-return]
    return W.astype(np.float32) @ x  # pragma: no cover - the temporary stand-in


def sparse_gemv(A: Any, x: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    if sf_kernels is not None:
        return sf_kernels.gemv(A, x, out=out, num_threads=threads)  # type: ignore[no-any-return]
    return A._sf_gemv(x, out, threads)  # type: ignore[no-any-return]  # pragma: no cover


def make_weight(rows: int, cols: int, dtype: np.dtype, seed: int) -> np.ndarray:
    W = np.random.default_rng(seed).standard_normal((rows, cols), dtype=np.float32)
    W *= np.float32(0.02)
    return W.astype(dtype) if dtype != np.float32 else W


def sparsify(W: np.ndarray, sparsity: float, seed: int) -> np.ndarray:
    """A copy with a uniformly random fraction `sparsity` of the weights set to +0."""
    keep = np.random.default_rng(seed + 10_000).random(W.shape, dtype=np.float32) >= sparsity
    return np.where(keep, W, W.dtype.type(0))


def format_bytes(kind: str, rows: int, cols: int, nnz: int, b: int) -> int:
    """The byte model (what one GEMV must read from memory)."""
    if kind == "dense":
        return rows * cols * b
    if kind == "bitmap":
        return nnz * b + rows * cols // 8
    return nnz * (b + 4) + 8 * rows  # CSR (also scipy: float32 + int32)


@dataclass
class Group:
    """One (shape, dtype, sparsity): its timings and checks."""

    rows: int
    cols: int
    dtype: str
    sparsity: float
    density: float = 0.0
    copies: dict[str, int] = field(default_factory=dict)
    timings: dict[str, harness.Timing] = field(default_factory=dict)
    checks: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.cols}"

    def best(self, name: str) -> float:
        return self.timings[name].best


def check(name: str, fn: Callable[[int], np.ndarray], want: np.ndarray) -> tuple[str, str]:
    """fn(threads) -> y; compares with the float64 product, and 1T vs 2T bitwise."""
    ys = [np.array(fn(t), dtype=np.float32) for t in THREADS]
    err = float(np.abs(ys[0] - want).max() / max(float(np.abs(want).max()), 1e-30))
    scipy = name.startswith("scipy")
    same = ys[0].tobytes() == ys[1].tobytes()
    ok = err <= 1e-5 and (same or scipy) and not np.isnan(ys[0]).any()
    text = f"max err / max|y| = {err:.1e}" + ("" if scipy else f"; 1T == 2T bitwise: {same}")
    return name, ("ok: " if ok else "**FAIL**: ") + text


def bench_group(
    rows: int,
    cols: int,
    dname: str,
    sparsity: float,
    dense: list[np.ndarray],
    reps: int,
    quick: bool,
) -> Group:
    dtype = DTYPES[dname]
    g = Group(rows, cols, dname, sparsity)
    b = dtype.itemsize
    print(f"{g.label} {dname} s={sparsity}: building formats", file=sys.stderr)
    sparse_dense = [sparsify(W, sparsity, i) for i, W in enumerate(dense[:1])]
    nnz0 = int(np.count_nonzero(sparse_dense[0].astype(np.float32)))
    g.density = nnz0 / (rows * cols)
    n_bitmap = 2 if quick else harness.copies_for(format_bytes("bitmap", rows, cols, nnz0, b))
    n_csr = 2 if quick else harness.copies_for(format_bytes("csr", rows, cols, nnz0, b))
    bitmaps, csrs, scipys = [], [], []
    for i in range(max(n_bitmap, n_csr)):
        Ws = sparse_dense[0] if i == 0 else sparsify(dense[i % len(dense)], sparsity, i)
        if i < n_bitmap:
            bitmaps.append(BitmapTensor.from_dense(Ws))
        if i < n_csr:
            csr = CSRTensor.from_dense(Ws)
            csrs.append(csr)
            if scipy_sparse is not None:
                scipys.append(
                    scipy_sparse.csr_array(
                        (
                            csr.values.astype(np.float32),
                            csr.indices.copy(),
                            csr.indptr.astype(np.int32),
                        ),
                        shape=(rows, cols),
                    )
                )
        del Ws
    g.copies = {"dense": len(dense), "bitmap": n_bitmap, "csr": n_csr}
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal(cols).astype(np.float32) for _ in range(4)]
    out = np.zeros(rows, dtype=np.float32)

    # Correctness on copy 0 before timing.
    want = sparse_dense[0].astype(np.float32).astype(np.float64) @ xs[0].astype(np.float64)
    want_dense = dense[0].astype(np.float32).astype(np.float64) @ xs[0].astype(np.float64)

    def fresh() -> np.ndarray:
        return np.full(rows, np.nan, dtype=np.float32)

    g.checks.append(check("dense", lambda t: dense_gemv(dense[0], xs[0], fresh(), t), want_dense))
    g.checks.append(check("bitmap", lambda t: sparse_gemv(bitmaps[0], xs[0], fresh(), t), want))
    g.checks.append(check("csr", lambda t: sparse_gemv(csrs[0], xs[0], fresh(), t), want))
    if scipys:
        g.checks.append(check("scipy", lambda t: scipys[0] @ xs[0], want))
    del sparse_dense

    cases: dict[str, Callable[[int], Any]] = {}
    for t in THREADS:
        cases[f"dense {t}T"] = lambda c, t=t: dense_gemv(dense[c % len(dense)], xs[c % 4], out, t)
        cases[f"bitmap {t}T"] = lambda c, t=t: sparse_gemv(bitmaps[c % n_bitmap], xs[c % 4], out, t)
        cases[f"csr {t}T"] = lambda c, t=t: sparse_gemv(csrs[c % n_csr], xs[c % 4], out, t)
    if scipys:
        cases["scipy 1T"] = lambda c: scipys[c % len(scipys)] @ xs[c % 4]
    copies = max(len(dense), n_bitmap, n_csr)
    print(
        f"{g.label} {dname} s={sparsity}: timing {len(cases)} cases, best of {reps}",
        file=sys.stderr,
    )
    g.timings = harness.run_interleaved(cases, copies, reps, progress=False)
    return g


def speedup_table(groups: list[Group]) -> str:
    r = harness.fmt_ratio
    rows = []
    for g in groups:
        b = DTYPES[g.dtype].itemsize
        nnz = round(g.density * g.rows * g.cols)
        dense_b = format_bytes("dense", g.rows, g.cols, nnz, b)
        ideal_bm = dense_b / format_bytes("bitmap", g.rows, g.cols, nnz, b)
        ideal_csr = dense_b / format_bytes("csr", g.rows, g.cols, nnz, b)
        for t in THREADS:
            d = g.best(f"dense {t}T")
            bm, csr = d / g.best(f"bitmap {t}T"), d / g.best(f"csr {t}T")
            target = TARGETS.get((g.dtype, g.sparsity))
            verdict = "—"
            if target is not None:
                verdict = f"{'pass' if bm >= target else '**FAIL**'} (>= {target:g}x)"
            rows.append(
                (
                    g.label,
                    g.dtype,
                    f"{g.sparsity:g}",
                    f"{t}",
                    harness.fmt_ms(d),
                    f"{r(bm)} (ideal {r(ideal_bm)}, {bm / ideal_bm:.0%})",
                    f"{r(csr)} (ideal {r(ideal_csr)}, {csr / ideal_csr:.0%})",
                    verdict,
                )
            )
    return (
        "## Speedup over our dense GEMV of the same dtype\n\n"
        f"Baseline: {DENSE_BASELINE}. Speedup = dense time / sparse time at the same thread "
        "count (best of N each, interleaved). In parentheses: the byte model's ideal (dense "
        "bytes / format bytes, at the measured density) and the fraction of it reached. "
        "Target: the issue's bitmap target for that dtype and sparsity at that thread count.\n\n"
        + harness.md_table(
            ("shape", "dtype", "sparsity", "threads", "dense ms", "bitmap", "CSR", "bitmap target"),
            rows,
        )
    )


def scipy_table(groups: list[Group]) -> str:
    if not any("scipy 1T" in g.timings for g in groups):
        return "## vs scipy.sparse\n\nscipy is not installed: skipped.\n"
    r = harness.fmt_ratio
    rows = []
    for g in groups:
        s = g.best("scipy 1T")
        target = "—"
        bm1 = s / g.best("bitmap 1T")
        if g.sparsity == 0.5:
            target = f"{'pass' if bm1 >= TARGET_VS_SCIPY else '**FAIL**'} (>= {TARGET_VS_SCIPY:g}x)"
        rows.append(
            (
                g.label,
                g.dtype,
                f"{g.sparsity:g}",
                harness.fmt_ms(s),
                r(bm1),
                r(s / g.best("bitmap 2T")),
                r(s / g.best("csr 1T")),
                r(s / g.best("csr 2T")),
                r(s / g.best("dense 1T")),
                target,
            )
        )
    return (
        "## vs scipy.sparse CSR (`csr_array @ x`, float32 values + int32 indices, 1 thread)\n\n"
        "Speedup = scipy time / sparseforge time. For bf16 the scipy matrix holds the same "
        "weights as float32 (scipy has no bfloat16). Target: bitmap at 1 thread >= "
        f"{TARGET_VS_SCIPY:g}x scipy at 50 %.\n\n"
        + harness.md_table(
            (
                "shape",
                "dtype",
                "sparsity",
                "scipy ms",
                "bitmap 1T",
                "bitmap 2T",
                "CSR 1T",
                "CSR 2T",
                "dense 1T",
                "target",
            ),
            rows,
        )
    )


def checks_section(groups: list[Group]) -> str:
    rows = [
        (g.label, g.dtype, f"{g.sparsity:g}", name, result)
        for g in groups
        for name, result in g.checks
    ]
    return (
        "## Correctness (copy 0, before timing)\n\n"
        "Against `W.astype(float64) @ x` of the same (pruned) weights.\n\n"
        + harness.md_table(("shape", "dtype", "sparsity", "kernel", "result"), rows)
    )


def raw_section(groups: list[Group]) -> str:
    parts = ["## All timings\n"]
    for g in groups:
        copies = ", ".join(f"{k} {v}" for k, v in g.copies.items())
        parts.append(
            f"### {g.label} {g.dtype} sparsity {g.sparsity:g} (density {g.density:.4f}; "
            f"copies: {copies})\n\n" + harness.timings_table(g.timings)
        )
    return "\n".join(parts)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32,bf16")
    p.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    p.add_argument("--shapes", default=None, help="e.g. 4096x4096,11008x4096")


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, "kernels_unstructured.md", argv, add_arguments)
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    shapes: tuple[tuple[int, int], ...] = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(","))  # type: ignore[misc]
    dnames = [d.strip() for d in args.dtypes.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    groups: list[Group] = []
    ws_notes = []
    for rows, cols in shapes:
        for dname in dnames:
            dtype = DTYPES[dname]
            nbytes = rows * cols * dtype.itemsize
            n_dense = 2 if args.quick else harness.copies_for(nbytes)
            print(f"{rows}x{cols} {dname}: {n_dense} dense copies", file=sys.stderr)
            dense = [make_weight(rows, cols, dtype, seed) for seed in range(n_dense)]
            ws_notes.append(f"{rows}x{cols} {dname}: dense {n_dense} x {harness.fmt_bytes(nbytes)}")
            for s in sparsities:
                groups.append(bench_group(rows, cols, dname, s, dense, args.reps, args.quick))
            del dense
    sections = [
        speedup_table(groups),
        scipy_table(groups),
        checks_section(groups),
        raw_section(groups),
    ]
    print(sections[0])
    print(sections[1])
    working = "; ".join(ws_notes) + (
        "; each format rotated through >= 4x LLC of its own copies (counts in 'All timings')"
        if not args.quick
        else "; --quick: 2 copies each (in cache)"
    )
    scipy_version = getattr(sys.modules.get("scipy"), "__version__", "missing")
    path = harness.write_report(
        args.out,
        "Unstructured sparse GEMV: bitmap and CSR vs dense",
        sections,
        reps=args.reps,
        working_set=working,
        quick=args.quick,
        meta={
            "Baselines": f"{DENSE_BASELINE}; scipy {scipy_version} CSR",
            "SIMD level": sf.simd_level(),
            "Weights": "N(0, 0.02), a uniformly random mask per copy; x ~ N(0, 1), 4 rotated",
        },
        started=started,
        load_start=load_start,
    )
    print(f"wrote {path}", file=sys.stderr)
    ok = all(result.startswith("ok") for g in groups for _, result in g.checks)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
