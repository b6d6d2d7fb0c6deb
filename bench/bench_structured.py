"""Structured pruning on real models -> bench/results/structured.md.

Perplexity against the fraction of block parameters removed (10-50%) on stories260K
(TinyStories) and SmolLM2-135M (WikiText-2) for

* Minitron width, MLP neurons only (``sf.structured.width(hidden_dim=)``),
* Minitron width, hidden channels and MLP neurons together (``width(dim=, hidden_dim=)``,
  the Minitron-4B recipe: both shrink by about the same factor; heads kept),
* Minitron depth (``sf.structured.depth(n_layers=)``, blocks ranked by 1 - cos),
* SliceGPT (``sf.structured.slicegpt(dim=d')``, d' a multiple of 8),
* unstructured Wanda at the same fraction (``sf.models.prune(method="wanda")``: zeros, the
  shapes stay dense),

plus the dense forward time of every smaller model against the original, in one timed run.

"Block parameters" are the weights of the decoder blocks: the 7 linears and 2 norms per
block, plus SliceGPT's 2 shortcut matrices per block (``sf.structured.param_count(config,
blocks_only=True)``); embeddings, final norm and head are not counted (they are reported
separately). Each method gets the setting whose block-parameter count is closest to the
target; the table gives the fraction it actually removed.

Two phases, because perplexity runs are not timing runs:

    nice -n 10 python bench/bench_structured.py --phase quality      # prune + perplexity
    /tmp/helpers/benchrun.sh python bench/bench_structured.py --phase timing

``quality`` writes the pruned models (``sf.models.save``, uncompressed) and a JSON of the
results to ``--cache``; ``timing`` loads them, times ``forward`` on one window (best of
``--reps``, all models interleaved), writes the report and deletes the cached models
(``--keep-cache`` keeps them). ``--phase all`` (the default) does both in one process.
``--quick``: stories260K only, two fractions, few windows (checks that the script runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import sparseforge as sf
from sparseforge.models.gguf import find_smollm2

try:
    from bench import harness
except ImportError:  # run as a script: python bench/bench_structured.py
    import harness  # type: ignore[no-redef, import-not-found]

_TESTS = Path(__file__).resolve().parent.parent / "tests_py"
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))

import realdata  # noqa: E402  (needs the path above)

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
METHODS = ("width-mlp", "width-dim+mlp", "depth", "slicegpt", "wanda")
LABELS = {
    "width-mlp": "Minitron width (MLP)",
    "width-dim+mlp": "Minitron width (dim + MLP)",
    "depth": "Minitron depth",
    "slicegpt": "SliceGPT",
    "wanda": "Wanda (unstructured)",
}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    name: str
    eval_name: str
    calib_name: str
    model: sf.models.LlamaModel
    eval_ids: np.ndarray
    calib_ids: np.ndarray
    seqlen: int
    eval_windows: int
    nsamples: int


def _dense_copy(model: sf.models.LlamaModel) -> sf.models.LlamaModel:
    """The model over plain float32 arrays (loaded once), with the sparseforge backend."""
    names = list(model.config.weight_shapes())
    weights = {n: np.ascontiguousarray(model.weight(n), dtype=np.float32) for n in names}
    return sf.models.LlamaModel(
        model.config,
        weights,
        model.tokenizer,
        source=model.source,
        linear_backend="sparseforge",
    )


def setups(quick: bool, names: set[str] | None = None) -> list[Setup]:
    out = []
    if names is not None and "stories260K" not in names:
        return _smollm2(out, quick, names)
    return _smollm2(_stories(out, quick), quick, names)


def _stories(out: list[Setup], quick: bool) -> list[Setup]:
    path = realdata.stories260k_path()
    if path is None:
        raise SystemExit("stories260K not found (see tests_py/realdata.py)")
    m = _dense_copy(sf.models.load_llama2c(path))
    text = (DATA / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text("utf-8")
    assert m.tokenizer is not None
    ids = np.asarray(m.tokenizer.encode(text), dtype=np.int64)
    half = ids.size // 2  # calibration from the first half, evaluation on the second
    out.append(
        Setup(
            "stories260K",
            f"TinyStories excerpt, 2nd half ({ids.size - half} tokens)",
            "TinyStories excerpt, 1st half",
            m,
            ids[half:],
            ids[:half],
            256,
            8 if quick else 40,
            8 if quick else 32,
        )
    )
    return out


def _smollm2(out: list[Setup], quick: bool, names: set[str] | None = None) -> list[Setup]:
    if quick or (names is not None and "SmolLM2-135M" not in names):
        return out
    gguf = find_smollm2()
    if gguf is None:
        log("SmolLM2-135M not found: skipped")
        return out
    m = _dense_copy(sf.models.load(gguf))
    text = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8")
    assert m.tokenizer is not None
    ids = np.asarray(m.tokenizer.encode(text), dtype=np.int64)
    seqlen, windows = 256, 8
    start = 100_000  # calibration windows from the stream past the evaluated tokens
    out.append(
        Setup(
            "SmolLM2-135M",
            f"WikiText-2 test, first {windows} windows of {seqlen}",
            f"WikiText-2 test tokens {start}.. (disjoint from the evaluated ones)",
            m,
            ids,
            ids[start:],
            seqlen,
            windows,
            8,
        )
    )
    return out


# -- choosing each method's setting for a target fraction ----------------------------------


def block_params(config: sf.models.LlamaConfig) -> int:
    return sf.structured.param_count(config, blocks_only=True)


def width_mlp_target(c: sf.models.LlamaConfig, frac: float) -> dict[str, int]:
    target = (1 - frac) * block_params(c)
    best = min(
        range(1, c.hidden_dim + 1),
        key=lambda h: abs(block_params(dataclasses.replace(c, hidden_dim=h)) - target),
    )
    return {"hidden_dim": best}


def width_dim_mlp_target(c: sf.models.LlamaConfig, frac: float) -> dict[str, int]:
    """dim and hidden_dim shrunk by about the same factor, the count closest to the target."""
    target = (1 - frac) * block_params(c)
    best: tuple[float, int, int] | None = None
    for d in range(max(1, c.dim // 4), c.dim + 1):
        h = round(c.hidden_dim * d / c.dim)
        for hh in (h - 1, h, h + 1):
            if not 1 <= hh <= c.hidden_dim:
                continue
            cfg = dataclasses.replace(c, dim=d, hidden_dim=hh, head_dim=c.head_dim)
            err = abs(block_params(cfg) - target)
            if best is None or err < best[0]:
                best = (err, d, hh)
    assert best is not None
    return {"dim": best[1], "hidden_dim": best[2]}


def depth_target(c: sf.models.LlamaConfig, frac: float) -> dict[str, int]:
    return {"n_layers": max(1, c.n_layers - max(1, round(frac * c.n_layers)))}


def slicegpt_target(c: sf.models.LlamaConfig, frac: float) -> dict[str, int]:
    target = (1 - frac) * block_params(c)

    def count(d: int) -> int:
        r = [d] * (2 * c.n_layers + 1)
        r[-1] = c.dim
        cfg = dataclasses.replace(
            c, residual_dims=tuple(r), tied_embeddings=False, head_dim=c.head_dim
        )
        return block_params(cfg)

    best = min(range(8, c.dim + 1, 8), key=lambda d: abs(count(d) - target))
    return {"dim": best}


# -- quality phase -------------------------------------------------------------------------


def ppl(model: sf.models.LlamaModel, s: Setup) -> float:
    return float(
        sf.models.perplexity(model, s.eval_ids, seqlen=s.seqlen, max_windows=s.eval_windows).ppl
    )


def fresh(s: Setup) -> sf.models.LlamaModel:
    m = s.model
    return sf.models.LlamaModel(
        m.config, dict(m._weights), m.tokenizer, source=m.source, linear_backend="sparseforge"
    )


def quality(args: argparse.Namespace) -> dict[str, Any]:
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    fractions = (0.2, 0.4) if args.quick else FRACTIONS
    if args.fractions:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    names = set(args.models.split(",")) if args.models else None
    results: dict[str, Any] = {"models": [], "fractions": list(fractions)}
    t_start = time.perf_counter()
    for s in setups(args.quick, names):
        c = s.model.config
        calib_kw = {"nsamples": s.nsamples, "seqlen": s.seqlen, "seed": 0}
        entry: dict[str, Any] = {
            "name": s.name,
            "eval": s.eval_name,
            "calib": s.calib_name,
            "seqlen": s.seqlen,
            "eval_windows": s.eval_windows,
            "eval_tokens": s.eval_windows * (s.seqlen - 1),
            "calib_tokens": s.nsamples * s.seqlen,
            "config": dataclasses.asdict(c),
            "block_params": block_params(c),
            "all_params": sf.structured.param_count(c),
            "rows": [],
        }
        t0 = time.perf_counter()
        entry["dense_ppl"] = ppl(s.model, s)
        log(f"{s.name}: dense ppl {entry['dense_ppl']:.3f} ({time.perf_counter() - t0:.0f} s)")
        base_path = cache / f"{s.name}-dense.sfm"
        sf.models.save(s.model, base_path, compress=False, tokenizer=False)
        entry["dense_file"] = str(base_path)
        t0 = time.perf_counter()
        imp = sf.structured.importance(s.model, s.calib_ids, **calib_kw)
        entry["importance_seconds"] = time.perf_counter() - t0
        entry["layer_scores"] = [float(x) for x in imp.layers]
        log(f"{s.name}: importance {entry['importance_seconds']:.0f} s")
        for frac in fractions:
            for method in METHODS:
                t0 = time.perf_counter()
                if method == "width-mlp":
                    kw = width_mlp_target(c, frac)
                    pruned = sf.structured.width(s.model, imp, **kw)
                elif method == "width-dim+mlp":
                    kw = width_dim_mlp_target(c, frac)
                    pruned = sf.structured.width(s.model, imp, **kw)
                elif method == "depth":
                    kw = depth_target(c, frac)
                    pruned = sf.structured.depth(s.model, imp, **kw)
                elif method == "slicegpt":
                    kw = slicegpt_target(c, frac)
                    pruned = sf.structured.slicegpt(s.model, s.calib_ids, **kw, **calib_kw)
                else:
                    kw = {"sparsity": frac}
                    pruned = fresh(s)
                    sf.models.prune(
                        pruned,
                        s.calib_ids,
                        method="wanda",
                        sparsity=frac,
                        error=False,
                        progress=False,
                        **calib_kw,
                    )
                seconds = time.perf_counter() - t0
                pc = pruned.config
                if method == "wanda":
                    zeros = sum(
                        int(np.count_nonzero(np.asarray(pruned.weight(n)) == 0))
                        for i in range(pc.n_layers)
                        for n in pruned.linear_names(i)
                    )
                    kept_blocks = entry["block_params"] - zeros
                    kept_all = entry["all_params"] - zeros
                else:
                    kept_blocks = block_params(pc)
                    kept_all = sf.structured.param_count(pc)
                p = ppl(pruned, s)
                row = {
                    "target": frac,
                    "method": method,
                    "setting": kw,
                    "removed_blocks": 1 - kept_blocks / entry["block_params"],
                    "removed_all": 1 - kept_all / entry["all_params"],
                    "ppl": p,
                    "prune_seconds": seconds,
                    "file": None,
                }
                if method != "wanda":  # the same dense shapes as the original: nothing to time
                    path = cache / f"{s.name}-{method}-{round(frac * 100)}.sfm"
                    sf.models.save(pruned, path, compress=False, tokenizer=False)
                    row["file"] = str(path)
                entry["rows"].append(row)
                log(
                    f"{s.name} {frac:.0%} {method} {kw}: removed {row['removed_blocks']:.3f} "
                    f"of block params, ppl {p:.3f} (prune {seconds:.1f} s, total "
                    f"{time.perf_counter() - t_start:.0f} s)"
                )
                del pruned
        results["models"].append(entry)
        (cache / "results.json").write_text(json.dumps(results, indent=1))
    results["quality_seconds"] = time.perf_counter() - t_start
    results["quality_command"] = harness.command_line()
    results["quality_date"] = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    (cache / "results.json").write_text(json.dumps(results, indent=1))
    return results


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Results of two quality runs: rows of the same model are combined (b's win on the same
    target and method), models only in b are appended."""
    out = json.loads(json.dumps(a))
    by_name = {e["name"]: e for e in out["models"]}
    for e in b["models"]:
        if e["name"] not in by_name:
            out["models"].append(e)
            continue
        mine = by_name[e["name"]]
        keys = {(r["target"], r["method"]) for r in e["rows"]}
        mine["rows"] = [r for r in mine["rows"] if (r["target"], r["method"]) not in keys]
        mine["rows"] = sorted(
            mine["rows"] + e["rows"], key=lambda r: (r["target"], METHODS.index(r["method"]))
        )
    cmd = [x for x in (a.get("quality_command"), b.get("quality_command")) if x]
    out["quality_command"] = "` and `".join(cmd)
    out["quality_seconds"] = a.get("quality_seconds", 0) + b.get("quality_seconds", 0)
    return out


