"""llama.cpp and transformers run the models sparseforge exports: perplexity of pruned
models through llama-cpp-python (GGUF) and transformers (Hugging Face directory) against
sparseforge's own forward, over the same token windows.

For each model (stories260K on TinyStories, SmolLM2-135M on WikiText-2 when installed):
prune (stories260K: Wanda 50 % and 2:4; SmolLM2: Wanda and SparseGPT, 50 % and 2:4), export
GGUF (stories260K: F32 and Q8_0; SmolLM2: F32, F16 and BF16) and a Hugging Face directory
(float32), then score the same back-to-back windows (sparseforge's tokenization, one BOS at
the start of the stream) with

* sparseforge on the pruned model itself and on the GGUF file read back,
* llama.cpp (``llama_cpp.Llama(logits_all=True)``, ``eval`` of the window's ids, the
  NLL of each next token from its logits),
* transformers (``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)``, the
  same NLL from its logits; and the largest logit difference to sparseforge's).

Also checked: llama.cpp's own tokenizer gives sparseforge's ids on the evaluation text's
first 2,000 characters, and the pruned weights' zeros are in the file. Writes
bench/results/export.md.

Needs the bench environment (llama-cpp-python compiles llama.cpp; run niced):
    python -m venv --system-site-packages .benchvenv
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF" .benchvenv/bin/pip install \
        llama-cpp-python==0.3.36
    PYTHONPATH=.benchvenv/lib/python3.11/site-packages SPARSEFORGE_DATA=../shared/data \
        nice -n 10 .venv/bin/python bench/bench_export.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import sparseforge as sf
from sparseforge import models as sm
from sparseforge.models.gguf import find_smollm2
from sparseforge.models.perplexity import token_stream

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("SPARSEFORGE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def windows(ids: np.ndarray, seqlen: int, count: int) -> list[np.ndarray]:
    n = min(count, len(ids) // seqlen)
    return [ids[k * seqlen : (k + 1) * seqlen] for k in range(n)]


def ours_nll(model: sm.LlamaModel, wins: list[np.ndarray]) -> float:
    return float(np.concatenate([model.nll(w) for w in wins]).mean())


def llama_cpp_nll(path: Path, wins: list[np.ndarray], threads: int) -> float:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path),
        n_ctx=len(wins[0]),
        n_batch=len(wins[0]),
        logits_all=True,
        n_threads=threads,
        verbose=False,
    )
    nll = []
    for w in wins:
        llm.reset()
        llm.eval([int(t) for t in w])
        logits = np.asarray(llm.scores[: len(w)], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))[:-1]
        nll.append(lse - logits[np.arange(len(w) - 1), w[1:]])
    return float(np.concatenate(nll).mean())


def llama_cpp_tokens(path: Path, text: str, bos: bool) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    return list(llm.tokenize(text.encode("utf-8"), add_bos=bos, special=False))


def prune(model: sm.LlamaModel, calib: np.ndarray, method: str, setting: str) -> None:
    kw = {"sparsity": 0.5} if setting == "50%" else {"pattern": setting}
    sm.prune(model, calib, method=method, nsamples=16, seqlen=128, progress=False, **kw)


def transformers_check(model: sm.LlamaModel, wins: list[np.ndarray]) -> tuple[float, float]:
    """export_hf (float32) read by transformers: (mean NLL over ``wins``, largest |logit
    difference| to sparseforge's on the first window)."""
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        sm.export_hf(model, Path(tmp) / "hf", dtype="float32")
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            Path(tmp) / "hf", dtype=torch.float32
        )
    hf.eval()
    nll = []
    diff = 0.0
    with torch.no_grad():
        for k, w in enumerate(wins):
            logits = hf(torch.tensor([w.tolist()])).logits[0].double().numpy()
            if k == 0:
                diff = float(np.abs(logits - model.forward(w)).max())
            m = logits.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))[:-1]
            nll.append(lse - logits[np.arange(len(w) - 1), w[1:]])
    return float(np.concatenate(nll).mean()), diff


