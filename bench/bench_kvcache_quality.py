"""Perplexity against KV budget per policy, through the model's decode loop (issue 7).

Every number comes from :class:`sparseforge.kv.PolicyCache` inside
``LlamaModel.step``: keys/values live in the paged cache, the policy evicts (or selects
pages, Quest) and the cache's bytes in use are read from its page pool after the last
token. Two protocols:

* **prefill + decode** (every policy): the first ``P`` tokens of a sequence run as one
  prefill chunk (exact causal attention; then the policy compresses the prompt to its
  budget: SnapKV / PyramidKV / AdaKV / KeyNorm / Random score it once, H2O takes the
  column sums, TOVA the last query's attention, the windows keep theirs, Quest and Full
  keep everything); every later token is fed alone and scored from the logits of the step
  before. Score-once policies (kvpress-style) then grow by one token per decode step;
  decode-time policies (window, StreamingLLM, H2O, TOVA) hold the budget at every step.
  The prefill forward does not depend on the policy, so it runs once per sequence
  (q/k/v of every block recorded) and is replayed into each policy's cache
  (``policy.prefill`` per block): identical to ``PolicyCache``'s own prefill path, which
  the script checks once on stories260K.
* **policy from the first token** (decode-time policies, stories260K only):
  ``PolicyCache(prefill="decode")``, every token fed alone, every token but the first
  scored.

Models: stories260K (llama2.c, TinyStories excerpt, max_seq_len 512) and SmolLM2-135M
(GGUF Q4_1 dequantised to float32, WikiText-2 test). Run from the repository root,
niced, not under the bench lock (it is not a timing run)::

    nice -n 10 python bench/bench_kvcache_quality.py            # both models, ~40 min
    python bench/bench_kvcache_quality.py --quick               # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import sparseforge as sf
import sparseforge.models as sm
from sparseforge.models import ops
from sparseforge.models.perplexity import token_stream

try:
    from bench import harness
except ImportError:  # run as a script: python bench/bench_kvcache_quality.py
    import harness  # type: ignore[no-redef, import-not-found]

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DECODE_TIME = ("sliding_window", "streaming_llm", "h2o", "tova", "quest")
ALL = (
    "sliding_window",
    "streaming_llm",
    "h2o",
    "tova",
    "snapkv",
    "pyramidkv",
    "adakv",
    "quest",
    "random",
    "key_norm",
)


class _Recorder:
    """A DecodeCache for one prefill chunk: exact causal attention, q/k/v kept per block."""

    def __init__(self) -> None:
        self.length = 0
        self.qkv: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def check_model(self, config: Any) -> None:
        return None

    def reserve(self, T: int) -> None:
        if self.length:
            raise ValueError("the recorder takes one chunk")

    def attend(
        self, block: int, q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, nt: int
    ) -> np.ndarray:
        self.qkv.append((q.copy(), k.copy(), v.copy()))
        out: np.ndarray = ops.attention(q, k, v, scale=scale, num_threads=nt or None)
        return out.reshape(q.shape[0], -1)

    def advance(self, T: int) -> None:
        self.length += T


@dataclass
class Prefill:
    ids: np.ndarray  # the whole sequence
    P: int  # prefill length
    rec: _Recorder
    last_logits: np.ndarray


def policy_options(name: str, budget: int, window: int) -> dict[str, Any]:
    if name in ("snapkv", "pyramidkv"):
        return {"window": window}
    if name == "adakv":
        return {"scorer": sf.kv.SnapKV(budget, window=window)}
    return {}


def make_cache(model: Any, name: str, budget: int | None, window: int, **kw: Any) -> Any:
    if name == "full":
        return sf.kv.PolicyCache(model, "full", **kw)
    assert budget is not None
    return sf.kv.PolicyCache(model, name, budget, **kw, **policy_options(name, budget, window))


def record_prefill(model: Any, ids: np.ndarray, P: int) -> Prefill:
    rec = _Recorder()
    logits = model.step(ids[:P], rec)[-1]
    return Prefill(ids, P, rec, logits)


def _nll(logits: np.ndarray, target: int) -> float:
    lg = logits.astype(np.float64)
    m = float(lg.max())
    return m + math.log(float(np.exp(lg - m).sum())) - float(lg[target])


def decode_from_prefill(model: Any, cache: Any, pre: Prefill) -> np.ndarray:
    """Replay the recorded prefill into ``cache`` under its policy, then decode the rest."""
    for layer, (q, k, v) in enumerate(pre.rec.qkv):
        cache.policy.prefill(cache.paged, layer, q, k, v)
    cache.length = pre.P
    ids = pre.ids
    out = np.empty(ids.size - pre.P)
    logits = pre.last_logits
    for i in range(pre.P, ids.size):
        out[i - pre.P] = _nll(logits, int(ids[i]))
        if i + 1 < ids.size:
            logits = model.step(ids[i : i + 1], cache)[-1]
    return out


@dataclass
class Row:
    model: str
    protocol: str
    policy: str
    budget: int | None
    nll_sum: float = 0.0
    scored: int = 0
    bytes_end: int = 0  # summed over sequences (mean reported)
    peak: int = 0
    tokens_end: float = 0.0  # mean tokens per (layer, kv head) at the end
    seqs: int = 0
    seconds: float = 0.0

    def add(self, nll: np.ndarray, cache: Any, seconds: float) -> None:
        self.nll_sum += float(nll.sum())
        self.scored += int(nll.size)
        self.bytes_end += cache.bytes_in_use
        self.peak = max(self.peak, cache.peak_bytes)
        self.tokens_end += float(cache.lengths().mean())
        self.seqs += 1
        self.seconds += seconds

    @property
    def ppl(self) -> float:
        return math.exp(self.nll_sum / self.scored)


def sequences(model: Any, text: str, seqlen: int, count: int) -> list[np.ndarray]:
    stream = token_stream(model, text)
    n = min(count, stream.size // seqlen)
    if n == 0:
        raise SystemExit(f"text too short: {stream.size} tokens < seqlen {seqlen}")
    return [stream[i * seqlen : (i + 1) * seqlen] for i in range(n)]


def run_prefill_protocol(
    model: Any,
    label: str,
    seqs: list[np.ndarray],
    P: int,
    budgets: list[int],
    policies: tuple[str, ...],
    window: int,
) -> list[Row]:
    rows = [Row(label, f"prefill {P} + decode", "full", None)]
    for b in budgets:
        rows += [Row(label, f"prefill {P} + decode", p, b) for p in policies]
    for si, ids in enumerate(seqs):
        pre = record_prefill(model, ids, P)
        for row in rows:
            t0 = time.perf_counter()
            cache = make_cache(model, row.policy, row.budget, window)
            nll = decode_from_prefill(model, cache, pre)
            row.add(nll, cache, time.perf_counter() - t0)
            print(
                f"{label} seq {si} {row.policy} B={row.budget}: ppl {math.exp(nll.mean()):.4f} "
                f"bytes {cache.bytes_in_use} ({time.perf_counter() - t0:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def run_streaming_protocol(
    model: Any, label: str, seqs: list[np.ndarray], budgets: list[int]
) -> list[Row]:
    rows = [Row(label, "from the first token", "full", None)]
    for b in budgets:
        rows += [Row(label, "from the first token", p, b) for p in DECODE_TIME]
    for si, ids in enumerate(seqs):
        for row in rows:
            t0 = time.perf_counter()
            cache = make_cache(model, row.policy, row.budget, 0, prefill="decode")
            nll = sf.kv.decode_nll(model, ids, cache)
            row.add(nll, cache, time.perf_counter() - t0)
        print(f"{label} streaming seq {si} done", file=sys.stderr, flush=True)
    return rows


def check_replay(model: Any, ids: np.ndarray, P: int, window: int) -> None:
    """The recorded-prefill replay equals PolicyCache's own prefill path (bitwise)."""
    pre = record_prefill(model, ids, P)
    for name in ("snapkv", "h2o"):
        a = decode_from_prefill(model, make_cache(model, name, 32, window), pre)
        b = sf.kv.decode_nll(model, ids, make_cache(model, name, 32, window), prefill=P)
        if not np.array_equal(a, b):
            raise SystemExit(f"replay check failed for {name}: {np.abs(a - b).max()}")