# -- timing phase --------------------------------------------------------------------------


def timing(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    timings: dict[str, Any] = {}
    for entry in results["models"]:
        T = 128
        models = {"dense": sf.models.load(entry["dense_file"], linear_backend="sparseforge")}
        for row in entry["rows"]:
            if row["file"]:
                key = f"{row['method']}-{round(row['target'] * 100)}"
                models[key] = sf.models.load(row["file"], linear_backend="sparseforge")
        rng = np.random.default_rng(0)
        ids = rng.integers(0, entry["config"]["vocab_size"], size=T)
        reps = args.reps if entry["config"]["dim"] < 256 else max(3, args.reps // 3)
        cases = {k: (lambda _c, m=m, x=ids: m.forward(x)) for k, m in models.items()}
        log(f"{entry['name']}: timing {len(cases)} models, forward of {T} tokens, best of {reps}")
        t = harness.run_interleaved(cases, copies=1, reps=reps, progress=False)
        timings[entry["name"]] = {
            "tokens": T,
            "reps": reps,
            "best": {k: v.best for k, v in t.items()},
            "median": {k: v.median for k, v in t.items()},
        }
    return timings


# -- report --------------------------------------------------------------------------------


def report(
    args: argparse.Namespace,
    results: dict[str, Any],
    timings: dict[str, Any],
    started: datetime.datetime,
    load_start: tuple[float, float, float],
) -> Path:
    sections = []
    for entry in results["models"]:
        c = entry["config"]
        tm = timings.get(entry["name"])
        head = (
            f"## {entry['name']}\n\n"
            f"dim {c['dim']}, hidden {c['hidden_dim']}, {c['n_layers']} blocks, heads "
            f"{c['n_heads']}/{c['n_kv_heads']}, vocab {c['vocab_size']}; "
            f"{entry['block_params']:,} block parameters of {entry['all_params']:,}. "
            f"Evaluation: {entry['eval']}, {entry['eval_tokens']} tokens scored "
            f"({entry['eval_windows']} windows of {entry['seqlen']}). Calibration: "
            f"{entry['calib']}, {entry['calib_tokens'] // entry['seqlen']} windows of "
            f"{entry['seqlen']} ({entry['calib_tokens']} tokens). **Dense perplexity "
            f"{entry['dense_ppl']:.3f}.** Block scores (1 - cos, larger = kept first): "
            + ", ".join(f"{x:.3g}" for x in entry["layer_scores"])
            + ".\n"
        )
        by_target: dict[float, dict[str, Any]] = {}
        for row in entry["rows"]:
            by_target.setdefault(row["target"], {})[row["method"]] = row
        headers = ["target removed"] + [LABELS[m] for m in METHODS]
        rows = []
        for frac in sorted(by_target):
            cells = [f"{frac:.0%}"]
            for m in METHODS:
                r = by_target[frac].get(m)
                cells.append("–" if r is None else f"{r['ppl']:.2f} ({r['removed_blocks']:.1%})")
            rows.append(cells)
        table = (
            "Perplexity (fraction of block parameters actually removed):\n\n"
            + harness.md_table(headers, rows)
        )
        srows = []
        for row in entry["rows"]:
            key = f"{row['method']}-{round(row['target'] * 100)}"
            speed = "same shapes as dense"
            if tm is not None and key in tm["best"]:
                speed = harness.fmt_ratio(tm["best"]["dense"] / tm["best"][key])
            srows.append(
                (
                    f"{row['target']:.0%}",
                    LABELS[row["method"]],
                    ", ".join(f"{k}={v}" for k, v in row["setting"].items()),
                    f"{row['removed_blocks']:.1%}",
                    f"{row['removed_all']:.1%}",
                    f"{row['ppl']:.3f}",
                    f"{row['prune_seconds']:.1f}",
                    speed,
                )
            )
        detail = (
            "Every setting (removed: of block parameters / of all parameters incl. "
            "embeddings and head; Wanda's removed parameters are zeros in dense shapes; "
            "speedup: dense forward time of the original / of the pruned model):\n\n"
            + harness.md_table(
                (
                    "target",
                    "method",
                    "setting",
                    "removed (blocks)",
                    "removed (all)",
                    "ppl",
                    "prune s",
                    "forward speedup",
                ),
                srows,
            )
        )
        timing_note = ""
        if tm is not None:
            timing_note = (
                f"Forward timing: `forward` of {tm['tokens']} tokens, best of {tm['reps']}, "
                "all models interleaved round-robin in one process (sparseforge linear "
                f"backend, default threads); dense {harness.fmt_ms(tm['best']['dense'])} ms.\n"
            )
        sections.append(head + "\n" + table + "\n" + detail + "\n" + timing_note)
    reps = min((t["reps"] for t in timings.values()), default=0)
    meta = {
        "Timing phase": "Date, Command, N and load above are the timing run",
        "Quality phase": f"`{results.get('quality_command', '?')}` at "
        f"{results.get('quality_date', '?')}, {results.get('quality_seconds', 0):.0f} s "
        "(niced, not a timing run)",
        "Methods": "; ".join(f"{LABELS[m]}" for m in METHODS),
    }
    return harness.write_report(
        args.out,
        "Structured pruning: perplexity vs parameters removed, and forward speed",
        sections,
        reps=max(reps, 1),
        working_set="one window per forward (timing: models resident, inputs cached)",
        quick=args.quick,
        meta=meta,
        started=started,
        load_start=load_start,
    )


def main(argv: list[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--phase", choices=("all", "quality", "timing"), default="all")
        p.add_argument(
            "--cache",
            type=Path,
            default=Path("/tmp/sparseforge-bench-structured"),
            help="pruned models and results.json between the phases (default: %(default)s)",
        )
        p.add_argument("--keep-cache", action="store_true")
        p.add_argument("--models", help="comma-separated subset: stories260K,SmolLM2-135M")
        p.add_argument("--fractions", help="comma-separated targets (default 0.1,...,0.5)")
        p.add_argument(
            "--merge",
            type=Path,
            nargs="*",
            default=[],
            help="further results.json files (other quality runs) to merge before timing",
        )

    args = harness.parse_args(__doc__, "structured.md", argv, extra)
    if args.phase in ("all", "quality"):
        results = quality(args)
    else:
        results = json.loads((args.cache / "results.json").read_text())
        for extra_path in args.merge:
            results = merge(results, json.loads(extra_path.read_text()))
    if args.phase == "quality":
        log(f"quality phase done: {args.cache / 'results.json'}")
        return
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    timings = timing(args, results)
    path = report(args, results, timings, started, load_start)
    log(f"wrote {path}")
    if not args.keep_cache:
        for entry in results["models"]:
            for f in [entry["dense_file"]] + [r["file"] for r in entry["rows"] if r["file"]]:
                if f and os.path.exists(f):
                    os.remove(f)
        shutil.rmtree(args.cache / "unused", ignore_errors=True)


if __name__ == "__main__":
    main()