def run(
    args: argparse.Namespace,
    rows: list[tuple[str, ...]],
    hf_rows: list[tuple[str, ...]],
    emit: Callable[[], None],
) -> None:
    cases = []
    stories = data_dir() / "stories260K" / "stories260K.bin"
    if stories.is_file() and not args.smol_only:
        text = (data_dir() / "tinystories-valid-excerpt" / "tinystories_val.txt").read_text()
        settings = [("dense", "dense"), ("wanda", "50%"), ("wanda", "2:4")]
        cases.append(
            (
                "stories260K",
                stories,
                text[:200_000],
                text[200_000:],
                256,
                16,
                settings,
                ("f32", "q8_0"),
            )
        )
    smol = find_smollm2()
    wiki = data_dir() / "wikitext-2-raw" / "wiki.test.raw"
    if smol is not None and wiki.is_file() and not args.quick:
        text = wiki.read_text()
        settings = [("dense", "dense")] if args.smol_dense else []
        settings += [(m, p) for m in ("wanda", "sparsegpt") for p in ("50%", "2:4")]
        if args.settings:
            settings = [(x.split(":", 1)[0], x.split(":", 1)[1]) for x in args.settings.split(",")]
        dtypes = tuple(args.dtypes.split(",")) if args.dtypes else ("f32", "f16", "bf16")
        cases.append(
            ("SmolLM2-135M", smol, text[:150_000], text[150_000:], 256, 8, settings, dtypes)
        )
    for name, path, calib_text, eval_text, seqlen, count, settings, dtypes in cases:
        base = sm.load(path)
        calib = token_stream(base, calib_text)
        ids = token_stream(base, eval_text[:400_000])
        wins = windows(ids, seqlen, count)
        for method, setting in settings:
            model = sm.load(path)
            if method != "dense":
                prune(model, calib, method, setting)
            label = "dense" if method == "dense" else f"{method} {setting}"
            ours = ours_nll(model, wins)
            t0 = time.perf_counter()
            hf_nll, hf_diff = (np.nan, np.nan) if args.no_hf else transformers_check(model, wins)
            hf_s = time.perf_counter() - t0
            hf_rows.append(
                (
                    name,
                    label,
                    f"{np.exp(ours):.4f}",
                    f"{np.exp(hf_nll):.4f}",
                    f"{abs(np.exp(hf_nll) / np.exp(ours) - 1):.1e}",
                    f"{hf_diff:.1e}",
                    f"{hf_s:.1f}",
                    f"{os.getloadavg()[0]:.1f}",
                )
            )
            if args.no_hf:
                hf_rows.pop()
            else:
                print("HF | " + " | ".join(hf_rows[-1]), flush=True)
                emit()
            for dtype in dtypes:
                with tempfile.TemporaryDirectory() as tmp:
                    gpath = Path(tmp) / "m.gguf"
                    t0 = time.perf_counter()
                    rep = sm.export_gguf(model, gpath, dtype=dtype)
                    took = time.perf_counter() - t0
                    back = sm.load(gpath)
                    ours_back = ours if dtype == "f32" else ours_nll(back, wins)
                    t0 = time.perf_counter()
                    theirs = llama_cpp_nll(gpath, wins, args.threads)
                    llama_s = time.perf_counter() - t0
                    sample = eval_text[:2000]
                    tok_ok = llama_cpp_tokens(
                        gpath, sample, model.tokenizer.bos_id is not None
                    ) == model.tokenizer.encode(sample)
                    load = os.getloadavg()[0]
                rows.append(
                    (
                        name,
                        label,
                        dtype,
                        f"{np.exp(ours):.4f}",
                        f"{np.exp(ours_back):.4f}",
                        f"{np.exp(theirs):.4f}",
                        f"{abs(np.exp(theirs) / np.exp(ours_back) - 1):.1e}",
                        "yes" if tok_ok else "NO",
                        f"{rep.zeros}",
                        f"{rep.total_bytes / 1e6:.1f}",
                        f"{took:.1f} / {llama_s:.1f}",
                        f"{load:.1f}",
                    )
                )
                print(" | ".join(rows[-1]), flush=True)
                emit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="stories260K only")
    ap.add_argument("--smol-only", action="store_true", help="SmolLM2 only")
    ap.add_argument(
        "--settings",
        default=None,
        help="SmolLM2: method:pattern, e.g. wanda:2:4,sparsegpt:50%%",
    )
    ap.add_argument("--dtypes", default=None, help="SmolLM2 GGUF types, e.g. f32,bf16")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers check")
    ap.add_argument(
        "--smol-dense", action="store_true", help="also the dense SmolLM2 (F32/F16/BF16)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "export.md"))
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (see this file's docstring)", file=sys.stderr)
        return 2
    rows: list[tuple[str, ...]] = []
    hf_rows: list[tuple[str, ...]] = []
    run(args, rows, hf_rows, lambda: write(args, rows, hf_rows, llama_cpp.__version__))
    print(f"wrote {args.out}")
    return 0


def write(
    args: argparse.Namespace,
    rows: list[tuple[str, ...]],
    hf_rows: list[tuple[str, ...]],
    llama_cpp_version: str,
) -> None:
    """The results file, rewritten after every row (an interrupted run keeps its rows)."""
    header = (
        "model",
        "pruned",
        "GGUF",
        "ppl sparseforge",
        "ppl sparseforge (GGUF read back)",
        "ppl llama.cpp",
        "rel. diff llama.cpp vs read back",
        "llama.cpp tokens = ours",
        "zeros in linears",
        "file MB",
        "export s / llama.cpp s",
        "load",
    )
    lines = [
        "# Exported models in llama.cpp and transformers",
        "",
        f"`{' '.join(['python', 'bench/bench_export.py', *sys.argv[1:]])}` — sparseforge "
        f"{sf.__version__}, llama-cpp-python {llama_cpp_version}, {args.threads} threads. "
        "Wanda or SparseGPT (16 x 128 calibration tokens), then `sf.models.export_gguf`; "
        "perplexity over "
        "the same back-to-back windows of sparseforge's token ids (stories260K: 16 x 256 "
        "tokens of the TinyStories excerpt after its first 200,000 characters; SmolLM2: 8 x "
        "256 tokens of WikiText-2 test after its first 150,000 characters). `ppl "
        "sparseforge` is the pruned model itself; `read back` is sparseforge on the exported "
        "file (Q8_0 changes the weights, so that is the reference for llama.cpp). The "
        "machine was shared (load = 1-minute load average).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        "F32 files: llama.cpp's perplexity equals sparseforge's on the same weights to about "
        "1e-4 (float32 summation order). Q8_0 files: llama.cpp's CPU Q8_0 matmul also "
        "quantizes the activations to 8 bits, sparseforge dequantizes the weights and "
        "multiplies in float32, hence differences of a few 1e-3. `zeros in linears` "
        "counts exact zeros written to the block linears and the head: pruning keeps them "
        "through every type (dense SmolLM2 has some from its 4-bit source). F16/BF16 "
        "files: sparseforge reads them back as stored and computes in float32 like "
        "llama.cpp's CPU path, which converts per operation.",
        "",
        "## The Hugging Face export in transformers",
        "",
        "`sf.models.export_hf(model, dir, dtype='float32')`, then "
        "`transformers.AutoModelForCausalLM.from_pretrained(dir, dtype=torch.float32)` on "
        "the same windows. `max |logit diff|` is over the first window's logits.",
        "",
        "| model | pruned | ppl sparseforge | ppl transformers | rel. diff | "
        "max abs logit diff | export+load+eval s | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in hf_rows]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