def table(rows: list[Row], full: Row) -> str:
    body = []
    for r in rows:
        body.append(
            (
                r.policy,
                "-" if r.budget is None else r.budget,
                f"{r.ppl:.4f}",
                "" if r is full else f"{r.ppl / full.ppl - 1:+.1%}",
                f"{r.tokens_end / r.seqs:.1f}",
                harness.fmt_bytes(r.bytes_end / r.seqs),
                f"{r.bytes_end / full.bytes_end:.3f}",
                harness.fmt_bytes(r.peak),
                f"{r.seconds:.0f}",
            )
        )
    return harness.md_table(
        (
            "policy",
            "budget",
            "ppl",
            "vs full",
            "tokens / head at end",
            "bytes in use at end",
            "of full",
            "peak bytes",
            "s",
        ),
        body,
    )


def pivot(rows: list[Row], budgets: list[int], full: Row) -> str:
    names = list(dict.fromkeys(r.policy for r in rows if r.budget is not None))
    body = [("full", *[f"{full.ppl:.3f}" for _ in budgets])]
    for n in names:
        cells = []
        for b in budgets:
            r = next(x for x in rows if x.policy == n and x.budget == b)
            cells.append(f"{r.ppl:.3f}")
        body.append((n, *cells))
    return harness.md_table(("policy", *[f"B={b}" for b in budgets]), body)


