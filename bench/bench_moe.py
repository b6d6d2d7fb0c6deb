"""MoE routing (``sparseforge.moe``) against a straightforward numpy implementation, in one
process, interleaved, best-of-N.

Sections:

* ``route``: top-2 softmax routing of T = 4096 tokens over E = 64 experts (softmax, top-k,
  renormalise) vs numpy (``exp`` / ``argpartition`` + ``argsort`` / ``take_along_axis``).
* ``dispatch``: gather each expert's tokens (T = 4096, k = 2, E = 8, D = 1024, fp32) vs numpy
  fancy indexing ``x[token_of]``; combine (weighted scatter-add) vs ``np.add.at`` (what HF's
  ``index_add_`` loop does).
* ``ffn``: the SwiGLU MoE FFN (E = 8, k = 2, D = 1024, H = 2816 fp32, Mixtral's shape / 4)
  at T = 8 and 256 tokens, routing included, vs the HF-style numpy loop over experts
  (``nonzero`` -> gather -> three matmuls through OpenBLAS -> weighted add).

sparseforge at 1 and 2 threads; numpy uses OpenBLAS's own threads (``OPENBLAS_NUM_THREADS``
as set in the environment). Inputs rotate through ``harness.copies_for`` copies (>= 4x the
LLC) except with ``--quick``. Run from the repository root: ``python bench/bench_moe.py``.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import numpy as np

import sparseforge as sf

try:
    from bench import harness
except ImportError:  # run as a script: python bench/bench_moe.py
    import harness  # type: ignore[no-redef, import-not-found]

moe = sf.moe


def np_route(lg: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.exp(lg - lg.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    part = np.argpartition(-p, k - 1, axis=1)[:, :k]
    pv = np.take_along_axis(p, part, axis=1)
    order = np.argsort(-pv, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    w = np.take_along_axis(pv, order, axis=1)
    return ids, w / w.sum(axis=1, keepdims=True)


def np_moe_ffn(x: np.ndarray, lg: np.ndarray, ex: tuple[np.ndarray, ...], k: int) -> np.ndarray:
    g, u, d = ex
    ids, w = np_route(lg, k)
    y = np.zeros_like(x)
    for e in range(g.shape[0]):
        tok, slot = np.nonzero(ids == e)
        if tok.size == 0:
            continue
        xe = x[tok]
        a = xe @ g[e].T
        h = a / (1.0 + np.exp(-a)) * (xe @ u[e].T)
        y[tok] += w[tok, slot, None].astype(np.float32) * (h @ d[e].T)
    return y


def section_route(args: Any, threads: list[int]) -> str:
    T, E, k = (512, 16, 2) if args.quick else (4096, 64, 2)
    rng = np.random.default_rng(0)
    copies = 2 if args.quick else harness.copies_for(T * E * 4)
    lgs = [rng.standard_normal((T, E)).astype(np.float32) for _ in range(copies)]
    router = moe.Router(top_k=k)
    cases: dict[str, Any] = {"numpy": lambda c: np_route(lgs[c], k)}
    for t in threads:
        cases[f"sf {t}T"] = lambda c, t=t: router.route(lgs[c], num_threads=t)
    tm = harness.run_interleaved(cases, copies, args.reps)
    base = tm["numpy"].best
    rows = [[n, harness.fmt_ms(v.best), harness.fmt_ratio(base / v.best)] for n, v in tm.items()]
    return f"### route: T={T}, E={E}, top-{k} softmax, renormalised\n\n" + harness.md_table(
        ["case", "best", "speedup vs numpy"], rows
    )


def section_dispatch(args: Any, threads: list[int]) -> str:
    T, E, k, D = (256, 8, 2, 128) if args.quick else (4096, 8, 2, 1024)
    rng = np.random.default_rng(1)
    copies = 2 if args.quick else harness.copies_for(T * D * 4 * (1 + k))
    xs = [rng.standard_normal((T, D)).astype(np.float32) for _ in range(copies)]
    r = moe.route(rng.standard_normal((T, E)).astype(np.float32), top_k=k)
    n = r.token_of.shape[0]
    outs = [rng.standard_normal((n, D)).astype(np.float32) for _ in range(copies)]
    kept = r.row_of >= 0
    tok_idx = np.nonzero(kept)[0]
    rows = r.row_of[kept]
    wk = r.weights[kept][:, None]

    def np_combine(c: int) -> np.ndarray:
        y = np.zeros((T, D), np.float32)
        np.add.at(y, tok_idx, wk * outs[c][rows])
        return y

    gather: dict[str, Any] = {"numpy x[token_of]": lambda c: xs[c][r.token_of]}
    comb: dict[str, Any] = {"numpy np.add.at": np_combine}
    for t in threads:
        gather[f"sf dispatch {t}T"] = lambda c, t=t: moe.dispatch(xs[c], r, num_threads=t)
        comb[f"sf combine {t}T"] = lambda c, t=t: moe.combine(outs[c], r, num_threads=t)
    out = []
    for title, cases in (("dispatch (gather)", gather), ("combine (scatter-add)", comb)):
        tm = harness.run_interleaved(cases, copies, args.reps)
        base = next(iter(tm.values())).best
        tab = [
            [nm, harness.fmt_ms(v.best), harness.fmt_ratio(base / v.best)] for nm, v in tm.items()
        ]
        out.append(
            f"### {title}: T={T}, k={k}, E={E}, D={D}, fp32\n\n"
            + harness.md_table(["case", "best", "speedup vs numpy"], tab)
        )
    return "\n\n".join(out)


def section_ffn(args: Any, threads: list[int]) -> str:
    E, k, D, H = (4, 2, 64, 128) if args.quick else (8, 2, 1024, 2816)
    rng = np.random.default_rng(2)
    wbytes = 3 * E * H * D * 4
    copies = 1 if args.quick else max(1, harness.copies_for(wbytes) // 2)
    exs = [
        tuple(
            (rng.standard_normal(s) * 0.02).astype(np.float32)
            for s in ((E, H, D), (E, H, D), (E, D, H))
        )
        for _ in range(copies)
    ]
    out = []
    for T in (8, 256):
        x = rng.standard_normal((T, D)).astype(np.float32)
        lg = rng.standard_normal((T, E)).astype(np.float32)
        cases: dict[str, Any] = {"numpy loop": lambda c, x=x, lg=lg: np_moe_ffn(x, lg, exs[c], k)}
        for t in threads:
            cases[f"sf moe_ffn {t}T"] = lambda c, t=t, x=x, lg=lg: moe.moe_ffn(
                x, exs[c], logits=lg, num_threads=t
            )
        ref = np_moe_ffn(x, lg, exs[0], k)
        got = moe.moe_ffn(x, exs[0], logits=lg)
        err = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-30))
        tm = harness.run_interleaved(cases, copies, args.reps)
        base = tm["numpy loop"].best
        tab = [
            [nm, harness.fmt_ms(v.best), harness.fmt_ratio(base / v.best)] for nm, v in tm.items()
        ]
        out.append(
            f"### MoE SwiGLU FFN: T={T}, E={E}, k={k}, D={D}, H={H}, fp32 "
            f"(max rel. difference to numpy {err:.1e}; {copies} weight copies of "
            f"{harness.fmt_bytes(wbytes)})\n\n"
            + harness.md_table(["case", "best", "speedup vs numpy"], tab)
        )
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = harness.parse_args(__doc__, "moe.md", argv)
    started = datetime.datetime.now().astimezone()
    load = os.getloadavg()
    threads = [1, 2]
    sections = [
        section_route(args, threads),
        section_dispatch(args, threads),
        section_ffn(args, threads),
    ]
    print("\n\n".join(sections))
    harness.write_report(
        args.out,
        "MoE routing, dispatch/combine and FFN vs numpy",
        sections,
        reps=args.reps,
        working_set="inputs rotated through harness.copies_for copies (FFN: half that, weights)",
        quick=args.quick,
        meta={"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "unset")},
        started=started,
        load_start=load,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
