"""The decode step's kernels on SmolLM2-135M's shapes, against another build of sparseforge.

    python bench/bench_decode_kernels.py [--threads 1] [--rounds 15] [--runs 3] \\
        [--baseline PYTHON]   # e.g. a venv with main's build: its python runs the same cases

Cases: dense GEMV (fp32, bf16) on q/o (576x576), k/v (192x576), gate/up (1536x576), down
(576x1536) and the tied head (49152x576); TEAL column skip at 50 % active inputs on the
transposed weights, dense and as the bitmap of a 2:4 weight (the 2:4 + TEAL decode path).
Each matrix has 30 copies (the model's layers; 30 x 1536x576 fp32 = 106 MB > LLC) visited in
turn, so every call reads from DRAM; a case's time is the minimum per call over all copies
and rounds, the statistic that survives a shared machine (load printed). With --baseline,
this interpreter and the baseline's alternate `--runs` times (interleaved) and the table
gives both minima and their ratio. Prints a markdown table (bench/results/decode_kernels.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from typing import Any

import numpy as np

L = 30
SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "gate/up": (1536, 576), "down": (576, 1536)}


def _api() -> Any:
    import sparseforge as sf

    k = getattr(sf._core, "kernels", None)
    if isinstance(k, types.ModuleType):  # _core split into submodules
        return types.SimpleNamespace(
            gemv=k.gemv, skip=k.gemv_sparse_input, bitmap=sf._core.format.bitmap_from_dense
        )
    c = sf._core
    return types.SimpleNamespace(gemv=c.gemv, skip=c.gemv_sparse_input, bitmap=c.bitmap_from_dense)


def measure(threads: int, rounds: int) -> dict[str, tuple[float, int]]:
    """case -> (minimum seconds per call, bytes read per call)."""
    import ml_dtypes

    import sparseforge as sf

    api = _api()
    rng = np.random.default_rng(0)
    pc = time.perf_counter
    out: dict[str, tuple[float, int]] = {}

    def best(calls: list[Any]) -> float:
        b = float("inf")
        for _ in range(rounds):
            for f in calls:
                t0 = pc()
                f()
                b = min(b, pc() - t0)
        return b

    for dtn, dt in (("fp32", np.float32), ("bf16", ml_dtypes.bfloat16)):
        for nm, (o, i) in SHAPES.items():
            Ws = [rng.standard_normal((o, i)).astype(dt) for _ in range(L)]
            x = rng.standard_normal(i).astype(np.float32)
            y = np.empty(o, np.float32)
            t = best([lambda W=W, x=x, y=y: api.gemv(W, x, y, threads) for W in Ws])
            out[f"GEMV {dtn} {nm} {o}x{i}"] = (t, Ws[0].nbytes)
        W = rng.standard_normal((49152, 576)).astype(dt)
        x = rng.standard_normal(576).astype(np.float32)
        y = np.empty(49152, np.float32)
        t = best([lambda W=W, x=x, y=y: api.gemv(W, x, y, threads)])
        out[f"GEMV {dtn} head 49152x576"] = (t, W.nbytes)
        for nm, (o, i) in SHAPES.items():
            Wd = rng.standard_normal((o, i)).astype(np.float32)
            w24 = np.asarray(
                sf.format.NMTensor.from_dense(Wd.astype(dt), 2, 4, prune="magnitude").to_dense()
            )
            bms = [api.bitmap(np.ascontiguousarray(w24.T)) for _ in range(L)]
            dts = [np.ascontiguousarray(Wd.T.astype(dt)) for _ in range(L)]
            x = rng.standard_normal(i).astype(np.float32)
            th = float(np.median(np.abs(x)))  # half the inputs active
            y = np.empty(o, np.float32)
            t = best([lambda W=W, x=x, th=th, y=y: api.skip(W, x, th, y, threads) for W in dts])
            out[f"column skip {dtn} {nm} dense Wt"] = (t, dts[0].nbytes // 2)
            t = best(
                [lambda b=b, x=x, th=th, y=y: b.gemv_sparse_input(x, th, y, threads) for b in bms]
            )
            out[f"column skip {dtn} {nm} 2:4 bitmap Wt"] = (t, bms[0].nbytes // 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--runs", type=int, default=3, help="alternations with --baseline")
    p.add_argument("--baseline", default=None, help="python of another sparseforge build")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode
    a = p.parse_args()
    if a.json:
        print(json.dumps(measure(a.threads, a.rounds)))
        return
    me = [sys.executable, __file__, "--json", "--threads", str(a.threads)]
    me += ["--rounds", str(a.rounds)]
    cmds = {"this": me}
    if a.baseline:
        cmds["baseline"] = [a.baseline, *me[1:]]
    res: dict[str, dict[str, tuple[float, int]]] = {k: {} for k in cmds}
    loads = []
    for _ in range(a.runs if a.baseline else 1):
        for k, cmd in cmds.items():
            run = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            loads.append(os.getloadavg()[0])
            for case, (t, nb) in run.items():
                old = res[k].get(case)
                res[k][case] = (min(t, old[0]) if old else t, nb)
    print(
        f"threads {a.threads}, {a.rounds} rounds x {L} copies, "
        f"{a.runs if a.baseline else 1} run(s) each; load avg {min(loads):.1f}-{max(loads):.1f}\n"
    )
    head = "| case | MB read | this: us | GB/s |"
    if a.baseline:
        head += " baseline: us | GB/s | speedup |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case, (t, nb) in res["this"].items():
        row = f"| {case} | {nb / 1e6:.2f} | {t * 1e6:.1f} | {nb / t / 1e9:.1f} |"
        if a.baseline:
            tb = res["baseline"][case][0]
            row += f" {tb * 1e6:.1f} | {nb / tb / 1e9:.1f} | {tb / t:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