def section(title: str, note: str, rows: list[Row], budgets: list[int]) -> str:
    full = rows[0]
    return (
        f"### {title}\n\n{note}\n\nPerplexity by budget (tokens per layer and kv head):\n\n"
        + pivot(rows, budgets, full)
        + "\n\nEvery run, with the cache measured after the last token (mean over sequences; "
        "peak = the maximum during the run, prefill included):\n\n" + table(rows, full)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    p.add_argument("--models", default="stories260k,smollm2")
    p.add_argument("--out", type=Path, default=harness.RESULTS_DIR / "kvcache.md")
    p.add_argument("--stories-seqs", type=int, default=4)
    p.add_argument("--smol-seqlen", type=int, default=1024)
    p.add_argument("--smol-prefill", type=int, default=896)
    p.add_argument(
        "--smol-policies",
        default=",".join(x for x in ALL if x not in ("pyramidkv", "adakv")),
        help="policies for SmolLM2 (default: all but PyramidKV and AdaKV, to bound the run)",
    )
    p.add_argument("--smol-budgets", default="64,128,256,512")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    started = datetime.datetime.now().astimezone()
    load0 = os.getloadavg()
    harness.source_note()
    sections = []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "stories260k" in models:
        path = DATA / "stories260K" / "stories260K.bin"
        model = sm.load_llama2c(path, linear_backend="sparseforge", num_threads=args.threads)
        text = (DATA / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text("utf-8")
        seqlen, P = (128, 64) if args.quick else (512, 256)
        budgets = [32] if args.quick else [32, 64, 128, 256]
        seqs = sequences(model, text, seqlen, 1 if args.quick else args.stories_seqs)
        check_replay(model, seqs[0][:160], 96, 16)
        t0 = time.perf_counter()
        rows = run_prefill_protocol(model, "stories260K", seqs, P, budgets, ALL, 16)
        sections.append(
            section(
                f"stories260K, TinyStories: prefill {P} + decode {seqlen - P}",
                f"{len(seqs)} sequences of {seqlen} tokens (consecutive windows of the "
                f"tokenised excerpt, BOS at its start); the first {P} tokens are the prefill "
                f"(not scored), the remaining {seqlen - P} are decoded one at a time and "
                f"scored: {len(seqs) * (seqlen - P)} tokens per row. SnapKV / PyramidKV / "
                "AdaKV observation window 16, StreamingLLM 4 sinks, H2O half recent, Quest "
                "dense in layers 0-1 (of 5), page size 16, fp32 cache.",
                rows,
                budgets,
            )
        )
        rows = run_streaming_protocol(model, "stories260K", seqs, budgets)
        sections.append(
            section(
                "stories260K, TinyStories: policy from the first token",
                f"The same {len(seqs)} sequences, every token fed alone "
                f'(`PolicyCache(prefill="decode")`), the budget enforced from the first '
                f"token; {len(seqs) * (seqlen - 1)} tokens scored per row.",
                rows,
                budgets,
            )
        )
        print(f"stories260K: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if "smollm2" in models:
        from sparseforge.models.gguf import find_smollm2

        gguf = find_smollm2()
        if gguf is None:
            sections.append("### SmolLM2-135M\n\nSkipped: the GGUF file was not found.")
        else:
            model = sm.load(gguf)
            model.linear_backend = "sparseforge"
            model.num_threads = args.threads
            text = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8")
            seqlen, P = (160, 128) if args.quick else (args.smol_seqlen, args.smol_prefill)
            budgets = [64] if args.quick else [int(b) for b in args.smol_budgets.split(",")]
            seqs = sequences(model, text, seqlen, 1)
            t0 = time.perf_counter()
            pols = tuple(x.strip() for x in args.smol_policies.split(",") if x.strip())
            rows = run_prefill_protocol(model, "SmolLM2-135M", seqs, P, budgets, pols, 32)
            sections.append(
                section(
                    f"SmolLM2-135M, WikiText-2: prefill {P} + decode {seqlen - P}",
                    f"One sequence of {seqlen} tokens (the start of wiki.test.raw); the first "
                    f"{P} are the prefill, the remaining {seqlen - P} are decoded one at a time "
                    f"and scored ({seqlen - P} tokens per row: a small sample, differences "
                    "below ~2% are noise). Weights: the Q4_1 GGUF dequantised to float32. "
                    "SnapKV / PyramidKV / AdaKV window 32, StreamingLLM 4 sinks, H2O half "
                    "recent, Quest dense in layers 0-1 (of 30), page size 16, fp32 cache.",
                    rows,
                    budgets,
                )
            )
            print(f"SmolLM2: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    now = datetime.datetime.now().astimezone()
    header = [
        "# KV-cache policies: perplexity against budget, through the decode loop\n",
        *(["> **--quick smoke run**: tiny sizes. Not a measurement.\n"] if args.quick else []),
        f"- **Date:** {started:%Y-%m-%d %H:%M %Z} (run took "
        f"{(now - started).total_seconds():.0f} s; load {load0[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end)",
        f"- **Command:** `{harness.command_line()}`",
        f"- **Source:** {harness.source_note()}",
        f"- **Threads:** {args.threads} (results do not depend on it)",
        "- **Method:** `sf.kv.PolicyCache` in `LlamaModel.step`; see the module docstring of "
        "`bench/bench_kvcache_quality.py` for the two protocols. Bytes are the K/V pages the "
        "cache holds (`PagedKVCache.bytes_in_use`, whole pages of 16 tokens), not an estimate; "
        "'of full' is against the full cache at the same point.\n",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header) + "\n" + "\n\n".join(sections) + "\n", "utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
